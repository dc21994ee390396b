/**
 * Access: API keys per site, held hashed, compared in constant time, rotated with two valid at once; every
 * route of the OpenAPI document answers a site A key with 403 on site B's resources (and 401 without a key);
 * the audit log names the key id, the site, the submission and each file's size and SHA-256, never a key.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp, startServer, type ApiApp } from '../../src/api/app.ts';
import { openApiDocument } from '../../src/api/openapi.ts';
import { ApiKeyStore, hashApiKey, type ApiKeyEntry } from '../../src/api/keys.ts';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { createLogger, silentLogger } from '../../src/log.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const KEY_A = `a-${randomUUID()}`;
const KEY_A_NEXT = `a2-${randomUUID()}`;
const KEY_A_RETIRED = `a0-${randomUUID()}`;
const KEY_B = `b-${randomUUID()}`;
const ADMIN = `admin-${randomUUID()}`;
const SITE_A_EXPORT = await readFile('examples/site-a/export.csv');
const SITE_B_RECORDS = await readFile('examples/site-b/records.json');
const SITE_B_DICTIONARY = await readFile('examples/site-b/data-dictionary.json');

const entries: ApiKeyEntry[] = [
  { site: 'site-a', keyHash: hashApiKey(KEY_A), id: 'site-a-2025' },
  // Rotation: the next key is already valid while the current one still is.
  { site: 'site-a', keyHash: hashApiKey(KEY_A_NEXT), id: 'site-a-2026' },
  { site: 'site-a', keyHash: hashApiKey(KEY_A_RETIRED), id: 'site-a-2024', notAfter: '2024-12-31T23:59:59Z' },
  { site: 'site-b', keyHash: hashApiKey(KEY_B) },
];

let mappings: CompiledMapping[];
let configDir: string;
let base: string;
let pipeline: QueuePipeline;
let app: ApiApp;
let server: Server;
let apiKeys: ApiKeyStore;
const auditLines: Record<string, unknown>[] = [];
let auditText = '';

beforeAll(async () => {
  mappings = [await compileMapping(await loadMapping('mappings/site-a.yaml')), await compileMapping(await loadMapping('mappings/site-b.yaml'))];
  configDir = await mkdtemp(join(tmpdir(), 'tb-access-'));
  const destinations = join(configDir, 'destinations.yaml');
  // No worker runs: nothing is delivered, so the address is never called.
  await writeFile(destinations, ['destinations:', '  - name: hospital', '    kind: hospital', '    baseUrl: http://127.0.0.1:9/fhir', "    sites: '*'", '    auth: { type: none }', ''].join('\n'));
  pipeline = new QueuePipeline({ connection: REDIS, prefix: `{tb-access-${randomUUID()}}`, mappings, destinations: loadDestinations(destinations, {}), validator: await defaultValidator() });
  apiKeys = new ApiKeyStore(entries);
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      auditText += chunk.toString('utf8');
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) auditLines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  app = createApp({ pipeline, apiKeys, adminKeyHash: hashApiKey(ADMIN), uploadDir: join(configDir, 'uploads'), logger: silentLogger(), audit: createLogger({ name: 'audit', destination: sink }) });
  server = await startServer(app, 0);
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await app.close();
  await pipeline.obliterate();
  await pipeline.close();
  await rm(configDir, { recursive: true, force: true });
});

async function submitSiteB(key = KEY_B): Promise<Response> {
  const form = new FormData();
  form.append('files', new Blob([new Uint8Array(SITE_B_RECORDS)]), 'records.json');
  form.append('files', new Blob([new Uint8Array(SITE_B_DICTIONARY)]), 'data-dictionary.json');
  return fetch(`${base}/v1/sites/site-b/submissions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: form });
}

function siteAForm(): FormData {
  const form = new FormData();
  form.append('files', new Blob([new Uint8Array(SITE_A_EXPORT)]), 'export.csv');
  return form;
}

describe('every route of the OpenAPI document', () => {
  let submissionB: string;
  let deadLetterB: string;

  beforeAll(async () => {
    const res = await submitSiteB();
    expect(res.status).toBe(202);
    submissionB = ((await res.json()) as { id: string }).id;
    // Site B's planted record without a subject id is dead-lettered while reading: there at once.
    const letters = (await (await fetch(`${base}/v1/dead-letters?submission=${submissionB}`, { headers: { 'x-api-key': KEY_B } })).json()) as { deadLetters: { id: string }[] };
    expect(letters.deadLetters.length).toBeGreaterThan(0);
    deadLetterB = letters.deadLetters[0].id;
  });

  type Operation = { method: string; path: string; security?: Record<string, unknown>[] };
  const operations = (): Operation[] => {
    const doc = openApiDocument() as { paths: Record<string, Record<string, { security?: Record<string, unknown>[] }>> };
    return Object.entries(doc.paths).flatMap(([path, ops]) => Object.entries(ops).map(([method, op]) => ({ method: method.toUpperCase(), path, security: op.security })));
  };

  /** A request for site B's resource at this route (path parameters, required query, body). */
  function requestFor(op: Operation): { url: string; body?: () => FormData } {
    const url = op.path.replace(/\{(\w+)\}/g, (_m, name: string) => {
      if (name === 'site') return 'site-b';
      if (name === 'id' && op.path.startsWith('/v1/submissions/')) return submissionB;
      if (name === 'id' && op.path.startsWith('/v1/dead-letters/')) return encodeURIComponent(deadLetterB);
      throw new Error(`the access test does not know how to fill {${name}} of ${op.method} ${op.path}: add it`);
    });
    const query = op.path === '/v1/dead-letters' ? `?submission=${submissionB}` : '';
    const body = op.method === 'POST' && op.path.endsWith('/submissions') && op.path.startsWith('/v1/sites/') ? siteAForm : undefined;
    return { url: `${base}${url}${query}`, ...(body ? { body } : {}) };
  }

  const send = (op: Operation, headers: Record<string, string>) => {
    const { url, body } = requestFor(op);
    return fetch(url, { method: op.method, headers, ...(body ? { body: body() } : {}) });
  };

  it("answers 403 to a site A key on site B's submissions route, 404 for site B's ids (as for unknown ones), 401 without a key, and serves site B its own", async () => {
    const secured = operations().filter((op) => op.security === undefined || op.security.length > 0);
    const siteScoped = secured.filter((op) => op.path.startsWith('/v1/'));
    expect(siteScoped.map((op) => `${op.method} ${op.path}`).sort()).toEqual(
      expect.arrayContaining([
        'GET /v1/dead-letters',
        'GET /v1/dead-letters/{id}',
        'GET /v1/submissions/{id}',
        'POST /v1/dead-letters/{id}/replay',
        'POST /v1/sites/{site}/submissions',
        'POST /v1/submissions/{id}/replay',
      ]),
    );
    for (const op of siteScoped) {
      const what = `${op.method} ${op.path}`;
      // A site is no secret: a key of another site is forbidden there. An id is: another site's is not found.
      const bySite = op.path.startsWith('/v1/sites/');
      for (const key of [KEY_A, KEY_A_NEXT]) {
        const bearer = await send(op, { authorization: `Bearer ${key}` });
        expect(bearer.status, `${what} with a site A key`).toBe(bySite ? 403 : 404);
        expect(((await bearer.json()) as { error: { code: string } }).error.code).toMatch(bySite ? /^forbidden$/ : /^unknown_/);
        expect((await send(op, { 'x-api-key': key })).status, `${what} with a site A key in X-API-Key`).toBe(bySite ? 403 : 404);
      }
      const none = await send(op, {});
      expect(none.status, `${what} without a key`).toBe(401);
      expect(none.headers.get('www-authenticate')).toBe('Bearer');
      expect((await send(op, { authorization: `Bearer ${KEY_A_RETIRED}` })).status, `${what} with a retired key`).toBe(401);
      expect((await send(op, { authorization: 'Bearer not-a-key' })).status, `${what} with an unknown key`).toBe(401);
      // The route works for its own site: the refusals above are the key's scope, not a broken request.
      if (op.path.startsWith('/v1/sites/')) {
        expect((await submitSiteB()).status, `${what} with site B's key`).toBe(202);
      } else {
        expect((await send(op, { authorization: `Bearer ${KEY_B}` })).status, `${what} with site B's key`).toBeLessThan(300);
      }
    }
    for (const op of secured.filter((o) => !o.path.startsWith('/v1/'))) {
      // The admin UI takes the admin key only.
      expect((await send(op, { authorization: `Bearer ${KEY_A}` })).status, `${op.method} ${op.path}`).toBe(401);
      expect((await send(op, { authorization: `Bearer ${KEY_B}` })).status, `${op.method} ${op.path}`).toBe(401);
      expect((await send(op, { authorization: `Bearer ${ADMIN}` })).status, `${op.method} ${op.path}`).toBe(200);
    }
  });

  it('records every refusal in the audit log, with the key id but never the key or its hash', () => {
    const refused = auditLines.filter((l) => l.event === 'request.refused');
    expect(refused.some((l) => l.status === 404 && l.keyId === 'site-a-2025' && l.site === 'site-a' && l.path === `/v1/submissions/${submissionB}`)).toBe(true);
    expect(refused.some((l) => l.status === 401 && l.keyId === undefined && l.path === `/v1/dead-letters/${encodeURIComponent(deadLetterB)}`)).toBe(true);
    for (const key of [KEY_A, KEY_A_NEXT, KEY_A_RETIRED, KEY_B, ADMIN]) {
      expect(auditText).not.toContain(key);
      expect(auditText).not.toContain(hashApiKey(key));
    }
  });
});

describe('keys', () => {
  it('rotate: the current and the next key of a site both work, a retired one does not, and a reload revokes at once', async () => {
    for (const key of [KEY_A, KEY_A_NEXT]) {
      const res = await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: siteAForm() });
      expect(res.status).toBe(202);
    }
    expect((await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A_RETIRED}` }, body: siteAForm() })).status).toBe(401);
    const store = new ApiKeyStore(entries);
    expect(store.identify(KEY_A_RETIRED, Date.parse('2024-06-01T00:00:00Z'))).toEqual({ site: 'site-a', keyId: 'site-a-2024' });
    expect(store.identify(KEY_A_RETIRED, Date.parse('2025-01-01T00:00:00Z'))).toBeUndefined();
    expect(new ApiKeyStore([{ site: 'site-a', keyHash: hashApiKey('k'), notBefore: '2999-01-01T00:00:00Z' }]).identify('k')).toBeUndefined();
    // The old key leaves the file; SIGHUP in `serve` does what replaceWith does here.
    try {
      apiKeys.replaceWith(new ApiKeyStore(entries.filter((e) => e.id !== 'site-a-2025')));
      expect((await fetch(`${base}/v1/dead-letters?submission=x`, { headers: { authorization: `Bearer ${KEY_A}` } })).status).toBe(401);
      expect((await fetch(`${base}/v1/dead-letters?submission=x`, { headers: { authorization: `Bearer ${KEY_A_NEXT}` } })).status).toBe(404);
    } finally {
      apiKeys.replaceWith(new ApiKeyStore(entries));
    }
  });

  it('are held as hashes only and refused with messages that name no key or hash', async () => {
    expect(() => new ApiKeyStore([{ site: 'site-a', keyHash: 'plain-text-key' }])).toThrow(/entry 0 \(site 'site-a'\): 'keyHash' must be a hex SHA-256/);
    expect(() => new ApiKeyStore([{ site: 'site-a', keyHash: hashApiKey('x'), id: 'k' }, { site: 'site-b', keyHash: hashApiKey('y'), id: 'k' }])).toThrow(/key id 'k' is used twice/);
    expect(() => new ApiKeyStore([{ site: 'site-a', keyHash: hashApiKey('x'), notAfter: 'soon' }])).toThrow(/'notAfter' must be an ISO date-time/);
    const file = join(configDir, 'keys.json');
    await writeFile(file, `[{"site":"site-a","keyHash":"${hashApiKey('x')}"`);
    const error = await ApiKeyStore.fromFile(file).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    expect(error?.message).toMatch(/keys\.json: not a valid JSON keys file/);
    expect(error?.message).not.toContain(hashApiKey('x'));
    const yaml = join(configDir, 'keys.yaml');
    await writeFile(yaml, `keys:\n  - site: site-a\n    keyHash: ${hashApiKey('x')}\n    id: site-a-1\n    notAfter: "2999-01-01T00:00:00Z"\n`);
    expect((await ApiKeyStore.fromFile(yaml)).identify('x')).toEqual({ site: 'site-a', keyId: 'site-a-1' });
  });
});

describe('the audit log', () => {
  it('says which key submitted which files (name, size, SHA-256) as which submission, and nothing of their content', async () => {
    const res = await fetch(`${base}/v1/sites/site-a/submissions`, { method: 'POST', headers: { 'x-api-key': KEY_A_NEXT }, body: siteAForm() });
    expect(res.status).toBe(202);
    const { id, subjects } = (await res.json()) as { id: string; subjects: number };
    const line = auditLines.find((l) => l.event === 'submission.accepted' && l.submission === id);
    expect(line).toMatchObject({
      name: 'audit',
      keyId: 'site-a-2026',
      site: 'site-a',
      files: [{ name: 'export.csv', bytes: SITE_A_EXPORT.length, sha256: createHash('sha256').update(SITE_A_EXPORT).digest('hex') }],
      subjects,
    });
    expect(subjects).toBeGreaterThanOrEqual(18);
    expect(typeof line!.time).toBe('string');
    const json = await fetch(`${base}/v1/sites/site-a/submissions`, {
      method: 'POST',
      headers: { 'x-api-key': KEY_A, 'content-type': 'application/json' },
      body: JSON.stringify({ files: [{ name: 'export.csv', content: SITE_A_EXPORT.toString('utf8') }] }),
    });
    const jsonId = ((await json.json()) as { id: string }).id;
    expect(auditLines.find((l) => l.submission === jsonId)).toMatchObject({ keyId: 'site-a-2025', files: [{ name: 'export.csv', sha256: createHash('sha256').update(SITE_A_EXPORT).digest('hex') }] });
    // Identifying values of the export (a birth date, say) are nowhere in it.
    expect(auditText).not.toContain('10/04/1940');
    const replay = await fetch(`${base}/v1/submissions/${id}/replay`, { method: 'POST', headers: { 'x-api-key': KEY_A_NEXT } });
    expect(replay.status).toBe(202);
    expect(auditLines.find((l) => l.event === 'submission.replayed' && l.submission === id)).toMatchObject({ keyId: 'site-a-2026', site: 'site-a' });
  });
});
