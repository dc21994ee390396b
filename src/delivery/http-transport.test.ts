import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FhirClient, FhirHttpError } from './client.ts';
import { fetchTransport, httpTransport, ResponseTooLargeError, type HttpTransport } from './http-transport.ts';
import { classify } from './retry.ts';

let server: Server | undefined;
let connections = 0;

async function serve(handler: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void): Promise<string> {
  connections = 0;
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handler(req, res, Buffer.concat(chunks)));
  });
  server.on('connection', () => connections++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
}

afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

describe('httpTransport (node:http)', () => {
  it('sends a bytes body as it is, and answers status, every header value and the body', async () => {
    const received: { body: string; length?: string; type?: string }[] = [];
    const url = await serve((req, res, body) => {
      received.push({ body: body.toString('utf8'), length: req.headers['content-length'], type: req.headers['content-type'] });
      res.writeHead(201, 'Created', { 'retry-after': '3', 'set-cookie': ['a=1', 'b=2'], 'content-type': 'application/fhir+json' });
      res.end('{"resourceType":"Bundle","type":"transaction-response"}');
    });
    const body = Buffer.from('{"resourceType":"Bundle","entry":[{"fullUrl":"urn:uuid:é"}]}');
    const answer = await httpTransport()(url, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body, signal: AbortSignal.timeout(5000) });
    expect(answer.status).toBe(201);
    expect(answer.statusText).toBe('Created');
    expect(answer.headers.get('retry-after')).toBe('3');
    expect(answer.headers.getSetCookie()).toEqual(['a=1', 'b=2']);
    expect(JSON.parse(await answer.text())).toEqual({ resourceType: 'Bundle', type: 'transaction-response' });
    expect(received).toEqual([{ body: body.toString('utf8'), length: String(body.length), type: 'application/fhir+json' }]);
  });

  it('keeps the connection for the next request', async () => {
    const url = await serve((_req, res) => res.end('{}'));
    const transport = httpTransport();
    for (let i = 0; i < 3; i++) {
      const answer = await transport(url, { method: 'GET', headers: {}, signal: AbortSignal.timeout(5000) });
      expect(await answer.text()).toBe('{}');
    }
    expect(connections).toBe(1);
  });

  it('times out a server that does not answer, and one that stops in the middle of the body; both worth a retry', async () => {
    const url = await serve((req, res) => {
      if (req.url?.endsWith('/silent')) return;
      res.writeHead(200, { 'content-type': 'application/fhir+json' });
      res.write('{"resourceType":');
    });
    const transport = httpTransport();
    const silent = transport(`${url}/silent`, { method: 'GET', headers: {}, signal: AbortSignal.timeout(200) });
    const error = await silent.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeDefined();
    expect(classify(error)).toBe('retry');

    const halfway = await transport(`${url}/halfway`, { method: 'GET', headers: {}, signal: AbortSignal.timeout(200) });
    expect(halfway.status).toBe(200);
    const bodyError = await halfway.text().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(bodyError).toBeDefined();
    expect(classify(bodyError)).toBe('retry');
  });

  it('refuses a protocol other than http and https', async () => {
    await expect(httpTransport()('ftp://example.org/fhir', { method: 'GET', headers: {}, signal: AbortSignal.timeout(1000) })).rejects.toThrow(/only http and https/);
  });
});

/**
 * A server answering 600 MB, written lazily: each chunk only once the previous one has drained, so the bytes
 * exist only as fast as the client reads them. Resolves its URL and how many bytes it managed to send.
 */
async function hugeAnswer(declareLength: boolean): Promise<{ url: string; sent: () => number }> {
  const total = 600 * 1024 * 1024;
  const chunk = Buffer.alloc(1024 * 1024, 'a');
  let sent = 0;
  const url = await serve((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/fhir+json', ...(declareLength ? { 'content-length': String(total) } : {}) });
    const pump = (): void => {
      while (sent < total && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      if (sent >= total) res.end();
    };
    res.on('error', () => {});
    pump();
  });
  return { url, sent: () => sent };
}

describe('answers are bounded (maxResponseBytes), read while they stream in', () => {
  const transports: [string, HttpTransport][] = [
    ['node:http', httpTransport()],
    ['fetch', fetchTransport(fetch)],
  ];
  for (const [name, transport] of transports) {
    it(`aborts a 600 MB answer past the limit without buffering it, and the process keeps its memory (${name})`, async () => {
      const { url, sent } = await hugeAnswer(false);
      global.gc?.();
      const before = process.memoryUsage().rss;
      const client = new FhirClient({ baseUrl: url, transport, maxResponseBytes: 32 * 1024 * 1024, timeoutMs: 60_000 });
      const error = await client.post('', { resourceType: 'Bundle', type: 'transaction', entry: [] }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ResponseTooLargeError);
      expect((error as ResponseTooLargeError).status).toBe(200);
      expect(classify(error)).toBe('permanent');
      const grown = process.memoryUsage().rss - before;
      // At most the limit and the socket buffers were held: far from the 600 MB the server had to give.
      expect(grown).toBeLessThan(160 * 1024 * 1024);
      expect(sent()).toBeLessThan(128 * 1024 * 1024);
    });
  }

  it('refuses at once an answer whose Content-Length is over the limit', async () => {
    const { url, sent } = await hugeAnswer(true);
    const error = await new FhirClient({ baseUrl: url, maxResponseBytes: 1024 }).get('metadata').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ResponseTooLargeError);
    expect((error as Error).message).toContain(`Content-Length ${600 * 1024 * 1024}`);
    expect(sent()).toBeLessThan(128 * 1024 * 1024);
  });

  it('follows no redirect with either transport: the 307 is the answer, and the other host gets nothing', async () => {
    let elsewhere = 0;
    const other = createServer((_req, res) => {
      elsewhere++;
      res.end('{}');
    });
    other.listen(0, '127.0.0.1');
    await once(other, 'listening');
    const target = `http://127.0.0.1:${(other.address() as AddressInfo).port}/fhir`;
    try {
      const url = await serve((_req, res) => {
        res.writeHead(307, { location: `${target}?code=1` });
        res.end();
      });
      for (const transport of [httpTransport(), fetchTransport(fetch)]) {
        const client = new FhirClient({ baseUrl: url, transport, auth: () => ({ authorization: 'Bearer secret' }) });
        const error = await client.post('', {}).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(FhirHttpError);
        expect(error).toMatchObject({ status: 307, kind: 'redirect', retryable: false });
        expect((error as Error).message).toContain(`redirect HTTP 307`);
        expect((error as Error).message).not.toContain('code=1');
      }
      expect(elsewhere).toBe(0);
    } finally {
      other.closeAllConnections();
      await new Promise<void>((resolve) => other.close(() => resolve()));
    }
  });
});
