/**
 * Values in reasons, through the API and `dlq` as an attacker plants them: a patient's name in a dose-unit
 * column of an export, and a destination whose OperationOutcome quotes a birth date and a name wrapped in
 * terminal escapes (OSC title, clear screen, a hyperlink). The submission status, the dead-letter routes,
 * `dlq list` and `dlq show` name file, row, field, a reason code and a reason without the values; escapes
 * from outside reach the terminal escaped. The full text stays for the engineer: `dlq rejects` writes it to a
 * file.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { silentLogger } from '../../src/log.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';

const run = promisify(execFile);
const KEY = `a-${randomUUID()}`;
const NAME = 'Wilhelmina Quillfeather';
const ESC = '\u001b';
const SERVER_TEXT = `Patient.birthDate 1940-04-10 of ${NAME} is invalid ${ESC}]0;owned${ESC}\\${ESC}[2J${ESC}]8;;http://127.0.0.1:9/x${ESC}\\click${ESC}]8;;${ESC}\\`;
/** What must never leave through the API or the terminal. */
const SECRETS = ['Wilhelmina', 'Quillfeather', '1940-04-10', '10/04/1940', ESC];

let dir: string;
let hostile: Server;
let pipeline: QueuePipeline;
let app: ApiApp;
let server: Server;
let base: string;
const submitted: SubmitResult[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-reasons-'));
  // A FHIR server that refuses every transaction, quoting the data back wrapped in escapes.
  hostile = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const outcome = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: `invalid${ESC}[31m`, diagnostics: SERVER_TEXT, expression: [`Patient.where(birthDate='1940-04-10')`] }] };
      res.writeHead(422, { 'content-type': 'application/fhir+json' }).end(JSON.stringify(outcome));
    });
  });
  await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
  const destinations = join(dir, 'destinations.yaml');
  await writeFile(
    destinations,
    [
      'destinations:',
      '  - name: hospital',
      '    kind: hospital',
      `    baseUrl: http://127.0.0.1:${(hostile.address() as AddressInfo).port}/fhir`,
      "    sites: '*'",
      '    transactions: true',
      '    retry: { attempts: 1, requestAttempts: 1, baseMs: 10, maxMs: 20 }',
      '    auth: { type: none }',
      '',
    ].join('\n'),
  );
  pipeline = new QueuePipeline({
    connection: { host: '127.0.0.1', port: 6379 },
    prefix: `{tb-reasons-${randomUUID()}}`,
    mappings: [await compileMapping(await loadMapping('mappings/site-a.yaml'))],
    destinations: loadDestinations(destinations, {}),
    validator: await defaultValidator(),
  });
  pipeline.startWorkers();
  app = createApp({ pipeline, apiKeys: new ApiKeyStore([{ site: 'site-a', keyHash: hashApiKey(KEY) }]), uploadDir: join(dir, 'uploads'), logger: silentLogger(), onSubmission: (r) => submitted.push(r) });
  server = await startServer(app, 0);
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await app.close();
  await pipeline.closeWorkers();
  await pipeline.obliterate();
  await pipeline.close();
  hostile.closeAllConnections();
  await new Promise<void>((resolve) => hostile.close(() => resolve()));
  await rm(dir, { recursive: true, force: true });
});

const cli = (...args: string[]) => run(process.execPath, ['src/cli/main.ts', 'dlq', ...args, '--prefix', pipeline.names.prefix], { env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:6379' } });

describe('reasons without values', () => {
  it('API answers and dlq output name where and why, never the planted name, the birth date or raw escapes', async () => {
    // The name in the dose-unit column of the radiotherapy row (a unit the mapping checks).
    const text = (await readFile('examples/site-a/export.csv', 'utf8')).replace(/^(R00004,A001,RT,[^,]*,[^,]*,[^,]*,[^,]*,[^,]*,)Gy,/m, `$1${NAME},`);
    expect(text).toContain(NAME);
    const form = new FormData();
    form.append('files', new Blob([text], { type: 'text/csv' }), 'export.csv');
    const res = await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body: form });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as { id: string };
    await pipeline.waitForSubmission(submitted[0]);

    const get = async (path: string) => {
      const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${KEY}` } });
      expect(r.status, path).toBe(200);
      return r.text();
    };
    const status = await get(`/v1/submissions/${id}`);
    const listed = await get(`/v1/dead-letters?submission=${id}`);
    const letters = (JSON.parse(listed) as { deadLetters: { id: string; stage: string; code: string; reason: string; location?: { file: string; row: number; field: string; rule?: string } }[] }).deadLetters;
    const unit = letters.find((l) => l.location?.row === 5 && l.stage === 'map');
    // Where and why: file, row, field and the mapping rule whose resource the value fed.
    expect(unit, 'the dose-unit reject of row 5').toMatchObject({ code: 'record_rejected', location: { file: 'export.csv', row: 5, field: '%doseUnit', rule: 'radiotherapy' } });
    expect((JSON.parse(status) as { rejects: { row: number; field: string; rule?: string }[] }).rejects).toContainEqual(expect.objectContaining({ row: 5, field: '%doseUnit', rule: 'radiotherapy' }));
    const rejected = letters.filter((l) => l.stage === 'deliver');
    expect(rejected.length).toBeGreaterThan(0);
    for (const l of rejected) expect(l).toMatchObject({ code: 'delivery_rejected', reason: expect.stringMatching(/the destination rejected the bundle \(HTTP 422\)/) });
    const shown = await Promise.all(letters.map((l) => get(`/v1/dead-letters/${encodeURIComponent(l.id)}`)));
    for (const answer of [status, listed, ...shown]) for (const secret of SECRETS) expect(answer).not.toContain(secret);

    const list = await cli('list', '--submission', id);
    const handle = list.stdout.split('\n').find((l) => l.includes('  deliver  '))!.split(' ')[0];
    const show = await cli('show', handle);
    for (const out of [list.stdout, list.stderr, show.stdout, show.stderr]) for (const secret of SECRETS) expect(out).not.toContain(secret);
    expect(list.stdout).toMatch(/export\.csv#5 field %doseUnit rule radiotherapy .*record_rejected/);
    // The server's issue code is printed, its escape shown as text.
    expect(show.stdout).toContain('issue       error invalid\\x1b[31m');

    // The engineer's copy keeps the full text.
    const rejectsFile = join(dir, 'rejects.jsonl');
    await cli('rejects', '--submission', id, '--out', rejectsFile);
    const rejects = await readFile(rejectsFile, 'utf8');
    expect(rejects).toContain('Quillfeather');
    expect(rejects).toContain('1940-04-10');
  });
});
