/**
 * Where each subject of a submission is, per destination (`GET /v1/submissions/{id}/subjects`): one Redis hash
 * per submission (`<prefix>:tb-submission:<id>:subjects`, expiring with the submission's counters), written by
 * the stages as each subject moves on:
 * - field `["<subject>"]`: the subject's mapping (`submitted` when its job is added, `duplicate` when an identical
 *   job of an earlier submission exists, `rejected` when every record was rejected, `dead-lettered` when the
 *   mapping job failed for good);
 * - field `["<subject>","<destination>"]`: its delivery there (`pending` once queued, `duplicate` when an
 *   identical delivery job exists, `not-for-destination`, `delivered`, `dead-lettered` with the dead letter's id).
 * Ends (delivered, dead-lettered) always overwrite; `pending` and the other starts only fill an empty field,
 * so a mapping job run again after its worker died cannot turn a delivered subject back into a pending one.
 *
 * Reading joins them with what is current: a dead letter since replayed (gone from the submission's list) is
 * pending again, and a duplicate is delivered when the destination's delivery record (delivered.ts) says so.
 */
import type { Redis } from 'ioredis';
import type { RedisDelivered } from './delivered.ts';
import { encodeNamePart, RETENTION_SECONDS, type QueueNames } from './names.ts';
import type { DeadLetter } from './stages.ts';

export type MappingState = 'submitted' | 'duplicate' | 'rejected' | 'dead-lettered';
export type DeliveryState = 'pending' | 'duplicate' | 'not-for-destination' | 'delivered' | 'dead-lettered';

/** What is stored per field (a dead letter is found by subject and destination when read). */
export interface StoredSubjectState {
  readonly state: MappingState | DeliveryState;
  /** A duplicate: the job (of an earlier submission) that stands for it. */
  readonly job?: string;
}

/** One state to set: of the subject's mapping (no destination) or of its delivery to a destination. */
export interface SubjectStateUpdate extends StoredSubjectState {
  readonly subject: string;
  readonly destination?: string;
}

/** What reading the states needs besides them. */
export interface SubjectStateSources {
  /** The current dead letters of a submission. */
  deadLetters(submissionId: string): Promise<readonly DeadLetter[]>;
  /** The submission a retained job belongs to (mapping job: no destination), while the job is kept. */
  submissionOf(job: string, destination?: string): Promise<string | undefined>;
  /** The destinations' delivery records. */
  readonly delivered: RedisDelivered;
}

/** A subject's state at one destination, as the API shows it. */
export interface SubjectState {
  readonly subject: string;
  readonly destination: string;
  readonly state: 'delivered' | 'dead-lettered' | 'pending' | 'not-for-destination';
  /** The dead letters that hold it back (dead-lettered only). */
  readonly deadLetters?: string[];
  /** The earlier submission whose identical data stands for this one's (a duplicate): the state is that one's. */
  readonly sameAs?: string;
}

const END_STATES: ReadonlySet<string> = new Set(['delivered', 'dead-lettered', 'rejected']);

export class RedisSubjectStates {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly #ttlSeconds: number;

  constructor(redis: Redis, names: QueueNames, ttlSeconds = RETENTION_SECONDS) {
    this.#redis = redis;
    this.#names = names;
    this.#ttlSeconds = ttlSeconds;
  }

  #key(submissionId: string): string {
    return `${this.#names.prefix}:tb-submission:${encodeNamePart(submissionId)}:subjects`;
  }

  /** Sets states in one round trip: ends overwrite, starts only fill empty fields. */
  async set(submissionId: string, states: readonly SubjectStateUpdate[]): Promise<void> {
    if (states.length === 0) return;
    const key = this.#key(submissionId);
    const multi = this.#redis.multi();
    for (const { subject, destination, state, job } of states) {
      const field = JSON.stringify(destination === undefined ? [subject] : [subject, destination]);
      const value = JSON.stringify({ state, ...(job !== undefined ? { job } : {}) } satisfies StoredSubjectState);
      if (END_STATES.has(state)) multi.hset(key, field, value);
      else multi.hsetnx(key, field, value);
    }
    await multi.expire(key, String(this.#ttlSeconds)).exec();
  }

  async #all(submissionId: string): Promise<Map<string, { mapping?: StoredSubjectState; destinations: Map<string, StoredSubjectState> }>> {
    const subjects = new Map<string, { mapping?: StoredSubjectState; destinations: Map<string, StoredSubjectState> }>();
    let cursor = '0';
    do {
      const [next, fields] = await this.#redis.hscan(this.#key(submissionId), cursor, 'COUNT', '1000');
      for (let i = 0; i < fields.length; i += 2) {
        const [subject, destination] = JSON.parse(fields[i]) as [string, string?];
        const state = JSON.parse(fields[i + 1]) as StoredSubjectState;
        const entry = subjects.get(subject) ?? { destinations: new Map<string, StoredSubjectState>() };
        if (destination === undefined) entry.mapping = state;
        else entry.destinations.set(destination, state);
        subjects.set(subject, entry);
      }
      cursor = next;
    } while (cursor !== '0');
    return subjects;
  }

  /**
   * Each subject's state at each destination that takes the site, sorted by subject then destination. A
   * duplicate (identical to a subject of an earlier submission, whose job was still kept) takes the state of
   * that submission's subject, named in `sameAs`.
   */
  async list(submissionId: string, site: string, destinations: readonly string[], sources: SubjectStateSources): Promise<SubjectState[]> {
    const letters = lettersBySubject(await sources.deadLetters(submissionId));
    const out: SubjectState[] = [];
    const subjects = await this.#all(submissionId);
    for (const subject of [...subjects.keys()].sort()) {
      const { mapping, destinations: states } = subjects.get(subject)!;
      for (const destination of destinations) {
        out.push({ subject, destination, ...(await this.#resolve(submissionId, site, subject, destination, mapping, states.get(destination), letters, sources, true)) });
      }
    }
    return out;
  }

  async #resolve(
    submissionId: string,
    site: string,
    subject: string,
    destination: string,
    mapping: StoredSubjectState | undefined,
    stored: StoredSubjectState | undefined,
    letters: ReadonlyMap<string, string[]>,
    sources: SubjectStateSources,
    followDuplicate: boolean,
  ): Promise<Omit<SubjectState, 'subject' | 'destination'>> {
    const ended = stored ?? mapping;
    switch (ended?.state) {
      case 'delivered':
      case 'not-for-destination':
        return { state: ended.state };
      case 'dead-lettered':
      case 'rejected': {
        // Pending again once its dead letters were replayed (they leave the submission's list).
        const held = letters.get(JSON.stringify(stored ? [subject, destination] : [subject])) ?? [];
        return held.length > 0 ? { state: 'dead-lettered', deadLetters: held } : { state: 'pending' };
      }
      case 'duplicate': {
        const origin = followDuplicate && ended.job !== undefined ? await sources.submissionOf(ended.job, stored ? destination : undefined) : undefined;
        if (origin !== undefined && origin !== submissionId) {
          const [originMapping, originStored] = await this.#fields(origin, subject, destination);
          const state = await this.#resolve(origin, site, subject, destination, originMapping, originStored, lettersBySubject(await sources.deadLetters(origin)), sources, false);
          return { ...state, sameAs: origin };
        }
        // The earlier job is gone (past its retention): what was delivered is still on record.
        const record = await sources.delivered.get(destination, site, subject);
        return record ? { state: 'delivered', ...(record.submissionId !== submissionId ? { sameAs: record.submissionId } : {}) } : { state: 'pending' };
      }
      default:
        return { state: 'pending' };
    }
  }

  /** A subject's mapping state and its state at a destination, in one submission. */
  async #fields(submissionId: string, subject: string, destination: string): Promise<[StoredSubjectState | undefined, StoredSubjectState | undefined]> {
    const values = await this.#redis.hmget(this.#key(submissionId), JSON.stringify([subject]), JSON.stringify([subject, destination]));
    return values.map((v) => (v === null ? undefined : (JSON.parse(v) as StoredSubjectState))) as [StoredSubjectState | undefined, StoredSubjectState | undefined];
  }
}

/** Dead-letter ids by `[subject]` (mapping stage) or `[subject, destination]` (delivery stage). */
function lettersBySubject(deadLetters: readonly DeadLetter[]): Map<string, string[]> {
  const letters = new Map<string, string[]>();
  for (const l of deadLetters) {
    if (l.subject === undefined) continue;
    // A subject's mapping dead letters hold it back everywhere; a delivery's only at its destination.
    const key = JSON.stringify(l.stage === 'deliver' ? [l.subject, l.destination] : [l.subject]);
    letters.set(key, [...(letters.get(key) ?? []), l.id]);
  }
  return letters;
}
