/**
 * Bull Board's view of the pipeline's queues. A viewer holding the admin key sees queues, counts, states and
 * timings, never patient data: a job's data is shown as its submission, site, destination and counts (records,
 * entries), never the records or the subject (mapping jobs carry a subject's records until they complete);
 * failure reasons and return values have quoted values and dates masked; stack traces are left out. Job ids
 * hold a hash of the subject, not the subject (src/queue/job-ids.ts).
 *
 * Read-only unless the API runs with `queueAdmin` (`serve --queue-admin`): the board then allows its actions
 * (retry, remove, promote, clean, pause, add, edit), each audited by the API.
 */
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import type { Job, Queue } from 'bullmq';
import { maskValues } from '../queue/dead-letters.ts';

/** What the board shows of a job's data. */
export function boardJobData(data: unknown): Record<string, unknown> {
  const d = (data !== null && typeof data === 'object' ? data : {}) as Record<string, unknown>;
  const text = (key: string) => (typeof d[key] === 'string' ? { [key]: d[key] } : {});
  return {
    ...text('submissionId'),
    ...text('site'),
    ...text('destination'),
    ...text('mappingVersion'),
    ...(Array.isArray(d.records) ? { records: d.records.length } : {}),
    ...(Array.isArray(d.entries) ? { entries: d.entries.length } : {}),
  };
}

/** A return value without text from outside (a delivery's server message). */
function boardReturnValue(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  const v = value as Record<string, unknown>;
  return typeof v.message === 'string' ? { ...v, message: maskValues(v.message) } : v;
}

/** The job as the board reads it (toJSON), without data, stack traces or values in the failure reason. */
function shown(job: Job): Job {
  const view = Object.create(job) as Job;
  view.toJSON = () => {
    const json = job.toJSON();
    return { ...json, data: boardJobData(job.data), stacktrace: [], failedReason: json.failedReason ? maskValues(json.failedReason) : json.failedReason };
  };
  return view;
}

class SanitizedBullMQAdapter extends BullMQAdapter {
  override async getJob(id: string): Promise<Job | undefined> {
    const job = await super.getJob(id);
    return job ? shown(job) : job;
  }

  override async getJobs(...args: Parameters<BullMQAdapter['getJobs']>): Promise<Job[]> {
    return (await super.getJobs(...args)).map(shown);
  }
}

export function boardAdapter(queue: Queue, queueAdmin: boolean): BullMQAdapter {
  const adapter = new SanitizedBullMQAdapter(queue, { readOnlyMode: !queueAdmin, allowRetries: queueAdmin });
  adapter.setFormatter('data', boardJobData);
  adapter.setFormatter('returnValue', boardReturnValue);
  return adapter;
}
