/**
 * Deterministic BullMQ job ids. BullMQ ignores an `add` whose job id already exists (waiting, active, delayed,
 * or completed/failed and still retained), so an unchanged subject submitted again is not queued twice.
 * Ids must not contain ':' (BullMQ key separator) and must not be plain integers: every part is
 * percent-encoded (see encodeNamePart) and the id starts with a letter.
 */
import { createHash } from 'node:crypto';
import type { Bundle } from '@medplum/fhirtypes';
import { isSerialized, type SerializedBundle } from '../delivery/serialized-bundle.ts';
import type { SourceRecord } from '../source/record.ts';
import { encodeNamePart } from './names.ts';

/** JSON with object keys sorted, so equal data gives equal bytes whatever the key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    }
    return v;
  });
}

/**
 * Hash of data built by trialbridge itself (records from a reader, bundles from the engine): their key order is
 * fixed by the code that builds them, so plain JSON text is stable for equal data and several times cheaper than
 * canonicalJson (which showed as a tenth of the queue's CPU). Data of other origin: hash canonicalJson instead.
 */
export function contentHash(value: unknown): string {
  return textHash(JSON.stringify(value));
}

/** Hash of JSON text (or its UTF-8 bytes): equal to contentHash of the value it is the JSON.stringify of. */
export function textHash(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 40);
}

/**
 * Hash of a subject's records, independent of their order in the export and of the column order. The file
 * digest is left out: another subject's change alters the file, not this subject's records.
 */
export function recordsHash(records: readonly SourceRecord[]): string {
  const sorted = [...records].sort((a, b) => (a.file === b.file ? a.row - b.row : a.file < b.file ? -1 : 1));
  const hash = createHash('sha256');
  for (const r of sorted) {
    const fields = Object.keys(r.fields)
      .sort()
      .map((k) => [k, r.fields[k]]);
    hash.update(JSON.stringify([r.site, r.file, r.row, r.type, r.subject, r.key, fields, r.problem ?? null]));
    hash.update('\n');
  }
  return hash.digest('hex').slice(0, 40);
}

/**
 * The subject as a job id carries it: a hash of site and subject key, not the key. Job ids are shown by Bull
 * Board, logged by BullMQ and make dead-letter ids; the hash keeps them deterministic (deduplication) without
 * naming the patient.
 */
export function subjectTag(site: string, subject: string): string {
  return `s${createHash('sha256').update(`${site}\0${subject}`).digest('hex').slice(0, 24)}`;
}

/** Mapping job: per (site, subject, mapping version, hash of the subject's records). */
export function mappingJobId(site: string, subject: string, mappingVersion: string, hash: string): string {
  return ['map', site, subjectTag(site, subject), mappingVersion, hash].map(encodeNamePart).join('.');
}

/** Delivery job: per (destination, business key = site + subject, hash of the bundle as sent). */
export function deliveryJobId(destination: string, site: string, subject: string, bundle: Bundle | SerializedBundle | string): string {
  const hash = typeof bundle === 'string' ? bundle : isSerialized(bundle) ? textHash(bundle.bytes) : contentHash(bundle);
  return ['dlv', destination, site, subjectTag(site, subject), hash].map(encodeNamePart).join('.');
}

/** The id of a replayed job: the original id with a fresh suffix, so BullMQ does not take it for a duplicate. */
export function replayJobId(jobId: string, suffix: string): string {
  return `${jobId}.replay-${encodeNamePart(suffix)}`;
}
