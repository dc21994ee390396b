/**
 * An HTTP proxy in front of a FHIR server that a test switches between three modes:
 *
 * - `up`: requests are forwarded and answered at once;
 * - `refuse`: nothing listens on the port any more (connections get ECONNREFUSED, open keep-alive connections
 *   are closed), as when the server is down;
 * - `slow`: requests are forwarded at once (the server applies them) but each answer is held `slowMs` before
 *   it is written, beyond the client's timeout: the client gives up on a request whose effect happened.
 *
 * The port stays the same across modes. `onRequest` sees every request before it is forwarded (a test can
 * trigger another fault at an exact point of a run); counters say what each mode did.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type FaultMode = 'up' | 'refuse' | 'slow';

export interface FaultProxyOptions {
  /** How long `slow` holds each answer (default 5000 ms). */
  readonly slowMs?: number;
  /** Called with each request (1-based count of its method) before it is forwarded; may hold it by returning a promise. */
  readonly onRequest?: (request: { readonly method: string; readonly url: string; readonly n: number; readonly body: Buffer; readonly clientPort: number }) => void | Promise<void>;
}

export interface FaultProxyStats {
  /** Requests received, by method. */
  readonly received: Record<string, number>;
  /** POSTs forwarded to the server (so applied there). */
  forwardedPosts: number;
  /** Answers written to a client that was still waiting. */
  answered: number;
  /** Answers held by `slow`. */
  slowed: number;
  /** Answers not written because the client had gone (timed out, killed, or cut off by `refuse`). */
  abandoned: number;
  /** Of those, answers held by `slow` whose client gave up (timed out) before they were due. */
  slowAbandoned: number;
  /** Times the listener was closed (`refuse`). */
  refusals: number;
}

export class FaultProxy {
  readonly #upstream: string;
  readonly #options: FaultProxyOptions;
  readonly #sockets = new Set<Socket>();
  readonly #server: Server;
  #port = 0;
  #mode: FaultMode = 'up';
  readonly stats: FaultProxyStats = { received: {}, forwardedPosts: 0, answered: 0, slowed: 0, abandoned: 0, slowAbandoned: 0, refusals: 0 };
  readonly #timers = new Set<NodeJS.Timeout>();

  private constructor(upstreamBaseUrl: string, options: FaultProxyOptions) {
    this.#upstream = upstreamBaseUrl.replace(/\/+$/, '');
    this.#options = options;
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        if (!res.headersSent && !res.destroyed) res.writeHead(502, { 'content-type': 'text/plain' }).end(String(error));
      });
    });
    this.#server.keepAliveTimeout = 5000;
    this.#server.on('connection', (socket) => {
      this.#sockets.add(socket);
      socket.on('close', () => this.#sockets.delete(socket));
    });
  }

  /** `upstreamBaseUrl`: the FHIR base the proxy forwards to (`http://127.0.0.1:PORT/fhir/R4`); same paths here. */
  static async start(upstreamBaseUrl: string, options: FaultProxyOptions = {}): Promise<FaultProxy> {
    const proxy = new FaultProxy(upstreamBaseUrl, options);
    await proxy.#listen(0);
    return proxy;
  }

  get port(): number {
    return this.#port;
  }

  /** The FHIR base URL through the proxy. */
  get baseUrl(): string {
    return `http://127.0.0.1:${this.#port}${new URL(this.#upstream).pathname}`;
  }

  get mode(): FaultMode {
    return this.#mode;
  }

  /** Switches mode; resolves once the listener matches it (closed for `refuse`, listening otherwise). */
  async setMode(mode: FaultMode): Promise<void> {
    if (mode === this.#mode) return;
    const was = this.#mode;
    this.#mode = mode;
    if (mode === 'refuse') {
      this.stats.refusals++;
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      for (const s of this.#sockets) s.destroy();
      await closed;
    } else if (was === 'refuse') {
      await this.#listen(this.#port);
    }
  }

  async #listen(port: number): Promise<void> {
    this.#server.listen(port, '127.0.0.1');
    await Promise.race([once(this.#server, 'listening'), once(this.#server, 'error').then(([e]) => Promise.reject(e as Error))]);
    this.#port = (this.#server.address() as AddressInfo).port;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const n = (this.stats.received[method] = (this.stats.received[method] ?? 0) + 1);
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    await this.#options.onRequest?.({ method, url: req.url ?? '/', n, body, clientPort: req.socket.remotePort ?? 0 });
    // The client gave up (or died) while the request was held: it never reaches the server.
    if (res.destroyed || req.socket.destroyed) return;
    const base = new URL(this.#upstream);
    const path = req.url ?? '/';
    const target = `${base.origin}${path}`;
    const headers: Record<string, string> = {};
    for (const h of ['content-type', 'accept', 'authorization', 'if-none-exist', 'if-match']) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const response = await fetch(target, { method, headers, ...(body.length > 0 ? { body } : {}) });
    const text = Buffer.from(await response.arrayBuffer());
    if (method === 'POST') this.stats.forwardedPosts++;
    const answer = (slowed = false) => {
      if (res.destroyed || req.socket.destroyed) {
        this.stats.abandoned++;
        if (slowed) this.stats.slowAbandoned++;
        return;
      }
      this.stats.answered++;
      const out: Record<string, string> = { 'content-type': response.headers.get('content-type') ?? 'application/fhir+json' };
      for (const h of ['location', 'etag', 'retry-after']) {
        const v = response.headers.get(h);
        if (v) out[h] = v;
      }
      res.writeHead(response.status, out).end(text);
    };
    if (this.#mode !== 'slow') return answer();
    this.stats.slowed++;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, this.#options.slowMs ?? 5000);
      this.#timers.add(timer);
    });
    answer(true);
  }

  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    if (this.#server.listening) await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
