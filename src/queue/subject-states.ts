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
}

/** One state to set: of the subject's mapping (no destination) or of its delivery to a destination. */
export interface SubjectStateUpdate {
  readonly subject: string;
  readonly destination?: string;
  readonly state: MappingState | DeliveryState;
}

/** A subject's state at one destination, as the API shows it. */
export interface SubjectState {
  readonly subject: string;
  readonly destination: string;
  readonly state: 'delivered' | 'dead-lettered' | 'pending' | 'not-for-destination';
  /** The dead letters that hold it back (dead-lettered only). */
  readonly deadLetters?: string[];
  /** Delivered by an earlier submission (this one's data was identical). */
  readonly deliveredBy?: string;
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
    for (const { subject, destination, state } of states) {
      const field = JSON.stringify(destination === undefined ? [subject] : [subject, destination]);
      const value = JSON.stringify({ state } satisfies StoredSubjectState);
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
   * Each subject's state at each destination that takes the site, sorted by subject then destination.
   * `deadLetters`: the submission's current dead letters; `delivered`: the destinations' delivery records.
   */
  async list(submissionId: string, site: string, destinations: readonly string[], deadLetters: readonly DeadLetter[], delivered: RedisDelivered): Promise<SubjectState[]> {
    const letters = new Map<string, string[]>();
    for (const l of deadLetters) {
      if (l.subject === undefined) continue;
      // A subject's mapping dead letters hold it back everywhere; a delivery's only at its destination.
      const key = JSON.stringify(l.stage === 'deliver' ? [l.subject, l.destination] : [l.subject]);
      letters.set(key, [...(letters.get(key) ?? []), l.id]);
    }
    const out: SubjectState[] = [];
    const subjects = await this.#all(submissionId);
    for (const subject of [...subjects.keys()].sort()) {
      const { mapping, destinations: states } = subjects.get(subject)!;
      for (const destination of destinations) {
        const base = { subject, destination };
        const stored = states.get(destination);
        const ended = (stored ?? mapping)?.state;
        if (ended === 'delivered' || ended === 'not-for-destination') {
          out.push({ ...base, state: ended });
        } else if (ended === 'duplicate') {
          const record = await delivered.get(destination, site, subject);
          out.push(record ? { ...base, state: 'delivered', ...(record.submissionId !== submissionId ? { deliveredBy: record.submissionId } : {}) } : { ...base, state: 'pending' });
        } else if (ended === 'dead-lettered' || ended === 'rejected') {
          // Pending again once its dead letters were replayed (they leave the submission's list).
          const held = letters.get(JSON.stringify(stored ? [subject, destination] : [subject])) ?? [];
          out.push(held.length > 0 ? { ...base, state: 'dead-lettered', deadLetters: held } : { ...base, state: 'pending' });
        } else {
          out.push({ ...base, state: 'pending' });
        }
      }
    }
    return out;
  }
}
