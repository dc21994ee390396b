import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express, { type Request } from 'express';

/** What the test's token endpoint answers. */
export interface TokenReply {
  readonly status?: number;
  readonly body: unknown;
}

export interface TokenRequest {
  readonly form: Record<string, string>;
  readonly authorization?: string;
}

export type TokenHandler = (req: TokenRequest, call: number) => TokenReply | Promise<TokenReply>;

/** A token endpoint on 127.0.0.1 for auth tests: counts calls, the test decides each answer. */
export class TestTokenServer {
  readonly requests: TokenRequest[] = [];
  #server: Server | undefined;
  #url = '';

  readonly #handler: TokenHandler;

  constructor(handler: TokenHandler) {
    this.#handler = handler;
  }

  get calls(): number {
    return this.requests.length;
  }

  get tokenUrl(): string {
    return this.#url;
  }

  async start(): Promise<this> {
    const app = express();
    app.post('/token', express.urlencoded({ extended: false }), async (req: Request, res) => {
      const seen: TokenRequest = { form: { ...(req.body as Record<string, string>) }, authorization: req.get('authorization') };
      this.requests.push(seen);
      const reply = await this.#handler(seen, this.requests.length);
      res.status(reply.status ?? 200).json(reply.body);
    });
    this.#server = app.listen(0, '127.0.0.1');
    await once(this.#server, 'listening');
    this.#url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}/token`;
    return this;
  }

  async stop(): Promise<void> {
    if (!this.#server) return;
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server!.close(() => resolve()));
  }
}

/** A promise the test settles when it chooses (holds a token response until every caller waits). */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}
