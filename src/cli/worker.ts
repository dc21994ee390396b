/**
 * `trialbridge worker`: runs the QueuePipeline's workers (the mapping worker and one delivery worker per
 * destination) until SIGTERM/SIGINT, then stops taking jobs, lets the jobs in flight finish and exits 0.
 *
 * Progress goes to stdout as JSON lines: queue, outcome, submission id, site, destination, counts. Never a
 * subject id, a job id (job ids carry the subject) or a record value. A Redis outage is one `redis-down` line
 * and one `redis-reconnected` line (with `downMs`); jobs wait for Redis meanwhile instead of failing.
 */
import type { Command } from 'commander';
import type { Job } from 'bullmq';
import { defaultValidator } from '../bundle/map-export.ts';
import { loadDestinations, type Destination } from '../delivery/destinations.ts';
import { compileMapping, type CompiledMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { DEFAULT_PREFIX } from '../queue/names.ts';
import { QueuePipeline, type QueueConnection, type QueuePipelineOptions } from '../queue/pipeline.ts';
import { maskValues } from '../queue/dead-letters.ts';
import type { DeliveryJobData, DeliveryJobResult, MappingJobData, MappingJobResult } from '../queue/stages.ts';
import { createLogger } from '../log.ts';

export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/** The site mappings a worker loads unless `--mapping` is given. */
export const DEFAULT_MAPPINGS = ['mappings/site-a.yaml', 'mappings/site-b.yaml', 'mappings/site-c.yaml'];

/** Redis connection options from a redis:// or rediss:// URL (REDIS_URL). */
export function redisConnection(url: string = process.env.REDIS_URL || DEFAULT_REDIS_URL): QueueConnection {
  const u = new URL(url);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`REDIS_URL must be a redis:// or rediss:// URL (got protocol ${u.protocol})`);
  const db = u.pathname.replace(/^\//, '');
  return {
    host: u.hostname || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(db ? { db: Number(db) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/** One JSON line on stdout. */
export function logJson(event: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ time: new Date().toISOString(), event, ...fields }) + '\n');
}

export function positiveInt(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer (got '${value}')`);
    return n;
  };
}

export interface PipelineCliOptions {
  readonly destinations: string;
  readonly prefix: string;
  readonly mapping?: string[];
  /** How long dead letters (and their replay payloads) are kept, in days (default 30). */
  readonly deadLetterDays?: number;
}

/** `--dead-letter-days`: a whole number of days, at least 1. */
export const DEAD_LETTER_DAYS_OPTION = ['--dead-letter-days <days>', 'keep dead letters and their replay payloads this many days (default 30)'] as const;

export function parseDays(value: string): number {
  return positiveInt('--dead-letter-days')(value);
}

/** Loads destinations (and mappings, when `withMappings`) and builds a QueuePipeline (no workers started). */
export async function pipelineFromCli(
  options: PipelineCliOptions,
  withMappings: boolean,
  extra: Partial<QueuePipelineOptions> = {},
): Promise<{ pipeline: QueuePipeline; destinations: Destination[]; mappings: CompiledMapping[] }> {
  const destinations = await loadDestinations(options.destinations);
  const mappings: CompiledMapping[] = [];
  if (withMappings) for (const file of options.mapping ?? DEFAULT_MAPPINGS) mappings.push(await compileMapping(await loadMapping(file)));
  // The validator is needed to map; replay alone needs it only for destinations that require profiles.
  const validator = withMappings || destinations.some((d) => d.profiles.length > 0) ? await defaultValidator() : null;
  const retention = options.deadLetterDays !== undefined ? { retention: { ...extra.retention, deadLetterSeconds: options.deadLetterDays * 86_400 } } : {};
  // Each delivery logs its per-entry outcome counts (status classes, never values).
  const logger = createLogger({ name: 'delivery' });
  const pipeline = new QueuePipeline({ connection: redisConnection(), prefix: options.prefix, mappings, destinations, validator, logger, ...extra, ...retention });
  return { pipeline, destinations, mappings };
}

interface WorkerOptions extends PipelineCliOptions {
  readonly concurrency?: number;
  readonly stalledInterval?: number;
  readonly lockDuration?: number;
  readonly maxStalledCount?: number;
}

export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description('run the queue workers (mapping and delivery) until SIGTERM/SIGINT; REDIS_URL names the Redis server')
    .requiredOption('-d, --destinations <file>', 'destinations config (YAML)')
    .option('-m, --mapping <file...>', `site mappings to load (default ${DEFAULT_MAPPINGS.join(' ')})`)
    .option('-c, --concurrency <n>', 'mapping jobs run at once (delivery concurrency is per destination in the config)', positiveInt('--concurrency'))
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .option('--stalled-interval <ms>', 'how often jobs of a dead worker are looked for (default 30000)', positiveInt('--stalled-interval'))
    .option('--lock-duration <ms>', 'lock of an active job, renewed while it runs (default 30000)', positiveInt('--lock-duration'))
    .option('--max-stalled-count <n>', 'times a job whose worker died is put back before it is dead-lettered (default 1)', positiveInt('--max-stalled-count'))
    .option(...DEAD_LETTER_DAYS_OPTION, parseDays)
    .action(async (options: WorkerOptions) => {
      await runWorker(options);
    });
}

async function runWorker(options: WorkerOptions): Promise<void> {
  const { pipeline, destinations, mappings } = await pipelineFromCli(options, true, {
    workers: {
      ...(options.concurrency ? { mappingConcurrency: options.concurrency } : {}),
      ...(options.stalledInterval ? { stalledInterval: options.stalledInterval } : {}),
      ...(options.lockDuration ? { lockDuration: options.lockDuration } : {}),
      ...(options.maxStalledCount ? { maxStalledCount: options.maxStalledCount } : {}),
    },
    // Redis lost and back: one JSON line each (the workers wait for it and go on; see src/queue/pipeline.ts).
    onRedisEvent: ({ event, ...fields }) => logJson(event, fields),
  });
  let stopping = false;
  const stopped = new Promise<string>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logJson('forced-exit', { signal });
        process.exit(1);
      }
      stopping = true;
      resolve(signal);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  const workers = pipeline.startWorkers();
  for (const worker of workers) {
    const queue = worker.name;
    worker.on('completed', (job: Job, result: MappingJobResult | DeliveryJobResult) => {
      if (queue === pipeline.names.mapping) {
        const data = job.data as MappingJobData;
        const r = result as MappingJobResult;
        logJson('mapped', { queue, submission: data.submissionId, site: data.site, deliveries: r.deliveries.length });
      } else {
        const data = job.data as DeliveryJobData;
        const r = result as DeliveryJobResult;
        logJson(r.outcome, { queue, submission: data.submissionId, site: data.site, destination: data.destination, ...(r.status ? { status: r.status } : {}) });
      }
    });
    worker.on('failed', (job: Job | undefined, error: Error) => {
      const data = job?.data as { submissionId?: string; site?: string; destination?: string } | undefined;
      // The message is ours or the server's (which may quote the data back: quoted text and dates masked); the job id is left out.
      logJson('attempt-failed', { queue, submission: data?.submissionId, site: data?.site, destination: data?.destination, attempt: job?.attemptsMade, error: maskValues(error.message) });
    });
    worker.on('stalled', () => logJson('stalled', { queue }));
  }
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  logJson('ready', {
    prefix: pipeline.names.prefix,
    sites: mappings.map((m) => m.site),
    destinations: destinations.map((d) => d.name),
    pid: process.pid,
  });

  const signal = await stopped;
  logJson('stopping', { signal });
  await pipeline.close();
  logJson('stopped', { signal });
  process.exitCode = 0;
}
