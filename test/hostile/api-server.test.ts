/**
 * The API as a hostile client meets it, round 2: control characters in file names, ids of another site,
 * anonymous readiness probes, Bull Board, slow and many connections, and a 50 MB upload read while `/healthz`
 * must go on answering. Real Redis, the API on loopback, no workers unless said.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp, type ServerLimits } from '../../src/api/app.ts';
import { ApiKeyStore, hashApiKey } from '../../src/api/keys.ts';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { createLogger } from '../../src/log.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const KEY_A = `a-${randomUUID()}`;
const KEY_B = `b-${randomUUID()}`;
const ADMIN = `admin-${randomUUID()}`;
const SITE_A = await readFile('examples/site-a/export.csv', 'utf8');

let mappings: CompiledMapping[];
let validator: ResourceValidator;
let configDir: string;

beforeAll(async () => {
  mappings = [await compileMapping(await loadMapping('mappings/site-a.yaml')), await compileMapping(await loadMapping('mappings/site-b.yaml'))];
  validator = await defaultValidator();
  configDir = await mkdtemp(join(tmpdir(), 'tb-hostile-server-'));
});

afterAll(async () => {
  await rm(configDir, { recursive: true, force: true });
});

interface Running {
  readonly base: string;
  readonly port: number;
  readonly pipeline: QueuePipeline;
  readonly uploadDir: string;
  readonly audit: string[];
  close(): Promise<void>;
}

interface StartOptions {
  readonly destinationUrl?: string;
  readonly queueAdmin?: boolean;
  readonly limits?: ServerLimits;
}

function sink(lines: string[]): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      callback();
    },
  });
}

async function start(options: StartOptions = {}): Promise<Running> {
  const destinations = join(configDir, `${randomUUID()}.yaml`);
  const baseUrl = options.destinationUrl ?? 'http://127.0.0.1:9/fhir';
  await writeFile(destinations, ['destinations:', '  - name: hospital-secret-name', '    kind: hospital', `    baseUrl: ${baseUrl}`, "    sites: '*'", '    auth: { type: none }', ''].join('\n'));
  const prefix = `{tb-hostile-server-${randomUUID()}}`;
  const pipeline = new QueuePipeline({ connection: REDIS, prefix, mappings, destinations: loadDestinations(destinations, {}), validator });
  const audit: string[] = [];
  const uploadDir = await mkdtemp(join(configDir, 'uploads-'));
  const app: ApiApp = createApp({
    pipeline,
    apiKeys: new ApiKeyStore([
      { site: 'site-a', keyHash: hashApiKey(KEY_A) },
      { site: 'site-b', keyHash: hashApiKey(KEY_B) },
    ]),
    adminKeyHash: hashApiKey(ADMIN),
    uploadDir,
    logger: createLogger({ destination: sink([]) }),
    audit: createLogger({ destination: sink(audit) }),
    ...(options.queueAdmin ? { queueAdmin: true } : {}),
  });
  const server: Server = await startServer(app, 0, '127.0.0.1', options.limits);
  const port = (server.address() as AddressInfo).port;
  return {
    base: `http://127.0.0.1:${port}`,
    port,
    pipeline,
    uploadDir,
    audit,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await app.close();
      await pipeline.obliterate();
      await pipeline.close();
    },
  };
}

const auth = (key: string) => ({ authorization: `Bearer ${key}` });

async function submitCsv(api: Running, name: string, content: string, key = KEY_A): Promise<{ status: number; body: Record<string, unknown> }> {
  const form = new FormData();
  form.append('files', new Blob([content], { type: 'text/csv' }), name);
  const res = await fetch(`${api.base}/v1/sites/site-a/submissions`, { method: 'POST', headers: auth(key), body: form });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** A multipart body written by hand: fetch's FormData would escape the characters under test. */
async function rawMultipart(api: Running, filename: string): Promise<{ status: number; body: { error?: { code: string; message: string } } }> {
  const boundary = `tb${randomUUID()}`;
  const body = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="files"; filename="`),
    Buffer.from(filename, 'latin1'),
    Buffer.from(`"\r\nContent-Type: text/csv\r\n\r\n${SITE_A}\r\n--${boundary}--\r\n`),
  ]);
  const res = await fetch(`${api.base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { ...auth(KEY_A), 'content-type': `multipart/form-data; boundary=${boundary}` }, body });
  return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string } } };
}

describe('file names with control characters', () => {
  let api: Running;
  beforeAll(async () => {
    api = await start();
  });
  afterAll(async () => {
    await api.close();
  });

  it('answers 400 naming the problem to NUL and ESC in multipart file names, and to ESC or a newline in JSON names', async () => {
    // Some break the part's header for the multipart parser itself (bad_upload), the others reach the name check.
    for (const name of ['export\u0000.csv', 'export\u001b[31m.csv', '\u001b]0;owned\u0007export.csv']) {
      const { status, body } = await rawMultipart(api, name);
      expect(status, JSON.stringify(name)).toBe(400);
      expect(body.error).toMatchObject({ code: expect.stringMatching(/^(bad_upload|bad_file_name)$/), message: expect.stringMatching(/control characters/) });
    }
    for (const name of ['export\u001b[2J.csv', 'export.csv\n{"event":"forged"}', 'exp\u202eort.csv']) {
      const res = await fetch(`${api.base}/v1/sites/site-a/submissions`, {
        method: 'POST',
        headers: { ...auth(KEY_A), 'content-type': 'application/json' },
        body: JSON.stringify({ files: [{ name, content: SITE_A }] }),
      });
      expect(res.status, JSON.stringify(name)).toBe(400);
      expect(await res.json()).toMatchObject({ error: { code: 'bad_file_name', message: expect.stringMatching(/control characters/) } });
    }
    // A plain name still goes through.
    expect((await submitCsv(api, 'export.csv', SITE_A)).status).toBe(202);
  });
});

describe('ids of another site', () => {
  let api: Running;
  beforeAll(async () => {
    api = await start();
  });
  afterAll(async () => {
    await api.close();
  });

  it('answer 404 on every route taking an id, exactly as an unknown id does', async () => {
    const { status, body } = await submitCsv(api, 'export.csv', SITE_A);
    expect(status).toBe(202);
    const id = String(body.id);
    const letters = (await (await fetch(`${api.base}/v1/dead-letters?submission=${id}`, { headers: auth(KEY_A) })).json()) as { deadLetters: { id: string }[] };
    expect(letters.deadLetters.length).toBeGreaterThan(0);
    const letter = encodeURIComponent(letters.deadLetters[0].id);
    const unknown = randomUUID();
    const routes: [string, (x: string) => string][] = [
      ['GET', (x) => `/v1/submissions/${x}`],
      ['POST', (x) => `/v1/submissions/${x}/replay`],
      ['GET', (x) => `/v1/dead-letters?submission=${x}`],
    ];
    const letterRoutes: [string, (x: string) => string][] = [
      ['GET', (x) => `/v1/dead-letters/${x}`],
      ['POST', (x) => `/v1/dead-letters/${x}/replay`],
    ];
    const answer = async (method: string, path: string) => {
      const res = await fetch(`${api.base}${path}`, { method, headers: auth(KEY_B) });
      // The answer may repeat the id asked for: the same for both, once the id itself is set aside.
      return { status: res.status, body: (await res.text()).replaceAll(letter, 'ID').replaceAll(decodeURIComponent(letter), 'ID').replaceAll(id, 'ID').replaceAll(unknown, 'ID') };
    };
    const cases = [...routes.map(([m, p]) => [m, p(id), p(unknown)] as const), ...letterRoutes.map(([m, p]) => [m, p(letter), p(unknown)] as const)];
    for (const [method, path, unknownPath] of cases) {
      const other = await answer(method, path);
      expect(other.status, `${method} ${path}`).toBe(404);
      expect(other, `${method} ${path}`).toEqual(await answer(method, unknownPath));
    }
    // The owner still reads it.
    expect((await fetch(`${api.base}/v1/submissions/${id}`, { headers: auth(KEY_A) })).status).toBe(200);
  });
});

describe('/readyz', () => {
  it('answers from a cached probe and names no destination to anonymous callers', async () => {
    let probes = 0;
    const fhir = createServer((req, res) => {
      if (req.url?.endsWith('/metadata')) probes++;
      res.writeHead(200, { 'content-type': 'application/fhir+json' }).end('{"resourceType":"CapabilityStatement"}');
    });
    await new Promise<void>((resolve) => fhir.listen(0, '127.0.0.1', resolve));
    const api = await start({ destinationUrl: `http://127.0.0.1:${(fhir.address() as AddressInfo).port}/fhir` });
    try {
      const answers = await Promise.all(Array.from({ length: 30 }, () => fetch(`${api.base}/readyz`).then(async (r) => ({ status: r.status, text: await r.text() }))));
      for (const a of answers) {
        expect(a.status).toBe(200);
        expect(JSON.parse(a.text)).toEqual({ status: 'ready' });
        expect(a.text).not.toContain('hospital-secret-name');
      }
      for (let i = 0; i < 10; i++) expect((await fetch(`${api.base}/readyz`)).status).toBe(200);
      // Forty requests, one probe of the destination (the cache lasts 5 s by default).
      expect(probes).toBe(1);
      const admin = await fetch(`${api.base}/readyz`, { headers: auth(ADMIN) });
      expect(await admin.json()).toMatchObject({ status: 'ready', checks: { 'destination:hospital-secret-name': { ok: true } } });
      // A site key is no admin key.
      expect(await (await fetch(`${api.base}/readyz`, { headers: auth(KEY_A) })).json()).toEqual({ status: 'ready' });
    } finally {
      await api.close();
      fhir.closeAllConnections();
      await new Promise<void>((resolve) => fhir.close(() => resolve()));
    }
  });
});

describe('Bull Board', () => {
  // A subject id and a birth date planted in an export whose mapping jobs wait (no worker): their records are in Redis.
  const SUBJECT = 'QZ7731';
  const BIRTH = '17/08/1937';
  const planted = () => SITE_A.replaceAll('A001', SUBJECT).replaceAll('10/04/1940', BIRTH);

  async function boardAnswers(api: Running): Promise<string[]> {
    const get = async (path: string) => {
      const res = await fetch(`${api.base}/admin/queues${path}`, { headers: auth(ADMIN) });
      expect(res.status, path).toBe(200);
      return res.text();
    };
    const queueName = api.pipeline.mappingQueue.name;
    const answers = [await get('/api/queues'), await get(`/api/queues?activeQueue=${queueName}&status=waiting&page=1&jobsPerPage=100`), await get(`/api/queues?activeQueue=${queueName}&status=latest&page=1&jobsPerPage=100`)];
    const jobs = await api.pipeline.mappingQueue.getJobs(['waiting']);
    expect(jobs.length).toBeGreaterThan(0);
    for (const job of jobs.slice(0, 5)) answers.push(await get(`/api/queues/${queueName}/${encodeURIComponent(job.id!)}`));
    return answers;
  }

  it('is read-only by default and shows no subject id, record or birth date', async () => {
    const api = await start();
    try {
      expect((await submitCsv(api, 'export.csv', planted())).status).toBe(202);
      const answers = await boardAnswers(api);
      const all = answers.join('\n');
      expect(all).toContain('"submissionId"');
      for (const secret of [SUBJECT, BIRTH, '1937-08-17', 'Hepatocellular']) expect(all, secret).not.toContain(secret);
      const queueName = api.pipeline.mappingQueue.name;
      const jobId = encodeURIComponent((await api.pipeline.mappingQueue.getJobs(['waiting']))[0].id!);
      for (const [method, path] of [
        ['PUT', `/api/queues/${queueName}/pause`],
        ['PUT', `/api/queues/${queueName}/clean/waiting`],
        ['PUT', `/api/queues/${queueName}/${jobId}/clean`],
        ['PUT', `/api/queues/${queueName}/empty`],
        ['POST', `/api/queues/${queueName}/add`],
        ['PATCH', `/api/queues/${queueName}/${jobId}/update-data`],
        ['PUT', '/api/queues/pause'],
      ] as const) {
        const res = await fetch(`${api.base}/admin/queues${path}`, { method, headers: { ...auth(ADMIN), 'content-type': 'application/json' }, body: '{}' });
        expect(res.status, `${method} ${path}`).toBe(405);
      }
      expect(await api.pipeline.mappingQueue.isPaused()).toBe(false);
      expect(await api.pipeline.mappingQueue.getJobCountByTypes('waiting')).toBeGreaterThan(0);
    } finally {
      await api.close();
    }
  });

  it('with queueAdmin allows actions, each with an audit line', async () => {
    const api = await start({ queueAdmin: true });
    try {
      expect((await submitCsv(api, 'export.csv', planted())).status).toBe(202);
      const queueName = api.pipeline.mappingQueue.name;
      const res = await fetch(`${api.base}/admin/queues/api/queues/${queueName}/pause`, { method: 'PUT', headers: auth(ADMIN) });
      expect(res.status).toBe(200);
      expect(await api.pipeline.mappingQueue.isPaused()).toBe(true);
      const lines = api.audit.map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines).toContainEqual(expect.objectContaining({ event: 'queue-admin.action', method: 'PUT', path: `/api/queues/${queueName}/pause`, status: 200 }));
      expect((await fetch(`${api.base}/admin/queues/api/queues/${queueName}/pause`, { method: 'PUT', headers: auth(KEY_A) })).status).toBe(401);
    } finally {
      await api.close();
    }
  });
});

/** Opens a raw connection; resolves what the server sent and when it closed the connection. */
function rawConnection(port: number): { socket: Socket; closed: Promise<string> } {
  const socket = connect(port, '127.0.0.1');
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (received += d));
  socket.on('error', () => {});
  const closed = new Promise<string>((resolve) => socket.on('close', () => resolve(received)));
  return { socket, closed };
}

describe('slow and many connections', () => {
  it('cuts off a client that trickles its body, and refuses connections past the cap', async () => {
    const api = await start({ limits: { requestTimeoutMs: 1500, headersTimeoutMs: 1000, maxConnections: 4 } });
    try {
      const slow = rawConnection(api.port);
      const boundary = 'tbslow';
      slow.socket.write(
        `POST /v1/sites/site-a/submissions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY_A}\r\nContent-Type: multipart/form-data; boundary=${boundary}\r\nContent-Length: 100000\r\n\r\n--${boundary}\r\n`,
      );
      // One byte now and then, never finishing: the server must end it, not wait for the 100 000 bytes.
      const drip = setInterval(() => slow.socket.writable && slow.socket.write('x'), 200);
      const answer = await slow.closed;
      clearInterval(drip);
      expect(answer).toMatch(/^HTTP\/1\.1 408/);

      const held = Array.from({ length: 4 }, () => rawConnection(api.port));
      await Promise.all(held.map((h) => new Promise<void>((resolve) => h.socket.once('connect', () => resolve()))));
      // Headers begun, never finished: each holds its connection.
      for (const h of held) h.socket.write('GET /healthz HTTP/1.1\r\n');
      const fifth = rawConnection(api.port);
      expect(await fifth.closed).toBe('');
      for (const h of held) h.socket.destroy();
      // Once they are gone the server takes connections again.
      await expect.poll(async () => (await fetch(`${api.base}/healthz`).catch(() => ({ status: 0 }))).status, { timeout: 5000 }).toBe(200);
    } finally {
      await api.close();
    }
  });
});

describe('a 50 MB upload', () => {
  it('is read off the request loop: /healthz goes on answering while it is parsed', { timeout: 300_000 }, async () => {
    const api = await start();
    try {
      // Site A's rows over and over, just under the 50 MB default limit.
      const [header, ...rows] = SITE_A.trimEnd().split('\n');
      const lines = [header];
      let bytes = header.length + 1;
      for (let copy = 0; bytes < 49 * 1024 * 1024; copy++) {
        for (const row of rows) {
          // 200 variants of each subject: about 2 000 subjects of many rows each.
          const line = row.replace(/^R(\d+),([A-Z]\d+)/, (_m, n: string, s: string) => `R${copy}x${n},${s}x${copy % 200}`);
          lines.push(line);
          bytes += line.length + 1;
        }
      }
      const content = lines.join('\n') + '\n';
      const started = performance.now();
      let answered: number | undefined;
      const submission = submitCsv(api, 'export.csv', content).then((r) => {
        answered = performance.now();
        return r;
      });
      const healthz: { at: number; ms: number }[] = [];
      let polling = true;
      const poll = (async () => {
        while (polling) {
          const sent = performance.now();
          const res = await fetch(`${api.base}/healthz`);
          expect(res.status).toBe(200);
          await res.arrayBuffer();
          healthz.push({ at: performance.now(), ms: performance.now() - sent });
          // A probe every 20 ms, like a busy load balancer, not a flood competing with the parse for the CPU.
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })();
      // Parsing runs from the moment the upload is whole on disk until the first subject is queued.
      let whole: number | undefined;
      let queued: number | undefined;
      const queueKey = `${api.pipeline.names.prefix}:${api.pipeline.mappingQueue.name}:wait`;
      // How busy the request loop is while the export is parsed (busy time / elapsed, whatever the machine's speed).
      let loopAtWhole: EventLoopUtilization | undefined;
      while (answered === undefined && queued === undefined) {
        if (whole === undefined && (await uploadedBytes(api.uploadDir)) === content.length) {
          whole = performance.now();
          loopAtWhole = performance.eventLoopUtilization();
        }
        if (whole !== undefined && (await api.pipeline.redis.llen(queueKey)) > 0) queued = performance.now();
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const loopWhileParsing = loopAtWhole && performance.eventLoopUtilization(loopAtWhole).utilization;
      const { status, body } = await submission;
      polling = false;
      await poll;
      expect(status).toBe(202);
      expect(Number(body.subjects)).toBeGreaterThan(1000);
      expect(whole).toBeDefined();
      // On the request loop, parsing would have held every /healthz until it was done.
      const whileParsing = healthz.filter((h) => h.at > whole! && h.at < (queued ?? answered!));
      expect(whileParsing.length).toBeGreaterThan(5);
      // Parsing on the request loop kept it busy most of the time; off it, the loop mostly waits.
      expect(loopWhileParsing).toBeLessThan(0.5);
      const sorted = healthz.map((h) => h.ms).sort((a, b) => a - b);
      const pick = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))].toFixed(1);
      console.info(
        `50 MB upload (${(content.length / 1024 ** 2).toFixed(1)} MiB, ${String(body.subjects)} subjects): uploaded in ${((whole! - started) / 1000).toFixed(1)} s, ` +
          `parsed in ${(((queued ?? answered!) - whole!) / 1000).toFixed(1)} s, answered after ${((answered! - started) / 1000).toFixed(1)} s; ` +
          `/healthz: ${healthz.length} answers, median ${pick(0.5)} ms, p99 ${pick(0.99)} ms, max ${pick(1)} ms; ${whileParsing.length} while parsing (max ${Math.max(...whileParsing.map((h) => h.ms)).toFixed(1)} ms); request loop busy ${(loopWhileParsing! * 100).toFixed(0)}% of that time`,
      );
    } finally {
      await api.close();
    }
  });
});

/** Bytes of the files under an upload directory (one level of per-submission directories). */
async function uploadedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const sub of await readdir(dir).catch(() => [] as string[])) {
    for (const file of await readdir(join(dir, sub)).catch(() => [] as string[])) total += (await stat(join(dir, sub, file)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}
