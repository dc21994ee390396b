/**
 * The end-of-run accounting of the fault tests, from three independent sources: the export as read again
 * (records per subject), Redis (dead letters, submission counters, BullMQ's finished delivery jobs) and the
 * FHIR server (what it holds, by FHIR search over HTTP).
 *
 * Records: a record is *rejected* when it has a read or map dead letter (counted once per file and row, as the
 * `recordsRejected` counter does). Every other record belongs to a subject, and ends with its subject's bundle:
 * *delivered* when the subject's delivery job finished delivered, *dead-lettered* when the delivery (or the
 * whole mapping job) was dead-lettered. A subject all of whose records were rejected has no bundle and no
 * other record. So `submitted = delivered + rejected + deadLettered` holds only if every subject landed in
 * exactly one of these ends: a subject lost on the way (a job gone from Redis, a job failed without a dead
 * letter) or counted twice breaks it, and is listed in `unaccounted` / `twice`.
 *
 * Server: every resource carries its business identifier in `meta.tag` (system = the rule's identifier system,
 * code = the key), and every bundle entry is a conditional update on it (`Type?identifier=` or `?_tag=`). The
 * server must hold each identifier of a delivered bundle exactly once.
 */
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { FhirClient } from '../../src/delivery/client.ts';
import type { CompiledMapping } from '../../src/mapping/compile.ts';
import { readSourceRecords } from '../../src/mapping/records.ts';
import type { QueuePipeline } from '../../src/queue/pipeline.ts';
import type { DeadLetter, DeliveryJobData, DeliveryJobResult } from '../../src/queue/stages.ts';

/** What the accounting reads of a finished delivery job (its bundle's bytes are removed once it finished). */
type FinishedDelivery = Pick<DeliveryJobData, 'submissionId' | 'subject'>;
import type { SubmissionCounters } from '../../src/queue/submissions.ts';

export const TRIAL_NAMESPACE = 'urn:trialbridge:ldccrt-hcc-p2';

export interface RecordAccounting {
  readonly submitted: number;
  readonly delivered: number;
  readonly rejected: number;
  readonly deadLettered: number;
  readonly subjects: {
    readonly total: number;
    readonly delivered: number;
    readonly deadLettered: number;
    readonly allRecordsRejected: number;
    readonly mappingFailed: number;
  };
  /** Subjects that ended nowhere (should be empty). */
  readonly unaccounted: string[];
  /** Subjects that ended in two places (should be empty). */
  readonly twice: string[];
  /** Delivery dead letters of the submission (for the test to check their reasons). */
  readonly deliveryDeadLetters: DeadLetter[];
  readonly counters: SubmissionCounters;
  /** The subjects' bundles (as the destination was sent them), by subject: delivered ones and dead-lettered ones. */
  readonly deliveredBundles: Map<string, Bundle>;
  readonly deadLetteredBundles: Map<string, Bundle>;
}

/** Finished delivery jobs of a submission (completed: delivered or dead-lettered), read from BullMQ. */
async function finishedDeliveries(pipeline: QueuePipeline, destination: string, submissionId: string): Promise<{ data: FinishedDelivery; result: DeliveryJobResult }[]> {
  const queue = pipeline.deliveryQueue(destination);
  const out: { data: FinishedDelivery; result: DeliveryJobResult }[] = [];
  const total = await queue.getCompletedCount();
  const page = 200;
  for (let start = 0; start < total; start += page) {
    for (const job of await queue.getCompleted(start, start + page - 1)) {
      const data = job.data as FinishedDelivery;
      if (data.submissionId === submissionId) out.push({ data, result: job.returnvalue as DeliveryJobResult });
    }
  }
  return out;
}

export async function accountRecords(
  pipeline: QueuePipeline,
  submission: {
    readonly submissionId: string;
    readonly mapping: CompiledMapping;
    readonly inputs: readonly string[];
    /**
     * The export's bundles as mapped (mapExport with the submission's `recorded`): what the destination is sent
     * when it does not pseudonymise. Delivered bundles are not kept in Redis, so they are mapped again here.
     */
    readonly bundles: readonly { readonly subject: string; readonly bundle: Bundle }[];
  },
  destination: string,
): Promise<RecordAccounting> {
  const { submissionId, mapping, inputs } = submission;
  const mapped = new Map(submission.bundles.map((b) => [b.subject, b.bundle]));
  const { records } = await readSourceRecords(mapping, inputs);
  const recordsOf = new Map<string, number>();
  const subjectOfRow = new Map<string, string>();
  for (const r of records) {
    if (!r.subject || !mapping.consumedTypes.has(r.type)) continue;
    recordsOf.set(r.subject, (recordsOf.get(r.subject) ?? 0) + 1);
    subjectOfRow.set(`${r.file}#${r.row}`, r.subject);
  }

  const letters = await pipeline.deadLetters.list(submissionId);
  const rejectedRows = new Set<string>();
  const mappingFailed = new Set<string>();
  for (const l of letters) {
    if (l.stage === 'deliver') continue;
    if (l.location) rejectedRows.add(`${l.location.file}#${l.location.row}`);
    else if (l.subject) mappingFailed.add(l.subject);
  }
  const rejectedOf = new Map<string, number>();
  for (const row of rejectedRows) {
    const subject = subjectOfRow.get(row);
    if (subject) rejectedOf.set(subject, (rejectedOf.get(subject) ?? 0) + 1);
  }
  const deliveryDeadLetters = letters.filter((l) => l.stage === 'deliver' && l.destination === destination);

  const deliveredBundles = new Map<string, Bundle>();
  const deadLetteredBundles = new Map<string, Bundle>();
  for (const { data, result } of await finishedDeliveries(pipeline, destination, submissionId)) {
    const bundle = mapped.get(data.subject);
    if (!bundle) throw new Error(`a delivery job of subject ${data.subject} finished, but mapping the export gives no bundle for it`);
    (result.outcome === 'delivered' ? deliveredBundles : deadLetteredBundles).set(data.subject, bundle);
  }
  const deadLetteredSubjects = new Set(deliveryDeadLetters.map((l) => l.subject!));

  const { delivered, deadLettered, allRejected, unaccounted, twice } = subjectEnds(recordsOf, rejectedOf, {
    delivered: deliveredBundles,
    deadLettered: deadLetteredSubjects,
    mappingFailed,
  });
  return {
    submitted: records.length,
    delivered,
    rejected: rejectedRows.size,
    deadLettered,
    subjects: {
      total: recordsOf.size,
      delivered: deliveredBundles.size,
      deadLettered: deadLetteredSubjects.size,
      allRecordsRejected: allRejected,
      mappingFailed: mappingFailed.size,
    },
    unaccounted,
    twice,
    deliveryDeadLetters,
    counters: await pipeline.submission(submissionId),
    deliveredBundles,
    deadLetteredBundles,
  };
}

/** `Type|system|value` of every entry of a bundle, from its conditional-update URL. */
export function bundleIdentifiers(bundle: Bundle): string[] {
  return (bundle.entry ?? []).map((e) => {
    const url = e.request?.url ?? '';
    const match = /^([A-Za-z]+)\?(?:identifier|_tag)=([^|]+)\|(.+)$/.exec(url);
    if (!match) throw new Error(`entry without a conditional-update URL: ${url}`);
    return `${match[1]}|${decodeURIComponent(match[2])}|${decodeURIComponent(match[3])}`;
  });
}

/** `Type|system|code` of a stored resource's trial tag, or undefined. */
function resourceIdentifier(resource: Resource): string | undefined {
  const tag = resource.meta?.tag?.find((t) => t.system?.startsWith(TRIAL_NAMESPACE));
  return tag ? `${resource.resourceType}|${tag.system}|${tag.code}` : undefined;
}

export interface ServerHoldings {
  /** Business identifier → resources holding it. */
  readonly counts: Map<string, number>;
  /** Resources without a trial tag. */
  readonly untagged: number;
  readonly resources: number;
}

/** Every resource of the given types on a FHIR server (search without paging: the embedded server returns all). */
export async function serverHoldings(baseUrl: string, types: Iterable<string>): Promise<ServerHoldings> {
  const client = new FhirClient({ baseUrl, timeoutMs: 60_000 });
  const counts = new Map<string, number>();
  let untagged = 0;
  let resources = 0;
  for (const type of new Set(types)) {
    const page = (await client.get<Bundle>(`${type}?_count=100000`)).body;
    for (const entry of page?.entry ?? []) {
      resources++;
      const key = resourceIdentifier(entry.resource!);
      if (key === undefined) untagged++;
      else counts.set(key, (counts.get(key) ?? 0) + 1);
    }
  }
  return { counts, untagged, resources };
}

export interface IdentifierCheck {
  /** Identifiers of delivered bundles the server lacks. */
  readonly missing: string[];
  /** Identifiers held more than once. */
  readonly duplicated: string[];
  /** Identifiers held that no delivered bundle has. */
  readonly extra: string[];
  /** Distinct identifiers of the delivered bundles. */
  readonly expected: number;
}

/** Compares what the server holds with the delivered bundles: exactly one resource per delivered identifier. */
export function checkIdentifiers(holdings: ServerHoldings, delivered: Iterable<Bundle>): IdentifierCheck {
  const expected = new Set<string>();
  for (const b of delivered) for (const id of bundleIdentifiers(b)) expected.add(id);
  const missing = [...expected].filter((id) => !holdings.counts.has(id));
  const duplicated = [...holdings.counts].filter(([, n]) => n > 1).map(([id]) => id);
  const extra = [...holdings.counts.keys()].filter((id) => !expected.has(id));
  return { missing, duplicated, extra, expected: expected.size };
}

/** Resource types of a set of bundles. */
export function bundleTypes(bundles: Iterable<Bundle>): Set<string> {
  const types = new Set<string>();
  for (const b of bundles) for (const e of b.entry ?? []) types.add(e.resource!.resourceType);
  return types;
}

/** Where each subject ended, and its records with it (shared by the fault tests and the soak run). */
export interface SubjectEnds {
  /** Records of delivered subjects (their rejected records left out). */
  readonly delivered: number;
  /** Records of subjects dead-lettered at delivery or whose mapping failed. */
  readonly deadLettered: number;
  /** Subjects whose every record was rejected. */
  readonly allRejected: number;
  /** Subjects that ended nowhere, and subjects that ended in two places. */
  readonly unaccounted: string[];
  readonly twice: string[];
}

/**
 * Each subject must end in exactly one place: delivered, dead-lettered, mapping failed, or every record rejected.
 * `recordsOf`: records per subject; `rejectedOf`: rejected records per subject.
 */
export function subjectEnds(
  recordsOf: ReadonlyMap<string, number>,
  rejectedOf: ReadonlyMap<string, number>,
  ends: { readonly delivered: { has(subject: string): boolean }; readonly deadLettered: ReadonlySet<string>; readonly mappingFailed: ReadonlySet<string> },
): SubjectEnds {
  let delivered = 0;
  let deadLettered = 0;
  let allRejected = 0;
  const unaccounted: string[] = [];
  const twice: string[] = [];
  for (const [subject, n] of recordsOf) {
    const kept = n - (rejectedOf.get(subject) ?? 0);
    const count = [ends.delivered.has(subject), ends.deadLettered.has(subject), ends.mappingFailed.has(subject), kept === 0].filter(Boolean).length;
    if (count === 0) unaccounted.push(subject);
    if (count > 1) twice.push(subject);
    if (ends.delivered.has(subject)) delivered += kept;
    else if (ends.deadLettered.has(subject) || ends.mappingFailed.has(subject)) deadLettered += kept;
    else if (kept === 0) allRejected++;
  }
  return { delivered, deadLettered, allRejected, unaccounted, twice };
}
