/**
 * The end-to-end rig of the delivery-truth tests: exports submitted through the HTTP API (createApp, as `serve`
 * runs it) in this process, delivered by a real `trialbridge worker` child process, to destinations that are
 * server doubles (test/support/server-double.ts), all on the shared Redis under a prefix of the test's own.
 *
 * `expectExact` is the acceptance check of issue 11 per destination: the server holds exactly one resource per
 * business identifier of the subjects trialbridge reports delivered and nothing of the others (counted per
 * identifier by search), every other subject is a dead letter, and no reference on the server dangles.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Bundle, Patient } from '@medplum/fhirtypes';
import { expect } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';
import type { DeadLetter } from '../../src/queue/stages.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { accountRecords, serverHoldings, TRIAL_NAMESPACE, type RecordAccounting } from '../support/accounting.ts';
import type { ServerDouble } from '../support/server-double.ts';
import { until, within, WorkerProcess } from '../support/worker-process.ts';

export const RECORDED = '2019-01-01T00:00:00Z';
export const SAMPLE_SITES = ['site-a', 'site-b', 'site-c'] as const;
const REDIS = { host: '127.0.0.1', port: 6379 };

export interface RigDestination {
  readonly name: string;
  readonly double: ServerDouble;
  /** Extra YAML lines of the destination (4-space indented keys). */
  readonly lines?: readonly string[];
}

export interface Submission {
  readonly site: string;
  readonly inputs: readonly string[];
  readonly id: string;
  readonly mapping: CompiledMapping;
  /** The export as mapped here (what a destination is sent). */
  readonly expected: MappedExport;
}

interface DestinationStatus {
  readonly queued: number;
  readonly delivered: number;
  readonly deadLettered: number;
  readonly pending: number;
}

interface SubmissionStatus {
  readonly status: string;
  readonly destinations: Record<string, DestinationStatus>;
  readonly counts: { readonly mapped: number; readonly queued: number };
}

/** A destination's YAML: defaults keep retries quick (the faults are counted, not waited out). */
export function destinationYaml(name: string, baseUrl: string, lines: readonly string[] = []): string[] {
  const keys = new Set(lines.map((l) => l.trim().split(':')[0]));
  const defaults: [string, string][] = [
    ['transactions', 'true'],
    ['concurrency', '2'],
    ['timeoutMs', '10000'],
    ['retry', '{ attempts: 12, requestAttempts: 4, baseMs: 20, maxMs: 200 }'],
    ['circuitBreaker', '{ failures: 50, openMs: 200 }'],
    ['auth', '{ type: none }'],
  ];
  return [
    `  - name: ${name}`,
    '    kind: hospital',
    `    baseUrl: ${baseUrl}`,
    '    sites: "*"',
    ...defaults.filter(([k]) => !keys.has(k)).map(([k, v]) => `    ${k}: ${v}`),
    ...lines,
  ];
}

export class Rig {
  readonly dir: string;
  readonly producer: QueuePipeline;
  readonly worker: WorkerProcess;
  readonly api: string;
  readonly destinations: readonly RigDestination[];
  readonly validator: ResourceValidator;
  readonly #keys: Record<string, string>;
  readonly #cleanups: (() => Promise<void>)[];
  readonly #mappings: Map<string, CompiledMapping>;

  private constructor(init: {
    dir: string;
    producer: QueuePipeline;
    worker: WorkerProcess;
    api: string;
    destinations: readonly RigDestination[];
    validator: ResourceValidator;
    keys: Record<string, string>;
    cleanups: (() => Promise<void>)[];
    mappings: Map<string, CompiledMapping>;
  }) {
    this.dir = init.dir;
    this.producer = init.producer;
    this.worker = init.worker;
    this.api = init.api;
    this.destinations = init.destinations;
    this.validator = init.validator;
    this.#keys = init.keys;
    this.#cleanups = init.cleanups;
    this.#mappings = init.mappings;
  }

  static async start(destinations: readonly RigDestination[], options: { readonly files?: Record<string, string> } = {}): Promise<Rig> {
    const cleanups: (() => Promise<void>)[] = [];
    const dir = await mkdtemp(join(tmpdir(), 'tb-delivery-truth-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    try {
      for (const [name, text] of Object.entries(options.files ?? {})) await writeFile(join(dir, name), text);
      const config = join(dir, 'destinations.yaml');
      await writeFile(config, ['destinations:', ...destinations.flatMap((d) => destinationYaml(d.name, d.double.baseUrl, d.lines))].join('\n') + '\n');
      const validator = await defaultValidator();
      const mappings = new Map<string, CompiledMapping>();
      for (const site of SAMPLE_SITES) mappings.set(site, await compileMapping(await loadMapping(`mappings/${site}.yaml`)));
      const prefix = `tb-truth-${randomUUID()}`;
      const producer = new QueuePipeline({ connection: REDIS, prefix, mappings: [...mappings.values()], destinations: await loadDestinations(config), validator });
      cleanups.push(async () => {
        await producer.obliterate();
        await producer.close();
      });
      const worker = new WorkerProcess({ destinations: config, prefix, redisUrl: `redis://${REDIS.host}:${REDIS.port}`, args: ['--lock-duration', '10000', '--stalled-interval', '5000'], name: 'worker' });
      cleanups.push(async () => {
        await worker.stop().catch(() => worker.kill());
      });
      const keys: Record<string, string> = {};
      for (const site of SAMPLE_SITES) keys[site] = `${site}-${randomUUID()}`;
      const app: ApiApp = createApp({
        pipeline: producer,
        apiKeys: new ApiKeyStore(Object.entries(keys).map(([site, key]) => ({ site, keyHash: hashApiKey(key) }))),
        checkDestinations: false,
        uploadDir: join(dir, 'uploads'),
      });
      cleanups.push(() => within(5000, 'app.close()', app.close()).catch(() => undefined));
      const server: Server = await startServer(app, 0);
      cleanups.push(
        () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          }),
      );
      await worker.ready();
      return new Rig({ dir, producer, worker, api: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, destinations, validator, keys, cleanups, mappings });
    } catch (error) {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
      throw error;
    }
  }

  async close(): Promise<void> {
    for (const cleanup of this.#cleanups.splice(0).reverse()) await within(30_000, 'cleanup', cleanup()).catch((e: unknown) => console.error(e));
  }

  async #call<T>(site: string, method: string, path: string, body?: FormData): Promise<T> {
    const res = await fetch(`${this.api}${path}`, { method, headers: { authorization: `Bearer ${this.#keys[site]}` }, ...(body ? { body } : {}) });
    const text = await res.text();
    if (res.status >= 300) throw new Error(`${method} ${path}: HTTP ${res.status} ${text.slice(0, 500)}`);
    return JSON.parse(text) as T;
  }

  /** Submits an export's files through the API (multipart), as a site's client does. */
  async submit(site: string, inputs: readonly string[]): Promise<Submission> {
    const form = new FormData();
    for (const input of inputs) {
      for (const name of (await readdir(input)).sort()) form.append('files', new Blob([new Uint8Array(await readFile(join(input, name)))]), basename(name));
    }
    const { id } = await this.#call<{ id: string }>(site, 'POST', `/v1/sites/${site}/submissions`, form);
    const mapping = this.#mappings.get(site)!;
    const expected = await mapExport(mapping, inputs, { recorded: RECORDED, validator: this.validator });
    return { site, inputs, id, mapping, expected };
  }

  /** The three sample sites, submitted through the API. */
  async submitSampleSites(): Promise<Submission[]> {
    const out: Submission[] = [];
    for (const site of SAMPLE_SITES) out.push(await this.submit(site, [`examples/${site}`]));
    return out;
  }

  status(s: Submission): Promise<SubmissionStatus> {
    return this.#call<SubmissionStatus>(s.site, 'GET', `/v1/submissions/${encodeURIComponent(s.id)}`);
  }

  /** Waits until no subject of the submissions is pending for `destination` (delivered or dead-lettered). */
  async settled(submissions: readonly Submission[], destination: string, ms = 150_000): Promise<void> {
    await until(
      ms,
      `every subject delivered or dead-lettered at ${destination}\n${this.worker.output.slice(-20).join('\n')}`,
      async () => {
        for (const s of submissions) {
          const st = await this.status(s);
          const d = st.destinations[destination];
          if (st.counts.mapped < s.expected.bundles.length || !d || d.pending > 0 || d.queued < s.expected.bundles.length) return false;
        }
        return true;
      },
      100,
    );
  }

  /** Dead letters of a submission at a destination (from the API). */
  async deadLetters(s: Submission, destination: string): Promise<DeadLetter[]> {
    const { deadLetters } = await this.#call<{ deadLetters: { id: string }[] }>(s.site, 'GET', `/v1/dead-letters?submission=${encodeURIComponent(s.id)}`);
    const out: DeadLetter[] = [];
    for (const { id } of deadLetters) {
      const letter = await this.#call<DeadLetter>(s.site, 'GET', `/v1/dead-letters/${encodeURIComponent(id)}`);
      if (letter.stage === 'deliver' && letter.destination === destination) out.push(letter);
    }
    return out;
  }

  /** Replays a destination's dead letters through the API and waits until every subject is delivered there. */
  async replayAndWait(submissions: readonly Submission[], destination: string, ms = 150_000): Promise<number> {
    let replayed = 0;
    for (const s of submissions) {
      for (const letter of await this.deadLetters(s, destination)) {
        await this.#call(s.site, 'POST', `/v1/dead-letters/${encodeURIComponent(letter.id)}/replay`);
        replayed++;
      }
    }
    await until(
      ms,
      `every subject delivered at ${destination} after the replay\n${this.worker.output.slice(-20).join('\n')}`,
      async () => {
        for (const s of submissions) if ((await this.status(s)).destinations[destination]?.delivered !== s.expected.bundles.length) return false;
        return true;
      },
      100,
    );
    return replayed;
  }

  async account(s: Submission, destination: string): Promise<RecordAccounting> {
    return accountRecords(this.producer, { submissionId: s.id, mapping: s.mapping, inputs: [...s.inputs], bundles: s.expected.bundles }, destination);
  }
}

/** `Type|system|code` of each entry's trial tag (the business identifier it is conditionally updated on). */
export function bundleKeys(bundle: Bundle): string[] {
  return (bundle.entry ?? []).map((e) => {
    const tag = e.resource?.meta?.tag?.find((t) => t.system?.startsWith(TRIAL_NAMESPACE));
    if (!tag) throw new Error(`an entry of type ${e.resource?.resourceType} without a trial tag`);
    return `${e.resource!.resourceType}|${tag.system}|${tag.code}`;
  });
}

export interface Exactness {
  readonly delivered: number;
  readonly deadLettered: number;
  readonly resources: number;
  readonly letters: DeadLetter[];
}

/**
 * The acceptance check at one destination: every subject ended delivered or dead-lettered (once), the server
 * holds one resource per business identifier of the delivered subjects and nothing else (no identifier of a
 * dead-lettered subject, nothing twice), each delivered Patient is found by an escaped identifier search, and no
 * reference dangles.
 */
export async function expectExact(rig: Rig, submissions: readonly Submission[], name: string): Promise<Exactness> {
  const double = rig.destinations.find((d) => d.name === name)!.double;
  const delivered: Bundle[] = [];
  const letters: DeadLetter[] = [];
  let deadLettered = 0;
  for (const s of submissions) {
    const a = await rig.account(s, name);
    expect(a.unaccounted, `${name} ${s.site}: subjects that ended nowhere`).toEqual([]);
    expect(a.twice, `${name} ${s.site}: subjects that ended twice`).toEqual([]);
    expect(a.subjects.delivered + a.subjects.deadLettered, `${name} ${s.site}: subjects delivered + dead-lettered`).toBe(s.expected.bundles.length);
    expect(a.counters.destinations[name]).toMatchObject({ delivered: a.subjects.delivered, deadLettered: a.subjects.deadLettered });
    delivered.push(...a.deliveredBundles.values());
    deadLettered += a.subjects.deadLettered;
    letters.push(...a.deliveryDeadLetters);
    // The API lists the same dead letters, with the server's status and issue codes (its words stay in Redis).
    const shown = await rig.deadLetters(s, name);
    expect(shown.map((l) => [l.id, l.status]).sort()).toEqual(a.deliveryDeadLetters.map((l) => [l.id, l.status]).sort());
  }
  expect(letters.length).toBe(deadLettered);
  const resources = await expectHeldExactly(double, submissions, delivered, name);
  return { delivered: delivered.length, deadLettered, resources, letters };
}

/**
 * The server holds one resource per business identifier of `delivered` and nothing else (counted per identifier
 * from a search of each type; each Patient also by an escaped identifier search), and no reference dangles.
 * Returns the resources held.
 */
export async function expectHeldExactly(double: ServerDouble, submissions: readonly Submission[], delivered: readonly Bundle[], name: string): Promise<number> {
  const expectedKeys = new Set(delivered.flatMap(bundleKeys));
  const all = submissions.flatMap((s) => s.expected.bundles.map((b) => b.bundle));
  // Trial-wide resources (in every subject's bundle: the ResearchStudy) are written once per destination before
  // any subject, so the server may hold them when no subject was delivered.
  const shared = all.map((b) => new Set(bundleKeys(b))).reduce((a, b) => new Set([...a].filter((k) => b.has(k))));
  const types = new Set(all.flatMap((b) => (b.entry ?? []).map((e) => e.resource!.resourceType)));
  const holdings = await serverHoldings(double.server.baseUrl, types);
  const missing = [...expectedKeys].filter((k) => !holdings.counts.has(k));
  const twice = [...holdings.counts].filter(([, n]) => n > 1).map(([k]) => k);
  const extra = [...holdings.counts.keys()].filter((k) => !expectedKeys.has(k) && !shared.has(k));
  const byType = (keys: readonly string[]): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const k of keys) out[k.split('|')[0]] = (out[k.split('|')[0]] ?? 0) + 1;
    return out;
  };
  expect(
    { missing: byType(missing), twice: byType(twice), extra: byType(extra), untagged: holdings.untagged },
    `${name}: identifiers (per resource type) the server lacks, holds twice, or holds without the subject being reported delivered`,
  ).toEqual({ missing: {}, twice: {}, extra: {}, untagged: 0 });
  expect(holdings.resources).toBe([...holdings.counts.keys()].length);
  for (const b of delivered) {
    const patient = b.entry!.find((e) => e.resource?.resourceType === 'Patient')!.resource as Patient;
    const id = patient.identifier![0];
    expect(await double.countByIdentifier('Patient', id.system!, id.value!), `${name}: Patient of a delivered subject, by search`).toBe(1);
  }
  expect(await double.danglingReferences(), `${name}: references that do not resolve`).toEqual([]);
  return holdings.resources;
}

/** Clears the double's fault, replays the destination's dead letters through the API, and checks that every subject is held. */
export async function clearAndReplay(rig: Rig, double: ServerDouble, submissions: readonly Submission[], name: string): Promise<{ replayed: number; resources: number }> {
  double.behave({});
  const replayed = await rig.replayAndWait(submissions, name);
  const resources = await expectHeldExactly(double, submissions, submissions.flatMap((s) => s.expected.bundles.map((b) => b.bundle)), name);
  return { replayed, resources };
}
