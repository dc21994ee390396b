import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const SITE_A_KEY = `a-${randomUUID()}`;
const SITE_B_KEY = `b-${randomUUID()}`;
const SITE_Z_KEY = `z-${randomUUID()}`; // a site without a mapping
const ADMIN_KEY = `admin-${randomUUID()}`;
const EXPORT_FILE = 'examples/site-a/export.csv';

interface PlantedReject {
  file: string;
  row: number;
  recordKey: string;
  field: string;
}

let mapping: CompiledMapping;
let validator: ResourceValidator;
let expectedExport: MappedExport;
let planted: PlantedReject[];
let configDir: string;

beforeAll(async () => {
  mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
  validator = await defaultValidator();
  expectedExport = await mapExport(mapping, ['examples/site-a'], { recorded: '2019-01-01T00:00:00Z', validator });
  planted = (JSON.parse(await readFile('examples/expected-aggregates.json', 'utf8')) as { sites: Record<string, { rejects: PlantedReject[] }> }).sites['site-a'].rejects;
  configDir = await mkdtemp(join(tmpdir(), 'tb-api-test-'));
});

afterAll(async () => {
  await rm(configDir, { recursive: true, force: true });
});

describe('HTTP API', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setUp(options: { bodyLimit?: string } = {}) {
    const fhir = await startEmbeddedFhirServer();
    let fhirClosed: Promise<void> | undefined;
    const closeFhir = () => (fhirClosed ??= fhir.close());
    cleanups.push(closeFhir);
    const file = join(configDir, `${randomUUID()}.yaml`);
    await writeFile(
      file,
      ['destinations:', '  - name: hospital', '    kind: hospital', `    baseUrl: ${fhir.baseUrl}`, '    sites: [site-a]', '    retry: { attempts: 2, baseMs: 10, maxMs: 50 }', '    auth: { type: none }', ''].join('\n'),
    );
    const pipeline = new QueuePipeline({ connection: REDIS, prefix: `{tb-test-${randomUUID()}}`, mappings: [mapping], destinations: loadDestinations(file, {}), validator });
    cleanups.push(async () => {
      await pipeline.closeWorkers();
      await pipeline.obliterate();
      await pipeline.close();
    });
    pipeline.startWorkers();
    const submitted: SubmitResult[] = [];
    const uploadDir = await mkdtemp(join(tmpdir(), 'tb-api-uploads-'));
    cleanups.push(() => rm(uploadDir, { recursive: true, force: true }));
    const app: ApiApp = createApp({
      pipeline,
      apiKeys: new ApiKeyStore([
        { site: 'site-a', keyHash: hashApiKey(SITE_A_KEY) },
        { site: 'site-b', keyHash: hashApiKey(SITE_B_KEY) },
        { site: 'site-z', keyHash: hashApiKey(SITE_Z_KEY) },
      ]),
      adminKeyHash: hashApiKey(ADMIN_KEY),
      uploadDir,
      onSubmission: (r) => submitted.push(r),
      // Each readiness request probes again: the test takes the destination down between two.
      readinessCacheMs: 0,
      ...(options.bodyLimit ? { bodyLimit: options.bodyLimit } : {}),
    });
    cleanups.push(() => app.close());
    await app.metrics.ready();
    const server: Server = await startServer(app, 0);
    cleanups.push(
      () =>
        new Promise<void>((resolve, reject) => {
          server.close((error) => (error ? reject(error) : resolve()));
          server.closeAllConnections();
        }),
    );
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return { closeFhir, pipeline, app, base, submitted, uploadDir };
  }

  const auth = (key: string) => ({ authorization: `Bearer ${key}` });

  async function multipart(): Promise<FormData> {
    const form = new FormData();
    form.append('files', new Blob([await readFile(EXPORT_FILE)], { type: 'text/csv' }), basename(EXPORT_FILE));
    return form;
  }

  it('accepts a multipart export, delivers it, and shows counts and the planted rejects with reasons', async () => {
    const { base, pipeline, submitted, app } = await setUp();
    const res = await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: auth(SITE_A_KEY), body: await multipart() });
    expect(res.status).toBe(202);
    const accepted = (await res.json()) as { id: string; site: string; queued: number; subjects: number };
    expect(accepted.site).toBe('site-a');
    expect(accepted.queued).toBe(accepted.subjects);
    expect(res.headers.get('location')).toBe(`/v1/submissions/${accepted.id}`);
    expect(submitted.map((s) => s.submissionId)).toEqual([accepted.id]);

    await pipeline.waitForSubmission(submitted[0]);

    const got = await fetch(`${base}${res.headers.get('location')}`, { headers: { 'x-api-key': SITE_A_KEY } });
    expect(got.status).toBe(200);
    const body = (await got.json()) as {
      status: string;
      counts: { mapped: number; delivered: number; rejected: { records: number } };
      destinations: Record<string, { delivered: number; deadLettered: number; pending: number }>;
      rejects: { file?: string; row?: number; recordKey?: string; field?: string; reason: string }[];
    };
    const bundles = expectedExport.bundles.length;
    expect(body.status).toBe('finished');
    expect(body.counts.mapped).toBe(bundles);
    expect(body.counts.delivered).toBe(bundles);
    expect(body.destinations.hospital).toMatchObject({ delivered: bundles, deadLettered: 0, pending: 0 });
    expect(body.counts.rejected.records).toBe(planted.length);
    for (const p of planted) {
      const found = body.rejects.find((r) => r.file === basename(p.file) && r.row === p.row);
      expect(found, `planted reject ${p.recordKey} (row ${p.row})`).toBeDefined();
      expect(found!.reason.length).toBeGreaterThan(0);
    }
    // Locations and reasons only: no record values in the rejects.
    expect(Object.keys(body.rejects[0]).sort()).toEqual(expect.arrayContaining(['reason', 'stage']));
    expect(JSON.stringify(body.rejects)).not.toContain('"fields"');
    expect(JSON.stringify(body)).not.toContain('30/02/2016'); // the impossible start_date of row 45

    // Another site's key may neither read it nor its dead letters, nor learn that they exist.
    expect((await fetch(`${base}/v1/submissions/${accepted.id}`, { headers: auth(SITE_B_KEY) })).status).toBe(404);
    expect((await fetch(`${base}/v1/dead-letters?submission=${accepted.id}`, { headers: auth(SITE_B_KEY) })).status).toBe(404);
    expect((await fetch(`${base}/v1/submissions/${randomUUID()}`, { headers: auth(SITE_A_KEY) })).status).toBe(404);

    // Dead letters: list, show, scoped show, replay.
    const list = (await (await fetch(`${base}/v1/dead-letters?submission=${accepted.id}`, { headers: auth(SITE_A_KEY) })).json()) as { deadLetters: { id: string; replayable: boolean }[] };
    expect(list.deadLetters).toHaveLength(planted.length);
    const replayable = list.deadLetters.find((d) => d.replayable)!;
    const shown = await fetch(`${base}/v1/dead-letters/${encodeURIComponent(replayable.id)}`, { headers: auth(SITE_A_KEY) });
    expect(shown.status).toBe(200);
    expect(((await shown.json()) as { id: string }).id).toBe(replayable.id);
    expect((await fetch(`${base}/v1/dead-letters/${encodeURIComponent(replayable.id)}`, { headers: auth(SITE_B_KEY) })).status).toBe(404);
    expect((await fetch(`${base}/v1/dead-letters/${encodeURIComponent(replayable.id)}/replay`, { method: 'POST', headers: auth(SITE_B_KEY) })).status).toBe(404);
    const replay = await fetch(`${base}/v1/dead-letters/${encodeURIComponent(replayable.id)}/replay`, { method: 'POST', headers: auth(SITE_A_KEY) });
    expect(replay.status).toBe(202);
    expect(((await replay.json()) as { replayed: string[] }).replayed).toContain(replayable.id);
    const replayAll = await fetch(`${base}/v1/submissions/${accepted.id}/replay`, { method: 'POST', headers: auth(SITE_A_KEY) });
    expect(replayAll.status).toBe(202);

    // Deliveries are counted in /metrics (from the queue's completed events, which may trail waitForSubmission).
    await expect.poll(async () => (await app.metrics.deliveries.get()).values.find((v) => v.labels.outcome === 'delivered')?.value).toBe(bundles);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain(`trialbridge_deliveries_total{destination="hospital",outcome="delivered"} ${bundles}`);
    expect(metrics).toMatch(/trialbridge_queue_jobs\{queue="tb-map",state="completed"\} \d+/);
    expect(metrics).toContain('trialbridge_http_request_duration_seconds_bucket');
    expect(metrics).toContain('process_cpu_user_seconds_total');
  });

  it('accepts a JSON export', async () => {
    const { base } = await setUp();
    const res = await fetch(`${base}/v1/sites/site-a/submissions`, {
      method: 'POST',
      headers: { ...auth(SITE_A_KEY), 'content-type': 'application/json' },
      body: JSON.stringify({ files: [{ name: 'export.csv', content: await readFile(EXPORT_FILE, 'utf8') }] }),
    });
    expect(res.status).toBe(202);
    expect(((await res.json()) as { queued: number }).queued).toBeGreaterThan(0);
  });

  it('answers 401 without or with an unknown key, 403 for another site, 404 for a site without mapping, 400 on malformed input', async () => {
    const { base, uploadDir } = await setUp();
    const url = `${base}/v1/sites/site-a/submissions`;
    const noKey = await fetch(url, { method: 'POST', body: await multipart() });
    expect(noKey.status).toBe(401);
    expect(await noKey.json()).toMatchObject({ error: { code: 'unauthorized' } });
    expect((await fetch(url, { method: 'POST', headers: auth('not-a-key'), body: await multipart() })).status).toBe(401);
    expect((await fetch(`${base}/v1/submissions/x`, { headers: { 'x-api-key': 'nope' } })).status).toBe(401);
    const other = await fetch(url, { method: 'POST', headers: auth(SITE_B_KEY), body: await multipart() });
    expect(other.status).toBe(403);
    expect(await other.json()).toMatchObject({ error: { code: 'forbidden' } });
    const unknown = await fetch(`${base}/v1/sites/site-z/submissions`, { method: 'POST', headers: auth(SITE_Z_KEY), body: await multipart() });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ error: { code: 'unknown_site' } });
    const json = { ...auth(SITE_A_KEY), 'content-type': 'application/json' };
    for (const body of ['{not json', JSON.stringify({ files: [] }), JSON.stringify({ files: [{ name: '../x.csv', content: 'a' }] }), JSON.stringify({ files: [{ name: 'a.csv', content: 1 }] })]) {
      const r = await fetch(url, { method: 'POST', headers: json, body });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { code: string } }).error.code).toEqual(expect.any(String));
    }
    expect((await fetch(url, { method: 'POST', headers: { ...auth(SITE_A_KEY), 'content-type': 'text/plain' }, body: 'x' })).status).toBe(415);
    expect((await fetch(`${base}/v1/dead-letters`, { headers: auth(SITE_A_KEY) })).status).toBe(400);
    expect((await fetch(`${base}/v1/dead-letters/nope`, { headers: auth(SITE_A_KEY) })).status).toBe(404);
    // Rejected uploads leave nothing behind.
    expect(await readdir(uploadDir)).toEqual([]);
  });

  it('answers 413 JSON for a body over the limit (JSON and multipart)', async () => {
    const { base } = await setUp({ bodyLimit: '1kb' });
    const url = `${base}/v1/sites/site-a/submissions`;
    const big = await fetch(url, {
      method: 'POST',
      headers: { ...auth(SITE_A_KEY), 'content-type': 'application/json' },
      body: JSON.stringify({ files: [{ name: 'export.csv', content: 'x'.repeat(4096) }] }),
    });
    expect(big.status).toBe(413);
    expect(await big.json()).toMatchObject({ error: { code: 'payload_too_large' } });
    const bigUpload = await fetch(url, { method: 'POST', headers: auth(SITE_A_KEY), body: await multipart() });
    expect(bigUpload.status).toBe(413);
    expect(await bigUpload.json()).toMatchObject({ error: { code: 'payload_too_large' } });
  });

  it('serves healthz, readyz, the admin UI behind its key, and an OpenAPI document covering every route', async () => {
    const { base, app, closeFhir } = await setUp();
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    // Anonymous callers learn ready or not; the admin key also the checks.
    const ready = await fetch(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: 'ready' });
    const detailed = await fetch(`${base}/readyz`, { headers: auth(ADMIN_KEY) });
    expect(await detailed.json()).toMatchObject({ status: 'ready', checks: { redis: { ok: true }, 'destination:hospital': { ok: true } } });
    await closeFhir();
    const notReady = await fetch(`${base}/readyz`, { headers: auth(ADMIN_KEY) });
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toMatchObject({ checks: { redis: { ok: true }, 'destination:hospital': { ok: false } } });

    expect((await fetch(`${base}/admin/queues`)).status).toBe(401);
    expect((await fetch(`${base}/admin/queues`, { headers: auth(SITE_A_KEY) })).status).toBe(401);
    const board = await fetch(`${base}/admin/queues`, { headers: auth(ADMIN_KEY) });
    expect(board.status).toBe(200);
    expect(board.headers.get('content-type')).toContain('text/html');

    const doc = (await (await fetch(`${base}/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, Record<string, unknown>>;
      components: { securitySchemes: Record<string, unknown>; schemas: Record<string, unknown> };
    };
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.components.securitySchemes)).toEqual(expect.arrayContaining(['bearerAuth', 'apiKeyHeader']));
    // Every route the app serves (from express's own routing table) is in the document, and nothing more.
    const served = new Set<string>();
    const stack = (app as unknown as { router: { stack: { route?: { path: string; methods: Record<string, boolean> } }[] } }).router.stack;
    for (const layer of stack) {
      if (!layer.route) continue;
      for (const method of Object.keys(layer.route.methods)) served.add(`${method.toLowerCase()} ${layer.route.path.replace(/:(\w+)/g, '{$1}')}`);
    }
    served.add('get /admin/queues');
    const documented = new Set(Object.entries(doc.paths).flatMap(([path, ops]) => Object.keys(ops).filter((k) => k !== 'parameters').map((m) => `${m} ${path}`)));
    expect(served.size).toBeGreaterThan(10);
    expect([...served].sort()).toEqual([...documented].sort());
    for (const name of Object.values(doc.paths).flatMap((ops) => JSON.stringify(ops).match(/#\/components\/schemas\/\w+/g) ?? [])) {
      expect(doc.components.schemas).toHaveProperty(name.split('/').pop()!);
    }
  });

  it('loads keys from env and files, holding only hashes', async () => {
    const h = hashApiKey('secret');
    expect(h).toMatch(/^[0-9a-f]{64}$/);
    const fromEnv = ApiKeyStore.fromEnv({ TRIALBRIDGE_API_KEYS: ` site-a:${h} , site-b:${hashApiKey('other')}` });
    expect(fromEnv.siteOf('secret')).toBe('site-a');
    expect(fromEnv.siteOf('other')).toBe('site-b');
    expect(fromEnv.siteOf('nope')).toBeUndefined();
    const yamlFile = join(configDir, 'keys.yaml');
    await writeFile(yamlFile, `- site: site-c\n  keyHash: ${h}\n`);
    expect((await ApiKeyStore.fromFile(yamlFile)).siteOf('secret')).toBe('site-c');
    const jsonFile = join(configDir, 'keys.json');
    await writeFile(jsonFile, JSON.stringify({ keys: [{ site: 'site-d', keyHash: h.toUpperCase() }] }));
    expect((await ApiKeyStore.fromFile(jsonFile)).siteOf('secret')).toBe('site-d');
    expect(() => ApiKeyStore.fromEnvValue('site-a:not-a-hash')).toThrow(/entry 0/);
    expect(() => ApiKeyStore.fromEnvValue('site-a:not-a-hash')).not.toThrow(/not-a-hash/);
  });
});
