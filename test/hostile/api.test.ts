/**
 * Hostile and bad input through the HTTP API (POST /v1/sites/{site}/submissions), against a real Redis: every
 * input of inputs.ts gets a clear 4xx naming the file (and line), or a 202 whose dead letters name exactly the
 * bad rows; bodies that are too big, too deep, duplicated or carrying extra keys are refused; a gigabyte
 * upload is cut off at the limit without the server's memory following it; the server answers afterwards.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { createLogger, silentLogger } from '../../src/log.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';
import { HOSTILE_INPUTS, SITE_A_TEXT, type HostileInput } from './inputs.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const KEY_A = `a-${randomUUID()}`;
const KEY_B = `b-${randomUUID()}`;
const DICTIONARY = await readFile('examples/site-b/data-dictionary.json');

interface Running {
  readonly base: string;
  readonly port: number;
  readonly pipeline: QueuePipeline;
  readonly uploadDir: string;
  close(): Promise<void>;
}

let mappings: CompiledMapping[];
let configDir: string;

beforeAll(async () => {
  mappings = [await compileMapping(await loadMapping('mappings/site-a.yaml')), await compileMapping(await loadMapping('mappings/site-b.yaml'))];
  configDir = await mkdtemp(join(tmpdir(), 'tb-hostile-api-'));
});

afterAll(async () => {
  await rm(configDir, { recursive: true, force: true });
});

/** The API over a pipeline without workers: what a submission is refused for, or rejects while reading, shows at once. */
async function start(bodyLimit?: string, logs?: { lines: string[] }): Promise<Running> {
  const destinations = join(configDir, `${randomUUID()}.yaml`);
  // Never called: no worker runs here.
  await writeFile(destinations, ['destinations:', '  - name: hospital', '    kind: hospital', '    baseUrl: http://127.0.0.1:9/fhir', "    sites: '*'", '    auth: { type: none }', ''].join('\n'));
  const pipeline = new QueuePipeline({ connection: REDIS, prefix: `{tb-hostile-${randomUUID()}}`, mappings, destinations: loadDestinations(destinations, {}), validator: await defaultValidator() });
  const uploadDir = await mkdtemp(join(tmpdir(), 'tb-hostile-uploads-'));
  const app: ApiApp = createApp({
    pipeline,
    apiKeys: new ApiKeyStore([
      { site: 'site-a', keyHash: hashApiKey(KEY_A) },
      { site: 'site-b', keyHash: hashApiKey(KEY_B) },
    ]),
    uploadDir,
    logger: logs ? createLogger({ destination: sink(logs.lines) }) : silentLogger(),
    ...(bodyLimit ? { bodyLimit } : {}),
  });
  const server: Server = await startServer(app, 0);
  const port = (server.address() as AddressInfo).port;
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    pipeline,
    uploadDir,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await app.close();
      await pipeline.obliterate();
      await pipeline.close();
      await rm(uploadDir, { recursive: true, force: true });
    },
  };
}

function sink(lines: string[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      callback();
    },
  });
}

const keyOf = (site: string) => (site === 'site-a' ? KEY_A : KEY_B);

function form(input: Pick<HostileInput, 'site' | 'file' | 'content'>): FormData {
  const body = new FormData();
  body.append('files', new Blob([new Uint8Array(input.content)]), input.file);
  if (input.site === 'site-b') body.append('files', new Blob([new Uint8Array(DICTIONARY)]), 'data-dictionary.json');
  return body;
}

interface Accepted {
  id: string;
  subjects: number;
  queued: number;
  recordsRejected: number;
}

async function submit(api: Running, input: Pick<HostileInput, 'site' | 'file' | 'content'>) {
  const res = await fetch(`${api.base}/v1/sites/${input.site}/submissions`, { method: 'POST', headers: { authorization: `Bearer ${keyOf(input.site)}` }, body: form(input) });
  return { status: res.status, body: (await res.json()) as Accepted & { error?: { code: string; message: string; file?: string; line?: number } } };
}

async function healthy(api: Running): Promise<boolean> {
  const res = await fetch(`${api.base}/healthz`);
  return res.status === 200 && ((await res.json()) as { status: string }).status === 'ok';
}

describe('hostile exports through the API', () => {
  let api: Running;
  const baselines = new Map<string, Accepted>();

  beforeAll(async () => {
    api = await start();
    for (const site of ['site-a', 'site-b'] as const) {
      const file = site === 'site-a' ? 'export.csv' : 'records.json';
      const { status, body } = await submit(api, { site, file, content: await readFile(`examples/${site}/${file}`) });
      expect(status).toBe(202);
      baselines.set(site, body);
    }
  });

  afterAll(async () => {
    await api.close();
  });

  it.each(HOSTILE_INPUTS.map((input) => [input.name, input] as const))('%s', async (_name, input) => {
    const { status, body } = await submit(api, input);
    const baseline = baselines.get(input.site)!;
    const expectation = input.expect;
    if (expectation.kind === 'file') {
      expect(status).toBe(expectation.tooLarge ? 413 : 422);
      expect(body.error).toMatchObject({ code: 'unreadable_export', file: input.file });
      expect(body.error!.message).toMatch(expectation.reason);
      if (expectation.line !== undefined) expect(body.error!.line).toBe(expectation.line);
      expect(body.error!.message).not.toMatch(/Jane Doe|FATIGUE|A001/);
    } else {
      expect(status).toBe(202);
      if (expectation.kind === 'nothing') {
        expect(body).toMatchObject({ subjects: 0, queued: 0, recordsRejected: 0 });
      } else {
        const rows = expectation.kind === 'rows' ? expectation.rows : [];
        expect(body.subjects).toBe(baseline.subjects);
        expect(body.recordsRejected).toBe(baseline.recordsRejected + rows.length);
        const letters = (await (await fetch(`${api.base}/v1/dead-letters?submission=${body.id}`, { headers: { 'x-api-key': keyOf(input.site) } })).json()) as {
          deadLetters: { stage: string; location?: { file: string; row: number; field: string }; reason: string }[];
        };
        for (const want of rows) {
          const letter = letters.deadLetters.find((l) => l.location?.row === want.row && l.location.field === want.field);
          expect(letter, `dead letter for row ${want.row}`).toMatchObject({ stage: 'read', location: { file: input.file } });
          expect(letter!.reason).toMatch(want.reason);
        }
      }
    }
    expect(await healthy(api)).toBe(true);
    expect(await readdir(api.uploadDir)).toEqual([]);
  });

  it('refuses JSON bodies with duplicate keys, deep nesting, extra keys or that are not JSON, naming why', async () => {
    const post = (body: string, type = 'application/json') =>
      fetch(`${api.base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}`, 'content-type': type }, body });
    const file = JSON.stringify({ name: 'export.csv', content: SITE_A_TEXT });
    const cases: [string, string, number, string, RegExp][] = [
      ['duplicate "files"', `{"files":[${file}],"files":[]}`, 400, 'malformed_json', /duplicate key 'files' in the top level/],
      ['duplicate "content"', `{"files":[{"name":"export.csv","content":"x","content":${JSON.stringify(SITE_A_TEXT)}}]}`, 400, 'malformed_json', /duplicate key 'content' in files\[0\]/],
      ['100 000 levels deep', `{"files":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, 400, 'malformed_json', /nested deeper than 8 levels/],
      ['a destination URL alongside', `{"files":[${file}],"destination":"http://127.0.0.1:9/steal"}`, 400, 'malformed_body', /unknown key 'destination'/],
      ['a URL in a file entry', `{"files":[{"name":"export.csv","content":"x","url":"http://127.0.0.1:9/"}]}`, 400, 'malformed_body', /files\[0\]: unknown key 'url'/],
      ['not JSON, with a name in it', '{"files": Jane Doe}', 400, 'malformed_json', /not valid JSON: unexpected character/],
      ['cut short', '{"files": [{"name": "Jane Doe', 400, 'malformed_json', /not valid JSON: .*line 1/],
      ['a path as file name', '{"files":[{"name":"../../etc/passwd","content":"x"}]}', 400, 'bad_file_name', /plain names/],
    ];
    for (const [what, body, status, code, message] of cases) {
      const res = await post(body);
      expect(res.status, what).toBe(status);
      const answer = (await res.json()) as { error: { code: string; message: string } };
      expect(answer.error.code, what).toBe(code);
      expect(answer.error.message, what).toMatch(message);
      expect(answer.error.message).not.toContain('Jane Doe');
    }
    const text = await post('files=export.csv', 'text/plain');
    expect(text.status).toBe(415);
    expect(await healthy(api)).toBe(true);
    expect(await readdir(api.uploadDir)).toEqual([]);
  });

  it('refuses multipart fields other than files, and a file name given twice', async () => {
    const withField = form({ site: 'site-a', file: 'export.csv', content: Buffer.from(SITE_A_TEXT) });
    withField.append('destination', 'http://127.0.0.1:9/steal');
    const res = await fetch(`${api.base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}` }, body: withField });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('bad_upload');
    const twice = form({ site: 'site-a', file: 'export.csv', content: Buffer.from(SITE_A_TEXT) });
    twice.append('files', new Blob([SITE_A_TEXT]), 'export.csv');
    const dup = await fetch(`${api.base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}` }, body: twice });
    expect(dup.status).toBe(400);
    expect(await dup.json()).toMatchObject({ error: { code: 'bad_file_name', message: "file name 'export.csv' is given twice" } });
    expect(await readdir(api.uploadDir)).toEqual([]);
  });
});

interface StreamResult {
  readonly status: number | undefined;
  readonly body: string;
  readonly sent: number;
  readonly ms: number;
}

/**
 * Uploads `total` bytes of CSV as one multipart file, generated as it goes (one 64 KiB buffer, reused), either
 * declaring the length or chunked. Stops sending once the server answers or closes the connection.
 */
function streamUpload(api: Running, total: number, declareLength: boolean, kind: 'multipart' | 'json' = 'multipart'): Promise<StreamResult> {
  const boundary = `tb${randomUUID()}`;
  const head = Buffer.from(
    kind === 'json' ? '{"files":[{"name":"export.csv","content":"' : `--${boundary}\r\nContent-Disposition: form-data; name="files"; filename="export.csv"\r\nContent-Type: text/csv\r\n\r\n`,
  );
  const tail = Buffer.from(kind === 'json' ? '"}]}' : `\r\n--${boundary}--\r\n`);
  const chunk = Buffer.from('R00001,A001,AE,23/02/2013,01/03/2013,NAUS,nausea,,,,,1,N,5FU,UNLIKELY,RECOVERED,,,,\n'.repeat(800)).subarray(0, 64 * 1024);
  const started = performance.now();
  return new Promise((resolve) => {
    let sent = 0;
    let status: number | undefined;
    let body = '';
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      resolve({ status, body, sent, ms: performance.now() - started });
    };
    const req = request({
      host: '127.0.0.1',
      port: api.port,
      method: 'POST',
      path: '/v1/sites/site-a/submissions',
      headers: {
        authorization: `Bearer ${KEY_A}`,
        'content-type': kind === 'json' ? 'application/json' : `multipart/form-data; boundary=${boundary}`,
        ...(declareLength ? { 'content-length': String(head.length + total + tail.length) } : { 'transfer-encoding': 'chunked' }),
      },
    });
    req.on('response', (res) => {
      status = res.statusCode;
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', finish);
      res.on('error', finish);
    });
    req.on('error', () => {
      // The server cut the connection after answering (or before we read the answer): status says which.
      if (status === undefined) finish();
    });
    req.on('close', () => setImmediate(() => status === undefined && finish()));
    const pump = () => {
      while (status === undefined && !req.destroyed && sent < total) {
        const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
        sent += part.length;
        if (!req.write(part)) return void req.once('drain', pump);
      }
      if (status === undefined && !req.destroyed && sent >= total) req.end(tail);
    };
    req.write(head);
    pump();
  });
}

describe('upload size limits', () => {
  const GiB = 1024 ** 3;

  it('answers 413 to a 1 GiB upload that declares its length, without reading it', async () => {
    const api = await start();
    try {
      const result = await streamUpload(api, GiB, true);
      expect(result.status).toBe(413);
      expect(JSON.parse(result.body)).toMatchObject({ error: { code: 'payload_too_large' } });
      expect(result.ms).toBeLessThan(5000);
      expect(await healthy(api)).toBe(true);
      expect(await readdir(api.uploadDir)).toEqual([]);
    } finally {
      await api.close();
    }
  });

  it('cuts off a chunked 1 GiB upload at the 50 MB default limit: 413, memory flat, the server still answers', async () => {
    const logs = { lines: [] as string[] };
    const api = await start(undefined, logs);
    try {
      global.gc?.();
      const before = process.memoryUsage().rss;
      const result = await streamUpload(api, GiB, false);
      const grown = process.memoryUsage().rss - before;
      expect(result.status).toBe(413);
      expect(JSON.parse(result.body)).toMatchObject({ error: { code: 'payload_too_large' } });
      // Cut off near the limit: not the whole gigabyte read, and not held in memory.
      expect(result.sent).toBeLessThan(GiB / 4);
      expect(grown).toBeLessThan(150 * 1024 * 1024);
      console.info(`chunked 1 GiB upload: 413 after ${(result.sent / 1024 ** 2).toFixed(0)} MiB sent in ${result.ms.toFixed(0)} ms; RSS grew ${(grown / 1024 ** 2).toFixed(0)} MiB`);
      expect(await healthy(api)).toBe(true);
      await expect.poll(() => readdir(api.uploadDir), { timeout: 5000 }).toEqual([]);
      // The refusal is audited as what it was; no error is logged for the connection the server cut.
      expect(logs.lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([
        expect.objectContaining({ channel: 'audit', event: 'request.refused', status: 413, code: 'payload_too_large', keyId: 'site-a#1' }),
      ]);
    } finally {
      await api.close();
    }
  });

  it('with a lowered limit refuses a chunked upload just over it, and accepts one just under', async () => {
    const api = await start('64kb');
    try {
      const over = await streamUpload(api, 80 * 1024, false);
      expect(over.status).toBe(413);
      const overJson = await streamUpload(api, 64 * 1024 ** 2, false, 'json');
      expect(overJson.status).toBe(413);
      const small = SITE_A_TEXT.split('\n').slice(0, 40).join('\n') + '\n';
      const under = await submit(api, { site: 'site-a', file: 'export.csv', content: Buffer.from(small) });
      expect(under.status).toBe(202);
      expect(await healthy(api)).toBe(true);
    } finally {
      await api.close();
    }
  });
});
