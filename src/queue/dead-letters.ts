/**
 * Dead letters in Redis, each key expiring after the retention (default RETENTION_SECONDS, refreshed by every
 * write to it):
 * - one string per dead letter (`tb-dead-letter:<id>`, JSON, see DeadLetter: site, record location or
 *   destination, reason, OperationOutcome; never record values or bundles);
 * - one replay payload per job (`tb-dead-letter-payload:<job id>`: the job data a replay enqueues, kept apart
 *   so that listing never reads patient data). Every record reject of a mapping job refers to the one payload of
 *   its job: storing a copy of the subject's records with each reject made a subject with n bad rows cost n
 *   copies of its records (400 bad rows of one subject: 75 MiB);
 * - one sorted set of ids per submission (score = time).
 * Dead letters written by earlier versions (one hash of entries, one of payloads, without expiry) are still
 * read, replayed and purged.
 *
 * A replay enqueues the job again under its id with a fresh suffix and removes the dead letter; replaying one
 * record reject of a subject re-maps the whole subject, so every dead letter of that mapping job goes with it.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { replayJobId } from './job-ids.ts';
import { RETENTION_SECONDS, type QueueNames } from './names.ts';
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

/** Which dead letters `purge` removes: of one submission, created before a time, or all (each may combine). */
export interface PurgeSelection {
  readonly submissionId?: string;
  /** Only those created before this time. */
  readonly before?: Date;
}

/** Dead letters per SCAN round and per MGET. */
const SCAN_COUNT = 500;

export class RedisDeadLetters {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly #submissions: RedisSubmissions;
  readonly ttlSeconds: number;

  constructor(redis: Redis, names: QueueNames, submissions: RedisSubmissions, ttlSeconds: number = RETENTION_SECONDS) {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new Error(`dead-letter retention must be a positive number of seconds (got ${ttlSeconds})`);
    this.#redis = redis;
    this.#names = names;
    this.#submissions = submissions;
    this.ttlSeconds = ttlSeconds;
  }

  /** The hashes of earlier versions (entries, payloads by dead-letter id): read and purged, never written. */
  get #legacyEntries(): string {
    return this.#names.deadLetterKey();
  }

  get #legacyPayloads(): string {
    return `${this.#names.deadLetterKey()}:payload`;
  }

  async deadLetter(entries: DeadLetter | readonly DeadLetter[], payload?: ReplayPayload): Promise<void> {
    const list: readonly DeadLetter[] = Array.isArray(entries) ? entries : [entries as DeadLetter];
    if (list.length === 0) return;
    const ttl = String(this.ttlSeconds);
    const multi = this.#redis.multi();
    // One payload per job: the entries of one call all come from the job that made it.
    if (payload) multi.set(this.#names.deadLetterPayloadKey(list[0].jobId), JSON.stringify(toStored(payload)), 'EX', ttl);
    const indexes = new Set<string>();
    for (const entry of list) {
      const index = this.#names.deadLetterIndexKey(entry.submissionId);
      indexes.add(index);
      multi.set(this.#names.deadLetterEntryKey(entry.id), JSON.stringify(entry), 'EX', ttl).zadd(index, String(Date.parse(entry.createdAt)), entry.id);
    }
    for (const index of indexes) multi.expire(index, ttl);
    await multi.exec();
  }

  /** Dead letters by id (missing ones, expired or removed, left out), in the order given. */
  async #get(ids: readonly string[]): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for (let i = 0; i < ids.length; i += SCAN_COUNT) {
      const chunk = ids.slice(i, i + SCAN_COUNT);
      const values = await this.#redis.mget(...chunk.map((id) => this.#names.deadLetterEntryKey(id)));
      const missing = chunk.filter((_id, j) => values[j] === null);
      const legacy = missing.length > 0 ? await this.#redis.hmget(this.#legacyEntries, ...missing) : [];
      const legacyById = new Map(missing.map((id, j) => [id, legacy[j]]));
      chunk.forEach((id, j) => {
        const value = values[j] ?? legacyById.get(id) ?? null;
        if (value !== null) out.push(JSON.parse(value) as DeadLetter);
      });
    }
    return out;
  }

  /** The dead letters of a submission, oldest first. */
  async list(submissionId: string): Promise<DeadLetter[]> {
    return this.#get(await this.#redis.zrange(this.#names.deadLetterIndexKey(submissionId), '0', '-1'));
  }

  async show(id: string): Promise<DeadLetter | undefined> {
    return (await this.#get([id]))[0];
  }

  /** Every dead letter of every submission (no order). */
  async all(): Promise<DeadLetter[]> {
    const ids: string[] = [];
    const entryPrefix = this.#names.deadLetterEntryKey('');
    let cursor = '0';
    do {
      const [next, keys] = await this.#redis.scan(cursor, 'MATCH', `${globEscape(entryPrefix)}*`, 'COUNT', String(SCAN_COUNT));
      ids.push(...keys.map((k) => k.slice(entryPrefix.length)));
      cursor = next;
    } while (cursor !== '0');
    const legacy = await this.#redis.hkeys(this.#legacyEntries);
    return this.#get([...new Set([...ids, ...legacy])]);
  }

  /** Removes dead letters and the payloads no remaining dead letter of their job refers to. */
  async #remove(entries: readonly DeadLetter[]): Promise<void> {
    if (entries.length === 0) return;
    const multi = this.#redis.multi();
    for (const e of entries) {
      multi
        .del(this.#names.deadLetterEntryKey(e.id))
        .hdel(this.#legacyEntries, e.id)
        .hdel(this.#legacyPayloads, e.id)
        .zrem(this.#names.deadLetterIndexKey(e.submissionId), e.id);
    }
    await multi.exec();
    const jobsBySubmission = new Map<string, Set<string>>();
    for (const e of entries) {
      const jobs = jobsBySubmission.get(e.submissionId) ?? new Set<string>();
      jobsBySubmission.set(e.submissionId, jobs.add(e.jobId));
    }
    for (const [submissionId, jobs] of jobsBySubmission) {
      const kept = new Set((await this.list(submissionId)).map((e) => e.jobId));
      const orphaned = [...jobs].filter((j) => !kept.has(j)).map((j) => this.#names.deadLetterPayloadKey(j));
      if (orphaned.length > 0) await this.#redis.del(...orphaned);
    }
  }

  /** The replay payload of a dead letter, if it has one (still). */
  async #payload(entry: DeadLetter): Promise<ReplayPayload | undefined> {
    const raw = (await this.#redis.get(this.#names.deadLetterPayloadKey(entry.jobId))) ?? (await this.#redis.hget(this.#legacyPayloads, entry.id));
    return raw === null ? undefined : fromStored(JSON.parse(raw) as StoredPayload);
  }

  /** Replays dead letters (ids of one submission); one suffix for the batch, so a subject is re-mapped once. */
  async #replay(submissionId: string, entries: readonly DeadLetter[], enqueue: ReplayEnqueue): Promise<ReplayResult> {
    const suffix = randomUUID().slice(0, 8);
    const result: ReplayResult = { replayed: [], jobs: [], skipped: [] };
    const all = await this.list(submissionId);
    const done = new Set<string>();
    for (const entry of entries) {
      if (done.has(entry.id)) continue;
      const payload = entry.replayable ? await this.#payload(entry) : undefined;
      if (payload === undefined) {
        result.skipped.push(entry.id);
        continue;
      }
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

  /** Removes the dead letters selected (with their payloads); resolves how many went. */
  async purge(selection: PurgeSelection = {}): Promise<number> {
    const candidates = selection.submissionId !== undefined ? await this.list(selection.submissionId) : await this.all();
    const cutoff = selection.before?.getTime();
    const chosen = cutoff === undefined ? candidates : candidates.filter((e) => Date.parse(e.createdAt) < cutoff);
    await this.#remove(chosen);
    return chosen.length;
  }
}

/** `text` matched literally by a Redis SCAN pattern (the prefix is a hash tag such as `{tb}`). */
function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

/** Why a dead letter is there, as a stable code a client can act on. */
export type DeadLetterCode =
  | 'record_rejected'
  | 'mapping_failed'
  | 'delivery_rejected'
  | 'delivery_gave_up'
  | 'destination_profiles'
  | 'bundle_expired';

/**
 * A dead letter as it may be shown outside the engineer's rejects file (API answers, `dlq` output, logs):
 * where (file, row, field; destination, status), a reason code, and a reason without source or server values.
 * A reason quotes what it found ("'Wilhelmina Quillfeather' is not a UCUM unit") and a server's
 * OperationOutcome says what it pleases (a birth date, a name): quoted text and dates are masked, a server's
 * diagnostics are left out (its issues' severity and code remain). The full text stays in the dead letter in
 * Redis (expiring with it) and goes to the rejects file of `trialbridge dlq rejects`.
 */
export interface PublicDeadLetter {
  readonly code: DeadLetterCode;
  readonly reason: string;
  /** The OperationOutcome's issues without their text: severity and code only. */
  readonly issues?: { readonly severity: string; readonly code: string }[];
}

const MASK = '…';
/** Quoted text (single, double, typographic quotes) and dates in any common form. */
const VALUE_PATTERNS: readonly RegExp[] = [
  /'[^'\n]*'/g,
  /"[^"\n]*"/g,
  /‘[^’\n]*’/g,
  /“[^”\n]*”/g,
  /\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?\b/g,
];

/** `text` with quoted values and dates masked; quoted names in `keep` (the field a reason is about) stay. */
export function maskValues(text: string, keep: readonly string[] = []): string {
  const kept = new Set(keep);
  // A masked quote stays a quote ('…'), so the sentence still reads.
  return VALUE_PATTERNS.reduce(
    (t, re) => t.replace(re, (m) => (kept.has(m.slice(1, -1)) ? m : m[0] === "'" || m[0] === '"' ? `${m[0]}${MASK}${m[0]}` : MASK)),
    text,
  );
}

export function deadLetterCode(l: DeadLetter): DeadLetterCode {
  if (l.stage !== 'deliver') return l.location ? 'record_rejected' : 'mapping_failed';
  if (l.id.endsWith('|profiles')) return 'destination_profiles';
  if (!l.replayable) return 'bundle_expired';
  return l.reason.startsWith('gave up') ? 'delivery_gave_up' : 'delivery_rejected';
}

export function publicDeadLetter(l: DeadLetter): PublicDeadLetter {
  const code = deadLetterCode(l);
  const issues = l.outcome?.issue?.map((i) => ({ severity: String(i.severity), code: String(i.code) }));
  const reason =
    code === 'delivery_rejected'
      ? `the destination rejected the bundle${l.status !== undefined ? ` (HTTP ${l.status})` : ''}; its message is in the rejects file`
      : maskValues(l.reason, l.location ? [l.location.field] : []);
  return { code, reason, ...(issues?.length ? { issues } : {}) };
}
