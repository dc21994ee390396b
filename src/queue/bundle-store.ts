/**
 * The bundles of delivery jobs, in Redis beside the jobs (`<prefix>:tb-bundle:<job id>`), as the bytes that are
 * posted. A BullMQ job's data is JSON: a ~40 KB bundle inside it would be escaped, copied through BullMQ's
 * scripts, decoded and parsed by the worker, and kept with the finished job for its retention (24 h) — patient
 * data lingering in Redis after it was delivered. Here the job carries only where the entries are
 * (SerializedEntry) and the bytes travel as they are: stored before the job is added (a worker never finds a
 * job without its bundle), read by the worker as a Buffer, and removed once the job has delivered or
 * dead-lettered it (a dead letter keeps its own copy for replay).
 *
 * The TTL is a safety net for a bundle no job will remove (two runs of one mapping job racing to queue the
 * same delivery); a delivery job still waiting when it expires is dead-lettered, not replayable, and says so.
 */
import type { Redis } from 'ioredis';
import type { SerializedBundle } from '../delivery/serialized-bundle.ts';
import { RETENTION_SECONDS, type QueueNames } from './names.ts';

/** How long a bundle waits for its delivery at most (as long as the submission's counters are kept). */
export const BUNDLE_TTL_SECONDS = RETENTION_SECONDS;

export class RedisBundles {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly ttlSeconds: number;

  constructor(redis: Redis, names: QueueNames, ttlSeconds = BUNDLE_TTL_SECONDS) {
    this.#redis = redis;
    this.#names = names;
    this.ttlSeconds = ttlSeconds;
  }

  async store(jobId: string, bundle: SerializedBundle): Promise<void> {
    await this.#redis.set(this.#names.bundleKey(jobId), bundle.bytes, 'EX', this.ttlSeconds);
  }

  /** The bundle's bytes; null when it is gone (delivered already, or expired). */
  load(jobId: string): Promise<Buffer | null> {
    return this.#redis.getBuffer(this.#names.bundleKey(jobId));
  }

  async release(jobId: string): Promise<void> {
    await this.#redis.del(this.#names.bundleKey(jobId));
  }
}
