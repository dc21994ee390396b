/**
 * When to retry a request to a FHIR server, and how long to wait first.
 *
 * Everything trialbridge sends is a conditional update keyed on a business identifier, so sending a request
 * again after a failure whose effect is unknown (a reset connection, a timeout) is always safe.
 */

export type Classification = 'retry' | 'permanent' | 'ok';

export interface RetryPolicyOptions {
  /** Attempts per request, the first one included (default 5). */
  readonly maxAttempts?: number;
  /** Backoff cap of the first retry in ms (default 500); doubles per attempt. */
  readonly baseDelayMs?: number;
  /** Largest backoff in ms (default 30 s); a server's Retry-After may ask for more and gets it. */
  readonly maxDelayMs?: number;
  /**
   * Longest Retry-After worth waiting for in process (default 120 s): beyond it the delivery gives up with a
   * retryable error carrying the delay, and the queue reschedules the job instead of holding a worker.
   */
  readonly maxRetryAfterMs?: number;
  /** Uniform random number in [0, 1) for the jitter (default Math.random); injectable for tests. */
  readonly random?: () => number;
}

/** Network failures worth another try: the server may be back, or the request may not have arrived. */
const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);
const RETRYABLE_NAMES: ReadonlySet<string> = new Set(['AbortError', 'TimeoutError']);
const RETRYABLE_MESSAGES = [/socket hang up/i, /fetch failed/i, /other side closed/i, /network/i];

/** How an HTTP status is treated: 2xx/3xx ok; 408, 429 and 5xx (but 501) retried; other 4xx permanent. */
export function classifyStatus(status: number): Classification {
  if (status < 400) return 'ok';
  if (status === 408 || status === 429) return 'retry';
  // 501 Not Implemented and 505 HTTP Version Not Supported do not get better with time.
  if (status >= 500 && status !== 501 && status !== 505) return 'retry';
  return 'permanent';
}

function classifyError(error: unknown, depth: number): Classification {
  if (depth > 5 || error === null || typeof error !== 'object') return 'permanent';
  const e = error as { name?: unknown; code?: unknown; message?: unknown; cause?: unknown; retryable?: unknown };
  if (typeof e.retryable === 'boolean') return e.retryable ? 'retry' : 'permanent';
  if (typeof e.code === 'string' && RETRYABLE_CODES.has(e.code)) return 'retry';
  if (typeof e.name === 'string' && RETRYABLE_NAMES.has(e.name)) return 'retry';
  if (typeof e.message === 'string' && RETRYABLE_MESSAGES.some((re) => re.test(e.message as string))) return 'retry';
  return e.cause === undefined ? 'permanent' : classifyError(e.cause, depth + 1);
}

/**
 * Classifies the outcome of one attempt: a Response (or anything with a numeric `status`, like FhirHttpError)
 * by its status, an error by its code, name, message and cause chain.
 */
export function classify(outcome: unknown): Classification {
  if (outcome !== null && typeof outcome === 'object') {
    const status = (outcome as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 100) return classifyStatus(status);
  }
  return classifyError(outcome, 0);
}

/**
 * Milliseconds a Retry-After header asks for: delta-seconds or an HTTP date (relative to `now`); undefined when
 * absent or unreadable.
 */
export function parseRetryAfter(header: string | null | undefined, now: number = Date.now()): number | undefined {
  if (header === null || header === undefined) return undefined;
  const value = header.trim();
  if (value === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.ceil(Number(value) * 1000);
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

export class RetryPolicy {
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly maxRetryAfterMs: number;
  readonly #random: () => number;

  constructor(options: RetryPolicyOptions = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30_000;
    this.maxRetryAfterMs = options.maxRetryAfterMs ?? 120_000;
    this.#random = options.random ?? Math.random;
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1) throw new RangeError(`maxAttempts must be a positive integer, got ${this.maxAttempts}`);
    if (!(this.baseDelayMs >= 0) || !(this.maxDelayMs >= 0)) throw new RangeError('delays must be non-negative');
  }

  classify(outcome: unknown): Classification {
    return classify(outcome);
  }

  /** True when another attempt may follow attempt number `attempt` (1-based). */
  canRetry(attempt: number): boolean {
    return attempt < this.maxAttempts;
  }

  /**
   * The wait before the attempt after attempt number `attempt` (1-based): exponential backoff with full jitter,
   * random in [0, min(max, base·2^(attempt-1))), but never shorter than what Retry-After asks for.
   */
  delayFor(attempt: number, retryAfterHeader?: string | null, now: number = Date.now()): number {
    const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.max(0, attempt - 1));
    const backoff = Math.floor(this.#random() * cap);
    const asked = parseRetryAfter(retryAfterHeader, now);
    return asked === undefined ? backoff : Math.max(backoff, asked);
  }
}

/** A policy from a policy or its options. */
export function retryPolicy(policy: RetryPolicy | RetryPolicyOptions | undefined): RetryPolicy {
  return policy instanceof RetryPolicy ? policy : new RetryPolicy(policy);
}
