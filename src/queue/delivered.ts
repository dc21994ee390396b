/**
 * What trialbridge delivered, per destination and subject, for `trialbridge reconcile` (src/delivery/reconcile.ts):
 * the business identifier of every entry of the subject's bundle as it was sent (resource type, the search
 * parameter its conditional update was keyed on, system and value), and the bundle itself, gzipped, so that
 * `reconcile --repair` can queue the subject again when the server lost it.
 *
 * Why keep the bundle rather than re-map: a delivered subject's bytes are deleted (bundle-store.ts) and its
 * mapping job's records are emptied once it completes (pipeline.ts), so nothing else is left to re-queue from;
 * re-mapping would need the records kept instead (larger than the bundle, and the mapping may have changed
 * since: the server would then get something that was never delivered). The bundle as sent (pseudonymised
 * where the destination is) is exactly what the server should hold. It is patient data, so it lives under the
 * same retention as every other delivery key (expiring `ttlSeconds` after the subject's last delivery), one
 * copy per (destination, subject), overwritten by each new delivery, gzipped (about a seventh of the bytes).
 *
 * Keys: `<prefix>:tb-delivered:<destination>:<site>:<subject>` (hash: `record` JSON, `bundle` gzip bytes) and
 * one index per destination, `<prefix>:tb-delivered:<destination>` (sorted set of `<site>:<subject>`, score =
 * time of delivery; members older than the retention are dropped on every write).
 */
import { gunzipSync, gzipSync } from 'node:zlib';
import type { Redis } from 'ioredis';
import type { SerializedBundle, SerializedEntry } from '../delivery/serialized-bundle.ts';
import { bundleEntries, bundleIdentifiers, type DeliveredIdentifier } from '../delivery/verify.ts';
import { encodeNamePart, RETENTION_SECONDS, type QueueNames } from './names.ts';

/** How long a delivery record is kept after the subject's last delivery: the retention of all delivery data. */
export const DELIVERED_TTL_SECONDS = RETENTION_SECONDS;

/** Which delivery of which subject: what the delivery stage knows when a bundle has been delivered. */
export interface DeliveryOrigin {
  readonly destination: string;
  readonly site: string;
  readonly subject: string;
  readonly submissionId: string;
  /** The delivery job that delivered it. */
  readonly jobId: string;
  readonly deliveredAt: string;
  /** The trial's id (its mapping's `trial.id`), when the worker has the site's mapping. */
  readonly trial?: string;
}

/** A subject delivered to a destination. */
export interface SubjectDelivery extends Omit<DeliveryOrigin, 'trial'> {
  /** The trial id and the ResearchStudy identifiers (`value` and `system|value`) it belongs to: `reconcile --study`. */
  readonly studies: readonly string[];
  readonly identifiers: readonly DeliveredIdentifier[];
}

/** A delivery record with the bundle that was sent. */
export interface StoredDelivery extends SubjectDelivery {
  /** Undefined when it was not asked for. */
  readonly bundle?: SerializedBundle;
}

/** The trial id and the ResearchStudy identifiers of a bundle, as `value` and `system|value`. */
export function bundleStudies(bundle: SerializedBundle, trial?: string): string[] {
  const out = new Set<string>(trial ? [trial] : []);
  for (const entry of bundleEntries(bundle)) {
    if (entry.resource?.resourceType !== 'ResearchStudy') continue;
    for (const id of entry.resource.identifier ?? []) {
      if (!id.value) continue;
      out.add(id.value);
      if (id.system) out.add(`${id.system}|${id.value}`);
    }
  }
  return [...out];
}

/** Whether a delivery belongs to a study given as `value` or `system|value`. */
export function ofStudy(delivery: Pick<SubjectDelivery, 'studies'>, study: string): boolean {
  return delivery.studies.includes(study);
}

interface StoredRecord extends SubjectDelivery {
  readonly entries?: readonly SerializedEntry[];
}

const INDEX_MEMBER_SEPARATOR = ':';
/** Records read per round trip. */
const READ_CHUNK = 200;

export class RedisDelivered {
  readonly #redis: Redis;
  readonly #names: QueueNames;
  readonly ttlSeconds: number;

  constructor(redis: Redis, names: QueueNames, ttlSeconds: number = DELIVERED_TTL_SECONDS) {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new Error(`delivery record retention must be a positive number of seconds (got ${ttlSeconds})`);
    this.#redis = redis;
    this.#names = names;
    this.ttlSeconds = ttlSeconds;
  }

  #indexKey(destination: string): string {
    return `${this.#names.prefix}:tb-delivered:${encodeNamePart(destination)}`;
  }

  #member(site: string, subject: string): string {
    return `${encodeNamePart(site)}${INDEX_MEMBER_SEPARATOR}${encodeNamePart(subject)}`;
  }

  #recordKey(destination: string, member: string): string {
    return `${this.#indexKey(destination)}:${member}`;
  }

  /** Records a subject's delivery with the bundle sent (replacing the previous one of the same destination and subject). */
  async record(origin: DeliveryOrigin, bundle: SerializedBundle): Promise<void> {
    const { trial, ...rest } = origin;
    const delivery: SubjectDelivery = { ...rest, studies: bundleStudies(bundle, trial), identifiers: bundleIdentifiers(bundle) };
    const member = this.#member(delivery.site, delivery.subject);
    const key = this.#recordKey(delivery.destination, member);
    const index = this.#indexKey(delivery.destination);
    const at = Date.parse(delivery.deliveredAt);
    const stored: StoredRecord = { ...delivery, entries: bundle.entries };
    const ttl = String(this.ttlSeconds);
    await this.#redis
      .multi()
      .hset(key, 'record', JSON.stringify(stored), 'bundle', gzipSync(bundle.bytes))
      .expire(key, ttl)
      .zadd(index, String(at), member)
      .zremrangebyscore(index, '-inf', String(at - this.ttlSeconds * 1000))
      .expire(index, ttl)
      .exec();
  }

  /** One subject's delivery record, with its bundle when `withBundle`. */
  async get(destination: string, site: string, subject: string, withBundle = false): Promise<StoredDelivery | undefined> {
    const key = this.#recordKey(destination, this.#member(site, subject));
    const [raw, gz] = withBundle ? await this.#redis.hmgetBuffer(key, 'record', 'bundle') : [await this.#redis.hgetBuffer(key, 'record'), null];
    return raw ? fromStored(raw, gz) : undefined;
  }

  /** Every delivery record of a destination (without bundles), optionally of one study, oldest delivery first. */
  async list(destination: string, study?: string): Promise<SubjectDelivery[]> {
    const members = await this.#redis.zrange(this.#indexKey(destination), '0', '-1');
    const out: SubjectDelivery[] = [];
    for (let i = 0; i < members.length; i += READ_CHUNK) {
      const pipeline = this.#redis.pipeline();
      for (const m of members.slice(i, i + READ_CHUNK)) pipeline.hget(this.#recordKey(destination, m), 'record');
      for (const [error, value] of (await pipeline.exec()) ?? []) {
        if (error) throw error;
        if (typeof value !== 'string') continue;
        const { entries: _entries, ...delivery } = JSON.parse(value) as StoredRecord;
        if (study === undefined || ofStudy(delivery, study)) out.push(delivery);
      }
    }
    return out;
  }
}

function fromStored(raw: Buffer, gz: Buffer | null): StoredDelivery {
  const { entries, ...delivery } = JSON.parse(raw.toString('utf8')) as StoredRecord;
  if (!gz || !entries) return delivery;
  return { ...delivery, bundle: { bytes: gunzipSync(gz), entries } };
}
