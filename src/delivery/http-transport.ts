/**
 * How FhirClient sends a request: by default node:http / node:https with keep-alive agents, or a given fetch.
 *
 * The client needs little of fetch (method, headers, a text or bytes body, an abort signal; status, headers,
 * text), and fetch's web streams cost: posting transaction bundles of 40–330 KB to a local endpoint,
 * node:http took about a third of fetch's CPU here (90 bundles of 330 KB: 50–110 ms against 180–360 ms; 720
 * of 40 KB: 150–210 ms against 490–540 ms), CPU a worker otherwise spends mapping. Errors are node's own (ECONNRESET, "socket hang up", AbortError on
 * the timeout), which the retry policy (retry.ts) classifies.
 *
 * Neither transport follows redirects: a 3xx is handed to the client as it is (which refuses it), so that a
 * request and its credentials never go to a host nobody configured. Both read the body against a size limit
 * while it streams in, and abort the request once it is passed: a destination answering hundreds of MB costs
 * a worker at most the limit, never its memory.
 */
import http from 'node:http';
import https from 'node:https';

export interface HttpRequest {
  readonly method: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: string | Uint8Array;
  /** Aborts the request, the response body included. */
  readonly signal: AbortSignal;
  /** Largest response body accepted, in bytes (default {@link DEFAULT_MAX_RESPONSE_BYTES}). */
  readonly maxResponseBytes?: number;
}

/** 32 MiB: a transaction-response of 500 entries with resources is a few MB; more means a broken destination. */
export const DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024;

/** The answer's body passed the size limit: the request was aborted. Permanent (retryable: false). */
export class ResponseTooLargeError extends Error {
  override readonly name = 'ResponseTooLargeError';
  readonly retryable = false;
  readonly limit: number;
  readonly declared: number | undefined;
  /** The answer's HTTP status, when known (FhirClient adds it). */
  readonly status: number | undefined;
  constructor(limit: number, declared?: number, status?: number) {
    super(
      `the answer${status !== undefined ? ` (HTTP ${status})` : ''} is larger than ${limit} bytes (maxResponseBytes)${declared !== undefined ? `: Content-Length ${declared}` : ''}; request aborted, the rest not read`,
    );
    this.limit = limit;
    this.declared = declared;
    this.status = status;
  }
}

export interface HttpAnswer {
  readonly status: number;
  readonly statusText: string;
  readonly headers: Headers;
  /** The body as text (rejects when the signal aborts before it has arrived). */
  text(): Promise<string>;
}

export type HttpTransport = (url: string, request: HttpRequest) => Promise<HttpAnswer>;

export interface HttpTransportOptions {
  /** Certificate authorities trusted for https (default Node's bundled roots). Certificates are always verified. */
  readonly ca?: readonly string[];
}

/** A transport over node:http / node:https; each transport keeps its own connections alive between requests. */
export function httpTransport(options: HttpTransportOptions = {}): HttpTransport {
  const agents: Record<string, http.Agent> = {
    'http:': new http.Agent({ keepAlive: true }),
    'https:': new https.Agent({ keepAlive: true, rejectUnauthorized: true, ...(options.ca ? { ca: [...options.ca] } : {}) }),
  };
  return (url, request) =>
    new Promise<HttpAnswer>((resolve, reject) => {
      const target = new URL(url);
      const agent = agents[target.protocol];
      if (!agent) {
        reject(new Error(`unsupported protocol in ${url}: only http and https`));
        return;
      }
      const headers: Record<string, string> = { ...request.headers };
      if (request.body !== undefined) headers['content-length'] = String(Buffer.byteLength(request.body));
      const send = target.protocol === 'https:' ? https.request : http.request;
      const limit = request.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
      const outgoing = send(target, { method: request.method, headers, agent, signal: request.signal }, (response) => {
        const chunks: Buffer[] = [];
        let size = 0;
        const text = new Promise<string>((done, fail) => {
          const tooLarge = (declared?: number): void => {
            fail(new ResponseTooLargeError(limit, declared));
            // The socket is not reused: the rest of the body is never read.
            outgoing.destroy();
            response.destroy();
            chunks.length = 0;
          };
          const declared = Number(response.headers['content-length']);
          if (Number.isFinite(declared) && declared > limit) {
            tooLarge(declared);
            return;
          }
          response.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > limit) tooLarge();
            else chunks.push(chunk);
          });
          response.on('end', () => done(Buffer.concat(chunks).toString('utf8')));
          response.on('error', fail);
          response.on('close', () => {
            if (!response.complete) fail(Object.assign(new Error('the answer ended before its body was complete'), { code: 'ECONNRESET' }));
          });
        });
        // Read by text(); a failure nobody reads (the caller gave up) must not surface as unhandled.
        text.catch(() => {});
        resolve({ status: response.statusCode ?? 0, statusText: response.statusMessage ?? '', headers: headersOf(response.headers), text: () => text });
      });
      outgoing.on('error', reject);
      outgoing.end(request.body);
    });
}

function headersOf(incoming: http.IncomingHttpHeaders): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  return headers;
}

/** A transport over a fetch (an injected one in tests, or undici's with its own dispatcher). */
export function fetchTransport(fetchFn: typeof fetch): HttpTransport {
  return async (url, request) => {
    const response = await fetchFn(url, {
      method: request.method,
      headers: request.headers,
      // A Buffer is typed over ArrayBufferLike; Node's are never over a SharedArrayBuffer.
      body: request.body as string | Uint8Array<ArrayBuffer> | undefined,
      signal: request.signal,
      redirect: 'manual',
    });
    const limit = request.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    return { status: response.status, statusText: response.statusText, headers: response.headers, text: () => boundedText(response, limit) };
  };
}

/** A fetch Response's body as text, read chunk by chunk and cancelled once it passes `limit` bytes. */
async function boundedText(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel().catch(() => {});
    throw new ResponseTooLargeError(limit, declared);
  }
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw new ResponseTooLargeError(limit);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

/** The transport of clients given none: shared, like fetch's global connection pool. */
export const defaultHttpTransport: HttpTransport = httpTransport();
