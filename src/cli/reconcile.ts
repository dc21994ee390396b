/**
 * `trialbridge reconcile --destination NAME --config FILE --study ID [--repair [--wait]]`: compares what a
 * destination's server holds with what trialbridge delivered to it (the delivery records kept in Redis, see
 * src/queue/delivered.ts), per subject and business identifier, and prints the differences, one per line:
 * `missing|duplicated  site  subject  resource type  system|key` (tab-separated; never a resource's content).
 * `--repair` queues the subjects with missing resources again, with the bundle that was delivered, bypassing
 * the 24 h deduplication of finished jobs (a worker delivers them; `--wait` waits for that and checks again).
 *
 * Exit codes, as diff(1): 0 no differences (or all repaired, with --wait), 1 differences, 2 trouble (bad
 * options, Redis or the server unreachable, a search refused).
 */
import type { Command } from 'commander';
import { Redis } from 'ioredis';
import { destinationClient } from '../delivery/destination-client.ts';
import { DestinationConfigError, loadDestinations } from '../delivery/destinations.ts';
import { differenceRows, reconcile, type ReconcileResult } from '../delivery/reconcile.ts';
import type { FhirClient } from '../delivery/client.ts';
import { VerificationSearchError } from '../delivery/verify.ts';
import { RedisDelivered, type SubjectDelivery } from '../queue/delivered.ts';
import { DEFAULT_PREFIX, queueNames } from '../queue/names.ts';
import { repairSubjects } from '../queue/repair.ts';
import { terminalSafe } from '../terminal.ts';
import { pipelineFromCli, redisConnection } from './worker.ts';

interface ReconcileOptions {
  readonly destination: string;
  readonly config: string;
  readonly study: string;
  readonly repair?: boolean;
  readonly wait?: boolean;
  readonly prefix: string;
}

/** A problem the user can act on: one line, exit code 2. */
class ReconcileUsageError extends Error {
  override readonly name = 'ReconcileUsageError';
}

function printDifferences(result: ReconcileResult): void {
  for (const row of differenceRows(result.differences)) console.log(row.map(terminalSafe).join('\t'));
  const missing = result.differences.reduce((n, d) => n + d.missing.length, 0);
  const duplicated = result.differences.reduce((n, d) => n + d.duplicated.length, 0);
  console.error(
    `${result.subjects} subject${result.subjects === 1 ? '' : 's'} delivered, ${result.identifiers} business identifiers, ${result.requests} searches: ` +
      (result.differences.length === 0 ? 'no differences' : `${result.differences.length} subject${result.differences.length === 1 ? '' : 's'} differ (${missing} missing, ${duplicated} duplicated)`),
  );
}

async function deliveredRecords(options: ReconcileOptions): Promise<SubjectDelivery[]> {
  const redis = new Redis({ ...redisConnection(), maxRetriesPerRequest: 1 });
  try {
    return await new RedisDelivered(redis, queueNames(options.prefix)).list(options.destination, options.study);
  } finally {
    await redis.quit();
  }
}

async function run(options: ReconcileOptions): Promise<number> {
  if (options.wait && !options.repair) throw new ReconcileUsageError('--wait goes with --repair');
  const destination = loadDestinations(options.config).find((d) => d.name === options.destination);
  if (!destination) throw new ReconcileUsageError(`no destination named '${options.destination}' in ${options.config}`);
  const client: FhirClient = destinationClient(destination);
  const delivered = await deliveredRecords(options);
  console.error(`reconcile: destination ${destination.name}, study ${terminalSafe(options.study)}`);
  if (delivered.length === 0) {
    console.error(`no delivery of study ${terminalSafe(options.study)} to ${destination.name} is on record (records are kept for the retention, 30 days by default)`);
    return 0;
  }
  const result = await reconcile(client, delivered);
  printDifferences(result);
  const lost = result.differences.filter((d) => d.missing.length > 0);
  if (!options.repair || lost.length === 0) return result.differences.length === 0 ? 0 : 1;

  const { pipeline } = await pipelineFromCli({ destinations: options.config, prefix: options.prefix }, false);
  try {
    const repair = await repairSubjects(pipeline, destination.name, lost);
    console.error(`repair: queued ${repair.queued.length} subject${repair.queued.length === 1 ? '' : 's'} again for ${destination.name} (a worker delivers them)`);
    for (const s of repair.notKept) console.log(['not kept', s.site, s.subject].map(terminalSafe).join('\t'));
    if (repair.notKept.length > 0) console.error(`repair: ${repair.notKept.length} subjects' bundles are no longer kept: submit their exports again`);
    if (!options.wait) return 1;
    await pipeline.waitForJobs(repair.queued);
    const again = await reconcile(client, await deliveredRecords(options));
    console.error('after repair:');
    printDifferences(again);
    return again.differences.length === 0 ? 0 : 1;
  } finally {
    await pipeline.close();
  }
}

export function registerReconcile(program: Command): void {
  program
    .command('reconcile')
    .description('compare what a destination holds with what trialbridge delivered (per subject and business identifier); --repair queues lost subjects again')
    .requiredOption('-d, --destination <name>', 'the destination to check')
    .option('-c, --config <file>', 'destinations file', 'destinations.yaml')
    .requiredOption('-s, --study <id>', 'the study: trial id or ResearchStudy identifier (value or system|value)')
    .option('--repair', 'queue the subjects with missing resources again (bypasses the 24 h deduplication)')
    .option('--wait', 'with --repair: wait until a worker delivered them, then check again')
    .option('--prefix <prefix>', 'Redis key prefix of the queues (REDIS_URL names the Redis server)', DEFAULT_PREFIX)
    .action(async (options: ReconcileOptions) => {
      try {
        process.exitCode = await run(options);
      } catch (error) {
        const known = error instanceof ReconcileUsageError || error instanceof DestinationConfigError || error instanceof VerificationSearchError;
        console.error(`reconcile: ${terminalSafe(known ? error.message : error instanceof Error ? error.message : String(error))}`);
        process.exitCode = 2;
      }
    });
}
