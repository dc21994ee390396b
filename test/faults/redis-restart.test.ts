/**
 * Fault: Redis restarted in the middle of a run. A redis-server of the test's own (appendonly yes,
 * appendfsync everysec, its own port and directory) carries the queues of two `trialbridge worker` processes
 * and of an HTTP API (createApp) in this process; the workers deliver to an embedded FHIR server over HTTP.
 *
 * 1. The three sample sites are submitted through the API. When the 15th bundle reaches the FHIR server, Redis
 *    is killed with SIGKILL (a crash) while that bundle and others are in flight; it stays down 12 s, then
 *    is started again on the same port with the same append-only file.
 * 2. Site-c × 4 (new subjects) is submitted through the API after the restart; when its 20th bundle reaches
 *    the server, Redis is stopped cleanly (SHUTDOWN); while it is down, site-c × 1 (new subjects again) is
 *    submitted through the API, whose request waits; after 3 s Redis is started again.
 *
 * Checks: both workers report the outage and the reconnection and are sending bundles again within 4 s of the
 * restart, no job attempt failed because of an outage, the API's /readyz says 503 while Redis is down and 200
 * after, the submission made during the outage is accepted once Redis is back, every submission finishes (API
 * status `finished`), nothing is left in BullMQ (waiting, active, delayed, failed), and the accounting holds
 * per submission: records submitted = delivered + rejected + dead-lettered, with the counters agreeing; the
 * FHIR server holds exactly one resource per business identifier of the delivered bundles and nothing else. The dead letters are the bundles the server refuses for their size
 * (maxTransactionEntries, a 400), and only those.
 *
 * What a SIGKILL of Redis can lose: with appendfsync everysec, Redis write()s the append-only buffer before it
 * answers a command, so a killed *process* loses nothing it acknowledged (the kernel keeps the written pages);
 * a machine crash can lose up to ~1 s of acknowledged writes, which this test does not simulate.
 */
import { randomUUID } from 'node:crypto';
import { readdir, readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator, mapExport } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline, type RedisConnectionEvent } from '../../src/queue/pipeline.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { accountRecords, bundleTypes, checkIdentifiers, serverHoldings, type RecordAccounting } from '../support/accounting.ts';
import { FaultProxy } from '../support/fault-proxy.ts';
import { RedisProcess, redisServerAvailable } from '../support/redis-process.ts';
import { writeScaledSiteC } from '../support/scaled-export.ts';
import { until, within, WorkerProcess } from '../support/worker-process.ts';

const RECORDED = '2019-01-01T00:00:00Z';
/** Bundles with more entries are refused by the server (400): the run's dead letters. */
const MAX_ENTRIES = 40;
/**
 * How long Redis stays down after the crash (a fault parameter): longer than the workers' 2 s job locks, and
 * longer than ioredis's default patience (a command fails after 20 reconnection attempts, ~10 s).
 */
const CRASH_OUTAGE_MS = 12_000;
/** How long it stays down after the clean stop. */
const OUTAGE_MS = 3000;
/** Workers must be working again this soon after Redis is back (BullMQ's default reconnection backs off to 20 s). */
const RESUME_MS = 4000;
const KILL_AT_POST = 15;
const SHUTDOWN_AT_POST = 20;
const DESTINATION = 'hospital';

interface Submission {
  readonly label: string;
  readonly site: string;
  readonly mapping: CompiledMapping;
  readonly inputs: string[];
  id?: string;
}

let dir: string;
let validator: ResourceValidator;
const mappings = new Map<string, CompiledMapping>();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-faults-redis-'));
  validator = await defaultValidator();
  for (const site of ['site-a', 'site-b', 'site-c']) mappings.set(site, await compileMapping(await loadMapping(`mappings/${site}.yaml`)));
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The files of an export, for a multipart upload. */
async function filesOf(inputs: readonly string[]): Promise<{ name: string; content: Buffer }[]> {
  const out: { name: string; content: Buffer }[] = [];
  for (const input of inputs) {
    for (const name of (await readdir(input)).sort()) out.push({ name: basename(name), content: await readFile(join(input, name)) });
  }
  return out;
}

describe('Redis restarted in the middle of a run', () => {
  // Run after the test even when it times out (vitest runs afterEach then; a finally block would wait forever).
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await within(30_000, 'cleanup', cleanup()).catch((e: unknown) => console.error(e));
  });

  it('workers and the API reconnect after a crash and after a clean restart; every record ends delivered, rejected or dead-lettered, the server holds each identifier once', async ({ annotate }) => {
    expect(redisServerAvailable(), 'redis-server must be installed (.ci/run installs it)').toBe(true);
    const started = Date.now();
    const timeline: string[] = [];
    const mark = (what: string) => timeline.push(`${((Date.now() - started) / 1000).toFixed(1)}s ${what}`);
    const redis = await RedisProcess.start({ dir: join(dir, 'redis') });
    cleanups.push(() => redis.stop());
    const fhir: EmbeddedFhirServer = await startEmbeddedFhirServer({ maxTransactionEntries: MAX_ENTRIES });
    cleanups.push(() => fhir.close());

    // Faults are triggered by the FHIR traffic itself, so "mid-run" is certain, not timed. Bundles wait at the
    // proxy until every export of the wave is accepted (a submission is not what is being cut short here).
    let crash: Promise<void> | undefined;
    let cleanStop: Promise<void> | undefined;
    let postsAtWave2 = Number.POSITIVE_INFINITY;
    let openGate!: () => void;
    let gate = new Promise<void>((resolve) => (openGate = resolve));
    const proxy = await FaultProxy.start(fhir.baseUrl, {
      onRequest: async ({ method, n }) => {
        if (method !== 'POST') return;
        await gate;
        if (n === KILL_AT_POST) {
          mark(`POST #${n}: Redis SIGKILL`);
          crash = redis.kill();
          await crash; // this bundle reaches the server with Redis gone: its worker cannot record it yet
        } else if (n === postsAtWave2 + SHUTDOWN_AT_POST) {
          mark(`POST #${n}: Redis SHUTDOWN`);
          cleanStop = redis.shutdown();
          await cleanStop;
        }
      },
    });
    cleanups.push(() => proxy.close());

    const config = join(dir, `${randomUUID()}.yaml`);
    await writeFile(
      config,
      [
        'destinations:',
        `  - name: ${DESTINATION}`,
        '    kind: hospital',
        `    baseUrl: ${proxy.baseUrl}`,
        '    sites: "*"',
        '    transactions: true',
        '    atomic: true',
        '    concurrency: 2',
        '    timeoutMs: 10000',
        '    retry: { attempts: 10, requestAttempts: 2, baseMs: 50, maxMs: 500 }',
        '    circuitBreaker: { failures: 5, openMs: 500 }',
        '    auth: { type: none }',
      ].join('\n') + '\n',
    );
    const prefix = `tb-fault-redis-${randomUUID()}`;
    const workerArgs = ['--lock-duration', '2000', '--stalled-interval', '1000', '--max-stalled-count', '3'];
    const workers = [1, 2].map((i) => new WorkerProcess({ destinations: config, prefix, redisUrl: redis.url, args: workerArgs, name: `worker ${i}` }));

    // The API in this process, on the same Redis.
    const apiEvents: RedisConnectionEvent[] = [];
    const producer = new QueuePipeline({
      connection: redis.connection,
      prefix,
      mappings: [...mappings.values()],
      destinations: await loadDestinations(config),
      validator,
      onRedisEvent: (e) => apiEvents.push(e),
    });
    cleanups.push(async () => {
      if (redis.running) {
        await producer.obliterate();
        await producer.close();
      } else {
        producer.redis.disconnect();
      }
    });
    // (Cleanups run in reverse: the workers go before the queues are obliterated.)
    cleanups.push(async () => {
      await Promise.all(workers.map((w) => w.kill()));
    });
    const keys: Record<string, string> = {};
    for (const site of mappings.keys()) keys[site] = `${site}-${randomUUID()}`;
    const app: ApiApp = createApp({
      pipeline: producer,
      apiKeys: new ApiKeyStore(Object.entries(keys).map(([site, key]) => ({ site, keyHash: hashApiKey(key) }))),
      checkDestinations: false,
      readinessTimeoutMs: 500,
      uploadDir: join(dir, 'uploads'),
    });
    // app.close() closes the metrics' QueueEvents (src/api/metrics.ts), whose connection keeps BullMQ's default
    // reconnection (up to 20 s between attempts): closing it while it waits for its next attempt never resolves
    // (ioredis disconnect() during a reconnect wait emits no 'end'). Known, outside this test's scope: bounded.
    cleanups.push(() => within(5000, 'app.close()', app.close()).catch((e: unknown) => console.warn(`${(e as Error).message} (metrics QueueEvents still reconnecting)`)));
    const server: Server = await startServer(app, 0);
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    const api = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    const submit = async (s: Submission): Promise<void> => {
      const form = new FormData();
      for (const f of await filesOf(s.inputs)) form.append('files', new Blob([new Uint8Array(f.content)]), f.name);
      const res = await fetch(`${api}/v1/sites/${s.site}/submissions`, { method: 'POST', headers: { authorization: `Bearer ${keys[s.site]}` }, body: form });
      expect(res.status, `${s.label}: ${await res.clone().text()}`).toBe(202);
      s.id = ((await res.json()) as { id: string }).id;
    };
    const status = async (s: Submission): Promise<{ status: string; counts: Record<string, unknown> }> => {
      const res = await fetch(`${api}/v1/submissions/${s.id}`, { headers: { authorization: `Bearer ${keys[s.site]}` } });
      expect(res.status).toBe(200);
      return (await res.json()) as { status: string; counts: Record<string, unknown> };
    };
    const readyz = async (): Promise<number> => (await fetch(`${api}/readyz`)).status;

    await Promise.all(workers.map((w) => w.ready()));
    expect(await readyz()).toBe(200);
    mark('workers ready');

    // --- Wave 1 and the crash -------------------------------------------------------------------------
    const wave1: Submission[] = [...mappings].map(([site, mapping]) => ({ label: site, site, mapping, inputs: [`examples/${site}`] }));
    for (const s of wave1) await submit(s);
    openGate();
    mark('wave 1 submitted through the API');
    await until(60_000, `POST #${KILL_AT_POST} reaches the server`, () => crash !== undefined);
    await crash;
    for (const w of workers) await w.waitFor((l) => l.event === 'redis-down', 15_000, 'reports Redis down');
    // The API: not ready while Redis is down (its readiness probe times out), but it answers.
    expect(await readyz()).toBe(503);
    const inFlightAtCrash = proxy.stats.forwardedPosts;
    mark(`workers report Redis down; /readyz 503; ${inFlightAtCrash} bundles forwarded so far`);
    await new Promise((resolve) => setTimeout(resolve, CRASH_OUTAGE_MS)); // the outage itself (a fault parameter, not a synchronisation)
    const postsBeforeRestart = proxy.stats.received.POST ?? 0;
    await redis.start();
    const restartedAt = Date.now();
    mark('Redis started again (same port, same append-only file)');
    const reconnected = await Promise.all(workers.map((w) => w.waitFor((l) => l.event === 'redis-reconnected', 30_000, 'reports Redis back')));
    for (const line of reconnected) expect(line.downMs as number).toBeGreaterThanOrEqual(CRASH_OUTAGE_MS);
    // Working again promptly: a new bundle is fetched and sent, and jobs complete.
    await until(30_000, 'a bundle is sent after the restart', () => (proxy.stats.received.POST ?? 0) > postsBeforeRestart, 20);
    const resumedMs = Date.now() - restartedAt;
    const firstDone = await Promise.race(workers.map((w) => w.waitFor((l) => (l.event === 'delivered' || l.event === 'dead-lettered') && Date.parse(l.time as string) >= restartedAt, 30_000, 'completes a job after the restart')));
    const completedMs = Date.parse(firstDone.time as string) - restartedAt;
    expect(resumedMs, 'ms from the restart to the next bundle sent').toBeLessThan(RESUME_MS);
    expect(completedMs, 'ms from the restart to the next job completed').toBeLessThan(RESUME_MS);
    await until(15_000, 'the API is ready again', async () => (await readyz()) === 200);
    mark(`workers reconnected (down ${reconnected.map((l) => l.downMs).join(', ')} ms); next bundle sent ${resumedMs} ms and next job done ${completedMs} ms after the restart; /readyz 200`);
    for (const s of wave1) await until(90_000, `${s.label} finished (API)`, async () => (await status(s)).status === 'finished', 250);
    mark('wave 1 finished');

    // --- Wave 2 and the clean restart ------------------------------------------------------------------
    const scaled = join(dir, 'site-c-x4');
    await writeScaledSiteC(scaled, 4, 'W2');
    postsAtWave2 = proxy.stats.received.POST ?? 0;
    gate = new Promise<void>((resolve) => (openGate = resolve));
    const wave2: Submission = { label: 'site-c x4', site: 'site-c', mapping: mappings.get('site-c')!, inputs: [scaled] };
    await submit(wave2);
    openGate();
    mark('wave 2 submitted through the API (after the crash, same API process)');
    await until(60_000, `POST #${postsAtWave2 + SHUTDOWN_AT_POST} reaches the server`, () => cleanStop !== undefined);
    await cleanStop;
    for (const w of workers) await w.waitFor((l) => l.event === 'redis-down' && w.count('redis-down') >= 2, 15_000, 'reports Redis down again');
    // An export submitted while Redis is down: the API request waits for Redis instead of failing.
    const scaled3 = join(dir, 'site-c-x1');
    await writeScaledSiteC(scaled3, 1, 'W3');
    const wave3: Submission = { label: 'site-c x1 (submitted during the outage)', site: 'site-c', mapping: mappings.get('site-c')!, inputs: [scaled3] };
    let wave3Accepted = false;
    const wave3Submitted = submit(wave3).then(() => (wave3Accepted = true));
    await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS)); // the outage (a fault parameter)
    expect(wave3Accepted, 'a submission cannot be accepted while Redis is down').toBe(false);
    await redis.start();
    mark('Redis shut down cleanly, down for the outage with a submission waiting in the API, started again');
    await within(30_000, 'the submission made during the outage is accepted', wave3Submitted);
    await Promise.all(workers.map((w) => w.waitFor(() => w.count('redis-reconnected') >= 2, 30_000, 'reports Redis back again')));
    for (const s of [wave2, wave3]) await until(120_000, `${s.label} finished (API)`, async () => (await status(s)).status === 'finished', 250);
    mark('waves 2 and 3 finished');

    // --- Accounting -------------------------------------------------------------------------------------
    const all = [...wave1, wave2, wave3];
    const accounts: RecordAccounting[] = [];
    for (const s of all) {
      const expected = await mapExport(s.mapping, s.inputs, { recorded: RECORDED, validator });
      const a = await accountRecords(producer, { submissionId: s.id!, mapping: s.mapping, inputs: s.inputs, bundles: expected.bundles }, DESTINATION);
      accounts.push(a);
      const tooLarge = expected.bundles.filter((b) => b.bundle.entry!.length > MAX_ENTRIES).map((b) => b.subject).sort();
      expect(a.unaccounted, `${s.label}: subjects that ended nowhere`).toEqual([]);
      expect(a.twice, `${s.label}: subjects that ended twice`).toEqual([]);
      expect(a.submitted, `${s.label}: records submitted = delivered + rejected + dead-lettered`).toBe(a.delivered + a.rejected + a.deadLettered);
      expect(a.submitted).toBe(expected.summary.recordsRead);
      expect(a.rejected).toBe(expected.summary.recordsRejected);
      expect(a.counters.recordsRejected).toBe(a.rejected);
      // Exactly the bundles the server refuses for their size are dead-lettered, with its 400.
      expect(a.deliveryDeadLetters.map((l) => l.subject).sort()).toEqual(tooLarge);
      for (const l of a.deliveryDeadLetters) expect(l.status).toBe(400);
      expect(a.subjects.delivered).toBe(expected.bundles.length - tooLarge.length);
      const d = a.counters.destinations[DESTINATION];
      expect(d.delivered).toBe(a.subjects.delivered);
      expect(d.deadLettered).toBe(a.subjects.deadLettered);
      expect(a.counters.mapped).toBe(expected.bundles.length);
      expect(d.deliveryQueued).toBe(expected.bundles.length);
      const api = await status(s);
      expect(api.counts).toMatchObject({ mapped: expected.bundles.length, delivered: a.subjects.delivered });
    }
    // Nothing left over or failed in BullMQ.
    for (const queue of [producer.mappingQueue, producer.deliveryQueue(DESTINATION)]) {
      expect(await queue.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized')).toEqual({ waiting: 0, active: 0, delayed: 0, failed: 0, prioritized: 0 });
    }

    const delivered = accounts.flatMap((a) => [...a.deliveredBundles.values()]);
    const holdings = await serverHoldings(fhir.baseUrl, bundleTypes([...delivered, ...accounts.flatMap((a) => [...a.deadLetteredBundles.values()])]));
    const check = checkIdentifiers(holdings, delivered);
    expect(check.missing, 'identifiers of delivered bundles missing on the server').toEqual([]);
    expect(check.duplicated, 'identifiers held twice').toEqual([]);
    expect(check.extra, 'identifiers held that no delivered bundle has').toEqual([]);
    expect(holdings.untagged).toBe(0);
    expect(holdings.resources).toBe(check.expected);
    expect(apiEvents.map((e) => e.event)).toEqual(['redis-down', 'redis-reconnected', 'redis-down', 'redis-reconnected']);
    // No job lost an attempt to the outages: jobs in flight waited for Redis instead of failing.
    const failedAttempts = workers.flatMap((w) => w.lines.filter((l) => l.event === 'attempt-failed'));
    expect(failedAttempts, 'attempts failed').toEqual([]);

    const sum = (f: (a: RecordAccounting) => number) => accounts.reduce((n, a) => n + f(a), 0);
    await annotate(
      [
        `records submitted ${sum((a) => a.submitted)} = delivered ${sum((a) => a.delivered)} + rejected ${sum((a) => a.rejected)} + dead-lettered ${sum((a) => a.deadLettered)}`,
        `bundles delivered ${delivered.length}, dead-lettered ${sum((a) => a.subjects.deadLettered)}; server: ${holdings.resources} resources = ${check.expected} identifiers, none twice`,
        `bundles POSTed ${proxy.stats.received.POST}, stalled-job recoveries logged by workers: ${workers.reduce((n, w) => n + w.count('stalled'), 0)}`,
        ...timeline,
      ].join('\n'),
    );
  }, 180_000);
});
