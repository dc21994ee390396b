import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { httpTransport } from './http-transport.ts';
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
