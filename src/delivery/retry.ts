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

/**
 * How an HTTP status is treated: 2xx ok; 3xx permanent (redirects are never followed: the request and its
 * credentials would go elsewhere); 408, 409 (a write conflict), 429 and 5xx (but 501) retried; other 4xx
 * permanent. (A 412 may be a serialization conflict worth retrying: only its OperationOutcome tells, see
 * failureKind; by its status alone it is permanent.)
 */
export function classifyStatus(status: number): Classification {
  if (status < 300) return 'ok';
  if (status < 400) return 'permanent';
  if (status === 408 || status === 409 || status === 429) return 'retry';
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
    // An error that judged itself (FhirHttpError read the OperationOutcome of its 412) knows best.
    const retryable = (outcome as { retryable?: unknown }).retryable;
    if (typeof retryable === 'boolean') return retryable ? 'retry' : 'permanent';
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

import { RETRY_AFTER_SOURCES, type RetryAfterSource } from './presets.ts';

/** The header-like lookups a wait is read from (fetch Headers, or a plain record of lower-case names). */
export type HeaderSource = Headers | { get(name: string): string | null | undefined } | undefined;

/** Milliseconds of Azure's `x-ms-retry-after-ms`. */
function msHeader(value: string | null | undefined): number | undefined {
  if (!value || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return undefined;
  return Math.ceil(Number(value));
}

/**
 * Milliseconds of an IETF RateLimit header, Medplum's form `"fhirInteractions";r=0;t=42`: the `t` (seconds
 * until the quota resets) of the policies with nothing remaining (`r=0`), or of any when none says r; the
 * longest.
 */
export function parseRateLimit(header: string | null | undefined): number | undefined {
  if (!header) return undefined;
  let wait: number | undefined;
  for (const item of header.split(',')) {
    const r = /;\s*r\s*=\s*(\d+)/.exec(item);
    const t = /;\s*t\s*=\s*(\d+(?:\.\d+)?)/.exec(item);
    if (!t || (r && Number(r[1]) > 0)) continue;
    wait = Math.max(wait ?? 0, Math.ceil(Number(t[1]) * 1000));
  }
  return wait;
}

/**
 * Milliseconds Medplum writes into a 429's OperationOutcome: its diagnostics are the rate limiter's JSON,
 * `{"_remainingPoints":0,"_msBeforeNext":1234,...}`. Read as JSON only (never evaluated), the longest of the
 * issues.
 */
export function msBeforeNextOf(outcome: { issue?: readonly { diagnostics?: string }[] } | undefined): number | undefined {
  let wait: number | undefined;
  for (const issue of outcome?.issue ?? []) {
    const text = issue.diagnostics;
    if (!text || !text.includes('_msBeforeNext')) continue;
    try {
      const parsed = JSON.parse(text) as { _msBeforeNext?: unknown };
      if (typeof parsed._msBeforeNext === 'number' && Number.isFinite(parsed._msBeforeNext) && parsed._msBeforeNext >= 0) {
        wait = Math.max(wait ?? 0, Math.ceil(parsed._msBeforeNext));
      }
    } catch {
      // Not the rate limiter's JSON: no wait in it.
    }
  }
  return wait;
}

type WaitOutcome = { issue?: readonly { diagnostics?: string }[] } | undefined;

const WAIT_READERS: Readonly<Record<RetryAfterSource, (headers: HeaderSource, outcome: WaitOutcome, now: number) => number | undefined>> = {
  'x-ms-retry-after-ms': (headers) => msHeader(headers?.get('x-ms-retry-after-ms')),
  'retry-after': (headers, _outcome, now) => parseRetryAfter(headers?.get('retry-after'), now),
  ratelimit: (headers) => parseRateLimit(headers?.get('ratelimit')),
  outcome: (_headers, outcome) => msBeforeNextOf(outcome),
};

/**
 * How long a server asks to wait, in ms, wherever it wrote it: by default Azure's `x-ms-retry-after-ms`
 * (preferred: the precise one), `Retry-After` (seconds or an HTTP date), the RateLimit header's `t`, then
 * `_msBeforeNext` in the OperationOutcome (Medplum, which sends no Retry-After); `sources` (a destination's
 * `retryAfterFrom`, presets.ts) names which of them, in which order. Undefined when none says.
 */
export function waitAskedMs(headers: HeaderSource, outcome?: WaitOutcome, now: number = Date.now(), sources: readonly RetryAfterSource[] = RETRY_AFTER_SOURCES): number | undefined {
  for (const source of sources) {
    const wait = WAIT_READERS[source](headers, outcome, now);
    if (wait !== undefined) return wait;
  }
  return undefined;
}

/**
 * What kind of failure a status is, for pacing and for whether to try again:
 * - `throttle`: 429;
 * - `conflict`: 409, and 412 when it is a serialization conflict (Aidbox) rather than "several resources match
 *   the condition" (every server's answer to an ambiguous conditional update: permanent, retrying cannot help);
 * - `unavailable`: 408 and 5xx but 501/505;
 * - `invalid`: every other 4xx (the data or the request is refused).
 */
export type FailureKind = 'throttle' | 'conflict' | 'unavailable' | 'invalid';

export function failureKind(status: number, outcome?: { issue?: readonly { code?: string; diagnostics?: string; details?: { text?: string; coding?: readonly { code?: string }[] } }[] }): FailureKind | undefined {
  if (status < 400) return undefined;
  if (status === 429) return 'throttle';
  if (status === 409) return 'conflict';
  if (status === 412) return isMultipleMatches(outcome) ? 'invalid' : 'conflict';
  return classifyStatus(status) === 'retry' ? 'unavailable' : 'invalid';
}

/** A 412 that says the condition matched several resources (HAPI, Azure, Aidbox, Medplum wordings). */
function isMultipleMatches(outcome: Parameters<typeof failureKind>[1]): boolean {
  const issues = outcome?.issue ?? [];
  // Without an OperationOutcome a 412 cannot be told apart: a precondition that failed is taken for what R4 says it is.
  if (issues.length === 0) return true;
  return issues.some((issue) => {
    const text = `${issue.details?.text ?? ''} ${issue.diagnostics ?? ''} ${(issue.details?.coding ?? []).map((c) => c.code ?? '').join(' ')}`;
    return issue.code === 'multiple-matches' || /multiple|several|more than one|matched \d+ resources|multipleMatches/i.test(text);
  });
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
   * random in [0, min(max, base·2^(attempt-1))), but never shorter than what the server asks for (a Retry-After
 * header, or a wait in ms already read by waitAskedMs).
   */
  delayFor(attempt: number, retryAfter?: string | number | null, now: number = Date.now()): number {
    const cap = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.max(0, attempt - 1));
    const backoff = Math.floor(this.#random() * cap);
    const asked = typeof retryAfter === 'number' ? retryAfter : parseRetryAfter(retryAfter, now);
    return asked === undefined ? backoff : Math.max(backoff, asked);
  }
}

/** A policy from a policy or its options. */
export function retryPolicy(policy: RetryPolicy | RetryPolicyOptions | undefined): RetryPolicy {
  return policy instanceof RetryPolicy ? policy : new RetryPolicy(policy);
}
