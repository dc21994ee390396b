import type { AuthStrategy } from './index.ts';

/** No credentials (a server on a trusted network, or one that authenticates by mutual TLS upstream). */
export class NoAuth implements AuthStrategy {
  async headers(): Promise<Record<string, string>> {
    return {};
  }

  async onUnauthorized(): Promise<void> {}
}
