/**
 * Queue names and Redis key names of the delivery pipeline.
 *
 * BullMQ keys are `<prefix>:<queue>:<suffix>`. Give a hash-tagged prefix such as `{tb}` on Redis Cluster:
 * every key (BullMQ's and the pipeline's own counters and dead letters) then hashes to the same slot, which
 * BullMQ's multi-key Lua scripts and the counter script need. BullMQ queue names must not contain ':'.
 */

export const DEFAULT_PREFIX = '{tb}';

/**
 * How long the pipeline's keys that hold submission data live by default (counters, bundles waiting for their
 * delivery, dead letters and their replay payloads, an API submission's site): 30 days after the last write.
 */
export const RETENTION_SECONDS = 30 * 24 * 3600;

export interface QueueNames {
  /** BullMQ key prefix, also the prefix of the pipeline's own keys. */
  readonly prefix: string;
  /** The one mapping queue (all sites). */
  readonly mapping: string;
  /** The delivery queue of a destination. */
  delivery(destination: string): string;
  /** Redis hash of a submission's counters. */
  submissionKey(submissionId: string): string;
  /** Redis set of the (job, event) pairs already counted for a submission: counting is once per job. */
  countedKey(submissionId: string): string;
  /** Redis string holding the bundle of a delivery job (bytes), from its queueing until it is delivered or dead-lettered. */
  bundleKey(deliveryJobId: string): string;
  /** Redis hash of dead letters (id → JSON) as earlier versions kept them, all submissions (read, purged; no longer written). */
  deadLetterKey(): string;
  /** Redis string holding one dead letter (JSON), expiring with the retention. */
  deadLetterEntryKey(deadLetterId: string): string;
  /** Redis string holding the replay payload of a job's dead letters (one per job, shared by its record rejects). */
  deadLetterPayloadKey(jobId: string): string;
  /** Redis sorted set of dead-letter ids of a submission (score = time). */
  deadLetterIndexKey(submissionId: string): string;
}

/** Queue and key names need no ':' and nothing a shell or Redis would trip on: percent-encode the rest. */
export function encodeNamePart(part: string): string {
  return encodeURIComponent(part).replace(/[!'()*:.]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function queueNames(prefix: string = DEFAULT_PREFIX): QueueNames {
  if (prefix === '' || prefix.includes(':')) throw new Error(`queue prefix must be non-empty and without ':' (got '${prefix}')`);
  return {
    prefix,
    mapping: 'tb-map',
    delivery: (destination) => `tb-deliver-${encodeNamePart(destination)}`,
    submissionKey: (id) => `${prefix}:tb-submission:${encodeNamePart(id)}`,
    countedKey: (id) => `${prefix}:tb-submission:${encodeNamePart(id)}:counted`,
    bundleKey: (jobId) => `${prefix}:tb-bundle:${jobId}`,
    deadLetterKey: () => `${prefix}:tb-dead-letters`,
    deadLetterEntryKey: (id) => `${prefix}:tb-dead-letter:${id}`,
    deadLetterPayloadKey: (jobId) => `${prefix}:tb-dead-letter-payload:${jobId}`,
    deadLetterIndexKey: (id) => `${prefix}:tb-dead-letters:${encodeNamePart(id)}`,
  };
}
