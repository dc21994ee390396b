/**
 * `trialbridge dlq list [--submission ID] | show ID | replay ID | replay --all [--submission ID]`: the
 * pipeline's dead letters (src/queue/dead-letters.ts) on the terminal.
 *
 * Output carries ids, stages, sites, destinations, file/row/field locations, statuses and reasons, never a
 * field value or a subject id (the record key and subject of a dead letter identify a patient; they stay in
 * Redis, and in the rejects file for the engineer). A dead letter's id is made of its job id, which holds the
 * subject, so dead letters are shown by a handle (`dl-` + 12 hex of the id's SHA-256); show and replay take
 * the handle or the full id.
 */
import { createHash } from 'node:crypto';
import type { Command } from 'commander';
import { Redis } from 'ioredis';
import { RedisDeadLetters } from '../queue/dead-letters.ts';
import { DEFAULT_PREFIX, queueNames } from '../queue/names.ts';
import type { DeadLetter } from '../queue/stages.ts';
import { RedisSubmissions } from '../queue/submissions.ts';
import { pipelineFromCli, redisConnection } from './worker.ts';

interface Common {
  readonly prefix: string;
}

/** The printable handle of a dead letter id (the id itself holds the subject). */
export function deadLetterHandle(id: string): string {
  return `dl-${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;
}

/** The dead letter id of a handle or id, if there is one. */
async function resolveId(redis: Redis, prefix: string, handleOrId: string): Promise<string | undefined> {
  const key = queueNames(prefix).deadLetterKey();
  if (!/^dl-[0-9a-f]{12}$/.test(handleOrId)) return (await redis.hexists(key, handleOrId)) ? handleOrId : undefined;
  let cursor = '0';
  do {
    const [next, fields] = await redis.hscan(key, cursor, 'COUNT', '500');
    for (let i = 0; i < fields.length; i += 2) if (deadLetterHandle(fields[i]) === handleOrId) return fields[i];
    cursor = next;
  } while (cursor !== '0');
  return undefined;
}

/** One line per dead letter: no subject, no record key, no value. */
export function formatDeadLetter(d: DeadLetter): string {
  const where = d.location ? `${d.location.file}#${d.location.row} field ${d.location.field}` : d.destination ? `destination ${d.destination}` : '';
  return [deadLetterHandle(d.id), d.createdAt, d.stage, `site ${d.site}`, where, d.status !== undefined ? `status ${d.status}` : '', d.replayable ? 'replayable' : 'not replayable', d.reason]
    .filter((s) => s !== '')
    .join('  ');
}

/** A dead letter in detail: the fields above plus the OperationOutcome's issues (severity, code, location). */
export function formatDeadLetterDetail(d: DeadLetter): string {
  const lines = [
    `id          ${deadLetterHandle(d.id)}`,
    `submission  ${d.submissionId}`,
    `stage       ${d.stage}`,
    `site        ${d.site}`,
    ...(d.location ? [`record      ${d.location.file} row ${d.location.row}, field ${d.location.field}`] : []),
    ...(d.destination ? [`destination ${d.destination}`] : []),
    ...(d.status !== undefined ? [`status      ${d.status}`] : []),
    `replayable  ${d.replayable ? 'yes' : 'no'}`,
    `created     ${d.createdAt}`,
    `reason      ${d.reason}`,
  ];
  for (const issue of d.outcome?.issue ?? []) {
    const at = [...(issue.expression ?? []), ...(issue.location ?? [])].join(', ');
    lines.push(`issue       ${issue.severity} ${issue.code}${at ? ` at ${at}` : ''}`);
  }
  return lines.join('\n');
}

async function withDeadLetters<T>(prefix: string, fn: (dl: RedisDeadLetters, redis: Redis) => Promise<T>): Promise<T> {
  const names = queueNames(prefix);
  const redis = new Redis({ ...redisConnection(), maxRetriesPerRequest: 1 });
  try {
    return await fn(new RedisDeadLetters(redis, names, new RedisSubmissions(redis, names)), redis);
  } finally {
    await redis.quit();
  }
}

export function registerDlq(program: Command): void {
  const dlq = program.command('dlq').description('dead letters of the queue pipeline: list, show, replay (REDIS_URL names the Redis server)');

  dlq
    .command('list')
    .description('list dead letters, oldest first per submission')
    .option('-s, --submission <id>', 'only this submission')
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .action(async (options: Common & { submission?: string }) => {
      const entries = await withDeadLetters(options.prefix, async (dl, redis) => {
        if (options.submission) return dl.list(options.submission);
        const all = (await redis.hvals(queueNames(options.prefix).deadLetterKey())).map((v) => JSON.parse(v) as DeadLetter);
        return all.sort((a, b) => a.submissionId.localeCompare(b.submissionId) || a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
      });
      let submission: string | undefined;
      for (const d of entries) {
        if (!options.submission && d.submissionId !== submission) console.log(`submission ${(submission = d.submissionId)}`);
        console.log(`${options.submission ? '' : '  '}${formatDeadLetter(d)}`);
      }
      console.error(`${entries.length} dead letter${entries.length === 1 ? '' : 's'}`);
    });

  dlq
    .command('show')
    .description('show one dead letter')
    .argument('<id>', 'dead letter handle (dl-...) or id')
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .action(async (id: string, options: Common) => {
      const entry = await withDeadLetters(options.prefix, async (dl, redis) => {
        const full = await resolveId(redis, options.prefix, id);
        return full === undefined ? undefined : dl.show(full);
      });
      if (!entry) {
        console.error(`no dead letter '${id}'`);
        process.exitCode = 1;
        return;
      }
      console.log(formatDeadLetterDetail(entry));
    });

  dlq
    .command('replay')
    .description('enqueue dead letters again (a worker must run): one by id, or --all of a submission or of every submission')
    .argument('[id]', 'dead letter handle (dl-...) or id')
    .option('--all', 'every replayable dead letter (of --submission, else of every submission)')
    .option('-s, --submission <id>', 'with --all: only this submission')
    .requiredOption('-d, --destinations <file>', 'destinations config (YAML): the delivery queues to replay into')
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .action(async (id: string | undefined, options: Common & { all?: boolean; submission?: string; destinations: string }) => {
      if ((id === undefined) === !options.all) {
        console.error('give a dead letter id or --all');
        process.exitCode = 1;
        return;
      }
      if (id !== undefined && options.submission) {
        console.error('--submission goes with --all');
        process.exitCode = 1;
        return;
      }
      const { pipeline } = await pipelineFromCli(options, false);
      try {
        const full = id === undefined ? undefined : await resolveId(pipeline.redis, options.prefix, id);
        if (id !== undefined && full === undefined) {
          console.error(`no dead letter '${id}'`);
          process.exitCode = 1;
          return;
        }
        let submissions: string[];
        if (id !== undefined) submissions = [];
        else if (options.submission) submissions = [options.submission];
        else {
          const all = await pipeline.redis.hvals(pipeline.names.deadLetterKey());
          submissions = [...new Set(all.map((v) => (JSON.parse(v) as DeadLetter).submissionId))].sort();
        }
        const results = full !== undefined ? [await pipeline.replay(full)] : await sequential(submissions, (s) => pipeline.replayAll(s));
        const replayed = results.reduce((n, r) => n + r.replayed.length, 0);
        const jobs = results.reduce((n, r) => n + r.jobs.length, 0);
        const skipped = results.flatMap((r) => r.skipped);
        console.log(`replayed ${replayed} dead letter${replayed === 1 ? '' : 's'} as ${jobs} new job${jobs === 1 ? '' : 's'}; ${skipped.length} not replayable`);
        for (const s of skipped) console.log(`  not replayable: ${deadLetterHandle(s)}`);
      } finally {
        await pipeline.close();
      }
    });
}

async function sequential<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (const item of items) out.push(await fn(item));
  return out;
}
