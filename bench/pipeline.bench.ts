/**
 * `node bench/pipeline.bench.ts [--copies N] [--rounds N] [--quick]`: end-to-end records/s of the service, from
 * submission to acknowledged delivery, through BullMQ (real Redis at REDIS_URL or 127.0.0.1:6379) to a minimal
 * FHIR endpoint that accepts transactions, beside the same work done in process without a queue, in one run.
 *
 * Data: site A's export replicated `copies` times with new subject ids (`A001-R0001`, ...) and row ids, written to
 * a temp dir (default 40 copies: 720 subjects, ~16,000 records).
 * Modes, interleaved per round, medians of `rounds` (default 3) after one warm-up round:
 *   in process, no queue, no HTTP   read + map + validate + one transaction bundle per subject + JSON text of each
 *   in process, HTTP                the pipeline stages without a queue (runInProcess), delivering to the endpoint
 *   BullMQ, HTTP                    QueuePipeline: submitExport → mapping jobs → delivery jobs → the endpoint;
 *                                   workers in this process; timed until every delivery job has completed
 * The goal of the service issue: queue and HTTP cost at most half, i.e. BullMQ / (no queue, no HTTP) >= 0.5.
 *
 * The endpoint is a separate process (bench/minimal-fhir-endpoint.ts) answering each transaction with one
 * `201 Created` per entry: a stand-in for a fast FHIR server, so that the server's cost is not measured. It keeps
 * a count of the entries it received, checked against the mapped resources after every BullMQ round.
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
import { QueuePipeline, type QueueConnection } from '../src/queue/pipeline.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const QUICK = args.includes('--quick');
const COPIES = flag('--copies', QUICK ? 10 : 40);
const ROUNDS = flag('--rounds', QUICK ? 1 : 3);
/** Worker processes of the multi-process BullMQ mode. */
const WORKER_PROCESSES = flag('--workers', 2);
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

interface Endpoint {
  readonly baseUrl: string;
  entries(): Promise<number>;
  reset(): Promise<void>;
  close(): Promise<void>;
}

async function startEndpoint(): Promise<Endpoint> {
  const child: ChildProcess = fork(join(ROOT, 'bench/minimal-fhir-endpoint.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const [ready] = (await once(child, 'message')) as [{ port: number }];
  const ask = async (command: string): Promise<number> => {
    child.send(command);
    const [reply] = (await once(child, 'message')) as [{ entries: number }];
    return reply.entries;
  };
  return {
    baseUrl: `http://127.0.0.1:${ready.port}/fhir`,
    entries: () => ask('entries'),
    reset: async () => void (await ask('reset')),
    close: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

function destination(baseUrl: string): Destination {
  return destinationWithDefaults({ name: 'bench', kind: 'hospital', baseUrl, maxEntries: 1000, atomic: true, transactions: true, concurrency: 8 });
}

/** `trialbridge worker` processes on a prefix; resolves once each has logged `ready` (start-up is not timed). */
async function startWorkers(count: number, destinationsFile: string, prefix: string): Promise<ChildProcess[]> {
  const children: ChildProcess[] = [];
  await Promise.all(
    Array.from({ length: count }, async () => {
      const child = spawn(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'worker', '-d', destinationsFile, '-m', join(ROOT, 'mappings/site-a.yaml'), '--prefix', prefix, '-c', '2'], {
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
  try {
    const input = join(dir, SITE);
    await writeScaledExport(input, COPIES);
    const mapping = await compileMapping(await loadMapping(join(ROOT, 'mappings/site-a.yaml')));
    const validator = await defaultValidator();
    const { records } = await readSourceRecords(mapping, [input]);
    const recordCount = records.length;
    const check = validationCheck(validator);
    const expectedEntries = mapRecords(mapping, records, check).subjects.reduce((n, s) => n + subjectBundle(mapping, s, { recorded: RECORDED }).entry!.length, 0);
    console.log(`pipeline bench: ${COPIES} copies of site A = ${recordCount} records, ${expectedEntries} bundle entries; ${ROUNDS} timed rounds after 1 warm-up`);
    const connection = redisFromEnv();
    const config = { mappings: [mapping], destinations: [destination(endpoint.baseUrl)], validator };
    const destinationsFile = join(dir, 'destinations.yaml');
    await writeFile(
      destinationsFile,
      ['destinations:', '  - name: bench', '    kind: hospital', `    baseUrl: ${endpoint.baseUrl}`, '    sites: "*"', '    maxEntries: 1000', '    atomic: true', '    transactions: true', '    concurrency: 8', '    auth: { type: none }'].join('\n') + '\n',
    );

    const modes: Record<string, () => Promise<void>> = {
      'in process, no queue, no HTTP': async () => {
        const { records: read } = await readSourceRecords(mapping, [input]);
        let bytes = 0;
        for (const subject of mapRecords(mapping, read, check).subjects) bytes += JSON.stringify(subjectBundle(mapping, subject, { recorded: RECORDED })).length;
        if (bytes === 0) throw new Error('nothing mapped');
      },
      'in process, HTTP': async () => {
        await endpoint.reset();
        const result = await runInProcess({ ...config, exports: [{ site: SITE, inputs: [input] }], recorded: RECORDED });
        if (result.submission.destinations.bench?.deadLettered) throw new Error('dead letters in process');
        const got = await endpoint.entries();
        if (got !== expectedEntries) throw new Error(`in process: the endpoint got ${got} entries, expected ${expectedEntries}`);
      },
      'BullMQ, HTTP': async () => {
        await endpoint.reset();
        const pipeline = new QueuePipeline({ ...config, connection, prefix: `tb-bench-${randomUUID()}`, workers: { mappingConcurrency: 2 } });
        try {
          pipeline.startWorkers();
          const submitted = await pipeline.submitExport(SITE, [input], { recorded: RECORDED });
          await pipeline.waitForSubmission(submitted);
          const got = await endpoint.entries();
          if (got !== expectedEntries) throw new Error(`BullMQ: the endpoint got ${got} entries, expected ${expectedEntries}`);
        } finally {
          await pipeline.closeWorkers();
          await pipeline.obliterate();
          await pipeline.close();
        }
      },
      [`BullMQ, HTTP, ${WORKER_PROCESSES} worker processes`]: async () => {
        await endpoint.reset();
        const prefix = `tb-bench-${randomUUID()}`;
        const pipeline = new QueuePipeline({ ...config, connection, prefix });
        const workers = await startWorkers(WORKER_PROCESSES, destinationsFile, prefix);
        try {
          const started = performance.now();
          const submitted = await pipeline.submitExport(SITE, [input], { recorded: RECORDED });
          await pipeline.waitForSubmission(submitted);
          untimed -= performance.now() - started;
          const got = await endpoint.entries();
          if (got !== expectedEntries) throw new Error(`BullMQ (processes): the endpoint got ${got} entries, expected ${expectedEntries}`);
        } finally {
          await stopWorkers(workers);
          await pipeline.obliterate();
          await pipeline.close();
        }
      },
    };
    const only = args.indexOf('--only');
    if (only >= 0) {
      const wanted = args[only + 1].split(',');
      for (const name of Object.keys(modes)) if (!wanted.some((w) => name.startsWith(w))) delete modes[name];
    }
    if (WORKER_PROCESSES === 0) for (const name of Object.keys(modes)) if (name.includes('worker processes')) delete modes[name];
    let untimed = 0;
    const times: Record<string, number[]> = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
    for (let round = 0; round <= ROUNDS; round++) {
      for (const [name, run] of Object.entries(modes)) {
        untimed = 0;
        const started = performance.now();
        await run();
        // A mode that times only part of its run (worker start-up excluded) sets `untimed` to minus that part.
        const seconds = (untimed < 0 ? -untimed : performance.now() - started) / 1000;
        if (round > 0) times[name].push(seconds);
        console.log(`  ${round === 0 ? 'warm-up' : `round ${round}`}  ${name.padEnd(32)} ${seconds.toFixed(2)} s  ${Math.round(recordCount / seconds)} records/s`);
      }
    }
    const rate = Object.fromEntries(Object.entries(times).map(([name, t]) => [name, recordCount / median(t)]));
    const base = rate['in process, no queue, no HTTP'];
    if (only >= 0) return;
    console.log('\nmode                              records/s (median)   ratio to no queue, no HTTP');
    for (const [name, r] of Object.entries(rate)) console.log(`${name.padEnd(34)}${String(Math.round(r)).padStart(9)}   ${(r / base).toFixed(3)}`);
    const ratio = rate['BullMQ, HTTP'] / base;
    console.log(`\nBullMQ + HTTP / in process without queue or HTTP = ${ratio.toFixed(3)} (goal >= 0.5: ${ratio >= 0.5 ? 'met' : 'NOT met'})`);
    console.log(`BullMQ + HTTP / in process with HTTP = ${(rate['BullMQ, HTTP'] / rate['in process, HTTP']).toFixed(3)}`);
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
          rounds: ROUNDS,
          secondsPerRound: times,
          recordsPerSecond: rate,
          ratio,
        },
        null,
        2,
      ) + '\n',
    );
  } finally {
    await endpoint.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
