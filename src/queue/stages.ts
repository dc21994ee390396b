/**
 * The stages of the pipeline as plain functions over plain data, shared by the BullMQ workers (pipeline.ts)
 * and the in-process runner (in-process.ts): read & group an export, map one subject, deliver one bundle.
 * Side effects go through a PipelineStore (counters, dead letters) and an `enqueue` callback, so the two
 * runners differ only in where jobs wait.
 */
import type { Bundle, OperationOutcome } from '@medplum/fhirtypes';
import { subjectBundle } from '../bundle/transaction.ts';
import { validationCheck } from '../bundle/map-export.ts';
import { CircuitBreakers, CircuitOpenError, type CircuitBreaker } from '../delivery/circuit-breaker.ts';
import type { FhirClient } from '../delivery/client.ts';
import { destinationClient } from '../delivery/destination-client.ts';
import { TransactionBatcher } from '../delivery/batcher.ts';
import { DeliveryRetryableError, undoAfterGivingUp, type DeliverOptions, type DeliveryResult } from '../delivery/deliver.ts';
import { SharedEntries, type SharedEntryStore } from '../delivery/shared-entries.ts';
import { incidentLine, MemoryPacer, paced, paceSignal, type Pacer, type PacingIncident } from '../delivery/pacing.ts';
import type { Logger } from '../log.ts';
import { serializeBundle, type SerializedBundle } from '../delivery/serialized-bundle.ts';
import type { Destination } from '../delivery/destinations.ts';
import { pseudonymiseBundle } from '../delivery/pseudonymise.ts';
import { filterBundle } from '../delivery/resource-filter.ts';
import type { CompiledMapping } from '../mapping/compile.ts';
import { mapRecords } from '../mapping/engine.ts';
import { readSourceRecords } from '../mapping/records.ts';
import type { RecordProblem, SourceRecord } from '../source/record.ts';
import { describeIssue } from '../validation/base.ts';
import type { ResourceValidator } from '../validation/validator.ts';
import { DeliveryVerificationError, shouldVerify, verifyDelivered } from '../delivery/verify.ts';
import type { DeliveryOrigin } from './delivered.ts';
import { deliveryJobId, mappingJobId, recordsHash } from './job-ids.ts';
import type { SubjectStateUpdate } from './subject-states.ts';

/** Data of a mapping job: one subject's records (plain data, JSON-safe). */
export interface MappingJobData {
  readonly submissionId: string;
  readonly site: string;
  readonly mappingVersion: string;
  readonly subject: string;
  /** Provenance.recorded of the bundle. */
  readonly recorded: string;
  /** Emptied once the job has completed (QueuePipeline): a retained job keeps no patient data. */
  readonly records: SourceRecord[];
}

/**
 * Data of a delivery job: one subject's bundle, as it is sent to that destination (pseudonymised or not), as
 * bytes: serialised once when mapped, posted as it is (delivery/serialized-bundle.ts). On BullMQ the bytes are
 * kept beside the job, not in its data (queue/bundle-store.ts).
 */
export interface DeliveryJobData {
  readonly submissionId: string;
  readonly destination: string;
  readonly site: string;
  readonly subject: string;
  readonly bundle: SerializedBundle;
  /** The mapping job that queued it: a mapping job run again (its worker died) knows its own delivery jobs. */
  readonly origin?: string;
}

/** Where a dead letter came from: reading (no subject), mapping (a record), or delivering (a bundle). */
export type DeadLetterStage = 'read' | 'map' | 'deliver';

/** A dead letter as listed and shown: locations and reasons, never record values or the bundle. */
export interface DeadLetter {
  readonly id: string;
  readonly submissionId: string;
  readonly stage: DeadLetterStage;
  readonly site: string;
  readonly subject?: string;
  /** Mapping rejects: the record. */
  readonly location?: { readonly file: string; readonly row: number; readonly key: string; readonly field: string; readonly rule?: string };
  /** Delivery failures: the destination. */
  readonly destination?: string;
  readonly reason: string;
  /** HTTP status of a rejected delivery. */
  readonly status?: number;
  /** The validator's or the server's OperationOutcome. */
  readonly outcome?: OperationOutcome;
  /** Whether it can be replayed (enqueued again). */
  readonly replayable: boolean;
  /** The job it came from. */
  readonly jobId: string;
  readonly createdAt: string;
}

/** What a replay enqueues; stored apart from the dead letter (it holds record values or the bundle). */
export type ReplayPayload = { readonly kind: 'map'; readonly data: MappingJobData } | { readonly kind: 'deliver'; readonly data: DeliveryJobData };

/** Counters and dead letters of submissions. */
export interface PipelineStore {
  /**
   * Adds `increments` to the submission's counters, once per `onceKey` (a job id and event): a job run again
   * (BullMQ retry, stalled job recovery) does not count twice.
   */
  count(submissionId: string, onceKey: string, increments: Readonly<Record<string, number>>): Promise<void>;
  /**
   * Stores dead letters of one job (same id again: replaced), with what a replay of that job would enqueue:
   * one payload for all of them, however many records of the subject were rejected.
   */
  deadLetter(entries: DeadLetter | readonly DeadLetter[], payload?: ReplayPayload): Promise<void>;
  /** Where subjects stand per destination, for `GET /v1/submissions/{id}/subjects` (optional: not kept in process). */
  subjects?(submissionId: string, states: readonly SubjectStateUpdate[]): Promise<void>;
  /** A subject delivered: its business identifiers and the bundle sent, for `reconcile` (optional: not kept in process). */
  delivered?(origin: DeliveryOrigin, bundle: SerializedBundle): Promise<void>;
}

/** Counter names (fields of the submission hash). Per destination: `<name>:<destination>`. */
export const COUNTERS = {
  /** Subjects in the export (submitExport). */
  subjects: 'subjects',
  /** Mapping jobs added (a subject already pending/retained is not added again; replays are added). */
  queued: 'queued',
  /** Subjects not added because an identical mapping job already exists. */
  duplicates: 'duplicates',
  /** Mapping jobs finished with a bundle. */
  mapped: 'mapped',
  /** Mapping jobs finished without a bundle (every record of the subject rejected). */
  subjectsRejected: 'subjectsRejected',
  /** Mapping jobs that failed for good (a bug, a mapping version mismatch), each a dead letter. */
  mappingFailed: 'mappingFailed',
  /** Records rejected (read or map stage), each a dead letter. */
  recordsRejected: 'recordsRejected',
  /** Delivery jobs added, per destination. */
  deliveryQueued: 'deliveryQueued',
  /** Delivery jobs not added: identical job exists, per destination. */
  deliveryDuplicates: 'deliveryDuplicates',
  /** Bundles holding no resource type the destination takes (its resourceTypes), so not sent, per destination. */
  notForDestination: 'notForDestination',
  /** Bundles delivered, per destination. */
  delivered: 'delivered',
  /** Bundles dead-lettered (rejected by the server, retries exhausted, destination profile failed), per destination. */
  deadLettered: 'deadLettered',
  /** Dead letters replayed (map stage: `replayed`; deliveries: per destination). */
  replayed: 'replayed',
} as const;

export function perDestination(counter: string, destination: string): string {
  return `${counter}:${destination}`;
}

/** Configuration shared by every stage. */
export interface PipelineConfig {
  /** Compiled mappings, one per site. */
  readonly mappings: readonly CompiledMapping[];
  readonly destinations: readonly Destination[];
  /**
   * Validator of the trial's profiles (loading one is slow: share it, e.g. defaultValidator()). `null` maps
   * without validating (like `map --no-validate`): an explicit choice, never a default.
   */
  readonly validator: ResourceValidator | null;
  /** The FHIR client of a destination (default: one per destination from its baseUrl, timeout and auth). */
  readonly clientFor?: (destination: Destination) => FhirClient;
  /** Extra deliverBundle options (tests inject `sleep`). */
  readonly deliverOptions?: Partial<DeliverOptions>;
  /** Clock of the circuit breakers and of in-memory pacing (default Date.now). */
  readonly now?: () => number;
  /**
   * The pacer of a destination (delivery/pacing.ts): QueuePipeline's share its limit through Redis; by default
   * each destination is paced in memory, and each incident is logged once (`onBackoff`, default the logger).
   */
  readonly pacerFor?: (destination: Destination) => Pacer;
  readonly onBackoff?: (incident: PacingIncident) => void;
  /** Where each delivery logs its per-entry outcome counts (status classes, never values); none: not logged. */
  readonly logger?: Logger;
}

/** Prepared configuration: lookups and one FHIR client per destination. */
export class PipelineContext {
  readonly config: PipelineConfig;
  readonly #mappings = new Map<string, CompiledMapping>();
  readonly #destinations = new Map<string, Destination>();
  readonly #clients = new Map<string, FhirClient>();
  readonly #batchers = new Map<string, TransactionBatcher>();
  readonly #pacers = new Map<string, Pacer>();
  /** Per process: each worker process judges a destination by what it saw itself. */
  readonly breakers: CircuitBreakers;
  /** Trial-wide entries written once per destination (in process by default; QueuePipeline shares them through Redis). */
  shared: SharedEntries;

  constructor(config: PipelineConfig) {
    this.breakers = new CircuitBreakers(config.now);
    this.shared = new SharedEntries();
    this.config = config;
    for (const m of config.mappings) {
      if (this.#mappings.has(m.site)) throw new Error(`two mappings for site '${m.site}'`);
      this.#mappings.set(m.site, m);
    }
    for (const d of config.destinations) {
      if (d.profiles.length > 0 && !config.validator) throw new Error(`destination '${d.name}' requires profiles: the pipeline needs a validator`);
      this.#destinations.set(d.name, d);
    }
  }

  mapping(site: string): CompiledMapping {
    const m = this.#mappings.get(site);
    if (!m) throw new Error(`no mapping for site '${site}'`);
    return m;
  }

  destination(name: string): Destination {
    const d = this.#destinations.get(name);
    if (!d) throw new Error(`unknown destination '${name}'`);
    return d;
  }

  /** Destinations that receive a site's subjects. */
  destinationsFor(site: string): Destination[] {
    return [...this.#destinations.values()].filter((d) => d.sites === '*' || d.sites.includes(site));
  }

  client(destination: Destination): FhirClient {
    let client = this.#clients.get(destination.name);
    if (!client) {
      client = this.config.clientFor?.(destination) ?? destinationClient(destination);
      this.#clients.set(destination.name, client);
    }
    return client;
  }

  /** Keeps the record of trial-wide entries written in `store` (Redis: shared by every worker). */
  useSharedEntryStore(store: SharedEntryStore): void {
    this.shared = new SharedEntries(store);
  }

  /**
   * Delivers one subject's bundle to a destination, in a transaction shared with others where it allows; its
   * trial-wide entries (the ResearchStudy) are made sure of first, once per destination, and left out of it.
   */
  async deliver(destination: Destination, bundle: SerializedBundle): Promise<DeliveryResult> {
    const prepared = await this.shared.prepare(this.client(destination), bundle, this.deliverOptions(destination));
    if (prepared.rejection) return { outcome: 'rejected', attempts: 0, requests: 0, entries: { created: 0, updated: 0 }, statusClasses: {}, rejection: prepared.rejection };
    return this.batcher(destination).deliver(prepared.bundle);
  }

  /** The destination's batcher in this process (its stats say how many transactions were shared). */
  batcher(destination: Destination): TransactionBatcher {
    let batcher = this.#batchers.get(destination.name);
    if (!batcher) {
      // Never more subjects than delivery jobs run at once: a batch waits for no job that cannot come.
      const subjects = Math.min(destination.subjectsPerTransaction, destination.concurrency);
      batcher = new TransactionBatcher(this.client(destination), { subjects, entries: destination.maxEntries }, () => this.deliverOptions(destination));
      this.#batchers.set(destination.name, batcher);
    }
    return batcher;
  }

  breaker(destination: Destination): CircuitBreaker {
    return this.breakers.for(destination);
  }

  pacer(destination: Destination): Pacer {
    let pacer = this.#pacers.get(destination.name);
    if (!pacer) {
      pacer = this.config.pacerFor?.(destination) ?? new MemoryPacer(destination.name, { concurrency: destination.concurrency, settings: destination.pacing, now: this.config.now, onIncident: this.onBackoff });
      this.#pacers.set(destination.name, pacer);
    }
    return pacer;
  }

  /** One line per incident (entering backoff), never per retry. */
  readonly onBackoff = (incident: PacingIncident): void => {
    if (this.config.onBackoff) this.config.onBackoff(incident);
    else if (this.config.logger) this.config.logger.warn({ event: 'backoff', ...incident }, 'backoff');
    else console.error(incidentLine(incident));
  };

  deliverOptions(destination: Destination): DeliverOptions {
    return {
      maxEntries: destination.atomic ? undefined : destination.maxEntries,
      transactions: destination.transactions,
      // Short in-request retries for blips; longer outages are the queue's job (retry.attempts, with backoff).
      retry: {
        maxAttempts: destination.retry.requestAttempts,
        baseDelayMs: destination.retry.baseMs,
        maxDelayMs: Math.min(destination.retry.maxMs, destination.retry.baseMs * 4),
        maxRetryAfterMs: Math.min(destination.retry.maxMs, 10_000),
      },
      // A 429 or conflict retried inside the delivery backs the destination off at once (for every worker).
      onPressure: (signal) => void this.pacer(destination).report(signal).catch(() => undefined),
      ...this.config.deliverOptions,
    };
  }
}

/** A subject's mapping job, with its deterministic id. */
export interface PlannedMappingJob {
  readonly jobId: string;
  readonly data: MappingJobData;
}

export interface ReadExport {
  readonly site: string;
  readonly jobs: PlannedMappingJob[];
  /** Records that belong to no subject job (no subject id, a type no rule reads). */
  readonly problems: RecordProblem[];
}

/**
 * Stage 0 (submit): reads an export and groups its records by subject, one mapping job per subject. Records
 * without a subject or of a type no rule reads get the same problems mapRecords gives them.
 */
export async function readExport(mapping: CompiledMapping, inputs: readonly string[], submissionId: string, recorded: string): Promise<ReadExport> {
  const { records } = await readSourceRecords(mapping, inputs);
  const bySubject = new Map<string, SourceRecord[]>();
  const unassigned: SourceRecord[] = [];
  for (const record of records) {
    if (!record.subject || !mapping.consumedTypes.has(record.type)) {
      unassigned.push(record);
      continue;
    }
    const list = bySubject.get(record.subject);
    if (list) list.push(record);
    else bySubject.set(record.subject, [record]);
  }
  const problems = unassigned.length > 0 ? mapRecords(mapping, unassigned).problems : [];
  const jobs = [...bySubject].map(([subject, subjectRecords]) => ({
    jobId: mappingJobId(mapping.site, subject, mapping.version, recordsHash(subjectRecords)),
    data: { submissionId, site: mapping.site, mappingVersion: mapping.version, subject, recorded, records: subjectRecords },
  }));
  return { site: mapping.site, jobs, problems };
}

function deadLetterId(jobId: string, ...parts: (string | number)[]): string {
  return [jobId, ...parts.map(String)].join('|');
}

/** A record problem as a dead letter (the offending value is left out). */
export function recordDeadLetter(submissionId: string, site: string, jobId: string, stage: 'read' | 'map', p: RecordProblem, replayable: boolean): DeadLetter {
  return {
    id: deadLetterId(jobId, p.file, p.row, p.field),
    submissionId,
    stage,
    site,
    ...(p.subject ? { subject: p.subject } : {}),
    location: { file: p.file, row: p.row, key: p.key, field: p.field, ...(p.rule ? { rule: p.rule } : {}) },
    reason: p.reason,
    ...(p.outcome ? { outcome: p.outcome } : {}),
    replayable,
    jobId,
    createdAt: new Date().toISOString(),
  };
}

/** Enqueues a delivery job; resolves whether it was added (false: an identical job already exists). */
export type EnqueueDelivery = (jobId: string, data: DeliveryJobData) => Promise<boolean>;

export interface MappingJobResult {
  readonly mapped: boolean;
  readonly recordsRejected: number;
  /** Delivery jobs of the bundle (added now or already there), by destination. */
  readonly deliveries: { readonly destination: string; readonly jobId: string; readonly added: boolean }[];
}

/**
 * Stage 1: maps and validates one subject, dead-letters its rejected records, and enqueues one delivery job
 * per destination that takes the site (pseudonymised where the destination says so).
 */
export async function runMappingJob(ctx: PipelineContext, store: PipelineStore, jobId: string, data: MappingJobData, enqueue: EnqueueDelivery): Promise<MappingJobResult> {
  const mapping = ctx.mapping(data.site);
  if (mapping.version !== data.mappingVersion) {
    throw new Error(`job ${jobId} was made with mapping ${data.site} ${data.mappingVersion}, this worker has ${mapping.version}`);
  }
  const check = ctx.config.validator ? validationCheck(ctx.config.validator) : undefined;
  const result = mapRecords(mapping, data.records, check);
  if (result.problems.length > 0) {
    await store.deadLetter(
      result.problems.map((problem) => recordDeadLetter(data.submissionId, data.site, jobId, 'map', problem, true)),
      { kind: 'map', data },
    );
  }
  const subject = result.subjects[0];
  const deliveries: { destination: string; jobId: string; added: boolean }[] = [];
  const increments: Record<string, number> = { [COUNTERS.recordsRejected]: new Set(result.problems.map((p) => `${p.file}#${p.row}`)).size };
  const states: SubjectStateUpdate[] = [];
  const state = (destination: Destination, value: SubjectStateUpdate['state'], job?: string) =>
    states.push({ subject: data.subject, destination: destination.name, state: value, ...(job !== undefined ? { job } : {}) });
  if (!subject) {
    increments[COUNTERS.subjectsRejected] = 1;
    states.push({ subject: data.subject, state: 'rejected' });
  } else {
    increments[COUNTERS.mapped] = 1;
    const bundle = subjectBundle(mapping, subject, { recorded: data.recorded });
    for (const destination of ctx.destinationsFor(data.site)) {
      const allowed = filterBundle(bundle, destination.resourceTypes);
      if (!allowed) {
        const skipped = perDestination(COUNTERS.notForDestination, destination.name);
        increments[skipped] = (increments[skipped] ?? 0) + 1;
        state(destination, 'not-for-destination');
        continue;
      }
      const sent = destination.pseudonymise ? pseudonymiseBundle(allowed, destination.pseudonymisationKey!.reveal()) : allowed;
      const serialized = serializeBundle(sent);
      const deliveryId = deliveryJobId(destination.name, data.site, data.subject, serialized);
      if (destination.profiles.length > 0) {
        const issues = (sent.entry ?? []).flatMap((e) =>
          ctx.config.validator!.validate(e.resource!, destination.profiles).filter((i) => i.severity === 'error' || i.severity === 'fatal'),
        );
        if (issues.length > 0) {
          await store.deadLetter(
            {
              id: deadLetterId(deliveryId, 'profiles'),
              submissionId: data.submissionId,
              stage: 'deliver',
              site: data.site,
              subject: data.subject,
              destination: destination.name,
              reason: `the bundle does not meet the destination's profiles: ${issues.map((i) => describeIssue(i).reason).join('; ')}`,
              outcome: { resourceType: 'OperationOutcome', issue: issues },
              replayable: false,
              jobId: deliveryId,
              createdAt: new Date().toISOString(),
            },
          );
          increments[perDestination(COUNTERS.deadLettered, destination.name)] = 1;
          state(destination, 'dead-lettered');
          continue;
        }
      }
      const added = await enqueue(deliveryId, { submissionId: data.submissionId, destination: destination.name, site: data.site, subject: data.subject, bundle: serialized, origin: jobId });
      deliveries.push({ destination: destination.name, jobId: deliveryId, added });
      state(destination, added ? 'pending' : 'duplicate', added ? undefined : deliveryId);
      const counter = perDestination(added ? COUNTERS.deliveryQueued : COUNTERS.deliveryDuplicates, destination.name);
      increments[counter] = (increments[counter] ?? 0) + 1;
    }
  }
  await store.subjects?.(data.submissionId, states);
  await store.count(data.submissionId, `${jobId}|mapped`, increments);
  return { mapped: subject !== undefined, recordsRejected: increments[COUNTERS.recordsRejected], deliveries };
}

/** A mapping job that failed for good (its attempts spent): dead-lettered whole, replayable. */
export async function mappingJobFailed(store: PipelineStore, jobId: string, data: MappingJobData, error: unknown): Promise<void> {
  await store.deadLetter(
    {
      id: deadLetterId(jobId, 'failed'),
      submissionId: data.submissionId,
      stage: 'map',
      site: data.site,
      subject: data.subject,
      reason: `mapping failed: ${error instanceof Error ? error.message : String(error)}`,
      replayable: true,
      jobId,
      createdAt: new Date().toISOString(),
    },
    { kind: 'map', data },
  );
  await store.subjects?.(data.submissionId, [{ subject: data.subject, state: 'dead-lettered' }]);
  await store.count(data.submissionId, `${jobId}|mapped`, { [COUNTERS.mappingFailed]: 1 });
}

/**
 * A delivery job given up: rejected by the server, retries spent, or stalled too often (its workers kept dying
 * while it ran). Dead-lettered, replayable, with the server's status and OperationOutcome when there was one,
 * and counted once. The bundle may have reached the server (a worker can die after sending it); a replay is
 * safe either way.
 */
export async function deliveryJobFailed(
  store: PipelineStore,
  jobId: string,
  data: DeliveryJobData,
  reason: string,
  status?: number,
  outcome?: OperationOutcome,
): Promise<DeliveryJobResult> {
  await deliveryDeadLetter(store, jobId, data, reason, true, { kind: 'deliver', data }, status, outcome);
  return { outcome: 'dead-lettered', ...(status !== undefined ? { status } : {}), message: reason };
}

/**
 * A delivery job whose bundle is gone before it was delivered (it waited longer than bundles are kept):
 * dead-lettered, not replayable (nothing is left to replay: submit the export again), and counted once.
 */
export async function deliveryBundleLost(store: PipelineStore, jobId: string, data: Omit<DeliveryJobData, 'bundle'>, reason: string): Promise<DeliveryJobResult> {
  await deliveryDeadLetter(store, jobId, data, reason, false);
  return { outcome: 'dead-lettered', message: reason };
}

async function deliveryDeadLetter(
  store: PipelineStore,
  jobId: string,
  data: Omit<DeliveryJobData, 'bundle'>,
  reason: string,
  replayable: boolean,
  payload?: ReplayPayload,
  status?: number,
  outcome?: OperationOutcome,
): Promise<void> {
  await store.deadLetter(
    {
      id: deadLetterId(jobId),
      submissionId: data.submissionId,
      stage: 'deliver',
      site: data.site,
      subject: data.subject,
      destination: data.destination,
      reason,
      ...(status !== undefined ? { status } : {}),
      ...(outcome ? { outcome } : {}),
      replayable,
      jobId,
      createdAt: new Date().toISOString(),
    },
    payload,
  );
  await store.subjects?.(data.submissionId, [{ subject: data.subject, destination: data.destination, state: 'dead-lettered' }]);
  await store.count(data.submissionId, deliveryDoneKey(jobId), { [perDestination(COUNTERS.deadLettered, data.destination)]: 1 });
}

/** The key under which a delivery job's end (delivered or dead-lettered) is counted, once. */
export function deliveryDoneKey(jobId: string): string {
  return `${jobId}|done`;
}

/** The id of a delivery job's dead letter. */
export function deliveryDeadLetterId(jobId: string): string {
  return deadLetterId(jobId);
}

export interface DeliveryJobResult {
  readonly outcome: 'delivered' | 'dead-lettered';
  readonly status?: number;
  readonly message?: string;
}

/**
 * Stage 2: delivers one bundle. A rejection (4xx with an OperationOutcome) is dead-lettered at once with the
 * server's message; any other failure is thrown so that the caller retries, unless `finalAttempt`, when it is
 * dead-lettered too.
 */
export async function runDeliveryJob(ctx: PipelineContext, store: PipelineStore, jobId: string, data: DeliveryJobData, finalAttempt: boolean): Promise<DeliveryJobResult> {
  const destination = ctx.destination(data.destination);
  const deadLetter = (reason: string, status?: number, outcome?: OperationOutcome): Promise<DeliveryJobResult> =>
    deliveryJobFailed(store, jobId, data, reason, status, outcome);
  const breaker = ctx.breaker(destination);
  // While the destination is paused nothing is sent; the caller waits (not an attempt) and tries again.
  if (!breaker.tryAcquire()) throw new CircuitOpenError(destination.name, breaker.retryAfterMs());
  let result;
  const logged = { event: 'delivery', destination: destination.name, site: data.site };
  try {
    // Within the destination's shared limit and after any wait its server asked for (delivery/pacing.ts).
    result = await paced(ctx.pacer(destination), () => ctx.deliver(destination, data.bundle), paceSignal);
    // A rejection of the data is an answer: the server is up. An unusable answer (a redirect, an HTML page) is not.
    if (result.rejection?.kind === 'answer') breaker.failure();
    else breaker.success();
    ctx.config.logger?.info({ ...logged, outcome: result.outcome, entries: result.statusClasses, attempts: result.attempts, requests: result.requests, ...(result.rejection ? { status: result.rejection.status, kind: result.rejection.kind } : {}) }, 'delivery');
  } catch (error) {
    breaker.failure();
    ctx.config.logger?.info({ ...logged, outcome: 'failed', ...(error instanceof DeliveryRetryableError ? { entries: error.statusClasses, kind: error.kind, status: error.status, attempts: error.attempts } : {}) }, 'delivery');
    if (!finalAttempt) throw error;
    const status = error instanceof DeliveryRetryableError ? error.status : (error as { status?: number }).status;
    // Given up for good: what this attempt created is removed again, like a refused subject's.
    const undone = await undoAfterGivingUp(ctx.client(destination), data.bundle, error, ctx.deliverOptions(destination));
    return deadLetter(`gave up: ${error instanceof Error ? error.message : String(error)}${undone}`, status);
  }
  if (result.outcome === 'rejected') {
    const rejection = result.rejection!;
    return deadLetter(rejection.message, rejection.status, rejection.outcome);
  }
  // Read-back (verify: sample | all): a subject the server does not show is not delivered; sent again, then dead-lettered.
  let unconfirmed: string | undefined;
  if (shouldVerify(destination.verify, destination.name, data.site, data.subject)) {
    try {
      // Paced like a delivery: the searches load the server too, and a 429 to them slows the destination down.
      unconfirmed = await paced(ctx.pacer(destination), () => verifyDelivered(ctx.client(destination), data.bundle), (o) => ('error' in o ? paceSignal(o) : { kind: 'neutral' }));
    } catch (error) {
      if (!finalAttempt) throw error;
      return deadLetter(`gave up: ${error instanceof Error ? error.message : String(error)}`, (error as { status?: number }).status);
    }
  }
  if (unconfirmed !== undefined) {
    if (!finalAttempt) throw new DeliveryVerificationError(unconfirmed);
    return deadLetter(unconfirmed);
  }
  const trial = ctx.config.mappings.find((m) => m.site === data.site)?.spec.trial.id;
  await store.delivered?.({ destination: data.destination, site: data.site, subject: data.subject, submissionId: data.submissionId, jobId, deliveredAt: new Date().toISOString(), ...(trial ? { trial } : {}) }, data.bundle);
  await store.count(data.submissionId, deliveryDoneKey(jobId), { [perDestination(COUNTERS.delivered, data.destination)]: 1 });
  return { outcome: 'delivered' };
}

/** Backoff before retry `attemptsMade` (1 = the first retry): the server's Retry-After when it gave one, else exponential with full jitter, capped. */
export function deliveryBackoff(destination: Destination, attemptsMade: number, error: unknown, random: () => number = Math.random): number {
  if (error instanceof DeliveryRetryableError && error.retryAfterMs !== undefined) return error.retryAfterMs;
  const cap = Math.min(destination.retry.maxMs, destination.retry.baseMs * 2 ** Math.max(0, attemptsMade - 1));
  return Math.round(cap / 2 + (random() * cap) / 2);
}
