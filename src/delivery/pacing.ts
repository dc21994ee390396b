/**
 * Pacing of a destination shared by every worker (AIMD): a permitted concurrency and the leases in flight,
 * kept in Redis so that ten worker processes with `concurrency: 4` each still send at most the destination's
 * limit at once.
 *
 * - A delivery takes a lease before sending and gives it back after, saying how the server answered. A lease
 *   expires `leaseMs` after it was taken or last renewed, so a worker killed mid-delivery frees its permit.
 * - A throttle (429) or a conflict (409/412) cuts the limit by `decrease` (floor 1), at most once per incident:
 *   the answers of requests that were already in flight, and the retries of the same burst, fall in the same
 *   incident window (`incidentMs`, or the server's wait when longer) and cut nothing more.
 * - `recoverAfter` successes in a row grow the limit by one, back up to the configured concurrency.
 * - A wait the server asked for (Retry-After and the like) becomes the destination's "not before" time: no
 *   worker sends to it before then.
 *
 * Times come from the caller's clock (`now`, default Date.now), passed into the scripts rather than read from
 * Redis, so tests can drive time; workers on different machines need clocks in step (NTP) to the order of
 * the waits involved. The Redis and in-memory pacers follow one state machine (`step` below mirrors the Lua).
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { Counter, Gauge, type Registry } from 'prom-client';

export interface PacingSettings {
  /** Factor the limit is multiplied by when an incident begins (0.5: halved). */
  readonly decrease: number;
  /** Shortest incident: throttles and conflicts within it after the first cut nothing more. */
  readonly incidentMs: number;
  /** Successes in a row that grow the limit by one. */
  readonly recoverAfter: number;
  /** How long a lease lives unless renewed (a delivery renews its own while it runs). */
  readonly leaseMs: number;
}

export const DEFAULT_PACING: PacingSettings = { decrease: 0.5, incidentMs: 10_000, recoverAfter: 10, leaseMs: 15_000 };

/** How the server answered a delivery, as far as load is concerned. */
export type PaceSignal =
  | { readonly kind: 'success' }
  | { readonly kind: 'throttle' | 'conflict'; readonly status?: number; readonly retryAfterMs?: number }
  /** An answer that says nothing about load (a rejected resource, a network error): no change. */
  | { readonly kind: 'neutral' };

/** A new incident: reported once, by the worker whose answer began it. */
export interface PacingIncident {
  readonly destination: string;
  readonly kind: 'throttle' | 'conflict';
  readonly status?: number;
  readonly previousLimit: number;
  readonly limit: number;
  /** The wait the server asked for, when it did. */
  readonly retryAfterMs?: number;
}

export interface PacingState {
  readonly limit: number;
  readonly inFlight: number;
  /** Epoch ms before which nothing is sent (0: none). */
  readonly notBefore: number;
  /** Incidents since the destination was first paced. */
  readonly incidents: number;
}

export type Attempt =
  | { readonly granted: true; readonly lease: Lease }
  | { readonly granted: false; readonly reason: 'not-before' | 'limit'; readonly waitMs: number };

export interface Lease {
  readonly id: string;
  /** Extends the lease by `leaseMs` from now; false when it had expired (its permit went to someone else). */
  renew(): Promise<boolean>;
  /** Gives the permit back with the server's answer; resolves the incident it began, if it began one. */
  release(signal: PaceSignal): Promise<PacingIncident | undefined>;
}

export interface Pacer {
  readonly destination: string;
  /** How long a lease lives unless renewed. */
  readonly leaseMs: number;
  /** One try for a permit: granted, or how long to wait before trying again. */
  tryAcquire(): Promise<Attempt>;
  /** An answer seen while holding no lease of its own (a 429 retried inside a delivery): applied at once. */
  report(signal: PaceSignal): Promise<PacingIncident | undefined>;
  state(): Promise<PacingState>;
}

export interface PacerOptions {
  /** The configured concurrency: where the limit starts and what it grows back to. */
  readonly concurrency: number;
  readonly settings?: Partial<PacingSettings>;
  readonly now?: () => number;
  /** Called once per incident, in the process whose answer began it. */
  readonly onIncident?: (incident: PacingIncident) => void;
}

interface Stored {
  limit: number;
  successes: number;
  incidentUntil: number;
  notBefore: number;
  incidents: number;
}

/**
 * The state machine of a release, on plain data: the in-memory pacer runs it, and RELEASE_SCRIPT is the same
 * steps in Lua (the shared tests hold both to it).
 */
function step(s: Stored, kind: PaceSignal['kind'], wait: number, now: number, max: number, p: PacingSettings): boolean {
  s.limit = Math.min(s.limit, max);
  if (kind === 'success') {
    s.successes++;
    if (s.successes >= p.recoverAfter) {
      s.successes = 0;
      if (s.limit < max) s.limit++;
    }
    return false;
  }
  if (kind === 'neutral') return false;
  s.successes = 0;
  let began = false;
  if (now >= s.incidentUntil) {
    s.limit = Math.max(1, Math.floor(s.limit * p.decrease));
    s.incidentUntil = now + Math.max(p.incidentMs, wait);
    s.incidents++;
    began = true;
  }
  if (wait > 0) s.notBefore = Math.max(s.notBefore, now + wait);
  return began;
}

const ACQUIRE_SCRIPT = `
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local limit = math.min(tonumber(redis.call('HGET', KEYS[1], 'limit') or max), max)
local notBefore = tonumber(redis.call('HGET', KEYS[1], 'notBefore') or 0)
if notBefore > now then return {0, notBefore - now, 'not-before'} end
if redis.call('ZCARD', KEYS[2]) >= limit then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, tonumber(first[2]) - now, 'limit'}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
return {1, 0, 'granted'}
`;

// KEYS: state hash, leases. ARGV: now, lease id, kind, retryAfterMs, max, decrease, incidentMs, recoverAfter.
const RELEASE_SCRIPT = `
local now = tonumber(ARGV[1])
local kind = ARGV[3]
local wait = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'limit', 'successes', 'incidentUntil', 'notBefore', 'incidents')
local limit = math.min(tonumber(state[1] or max), max)
local before = limit
local successes = tonumber(state[2] or 0)
local incidentUntil = tonumber(state[3] or 0)
local notBefore = tonumber(state[4] or 0)
local incidents = tonumber(state[5] or 0)
local began = 0
if kind == 'success' then
  successes = successes + 1
  if successes >= tonumber(ARGV[8]) then
    successes = 0
    if limit < max then limit = limit + 1 end
  end
elseif kind ~= 'neutral' then
  successes = 0
  if now >= incidentUntil then
    limit = math.max(1, math.floor(limit * tonumber(ARGV[6])))
    incidentUntil = now + math.max(tonumber(ARGV[7]), wait)
    incidents = incidents + 1
    began = 1
  end
  if wait > 0 and now + wait > notBefore then notBefore = now + wait end
end
redis.call('HSET', KEYS[1], 'limit', limit, 'successes', successes, 'incidentUntil', incidentUntil, 'notBefore', notBefore, 'incidents', incidents)
return {began, before, limit}
`;

const RENEW_SCRIPT = `
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == false then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[2])
return 1
`;

const STATE_SCRIPT = `
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'limit', 'notBefore', 'incidents')
return {math.min(tonumber(state[1] or max), max), redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), tonumber(state[2] or 0), tonumber(state[3] or 0)}
`;

type PacingRedis = Redis & {
  tbPaceAcquire(state: string, leases: string, now: number, id: string, leaseMs: number, max: number): Promise<[number, number, string]>;
  tbPaceRelease(state: string, leases: string, now: number, id: string, kind: string, wait: number, max: number, decrease: number, incidentMs: number, recoverAfter: number): Promise<[number, number, number]>;
  tbPaceRenew(leases: string, now: number, id: string, leaseMs: number): Promise<number>;
  tbPaceState(state: string, leases: string, now: number, max: number): Promise<[number, number, number, number]>;
};

function withScripts(redis: Redis): PacingRedis {
  const r = redis as PacingRedis;
  if (typeof r.tbPaceAcquire !== 'function') {
    redis.defineCommand('tbPaceAcquire', { numberOfKeys: 2, lua: ACQUIRE_SCRIPT });
    redis.defineCommand('tbPaceRelease', { numberOfKeys: 2, lua: RELEASE_SCRIPT });
    redis.defineCommand('tbPaceRenew', { numberOfKeys: 1, lua: RENEW_SCRIPT });
    redis.defineCommand('tbPaceState', { numberOfKeys: 2, lua: STATE_SCRIPT });
  }
  return r;
}

/** Redis keys of a destination's pacing, under the pipeline's prefix (`tb-` keys go with the queues on obliterate). */
export function pacingKeys(prefix: string, destination: string): { readonly state: string; readonly leases: string } {
  const name = encodeURIComponent(destination);
  return { state: `${prefix}:tb-pace:${name}`, leases: `${prefix}:tb-pace:${name}:leases` };
}

function settingsOf(options: PacerOptions): PacingSettings {
  return { ...DEFAULT_PACING, ...options.settings };
}

function waitOf(signal: PaceSignal): number {
  return signal.kind === 'throttle' || signal.kind === 'conflict' ? Math.max(0, Math.round(signal.retryAfterMs ?? 0)) : 0;
}

/** The incident an answer began, told to `onIncident`. */
function announce(options: PacerOptions, destination: string, signal: PaceSignal, previousLimit: number, limit: number): PacingIncident {
  const s = signal as Extract<PaceSignal, { kind: 'throttle' | 'conflict' }>;
  const incident: PacingIncident = {
    destination,
    kind: s.kind,
    ...(s.status !== undefined ? { status: s.status } : {}),
    previousLimit,
    limit,
    ...(s.retryAfterMs !== undefined ? { retryAfterMs: s.retryAfterMs } : {}),
  };
  options.onIncident?.(incident);
  return incident;
}

/** The pacer of one destination, shared through Redis by every worker on it. */
export class RedisPacer implements Pacer {
  readonly destination: string;
  readonly #redis: PacingRedis;
  readonly #keys: { readonly state: string; readonly leases: string };
  readonly #options: PacerOptions;
  readonly #settings: PacingSettings;
  readonly #now: () => number;

  constructor(redis: Redis, prefix: string, destination: string, options: PacerOptions) {
    this.destination = destination;
    this.#redis = withScripts(redis);
    this.#keys = pacingKeys(prefix, destination);
    this.#options = options;
    this.#settings = settingsOf(options);
    this.#now = options.now ?? Date.now;
  }

  get leaseMs(): number {
    return this.#settings.leaseMs;
  }

  async tryAcquire(): Promise<Attempt> {
    const id = randomUUID();
    const { state, leases } = this.#keys;
    const [granted, waitMs, reason] = await this.#redis.tbPaceAcquire(state, leases, this.#now(), id, this.#settings.leaseMs, this.#options.concurrency);
    if (granted !== 1) return { granted: false, reason: reason as 'not-before' | 'limit', waitMs: Math.max(0, waitMs) };
    return {
      granted: true,
      lease: {
        id,
        renew: async () => (await this.#redis.tbPaceRenew(leases, this.#now(), id, this.#settings.leaseMs)) === 1,
        release: (signal) => this.#apply(id, signal),
      },
    };
  }

  report(signal: PaceSignal): Promise<PacingIncident | undefined> {
    return this.#apply('', signal);
  }

  async #apply(leaseId: string, signal: PaceSignal): Promise<PacingIncident | undefined> {
    const p = this.#settings;
    const { state, leases } = this.#keys;
    const [began, before, limit] = await this.#redis.tbPaceRelease(
      state, leases, this.#now(), leaseId, signal.kind, waitOf(signal), this.#options.concurrency, p.decrease, p.incidentMs, p.recoverAfter,
    );
    return began === 1 ? announce(this.#options, this.destination, signal, before, limit) : undefined;
  }

  async state(): Promise<PacingState> {
    const [limit, inFlight, notBefore, incidents] = await this.#redis.tbPaceState(this.#keys.state, this.#keys.leases, this.#now(), this.#options.concurrency);
    return { limit, inFlight, notBefore, incidents };
  }
}

/** The same pacing within one process (the in-process runner, tests without Redis). */
export class MemoryPacer implements Pacer {
  readonly destination: string;
  readonly #options: PacerOptions;
  readonly #settings: PacingSettings;
  readonly #now: () => number;
  readonly #stored: Stored;
  /** Lease id → expiry. */
  readonly #leases = new Map<string, number>();

  constructor(destination: string, options: PacerOptions) {
    this.destination = destination;
    this.#options = options;
    this.#settings = settingsOf(options);
    this.#now = options.now ?? Date.now;
    this.#stored = { limit: options.concurrency, successes: 0, incidentUntil: 0, notBefore: 0, incidents: 0 };
  }

  get leaseMs(): number {
    return this.#settings.leaseMs;
  }

  #expire(now: number): void {
    for (const [id, until] of this.#leases) if (until <= now) this.#leases.delete(id);
  }

  async tryAcquire(): Promise<Attempt> {
    const now = this.#now();
    this.#expire(now);
    const s = this.#stored;
    if (s.notBefore > now) return { granted: false, reason: 'not-before', waitMs: s.notBefore - now };
    if (this.#leases.size >= Math.min(s.limit, this.#options.concurrency)) {
      return { granted: false, reason: 'limit', waitMs: Math.max(0, Math.min(...this.#leases.values()) - now) };
    }
    const id = randomUUID();
    this.#leases.set(id, now + this.#settings.leaseMs);
    return {
      granted: true,
      lease: {
        id,
        renew: async () => {
          if (!this.#leases.has(id)) return false;
          this.#leases.set(id, this.#now() + this.#settings.leaseMs);
          return true;
        },
        release: async (signal) => {
          this.#leases.delete(id);
          return this.report(signal);
        },
      },
    };
  }

  async report(signal: PaceSignal): Promise<PacingIncident | undefined> {
    const s = this.#stored;
    const before = Math.min(s.limit, this.#options.concurrency);
    if (!step(s, signal.kind, waitOf(signal), this.#now(), this.#options.concurrency, this.#settings)) return undefined;
    return announce(this.#options, this.destination, signal, before, s.limit);
  }

  async state(): Promise<PacingState> {
    const now = this.#now();
    this.#expire(now);
    const s = this.#stored;
    return { limit: Math.min(s.limit, this.#options.concurrency), inFlight: this.#leases.size, notBefore: s.notBefore, incidents: s.incidents };
  }
}

export interface PacedOptions {
  /** How to wait (default a timer); tests inject one. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Longest wait between tries while the destination is full (default 50 ms): a released permit is seen that soon. */
  readonly pollMs?: number;
  /** How often a running delivery renews its lease (default a third of leaseMs). */
  readonly renewMs?: number;
}

/**
 * Runs `send` under a permit of the pacer: waits for one (and for the destination's not-before time), renews
 * it while `send` runs, and gives it back with what `signalOf` reads from the outcome.
 */
export async function paced<T>(
  pacer: Pacer,
  send: () => Promise<T>,
  signalOf: (outcome: { readonly value: T } | { readonly error: unknown }) => PaceSignal,
  options: PacedOptions = {},
): Promise<T> {
  const sleep = options.sleep ?? ((ms: number) => delay(ms));
  const pollMs = options.pollMs ?? 50;
  let lease: Lease;
  for (;;) {
    const attempt = await pacer.tryAcquire();
    if (attempt.granted) {
      lease = attempt.lease;
      break;
    }
    await sleep(attempt.reason === 'not-before' ? Math.max(1, attempt.waitMs) : Math.max(1, Math.min(pollMs, attempt.waitMs || pollMs)));
  }
  const renewEvery = options.renewMs ?? Math.max(1000, Math.floor(pacer.leaseMs / 3));
  const renewal = setInterval(() => void lease.renew().catch(() => undefined), renewEvery);
  renewal.unref();
  let signal: PaceSignal = { kind: 'neutral' };
  try {
    const value = await send();
    signal = signalOf({ value });
    return value;
  } catch (error) {
    signal = signalOf({ error });
    throw error;
  } finally {
    clearInterval(renewal);
    // A lost Redis answer must not turn a delivered bundle into a failure: the lease expires on its own.
    await lease.release(signal).catch(() => undefined);
  }
}

/**
 * Pacing metrics, read from the pacers' shared state at scrape time: every incident counts once whichever
 * worker process saw it, and retries within an incident do not count.
 */
export function pacingMetrics(registry: Registry, pacers: readonly Pacer[]): void {
  const states = () => Promise.all(pacers.map(async (p) => ({ destination: p.destination, state: await p.state() })));
  new Counter({
    name: 'trialbridge_destination_backoff_incidents_total',
    help: 'Times a destination entered backoff (429 or conflict answers cut its concurrency), by destination',
    labelNames: ['destination'] as const,
    registers: [registry],
    async collect() {
      this.reset();
      for (const { destination, state } of await states()) this.inc({ destination }, state.incidents);
    },
  });
  new Gauge({
    name: 'trialbridge_destination_concurrency_limit',
    help: 'Deliveries a destination is currently allowed in flight, across all workers',
    labelNames: ['destination'] as const,
    registers: [registry],
    async collect() {
      for (const { destination, state } of await states()) this.set({ destination }, state.limit);
    },
  });
}

/**
 * What a delivery's outcome says about load. Read from the error's `kind` (DeliveryRetryableError: throttle,
 * conflict) and, for errors without one, from its HTTP status; a delivered bundle is a success; a rejection of
 * the data, an unusable answer or a network failure says nothing about load.
 */
export function paceSignal(outcome: { readonly value: { readonly outcome: string } } | { readonly error: unknown }): PaceSignal {
  if ('value' in outcome) return outcome.value.outcome === 'delivered' ? { kind: 'success' } : { kind: 'neutral' };
  const e = outcome.error as { kind?: unknown; status?: unknown; retryAfterMs?: unknown } | null;
  const status = typeof e?.status === 'number' ? e.status : undefined;
  const kind = e?.kind === 'throttle' || e?.kind === 'conflict' ? e.kind : status === 429 ? 'throttle' : status === 409 ? 'conflict' : undefined;
  if (!kind) return { kind: 'neutral' };
  return { kind, ...(status !== undefined ? { status } : {}), ...(typeof e?.retryAfterMs === 'number' ? { retryAfterMs: e.retryAfterMs } : {}) };
}

/** The one log line of an incident (never a subject or a value: destination, answer kind, limits, wait). */
export function incidentLine(incident: PacingIncident): string {
  const wait = incident.retryAfterMs !== undefined ? `, server asks to wait ${incident.retryAfterMs} ms` : '';
  return `destination ${incident.destination}: backing off after a ${incident.kind}${incident.status ? ` (${incident.status})` : ''}: concurrency ${incident.previousLimit} -> ${incident.limit}${wait}`;
}
