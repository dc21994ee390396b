/**
 * Trial-wide entries (the ResearchStudy every subject's bundle carries and refers to) written once per
 * destination, before the subjects' bundles, instead of by every bundle at once: Medplum, measured, answered
 * "Resource ID did not match resolved ID" when many bundles wrote the same ResearchStudy concurrently, and
 * servers without unique conditional writes (Azure, Firely, IBM) may create it twice.
 *
 * Per destination and content (a hash of the destination's base URL and the entry's bytes: another version of
 * the study is written again), one writer claims the entry (SET NX with an expiry: a writer that dies frees it),
 * writes it alone, and records the `Type/id` the server gave it. Every bundle is then sent without the entry,
 * its references to the entry's `urn:uuid` rewritten to that `Type/id`: a literal reference, which every server
 * resolves (conditional references are not resolved everywhere, the embedded server included). The record
 * expires after an hour, so a study deleted on the server is written again within the hour.
 *
 * Workers of one process share a promise; workers of several processes share Redis (RedisSharedEntryStore):
 * the others poll briefly for the record, then fail retryable (`shared-pending`), so their job is retried.
 */
import { createHash } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import type { BundleEntry } from '@medplum/fhirtypes';
import type { FhirClient } from './client.ts';
import { deliverBundle, DeliveryRetryableError, type DeliverOptions, type DeliveryRejection } from './deliver.ts';
import { entryBytes, fromEntryTexts, type SerializedBundle } from './serialized-bundle.ts';
import { conditionalReference } from './split.ts';

/** Where the records of written trial-wide entries are kept. */
export interface SharedEntryStore {
  /** Sets `key` to `value` unless it exists, expiring after `ttlMs`; true when set. */
  claim(key: string, value: string, ttlMs: number): Promise<boolean>;
  get(key: string): Promise<string | undefined>;
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /** Removes `key` if it still holds `value` (a writer frees only its own claim). */
  release(key: string, value: string): Promise<void>;
  /** Extends `key`'s expiry if it still holds `value` (a live writer keeps its claim). */
  extend(key: string, value: string, ttlMs: number): Promise<void>;
}

/** In one process (the in-process runner, tests). */
export class MemorySharedEntryStore implements SharedEntryStore {
  readonly #values = new Map<string, { value: string; until: number }>();

  async claim(key: string, value: string, ttlMs: number): Promise<boolean> {
    if ((await this.get(key)) !== undefined) return false;
    this.#values.set(key, { value, until: Date.now() + ttlMs });
    return true;
  }

  async get(key: string): Promise<string | undefined> {
    const held = this.#values.get(key);
    if (held && held.until <= Date.now()) this.#values.delete(key);
    return held && held.until > Date.now() ? held.value : undefined;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    this.#values.set(key, { value, until: Date.now() + ttlMs });
  }

  async release(key: string, value: string): Promise<void> {
    if (this.#values.get(key)?.value === value) this.#values.delete(key);
  }

  async extend(key: string, value: string, ttlMs: number): Promise<void> {
    if ((await this.get(key)) === value) this.#values.set(key, { value, until: Date.now() + ttlMs });
  }
}

/** Removes the key only when it holds the caller's claim. */
const RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
/** Extends the key's expiry only while it holds the caller's claim. */
const EXTEND_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/** The client with the claim scripts defined as commands (sent by SHA once loaded, as pacing.ts does). */
type SharedEntryRedis = Redis & {
  tbSharedRelease(key: string, value: string): Promise<number>;
  tbSharedExtend(key: string, value: string, ttlMs: number): Promise<number>;
};

function withScripts(redis: Redis): SharedEntryRedis {
  const r = redis as SharedEntryRedis;
  if (typeof r.tbSharedRelease !== 'function') {
    redis.defineCommand('tbSharedRelease', { numberOfKeys: 1, lua: RELEASE_SCRIPT });
    redis.defineCommand('tbSharedExtend', { numberOfKeys: 1, lua: EXTEND_SCRIPT });
  }
  return r;
}

/** Shared by every worker of a queue prefix. */
export class RedisSharedEntryStore implements SharedEntryStore {
  readonly #redis: SharedEntryRedis;
  readonly #prefix: string;

  constructor(redis: Redis, prefix: string) {
    this.#redis = withScripts(redis);
    this.#prefix = prefix;
  }

  async claim(key: string, value: string, ttlMs: number): Promise<boolean> {
    return (await this.#redis.set(this.#prefix + key, value, 'PX', ttlMs, 'NX')) === 'OK';
  }

  async get(key: string): Promise<string | undefined> {
    return (await this.#redis.get(this.#prefix + key)) ?? undefined;
  }

  async set(key: string, value: string, ttlMs: number): Promise<void> {
    await this.#redis.set(this.#prefix + key, value, 'PX', ttlMs);
  }

  async release(key: string, value: string): Promise<void> {
    await this.#redis.tbSharedRelease(this.#prefix + key, value);
  }

  async extend(key: string, value: string, ttlMs: number): Promise<void> {
    await this.#redis.tbSharedExtend(this.#prefix + key, value, ttlMs);
  }
}

export interface SharedEntriesOptions {
  /** How long a written entry is trusted to be on the server (default 1 h). */
  readonly writtenTtlMs?: number;
  /**
   * How long a claim outlives its writer (default 10 s): a live writer extends it every third of that for as long
   * as its write takes (retries included), so a worker killed mid-write holds the others back 10 s at most.
   */
  readonly claimTtlMs?: number;
  /** How long a bundle waits for another worker's write before failing retryable (default 20 s). */
  readonly waitMs?: number;
  /** Poll interval while waiting (default 100 ms). */
  readonly pollMs?: number;
  readonly sleep?: (ms: number) => Promise<void>;
}

/** The outcome of preparing a bundle: the bundle to send, or the rejection of its trial-wide entry. */
export type PreparedBundle = { readonly bundle: SerializedBundle; readonly rejection?: undefined } | { readonly bundle?: undefined; readonly rejection: DeliveryRejection };

const WRITTEN = 'written ';

export class SharedEntries {
  readonly #store: SharedEntryStore;
  readonly #inflight = new Map<string, Promise<string | DeliveryRejection>>();
  readonly #writtenTtlMs: number;
  readonly #claimTtlMs: number;
  readonly #waitMs: number;
  readonly #pollMs: number;
  readonly #sleep: (ms: number) => Promise<void>;
  /** Trial-wide entries written by this process (each once per destination and version). */
  readonly stats = { written: 0 };

  constructor(store: SharedEntryStore = new MemorySharedEntryStore(), options: SharedEntriesOptions = {}) {
    this.#store = store;
    this.#writtenTtlMs = options.writtenTtlMs ?? 3_600_000;
    this.#claimTtlMs = options.claimTtlMs ?? 10_000;
    this.#waitMs = options.waitMs ?? 20_000;
    this.#pollMs = options.pollMs ?? 100;
    this.#sleep = options.sleep ?? ((ms) => delay(ms));
  }

  /**
   * Makes sure the bundle's trial-wide entries are on the destination, and returns the bundle without them,
   * referring to them by the ids they have there. A bundle without such entries is returned as it is.
   */
  async prepare(client: FhirClient, bundle: SerializedBundle, options: DeliverOptions): Promise<PreparedBundle> {
    const shared = bundle.entries.filter((e) => e.shared && e.fullUrl !== undefined);
    if (shared.length === 0 || shared.length === bundle.entries.length) return { bundle };
    const literal = new Map<string, string>();
    for (const entry of shared) {
      const bytes = entryBytes(bundle, entry);
      const key = createHash('sha256').update(client.baseUrl).update('\n').update(bytes).digest('hex').slice(0, 40);
      let pending = this.#inflight.get(key);
      if (!pending) {
        pending = this.#ensure(key, client, entry.fullUrl!, bytes.toString('utf8'), options).finally(() => this.#inflight.delete(key));
        this.#inflight.set(key, pending);
      }
      const written = await pending;
      if (typeof written !== 'string') return { rejection: written };
      literal.set(entry.fullUrl!, written);
    }
    return { bundle: withoutShared(bundle, literal) };
  }

  async #ensure(key: string, client: FhirClient, fullUrl: string, json: string, options: DeliverOptions): Promise<string | DeliveryRejection> {
    const claim = `writing ${process.pid} ${Math.random().toString(36).slice(2)}`;
    for (let waited = 0; ; waited += this.#pollMs) {
      const held = await this.#store.get(key);
      if (held?.startsWith(WRITTEN)) return held.slice(WRITTEN.length);
      if (held === undefined && (await this.#store.claim(key, claim, this.#claimTtlMs))) {
        const heartbeat = setInterval(() => void this.#store.extend(key, claim, this.#claimTtlMs).catch(() => {}), Math.max(1, Math.floor(this.#claimTtlMs / 3)));
        heartbeat.unref();
        try {
          const written = await this.#write(client, fullUrl, json, options);
          if (typeof written === 'string') await this.#store.set(key, WRITTEN + written, this.#writtenTtlMs);
          else await this.#store.release(key, claim);
          return written;
        } catch (error) {
          await this.#store.release(key, claim);
          throw error;
        } finally {
          clearInterval(heartbeat);
        }
      }
      if (waited >= this.#waitMs) {
        throw new DeliveryRetryableError(`the trial-wide entry this bundle refers to is still being written to ${client.baseUrl} by another worker`, {
          attempts: 0,
          kind: 'shared-pending',
          retryAfterMs: this.#pollMs * 10,
          cause: undefined,
        });
      }
      await this.#sleep(this.#pollMs);
    }
  }

  /** Writes one entry alone; its `Type/id` on the server (or its conditional reference when the answer tells none). */
  async #write(client: FhirClient, fullUrl: string, json: string, options: DeliverOptions): Promise<string | DeliveryRejection> {
    const alone = fromEntryTexts([{ fullUrl, json }]);
    const result = await deliverBundle(client, alone, { ...options, maxEntries: undefined });
    if (result.rejection) {
      const entry = JSON.parse(json) as BundleEntry;
      const type = entry.resource?.resourceType ?? 'entry';
      return { ...result.rejection, message: `the trial-wide ${type} every subject refers to was refused: ${result.rejection.message}` };
    }
    this.stats.written++;
    const located = result.located?.[fullUrl];
    if (located) return located;
    const conditional = conditionalReference(JSON.parse(json) as BundleEntry);
    if (!conditional) throw new Error(`the server told no id for the trial-wide entry ${fullUrl}, and it has no business key to refer to it by`);
    return conditional;
  }
}

/**
 * The bundle without the given entries, every reference to them (`"urn:uuid:…"` as a JSON string) replaced by
 * the reference they have on the server. A fullUrl is a UUID: it matches nothing else in the text.
 */
export function withoutShared(bundle: SerializedBundle, literal: ReadonlyMap<string, string>): SerializedBundle {
  const texts = bundle.entries
    .filter((e) => e.fullUrl === undefined || !literal.has(e.fullUrl))
    .map((e) => {
      let json = entryBytes(bundle, e).toString('utf8');
      for (const [fullUrl, reference] of literal) json = json.split(JSON.stringify(fullUrl)).join(JSON.stringify(reference));
      return { ...(e.fullUrl !== undefined ? { fullUrl: e.fullUrl } : {}), json };
    });
  return fromEntryTexts(texts);
}
