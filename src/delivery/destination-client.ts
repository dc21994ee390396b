import { createAuth } from './auth/index.ts';
import { FhirClient } from './client.ts';
import type { Destination } from './destinations.ts';
import { httpTransport } from './http-transport.ts';
import { fetchTrusting, trustedCas } from './tls.ts';

/** The FHIR client of a destination: its base URL, timeout, answer size limit, auth, and its own CA bundle when it has one. */
export function destinationClient(destination: Destination, options: { readonly timeoutMs?: number } = {}): FhirClient {
  // The token endpoint is usually the hospital's too: it gets the same trust.
  const fetch = destination.tls ? fetchTrusting(destination.tls.ca) : undefined;
  return new FhirClient({
    baseUrl: destination.baseUrl,
    timeoutMs: options.timeoutMs ?? destination.timeoutMs,
    // Answers beyond it are cut off and fail the delivery (its preset's or its own maxResponseBytes).
    maxResponseBytes: destination.maxResponseBytes,
    // Where its server writes how long to wait (its preset's retryAfterFrom or its own).
    waitSources: destination.retryAfterFrom,
    auth: createAuth(destination.auth, fetch ? { fetch } : {}),
    ...(destination.tls ? { transport: httpTransport({ ca: trustedCas(destination.tls.ca) }) } : {}),
  });
}
