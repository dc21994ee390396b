import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle, BundleEntry, CapabilityStatement, OperationOutcome, Resource, ResearchSubject } from '@medplum/fhirtypes';
import { mapExport } from '../src/bundle/map-export.ts';
import { SAMPLE_SITES } from '../src/cli/demo.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from '../src/delivery/embedded-server.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';

const FHIR_JSON = 'application/fhir+json';
const AE_TAG = 'urn:trialbridge:test:adverse-event';
const PATIENT_ID = 'urn:trialbridge:test:patient';

interface Reply<T = Resource> {
  status: number;
  body: T;
  headers: Headers;
}

async function call<T = Resource>(server: EmbeddedFhirServer, method: string, path: string, body?: unknown, contentType = FHIR_JSON): Promise<Reply<T>> {
  const response = await fetch(`${server.baseUrl}/${path}`, {
    method,
    headers: body === undefined ? { accept: FHIR_JSON } : { accept: FHIR_JSON, 'content-type': contentType },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T, headers: response.headers };
}

async function total(server: EmbeddedFhirServer, query: string): Promise<number> {
  const reply = await call<Bundle>(server, 'GET', query);
  expect(reply.status).toBe(200);
  expect(reply.body.type).toBe('searchset');
  return reply.body.total!;
}

function issueText(outcome: OperationOutcome): string {
  return (outcome.issue ?? []).map((i) => i.details?.text ?? i.diagnostics ?? '').join('; ');
}

const started: EmbeddedFhirServer[] = [];
async function start(options?: EmbeddedFhirServerOptions): Promise<EmbeddedFhirServer> {
  const server = await startEmbeddedFhirServer(options);
  started.push(server);
  return server;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.close()));
});

function adverseEvent(code: string, extra: Partial<Resource> = {}): Resource {
  return {
    resourceType: 'AdverseEvent',
    meta: { tag: [{ system: AE_TAG, code }] },
    actuality: 'actual',
    subject: { reference: 'Patient/p1' },
    ...extra,
  } as Resource;
}

function patient(value: string, gender: 'male' | 'female' = 'male'): Resource {
  return { resourceType: 'Patient', identifier: [{ system: PATIENT_ID, value }], gender };
}

function putEntry(resource: Resource, url: string, fullUrl = `urn:uuid:${crypto.randomUUID()}`): BundleEntry {
  return { fullUrl, resource, request: { method: 'PUT', url } };
}

const pidUrl = (value: string): string => `Patient?identifier=${encodeURIComponent(PATIENT_ID)}|${value}`;
const aeUrl = (code: string): string => `AdverseEvent?_tag=${encodeURIComponent(AE_TAG)}|${code}`;

describe('embedded FHIR server: basics', () => {
  it('listens on 127.0.0.1 under /fhir/R4 and serves a CapabilityStatement', async () => {
    const server = await start();
    expect(server.baseUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/fhir\/R4$/);
    const reply = await call<CapabilityStatement>(server, 'GET', 'metadata');
    expect(reply.status).toBe(200);
    expect(reply.headers.get('content-type')).toContain(FHIR_JSON);
    expect(reply.body.resourceType).toBe('CapabilityStatement');
    expect(reply.body.fhirVersion).toBe('4.0.1');
    const rest = reply.body.rest![0];
    expect(rest.interaction!.map((i) => i.code)).toEqual(expect.arrayContaining(['transaction', 'batch']));
    const types = rest.resource!.map((r) => r.type);
    expect(types).toEqual(expect.arrayContaining(['Patient', 'AdverseEvent', 'Provenance', 'ResearchSubject', 'Observation']));
    const ae = rest.resource!.find((r) => r.type === 'AdverseEvent')!;
    expect(ae.conditionalUpdate).toBe(true);
    expect(ae.searchParam!.map((p) => p.name)).toContain('_tag');
    expect(server.requests).toBe(1);
  });

  it('with transactions: false, neither advertises nor takes transactions, but takes batches', async () => {
    const server = await start({ transactions: false });
    const metadata = await call<CapabilityStatement>(server, 'GET', 'metadata');
    expect(metadata.body.rest![0].interaction!.map((i) => i.code)).not.toContain('transaction');
    const entries = [putEntry(patient('T1'), pidUrl('T1'))];
    const refused = await call<OperationOutcome>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: entries });
    expect(refused.status).toBeGreaterThanOrEqual(400);
    expect(refused.status).toBeLessThan(500);
    expect(refused.body.resourceType).toBe('OperationOutcome');
    expect(await total(server, 'Patient?_summary=count')).toBe(0);
    const batch = await call<Bundle>(server, 'POST', '', { resourceType: 'Bundle', type: 'batch', entry: entries });
    expect(batch.status).toBe(200);
    expect(batch.body.type).toBe('batch-response');
    expect(await total(server, 'Patient?_summary=count')).toBe(1);
  });

  it('does conditional updates outside bundles, by _tag and by identifier', async () => {
    const server = await start();
    const created = await call(server, 'PUT', aeUrl('AE1'), adverseEvent('AE1'));
    expect(created.status).toBe(201);
    expect(created.body.id).toBeTruthy();
    expect(created.headers.get('location')).toBe(`${server.baseUrl}/AdverseEvent/${created.body.id}/_history/${created.body.meta!.versionId}`);
    const updated = await call(server, 'PUT', aeUrl('AE1'), adverseEvent('AE1', { actuality: 'potential' } as Partial<Resource>));
    expect(updated.status).toBe(200);
    expect(updated.body.id).toBe(created.body.id);
    expect(updated.body.meta!.versionId).not.toBe(created.body.meta!.versionId);
    await call(server, 'PUT', aeUrl('AE2'), adverseEvent('AE2'));
    expect(await total(server, `${aeUrl('AE1')}&_summary=count`)).toBe(1);
    expect(await total(server, 'AdverseEvent?_count=0&_total=accurate')).toBe(2);

    const p = await call(server, 'PUT', pidUrl('P1'), patient('P1'), 'application/json');
    expect(p.status).toBe(201);
    const again = await call(server, 'PUT', pidUrl('P1'), patient('P1', 'female'));
    expect(again.status).toBe(200);
    expect(again.body.id).toBe(p.body.id);
    expect(await total(server, 'Patient?_summary=count')).toBe(1);

    // A search matching several: the router answers 412
    await server.repository.createResource(adverseEvent('AE2'));
    const ambiguous = await call<OperationOutcome>(server, 'PUT', aeUrl('AE2'), adverseEvent('AE2'));
    expect(ambiguous.status).toBe(412);
    expect(ambiguous.body.resourceType).toBe('OperationOutcome');
  });

  it('reads by id, and answers 404 OperationOutcomes for unknown ids and paths', async () => {
    const server = await start();
    const created = await call(server, 'PUT', pidUrl('P2'), patient('P2'));
    const read = await call(server, 'GET', `Patient/${created.body.id}`);
    expect(read.status).toBe(200);
    expect(read.body).toMatchObject({ resourceType: 'Patient', id: created.body.id });
    expect(read.headers.get('etag')).toBe(`W/"${created.body.meta!.versionId}"`);
    const missing = await call<OperationOutcome>(server, 'GET', 'Patient/does-not-exist');
    expect(missing.status).toBe(404);
    expect(missing.body.resourceType).toBe('OperationOutcome');
    const outside = await fetch(server.baseUrl.replace('/fhir/R4', '/elsewhere'));
    expect(outside.status).toBe(404);
    expect(((await outside.json()) as Resource).resourceType).toBe('OperationOutcome');
  });

  it('answers bad requests with OperationOutcomes: invalid JSON, wrong content type, too large a body', async () => {
    const server = await start({ bodyLimit: '1kb' });
    const bad = await call<OperationOutcome>(server, 'POST', '', '{"resourceType": "Bundle",');
    expect(bad.status).toBe(400);
    expect(bad.body.resourceType).toBe('OperationOutcome');
    const xml = await call<OperationOutcome>(server, 'POST', '', '<Bundle/>', 'application/fhir+xml');
    expect(xml.status).toBe(415);
    const big = await call<OperationOutcome>(server, 'PUT', pidUrl('P3'), { ...patient('P3'), text: { status: 'generated', div: 'x'.repeat(4000) } });
    expect(big.status).toBe(413);
    expect(big.body.resourceType).toBe('OperationOutcome');
    expect(server.requests).toBe(3);
  });

  it('processes batch bundles entry by entry', async () => {
    const server = await start();
    const reply = await call<Bundle>(server, 'POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [
        putEntry(patient('B1'), pidUrl('B1')),
        { request: { method: 'GET', url: 'Patient/nope' } },
        putEntry(adverseEvent('B2'), pidUrl('B2')), // resource type does not match the URL
      ],
    });
    expect(reply.status).toBe(200);
    expect(reply.body.type).toBe('batch-response');
    expect(reply.body.entry!.map((e) => e.response!.status)).toEqual(['201', '404', '400']);
    expect(await total(server, 'Patient?_summary=count')).toBe(1);
  });

  it('refuses a transaction with more entries than maxTransactionEntries (400), applying nothing', async () => {
    const server = await start({ maxTransactionEntries: 2 });
    const entry = ['M1', 'M2', 'M3'].map((v) => putEntry(patient(v), pidUrl(v)));
    const refused = await call<OperationOutcome>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry });
    expect(refused.status).toBe(400);
    expect(refused.body.resourceType).toBe('OperationOutcome');
    expect(issueText(refused.body)).toMatch(/3 entries.*2/);
    expect(await total(server, 'Patient?_summary=count')).toBe(0);
    const ok = await call<Bundle>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: entry.slice(0, 2) });
    expect(ok.status).toBe(200);
  });

  it('applies a transaction atomically: a failing entry rolls back the others and names the entry', async () => {
    const server = await start();
    await call(server, 'PUT', pidUrl('X0'), patient('X0'));
    const before = await call<Bundle>(server, 'GET', 'Patient');
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        putEntry(patient('X1'), pidUrl('X1')),
        putEntry(patient('X0', 'female'), pidUrl('X0')),
        putEntry(adverseEvent('X2'), aeUrl('X2')),
        putEntry(patient('X3'), 'Patient/some-id'), // update with a body id that does not match: 400
      ],
    };
    const reply = await call<OperationOutcome>(server, 'POST', '', bundle);
    expect(reply.status).toBe(400);
    expect(reply.body.resourceType).toBe('OperationOutcome');
    expect(reply.body.issue![0].expression).toEqual(['Bundle.entry[3]']);
    expect(await total(server, 'Patient?_summary=count')).toBe(1);
    expect(await total(server, 'AdverseEvent?_summary=count')).toBe(0);
    expect((await call<Bundle>(server, 'GET', 'Patient')).body.entry).toEqual(before.body.entry);
    const history = await call<Bundle>(server, 'GET', `Patient/${before.body.entry![0].resource!.id}/_history`);
    expect(history.body.entry).toHaveLength(1);
  });

  it('serves concurrent transactions one at a time, each complete', async () => {
    const server = await start();
    const bundles = Array.from({ length: 6 }, (_, i): Bundle => ({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [putEntry(patient(`K${i % 3}`), pidUrl(`K${i % 3}`)), putEntry(adverseEvent(`K${i}`), aeUrl(`K${i}`))],
    }));
    const replies = await Promise.all(bundles.map((b) => call<Bundle>(server, 'POST', '', b)));
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(await total(server, 'Patient?_summary=count')).toBe(3);
    expect(await total(server, 'AdverseEvent?_summary=count')).toBe(6);
  });

  it('refuses duplicate identities in a transaction', async () => {
    const server = await start();
    const entry = [putEntry(patient('D1'), pidUrl('D1')), putEntry(patient('D1'), pidUrl('D1'))];
    const reply = await call<OperationOutcome>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry });
    expect(reply.status).toBe(400);
    expect(await total(server, 'Patient?_summary=count')).toBe(0);
  });

  it('stores conditional references verbatim (fhir-router does not resolve them)', async () => {
    const server = await start();
    const p = await call(server, 'PUT', pidUrl('C1'), patient('C1'));
    const conditional = `Patient?identifier=${PATIENT_ID}|C1`;
    const bundle: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [putEntry(adverseEvent('C2', { subject: { reference: conditional } } as Partial<Resource>), aeUrl('C2'))],
    };
    const reply = await call<Bundle>(server, 'POST', '', bundle);
    expect(reply.status).toBe(200);
    const stored = await call(server, 'GET', reply.body.entry![0].response!.location!);
    expect((stored.body as { subject?: { reference?: string } }).subject?.reference).toBe(conditional);
    expect(conditional).not.toContain(p.body.id!);
  });

  it('with medplumTransactionLimits, behaves as fhir-router does: >8 conditional entries refused, no rollback', async () => {
    const server = await start({ medplumTransactionLimits: true });
    const nine = Array.from({ length: 9 }, (_, i) => putEntry(patient(`L${i}`), pidUrl(`L${i}`)));
    const refused = await call<OperationOutcome>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: nine });
    expect(refused.status).toBe(400);
    expect(issueText(refused.body)).toBe('Transaction requires strict isolation but has too many entries');
    expect(await total(server, 'Patient?_summary=count')).toBe(0);

    const failing = [putEntry(patient('N1'), pidUrl('N1')), putEntry(patient('N2'), 'Patient/some-id')];
    const failed = await call<OperationOutcome>(server, 'POST', '', { resourceType: 'Bundle', type: 'transaction', entry: failing });
    expect(failed.status).toBe(400);
    expect(await total(server, 'Patient?_summary=count')).toBe(1); // the first entry stayed applied
  });
});

describe('embedded FHIR server: the sample sites', () => {
  const bundles: Bundle[] = [];
  const expected: Record<string, number> = {};
  let server: EmbeddedFhirServer;

  beforeAll(async () => {
    for (const site of SAMPLE_SITES) {
      const mapping = await compileMapping(await loadMapping(site.mapping));
      const result = await mapExport(mapping, [site.input], { recorded: '2019-01-01T00:00:00Z' });
      for (const b of result.bundles) bundles.push(b.bundle);
    }
    for (const bundle of bundles) {
      for (const entry of bundle.entry ?? []) {
        // ResearchStudy is in every subject's bundle under the same conditional URL: one resource
        expected[entry.request!.url] = 1;
      }
    }
    server = await startEmbeddedFhirServer();
  });
  afterAll(async () => {
    await server?.close();
  });

  const countsByType = (): Record<string, number> => {
    const counts: Record<string, number> = {};
    for (const url of Object.keys(expected)) {
      const type = url.split('?')[0];
      counts[type] = (counts[type] ?? 0) + 1;
    }
    return counts;
  };

  async function postAll(): Promise<{ statuses: Set<string>; perSecond: number }> {
    const statuses = new Set<string>();
    const t0 = performance.now();
    for (const bundle of bundles) {
      const reply = await call<Bundle>(server, 'POST', '', bundle);
      expect(reply.status, issueText(reply.body as unknown as OperationOutcome)).toBe(200);
      expect(reply.body.type).toBe('transaction-response');
      expect(reply.body.entry).toHaveLength(bundle.entry!.length);
      for (const entry of reply.body.entry!) statuses.add(entry.response!.status);
    }
    return { statuses, perSecond: bundles.length / ((performance.now() - t0) / 1000) };
  }

  async function serverCounts(): Promise<Record<string, number>> {
    const counts: Record<string, number> = {};
    for (const type of Object.keys(countsByType())) {
      counts[type] = await total(server, `${type}?_summary=count`);
      expect(await total(server, `${type}?_count=0&_total=accurate`)).toBe(counts[type]);
    }
    return counts;
  }

  it('takes every subject bundle as a transaction, creating every resource', async () => {
    expect(bundles.length).toBe(47);
    const { statuses, perSecond } = await postAll();
    console.log(`embedded server: ${bundles.length} subject bundles, ${bundles.reduce((n, b) => n + b.entry!.length, 0)} entries, ${perSecond.toFixed(0)} bundles/s`);
    expect([...statuses].sort()).toEqual(['200', '201']); // 201 everywhere but the shared ResearchStudy after its first bundle
    expect(await serverCounts()).toEqual(countsByType());
    expect(await total(server, 'Patient?_summary=count')).toBe(47);
  });

  it('rewrote the urn:uuid references to the created resources', async () => {
    const subjects = await call<Bundle<ResearchSubject>>(server, 'GET', 'ResearchSubject');
    expect(subjects.body.entry).toHaveLength(47);
    for (const { resource } of subjects.body.entry!) {
      const ref = resource!.individual.reference!;
      expect(ref).toMatch(/^Patient\/[0-9a-f-]{36}$/);
      const p = await call(server, 'GET', ref);
      expect(p.status).toBe(200);
    }
    for (const type of Object.keys(countsByType())) {
      const all = await call<Bundle>(server, 'GET', type);
      expect(JSON.stringify(all.body)).not.toContain('urn:uuid:');
    }
  });

  it('finds resources by the _tag of their conditional update', async () => {
    const aeUrlOf = Object.keys(expected).find((u) => u.startsWith('AdverseEvent?_tag='))!;
    const found = await call<Bundle>(server, 'GET', aeUrlOf);
    expect(found.body.total).toBe(1);
    expect(found.body.entry![0].fullUrl).toBe(`${server.baseUrl}/AdverseEvent/${found.body.entry![0].resource!.id}`);
  });

  it('is idempotent: posting the same bundles again creates nothing and answers 200 updated', async () => {
    const { statuses } = await postAll();
    expect([...statuses]).toEqual(['200']);
    expect(await serverCounts()).toEqual(countsByType());
  });

  it('with medplumTransactionLimits, refuses every subject bundle as fhir-router does', async () => {
    const strict = await start({ medplumTransactionLimits: true });
    const reply = await call<OperationOutcome>(strict, 'POST', '', bundles[0]);
    expect(reply.status).toBe(400);
    expect(issueText(reply.body)).toBe('Transaction requires strict isolation but has too many entries');
  });
});
