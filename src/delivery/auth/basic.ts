import type { Secret } from '../destinations.ts';
import type { AuthStrategy } from './index.ts';

/** HTTP Basic (RFC 7617, UTF-8): user name from the config, password from env or a file. */
export class BasicAuth implements AuthStrategy {
  readonly #value: string;

  constructor(username: string, password: Secret) {
    if (username.includes(':')) throw new Error('basic auth: the user name cannot contain ":"');
    this.#value = `Basic ${Buffer.from(`${username}:${password.reveal()}`, 'utf8').toString('base64')}`;
  }

  async headers(): Promise<Record<string, string>> {
    return { Authorization: this.#value };
  }

  async onUnauthorized(): Promise<void> {}
}
