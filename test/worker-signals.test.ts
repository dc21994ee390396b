/**
 * `trialbridge worker` as a real child process against Redis and an embedded FHIR server: SIGTERM mid-run
 * lets the jobs in flight finish and exits 0, a second worker finishes the submission, and the server then
 * holds exactly the mapped resources, none twice. The SIGKILL variant relies on BullMQ's stalled-job recovery
 * (short lock and stalled interval given on the command line).
 *
 * "Mid-run" is made certain, not timed: the worker reaches the FHIR server through a gate (a small proxy in the
 * test) that holds the Nth bundle POST until released, so the signal arrives while that delivery job is in
 * flight, with the jobs after it still waiting.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport, type MappedExport } from '../src/bundle/map-export.ts';
import { FhirClient } from '../src/delivery/client.ts';
import { loadDestinations } from '../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../src/delivery/embedded-server.ts';
import { compileMapping, type CompiledMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { isRedisReachable, QueuePipeline } from '../src/queue/pipeline.ts';
import type { ResourceValidator } from '../src/validation/validator.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const REDIS_URL = 'redis://127.0.0.1:6379';
const RECORDED = '2019-01-01T00:00:00Z';
const SITE = 'site-a';
const INPUTS = ['examples/site-a'];

let mapping: CompiledMapping;
let validator: ResourceValidator;
let expectedExport: MappedExport;
let expected: Record<string, number>;
let dir: string;

const redisUp = await isRedisReachable(REDIS);

beforeAll(async () => {
  mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
  validator = await defaultValidator();
  expectedExport = await mapExport(mapping, INPUTS, { recorded: RECORDED, validator });
  expected = { ...expectedExport.summary.resourcesByType, ResearchStudy: 1 };
  dir = await mkdtemp(join(tmpdir(), 'tb-worker-signals-'));
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A proxy in front of the FHIR server that holds the `holdPost`th subject bundle POST (1-based) until `release()`. */
interface Gate {
  readonly baseUrl: string;
  /** Resolves when the held POST has arrived (the delivery job sending it is active). */
  readonly held: Promise<void>;
  release(): void;
  /** Subjects' bundles (POSTs holding a Patient) forwarded to the server. */
  readonly forwarded: () => number;
  close(): Promise<void>;
}

async function startGate(upstream: EmbeddedFhirServer, holdPost: number): Promise<Gate> {
  let posts = 0;
  let forwarded = 0;
  let onHeld!: () => void;
  const held = new Promise<void>((resolve) => (onHeld = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const body = async (req: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };
  const server = createServer((req, res) => {
    void (async () => {
      const payload = await body(req);
      // Subjects' bundles only: the trial-wide ResearchStudy is written on its own first (shared-entries.ts).
      const subjectPost = req.method === 'POST' && payload.includes('"resourceType":"Patient"');
      if (subjectPost && ++posts === holdPost) {
        onHeld();
        await released;
        // The worker was killed while this was held: it never reaches the server.
        if (res.destroyed || req.socket.destroyed) return;
      }
      const upstreamUrl = new URL(req.url!, upstream.baseUrl.replace(/\/fhir\/R4$/, '/'));
      const response = await fetch(upstreamUrl, {
        method: req.method,
        headers: Object.fromEntries(['content-type', 'accept', 'if-none-exist'].flatMap((h) => (typeof req.headers[h] === 'string' ? [[h, req.headers[h] as string]] : []))),
        ...(payload.length > 0 ? { body: payload } : {}),
      });
      if (subjectPost) forwarded++;
      const text = Buffer.from(await response.arrayBuffer());
      res.writeHead(response.status, { 'content-type': response.headers.get('content-type') ?? 'application/fhir+json' });
      res.end(text);
    })().catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(502).end(String(error));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    baseUrl: `http://127.0.0.1:${port}/fhir/R4`,
    held,
    release,
    forwarded: () => forwarded,
    close: async () => {
      release();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

interface WorkerProcess {
  readonly child: ChildProcess;
  readonly lines: Record<string, unknown>[];
  readonly output: string[];
  /** Resolves with the first JSON line (already seen or to come) that matches. */
  waitFor(predicate: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

describe.skipIf(!redisUp)('trialbridge worker and signals', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  function startWorker(config: string, prefix: string, extra: string[] = []): WorkerProcess {
    const child = spawn(process.execPath, ['src/cli/main.ts', 'worker', '--destinations', config, '--prefix', prefix, '--mapping', 'mappings/site-a.yaml', ...extra], {
      env: { ...process.env, REDIS_URL },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = once(child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    });
    const lines: Record<string, unknown>[] = [];
    const output: string[] = [];
    const waiters: { predicate: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }[] = [];
    createInterface({ input: child.stdout! }).on('line', (text) => {
      output.push(text);
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      for (const w of waiters.splice(0)) {
        if (w.predicate(line)) w.resolve(line);
        else waiters.push(w);
      }
    });
    createInterface({ input: child.stderr! }).on('line', (text) => output.push(`stderr: ${text}`));
    const waitFor = (predicate: (line: Record<string, unknown>) => boolean) => {
      const seen = lines.find(predicate);
      if (seen) return Promise.resolve(seen);
      return Promise.race([
        new Promise<Record<string, unknown>>((resolve) => waiters.push({ predicate, resolve })),
        exited.then((e) => Promise.reject(new Error(`worker exited (${e.code ?? e.signal}) before the expected line:\n${output.join('\n')}`))),
      ]);
    };
    return { child, lines, output, waitFor, exited };
  }

  async function setUp(holdPost: number) {
    const server = await startEmbeddedFhirServer();
    cleanups.push(() => server.close());
    const gate = await startGate(server, holdPost);
    cleanups.push(() => gate.close());
    const config = join(dir, `${randomUUID()}.yaml`);
    await writeFile(
      config,
      [
        'destinations:',
        '  - name: hospital',
        '    kind: hospital',
        `    baseUrl: ${gate.baseUrl}`,
        `    sites: [${SITE}]`,
        '    concurrency: 1',
        '    retry: { attempts: 3, baseMs: 10, maxMs: 50 }',
        // A killed worker's pacing lease frees its permit within 2 s, as its 1 s job lock does.
        '    pacing: { leaseMs: 2000 }',
        '    auth: { type: none }',
      ].join('\n') + '\n',
    );
    const prefix = `tb-wsig-${randomUUID()}`;
    // The producer side, in the test: no workers here.
    const producer = new QueuePipeline({ connection: REDIS, prefix, mappings: [mapping], destinations: await loadDestinations(config), validator });
    cleanups.push(async () => {
      await producer.obliterate();
      await producer.close();
    });
    return { server, gate, config, prefix, producer };
  }

  async function serverCounts(server: EmbeddedFhirServer): Promise<Record<string, number>> {
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const out: Record<string, number> = {};
    for (const type of Object.keys(expected).sort()) out[type] = (await client.get<{ total?: number }>(`${type}?_summary=count`)).body?.total ?? 0;
    return out;
  }

  function expectNoSubjectIds(output: readonly string[]): void {
    const text = output.join('\n');
    for (const b of expectedExport.bundles) expect(text).not.toMatch(new RegExp(`\\b${b.subject}\\b`));
  }

  it('SIGTERM mid-run: the job in flight finishes, exit 0; a second worker completes the submission with no duplicates', async () => {
    const HOLD = 3;
    const { server, gate, config, prefix, producer } = await setUp(HOLD);
    const first = startWorker(config, prefix);
    await first.waitFor((l) => l.event === 'ready');

    const submitted = await producer.submitExport(SITE, INPUTS, { recorded: RECORDED });
    expect(submitted.queued).toBe(submitted.subjects);
    expect(expectedExport.bundles.length).toBeGreaterThan(HOLD);
    await gate.held;
    first.child.kill('SIGTERM');
    await first.waitFor((l) => l.event === 'stopping');
    // The held delivery keeps the worker alive: it waits for its job in flight.
    expect(first.child.exitCode).toBeNull();
    expect(await producer.deliveryQueue('hospital').getActiveCount()).toBe(1);
    gate.release();
    expect(await first.exited).toEqual({ code: 0, signal: null });
    const events = first.lines.map((l) => l.event);
    expect(events.indexOf('stopped')).toBeGreaterThan(events.indexOf('stopping'));

    // The job in flight finished (delivered), no further job was taken, nothing is left active (locked).
    const deliveredByFirst = first.lines.filter((l) => l.event === 'delivered').length;
    expect(deliveredByFirst).toBe(HOLD);
    expect(gate.forwarded()).toBe(HOLD);
    expect((await producer.submission(submitted.submissionId)).destinations.hospital.delivered).toBe(HOLD);
    expect(await producer.mappingQueue.getActiveCount()).toBe(0);
    expect(await producer.deliveryQueue('hospital').getActiveCount()).toBe(0);

    const second = startWorker(config, prefix);
    await producer.waitForSubmission(submitted);
    expect(await serverCounts(server)).toEqual(expected);
    const counters = await producer.submission(submitted.submissionId);
    expect(counters.mapped).toBe(expectedExport.bundles.length);
    expect(counters.destinations.hospital.delivered).toBe(expectedExport.bundles.length);
    expect(counters.destinations.hospital.deadLettered).toBe(0);
    // Each bundle was sent once, by one of the two workers.
    expect(deliveredByFirst + second.lines.filter((l) => l.event === 'delivered').length).toBe(expectedExport.bundles.length);
    expect(gate.forwarded()).toBe(expectedExport.bundles.length);

    second.child.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
    expectNoSubjectIds([...first.output, ...second.output]);
  }, 120_000);

  it('SIGKILL mid-run: a second worker recovers the stalled job and the server ends with exactly the mapped resources', async () => {
    const HOLD = 2;
    const { server, gate, config, prefix, producer } = await setUp(HOLD);
    const short = ['--lock-duration', '1000', '--stalled-interval', '500'];
    const first = startWorker(config, prefix, short);
    await first.waitFor((l) => l.event === 'ready');

    const submitted = await producer.submitExport(SITE, INPUTS, { recorded: RECORDED });
    await gate.held;
    first.child.kill('SIGKILL');
    expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });
    // The killed worker's job stays active, locked until its lock expires.
    expect(await producer.deliveryQueue('hospital').getActiveCount()).toBe(1);
    gate.release(); // the held request's client is gone: it is not forwarded
    expect(first.lines.filter((l) => l.event === 'delivered').length).toBe(HOLD - 1);

    const second = startWorker(config, prefix, short);
    await producer.waitForSubmission(submitted);
    expect(await serverCounts(server)).toEqual(expected);
    expect(second.lines.some((l) => l.event === 'stalled')).toBe(true);
    const counters = await producer.submission(submitted.submissionId);
    expect(counters.mapped).toBe(expectedExport.bundles.length);
    // Counted once per job, the recovered one included.
    expect(counters.destinations.hospital.delivered).toBe(expectedExport.bundles.length);
    expect(counters.destinations.hospital.deadLettered).toBe(0);
    expect(gate.forwarded()).toBe(expectedExport.bundles.length);

    second.child.kill('SIGTERM');
    expect(await second.exited).toEqual({ code: 0, signal: null });
    expectNoSubjectIds([...first.output, ...second.output]);
  }, 120_000);
});
