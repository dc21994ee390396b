import type { Secret } from '../destinations.ts';
import type { AuthStrategy } from './index.ts';

/** A static bearer token (an API key issued by the destination), read from env or a file at load. */
export class BearerAuth implements AuthStrategy {
  readonly #token: Secret;

  constructor(token: Secret) {
    this.#token = token;
  }

  async headers(): Promise<Record<string, string>> {
    return { Authorization: `Bearer ${this.#token.reveal()}` };
  }

  /** A static token cannot be renewed: the request fails with the server's 401. */
  async onUnauthorized(): Promise<void> {}
}
