/**
 * `GET /v1/submissions/{id}/subjects` through the real API, queue and embedded servers: each subject's state
 * per destination, its dead letters' ids, usable in the API's own URLs exactly as returned (they hold `|` and
 * `%2E`), and nothing for another site.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import type { SubmissionSubjects } from '../../src/api/subjects.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { isRedisReachable, QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';
import { destinationsFrom, mapSampleSites, type SampleSites } from '../support/sample-sites.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const SITE_A_KEY = `a-${randomUUID()}`;
const SITE_B_KEY = `b-${randomUUID()}`;
const redisUp = await isRedisReachable(REDIS);

let sample: SampleSites;
let hospital: EmbeddedFhirServer;
let strict: EmbeddedFhirServer;
let pipeline: QueuePipeline;
let app: ApiApp;
let server: Server;
let base: string;
let uploadDir: string;
let submission: string;
let answer: SubmissionSubjects;

const auth = (key: string) => ({ authorization: `Bearer ${key}` });

beforeAll(async () => {
  if (!redisUp) return;
  sample = await mapSampleSites();
  hospital = await startEmbeddedFhirServer();
  // Refuses every subject's transaction (more than 8 conditional entries): each one a delivery dead letter.
  strict = await startEmbeddedFhirServer({ medplumTransactionLimits: true });
  const destinations = await destinationsFrom([
    ...['  - name: hospital', '    kind: hospital', `    baseUrl: ${hospital.baseUrl}`, '    sites: [site-a]', '    auth: { type: none }'],
    ...['  - name: strict', '    kind: registry', `    baseUrl: ${strict.baseUrl}`, '    sites: [site-a]', '    transactions: true', '    atomic: true', '    auth: { type: none }'],
    ...['  - name: other', '    kind: registry', `    baseUrl: ${hospital.baseUrl}`, '    sites: [site-b]', '    auth: { type: none }'],
    // Takes only a resource type the trial never makes: nothing of any subject goes there.
    ...['  - name: devices', '    kind: registry', `    baseUrl: ${hospital.baseUrl}`, '    sites: [site-a]', '    resourceTypes: [Device]', '    auth: { type: none }'],
  ]);
  pipeline = new QueuePipeline({ connection: REDIS, prefix: `{tb-subjects-${randomUUID().slice(0, 8)}}`, mappings: sample.mappings, destinations, validator: sample.validator });
  pipeline.startWorkers();
  const submitted: SubmitResult[] = [];
  uploadDir = await mkdtemp(join(tmpdir(), 'tb-subjects-uploads-'));
  app = createApp({
    pipeline,
    apiKeys: new ApiKeyStore([
      { site: 'site-a', keyHash: hashApiKey(SITE_A_KEY) },
      { site: 'site-b', keyHash: hashApiKey(SITE_B_KEY) },
    ]),
    uploadDir,
    checkDestinations: false,
    onSubmission: (r) => submitted.push(r),
  });
  server = await startServer(app, 0);
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const form = new FormData();
  form.append('files', new Blob([await readFile('examples/site-a/export.csv')], { type: 'text/csv' }), 'export.csv');
  const accepted = (await (await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: auth(SITE_A_KEY), body: form })).json()) as { id: string };
  submission = accepted.id;
  await pipeline.waitForSubmission(submitted[0]);
  const response = await fetch(`${base}/v1/submissions/${submission}/subjects`, { headers: auth(SITE_A_KEY) });
  expect(response.status).toBe(200);
  answer = (await response.json()) as SubmissionSubjects;
}, 120_000);

afterAll(async () => {
  if (!redisUp) return;
  await new Promise<void>((resolve) => {
    server?.close(() => resolve());
    server?.closeAllConnections();
  });
  await app?.close();
  await pipeline?.closeWorkers();
  await pipeline?.obliterate();
  await pipeline?.close();
  await hospital?.close();
  await strict?.close();
  if (uploadDir) await rm(uploadDir, { recursive: true, force: true });
});

describe.runIf(redisUp)('GET /v1/submissions/{id}/subjects', () => {
  it("lists each subject's state at each destination of its site", async () => {
    const counters = await pipeline.submission(submission);
    const mapped = sample.exports[0].bundles.map((b) => b.subject).sort();
    expect(answer.site).toBe('site-a');
    // The destination of site-b's subjects is not one of this submission's.
    expect(new Set(answer.subjects.map((s) => s.destination))).toEqual(new Set(['devices', 'hospital', 'strict']));
    const at = (destination: string, state: string) => answer.subjects.filter((s) => s.destination === destination && s.state === state).map((s) => s.subject);
    expect(at('hospital', 'delivered').sort()).toEqual(mapped);
    expect(at('strict', 'delivered')).toEqual([]);
    // Every mapped subject was refused by the strict server, each with its own dead letter.
    const refused = answer.subjects.filter((s) => s.destination === 'strict' && s.state === 'dead-lettered' && mapped.includes(s.subject));
    expect(refused.map((s) => s.subject).sort()).toEqual(mapped);
    const letters = await pipeline.deadLetters.list(submission);
    for (const s of refused) {
      expect(s.deadLetters).toHaveLength(1);
      const letter = letters.find((l) => l.id === s.deadLetters![0])!;
      expect([letter.stage, letter.destination, letter.subject]).toEqual(['deliver', 'strict', s.subject]);
    }
    expect(at('devices', 'not-for-destination').sort()).toEqual(mapped);
    // A subject every record of which was rejected is held back at every destination by its mapping dead letters.
    expect(counters.subjectsRejected).toBeGreaterThan(0);
    const rejected = answer.subjects.filter((s) => !mapped.includes(s.subject));
    expect(rejected).toHaveLength(counters.subjectsRejected * 3);
    for (const s of rejected) {
      expect(s.state).toBe('dead-lettered');
      for (const id of s.deadLetters!) expect(letters.find((l) => l.id === id)?.stage).toBe('map');
    }
    expect(answer.counts).toEqual({ delivered: mapped.length, 'dead-lettered': mapped.length + rejected.length, pending: 0, 'not-for-destination': mapped.length });
    expect(answer.subjects.length).toBe(counters.subjects * 3);
  });

  it('returns dead-letter ids that work as they are in its own URLs, and encoded once more', async () => {
    const ids = answer.subjects.flatMap((s) => s.deadLetters ?? []);
    const mapping = ids.find((id) => id.includes('|') && id.includes('%2E'));
    const delivery = ids.find((id) => id.startsWith('dlv.'));
    expect(mapping).toBeDefined();
    expect(delivery).toBeDefined();
    for (const id of [mapping!, delivery!]) {
      for (const path of [id, encodeURIComponent(id)]) {
        const shown = await fetch(`${base}/v1/dead-letters/${path}`, { headers: auth(SITE_A_KEY) });
        expect(shown.status, path).toBe(200);
        expect(((await shown.json()) as { id: string }).id).toBe(id);
        expect((await fetch(`${base}/v1/dead-letters/${path}`, { headers: auth(SITE_B_KEY) })).status).toBe(404);
      }
    }
    // The same id with its %2E decoded names no dead letter.
    expect((await fetch(`${base}/v1/dead-letters/${mapping!.replaceAll('%2E', '.')}`, { headers: auth(SITE_A_KEY) })).status).toBe(404);
    const replay = await fetch(`${base}/v1/dead-letters/${delivery}/replay`, { method: 'POST', headers: auth(SITE_A_KEY) });
    expect(replay.status).toBe(202);
    const replayed = (await replay.json()) as { replayed: string[]; jobs: string[] };
    expect(replayed.replayed).toEqual([delivery]);
    // Refused again by the strict server: dead-lettered again, under the replay's own dead letter.
    await pipeline.waitForJobs(replayed.jobs.map((jobId) => ({ destination: 'strict', jobId })));
  });

  it('gives a re-submitted, unchanged export the states of the submission that stands for it', async () => {
    const form = new FormData();
    form.append('files', new Blob([await readFile('examples/site-a/export.csv')], { type: 'text/csv' }), 'export.csv');
    const again = (await (await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: auth(SITE_A_KEY), body: form })).json()) as { id: string; queued: number };
    expect(again.queued).toBe(0);
    const get = async (id: string) => ((await (await fetch(`${base}/v1/submissions/${id}/subjects`, { headers: auth(SITE_A_KEY) })).json()) as SubmissionSubjects).subjects;
    const [first, second] = [await get(submission), await get(again.id)];
    expect(second.map(({ sameAs, ...row }) => [sameAs, row])).toEqual(first.map((row) => [submission, row]));
    expect(second.filter((s) => s.state === 'dead-lettered').length).toBeGreaterThan(0);
  });

  it('is refused to another site exactly as the submission itself is', async () => {
    const other = (await fetch(`${base}/v1/submissions/${submission}/subjects`, { headers: auth(SITE_B_KEY) })).status;
    expect(other).toBeGreaterThanOrEqual(403);
    expect(other).toBe((await fetch(`${base}/v1/submissions/${submission}`, { headers: auth(SITE_B_KEY) })).status);
    expect((await fetch(`${base}/v1/submissions/${randomUUID()}/subjects`, { headers: auth(SITE_A_KEY) })).status).toBe(404);
    expect((await fetch(`${base}/v1/submissions/${submission}/subjects`)).status).toBe(401);
  });
});
