/**
 * The pipeline without Redis (for the demo when no Redis answers): the same stage functions as the BullMQ
 * workers (stages.ts), with the queues as in-memory FIFO lists, job ids deduplicated the same way, counters
 * and dead letters in memory. Delivery retries follow the destination's retry config with the same backoff,
 * waiting in process.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import {
  COUNTERS,
  deliveryBackoff,
  mappingJobFailed,
  PipelineContext,
  readExport,
  recordDeadLetter,
  runDeliveryJob,
  runMappingJob,
  type DeadLetter,
  type DeliveryJobData,
  type MappingJobData,
  type PipelineConfig,
  type PipelineStore,
} from './stages.ts';
import { CircuitOpenError } from '../delivery/circuit-breaker.ts';
import { toSubmissionCounters, type SubmissionCounters } from './submissions.ts';

export interface InProcessExport {
  readonly site: string;
  readonly inputs: readonly string[];
}

export interface InProcessOptions extends PipelineConfig {
  readonly exports: readonly InProcessExport[];
  /** Default: a random UUID (one submission for all exports). */
  readonly submissionId?: string;
  readonly recorded?: string;
  /** How to wait between delivery attempts (default a timer). */
  readonly sleep?: (ms: number) => Promise<void>;
}

export interface InProcessResult {
  readonly submission: SubmissionCounters;
  readonly deadLetters: DeadLetter[];
}

class MemoryStore implements PipelineStore {
  readonly fields: Record<string, number> = {};
  readonly #counted = new Set<string>();
  readonly deadLetters = new Map<string, DeadLetter>();

  async count(_submissionId: string, onceKey: string, increments: Readonly<Record<string, number>>): Promise<void> {
    if (this.#counted.has(onceKey)) return;
    this.#counted.add(onceKey);
    this.add(increments);
  }

  add(increments: Readonly<Record<string, number>>): void {
    for (const [field, n] of Object.entries(increments)) if (n !== 0) this.fields[field] = (this.fields[field] ?? 0) + n;
  }

  async deadLetter(entries: DeadLetter | readonly DeadLetter[]): Promise<void> {
    for (const entry of Array.isArray(entries) ? entries : [entries as DeadLetter]) this.deadLetters.set(entry.id, entry);
  }
}

export async function runInProcess(options: InProcessOptions): Promise<InProcessResult> {
  const ctx = new PipelineContext(options);
  const store = new MemoryStore();
  const submissionId = options.submissionId ?? randomUUID();
  const recorded = options.recorded ?? new Date().toISOString();
  const sleep = options.sleep ?? ((ms: number) => delay(ms));
  const seen = new Set<string>();
  const mappingQueue: { jobId: string; data: MappingJobData }[] = [];
  const deliveryQueue: { jobId: string; data: DeliveryJobData }[] = [];

  for (const exp of options.exports) {
    const read = await readExport(ctx.mapping(exp.site), exp.inputs, submissionId, recorded);
    for (const p of read.problems) await store.deadLetter(recordDeadLetter(submissionId, exp.site, `read.${submissionId}`, 'read', p, false));
    let queued = 0;
    for (const job of read.jobs) {
      if (seen.has(job.jobId)) continue;
      seen.add(job.jobId);
      mappingQueue.push(job);
      queued++;
    }
    store.add({
      [COUNTERS.subjects]: read.jobs.length,
      [COUNTERS.queued]: queued,
      [COUNTERS.duplicates]: read.jobs.length - queued,
      [COUNTERS.recordsRejected]: new Set(read.problems.map((p) => `${p.file}#${p.row}`)).size,
    });
  }
  const enqueue = async (jobId: string, data: DeliveryJobData): Promise<boolean> => {
    if (seen.has(jobId)) return false;
    seen.add(jobId);
    deliveryQueue.push({ jobId, data });
    return true;
  };
  for (const job of mappingQueue) {
    try {
      await runMappingJob(ctx, store, job.jobId, job.data, enqueue);
    } catch (error) {
      // Mapping is deterministic: trying again in process would fail again.
      await mappingJobFailed(store, job.jobId, job.data, error);
    }
  }
  // Each destination's deliveries run `concurrency` at a time (so that they can share transactions where the
  // destination allows), and destinations side by side: one that is down or slow holds back no other.
  const byDestination = new Map<string, { jobId: string; data: DeliveryJobData }[]>();
  for (const job of deliveryQueue) {
    const jobs = byDestination.get(job.data.destination) ?? [];
    jobs.push(job);
    byDestination.set(job.data.destination, jobs);
  }
  await Promise.all(
    [...byDestination].map(([name, jobs]) => {
      const destination = ctx.destination(name);
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < jobs.length) await deliverWithRetries(ctx, store, jobs[next++], destination.retry.attempts, sleep);
      };
      return Promise.all(Array.from({ length: Math.min(destination.concurrency, jobs.length) }, lane));
    }),
  );
  return { submission: toSubmissionCounters(submissionId, store.fields), deadLetters: [...store.deadLetters.values()] };
}

/** One delivery job, tried up to `attempts` times with the destination's backoff (waits while its circuit is open). */
async function deliverWithRetries(
  ctx: PipelineContext,
  store: PipelineStore,
  job: { jobId: string; data: DeliveryJobData },
  attempts: number,
  sleep: (ms: number) => Promise<void>,
): Promise<void> {
  const destination = ctx.destination(job.data.destination);
  for (let attempt = 1; ; attempt++) {
    try {
      await runDeliveryJob(ctx, store, job.jobId, job.data, attempt >= attempts);
      return;
    } catch (error) {
      if (error instanceof CircuitOpenError) {
        // Paused destination: wait for the probe time; this was not an attempt.
        attempt--;
        await sleep(Math.max(error.retryAfterMs, 1));
        continue;
      }
      await sleep(deliveryBackoff(destination, attempt, error));
    }
  }
}
