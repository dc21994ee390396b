/**
 * Faults on the worker side and on the FHIR server, with real processes: `trialbridge worker` child processes
 * on a redis-server of the test's own, delivering over HTTP to an embedded FHIR server behind a FaultProxy
 * (test/support/fault-proxy.ts).
 *
 * 1. A run of 5,126 records (site-c × 11: 154 subjects): workers are killed with SIGKILL four times during the
 *    run (each replaced at once), and the FHIR server is down (connection refused) for a while, then slow
 *    (every answer held 4 s, beyond the 2.5 s timeout, after the server applied the bundle), then back. Every
 *    fault is triggered by the run's progress (jobs finished), not by the clock.
 * 2. A job whose worker dies under it twice: the pipeline dead-letters it (replayable) instead of letting BullMQ
 *    fail it without one (a job failed for stalling would end neither delivered nor dead-lettered), and the
 *    replay delivers it.
 *
 * Each run ends with the accounting of test/support/accounting.ts: records submitted = delivered + rejected +
 * dead-lettered, counters agreeing, nothing left or failed in BullMQ, and the FHIR server holding exactly one
 * resource per business identifier of the delivered bundles.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from '../../src/delivery/embedded-server.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { accountRecords, bundleTypes, checkIdentifiers, serverHoldings, type RecordAccounting } from '../support/accounting.ts';
import { FaultProxy, type FaultProxyOptions } from '../support/fault-proxy.ts';
import { RedisProcess, redisServerAvailable } from '../support/redis-process.ts';
import { socketOwner } from '../support/socket-owner.ts';
import { writeScaledSiteC } from '../support/scaled-export.ts';
import { until, within, WorkerProcess } from '../support/worker-process.ts';

const RECORDED = '2019-01-01T00:00:00Z';
const SITE = 'site-c';
const DESTINATION = 'hospital';
/** Bundles with more entries are refused by the server (400): the run's deterministic dead letters. */
const MAX_ENTRIES = 40;

let dir: string;
let redis: RedisProcess;
let validator: ResourceValidator;
let mapping: CompiledMapping;

beforeAll(async () => {
  expect(redisServerAvailable(), 'redis-server must be installed (.ci/run installs it)').toBe(true);
  dir = await mkdtemp(join(tmpdir(), 'tb-faults-workers-'));
  redis = await RedisProcess.start({ dir: join(dir, 'redis') });
  validator = await defaultValidator();
  mapping = await compileMapping(await loadMapping(`mappings/${SITE}.yaml`));
});

afterAll(async () => {
  await redis?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await within(30_000, 'cleanup', cleanup()).catch((e: unknown) => console.error(e));
});

interface Rig {
  readonly fhir: EmbeddedFhirServer;
  readonly proxy: FaultProxy;
  readonly config: string;
  readonly prefix: string;
  readonly producer: QueuePipeline;
  readonly workers: WorkerProcess[];
  startWorker(): WorkerProcess;
  /** Jobs finished (delivered or dead-lettered) as logged by every worker so far, the killed ones included. */
  done(): number;
  count(event: string): number;
}

async function rig(destination: readonly string[], workerArgs: readonly string[], fhirOptions: EmbeddedFhirServerOptions, proxyOptions: FaultProxyOptions = {}): Promise<Rig> {
  const fhir = await startEmbeddedFhirServer(fhirOptions);
  cleanups.push(() => fhir.close());
  const proxy = await FaultProxy.start(fhir.baseUrl, proxyOptions);
  cleanups.push(() => proxy.close());
  const config = join(dir, `${randomUUID()}.yaml`);
  await writeFile(
    config,
    ['destinations:', `  - name: ${DESTINATION}`, '    kind: hospital', `    baseUrl: ${proxy.baseUrl}`, '    sites: "*"', '    auth: { type: none }', ...destination].join('\n') + '\n',
  );
  const prefix = `tb-fault-workers-${randomUUID()}`;
  const producer = new QueuePipeline({ connection: redis.connection, prefix, mappings: [mapping], destinations: await loadDestinations(config), validator });
  cleanups.push(async () => {
    await producer.obliterate();
    await producer.close();
  });
  const workers: WorkerProcess[] = [];
  cleanups.push(async () => {
    await Promise.all(workers.map((w) => w.kill()));
  });
  const startWorker = () => {
    const w = new WorkerProcess({ destinations: config, prefix, redisUrl: redis.url, mappings: [`mappings/${SITE}.yaml`], args: workerArgs, name: `worker ${workers.length + 1}` });
    workers.push(w);
    return w;
  };
  const count = (event: string) => workers.reduce((n, w) => n + w.count(event), 0);
  return { fhir, proxy, config, prefix, producer, workers, startWorker, done: () => count('delivered') + count('dead-lettered'), count };
}

/** The checks every run ends with; returns the accounting for the annotation. */
async function expectExactAccounting(r: Rig, submitted: SubmitResult, inputs: string[], expected: MappedExport): Promise<{ a: RecordAccounting; resources: number }> {
  const a = await accountRecords(r.producer, { submissionId: submitted.submissionId, mapping, inputs, bundles: expected.bundles }, DESTINATION);
  expect(a.unaccounted, 'subjects that ended nowhere').toEqual([]);
  expect(a.twice, 'subjects that ended twice').toEqual([]);
  expect(a.submitted, 'records submitted = delivered + rejected + dead-lettered').toBe(a.delivered + a.rejected + a.deadLettered);
  expect(a.submitted).toBe(expected.summary.recordsRead);
  expect(a.rejected).toBe(expected.summary.recordsRejected);
  expect(a.counters.recordsRejected).toBe(a.rejected);
  const d = a.counters.destinations[DESTINATION];
  expect(a.counters.mapped).toBe(expected.bundles.length);
  expect(d.delivered).toBe(a.subjects.delivered);
  expect(d.deadLettered).toBe(a.subjects.deadLettered);
  expect(d.delivered + d.deadLettered).toBe(d.deliveryQueued);
  for (const queue of [r.producer.mappingQueue, r.producer.deliveryQueue(DESTINATION)]) {
    expect(await queue.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized')).toEqual({ waiting: 0, active: 0, delayed: 0, failed: 0, prioritized: 0 });
  }
  const holdings = await serverHoldings(r.fhir.baseUrl, bundleTypes(expected.bundles.map((b) => b.bundle)));
  const check = checkIdentifiers(holdings, a.deliveredBundles.values());
  expect(check.missing, 'identifiers of delivered bundles missing on the server').toEqual([]);
  expect(check.duplicated, 'identifiers held twice').toEqual([]);
  expect(check.extra, 'identifiers held that no delivered bundle has').toEqual([]);
  expect(holdings.untagged).toBe(0);
  expect(holdings.resources).toBe(check.expected);
  return { a, resources: holdings.resources };
}

describe('workers killed and the FHIR server down, slow, back', () => {
  it('SIGKILL ×4 and a FHIR server refused, then slow beyond the timeout, then back, during a run of 5,126 records: exact accounting', async ({ annotate }) => {
    const started = Date.now();
    const timeline: string[] = [];
    const mark = (what: string) => timeline.push(`${((Date.now() - started) / 1000).toFixed(1)}s ${what}`);
    const inputs = [join(dir, 'site-c-x11')];
    await writeScaledSiteC(inputs[0], 11, 'K');
    const expected = await mapExport(mapping, inputs, { recorded: RECORDED, validator });
    const bundles = expected.bundles.length;
    expect(expected.summary.recordsRead).toBeGreaterThanOrEqual(5000);
    const tooLarge = expected.bundles.filter((b) => b.bundle.entry!.length > MAX_ENTRIES).map((b) => b.subject).sort();
    expect(tooLarge.length).toBeGreaterThan(0);

    // A kill is armed at a point of the run and lands on the worker that sends the next bundle, while the
    // proxy holds that bundle: the worker certainly dies with a delivery in flight (its job stalls).
    let armed: { resolve: (w: WorkerProcess) => void } | undefined;
    let rigRef: Rig | undefined;
    const r = await rig(
      [
        '    transactions: true',
        '    atomic: true',
        '    concurrency: 2',
        // Paced, so that the run lasts long enough for the faults to land in its middle.
        '    rateLimit: { max: 6, perMs: 1000 }',
        '    timeoutMs: 2500',
        '    retry: { attempts: 40, requestAttempts: 2, baseMs: 100, maxMs: 1000 }',
        '    circuitBreaker: { failures: 3, openMs: 1000 }',
      ],
      // Stalled jobs are looked for every second; a job survives many kills (the stall limit has its own test below).
      ['--lock-duration', '3000', '--stalled-interval', '1000', '--max-stalled-count', '10'],
      { maxTransactionEntries: MAX_ENTRIES },
      {
        slowMs: 4000,
        onRequest: async ({ method, clientPort }) => {
          const kill = armed;
          if (method !== 'POST' || !kill || !rigRef) return;
          armed = undefined;
          const alive = rigRef.workers.filter((w) => w.alive);
          const pid = await socketOwner(clientPort, rigRef.proxy.port, alive.map((w) => w.pid));
          const owner = alive.find((w) => w.pid === pid);
          if (!owner) {
            armed ??= kill; // not found (the connection closed meanwhile): the next bundle's sender
            return;
          }
          await owner.kill();
          kill.resolve(owner);
        },
      },
    );
    rigRef = r;
    const killInFlight = async (why: string) => {
      const victim = await within(60_000, `a bundle in flight to kill its sender (${why})`, new Promise<WorkerProcess>((resolve) => (armed = { resolve })));
      mark(`SIGKILL ${victim.name} with a bundle in flight (${why}), ${r.done()}/${bundles} jobs done`);
      r.startWorker();
    };
    const killAny = async (why: string) => {
      const victim = r.workers.find((w) => w.alive)!;
      await victim.kill();
      mark(`SIGKILL ${victim.name} (${why}), ${r.done()}/${bundles} jobs done`);
      r.startWorker();
    };
    await Promise.all([r.startWorker(), r.startWorker()].map((w) => w.ready()));
    mark('2 workers ready');
    const submitted = await r.producer.submitExport(SITE, inputs, { recorded: RECORDED });
    expect(submitted.queued).toBe(submitted.subjects);
    mark(`submitted ${expected.summary.recordsRead} records, ${submitted.subjects} subjects`);
    const progress = (n: number, what: string) => until(120_000, `${what} (${n} jobs done)`, () => r.done() >= n, 50);

    await progress(15, 'first kill');
    await killInFlight('mid-run');
    await progress(35, 'second kill');
    await killInFlight('mid-run');

    // The FHIR server goes away: nothing listens on its port.
    await progress(50, 'server down');
    const failedBefore = r.count('attempt-failed');
    await r.proxy.setMode('refuse');
    const downAt = Date.now();
    mark(`FHIR server down (connection refused), ${r.done()}/${bundles} jobs done`);
    await until(60_000, 'delivery attempts fail while the server is down', () => r.count('attempt-failed') >= failedBefore + 3, 50);
    await killAny('while the server is down');
    await until(60_000, 'down for at least 4 s', () => Date.now() - downAt >= 4000, 50);
    const refusedAttempts = r.count('attempt-failed') - failedBefore;

    // Back, but answering 4 s late: after the client's 2.5 s timeout, with the bundle already applied.
    await r.proxy.setMode('slow');
    mark(`FHIR server slow (answers held 4 s, timeout 2.5 s) after ${refusedAttempts} failed attempts while down`);
    const failedBeforeSlow = r.count('attempt-failed');
    // Slow long enough that whole delivery attempts (2 requests of 2.5 s each) fail, not just single requests.
    await until(90_000, 'answers held beyond the timeout, and delivery attempts failing', () => r.proxy.stats.slowAbandoned >= 4 && r.count('attempt-failed') >= failedBeforeSlow + 2, 50);
    const failedSlow = r.count('attempt-failed') - failedBeforeSlow;
    await r.proxy.setMode('up');
    mark(`FHIR server back after ${r.proxy.stats.slowed} answers held (${r.proxy.stats.slowAbandoned} given up by the client after the server applied them), ${failedSlow} failed attempts while slow`);

    await progress(Math.min(bundles - 20, r.done() + 20), 'last kill');
    await killInFlight('after the server is back');
    await within(150_000, 'the submission finishes', r.producer.waitForSubmission(submitted));
    mark('submission finished');

    expect(r.workers.length).toBe(6); // 2 + 4 replacements
    // Each of the three kills with a bundle in flight left a stalled job that another worker took over.
    expect(r.count('stalled'), 'stalled jobs recovered from killed workers').toBeGreaterThanOrEqual(3);
    expect(refusedAttempts).toBeGreaterThanOrEqual(3);
    expect(r.proxy.stats.slowAbandoned).toBeGreaterThanOrEqual(4);
    expect(failedSlow).toBeGreaterThanOrEqual(2);

    const { a, resources } = await expectExactAccounting(r, submitted, inputs, expected);
    // The only dead letters are the bundles the server refuses for their size: no job was given up because of a
    // kill, the outage or the slow answers.
    expect(a.deliveryDeadLetters.map((l) => l.subject).sort()).toEqual(tooLarge);
    for (const l of a.deliveryDeadLetters) expect(l.status).toBe(400);
    expect(a.subjects.delivered).toBe(bundles - tooLarge.length);

    await annotate(
      [
        `records submitted ${a.submitted} = delivered ${a.delivered} + rejected ${a.rejected} + dead-lettered ${a.deadLettered}`,
        `bundles delivered ${a.subjects.delivered}, dead-lettered ${a.subjects.deadLettered} (too large, 400); server: ${resources} resources = identifiers of the delivered bundles, none twice`,
        `workers killed 4, stalled-job recoveries ${r.count('stalled')}; failed attempts: ${refusedAttempts} while refused, ${failedSlow} while slow, ${r.count('attempt-failed')} in all`,
        `bundles POSTed ${r.proxy.stats.received.POST} (forwarded ${r.proxy.stats.forwardedPosts}) for ${bundles} bundles; answers held ${r.proxy.stats.slowed}, of which given up by the client ${r.proxy.stats.slowAbandoned}`,
        ...timeline,
      ].join('\n'),
    );
  }, 240_000);

  it('dead-letters a delivery job whose worker died under it twice (maxStalledCount 1), and its replay delivers it', async ({ annotate }) => {
    const inputs = [join(dir, 'site-c-x1')];
    await writeScaledSiteC(inputs[0], 1, 'S');
    const expected = await mapExport(mapping, inputs, { recorded: RECORDED, validator });
    // The first bundle POSTed is the victim: every POST of it is held (never forwarded) until the test releases it.
    let victim: string | undefined;
    let held = 0;
    let onHeld: (() => void) | undefined;
    const releases: (() => void)[] = [];
    const hash = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    const r = await rig(
      // A killed worker's pacing lease lasts about as long as its job lock (1 s), so the next worker is not held back by it.
      ['    transactions: true', '    atomic: true', '    concurrency: 1', '    timeoutMs: 30000', '    retry: { attempts: 3, requestAttempts: 1, baseMs: 50, maxMs: 200 }', '    pacing: { leaseMs: 2000 }'],
      ['--lock-duration', '1000', '--stalled-interval', '500', '--max-stalled-count', '1'],
      {},
      {
        onRequest: async ({ method, body }) => {
          // The trial-wide ResearchStudy goes first, alone (written once per destination): the victim is a subject's bundle.
          if (method !== 'POST') return;
          const studyAlone = (JSON.parse(body.toString('utf8')) as { entry?: { resource?: { resourceType?: string } }[] }).entry?.every((e) => e.resource?.resourceType === 'ResearchStudy');
          if (studyAlone || (victim !== undefined && hash(body) !== victim)) return;
          victim ??= hash(body);
          held++;
          onHeld?.();
          await new Promise<void>((resolve) => releases.push(resolve));
        },
      },
    );
    cleanups.push(async () => {
      for (const release of releases) release();
    });
    const heldTimes = (n: number) =>
      new Promise<void>((resolve) => {
        onHeld = () => held >= n && resolve();
        onHeld();
      });

    const first = r.startWorker();
    await first.ready();
    const submitted = await r.producer.submitExport(SITE, inputs, { recorded: RECORDED });
    await within(60_000, 'the victim bundle is sent', heldTimes(1));
    // Every subject mapped first: the kills below land on the delivery job alone, not on a mapping job too.
    await until(60_000, 'every subject mapped', async () => {
      const counts = await r.producer.mappingQueue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
      return Object.values(counts).every((n) => n === 0);
    }, 50);
    await first.kill();
    const second = r.startWorker();
    await within(60_000, 'the victim bundle is sent again by the second worker', heldTimes(2));
    await second.kill();
    const third = r.startWorker();
    await within(90_000, 'the submission finishes', r.producer.waitForSubmission(submitted));
    expect(third.count('stalled')).toBeGreaterThan(0);
    expect(held, 'the third worker does not send it again').toBe(2);

    const { a } = await expectExactAccounting(r, submitted, inputs, expected);
    expect(a.deliveryDeadLetters).toHaveLength(1);
    const letter = a.deliveryDeadLetters[0];
    expect(letter).toMatchObject({ stage: 'deliver', destination: DESTINATION, replayable: true });
    expect(letter.reason).toMatch(/stalled 2 times/);
    expect(a.subjects.delivered).toBe(expected.bundles.length - 1);

    // The replay sends it (nothing holds it any more) and the server then has every bundle.
    victim = 'released';
    const replay = await r.producer.replay(letter.id);
    expect(replay.jobs).toHaveLength(1);
    await within(60_000, 'the replay is delivered', r.producer.waitForJobs([{ destination: DESTINATION, jobId: replay.jobs[0] }]));
    const counters = await r.producer.submission(submitted.submissionId);
    expect(counters.destinations[DESTINATION]).toMatchObject({ delivered: expected.bundles.length, replayed: 1 });
    const holdings = await serverHoldings(r.fhir.baseUrl, bundleTypes(expected.bundles.map((b) => b.bundle)));
    const check = checkIdentifiers(holdings, expected.bundles.map((b) => b.bundle));
    expect({ missing: check.missing, duplicated: check.duplicated, extra: check.extra }).toEqual({ missing: [], duplicated: [], extra: [] });
    await annotate(`dead letter: ${letter.reason}; replayed and delivered: ${expected.bundles.length} bundles on the server`);
  }, 180_000);
});
