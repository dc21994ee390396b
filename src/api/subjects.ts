/**
 * `GET /v1/submissions/{id}/subjects`: where each subject of a submission stands at each destination that takes
 * its site (queue/subject-states.ts), so a client can tell which subjects reached which server. And the reading
 * of ids from paths, so that the ids this API returns work in its URLs exactly as they were returned.
 */
import type { Request } from 'express';
import type { QueuePipeline } from '../queue/pipeline.ts';
import type { SubjectState } from '../queue/subject-states.ts';

export interface SubmissionSubjects {
  readonly submission: string;
  readonly site: string;
  /** One row per subject and destination, by subject then destination. */
  readonly subjects: SubjectState[];
  /** Rows per state. */
  readonly counts: Record<SubjectState['state'], number>;
}

export async function submissionSubjects(pipeline: QueuePipeline, submissionId: string, site: string): Promise<SubmissionSubjects> {
  const destinations = pipeline.context.destinationsFor(site).map((d) => d.name);
  const subjects = await pipeline.subjectStates.list(submissionId, site, destinations, {
    deadLetters: (id) => pipeline.deadLetters.list(id),
    delivered: pipeline.delivered,
    submissionOf: (job, destination) => pipeline.jobSubmission(job, destination),
  });
  const counts: Record<SubjectState['state'], number> = { delivered: 0, 'dead-lettered': 0, pending: 0, 'not-for-destination': 0 };
  for (const s of subjects) counts[s.state]++;
  return { submission: submissionId, site, subjects, counts };
}

/**
 * The ids a path parameter may stand for, most literal first: the segment as it came (a dead letter id holds
 * `%2E` and `|` as they are, and a client pasting it into a URL sends them so; express would decode `%2E` to
 * `.` and look for another id), then the segment percent-decoded (a client that encoded the id).
 */
export function pathIdCandidates(req: Request, name: string): string[] {
  const decoded = String(req.params[name]);
  const raw = req.path.split('/').find((segment) => {
    try {
      return decodeURIComponent(segment) === decoded;
    } catch {
      return false;
    }
  });
  return raw === undefined || raw === decoded ? [decoded] : [raw, decoded];
}
