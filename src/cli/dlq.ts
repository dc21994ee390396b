/**
 * `trialbridge dlq list [--submission ID] | show ID | replay ID | replay --all [--submission ID] |
 * purge (--older-than DAYS | --submission ID | --all) | rejects --submission ID --out FILE`: the pipeline's dead
 * letters (src/queue/dead-letters.ts) on the terminal.
 *
 * Output carries ids, stages, sites, destinations, file/row/field locations, statuses, reason codes and reasons
 * without values (publicDeadLetter), never a field value or a subject id (the record key and subject of a dead
 * letter identify a patient; they stay in Redis, expiring, and in the rejects file that `dlq rejects` writes for
 * the engineer). A dead letter's id is made of its job id, so dead letters are shown by a handle (`dl-` + 12
 * hex of the id's SHA-256); show and replay take the handle or the full id. Every string from outside (file
 * names, reasons, server text) goes through terminalSafe. `purge` leaves an audit line (JSON) on stderr or in
 * `--audit-log FILE`.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { Redis } from 'ioredis';
import { createLogger } from '../log.ts';
import { publicDeadLetter, RedisDeadLetters } from '../queue/dead-letters.ts';
import { DEFAULT_PREFIX, queueNames } from '../queue/names.ts';
import type { DeadLetter } from '../queue/stages.ts';
import { RedisSubmissions } from '../queue/submissions.ts';
import { terminalSafe } from '../terminal.ts';
import { pipelineFromCli, redisConnection } from './worker.ts';

interface Common {
  readonly prefix: string;
}

/** The printable handle of a dead letter id (the id itself holds the subject). */
export function deadLetterHandle(id: string): string {
  return `dl-${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;
}

/** The dead letter id of a handle or id, if there is one. */
async function resolveId(dl: RedisDeadLetters, handleOrId: string): Promise<string | undefined> {
  if (!/^dl-[0-9a-f]{12}$/.test(handleOrId)) return (await dl.show(handleOrId))?.id;
  return (await dl.all()).find((d) => deadLetterHandle(d.id) === handleOrId)?.id;
}

/** Where a dead letter is: file, row and field of a record, or its destination. */
function whereOf(d: DeadLetter): string {
  if (d.location) return `${d.location.file}#${d.location.row} field ${d.location.field}${d.location.rule ? ` rule ${d.location.rule}` : ''}`;
  return d.destination ? `destination ${d.destination}` : '';
}

/** One line per dead letter: no subject, no record key, no value. */
export function formatDeadLetter(d: DeadLetter): string {
  const shown = publicDeadLetter(d);
  return terminalSafe(
    [deadLetterHandle(d.id), d.createdAt, d.stage, `site ${d.site}`, whereOf(d), d.status !== undefined ? `status ${d.status}` : '', d.replayable ? 'replayable' : 'not replayable', shown.code, shown.reason]
      .filter((s) => s !== '')
      .join('  '),
  );
}

/** A dead letter in detail: the fields above plus the OperationOutcome's issues (severity and code). */
export function formatDeadLetterDetail(d: DeadLetter): string {
  const shown = publicDeadLetter(d);
  const lines = [
    `id          ${deadLetterHandle(d.id)}`,
    `submission  ${d.submissionId}`,
    `stage       ${d.stage}`,
    `site        ${d.site}`,
    ...(d.location ? [`record      ${d.location.file} row ${d.location.row}, field ${d.location.field}${d.location.rule ? `, rule ${d.location.rule}` : ''}`] : []),
    ...(d.destination ? [`destination ${d.destination}`] : []),
    ...(d.status !== undefined ? [`status      ${d.status}`] : []),
    `replayable  ${d.replayable ? 'yes' : 'no'}`,
    `created     ${d.createdAt}`,
    `code        ${shown.code}`,
    `reason      ${shown.reason}`,
    ...(shown.issues ?? []).map((i) => `issue       ${i.severity} ${i.code}`),
  ];
  return lines.map(terminalSafe).join('\n');
}

async function withDeadLetters<T>(prefix: string, fn: (dl: RedisDeadLetters) => Promise<T>): Promise<T> {
  const names = queueNames(prefix);
  const redis = new Redis({ ...redisConnection(), maxRetriesPerRequest: 1 });
  try {
    return await fn(new RedisDeadLetters(redis, names, new RedisSubmissions(redis, names)));
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
      const entries = await withDeadLetters(options.prefix, async (dl) => {
        if (options.submission) return dl.list(options.submission);
        return (await dl.all()).sort((a, b) => a.submissionId.localeCompare(b.submissionId) || a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
      });
      let submission: string | undefined;
      for (const d of entries) {
        if (!options.submission && d.submissionId !== submission) console.log(`submission ${terminalSafe((submission = d.submissionId))}`);
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
      const entry = await withDeadLetters(options.prefix, async (dl) => {
        const full = await resolveId(dl, id);
        return full === undefined ? undefined : dl.show(full);
      });
      if (!entry) {
        console.error(`no dead letter '${terminalSafe(id)}'`);
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
        const full = id === undefined ? undefined : await resolveId(pipeline.deadLetters, id);
        if (id !== undefined && full === undefined) {
          console.error(`no dead letter '${terminalSafe(id)}'`);
          process.exitCode = 1;
          return;
        }
        let submissions: string[];
        if (id !== undefined) submissions = [];
        else if (options.submission) submissions = [options.submission];
        else {
          submissions = [...new Set((await pipeline.deadLetters.all()).map((d) => d.submissionId))].sort();
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
  dlq
    .command('purge')
    .description('remove dead letters and their payloads: those older than --older-than days, of one --submission, or --all')
    .option('--older-than <days>', 'created more than this many days ago', nonNegativeNumber('--older-than'))
    .option('-s, --submission <id>', 'of this submission')
    .option('--all', 'every dead letter')
    .option('--audit-log <file>', 'append the audit line (JSON) to this file instead of stderr')
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .action(async (options: Common & { olderThan?: number; submission?: string; all?: boolean; auditLog?: string }) => {
      const narrowed = options.olderThan !== undefined || options.submission !== undefined;
      if (narrowed === Boolean(options.all)) {
        console.error('give --older-than DAYS and/or --submission ID, or --all');
        process.exitCode = 1;
        return;
      }
      const before = options.olderThan !== undefined ? new Date(Date.now() - options.olderThan * 86_400_000) : undefined;
      const purged = await withDeadLetters(options.prefix, (dl) => dl.purge({ ...(options.submission ? { submissionId: options.submission } : {}), ...(before ? { before } : {}) }));
      const audit = createLogger({ name: 'audit', ...(options.auditLog ? { destination: options.auditLog } : {}) });
      audit.info(
        {
          event: 'dead-letters.purged',
          prefix: options.prefix,
          ...(options.submission ? { submission: options.submission } : {}),
          ...(before ? { createdBefore: before.toISOString() } : {}),
          ...(options.all ? { all: true } : {}),
          purged,
          user: process.env.USER ?? process.env.LOGNAME,
        },
        'dead letters purged',
      );
      audit.flush();
      console.log(`purged ${purged} dead letter${purged === 1 ? '' : 's'}`);
    });

  dlq
    .command('rejects')
    .description("write a submission's dead letters in full (reasons and server messages as they were, record keys) to a file for the engineer")
    .requiredOption('-s, --submission <id>', 'the submission')
    .requiredOption('-o, --out <file>', 'the rejects file (JSON lines, created with mode 600; an existing file is not overwritten)')
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .action(async (options: Common & { submission: string; out: string }) => {
      const entries = await withDeadLetters(options.prefix, (dl) => dl.list(options.submission));
      await writeFile(options.out, entries.map((d) => JSON.stringify({ handle: deadLetterHandle(d.id), ...d, ...publicDeadLetter(d), fullReason: d.reason })).join('\n') + (entries.length ? '\n' : ''), {
        flag: 'wx',
        mode: 0o600,
      });
      console.log(`${entries.length} dead letter${entries.length === 1 ? '' : 's'} written to ${terminalSafe(options.out)}`);
    });
}

function nonNegativeNumber(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of days, 0 or more (got '${value}')`);
    return n;
  };
}

async function sequential<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (const item of items) out.push(await fn(item));
  return out;
}
