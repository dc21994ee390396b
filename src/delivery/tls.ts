import { rootCertificates } from 'node:tls';
import { Agent, fetch as undiciFetch } from 'undici';

/** Node's bundled roots and a destination's own CA bundle: what a destination's connections trust. */
export function trustedCas(caPem: string): string[] {
  return [...rootCertificates, caPem];
}

/**
 * A fetch (for its token endpoint) that trusts a destination's own CA bundle (a hospital's private CA) besides Node's bundled roots.
 * Certificates are always verified: there is deliberately no switch to turn verification off.
 * undici's fetch is used because the global fetch takes no per-call TLS settings.
 */
export function fetchTrusting(caPem: string): typeof fetch {
  const dispatcher = new Agent({ connect: { ca: trustedCas(caPem), rejectUnauthorized: true } });
  return ((input: string | URL | Request, init?: RequestInit) =>
    undiciFetch(input as Parameters<typeof undiciFetch>[0], { ...(init as Parameters<typeof undiciFetch>[1]), dispatcher })) as unknown as typeof fetch;
}
