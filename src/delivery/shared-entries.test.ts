import { randomUUID } from 'node:crypto';
import nock from 'nock';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle, ResearchStudy, ResearchSubject } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { FhirClient } from './client.ts';
import { deliverBundle, type DeliverOptions } from './deliver.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from './embedded-server.ts';
import { parseBundle, serializeBundle, type SerializedBundle } from './serialized-bundle.ts';
import { MemorySharedEntryStore, RedisSharedEntryStore, SharedEntries, withoutShared } from './shared-entries.ts';
import { destinationWithDefaults } from './destinations.ts';
import { runInProcess } from '../queue/in-process.ts';

let bundles: SerializedBundle[];
let server: EmbeddedFhirServer | undefined;
const redis = new Redis({ host: '127.0.0.1', port: 6379, lazyConnect: true });
const prefix = `tb-test-shared-${randomUUID()}:`;
const OPTIONS: DeliverOptions = { transactions: true, retry: { maxAttempts: 1 } };

beforeAll(async () => {
  bundles = [];
  for (const site of SAMPLE_SITES) {
    const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
    bundles.push(...mapped.bundles.slice(0, 6).map((b) => serializeBundle(b.bundle)));
  }
  await redis.connect();
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  nock.cleanAll();
  nock.enableNetConnect();
});

afterAll(async () => {
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
});

async function studies(client: FhirClient): Promise<ResearchStudy[]> {
  return ((await client.get<Bundle>('ResearchStudy')).body!.entry ?? []).map((e) => e.resource as ResearchStudy);
}

describe('trial-wide entries written once per destination', () => {
  it('marks the ResearchStudy entry shared when serialising, and leaves it out with its references rewritten', () => {
    const bundle = bundles[0];
    const shared = bundle.entries.filter((e) => e.shared);
    expect(shared).toHaveLength(1);
    const without = withoutShared(bundle, new Map([[shared[0].fullUrl!, 'ResearchStudy/abc']]));
    const parsed = parseBundle(without);
    expect(parsed.entry).toHaveLength(bundle.entries.length - 1);
    expect(parsed.entry!.some((e) => e.resource?.resourceType === 'ResearchStudy')).toBe(false);
    const text = without.bytes.toString('utf8');
    expect(text).not.toContain(shared[0].fullUrl!);
    expect(text).toContain('"reference":"ResearchStudy/abc"');
  });

  it('in Redis, a claim is released and extended only by its holder', async () => {
    const store = new RedisSharedEntryStore(redis, prefix);
    expect(await store.claim('claim-test', 'mine', 60_000)).toBe(true);
    expect(await store.claim('claim-test', 'theirs', 60_000)).toBe(false);
    await store.extend('claim-test', 'theirs', 600_000);
    expect(await redis.pttl(`${prefix}claim-test`)).toBeLessThanOrEqual(60_000);
    await store.extend('claim-test', 'mine', 600_000);
    expect(await redis.pttl(`${prefix}claim-test`)).toBeGreaterThan(60_000);
    await store.release('claim-test', 'theirs');
    expect(await store.get('claim-test')).toBe('mine');
    await store.release('claim-test', 'mine');
    expect(await store.get('claim-test')).toBeUndefined();
  });

  it('two workers sharing Redis, eighteen subjects of three sites at once: the ResearchStudy is written once, every subject refers to it', async () => {
    server = await startEmbeddedFhirServer();
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const workers = [new SharedEntries(new RedisSharedEntryStore(redis, prefix)), new SharedEntries(new RedisSharedEntryStore(redis, prefix))];
    const results = await Promise.all(
      bundles.map(async (bundle, i) => {
        const prepared = await workers[i % 2].prepare(client, bundle, OPTIONS);
        expect(prepared.rejection).toBeUndefined();
        expect(prepared.bundle!.entries).toHaveLength(bundle.entries.length - 1);
        return deliverBundle(client, prepared.bundle!, OPTIONS);
      }),
    );
    expect(results.map((r) => r.outcome)).toEqual(bundles.map(() => 'delivered'));
    expect(workers[0].stats.written + workers[1].stats.written).toBe(1);
    const [study, ...others] = await studies(client);
    expect(others).toEqual([]);
    // An update writes a new version on this server even when nothing changed: one version means one write.
    expect((await client.get<Bundle>(`ResearchStudy/${study.id}/_history`)).body!.entry).toHaveLength(1);
    const subjects = ((await client.get<Bundle>('ResearchSubject')).body!.entry ?? []).map((e) => e.resource as ResearchSubject);
    expect(subjects).toHaveLength(bundles.length);
    for (const subject of subjects) expect(subject.study.reference).toBe(`ResearchStudy/${study.id}`);
  });

  it('another destination (another base URL) gets its own write; the same one later none', async () => {
    server = await startEmbeddedFhirServer();
    const second = await startEmbeddedFhirServer();
    try {
      const shared = new SharedEntries(new MemorySharedEntryStore());
      for (const target of [server!, second, server!]) {
        const prepared = await shared.prepare(new FhirClient({ baseUrl: target.baseUrl }), bundles[0], OPTIONS);
        expect((await deliverBundle(new FhirClient({ baseUrl: target.baseUrl }), prepared.bundle!, OPTIONS)).outcome).toBe('delivered');
      }
      expect(shared.stats.written).toBe(2);
      expect(await studies(new FhirClient({ baseUrl: second.baseUrl }))).toHaveLength(1);
    } finally {
      await second.close();
    }
  });

  it('a refused ResearchStudy fails every subject that refers to it, with the server reason, and is tried again by the next', async () => {
    nock('http://shared.test')
      .post('/fhir')
      .times(2)
      .reply(400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'ResearchStudy.status is required' }] });
    const shared = new SharedEntries(new MemorySharedEntryStore());
    const client = new FhirClient({ baseUrl: 'http://shared.test/fhir' });
    const first = await shared.prepare(client, bundles[0], OPTIONS);
    const second = await shared.prepare(client, bundles[1], OPTIONS);
    for (const prepared of [first, second]) {
      expect(prepared.bundle).toBeUndefined();
      expect(prepared.rejection!.message).toMatch(/^the trial-wide ResearchStudy every subject refers to was refused: ResearchStudy.status is required/);
    }
    expect(nock.isDone()).toBe(true);
  });

  it('the in-process runner (the demo) writes the ResearchStudy once for the three sample sites, subjects sharing transactions', async () => {
    server = await startEmbeddedFhirServer();
    const mappings = await Promise.all(SAMPLE_SITES.map(async (site) => compileMapping(await loadMapping(site.mapping))));
    const destination = destinationWithDefaults({ name: 'hospital', kind: 'hospital', baseUrl: server.baseUrl, transactions: true, maxEntries: 1000, concurrency: 4, subjectsPerTransaction: 4 });
    const result = await runInProcess({
      exports: SAMPLE_SITES.map((sample) => ({ site: sample.site, inputs: [sample.input] })),
      mappings,
      destinations: [destination],
      validator: null,
      recorded: '2019-01-01T00:00:00Z',
    });
    const client = new FhirClient({ baseUrl: server.baseUrl });
    expect(result.submission.destinations.hospital.deadLettered ?? 0).toBe(0);
    expect(result.submission.destinations.hospital.delivered).toBeGreaterThan(40);
    const [study, ...others] = await studies(client);
    expect(others).toEqual([]);
    expect((await client.get<Bundle>(`ResearchStudy/${study.id}/_history`)).body!.entry).toHaveLength(1);
  });
});
