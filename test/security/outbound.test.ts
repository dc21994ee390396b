/**
 * Destinations come from configuration only: nothing in a submission (values, file names, headers, query
 * parameters, extra body keys) makes the service call another URL. A canary server counts every request it
 * gets while an export full of its URL is submitted, mapped and delivered to the configured FHIR server.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { silentLogger } from '../../src/log.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';

const KEY = `a-${randomUUID()}`;
let canary: Server;
let canaryUrl: string;
const canaryRequests: string[] = [];
let fhir: EmbeddedFhirServer;
let pipeline: QueuePipeline;
let app: ApiApp;
let server: Server;
let base: string;
let dir: string;
const submitted: SubmitResult[] = [];

beforeAll(async () => {
  canary = createServer((req, res) => {
    canaryRequests.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'content-type': 'application/fhir+json' }).end('{"resourceType":"OperationOutcome","issue":[]}');
  });
  await new Promise<void>((r) => canary.listen(0, '127.0.0.1', () => r()));
  canaryUrl = `http://127.0.0.1:${(canary.address() as AddressInfo).port}`;
  fhir = await startEmbeddedFhirServer();
  dir = await mkdtemp(join(tmpdir(), 'tb-outbound-'));
  await writeFile(
    join(dir, 'destinations.yaml'),
    ['destinations:', '  - name: hospital', '    kind: hospital', `    baseUrl: ${fhir.baseUrl}`, '    sites: [site-a]', '    retry: { attempts: 2, baseMs: 10, maxMs: 50 }', '    auth: { type: none }', ''].join('\n'),
  );
  const mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
  pipeline = new QueuePipeline({
    connection: { host: '127.0.0.1', port: 6379 },
    prefix: `{tb-outbound-${randomUUID()}}`,
    mappings: [mapping],
    destinations: loadDestinations(join(dir, 'destinations.yaml'), {}),
    validator: await defaultValidator(),
  });
  pipeline.startWorkers();
  app = createApp({ pipeline, apiKeys: new ApiKeyStore([{ site: 'site-a', keyHash: hashApiKey(KEY) }]), uploadDir: join(dir, 'uploads'), logger: silentLogger(), onSubmission: (r) => submitted.push(r) });
  server = await startServer(app, 0);
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await app.close();
  await pipeline.closeWorkers();
  await pipeline.obliterate();
  await pipeline.close();
  await fhir.close();
  await new Promise<void>((r) => canary.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

describe('outbound calls', () => {
  it('go only to the configured destination, whatever URLs a submission carries', async () => {
    const lines = (await readFile('examples/site-a/export.csv', 'utf8')).split('\n');
    // The canary's URL in every free-text, unit and visit cell, and as reference-like values.
    const planted = lines.map((line, i) => {
      if (i === 0 || line === '') return line;
      const c = line.split(',');
      if (line.includes('"')) return line;
      c[6] = `${canaryUrl}/Patient/1`;
      if (c[9] === '') c[9] = `${canaryUrl}/metadata`;
      if (c[19] === '') c[19] = `${canaryUrl}/fhir`;
      return c.join(',');
    });
    const form = new FormData();
    form.append('files', new Blob([planted.join('\n')]), 'export.csv');
    const res = await fetch(`${base}/v1/sites/site-a/submissions?destination=${encodeURIComponent(canaryUrl)}&baseUrl=${encodeURIComponent(canaryUrl)}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${KEY}`,
        'x-forwarded-host': new URL(canaryUrl).host,
        forwarded: `host=${new URL(canaryUrl).host}`,
        referer: canaryUrl,
        'x-destination': canaryUrl,
        'callback-url': canaryUrl,
      },
      body: form,
    });
    expect(res.status).toBe(202);
    await pipeline.waitForSubmission(submitted[0]);
    const counts = await pipeline.submission(submitted[0].submissionId);
    expect(counts.destinations.hospital.delivered).toBeGreaterThan(10);

    // A JSON submission naming another destination is refused outright.
    const json = await fetch(`${base}/v1/sites/site-a/submissions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ files: [{ name: 'export.csv', content: planted.join('\n') }], destinations: [{ name: 'x', baseUrl: canaryUrl }] }),
    });
    expect(json.status).toBe(400);

    // Replays and readiness probe what the configuration says, not what a request says.
    const letters = (await (await fetch(`${base}/v1/dead-letters?submission=${submitted[0].submissionId}&url=${encodeURIComponent(canaryUrl)}`, { headers: { authorization: `Bearer ${KEY}` } })).json()) as {
      deadLetters: { id: string }[];
    };
    expect((await fetch(`${base}/v1/submissions/${submitted[0].submissionId}/replay?destination=${encodeURIComponent(canaryUrl)}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` } })).status).toBe(202);
    expect(letters.deadLetters.length).toBeGreaterThan(0);
    const ready = await fetch(`${base}/readyz?destination=${encodeURIComponent(canaryUrl)}`, { headers: { host: new URL(canaryUrl).host } });
    // Anonymous: ready or not, naming nothing.
    expect(Object.keys((await ready.json()) as Record<string, unknown>)).toEqual(['status']);

    expect(canaryRequests).toEqual([]);
  });
});
