import type { OperationOutcome } from '@medplum/fhirtypes';
import { DEFAULT_MAX_RESPONSE_BYTES, defaultHttpTransport, fetchTransport, ResponseTooLargeError, type HttpTransport } from './http-transport.ts';
import { failureKind, waitAskedMs, type FailureKind } from './retry.ts';
import type { RetryAfterSource } from './presets.ts';

export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** What the auth hook sees of a request about to be sent. */
export interface AuthRequest {
  readonly method: HttpMethod;
  readonly url: string;
}

/** Headers to add to a request (e.g. `Authorization`); called before every attempt. */
export type AuthHook = (request: AuthRequest) => Promise<Record<string, string>> | Record<string, string>;

/** The shape of the auth module's strategies (src/delivery/auth): headers plus a 401 hook. */
export interface AuthProvider {
  headers(request?: AuthRequest): Promise<Record<string, string>>;
  onUnauthorized?(rejected?: Record<string, string>): Promise<void> | void;
}

export interface FhirClientOptions {
  /** The server's base URL (`https://host/fhir/R4`); request paths are relative to it. */
  readonly baseUrl: string;
  /** Per-attempt timeout in ms, response body included (default 30 s). */
  readonly timeoutMs?: number;
  /** A hook giving the auth headers, or an auth strategy (whose `onUnauthorized` is used unless given below). */
  readonly auth?: AuthHook | AuthProvider;
  /**
   * Called once when the server answers 401 (drop cached tokens, refresh), with the headers the refused request
   * carried; the request is then sent once more with fresh headers from `auth`. A second 401 is an error.
   */
  readonly onUnauthorized?: (rejected?: Record<string, string>) => Promise<void> | void;
  /** Extra headers on every request. */
  readonly headers?: Record<string, string>;
  /** How requests are sent (default node:http / node:https with keep-alive, see http-transport.ts). */
  readonly transport?: HttpTransport;
  /** A fetch to send requests with instead (tests' fake servers; undici's fetch with a dispatcher). */
  readonly fetch?: typeof fetch;
  /**
   * Largest answer body read, in bytes (default 32 MiB), enforced while it streams in: past it the request is
   * aborted and fails with ResponseTooLargeError (permanent).
   */
  readonly maxResponseBytes?: number;
  /** Where the server's wait is read, preferred first (a destination's `retryAfterFrom`; default all, see waitAskedMs). */
  readonly waitSources?: readonly RetryAfterSource[];
}

export interface FhirResponse<T = unknown> {
  readonly status: number;
  /** The parsed JSON body, or undefined when there was none or it was not JSON. */
  readonly body: T | undefined;
  readonly headers: Headers;
  /** Whether the body was empty (as opposed to present but not JSON: an HTML page). */
  readonly empty: boolean;
}

export interface RequestOptions {
  readonly headers?: Record<string, string>;
  readonly signal?: AbortSignal;
}

const FHIR_JSON = 'application/fhir+json';

/**
 * A request body that is JSON already, as text or UTF-8 bytes (a bundle serialised once by the mapping stage
 * and kept as bytes for its delivery job): sent as it is, not serialised again.
 */
export class JsonText {
  readonly text: string | Uint8Array;
  constructor(text: string | Uint8Array) {
    this.text = text;
  }
}

function isOperationOutcome(body: unknown): body is OperationOutcome {
  return typeof body === 'object' && body !== null && (body as { resourceType?: unknown }).resourceType === 'OperationOutcome';
}

/** The readable text of an OperationOutcome: each issue's details text or diagnostics, with its location. */
export function outcomeText(outcome: OperationOutcome | undefined): string {
  return (outcome?.issue ?? [])
    .map((issue) => {
      const text = issue.details?.text ?? issue.diagnostics ?? issue.code;
      const extra = issue.details?.text && issue.diagnostics && issue.diagnostics !== issue.details.text ? ` (${issue.diagnostics})` : '';
      const where = issue.expression?.length ? ` at ${issue.expression.join(', ')}` : '';
      return `${text}${extra}${where}`;
    })
    .filter((t) => t !== '')
    .join('; ');
}

/** A response with status 400 or more, or a redirect (3xx: never followed). */
export class FhirHttpError extends Error {
  override readonly name = 'FhirHttpError';
  readonly status: number;
  readonly method: HttpMethod;
  readonly url: string;
  /** The server's OperationOutcome, when the body was one. */
  readonly outcome: OperationOutcome | undefined;
  /** The parsed body (or its text when not JSON). */
  readonly body: unknown;
  /** What kind of failure (failureKind); `redirect` for a 3xx. */
  readonly kind: FailureKind | 'redirect';
  /** Whether trying again later may succeed (408, 429, 409, a 412 serialization conflict, 5xx). */
  readonly retryable: boolean;
  /** The Retry-After header, verbatim. */
  readonly retryAfter: string | undefined;
  /** How long the server asks to wait (waitAskedMs: x-ms-retry-after-ms, Retry-After, RateLimit, _msBeforeNext). */
  readonly retryAfterMs: number | undefined;
  /** The answer's headers. */
  readonly headers: Headers | undefined;
  readonly #waitSources: readonly RetryAfterSource[] | undefined;

  constructor(init: { status: number; statusText?: string; method: HttpMethod; url: string; body: unknown; headers?: Headers; retryAfter?: string; now?: number; waitSources?: readonly RetryAfterSource[] }) {
    const outcome = isOperationOutcome(init.body) ? init.body : undefined;
    const redirect = init.status >= 300 && init.status < 400;
    const detail = redirect ? redirectText(init.headers) : outcomeText(outcome) || (typeof init.body === 'string' ? init.body.slice(0, 500) : '');
    super(`${init.method} ${init.url} ${redirect ? 'was answered with a redirect' : 'failed with'} HTTP ${init.status}${init.statusText ? ` ${init.statusText}` : ''}${detail ? `: ${detail}` : ''}`);
    this.status = init.status;
    this.method = init.method;
    this.url = init.url;
    this.outcome = outcome;
    this.body = init.body;
    this.kind = redirect ? 'redirect' : (failureKind(init.status, outcome) ?? 'invalid');
    this.retryable = this.kind === 'throttle' || this.kind === 'conflict' || this.kind === 'unavailable';
    this.retryAfter = init.retryAfter ?? init.headers?.get('retry-after') ?? undefined;
    this.headers = init.headers;
    this.#waitSources = init.waitSources;
    this.retryAfterMs = this.waitMs(init.now);
  }

  /** How long the server asks to wait, relative to `now` (a Retry-After date). */
  waitMs(now: number = Date.now()): number | undefined {
    return waitAskedMs(this.headers ?? { get: (name) => (name === 'retry-after' ? this.retryAfter : undefined) }, this.outcome, now, this.#waitSources);
  }
}

/** Where a redirect pointed (origin and path: a query may hold a token), and that it was not followed. */
function redirectText(headers: Headers | undefined): string {
  const location = headers?.get('location');
  let where = 'no Location';
  if (location) {
    try {
      const url = new URL(location, 'http://relative.invalid');
      where = url.origin === 'http://relative.invalid' ? url.pathname : `${url.origin}${url.pathname}`;
    } catch {
      where = 'an unreadable Location';
    }
  }
  return `to ${where}; not followed (the request and its credentials go only to the configured destination)`;
}

/** A JSON-speaking client of one FHIR destination. Attempts once; retrying is the caller's policy. */
export class FhirClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxResponseBytes: number;
  readonly waitSources: readonly RetryAfterSource[] | undefined;
  readonly #options: FhirClientOptions;
  readonly #transport: HttpTransport;
  readonly #auth: AuthHook | undefined;
  readonly #onUnauthorized: ((rejected?: Record<string, string>) => Promise<void> | void) | undefined;

  constructor(options: FhirClientOptions) {
    const auth = options.auth;
    if (typeof auth === 'function') this.#auth = auth;
    else if (auth) this.#auth = (request) => auth.headers(request);
    this.#onUnauthorized = options.onUnauthorized ?? (auth && typeof auth !== 'function' && auth.onUnauthorized ? (rejected) => auth.onUnauthorized!(rejected) : undefined);
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.#options = options;
    this.#transport = options.transport ?? (options.fetch ? fetchTransport(options.fetch) : defaultHttpTransport);
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.waitSources = options.waitSources;
  }

  /** The absolute URL of a path relative to the base ('' is the base itself, for transactions). */
  url(path: string): string {
    if (/^https?:\/\//i.test(path)) return path;
    if (path === '' || path === '/') return this.baseUrl;
    return `${this.baseUrl}/${path.replace(/^\/+/, '')}`;
  }

  get<T = unknown>(path: string, options?: RequestOptions): Promise<FhirResponse<T>> {
    return this.request<T>('GET', path, undefined, options);
  }

  post<T = unknown>(path: string, body: unknown, options?: RequestOptions): Promise<FhirResponse<T>> {
    return this.request<T>('POST', path, body, options);
  }

  put<T = unknown>(path: string, body: unknown, options?: RequestOptions): Promise<FhirResponse<T>> {
    return this.request<T>('PUT', path, body, options);
  }

  /**
   * Sends one request (twice when a 401 makes `onUnauthorized` refresh the credentials). Resolves for 1xx/2xx
   * statuses; rejects with FhirHttpError otherwise (a 3xx included: redirects are not followed), or with the
   * network / timeout error, or ResponseTooLargeError.
   */
  async request<T = unknown>(method: HttpMethod, path: string, body?: unknown, options: RequestOptions = {}): Promise<FhirResponse<T>> {
    const url = this.url(path);
    let response = await this.#send<T>(method, url, body, options);
    if (response.status === 401 && this.#onUnauthorized) {
      await this.#onUnauthorized(response.authHeaders);
      response = await this.#send<T>(method, url, body, options);
    }
    if (response.status >= 300) {
      throw new FhirHttpError({
        status: response.status,
        statusText: response.statusText,
        method,
        url,
        body: response.body ?? (response.text.trim() === '' ? undefined : response.text),
        headers: response.headers,
        waitSources: this.waitSources,
      });
    }
    return { status: response.status, body: response.body, headers: response.headers, empty: response.text.trim() === '' };
  }

  async #send<T>(method: HttpMethod, url: string, body: unknown, options: RequestOptions): Promise<FhirResponse<T> & { statusText: string; text: string; authHeaders: Record<string, string> }> {
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    const headers: Record<string, string> = { accept: FHIR_JSON, ...this.#options.headers };
    if (body !== undefined) headers['content-type'] = `${FHIR_JSON}; charset=utf-8`;
    const authHeaders = this.#auth ? await this.#auth({ method, url }) : {};
    Object.assign(headers, authHeaders);
    Object.assign(headers, options.headers);
    const response = await this.#transport(url, {
      method,
      headers,
      body: body === undefined ? undefined : body instanceof JsonText ? body.text : JSON.stringify(body),
      signal,
      maxResponseBytes: this.maxResponseBytes,
    });
    // The body is read under the same timeout: a server that stalls mid-body times out too.
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      if (error instanceof ResponseTooLargeError) throw new ResponseTooLargeError(error.limit, error.declared, response.status);
      throw error;
    }
    return { status: response.status, statusText: response.statusText, headers: response.headers, authHeaders, text, body: parseJson(text) as T | undefined, empty: text.trim() === '' };
  }
}

/** The body as JSON; undefined when empty or not JSON. */
function parseJson(text: string): unknown {
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
