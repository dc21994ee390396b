import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FhirClient } from './client.ts';
import { httpTransport } from './http-transport.ts';
import { fetchTrusting, trustedCas } from './tls.ts';
import { makeTestCertificate } from '../../test/support/test-certificate.ts';

const { cert, key } = makeTestCertificate();

describe('a destination behind a private CA', () => {
  let server: Server;
  let baseUrl: string;
  beforeEach(async () => {
    server = createServer({ cert, key }, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+json' });
      res.end(JSON.stringify({ resourceType: 'CapabilityStatement', status: 'active' }));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    baseUrl = `https://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  });
  afterEach(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('is refused with the system CAs alone: certificates are verified', async () => {
    await expect(new FhirClient({ baseUrl, timeoutMs: 5000 }).get('metadata')).rejects.toThrow(/self[- ]signed certificate/);
    await expect(new FhirClient({ baseUrl, timeoutMs: 5000, fetch }).get('metadata')).rejects.toThrow(/fetch failed/);
  });

  it('is reached when its CA bundle is trusted (tls.caFile), by the data client and by the token fetch', async () => {
    for (const client of [
      new FhirClient({ baseUrl, timeoutMs: 5000, transport: httpTransport({ ca: trustedCas(cert) }) }),
      new FhirClient({ baseUrl, timeoutMs: 5000, fetch: fetchTrusting(cert) }),
    ]) {
      const response = await client.get<{ resourceType: string }>('metadata');
      expect(response.body?.resourceType).toBe('CapabilityStatement');
    }
  });

  it('still refuses a server whose certificate another CA signed', async () => {
    // A bundle with another CA (one of Node's roots): the test server's certificate is still not trusted.
    const { rootCertificates } = await import('node:tls');
    await expect(new FhirClient({ baseUrl, timeoutMs: 5000, transport: httpTransport({ ca: [rootCertificates[0]] }) }).get('metadata')).rejects.toThrow(/self[- ]signed certificate/);
    await expect(new FhirClient({ baseUrl, timeoutMs: 5000, fetch: fetchTrusting(rootCertificates[0]) }).get('metadata')).rejects.toThrow(/fetch failed/);
  });
});
