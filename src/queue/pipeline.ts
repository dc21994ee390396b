/**
 * The delivery pipeline on BullMQ: `submitExport` reads an export and adds one mapping job per subject; the
 * mapping worker maps and validates the subject and adds one delivery job per destination that takes the
 * site; each destination's delivery worker sends the bundle with deliverBundle. The stage code is in
 * stages.ts, shared with the in-process runner.
 *
 * Idempotency: job ids are deterministic (job-ids.ts) and BullMQ ignores an add whose id exists, so an
 * unchanged subject submitted again is not queued again while its job is pending or retained (completed jobs
 * are kept `retention.completedSeconds`, default 24 h; after that the same data is queued and delivered again,
 * which changes nothing on the server: every entry is a conditional update). Counters count once per job.
 *
 * Retries: a delivery job has the destination's `retry.attempts` attempts; between them the custom backoff
 * `tb-delivery` waits the server's Retry-After when the DeliveryRetryableError carries one, else exponential
 * from `retry.baseMs` up to `retry.maxMs`. Inside one attempt deliverBundle retries each request only
 * `retry.requestAttempts` times with short waits (blips); a dead server opens the destination's circuit
 * breaker, which pauses its queue (see README.md) instead of spending attempts.
 * A 4xx rejection is not retried: dead-lettered at once with the server's OperationOutcome.
 *
 * Crash recovery (BullMQ stalled jobs): an active job holds a lock of `lockDuration` (default 30 s), renewed
 * by its worker every lockDuration/2. A worker that dies stops renewing it; every `stalledInterval` (default
 * 30 s) some worker moves jobs whose lock expired back to waiting, at most `maxStalledCount` times (default 1)
 * after which the job fails. Running a job again is safe here: deliveries are conditional updates, delivery
 * job adds are deduplicated by id, counters count once per job and dead letters are keyed by job.
 * Mapping jobs are synchronous CPU work of a few ms per subject, far below the lock duration.
 *
 * A job that stalls more than `maxStalledCount` times is dead-lettered (replayable) by the pipeline itself: BullMQ
 * would fail it without running the processor, so the subject would end neither delivered nor dead-lettered.
 * BullMQ is therefore given no stall limit of its own; the processor reads `job.stalledCounter`.
 *
 * Redis outages (see pipelineRedisOptions): every connection of the pipeline reconnects forever (100 ms, 200 ms,
 * ... at most 1 s apart) and a command issued while Redis is unreachable waits in ioredis's offline queue until
 * it is back, instead of failing after 20 reconnection attempts: a job that was mapping or delivering when Redis
 * went away finishes once it is back (counters, dead letters and BullMQ's own bookkeeping included) rather than
 * failing an attempt, or, on its last attempt, failing without a dead letter. The pipeline reports the outage
 * and the reconnection once each (`onRedisEvent`). A job whose lock expired during a long outage is picked up
 * again by the stalled-job check, which is safe (see above). Redis's own durability decides what survives a
 * Redis crash: run it with `appendonly yes` (README: "Faults and soak").
 *
 * Shutdown: `close()` stops fetching, waits for the jobs in flight to finish (Worker.close), then closes the
 * queues and connections; `closeOnSignals()` wires it to SIGINT/SIGTERM.
 */
import { randomUUID } from 'node:crypto';
import { Job, Queue, QueueEvents, RateLimitError, UnrecoverableError, Worker } from 'bullmq';
import { CircuitOpenError } from '../delivery/circuit-breaker.ts';
import { Redis } from 'ioredis';
import type { Destination } from '../delivery/destinations.ts';
import { fromStoredBundle, type SerializedEntry, type StoredBundle } from '../delivery/serialized-bundle.ts';
import { RedisSharedEntryStore } from '../delivery/shared-entries.ts';
import { RedisPacer } from '../delivery/pacing.ts';
import { terminalSafe } from '../terminal.ts';
import { RedisBundles } from './bundle-store.ts';
import { RedisDeadLetters, type ReplayResult } from './dead-letters.ts';
import { queueNames, DEFAULT_PREFIX, type QueueNames } from './names.ts';
import {
  COUNTERS,
  deliveryBackoff,
  deliveryBundleLost,
  deliveryDeadLetterId,
  deliveryDoneKey,
  deliveryJobFailed,
  mappingJobFailed,
  PipelineContext,
  readExport,
  recordDeadLetter,
  runDeliveryJob,
  runMappingJob,
  type DeliveryJobData,
  type DeliveryJobResult,
  type MappingJobData,
  type MappingJobResult,
  type PipelineConfig,
  type PipelineStore,
  type ReplayPayload,
} from './stages.ts';
import { RedisSubmissions, type SubmissionCounters } from './submissions.ts';
import { RedisDelivered } from './delivered.ts';
import { RedisSubjectStates } from './subject-states.ts';

/**
 * A delivery job's data in BullMQ: its bundle's bytes are kept beside it (RedisBundles), the job says where the
 * entries are in them. `bundle` is the inline form of jobs queued by an earlier version.
 */
type QueuedDelivery = Omit<DeliveryJobData, 'bundle'> & { readonly entries?: readonly SerializedEntry[]; readonly bundle?: StoredBundle };

/** Redis connection options (a subset that both ioredis and BullMQ take). */
export interface QueueConnection {
  readonly host?: string;
  readonly port?: number;
  readonly username?: string;
  readonly password?: string;
  readonly db?: number;
  readonly tls?: Record<string, unknown>;
}

/** What the pipeline reports about its Redis connection: once when it is lost, once when it is back. */
export type RedisConnectionEvent =
  | { readonly event: 'redis-down'; readonly error: string }
  | { readonly event: 'redis-reconnected'; readonly downMs: number };

/** Delay before reconnection attempt `times` (ioredis retryStrategy): 100 ms, 200 ms, ... at most 1 s; never gives up. */
export function reconnectDelayMs(times: number): number {
  return Math.min(100 * Math.max(1, times), 1000);
}

/**
 * Options of every Redis connection the pipeline makes (its own, its queues', its workers', its queue events'):
 * reconnect forever, quickly (reconnectDelayMs; BullMQ's default backs off to 20 s between attempts, so a
 * worker could sit idle that long after Redis is back), and let commands wait for the reconnection instead of
 * failing (`maxRetriesPerRequest: null`, which BullMQ requires of its blocking connections anyway).
 */
export function pipelineRedisOptions(connection: QueueConnection): PipelineRedisOptions {
  return { ...connection, maxRetriesPerRequest: null, retryStrategy: reconnectDelayMs };
}

/** What pipelineRedisOptions gives: the connection plus the reconnection settings (both ioredis and BullMQ take it). */
export type PipelineRedisOptions = QueueConnection & { readonly maxRetriesPerRequest: null; readonly retryStrategy: (times: number) => number };

const CONNECTION_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTCONN', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN']);
const CONNECTION_MESSAGES = [/connection is closed/i, /connection closed/i, /stream isn't writeable/i, /ECONNREFUSED|ECONNRESET|ETIMEDOUT/];

/** Whether an error says Redis is unreachable (as opposed to a command or script error). */
function isConnectionError(error: unknown): boolean {
  if (error instanceof AggregateError) return error.errors.some(isConnectionError);
  const e = error as { code?: unknown; message?: unknown } | null;
  if (typeof e?.code === 'string' && CONNECTION_CODES.has(e.code)) return true;
  return typeof e?.message === 'string' && CONNECTION_MESSAGES.some((re) => re.test(e.message as string));
}

/** A BullMQ message without our job ids (they carry the subject key): e.g. "Missing lock for job <job>" after a long outage. */
function withoutJobIds(message: string): string {
  return message.replace(/\b(?:map|dlv)\.[^\s,;]+/g, '<job>');
}

/** A plain error message for logs (ioredis wraps connection errors in AggregateError for dual-stack hosts). */
function errorText(error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) return errorText(error.errors[0]);
  if (error instanceof Error) return (error as { code?: string }).code ? `${(error as { code?: string }).code}: ${error.message}` : error.message;
  return String(error);
}

export interface QueuePipelineOptions extends PipelineConfig {
  /** Redis connection (host, port, password, tls, ...); see pipelineRedisOptions for what is added. */
  readonly connection: QueueConnection;
  /** Redis lost and back (default: one line on stderr each). */
  readonly onRedisEvent?: (event: RedisConnectionEvent) => void;
  /** Key prefix (default `{tb}`: a hash tag, so on Redis Cluster every key of the pipeline is in one slot). */
  readonly prefix?: string;
  /**
   * How long finished jobs are kept (and so deduplicate re-submissions), and dead letters with their replay
   * payloads (default RETENTION_SECONDS, 30 days after they were written).
   */
  readonly retention?: {
    readonly completedSeconds?: number;
    readonly failedSeconds?: number;
    readonly deadLetterSeconds?: number;
    /** How long what was delivered per subject (business identifiers, the bundle sent) is kept for reconcile (default: as dead letters). */
    readonly deliveredSeconds?: number;
  };
  /** Attempts of a mapping job (default 3: only a crash or a bug fails one). */
  readonly mappingAttempts?: number;
  /** Worker settings. */
  readonly workers?: {
    readonly mappingConcurrency?: number;
    /** BullMQ lock of an active job, ms (default 30 000). */
    readonly lockDuration?: number;
    /** How often stalled jobs are looked for, ms (default 30 000). */
    readonly stalledInterval?: number;
    /** Times a stalled job is put back before it is dead-lettered (default 1). */
    readonly maxStalledCount?: number;
  };
}

export interface SubmitOptions {
  /** Default: a random UUID. */
  readonly submissionId?: string;
  /** Provenance.recorded of the bundles (default now). */
  readonly recorded?: string;
}

export interface SubmitResult {
  readonly submissionId: string;
  readonly site: string;
  readonly subjects: number;
  /** Mapping jobs of the subjects, added now or already pending/retained. */
  readonly mappingJobs: { readonly jobId: string; readonly subject: string; readonly added: boolean }[];
  readonly queued: number;
  readonly duplicates: number;
  /** Records dead-lettered while reading (no subject id, a type no rule reads). */
  readonly recordsRejected: number;
}

interface WorkerCommon {
  readonly connection: PipelineRedisOptions;
  readonly prefix: string;
  readonly lockDuration: number;
  readonly stalledInterval: number;
  readonly maxStalledCount: number;
  readonly runRetryDelay: number;
}

const MAP_JOB = 'map';
const DELIVER_JOB = 'deliver';
const BACKOFF_TYPE = 'tb-delivery';
/** Subjects checked and added per round trip by submitExport. */
const SUBMIT_CHUNK = 200;
/** How long a queue is paused while another job of the same process is the circuit's probe. */
const CIRCUIT_RECHECK_MS = 200;
const UNBOUNDED_RATE = 1_000_000_000;
/** BullMQ's own stall limit, never reached: the processors apply `maxStalledCount` themselves (see the top). */
const BULLMQ_MAX_STALLED = 1_000_000;
/** How long a worker waits before fetching again after a Redis error (BullMQ's default is 15 s). */
const RUN_RETRY_DELAY_MS = 1000;

/** Whether a job has stalled more often than allowed (its worker died or hung while running it). */
function stalledTooOften(job: Job, maxStalledCount: number): boolean {
  return (job.stalledCounter ?? 0) > maxStalledCount;
}

function stalledReason(job: Job): string {
  return `gave up: the job stalled ${job.stalledCounter} times (its worker died or hung while running it)`;
}

export class QueuePipeline {
  readonly names: QueueNames;
  readonly context: PipelineContext;
  readonly submissions: RedisSubmissions;
  readonly deadLetters: RedisDeadLetters;
  readonly bundles: RedisBundles;
  /** What was delivered per destination and subject (for reconcile). */
  readonly delivered: RedisDelivered;
  /** Where each subject of a submission stands per destination. */
  readonly subjectStates: RedisSubjectStates;
  readonly redis: Redis;
  readonly #options: QueuePipelineOptions;
  readonly #mappingQueue: Queue;
  readonly #deliveryQueues = new Map<string, Queue>();
  readonly #events = new Map<string, Promise<QueueEvents>>();
  readonly #workers: Worker[] = [];
  readonly #store: PipelineStore;
  readonly #connection: PipelineRedisOptions;
  #closing: Promise<void> | undefined;
  #downSince: number | undefined;

  constructor(options: QueuePipelineOptions) {
    this.#options = options;
    this.names = queueNames(options.prefix ?? DEFAULT_PREFIX);
    // Each destination's concurrency is one limit for every worker process, kept in Redis (delivery/pacing.ts).
    const pacerFor = (d: Destination) =>
      new RedisPacer(this.redis, this.names.prefix, d.name, { concurrency: d.concurrency, settings: d.pacing, now: options.now, onIncident: this.context.onBackoff });
    this.context = new PipelineContext({ pacerFor, ...options });
    this.#connection = pipelineRedisOptions(options.connection);
    this.redis = new Redis({ ...this.#connection });
    this.#watchConnection();
    this.submissions = new RedisSubmissions(this.redis, this.names);
    this.deadLetters = new RedisDeadLetters(this.redis, this.names, this.submissions, options.retention?.deadLetterSeconds);
    this.bundles = new RedisBundles(this.redis, this.names);
    // Trial-wide entries (the ResearchStudy) written once per destination by whichever worker claims them first.
    this.context.useSharedEntryStore(new RedisSharedEntryStore(this.redis, `${this.names.prefix}:shared:`));
    this.delivered = new RedisDelivered(this.redis, this.names, options.retention?.deliveredSeconds ?? options.retention?.deadLetterSeconds);
    this.subjectStates = new RedisSubjectStates(this.redis, this.names);
    const submissions = this.submissions;
    const deadLetters = this.deadLetters;
    const delivered = this.delivered;
    const subjectStates = this.subjectStates;
    this.#store = {
      count: (id, onceKey, increments) => submissions.count(id, onceKey, increments),
      deadLetter: (entries, payload) => deadLetters.deadLetter(entries, payload),
      subjects: (id, states) => subjectStates.set(id, states),
      delivered: async (origin, bundle) => {
        await delivered.record(origin, bundle);
        await subjectStates.set(origin.submissionId, [{ subject: origin.subject, destination: origin.destination, state: 'delivered' }]);
      },
    };
    const retention = {
      removeOnComplete: { age: options.retention?.completedSeconds ?? 24 * 3600 },
      removeOnFail: { age: options.retention?.failedSeconds ?? 7 * 24 * 3600 },
    };
    this.#mappingQueue = new Queue(this.names.mapping, {
      connection: { ...this.#connection },
      prefix: this.names.prefix,
      defaultJobOptions: { attempts: options.mappingAttempts ?? 3, backoff: { type: 'exponential', delay: 1000 }, ...retention },
    });
    for (const d of options.destinations) {
      this.#deliveryQueues.set(
        d.name,
        new Queue(this.names.delivery(d.name), {
          connection: { ...this.#connection },
          prefix: this.names.prefix,
          defaultJobOptions: { attempts: d.retry.attempts, backoff: { type: BACKOFF_TYPE, delay: d.retry.baseMs }, ...retention },
        }),
      );
    }
    this.#allowManyWaiters();
    for (const q of [this.#mappingQueue, ...this.#deliveryQueues.values()]) q.on('error', (error) => this.#connectionError(error));
  }

  /**
   * Reports an outage once and the reconnection once, from the pipeline's own connection (used by every job for
   * counters and dead letters, so it stands for the process): 'error'/'close' while not closing = down, 'ready' = back.
   */
  #watchConnection(): void {
    this.redis.on('error', (error) => this.#connectionError(error, true));
    this.redis.on('close', () => this.#connectionError(new Error('connection closed'), true));
    this.redis.on('ready', () => {
      if (this.#downSince === undefined) return;
      const downMs = Date.now() - this.#downSince;
      this.#downSince = undefined;
      this.#report({ event: 'redis-reconnected', downMs });
    });
  }

  /**
   * A connection error of any of the pipeline's connections: reported once per outage, the rest are retries.
   * Another connection's error while the pipeline's own one is up is not an outage (when Redis is gone, the own
   * connection closes too, and that reports it).
   */
  #connectionError(error: unknown, own = false): void {
    if (!isConnectionError(error)) {
      console.error(`redis: ${terminalSafe(errorText(error))}`);
      return;
    }
    if (this.#closing || this.#downSince !== undefined || (!own && this.redis.status === 'ready')) return;
    this.#downSince = Date.now();
    this.#report({ event: 'redis-down', error: errorText(error) });
  }

  #report(event: RedisConnectionEvent): void {
    if (this.#options.onRedisEvent) this.#options.onRedisEvent(event);
    else console.error(event.event === 'redis-down' ? `redis: connection lost (${terminalSafe(event.error)}); reconnecting` : `redis: reconnected after ${event.downMs} ms`);
  }

  /** waitUntilFinished adds a 'closing' listener on the queue per job waited for: many at once are expected. */
  #allowManyWaiters(): void {
    for (const q of [this.#mappingQueue, ...this.#deliveryQueues.values()]) q.setMaxListeners(0);
  }

  get mappingQueue(): Queue {
    return this.#mappingQueue;
  }

  deliveryQueue(destination: string): Queue {
    const q = this.#deliveryQueues.get(destination);
    if (!q) throw new Error(`unknown destination '${destination}'`);
    return q;
  }

  /** Adds a job unless one with that id exists (`before`: what must be in Redis before it); resolves whether it was added. */
  async #addIfNew(queue: Queue, name: string, jobId: string, data: MappingJobData | QueuedDelivery, before?: () => Promise<void>): Promise<boolean> {
    // A job exists while its hash does (pending, or finished and retained): one EXISTS, not a state script.
    if ((await this.redis.exists(queue.toKey(jobId))) === 1) return false;
    await before?.();
    // BullMQ itself ignores an add with an existing id, so a race between two producers queues it once.
    await queue.add(name, data, { jobId });
    return true;
  }

  /** Adds a delivery job unless one with that id exists: its bundle first, then the job that says where the entries are. */
  #addDelivery(jobId: string, data: DeliveryJobData): Promise<boolean> {
    const { bundle, ...rest } = data;
    const queued: QueuedDelivery = { ...rest, entries: bundle.entries };
    return this.#addIfNew(this.deliveryQueue(data.destination), DELIVER_JOB, jobId, queued, () => this.bundles.store(jobId, bundle));
  }

  /**
   * Adds a delivery job unless one with that id exists (what a mapping job does for each destination). One that
   * this very mapping job added in an earlier run (its worker died between adding it and counting) counts as
   * added now: otherwise the run again would count it a duplicate, and the submission would end with more
   * deliveries finished than queued.
   */
  readonly enqueueDelivery = async (jobId: string, data: DeliveryJobData): Promise<boolean> => {
    if (await this.#addDelivery(jobId, data)) return true;
    if (data.origin === undefined) return false;
    const existing = await this.redis.hget(this.deliveryQueue(data.destination).toKey(jobId), 'data');
    if (existing === null) return false;
    const { submissionId, origin } = JSON.parse(existing) as Partial<QueuedDelivery>;
    return submissionId === data.submissionId && origin === data.origin;
  };

  #enqueueReplay = (jobId: string, payload: ReplayPayload): Promise<boolean> =>
    payload.kind === 'map' ? this.#addIfNew(this.#mappingQueue, MAP_JOB, jobId, payload.data) : this.#addDelivery(jobId, payload.data);

  async #forgetRecords(job: Job<MappingJobData>): Promise<void> {
    try {
      await job.updateData({ ...job.data, records: [] });
    } catch (error) {
      // Gone already (its retention ended) or Redis away: the records then go with the job.
      if (!/Missing key/.test(error instanceof Error ? error.message : '')) this.#connectionError(error);
    }
  }

  /** A delivery job's data with its bundle; undefined when the bundle is gone (see #bundleGone). */
  async #deliveryData(job: Job<QueuedDelivery>): Promise<DeliveryJobData | undefined> {
    const { entries, bundle: inline, ...rest } = job.data;
    if (inline) return { ...rest, bundle: fromStoredBundle(inline) };
    const bytes = await this.bundles.load(job.id!);
    return bytes === null ? undefined : { ...rest, bundle: { bytes, entries: entries ?? [] } };
  }

  /**
   * A delivery job without its bundle. Either it ended before (delivered or dead-lettered, the bundle removed)
   * and its worker died before BullMQ recorded that: the end was counted, so it is answered again; or the
   * bundle expired while the job waited: dead-lettered, saying so.
   */
  async #bundleGone(job: Job<QueuedDelivery>): Promise<DeliveryJobResult> {
    const { entries: _entries, bundle: _inline, ...data } = job.data;
    if (await this.submissions.counted(data.submissionId, deliveryDoneKey(job.id!))) {
      return { outcome: (await this.deadLetters.show(deliveryDeadLetterId(job.id!))) ? 'dead-lettered' : 'delivered' };
    }
    const days = Math.round(this.bundles.ttlSeconds / 86_400);
    return deliveryBundleLost(this.#store, job.id!, data, `the bundle was not delivered within ${days} days and is no longer kept: submit the export again`);
  }

  /** A delivery job's end (delivered or dead-lettered): its bundle is no longer needed (a dead letter keeps its own copy). */
  async #ended(jobId: string, ending: Promise<DeliveryJobResult>): Promise<DeliveryJobResult> {
    const result = await ending;
    await this.bundles.release(jobId);
    return result;
  }

  /** Reads an export of a site and adds one mapping job per subject. */
  async submitExport(site: string, inputs: readonly string[], options: SubmitOptions = {}): Promise<SubmitResult> {
    const submissionId = options.submissionId ?? randomUUID();
    const recorded = options.recorded ?? new Date().toISOString();
    const read = await readExport(this.context.mapping(site), inputs, submissionId, recorded);
    const readJob = `read.${submissionId}`;
    // One round trip for all of them: an export with thousands of bad rows is not thousands of waits.
    await this.deadLetters.deadLetter(read.problems.map((p) => recordDeadLetter(submissionId, site, readJob, 'read', p, false)));
    const mappingJobs: SubmitResult['mappingJobs'] = [];
    // In chunks: one round trip to learn which subjects are new, one to add them (BullMQ still ignores an id
    // that another producer added in between, so a race queues a subject once).
    for (let i = 0; i < read.jobs.length; i += SUBMIT_CHUNK) {
      const chunk = read.jobs.slice(i, i + SUBMIT_CHUNK);
      const check = this.redis.pipeline();
      for (const job of chunk) check.exists(this.#mappingQueue.toKey(job.jobId));
      const exists = ((await check.exec()) ?? []).map(([error, n]) => {
        if (error) throw error;
        return n === 1;
      });
      const fresh = chunk.filter((_job, j) => !exists[j]);
      if (fresh.length > 0) await this.#mappingQueue.addBulk(fresh.map((job) => ({ name: MAP_JOB, data: job.data, opts: { jobId: job.jobId } })));
      chunk.forEach((job, j) => mappingJobs.push({ jobId: job.jobId, subject: job.data.subject, added: !exists[j] }));
    }
    const queued = mappingJobs.filter((j) => j.added).length;
    await this.subjectStates.set(submissionId, mappingJobs.map((j) => (j.added ? { subject: j.subject, state: 'submitted' } : { subject: j.subject, state: 'duplicate', job: j.jobId })));
    const recordsRejected = new Set(read.problems.map((p) => `${p.file}#${p.row}`)).size;
    // Counted once under a key of this call: a command ioredis sends again after a reconnection (its answer
    // lost in a crash) does not count the export twice.
    await this.submissions.count(submissionId, `submitted|${randomUUID()}`, {
      [COUNTERS.subjects]: read.jobs.length,
      [COUNTERS.queued]: queued,
      [COUNTERS.duplicates]: read.jobs.length - queued,
      [COUNTERS.recordsRejected]: recordsRejected,
    });
    return { submissionId, site, subjects: read.jobs.length, mappingJobs, queued, duplicates: read.jobs.length - queued, recordsRejected };
  }

  /** Starts the mapping worker and one delivery worker per destination. */
  startWorkers(): Worker[] {
    const w = this.#options.workers ?? {};
    const common: WorkerCommon = {
      connection: { ...this.#connection },
      prefix: this.names.prefix,
      lockDuration: w.lockDuration ?? 30_000,
      stalledInterval: w.stalledInterval ?? 30_000,
      maxStalledCount: BULLMQ_MAX_STALLED,
      runRetryDelay: RUN_RETRY_DELAY_MS,
    };
    const maxStalled = w.maxStalledCount ?? 1;
    const mappingWorker = new Worker<MappingJobData, MappingJobResult>(
      this.names.mapping,
      async (job) => {
        if (stalledTooOften(job, maxStalled)) {
          const reason = stalledReason(job);
          await mappingJobFailed(this.#store, job.id!, job.data, new Error(reason));
          throw new UnrecoverableError(reason);
        }
        try {
          return await runMappingJob(this.context, this.#store, job.id!, job.data, this.enqueueDelivery);
        } catch (error) {
          // The last attempt: dead-letter the subject (replayable), and leave the job failed in BullMQ.
          if (job.attemptsMade + 1 >= (job.opts.attempts ?? 1)) await mappingJobFailed(this.#store, job.id!, job.data, error);
          throw error;
        }
      },
      { ...common, concurrency: w.mappingConcurrency ?? 1 },
    );
    // A mapped subject's records are not needed once its job has completed (a replay takes its dead letter's
    // copy): the job is kept for its retention only to deduplicate re-submissions, without the patient data.
    mappingWorker.on('completed', (job) => void this.#forgetRecords(job));
    this.#workers.push(mappingWorker);
    for (const d of this.#options.destinations) this.#workers.push(this.#deliveryWorker(d, common, maxStalled));
    for (const worker of this.#workers) {
      // Without a listener an 'error' event would crash the process; failures are in the job's state anyway.
      // Connection errors repeat at every reconnection attempt: reported once per outage.
      worker.on('error', (error) => (isConnectionError(error) ? this.#connectionError(error) : console.error(`queue worker ${worker.name}: ${terminalSafe(withoutJobIds(error.message))}`)));
    }
    return [...this.#workers];
  }

  #deliveryWorker(d: Destination, common: WorkerCommon, maxStalled: number): Worker<QueuedDelivery, DeliveryJobResult> {
    const queue = this.deliveryQueue(d.name);
    return new Worker<QueuedDelivery, DeliveryJobResult>(
      this.names.delivery(d.name),
      async (job) => {
        const data = await this.#deliveryData(job);
        if (!data) return this.#bundleGone(job);
        if (stalledTooOften(job, maxStalled)) return this.#ended(job.id!, deliveryJobFailed(this.#store, job.id!, data, stalledReason(job)));
        try {
          return await this.#ended(job.id!, runDeliveryJob(this.context, this.#store, job.id!, data, job.attemptsMade + 1 >= (job.opts.attempts ?? 1)));
        } catch (error) {
          if (!(error instanceof CircuitOpenError)) throw error;
          // The circuit of this destination is open: pause its queue for every worker (the pause lives in
          // Redis) and hand the job back without spending an attempt. Other destinations' queues go on.
          await queue.rateLimit(Math.max(error.retryAfterMs, CIRCUIT_RECHECK_MS));
          throw new RateLimitError();
        }
      },
      {
        ...common,
        concurrency: d.concurrency,
        // BullMQ honours a manual pause (queue.rateLimit, used by the circuit breaker) only when the worker has
        // a limiter, so a destination without a rate limit gets one that never binds.
        limiter: d.rateLimit ? { max: d.rateLimit.max, duration: d.rateLimit.perMs } : { max: UNBOUNDED_RATE, duration: 1000 },
        settings: { backoffStrategy: (attemptsMade: number, _type?: string, error?: Error) => deliveryBackoff(d, attemptsMade, error) },
      },
    );
  }

  /**
   * The QueueEvents of a queue, made on first use. It reads the event stream from its newest entry as of now
   * (not from `$` at its first XREAD, which may run later): no completion after this call can be missed.
   */
  #queueEvents(queue: Queue): Promise<QueueEvents> {
    let events = this.#events.get(queue.name);
    if (!events) {
      events = (async () => {
        const newest = await this.redis.xrevrange(queue.keys.events, '+', '-', 'COUNT', 1);
        const made = new QueueEvents(queue.name, { connection: { ...this.#connection }, prefix: this.names.prefix, lastEventId: newest[0]?.[0] ?? '0-0' });
        made.setMaxListeners(0);
        made.on('error', (error) => this.#connectionError(error));
        await made.waitUntilReady();
        return made;
      })();
      this.#events.set(queue.name, events);
    }
    return events;
  }


  /**
   * Waits until every mapping job of a submission and every delivery job they made has finished (by queue
   * events, not polling). Rejects when a job failed for good.
   */
  async waitForSubmission(result: Pick<SubmitResult, 'mappingJobs'>): Promise<void> {
    await this.waitForJobs(await this.waitForMapping(result));
  }

  /** Waits until every mapping job of a submission has finished; resolves the delivery jobs they made. */
  async waitForMapping(result: Pick<SubmitResult, 'mappingJobs'>): Promise<{ destination: string; jobId: string }[]> {
    const mapEvents = await this.#queueEvents(this.#mappingQueue);
    const deliveries: { destination: string; jobId: string }[] = [];
    await Promise.all(
      result.mappingJobs.map(async ({ jobId }) => {
        const value = (await untilFinished(this.#mappingQueue, MAP_JOB, jobId, mapEvents)) as MappingJobResult | undefined;
        if (value) deliveries.push(...value.deliveries);
      }),
    );
    return deliveries;
  }

  /** Waits for delivery jobs by id. */
  async waitForJobs(jobs: readonly { destination: string; jobId: string }[]): Promise<void> {
    await Promise.all(
      jobs.map(async ({ destination, jobId }) => {
        const queue = this.deliveryQueue(destination);
        const events = await this.#queueEvents(queue);
        await untilFinished(queue, DELIVER_JOB, jobId, events);
      }),
    );
  }

  /** The submission a job belongs to (a delivery job: give its destination), while BullMQ keeps the job. */
  async jobSubmission(jobId: string, destination?: string): Promise<string | undefined> {
    const queue = destination === undefined ? this.#mappingQueue : this.#deliveryQueues.get(destination);
    const data = queue ? await this.redis.hget(queue.toKey(jobId), 'data') : null;
    return data === null ? undefined : (JSON.parse(data) as { submissionId?: string }).submissionId;
  }

  submission(id: string): Promise<SubmissionCounters> {
    return this.submissions.get(id);
  }

  /** Replays one dead letter (enqueues its job again with a fresh id suffix). */
  replay(deadLetterId: string): Promise<ReplayResult> {
    return this.deadLetters.replay(deadLetterId, this.#enqueueReplay);
  }

  /** Replays every replayable dead letter of a submission. */
  replayAll(submissionId: string): Promise<ReplayResult> {
    return this.deadLetters.replayAll(submissionId, this.#enqueueReplay);
  }

  /** Stops the workers: each stops fetching jobs and finishes the ones in flight (BullMQ Worker.close). */
  async closeWorkers(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.close()));
  }

  /** Graceful shutdown: workers finish their jobs in flight, then queues and connections close. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.closeWorkers();
      await Promise.all([...this.#events.values()].map(async (e) => (await e.catch(() => undefined))?.close()));
      await Promise.all([this.#mappingQueue, ...this.#deliveryQueues.values()].map((q) => q.close()));
      await this.redis.quit();
    })();
    return this.#closing;
  }

  /** Closes on SIGINT / SIGTERM (once); resolves the returned function to remove the handlers. */
  closeOnSignals(signals: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM']): () => void {
    const handler = (signal: NodeJS.Signals): void => {
      console.error(`${signal}: finishing the jobs in flight, then exiting`);
      void this.close().then(() => process.exit(0));
    };
    for (const s of signals) process.once(s, handler);
    return () => {
      for (const s of signals) process.off(s, handler);
    };
  }

  /** Removes every queue and key of this prefix (tests, teardown). Call after closeWorkers(), before close(). */
  async obliterate(): Promise<void> {
    for (const q of [this.#mappingQueue, ...this.#deliveryQueues.values()]) await q.obliterate({ force: true });
    let cursor = '0';
    do {
      const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${this.names.prefix}:tb-*`, 'COUNT', '500');
      if (keys.length > 0) await this.redis.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  }
}

/** How often a wait for a job re-reads its state, in case its completion event was missed. */
const FINISHED_RECHECK_MS = 2000;

/**
 * Waits for a job by id and resolves its return value (undefined when the job no longer exists: removed after
 * its retention). Unlike Job.fromId, it does not read the job's data (a subject's records or bundle) from Redis.
 * The state is re-read every FINISHED_RECHECK_MS as a safety net should an event ever be missed.
 */
async function untilFinished(queue: Queue, name: string, jobId: string, events: QueueEvents): Promise<unknown> {
  const job = new Job(queue, name, {}, {}, jobId);
  for (;;) {
    try {
      return await job.waitUntilFinished(events, FINISHED_RECHECK_MS);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (message.startsWith('Missing key for job')) return undefined;
      if (message.includes('timed out before finishing')) continue;
      // A job failed for good is finished too: the pipeline dead-lettered it before failing it.
      if ((await queue.getJobState(jobId)) === 'failed') return undefined;
      throw error;
    }
  }
}

/** Whether Redis answers PING within `timeoutMs` (the demo falls back to runInProcess when it does not). */
export async function isRedisReachable(connection: QueueConnection, timeoutMs = 1000): Promise<boolean> {
  const redis = new Redis({ ...connection, lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  redis.on('error', () => {});
  try {
    await redis.connect();
    return (await redis.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    redis.disconnect();
  }
}
