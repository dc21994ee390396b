/**
 * `node bench/pipeline.bench.ts [--copies N] [--rounds N] [--quick] [--workers N] [--batch N] [--mapping-concurrency N] [--only A|B]`:
 * end-to-end records/s of the service, from submission to acknowledged delivery, through BullMQ (real Redis at
 * REDIS_URL or 127.0.0.1:6379) to a minimal FHIR endpoint that accepts transactions, beside the same work done
 * in process without a queue, in one run.
 *
 * Data: site A's export replicated `copies` times with new subject ids (`A001-R0001`, ...) and row ids, written to
 * a temp dir (default 40 copies: 720 subjects, ~16,000 records).
 * Modes, interleaved per round, medians of `rounds` (default 5) after one warm-up round:
 *   in process, no queue, no HTTP   read + map + validate + one transaction bundle per subject + JSON text of each
 *   in process, HTTP                the pipeline stages without a queue (runInProcess), delivering to the endpoint
 *   BullMQ, HTTP                    QueuePipeline: submitExport → mapping jobs → delivery jobs → the endpoint;
 *                                   workers in this process; timed until every delivery job has completed
 *   BullMQ, HTTP, N worker processes  the same with `trialbridge worker` processes (started once, before the
 *                                   warm-up, and kept: deployed workers are long-lived and warm)
 * The destination takes up to `--batch` (default 8) subjects per transaction (subjectsPerTransaction).
 * The goal of the service issue: queue and HTTP cost at most half, i.e. BullMQ / (no queue, no HTTP) >= 0.5,
 * judged on the service as deployed (the worker processes); the mode with the workers in the bench process and
 * the CPU ratio are printed beside it.
 * Beside wall-clock records/s, each mode's CPU time is summed over every process taking part (this one, the
 * endpoint, Redis, the worker processes): CPU per record is what the queue and HTTP cost whatever the number of
 * cores, and is steadier than wall time on a shared machine.
 *
 * The endpoint is a separate process (bench/minimal-fhir-endpoint.ts) answering each transaction with one
 * `201 Created` per entry: a stand-in for a fast FHIR server, so that the server's cost is not measured. It counts
 * the distinct resources it was sent, checked against the mapped resources after every round of a mode with HTTP.
 * Results: a table on stdout and bench/results/pipeline.json.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { defaultValidator, validationCheck } from '../src/bundle/map-export.ts';
import { subjectBundle } from '../src/bundle/transaction.ts';
import { destinationWithDefaults, type Destination } from '../src/delivery/destinations.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { mapRecords } from '../src/mapping/engine.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { readSourceRecords } from '../src/mapping/records.ts';
import { runInProcess } from '../src/queue/in-process.ts';
import { Redis } from 'ioredis';
import { QueuePipeline, type QueueConnection } from '../src/queue/pipeline.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const QUICK = args.includes('--quick');
const COPIES = flag('--copies', QUICK ? 10 : 40);
const ROUNDS = flag('--rounds', QUICK ? 1 : 5);
/** Worker processes of the multi-process BullMQ mode. */
const WORKER_PROCESSES = flag('--workers', 2);
/** Mapping jobs a worker runs at once (`trialbridge worker -c`). */
const MAPPING_CONCURRENCY = flag('--mapping-concurrency', 2);
const RECORDED = '2025-01-01T00:00:00Z';
const SITE = 'site-a';

function redisFromEnv(): QueueConnection {
  const u = new URL(process.env.REDIS_URL || 'redis://127.0.0.1:6379');
  return { host: u.hostname, port: Number(u.port || 6379) };
}

/** Site A's export, `copies` times, each copy with its own subject and row ids. */
async function writeScaledExport(dir: string, copies: number): Promise<void> {
  const text = await readFile(join(ROOT, 'examples/site-a/export.csv'), 'utf8');
  const rows = parse(text, { columns: true, skip_empty_lines: true }) as Record<string, string>[];
  const header = Object.keys(rows[0]);
  const out: string[][] = [];
  for (let c = 1; c <= copies; c++) {
    const suffix = `-R${String(c).padStart(4, '0')}`;
    for (const row of rows) {
      out.push(header.map((h) => (h === 'subject_id' && row[h] ? row[h] + suffix : h === 'row_id' ? row[h] + suffix : row[h])));
    }
  }
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'export.csv'), stringify(out, { header: true, columns: header }));
}

interface EndpointStats {
  readonly entries: number;
  /** Distinct resources written (by conditional URL). */
  readonly resources: number;
  /** The endpoint process's CPU time so far. */
  readonly cpuMs: number;
}

interface Endpoint {
  readonly baseUrl: string;
  readonly pid: number;
  stats(): Promise<EndpointStats>;
  reset(): Promise<void>;
  close(): Promise<void>;
}

async function startEndpoint(): Promise<Endpoint> {
  const child: ChildProcess = fork(join(ROOT, 'bench/minimal-fhir-endpoint.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const [ready] = (await once(child, 'message')) as [{ port: number }];
  const ask = async (command: string): Promise<EndpointStats> => {
    child.send(command);
    const [reply] = (await once(child, 'message')) as [EndpointStats];
    return reply;
  };
  return {
    baseUrl: `http://127.0.0.1:${ready.port}/fhir`,
    pid: child.pid!,
    stats: () => ask('entries'),
    reset: async () => void (await ask('reset')),
    close: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

/** Subjects per transaction (the destination's subjectsPerTransaction); `--batch 1` sends one subject per transaction. */
const BATCH = flag('--batch', 8);

function destination(baseUrl: string): Destination {
  return destinationWithDefaults({ name: 'bench', kind: 'hospital', baseUrl, maxEntries: 1000, atomic: true, transactions: true, concurrency: 8, subjectsPerTransaction: BATCH });
}

/** CPU time (user + system) of a process by pid, from /proc (Linux), in ms. */
async function processCpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the command name, in clock ticks.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}
const CLOCK_TICKS = 100;

/** Redis's own CPU time so far (INFO cpu), in ms. */
async function redisCpuMs(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const value = (name: string) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? 0);
  return (value('used_cpu_user') + value('used_cpu_sys')) * 1000;
}

/** `trialbridge worker` processes on a prefix; resolves once each has logged `ready` (start-up is not timed). */
async function startWorkers(count: number, destinationsFile: string, prefix: string): Promise<ChildProcess[]> {
  const children: ChildProcess[] = [];
  await Promise.all(
    Array.from({ length: count }, async () => {
      const child = spawn(process.execPath, [...process.execArgv, join(ROOT, 'src/cli/main.ts'), 'worker', '-d', destinationsFile, '-m', join(ROOT, 'mappings/site-a.yaml'), '--prefix', prefix, '-c', String(MAPPING_CONCURRENCY)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      children.push(child);
      const lines = createInterface({ input: child.stdout! });
      await new Promise<void>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`worker exited with ${code} before it was ready`)));
        lines.on('line', (line) => {
          if (line.includes('"event":"ready"')) resolve();
        });
      });
    }),
  );
  return children;
}

async function stopWorkers(children: readonly ChildProcess[]): Promise<void> {
  await Promise.all(
    children.map(async (child) => {
      if (child.exitCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    }),
  );
}

const median = (values: number[]): number => {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'tb-bench-pipeline-'));
  const endpoint = await startEndpoint();
  const connection = redisFromEnv();
  const redis = new Redis({ ...connection, maxRetriesPerRequest: 1 });
  const cleanups: (() => Promise<void>)[] = [];
  try {
    const input = join(dir, SITE);
    await writeScaledExport(input, COPIES);
    const mapping = await compileMapping(await loadMapping(join(ROOT, 'mappings/site-a.yaml')));
    const validator = await defaultValidator();
    const { records } = await readSourceRecords(mapping, [input]);
    const recordCount = records.length;
    const check = validationCheck(validator);
    const bundles = mapRecords(mapping, records, check).subjects.map((s) => subjectBundle(mapping, s, { recorded: RECORDED }));
    const expectedEntries = bundles.reduce((n, b) => n + b.entry!.length, 0);
    // What the endpoint must hold after a run: every conditional URL once (subjects share the ResearchStudy).
    const expectedResources = new Set(bundles.flatMap((b) => b.entry!.map((e) => e.request!.url))).size;
    console.log(
      `pipeline bench: ${COPIES} copies of site A = ${recordCount} records, ${bundles.length} subjects, ${expectedEntries} bundle entries (${expectedResources} distinct resources); ` +
        `up to ${BATCH} subjects per transaction; ${ROUNDS} timed rounds after 1 warm-up`,
    );
    const config = { mappings: [mapping], destinations: [destination(endpoint.baseUrl)], validator };
    const destinationsFile = join(dir, 'destinations.yaml');
    await writeFile(
      destinationsFile,
      [
        'destinations:',
        '  - name: bench',
        '    kind: hospital',
        `    baseUrl: ${endpoint.baseUrl}`,
        '    sites: "*"',
        '    maxEntries: 1000',
        `    subjectsPerTransaction: ${BATCH}`,
        '    atomic: true',
        '    transactions: true',
        '    concurrency: 8',
        '    auth: { type: none }',
      ].join('\n') + '\n',
    );
    const expectDelivered = async (mode: string) => {
      const got = await endpoint.stats();
      if (got.resources !== expectedResources) throw new Error(`${mode}: the endpoint got ${got.resources} distinct resources, expected ${expectedResources}`);
    };

    // Worker processes live through every round (as deployed workers do), so that they are warm like the bench
    // process; each round submits to an emptied queue.
    const processesPrefix = `tb-bench-${randomUUID()}`;
    let workers: ChildProcess[] = [];
    if (WORKER_PROCESSES > 0) {
      workers = await startWorkers(WORKER_PROCESSES, destinationsFile, processesPrefix);
      cleanups.push(() => stopWorkers(workers));
    }

    const modes: Record<string, () => Promise<void>> = {
      'in process, no queue, no HTTP': async () => {
        const { records: read } = await readSourceRecords(mapping, [input]);
        let bytes = 0;
        for (const subject of mapRecords(mapping, read, check).subjects) bytes += JSON.stringify(subjectBundle(mapping, subject, { recorded: RECORDED })).length;
        if (bytes === 0) throw new Error('nothing mapped');
      },
      'in process, HTTP': async () => {
        const result = await runInProcess({ ...config, exports: [{ site: SITE, inputs: [input] }], recorded: RECORDED });
        if (result.submission.destinations.bench?.deadLettered) throw new Error('dead letters in process');
        await expectDelivered('in process');
      },
      'BullMQ, HTTP': async () => {
        const pipeline = new QueuePipeline({ ...config, connection, prefix: `tb-bench-${randomUUID()}`, workers: { mappingConcurrency: MAPPING_CONCURRENCY } });
        try {
          pipeline.startWorkers();
          const submitted = await pipeline.submitExport(SITE, [input], { recorded: RECORDED });
          await pipeline.waitForSubmission(submitted);
          await expectDelivered('BullMQ');
        } finally {
          await pipeline.closeWorkers();
          await pipeline.obliterate();
          await pipeline.close();
        }
      },
      [`BullMQ, HTTP, ${WORKER_PROCESSES} worker processes`]: async () => {
        const pipeline = new QueuePipeline({ ...config, connection, prefix: processesPrefix });
        try {
          const submitted = await pipeline.submitExport(SITE, [input], { recorded: RECORDED });
          await pipeline.waitForSubmission(submitted);
          await expectDelivered('BullMQ (processes)');
        } finally {
          await pipeline.obliterate();
          await pipeline.close();
        }
      },
    };
    const only = args.indexOf('--only');
    if (only >= 0) {
      const wanted = args[only + 1].split('|');
      for (const name of Object.keys(modes)) if (!wanted.some((w) => name.startsWith(w))) delete modes[name];
    }
    if (WORKER_PROCESSES === 0) for (const name of Object.keys(modes)) if (name.includes('worker processes')) delete modes[name];

    // CPU of every process taking part: this one, the endpoint, Redis, the worker processes.
    const cpuNow = async (): Promise<number[]> => {
      const own = process.cpuUsage();
      const [fhir, redisMs, ...workerMs] = await Promise.all([endpoint.stats().then((s) => s.cpuMs), redisCpuMs(redis), ...workers.map((w) => processCpuMs(w.pid!))]);
      return [(own.user + own.system) / 1000, workerMs.reduce((a, b) => a + b, 0), redisMs, fhir];
    };
    const times: Record<string, number[]> = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
    const cpu: Record<string, number[]> = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
    for (let round = 0; round <= ROUNDS; round++) {
      for (const [name, run] of Object.entries(modes)) {
        await endpoint.reset();
        const cpuBefore = await cpuNow();
        const started = performance.now();
        await run();
        const seconds = (performance.now() - started) / 1000;
        const cpuAfter = await cpuNow();
        const cpuParts = cpuAfter.map((ms, i) => (ms - cpuBefore[i]) / 1000);
        const cpuSeconds = cpuParts.reduce((a, b) => a + b, 0);
        if (round > 0) {
          times[name].push(seconds);
          cpu[name].push(cpuSeconds);
        }
        console.log(
          `  ${round === 0 ? 'warm-up' : `round ${round}`}  ${name.padEnd(34)} ${seconds.toFixed(2)} s  ${String(Math.round(recordCount / seconds)).padStart(6)} records/s  CPU ${cpuSeconds.toFixed(2)} s ` +
            `(this process ${cpuParts[0].toFixed(2)}, workers ${cpuParts[1].toFixed(2)}, Redis ${cpuParts[2].toFixed(2)}, endpoint ${cpuParts[3].toFixed(2)})`,
        );
      }
    }
    if (only >= 0) return;
    const rate = Object.fromEntries(Object.entries(times).map(([name, t]) => [name, recordCount / median(t)]));
    const cpuPerRecord = Object.fromEntries(Object.entries(cpu).map(([name, c]) => [name, (median(c) * 1e6) / recordCount]));
    const baseline = 'in process, no queue, no HTTP';
    const base = rate[baseline];
    console.log('\nmode                                records/s (median)  ratio   CPU µs/record (all processes)  CPU ratio');
    for (const [name, r] of Object.entries(rate)) {
      console.log(
        `${name.padEnd(36)}${String(Math.round(r)).padStart(9)}   ${(r / base).toFixed(3).padStart(9)}   ${cpuPerRecord[name].toFixed(0).padStart(12)}   ${(cpuPerRecord[baseline] / cpuPerRecord[name]).toFixed(3).padStart(22)}`,
      );
    }
    // The service as deployed: the API submits, `trialbridge worker` processes map and deliver. The mode with the
    // workers inside the bench process puts producer, workers and waiting on one event loop: a lower bound.
    const processes = `BullMQ, HTTP, ${WORKER_PROCESSES} worker processes`;
    const deployed = rate[processes] ? processes : 'BullMQ, HTTP';
    const ratio = rate[deployed] / base;
    const inOneProcess = rate['BullMQ, HTTP'] / base;
    const cpuRatio = cpuPerRecord[baseline] / cpuPerRecord[deployed];
    console.log(`
${deployed} / in process without queue or HTTP = ${ratio.toFixed(3)} (goal >= 0.5: ${ratio >= 0.5 ? 'met' : 'NOT met'})`);
    if (deployed !== 'BullMQ, HTTP') console.log(`BullMQ, HTTP, workers in the bench process (one event loop for everything) / in process without queue or HTTP = ${inOneProcess.toFixed(3)}`);
    console.log(`CPU per record over every process: ${cpuPerRecord[deployed].toFixed(0)} µs through BullMQ and HTTP, ${cpuPerRecord[baseline].toFixed(0)} µs without (CPU ratio ${cpuRatio.toFixed(3)})`);
    console.log(`BullMQ + HTTP (workers in the bench process) / in process with HTTP = ${(rate['BullMQ, HTTP'] / rate['in process, HTTP']).toFixed(3)}`);
    await mkdir(join(ROOT, 'bench/results'), { recursive: true });
    await writeFile(
      join(ROOT, 'bench/results/pipeline.json'),
      JSON.stringify(
        {
          date: new Date().toISOString(),
          machine: { cpus: availableParallelism(), model: cpus()[0]?.model, node: process.version },
          copies: COPIES,
          records: recordCount,
          entries: expectedEntries,
          subjectsPerTransaction: BATCH,
          rounds: ROUNDS,
          secondsPerRound: times,
          cpuSecondsPerRound: cpu,
          recordsPerSecond: rate,
          cpuMicrosecondsPerRecord: cpuPerRecord,
          ratio: { mode: deployed, value: ratio, workersInBenchProcess: inOneProcess, cpu: cpuRatio },
        },
        null,
        2,
      ) + '\n',
    );
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup();
    redis.disconnect();
    await endpoint.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
