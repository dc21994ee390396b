/**
 * A per-destination circuit breaker: `closed` lets every request through and counts consecutive failures;
 * after `failures` of them it is `open` for `openMs` and lets nothing through; then it is `half-open` and lets
 * exactly one probe through: the probe's success closes it, its failure opens it again for another `openMs`.
 * The clock is injectable (tests). State is per process: each worker process has its own breakers.
 */

export type CircuitState = 'closed' | 'open' | 'half-open';

export interface CircuitBreakerOptions {
  /** Consecutive failures that open the circuit (a positive integer). */
  readonly failures: number;
  /** How long it stays open before a probe is let through, ms. */
  readonly openMs: number;
  /** Milliseconds clock (default Date.now). */
  readonly now?: () => number;
}

/** Thrown by `run` while the circuit is open (or a probe is already out). */
export class CircuitOpenError extends Error {
  /** When a probe will be let through, ms from now (0 in half-open while a probe is out). */
  readonly retryAfterMs: number;

  constructor(name: string, retryAfterMs: number) {
    super(`circuit of '${name}' is open: ${retryAfterMs > 0 ? `next probe in ${retryAfterMs} ms` : 'a probe is under way'}`);
    this.name = 'CircuitOpenError';
    this.retryAfterMs = retryAfterMs;
  }
}

export class CircuitBreaker {
  readonly name: string;
  readonly #failuresToOpen: number;
  readonly #openMs: number;
  readonly #now: () => number;
  #consecutiveFailures = 0;
  #openedAt: number | undefined;
  #probeOut = false;

  constructor(name: string, options: CircuitBreakerOptions) {
    if (!Number.isInteger(options.failures) || options.failures < 1) throw new Error(`circuit breaker '${name}': failures must be a positive integer`);
    if (!(options.openMs > 0)) throw new Error(`circuit breaker '${name}': openMs must be positive`);
    this.name = name;
    this.#failuresToOpen = options.failures;
    this.#openMs = options.openMs;
    this.#now = options.now ?? Date.now;
  }

  get state(): CircuitState {
    if (this.#openedAt === undefined) return 'closed';
    return this.#now() - this.#openedAt >= this.#openMs ? 'half-open' : 'open';
  }

  /** Consecutive failures counted while closed. */
  get consecutiveFailures(): number {
    return this.#consecutiveFailures;
  }

  /** Ms until a probe is let through (0 when closed or half-open). */
  retryAfterMs(): number {
    return this.#openedAt === undefined ? 0 : Math.max(0, this.#openedAt + this.#openMs - this.#now());
  }

  /**
   * Asks to send one request: true when it may go (closed; or half-open and no probe is out, in which case
   * this request is the probe and `success`/`failure` must follow). Every granted request must be followed by
   * exactly one `success()` or `failure()`.
   */
  tryAcquire(): boolean {
    const state = this.state;
    if (state === 'closed') return true;
    if (state === 'open' || this.#probeOut) return false;
    this.#probeOut = true;
    return true;
  }

  success(): void {
    this.#consecutiveFailures = 0;
    this.#openedAt = undefined;
    this.#probeOut = false;
  }

  failure(): void {
    if (this.#openedAt !== undefined) {
      // A failed probe (or a late failure of a request sent before it opened): open again from now.
      if (this.#probeOut || this.state === 'half-open') this.#openedAt = this.#now();
      this.#probeOut = false;
      return;
    }
    this.#consecutiveFailures++;
    if (this.#consecutiveFailures >= this.#failuresToOpen) {
      this.#openedAt = this.#now();
      this.#consecutiveFailures = 0;
    }
  }

  /**
   * Runs `fn` through the breaker: throws CircuitOpenError without calling it when the circuit is open;
   * `isFailure` decides which outcomes count as failures (default: a thrown error; a resolved value never).
   */
  async run<T>(fn: () => Promise<T>, isFailure: (result: { value?: T; error?: unknown }) => boolean = thrown): Promise<T> {
    if (!this.tryAcquire()) throw new CircuitOpenError(this.name, this.retryAfterMs());
    let value: T;
    try {
      value = await fn();
    } catch (error) {
      if (isFailure({ error })) this.failure();
      else this.success();
      throw error;
    }
    if (isFailure({ value })) this.failure();
    else this.success();
    return value;
  }
}

/** The default failure test of `run`: the call threw. */
function thrown(result: { error?: unknown }): boolean {
  return Object.hasOwn(result, 'error');
}

/** One breaker per destination name, made on first use. */
export class CircuitBreakers {
  readonly #breakers = new Map<string, CircuitBreaker>();
  readonly #now: (() => number) | undefined;

  constructor(now?: () => number) {
    this.#now = now;
  }

  for(destination: { readonly name: string; readonly circuitBreaker: { readonly failures: number; readonly openMs: number } }): CircuitBreaker {
    let breaker = this.#breakers.get(destination.name);
    if (!breaker) {
      breaker = new CircuitBreaker(destination.name, { ...destination.circuitBreaker, ...(this.#now ? { now: this.#now } : {}) });
      this.#breakers.set(destination.name, breaker);
    }
    return breaker;
  }
}
