import type { AuthOptions, AuthStrategy } from './index.ts';

/** An access token and when to stop using it (clock milliseconds). */
interface CachedToken {
  readonly accessToken: string;
  readonly refreshAt: number;
}

const DEFAULT_SKEW_MS = 30_000;
/**
 * A token response is read up to this many bytes: a real one is a few KB (a JWT with claims), a hostile or
 * broken endpoint could answer gigabytes.
 */
export const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;
/**
 * An access token goes into every request's Authorization header; servers cap headers at 8–16 KB (Node's
 * default: 16 KiB in all) and answer 431 beyond. A longer token is refused here, as a credentials problem,
 * rather than sent and taken for a rejection of the data.
 */
export const MAX_ACCESS_TOKEN_BYTES = 12 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;
/** Used when the token response has no `expires_in` (RFC 6749 makes it optional). */
const DEFAULT_LIFETIME_S = 300;

/** A token request failed; the message never contains a credential. */
export class TokenError extends Error {
  readonly status?: number;
  constructor(message: string, status?: number) {
    super(message);
    this.name = 'TokenError';
    this.status = status;
  }
}

/**
 * OAuth 2.0 token endpoint client shared by the client-credentials and SMART Backend Services strategies:
 * caches the access token until `expires_in` minus a skew, runs one refresh at a time however many callers
 * wait for it, and drops the token on a 401.
 */
export abstract class CachedTokenAuth implements AuthStrategy {
  readonly #tokenUrl: string;
  readonly #now: () => number;
  readonly #skewMs: number;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;
  #token: CachedToken | undefined;
  #pending: Promise<CachedToken> | undefined;

  protected constructor(tokenUrl: string, options: AuthOptions) {
    this.#tokenUrl = tokenUrl;
    this.#now = options.now ?? Date.now;
    this.#skewMs = options.skewMs ?? DEFAULT_SKEW_MS;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#fetch = options.fetch ?? fetch;
  }

  protected now(): number {
    return this.#now();
  }

  /** The form of one token request (built anew each time: an assertion is single-use). */
  protected abstract tokenRequest(): Promise<{ body: URLSearchParams; headers?: Record<string, string> }>;

  /** Credential strings that must never appear in an error message. */
  protected abstract secrets(): readonly string[];

  async headers(): Promise<Record<string, string>> {
    const token = this.#token && this.#now() < this.#token.refreshAt ? this.#token : await this.#refresh();
    return { Authorization: `Bearer ${token.accessToken}` };
  }

  async onUnauthorized(rejected?: Record<string, string>): Promise<void> {
    if (!this.#token) return;
    const sent = rejected && (rejected.Authorization ?? rejected.authorization);
    // A token that a concurrent caller already replaced is left alone.
    if (sent !== undefined && sent !== `Bearer ${this.#token.accessToken}`) return;
    this.#token = undefined;
  }

  #refresh(): Promise<CachedToken> {
    if (!this.#pending) {
      this.#pending = this.#request().then(
        (token) => {
          this.#pending = undefined;
          this.#token = token;
          return token;
        },
        (err: unknown) => {
          this.#pending = undefined;
          throw err;
        },
      );
    }
    return this.#pending;
  }

  async #request(): Promise<CachedToken> {
    const { body, headers } = await this.tokenRequest();
    const where = `token request to ${this.#tokenUrl}`;
    let response: Response;
    try {
      response = await this.#fetch(this.#tokenUrl, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json', ...headers },
        body: body.toString(),
        signal: AbortSignal.timeout(this.#timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      const cause = err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
      throw new TokenError(this.#redact(`${where} failed: ${cause}`));
    }
    const text = await readCapped(response, MAX_TOKEN_RESPONSE_BYTES);
    if (text === undefined) {
      throw new TokenError(`${where}: the response is over ${MAX_TOKEN_RESPONSE_BYTES} bytes (a token endpoint answers a few KB: check tokenUrl)`);
    }
    let json: Record<string, unknown> | undefined;
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) json = parsed as Record<string, unknown>;
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const code = typeof json?.error === 'string' ? ` ${json.error}` : '';
      const description = typeof json?.error_description === 'string' ? `: ${json.error_description.slice(0, 200)}` : '';
      const hint = response.status === 400 || response.status === 401 ? ' (check the client id and credentials)' : '';
      throw new TokenError(this.#redact(`${where} refused: HTTP ${response.status}${code}${description}${hint}`), response.status);
    }
    if (!json || typeof json.access_token !== 'string' || json.access_token === '') {
      throw new TokenError(`${where}: the response has no access_token`, response.status);
    }
    const tokenBytes = Buffer.byteLength(json.access_token, 'utf8');
    if (tokenBytes > MAX_ACCESS_TOKEN_BYTES) {
      throw new TokenError(`${where}: the access_token is ${tokenBytes} bytes, over the limit of ${MAX_ACCESS_TOKEN_BYTES} (no server takes such an Authorization header)`);
    }
    if (/[^\x21-\x7e]/.test(json.access_token)) {
      throw new TokenError(`${where}: the access_token holds characters an Authorization header cannot carry`);
    }
    const type = json.token_type;
    if (type !== undefined && (typeof type !== 'string' || type.toLowerCase() !== 'bearer')) {
      throw new TokenError(`${where}: unsupported token_type ${JSON.stringify(String(type)).slice(0, 40)} (only bearer)`);
    }
    const expiresIn = Number(json.expires_in ?? DEFAULT_LIFETIME_S);
    const lifetimeMs = (Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn : DEFAULT_LIFETIME_S) * 1000;
    // Refresh `skew` early, but never later than half-way through a short-lived token.
    const refreshAt = this.#now() + lifetimeMs - Math.min(this.#skewMs, lifetimeMs / 2);
    return { accessToken: json.access_token, refreshAt };
  }

  #redact(message: string): string {
    let out = message;
    for (const secret of this.secrets()) {
      if (secret.length >= 4) out = out.split(secret).join('[redacted]');
    }
    return out;
  }
}

/** The body as text, or undefined once it passes `limit` bytes (the rest is not read). */
async function readCapped(response: Response, limit: number): Promise<string | undefined> {
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel();
    return undefined;
  }
  if (!response.body) return '';
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.length;
    if (bytes > limit) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}
