/**
 * `npm run soak [-- --minutes 10] [-- --records 100000] [-- --workers 3] [-- --interval 10] [-- --copies N]
 *               [-- --concurrency 4] [-- --drain-minutes M] [-- --redis-url redis://HOST:PORT]`
 *
 * A bounded load run of the queue service: `--workers` `trialbridge worker` processes map, validate and deliver
 * `--records` records (the SDTM sample site scaled: batches of `--copies` copies of examples/site-c, 466 records
 * and 15 subjects a copy, each batch with new subject ids; by default about half an interval's worth of records
 * a batch) submitted at an even pace over `--minutes`, to a
 * minimal FHIR endpoint (a child process of this one). It prints, every `--interval` seconds: records submitted,
 * bundles and resources delivered (per second over the interval), the backlog in the queues, and the resident
 * memory (RSS) of the processes: each worker, this process (the producer: submitExport, as the API does) and
 * Redis; the endpoint's too at the end. It ends with the accounting and a verdict on memory.
 *
 * Bounded: submissions stop at `--minutes` whatever was submitted; the run then waits for the backlog at most
 * `--drain-minutes` (default a quarter of `--minutes`, at least 1) and stops. A batch is only submitted while the
 * backlog is under three batches, so a slow machine lowers the pace rather than piling jobs up in Redis.
 *
 * Redis: its own redis-server on a free port (appendonly yes, data in a temp dir) unless `--redis-url` is given,
 * in which case the run uses its own key prefix there and removes it at the end.
 *
 * The endpoint: answers each transaction with one `201 Created` (new business identifier) or `200 OK` (known
 * one) per entry, and keeps one record per business identifier (the entry's conditional-update URL), so it holds
 * exactly one resource per identifier by construction; what it checks is the traffic: bundles received against
 * bundles delivered (a bundle sent twice shows up), creates against updates (only the trial's ResearchStudy,
 * shared by every bundle, may be updated in a run without faults), and which subjects' bundles arrived (their
 * Patient identifier), for the accounting.
 *
 * Accounting: records submitted = delivered + rejected + dead-lettered, where rejected are the records with a
 * read or map dead letter, delivered the other records of subjects whose bundle reached the endpoint, and
 * dead-lettered the other records of subjects whose delivery was dead-lettered; every subject must be in exactly
 * one of these ends (or have had every record rejected), and the submission counters must agree.
 *
 * Memory is "flat" for a process when its mean RSS over the last third of the samples is within 10 % of its mean
 * over the first third (the lowest samples are printed too, and every sample is in the results file). RSS
 * climbs between major garbage collections and drops after them, by 100 MB and more in a worker: the verdict
 * means something after several minutes (the default 10), not after one or two. Redis grows by design:
 * completed jobs (without their records or bundles) are kept 24 h to deduplicate
 * re-submissions (README: "Faults and soak").
 *
 * Results: stdout and bench/results/soak.json.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { loadDestinations } from '../src/delivery/destinations.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { readSourceRecords } from '../src/mapping/records.ts';
import { QueuePipeline, type QueueConnection } from '../src/queue/pipeline.ts';
import { subjectEnds } from '../test/support/accounting.ts';
import { RedisProcess } from '../test/support/redis-process.ts';
import { writeScaledSiteC } from '../test/support/scaled-export.ts';
import { TRANSACTION_CAPABILITY } from './transaction-capability.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const SITE = 'site-c';
const MAPPING = join(ROOT, 'mappings/site-c.yaml');
const DESTINATION = 'endpoint';
const PATIENT_SYSTEM = 'urn:trialbridge:ldccrt-hcc-p2:site-c:patient';
const RESEARCH_STUDY = 'ResearchStudy|urn:trialbridge:ldccrt-hcc-p2:research-study';

const { values: flags } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    records: { type: 'string', default: '100000' },
    workers: { type: 'string', default: '3' },
    interval: { type: 'string', default: '10' },
    copies: { type: 'string', default: 'auto' },
    concurrency: { type: 'string', default: '4' },
    'drain-minutes': { type: 'string' },
    'redis-url': { type: 'string' },
  },
  allowPositionals: false,
});

function positive(name: string, value: string | undefined): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number (got '${value}')`);
  return n;
}

const MINUTES = positive('minutes', flags.minutes);
const RECORDS = Math.round(positive('records', flags.records));
const WORKERS = Math.round(positive('workers', flags.workers));
const INTERVAL_MS = positive('interval', flags.interval) * 1000;
/** Records in one copy of examples/site-c (its planted bad rows included). */
const RECORDS_PER_COPY = 466;
const SUBJECTS_PER_COPY = 15;
/** Batch size: given, or about half an interval's worth of records at the pace asked (1 to 20 copies). */
const COPIES =
  flags.copies === 'auto'
    ? Math.max(1, Math.min(20, Math.round(((RECORDS / (MINUTES * 60)) * (INTERVAL_MS / 1000)) / 2 / RECORDS_PER_COPY)))
    : Math.round(positive('copies', flags.copies));
const CONCURRENCY = Math.round(positive('concurrency', flags.concurrency));
const DRAIN_MINUTES = flags['drain-minutes'] ? positive('drain-minutes', flags['drain-minutes']) : Math.max(1, MINUTES / 4);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const mb = (bytes: number) => bytes / (1024 * 1024);
const fmt = (n: number, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

// ---- the endpoint (a child process: its memory is the FHIR server's, not trialbridge's) -----------------

interface EndpointStats {
  bundles: number;
  entries: number;
  creates: number;
  updates: number;
  /** Distinct business identifiers held. */
  resources: number;
  /** Versions of the shared ResearchStudy. */
  researchStudyVersions: number;
  /** Subjects whose bundle arrived (their Patient identifier value); only in the final report. */
  subjects?: string[];
}

/** Runs the endpoint (in the child): listens, sends its port, answers 'stats' / 'final' with EndpointStats. */
async function runEndpoint(): Promise<void> {
  const stats = { bundles: 0, entries: 0, creates: 0, updates: 0 };
  /** Business identifier (`Type|system|value`) → versions written. */
  const resources = new Map<string, number>();
  const subjects = new Set<string>();
  let nextId = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'GET' && req.url?.endsWith('/metadata')) {
        res.writeHead(200, { 'content-type': 'application/fhir+json' }).end(TRANSACTION_CAPABILITY);
        return;
      }
      let bundle: { resourceType?: string; type?: string; entry?: { request?: { url?: string }; resource?: { resourceType?: string } }[] };
      try {
        bundle = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof bundle;
      } catch {
        bundle = {};
      }
      if (req.method !== 'POST' || bundle.resourceType !== 'Bundle' || bundle.type !== 'transaction') {
        res.writeHead(400, { 'content-type': 'application/fhir+json' }).end('{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"transactions only"}]}');
        return;
      }
      stats.bundles++;
      const answers = (bundle.entry ?? []).map((e) => {
        const match = /^([A-Za-z]+)\?(?:identifier|_tag)=([^|]+)\|(.+)$/.exec(e.request?.url ?? '');
        const type = e.resource?.resourceType ?? 'Resource';
        const key = match ? `${match[1]}|${decodeURIComponent(match[2])}|${decodeURIComponent(match[3])}` : `${type}|?|${++nextId}`;
        if (match && match[1] === 'Patient' && decodeURIComponent(match[2]) === PATIENT_SYSTEM) subjects.add(decodeURIComponent(match[3]));
        const versions = (resources.get(key) ?? 0) + 1;
        resources.set(key, versions);
        stats.entries++;
        if (versions === 1) stats.creates++;
        else stats.updates++;
        return { response: { status: versions === 1 ? '201 Created' : '200 OK', location: `${type}/${encodeURIComponent(key.split('|').pop()!)}/_history/${versions}` } };
      });
      res.writeHead(200, { 'content-type': 'application/fhir+json' }).end(JSON.stringify({ resourceType: 'Bundle', type: 'transaction-response', entry: answers }));
    });
  });
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  process.send?.({ port: (server.address() as AddressInfo).port });
  process.on('message', (command) => {
    const researchStudy = [...resources].find(([k]) => k.startsWith(RESEARCH_STUDY));
    const out: EndpointStats = { ...stats, resources: resources.size, researchStudyVersions: researchStudy?.[1] ?? 0, ...(command === 'final' ? { subjects: [...subjects] } : {}) };
    process.send?.(out);
  });
  // The parent gone, nothing is left to serve.
  process.on('disconnect', () => process.exit(0));
}

interface Endpoint {
  readonly baseUrl: string;
  readonly pid: number;
  stats(final?: boolean): Promise<EndpointStats>;
  close(): Promise<void>;
}

async function startEndpoint(): Promise<Endpoint> {
  const child = fork(new URL(import.meta.url).pathname, [], { env: { ...process.env, TB_SOAK_ROLE: 'endpoint' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const [first] = (await once(child, 'message')) as [{ port: number }];
  let queue: Promise<unknown> = Promise.resolve();
  const ask = (command: string) => {
    const next = queue.then(async () => {
      child.send(command);
      const [reply] = (await once(child, 'message')) as [EndpointStats];
      return reply;
    });
    queue = next.catch(() => undefined);
    return next;
  };
  return {
    baseUrl: `http://127.0.0.1:${first.port}/fhir/R4`,
    pid: child.pid!,
    stats: (final = false) => ask(final ? 'final' : 'stats'),
    close: async () => {
      child.kill('SIGTERM');
      if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    },
  };
}

// ---- worker processes ------------------------------------------------------------------------------------

interface Worker {
  readonly name: string;
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly events: Record<string, number>;
  readonly stderr: string[];
  readonly exited: Promise<void>;
}

function startWorker(i: number, config: string, prefix: string, redisUrl: string): Worker {
  const child = spawn(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'worker', '--destinations', config, '--prefix', prefix, '--mapping', MAPPING], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: redisUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const events: Record<string, number> = {};
  const stderr: string[] = [];
  let onReady!: () => void;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let event: string | undefined;
    try {
      event = (JSON.parse(text) as { event?: string }).event;
    } catch {
      return;
    }
    if (!event) return;
    events[event] = (events[event] ?? 0) + 1;
    if (event === 'ready') onReady();
  });
  createInterface({ input: child.stderr! }).on('line', (text) => {
    stderr.push(text);
    if (stderr.length > 50) stderr.shift();
  });
  const exited = once(child, 'exit').then(() => undefined);
  return { name: `worker ${i}`, child, ready, events, stderr, exited };
}

// ---- memory ----------------------------------------------------------------------------------------------

/** VmRSS and VmHWM (peak RSS) of a process from /proc, in bytes (undefined when unavailable). */
async function procMemory(pid: number): Promise<{ rss: number; peak: number } | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    const rss = kb('VmRSS');
    const peak = kb('VmHWM');
    return Number.isFinite(rss) ? { rss, peak: Number.isFinite(peak) ? peak : rss } : undefined;
  } catch {
    return undefined;
  }
}

interface Series {
  readonly name: string;
  readonly samples: { t: number; rss: number }[];
  peak: number;
}

/**
 * RSS of the first and last thirds of the samples: their means, and their lows (the lowest sample, about the
 * heap just after a major GC). Flat: the last third's mean within 10 % of the first third's.
 */
function verdict(s: Series): { first: number; last: number; firstFloor: number; lastFloor: number; growth: number; flat: boolean } {
  const n = s.samples.length;
  const third = Math.max(1, Math.floor(n / 3));
  const head = s.samples.slice(0, third);
  const tail = s.samples.slice(n - third);
  const mean = (xs: { rss: number }[]) => xs.reduce((a, b) => a + b.rss, 0) / Math.max(1, xs.length);
  const floor = (xs: { rss: number }[]) => Math.min(...xs.map((x) => x.rss));
  const firstFloor = floor(head);
  const lastFloor = floor(tail);
  const first = mean(head);
  const last = mean(tail);
  const growth = first > 0 ? (last - first) / first : 0;
  return { first, last, firstFloor, lastFloor, growth, flat: growth <= 0.1 };
}

// ---- main ------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const work = await mkdtemp(join(tmpdir(), 'trialbridge-soak-'));
  const prefix = `tb-soak-${randomUUID().slice(0, 8)}`;
  const recordsPerSecond = RECORDS / (MINUTES * 60);
  console.log(`soak: ${fmt(RECORDS)} records over ${MINUTES} min (${fmt(recordsPerSecond, 1)} records/s), ${WORKERS} worker processes, batches of ${COPIES} site-c copies`);
  console.log(`machine: ${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), node ${process.version}`);

  let redis: RedisProcess | undefined;
  let connection: QueueConnection;
  let redisUrl: string;
  if (flags['redis-url']) {
    const u = new URL(flags['redis-url']);
    connection = { host: u.hostname, port: Number(u.port || 6379) };
    redisUrl = flags['redis-url'];
  } else {
    redis = await RedisProcess.start({ dir: join(work, 'redis') });
    connection = redis.connection;
    redisUrl = redis.url;
  }
  const endpoint = await startEndpoint();
  const config = join(work, 'destinations.yaml');
  await writeFile(
    config,
    [
      'destinations:',
      `  - name: ${DESTINATION}`,
      '    kind: hospital',
      `    baseUrl: ${endpoint.baseUrl}`,
      `    sites: [${SITE}]`,
      '    transactions: true',
      `    concurrency: ${CONCURRENCY}`,
      '    retry: { attempts: 10, requestAttempts: 3, baseMs: 200, maxMs: 5000 }',
      '    auth: { type: none }',
    ].join('\n') + '\n',
  );
  const mapping = await compileMapping(await loadMapping(MAPPING));
  const producer = new QueuePipeline({ connection, prefix, mappings: [mapping], destinations: await loadDestinations(config), validator: null });
  const info = new Redis({ ...connection, maxRetriesPerRequest: null });
  const workers = Array.from({ length: WORKERS }, (_, i) => startWorker(i + 1, config, prefix, redisUrl));
  const stopWorkers = async () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGTERM');
    const all = Promise.all(workers.map((w) => w.exited));
    if ((await Promise.race([all.then(() => true), sleep(30_000).then(() => false)])) === false) {
      for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGKILL');
      await all;
    }
  };

  let exitCode = 0;
  try {
    const startedWorkers = Date.now();
    await Promise.race([
      Promise.all(workers.map((w) => w.ready)),
      sleep(120_000).then(() => Promise.reject(new Error('workers not ready after 120 s'))),
      ...workers.map((w) => w.exited.then(() => Promise.reject(new Error(`${w.name} exited at start:\n${w.stderr.join('\n')}`)))),
    ]);
    console.log(`${WORKERS} workers ready in ${((Date.now() - startedWorkers) / 1000).toFixed(1)} s; pids ${workers.map((w) => w.child.pid).join(', ')}`);

    // Per subject: records, for the accounting. Submissions, for the counters.
    const subjects = new Map<string, number>();
    let unassigned = 0;
    const submissions: string[] = [];
    let submittedRecords = 0;
    let batch = 0;
    const memory = new Map<string, Series>();
    const series = (name: string): Series => {
      let s = memory.get(name);
      if (!s) memory.set(name, (s = { name, samples: [], peak: 0 }));
      return s;
    };
    const intervals: Record<string, number | string>[] = [];

    const totals = async () => {
      let delivered = 0;
      let deadLettered = 0;
      let finished = 0;
      for (const id of submissions) {
        const c = await producer.submission(id);
        const d = c.destinations[DESTINATION] ?? { delivered: 0, deadLettered: 0, deliveryQueued: 0 };
        delivered += d.delivered;
        deadLettered += d.deadLettered;
        const mappingDone = c.subjects > 0 && c.mapped + c.subjectsRejected + c.mappingFailed === c.queued;
        if (mappingDone && d.delivered + d.deadLettered === d.deliveryQueued) finished++;
      }
      return { delivered, deadLettered, finished };
    };
    const backlog = async () => {
      const counts = await Promise.all(
        [producer.mappingQueue, producer.deliveryQueue(DESTINATION)].map((q) => q.getJobCounts('waiting', 'active', 'delayed', 'prioritized')),
      );
      return counts.map((c) => Object.values(c).reduce((a, b) => a + b, 0));
    };

    const started = Date.now();
    const submitUntil = started + MINUTES * 60_000;
    const hardStop = submitUntil + DRAIN_MINUTES * 60_000;
    let nextSample = started + INTERVAL_MS;
    let last = { t: started, delivered: 0, entries: 0, submitted: 0 };
    let recordsPerBatch = 0;
    console.log('');
    console.log('  time   submitted   bundles/s  resources/s  backlog map/dlv   RSS MB: ' + [...workers.map((w) => w.name.replace('worker ', 'w')), 'main', 'redis'].join(' / '));

    const sample = async (final = false) => {
      const now = Date.now();
      const t = await totals();
      const served = await endpoint.stats();
      const [mapBacklog, deliveryBacklog] = await backlog();
      const rss: string[] = [];
      for (const w of workers) {
        const m = w.child.pid !== undefined ? await procMemory(w.child.pid) : undefined;
        if (m) {
          const s = series(w.name);
          s.samples.push({ t: now, rss: m.rss });
          s.peak = Math.max(s.peak, m.peak);
        }
        rss.push(m ? fmt(mb(m.rss)) : '-');
      }
      const self = (await procMemory(process.pid)) ?? { rss: process.memoryUsage().rss, peak: process.memoryUsage().rss };
      const main = series('main (producer)');
      main.samples.push({ t: now, rss: self.rss });
      main.peak = Math.max(main.peak, self.peak);
      rss.push(fmt(mb(self.rss)));
      const fhir = await procMemory(endpoint.pid);
      if (fhir) {
        const es = series('endpoint (the FHIR server)');
        es.samples.push({ t: now, rss: fhir.rss });
        es.peak = Math.max(es.peak, fhir.peak);
      }
      const redisMemory = Number(/used_memory:(\d+)/.exec(await info.info('memory'))?.[1] ?? NaN);
      const redisProc = redis?.pid !== undefined ? await procMemory(redis.pid) : undefined;
      const redisRss = redisProc?.rss ?? redisMemory;
      const rs = series('redis');
      rs.samples.push({ t: now, rss: redisRss });
      rs.peak = Math.max(rs.peak, redisProc?.peak ?? redisRss);
      rss.push(fmt(mb(redisRss)));
      const seconds = Math.max(0.001, (now - last.t) / 1000);
      const row = {
        t: Math.round((now - started) / 1000),
        submittedRecords,
        deliveredBundles: t.delivered,
        bundlesPerSecond: (t.delivered - last.delivered) / seconds,
        resourcesPerSecond: (served.entries - last.entries) / seconds,
        mapBacklog,
        deliveryBacklog,
        redisUsedMemoryMB: mb(redisMemory),
        rss: rss.join(' / '),
      };
      intervals.push(row);
      console.log(
        `${String(row.t).padStart(5)} s ${fmt(submittedRecords).padStart(11)} ${fmt(row.bundlesPerSecond, 1).padStart(11)} ${fmt(row.resourcesPerSecond).padStart(12)} ${`${mapBacklog}/${deliveryBacklog}`.padStart(16)}   ${row.rss}${final ? '  (end)' : ''}`,
      );
      last = { t: now, delivered: t.delivered, entries: served.entries, submitted: submittedRecords };
      return t;
    };

    for (;;) {
      const now = Date.now();
      const dueRecords = Math.min(RECORDS, recordsPerSecond * ((now - started) / 1000 + 1));
      const [mapBacklog, deliveryBacklog] = now < submitUntil && submittedRecords < RECORDS && submittedRecords < dueRecords ? await backlog() : [0, 0];
      const batchSubjects = COPIES * SUBJECTS_PER_COPY;
      if (now < submitUntil && submittedRecords < RECORDS && submittedRecords < dueRecords && mapBacklog + deliveryBacklog < 3 * batchSubjects) {
        batch++;
        const dir = join(work, `batch-${batch}`);
        const copies = recordsPerBatch > 0 ? Math.max(1, Math.min(COPIES, Math.ceil(((RECORDS - submittedRecords) / recordsPerBatch) * COPIES))) : COPIES;
        await writeScaledSiteC(dir, copies, `B${batch}`);
        const { records } = await readSourceRecords(mapping, [dir]);
        for (const r of records) {
          if (r.subject && mapping.consumedTypes.has(r.type)) subjects.set(r.subject, (subjects.get(r.subject) ?? 0) + 1);
          else unassigned++;
        }
        const result = await producer.submitExport(SITE, [dir], { recorded: '2019-01-01T00:00:00Z' });
        submissions.push(result.submissionId);
        submittedRecords += records.length;
        if (copies === COPIES) recordsPerBatch = records.length;
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      if (now >= nextSample) {
        const t = await sample();
        nextSample += INTERVAL_MS;
        const allSubmitted = submittedRecords >= RECORDS || now >= submitUntil;
        if (allSubmitted && t.finished === submissions.length) break;
      }
      if (Date.now() >= hardStop) {
        console.log(`stopped at the time limit (${MINUTES} min + ${DRAIN_MINUTES} min drain) with work left in the queues`);
        exitCode = 1;
        break;
      }
      await sleep(Math.max(10, Math.min(nextSample - Date.now(), 200)));
    }
    const end = await sample(true);
    const elapsed = (Date.now() - started) / 1000;
    const served = await endpoint.stats(true);
    const arrived = new Set(served.subjects ?? []);

    // ---- accounting ----
    let rejected = 0;
    const rejectedOf = new Map<string, number>();
    const deadLettered = new Set<string>();
    const mappingFailed = new Set<string>();
    let countersRejected = 0;
    for (const id of submissions) {
      const c = await producer.submission(id);
      countersRejected += c.recordsRejected;
      const rows = new Set<string>();
      for (const l of await producer.deadLetters.list(id)) {
        if (l.stage === 'deliver') deadLettered.add(l.subject!);
        else if (l.location) {
          const row = `${l.location.file}#${l.location.row}`;
          if (rows.has(row)) continue;
          rows.add(row);
          if (l.subject) rejectedOf.set(l.subject, (rejectedOf.get(l.subject) ?? 0) + 1);
        } else if (l.subject) mappingFailed.add(l.subject);
      }
      rejected += rows.size;
    }
    const {
      delivered: deliveredRecords,
      deadLettered: deadLetteredRecords,
      allRejected,
      unaccounted,
      twice,
    } = subjectEnds(subjects, rejectedOf, { delivered: arrived, deadLettered, mappingFailed });
    const resent = served.bundles - end.delivered;
    const balanced = submittedRecords === deliveredRecords + rejected + deadLetteredRecords;
    const accountingOk =
      balanced &&
      unaccounted.length === 0 &&
      twice.length === 0 &&
      countersRejected === rejected &&
      end.delivered === arrived.size &&
      end.finished === submissions.length;

    console.log('');
    console.log(`run: ${elapsed.toFixed(0)} s, ${batch} batches, ${fmt(submittedRecords)} records, ${fmt(subjects.size)} subjects`);
    console.log(
      `throughput: ${fmt(submittedRecords / elapsed, 0)} records/s, ${fmt(end.delivered / elapsed, 1)} bundles/s, ${fmt(served.entries / elapsed, 0)} resources/s over the whole run (paced: ${fmt(recordsPerSecond, 0)} records/s asked)`,
    );
    console.log(
      `accounting: submitted ${fmt(submittedRecords)} = delivered ${fmt(deliveredRecords)} + rejected ${fmt(rejected)} + dead-lettered ${fmt(deadLetteredRecords)}: ${balanced ? 'balanced' : 'NOT BALANCED'}` +
        ` (unassigned records ${unassigned}, subjects: delivered ${arrived.size}, dead-lettered ${deadLettered.size}, mapping failed ${mappingFailed.size}, all records rejected ${allRejected}, unaccounted ${unaccounted.length}, twice ${twice.length}; counters: delivered ${end.delivered}, recordsRejected ${countersRejected})`,
    );
    console.log(
      `endpoint: ${fmt(served.bundles)} bundles received for ${fmt(end.delivered)} delivered (${resent} sent again), ${fmt(served.resources)} resources (one per business identifier), ${fmt(served.creates)} creates, ${fmt(served.updates)} updates (${fmt(served.researchStudyVersions - 1)} of them the shared ResearchStudy)`,
    );
    console.log('memory (RSS: peak, mean and lowest sample of the first and last thirds of the run; flat = mean of the last third within 10 % of the first):');
    const memorySummary: Record<string, unknown> = {};
    let allFlat = true;
    for (const s of memory.values()) {
      const v = verdict(s);
      // Redis and the endpoint hold the data by design (retained jobs; one record per identifier).
      const isRedis = s.name === 'redis';
      const holdsData = isRedis || s.name.startsWith('endpoint');
      if (!holdsData) allFlat &&= v.flat;
      memorySummary[s.name] = {
        peakMB: mb(s.peak),
        firstThird: { meanMB: mb(v.first), lowestMB: mb(v.firstFloor) },
        lastThird: { meanMB: mb(v.last), lowestMB: mb(v.lastFloor) },
        growth: v.growth,
        flat: v.flat,
        samples: s.samples.map((x) => [Math.round((x.t - started) / 1000), Math.round(mb(x.rss))]),
      };
      console.log(
        `  ${s.name.padEnd(28)} peak ${fmt(mb(s.peak)).padStart(5)} MB   first third ${fmt(mb(v.first)).padStart(5)} (lowest ${fmt(mb(v.firstFloor)).padStart(5)}) MB   last third ${fmt(mb(v.last)).padStart(5)} (lowest ${fmt(mb(v.lastFloor)).padStart(5)}) MB   ${v.growth >= 0 ? '+' : ''}${fmt(v.growth * 100, 1)} %  ${v.flat ? 'flat' : isRedis ? 'grows (completed jobs are kept 24 h)' : holdsData ? 'grows (holds every resource)' : 'GROWING'}`,
      );
    }
    const failedAttempts = workers.reduce((n, w) => n + (w.events['attempt-failed'] ?? 0), 0);
    console.log(`worker events: ${JSON.stringify(workers.map((w) => w.events))}`);
    if (!accountingOk) exitCode = 1;
    if (!allFlat) console.log('memory of a trialbridge process grew by more than 10 % between the first and last thirds of the run');

    await mkdir(join(ROOT, 'bench/results'), { recursive: true });
    await writeFile(
      join(ROOT, 'bench/results/soak.json'),
      JSON.stringify(
        {
          date: new Date().toISOString(),
          machine: { cores: availableParallelism(), cpu: cpus()[0]?.model, node: process.version },
          settings: { minutes: MINUTES, records: RECORDS, workers: WORKERS, copies: COPIES, concurrency: CONCURRENCY, intervalSeconds: INTERVAL_MS / 1000 },
          elapsedSeconds: elapsed,
          throughput: { recordsPerSecond: submittedRecords / elapsed, bundlesPerSecond: end.delivered / elapsed, resourcesPerSecond: served.entries / elapsed },
          accounting: { submitted: submittedRecords, delivered: deliveredRecords, rejected, deadLettered: deadLetteredRecords, balanced, unaccounted: unaccounted.length, twice: twice.length, ok: accountingOk },
          endpoint: { bundles: served.bundles, resources: served.resources, creates: served.creates, updates: served.updates, resent },
          failedAttempts,
          memory: memorySummary,
          intervals,
        },
        null,
        2,
      ) + '\n',
    );
    console.log('results: bench/results/soak.json');
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    for (const w of workers) if (w.stderr.length > 0) console.error(`${w.name} stderr:\n${w.stderr.slice(-10).join('\n')}`);
    exitCode = 1;
  } finally {
    await stopWorkers();
    if (!redis) await producer.obliterate().catch(() => undefined);
    await producer.close().catch(() => undefined);
    info.disconnect();
    await endpoint.close();
    await redis?.stop();
    await rm(work, { recursive: true, force: true });
  }
  return exitCode;
}

if (process.env.TB_SOAK_ROLE === 'endpoint') await runEndpoint();
else process.exitCode = await main();
