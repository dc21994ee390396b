import type { Secret } from '../destinations.ts';
import { BasicAuth } from './basic.ts';
import { BearerAuth } from './bearer.ts';
import { NoAuth } from './none.ts';
import { OAuth2ClientCredentials } from './oauth2-client-credentials.ts';
import { SmartBackendServices } from './smart-backend-services.ts';

/**
 * How requests to one destination are authorised. The delivery client calls `headers()` before every
 * request and, when the server answers 401, `onUnauthorized()` once before retrying with fresh `headers()`.
 */
export interface AuthStrategy {
  /** Headers to add to the next request (e.g. `Authorization`); a cached token when one is still valid. */
  headers(): Promise<Record<string, string>>;
  /**
   * The server refused the credentials: token strategies drop their cached token so the next `headers()`
   * fetches a new one. Pass the headers the refused request was sent with when you have them: a token
   * that was already replaced (by a concurrent caller's refresh) is then not dropped a second time.
   */
  onUnauthorized(rejected?: Record<string, string>): Promise<void>;
}

/** Auth section of a destination, secrets resolved at load (see destinations.ts). */
export type AuthConfig =
  | { readonly type: 'none' }
  | { readonly type: 'bearer'; readonly token: Secret }
  | { readonly type: 'basic'; readonly username: string; readonly password: Secret }
  | {
      readonly type: 'oauth2-client-credentials';
      readonly tokenUrl: string;
      readonly clientId: string;
      readonly clientSecret: Secret;
      readonly scope?: string;
      /** `basic` (RFC 6749 §2.3.1 HTTP Basic, the default) or `body` (client_id/client_secret form fields). */
      readonly clientAuth: 'basic' | 'body';
    }
  | {
      readonly type: 'smart-backend-services';
      readonly tokenUrl: string;
      readonly clientId: string;
      /** PEM (PKCS#8, PKCS#1 or SEC1) or a private JWK as JSON. */
      readonly privateKey: Secret;
      readonly alg: 'RS384' | 'ES384';
      /** Key id in the assertion header; defaults to the JWK's `kid`. */
      readonly kid?: string;
      /** URL of the client's JWK Set, put in the assertion header when given. */
      readonly jku?: string;
      readonly scope: string;
    };

export type AuthType = AuthConfig['type'];

export interface AuthOptions {
  /** Clock in milliseconds since the epoch (tests advance it instead of sleeping). */
  readonly now?: () => number;
  /** A token is refreshed this long before its `expires_in` runs out (default 30 s). */
  readonly skewMs?: number;
  /** Timeout of one token request (default 30 s). */
  readonly timeoutMs?: number;
  /** Fetch implementation (default: the global fetch). */
  readonly fetch?: typeof fetch;
}

/** The strategy for a destination's auth config. */
export function createAuth(config: AuthConfig, options: AuthOptions = {}): AuthStrategy {
  switch (config.type) {
    case 'none':
      return new NoAuth();
    case 'bearer':
      return new BearerAuth(config.token);
    case 'basic':
      return new BasicAuth(config.username, config.password);
    case 'oauth2-client-credentials':
      return new OAuth2ClientCredentials(config, options);
    case 'smart-backend-services':
      return new SmartBackendServices(config, options);
    default: {
      const unknown: never = config;
      throw new Error(`unknown auth type ${(unknown as { type: string }).type}`);
    }
  }
}

export { BasicAuth, BearerAuth, NoAuth, OAuth2ClientCredentials, SmartBackendServices };
