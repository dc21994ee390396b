/**
 * Per-submission counters in Redis: one hash per submission (`<prefix>:tb-submission:<id>`), fields named in
 * COUNTERS (per destination `<counter>:<destination>`). Each job counts once per event, whatever the retries:
 * a Lua script adds the increments only when the (job, event) key is new in the submission's `counted` set.
 * Keys expire `ttlSeconds` after the last update (default 30 days).
 */
import type { Redis } from 'ioredis';
import { RETENTION_SECONDS, type QueueNames } from './names.ts';
import { COUNTERS } from './stages.ts';

const COUNT_ONCE_COMMAND = 'tbCountOnce';
const COUNT_ONCE = `
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
`;

export interface DestinationCounters {
  deliveryQueued: number;
  deliveryDuplicates: number;
  delivered: number;
  deadLettered: number;
  replayed: number;
  /** Bundles with no resource type the destination takes. */
  notForDestination: number;
}

export interface SubmissionCounters {
  readonly id: string;
  readonly subjects: number;
  readonly queued: number;
  readonly duplicates: number;
  readonly mapped: number;
  readonly subjectsRejected: number;
  readonly mappingFailed: number;
  readonly recordsRejected: number;
  readonly replayed: number;
  readonly destinations: Record<string, DestinationCounters>;
}

/** Counters from the flat field → number form (also used by the in-process runner). */
export function toSubmissionCounters(id: string, fields: Readonly<Record<string, number>>): SubmissionCounters {
  const destinations: Record<string, DestinationCounters> = {};
  for (const [field, value] of Object.entries(fields)) {
    const at = field.indexOf(':');
    if (at < 0) continue;
    const counter = field.slice(0, at) as keyof DestinationCounters;
    const destination = field.slice(at + 1);
    destinations[destination] ??= { deliveryQueued: 0, deliveryDuplicates: 0, delivered: 0, deadLettered: 0, replayed: 0, notForDestination: 0 };
    if (counter in destinations[destination]) destinations[destination][counter] += value;
  }
  const get = (name: string) => fields[name] ?? 0;
  return {
    id,
    subjects: get(COUNTERS.subjects),
    queued: get(COUNTERS.queued),
    duplicates: get(COUNTERS.duplicates),
    mapped: get(COUNTERS.mapped),
    subjectsRejected: get(COUNTERS.subjectsRejected),
    mappingFailed: get(COUNTERS.mappingFailed),
    recordsRejected: get(COUNTERS.recordsRejected),
    replayed: get(COUNTERS.replayed),
    destinations,
  };
}

export class RedisSubmissions {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly #ttlSeconds: number;

  constructor(redis: Redis, names: QueueNames, ttlSeconds = RETENTION_SECONDS) {
    // A named script (EVALSHA, loaded once per connection) rather than sending the Lua text with every event.
    if (!(COUNT_ONCE_COMMAND in redis)) redis.defineCommand(COUNT_ONCE_COMMAND, { numberOfKeys: 2, lua: COUNT_ONCE });
    this.#redis = redis;
    this.#names = names;
    this.#ttlSeconds = ttlSeconds;
  }

  /** Adds the increments once per onceKey. */
  async count(submissionId: string, onceKey: string, increments: Readonly<Record<string, number>>): Promise<void> {
    const pairs = Object.entries(increments).filter(([, n]) => n !== 0).flatMap(([field, n]) => [field, String(n)]);
    const redis = this.#redis as Redis & Record<typeof COUNT_ONCE_COMMAND, (...args: string[]) => Promise<number>>;
    await redis[COUNT_ONCE_COMMAND](this.#names.countedKey(submissionId), this.#names.submissionKey(submissionId), onceKey, String(this.#ttlSeconds), ...pairs);
  }

  /** Whether an event was counted already (a job that ran to that point before, then died). */
  async counted(submissionId: string, onceKey: string): Promise<boolean> {
    return (await this.#redis.sismember(this.#names.countedKey(submissionId), onceKey)) === 1;
  }

  /** The counters of a submission (all zero when unknown). */
  async get(submissionId: string): Promise<SubmissionCounters> {
    const raw = await this.#redis.hgetall(this.#names.submissionKey(submissionId));
    return toSubmissionCounters(submissionId, Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, Number(v)])));
  }
}
