import type { AuthConfig, AuthOptions } from './index.ts';
import { CachedTokenAuth } from './token-cache.ts';

type Config = Extract<AuthConfig, { type: 'oauth2-client-credentials' }>;

/** RFC 6749 §2.3.1: client id and secret are form-encoded before they go into the Basic header. */
function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

/** OAuth 2.0 client credentials grant (RFC 6749 §4.4) with a client secret. */
export class OAuth2ClientCredentials extends CachedTokenAuth {
  readonly #config: Config;

  constructor(config: Config, options: AuthOptions = {}) {
    super(config.tokenUrl, options);
    this.#config = config;
  }

  protected async tokenRequest(): Promise<{ body: URLSearchParams; headers?: Record<string, string> }> {
    const { clientId, clientSecret, scope, clientAuth } = this.#config;
    const body = new URLSearchParams({ grant_type: 'client_credentials' });
    if (scope) body.set('scope', scope);
    if (clientAuth === 'body') {
      body.set('client_id', clientId);
      body.set('client_secret', clientSecret.reveal());
      return { body };
    }
    const basic = Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret.reveal())}`, 'utf8').toString('base64');
    return { body, headers: { Authorization: `Basic ${basic}` } };
  }

  protected secrets(): readonly string[] {
    const secret = this.#config.clientSecret.reveal();
    return [secret, formEncode(secret)];
  }
}
