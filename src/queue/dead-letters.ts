/**
 * Dead letters in Redis: a hash of entries (id → JSON, see DeadLetter: site, record location or destination,
 * reason, OperationOutcome; never record values or bundles), a hash of replay payloads (id → the job data a
 * replay enqueues; kept apart so that listing never reads patient data), and one sorted set of ids per
 * submission. A replay enqueues the job again under its id with a fresh suffix and removes the dead letter;
 * replaying one record reject of a subject re-maps the whole subject, so every dead letter of that mapping
 * job goes with it.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { replayJobId } from './job-ids.ts';
import type { QueueNames } from './names.ts';
import { bundleText, fromStoredBundle, type StoredBundle } from '../delivery/serialized-bundle.ts';
import { COUNTERS, perDestination, type DeadLetter, type DeliveryJobData, type MappingJobData, type ReplayPayload } from './stages.ts';
import type { RedisSubmissions } from './submissions.ts';

/** Enqueues a replayed job; resolves whether it was added. */
export type ReplayEnqueue = (jobId: string, payload: ReplayPayload) => Promise<boolean>;

/** A replay payload as kept in Redis (JSON): a delivery's bundle as text. */
type StoredPayload =
  | { readonly kind: 'map'; readonly data: MappingJobData }
  | { readonly kind: 'deliver'; readonly data: Omit<DeliveryJobData, 'bundle'> & { readonly bundle: StoredBundle } };

function toStored(payload: ReplayPayload): StoredPayload {
  return payload.kind === 'map' ? payload : { kind: 'deliver', data: { ...payload.data, bundle: bundleText(payload.data.bundle) } };
}

function fromStored(stored: StoredPayload): ReplayPayload {
  return stored.kind === 'map' ? stored : { kind: 'deliver', data: { ...stored.data, bundle: fromStoredBundle(stored.data.bundle) } };
}

export interface ReplayResult {
  readonly replayed: string[];
  /** New job ids added. */
  readonly jobs: string[];
  /** Dead letters that cannot be replayed (a record without a subject: fix the export and submit again). */
  readonly skipped: string[];
}

export class RedisDeadLetters {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly #submissions: RedisSubmissions;

  constructor(redis: Redis, names: QueueNames, submissions: RedisSubmissions) {
    this.#redis = redis;
    this.#names = names;
    this.#submissions = submissions;
  }

  get #entries(): string {
    return this.#names.deadLetterKey();
  }

  get #payloads(): string {
    return `${this.#names.deadLetterKey()}:payload`;
  }

  async deadLetter(entry: DeadLetter, payload?: ReplayPayload): Promise<void> {
    const multi = this.#redis
      .multi()
      .hset(this.#entries, entry.id, JSON.stringify(entry))
      .zadd(this.#names.deadLetterIndexKey(entry.submissionId), String(Date.parse(entry.createdAt)), entry.id);
    if (payload) multi.hset(this.#payloads, entry.id, JSON.stringify(toStored(payload)));
    await multi.exec();
  }

  /** The dead letters of a submission, oldest first. */
  async list(submissionId: string): Promise<DeadLetter[]> {
    const ids = await this.#redis.zrange(this.#names.deadLetterIndexKey(submissionId), '0', '-1');
    if (ids.length === 0) return [];
    const values = await this.#redis.hmget(this.#entries, ...ids);
    return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as DeadLetter);
  }

  async show(id: string): Promise<DeadLetter | undefined> {
    const value = await this.#redis.hget(this.#entries, id);
    return value === null ? undefined : (JSON.parse(value) as DeadLetter);
  }

  async #remove(entries: readonly DeadLetter[]): Promise<void> {
    if (entries.length === 0) return;
    const multi = this.#redis.multi();
    for (const e of entries) {
      multi.hdel(this.#entries, e.id).hdel(this.#payloads, e.id).zrem(this.#names.deadLetterIndexKey(e.submissionId), e.id);
    }
    await multi.exec();
  }

  /** Replays dead letters (ids of one submission); one suffix for the batch, so a subject is re-mapped once. */
  async #replay(submissionId: string, entries: readonly DeadLetter[], enqueue: ReplayEnqueue): Promise<ReplayResult> {
    const suffix = randomUUID().slice(0, 8);
    const result: ReplayResult = { replayed: [], jobs: [], skipped: [] };
    const all = await this.list(submissionId);
    const done = new Set<string>();
    for (const entry of entries) {
      if (done.has(entry.id)) continue;
      const raw = entry.replayable ? await this.#redis.hget(this.#payloads, entry.id) : null;
      if (raw === null) {
        result.skipped.push(entry.id);
        continue;
      }
      const payload = fromStored(JSON.parse(raw) as StoredPayload);
      const jobId = replayJobId(entry.jobId, suffix);
      const added = await enqueue(jobId, payload);
      // A re-mapped subject takes all of its record rejects along.
      const gone = payload.kind === 'map' ? all.filter((e) => e.jobId === entry.jobId && e.stage === 'map') : [entry];
      for (const e of gone) done.add(e.id);
      await this.#remove(gone);
      const increments: Record<string, number> =
        payload.kind === 'map'
          ? { [COUNTERS.replayed]: gone.length, [COUNTERS.queued]: added ? 1 : 0 }
          : {
              [perDestination(COUNTERS.replayed, payload.data.destination)]: 1,
              [perDestination(COUNTERS.deliveryQueued, payload.data.destination)]: added ? 1 : 0,
            };
      await this.#submissions.count(submissionId, `${jobId}|replayed`, increments);
      result.replayed.push(...gone.map((e) => e.id));
      if (added) result.jobs.push(jobId);
    }
    return result;
  }

  async replay(id: string, enqueue: ReplayEnqueue): Promise<ReplayResult> {
    const entry = await this.show(id);
    if (!entry) throw new Error(`no dead letter '${id}'`);
    return this.#replay(entry.submissionId, [entry], enqueue);
  }

  async replayAll(submissionId: string, enqueue: ReplayEnqueue): Promise<ReplayResult> {
    return this.#replay(submissionId, await this.list(submissionId), enqueue);
  }
}
