/**
 * `reconcile --repair`: queues subjects the server lost again, with the bundle that was delivered (kept by
 * delivered.ts), under a fresh delivery job id. A fresh id is the point: the finished job of the original
 * delivery is retained 24 h and would make an add under its own id a no-op (as would re-submitting the export,
 * whose mapping job is retained the same way). Counted into the original submission like a replay
 * (`replayed` and `deliveryQueued` of the destination), so its counters still add up once the job ends.
 */
import { randomUUID } from 'node:crypto';
import { encodeNamePart } from './names.ts';
import type { QueuePipeline } from './pipeline.ts';
import { COUNTERS, perDestination } from './stages.ts';

export interface RepairResult {
  /** Subjects queued again, with their new delivery job. */
  readonly queued: { readonly site: string; readonly subject: string; readonly jobId: string; readonly destination: string }[];
  /** Subjects whose delivered bundle is no longer kept (past the retention): submit their export again. */
  readonly notKept: { readonly site: string; readonly subject: string }[];
}

/** The id of a repair's delivery job: the delivering job's id with a fresh suffix. */
export function repairJobId(jobId: string, suffix: string): string {
  return `${jobId}.repair-${encodeNamePart(suffix)}`;
}

/** Queues subjects delivered to a destination again (a worker delivers them). */
export async function repairSubjects(pipeline: QueuePipeline, destination: string, subjects: readonly { site: string; subject: string }[]): Promise<RepairResult> {
  const suffix = randomUUID().slice(0, 8);
  const result: { queued: RepairResult['queued'][number][]; notKept: RepairResult['notKept'][number][] } = { queued: [], notKept: [] };
  for (const { site, subject } of subjects) {
    const record = await pipeline.delivered.get(destination, site, subject, true);
    if (!record?.bundle) {
      result.notKept.push({ site, subject });
      continue;
    }
    const jobId = repairJobId(record.jobId, suffix);
    const added = await pipeline.enqueueDelivery(jobId, { submissionId: record.submissionId, destination, site, subject, bundle: record.bundle });
    await pipeline.submissions.count(record.submissionId, `${jobId}|repaired`, {
      [perDestination(COUNTERS.replayed, destination)]: 1,
      [perDestination(COUNTERS.deliveryQueued, destination)]: added ? 1 : 0,
    });
    if (added) result.queued.push({ site, subject, jobId, destination });
  }
  return result;
}
