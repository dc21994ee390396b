/**
 * The server double (test/support/server-double.ts) against plain HTTP requests: each behaviour answers as the
 * real server it stands for, and the read-back helpers count and find what the server holds.
 */
import type { Bundle, BundleEntry, Observation, OperationOutcome, Patient, Resource } from '@medplum/fhirtypes';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport } from '../../src/bundle/map-export.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { until } from '../support/worker-process.ts';
import { MEDPLUM_ENTRY_CAPS, MiB, searchToken, SERIALIZATION_CONFLICT, ServerDouble, type ServerBehaviour } from '../support/server-double.ts';

const SYSTEM = 'urn:trialbridge:test:patient';
const OBS = 'urn:trialbridge:test:observation';

const doubles: ServerDouble[] = [];
afterEach(async () => {
  for (const d of doubles.splice(0)) await d.close();
});

async function start(behaviour: ServerBehaviour = {}): Promise<ServerDouble> {
  const d = await ServerDouble.start(behaviour);
  doubles.push(d);
  return d;
}

const uuid = (n: number) => `urn:uuid:00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;

/** A subject's bundle: its Patient and `observations` Observations pointing at it, all conditional PUTs. */
function subjectBundle(subject: string, observations = 2, n = 0, type: Bundle['type'] = 'transaction'): Bundle {
  const patient: Patient = { resourceType: 'Patient', identifier: [{ system: SYSTEM, value: subject }], meta: { tag: [{ system: SYSTEM, code: subject }] } };
  const entries: BundleEntry[] = [{ fullUrl: uuid(n * 100), resource: patient, request: { method: 'PUT', url: `Patient?identifier=${searchToken(SYSTEM, subject)}` } }];
  for (let i = 1; i <= observations; i++) {
    const value = `${subject}/${i}`;
    const obs: Observation = { resourceType: 'Observation', status: 'final', code: { text: 'tumour response' }, subject: { reference: uuid(n * 100) }, identifier: [{ system: OBS, value }] };
    entries.push({ fullUrl: uuid(n * 100 + i), resource: obs, request: { method: 'PUT', url: `Observation?identifier=${searchToken(OBS, value)}` } });
  }
  return { resourceType: 'Bundle', type, entry: entries };
}

async function post(d: ServerDouble, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: Resource | undefined; text: string }> {
  const res = await fetch(d.baseUrl, { method: 'POST', headers: { 'content-type': 'application/fhir+json', ...headers }, body: JSON.stringify(body), redirect: 'manual' });
  const text = await res.text();
  let parsed: Resource | undefined;
  try {
    parsed = JSON.parse(text) as Resource;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

const statuses = (b: Resource | undefined) => ((b as Bundle).entry ?? []).map((e) => e.response?.status);

describe('the server double', () => {
  it('by default runs transactions atomically; counts per business identifier by escaped search; finds no dangling reference', async () => {
    const d = await start();
    const crafted = 'Z9,urn:trialbridge:test:patient|101$\\x';
    for (const [i, s] of ['101', crafted].entries()) expect((await post(d, subjectBundle(s, 2, i))).status).toBe(200);
    expect(await d.countByIdentifier('Patient', SYSTEM, '101')).toBe(1);
    expect(await d.countByIdentifier('Patient', SYSTEM, crafted)).toBe(1);
    expect(await d.countByIdentifier('Patient', SYSTEM, '102')).toBe(0);
    expect(await d.countByIdentifier('Patient', SYSTEM, '101', '_tag')).toBe(1);
    const holdings = await d.holdings(['Patient', 'Observation']);
    expect(holdings.resources).toBe(6);
    expect(holdings.counts.get(`Patient|${SYSTEM}|${crafted}`)).toBe(1);
    expect(holdings.counts.get(`Observation|${OBS}|101/2`)).toBe(1);
    expect(await d.danglingReferences()).toEqual([]);
    // Unescaped, the same characters are search syntax (`,` is OR): a conditional update then rewrites Patient 101.
    const before = (await d.resources(['Patient'])).find((p) => (p as Patient).identifier?.[0]?.value === '101')!;
    const attack: Patient = { resourceType: 'Patient', identifier: [{ system: SYSTEM, value: 'Z9' }], birthDate: '1999-09-09' };
    const res = await fetch(`${d.baseUrl}/Patient?identifier=${encodeURIComponent(`${SYSTEM}|Z9,${SYSTEM}|101`)}`, { method: 'PUT', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(attack) });
    expect(res.status).toBe(200);
    expect(((await res.json()) as Patient).id).toBe(before.id);
  });

  it('a. runs transactions as batches: 200 transaction-response, chosen entries failing (409, 400 by subject, a predicate, first N times), the rest applied', async () => {
    const d = await start({
      transactionsAsBatches: true,
      entryFaults: [
        { status: 409, resourceType: 'Observation', times: 1 },
        { status: 400, subject: 'S2', text: 'Resource ID did not match resolved ID' },
        { status: 400, where: (r) => (r as Observation).identifier?.[0]?.value === 'S3/2' },
      ],
    });
    const first = await post(d, subjectBundle('S1', 2, 1));
    expect(first.status).toBe(200);
    expect((first.body as Bundle).type).toBe('transaction-response');
    expect(statuses(first.body)).toEqual(['201', '409', '201']);
    const conflictOutcome = (first.body as Bundle).entry![1].response!.outcome as OperationOutcome;
    expect(conflictOutcome.issue[0]).toMatchObject({ code: 'conflict', details: { text: SERIALIZATION_CONFLICT } });
    // The conflict was for the first Observation only: sent again, it is applied.
    expect(statuses((await post(d, subjectBundle('S1', 2, 1))).body)).toEqual(['200', '201', '200']);
    const second = await post(d, subjectBundle('S2', 2, 2));
    expect(statuses(second.body)).toEqual(['400', '400', '400']);
    expect(((second.body as Bundle).entry![0].response!.outcome as OperationOutcome).issue[0].details?.text).toBe('Resource ID did not match resolved ID');
    expect(statuses((await post(d, subjectBundle('S3', 2, 3))).body)).toEqual(['201', '201', '400']);
    expect(await d.countByIdentifier('Patient', SYSTEM, 'S2')).toBe(0);
    expect(await d.countByIdentifier('Observation', OBS, 'S3/1')).toBe(1);
    expect(await d.countByIdentifier('Observation', OBS, 'S3/2')).toBe(0);
    expect(d.stats).toMatchObject({ transactionsAsBatches: 4, entryFaults: { 409: 1, 400: 4 } });

    // A 429 inside a batch makes every later entry 429 (Medplum's fhir-router), with the wait in its diagnostics.
    d.behave({ transactionsAsBatches: true, entryFaults: [{ status: 429, resourceType: 'Patient', times: 1 }] });
    const throttled = await post(d, subjectBundle('S4', 2, 4));
    expect(statuses(throttled.body)).toEqual(['429', '429', '429']);
    expect(JSON.parse(((throttled.body as Bundle).entry![0].response!.outcome as OperationOutcome).issue[0].diagnostics!)).toMatchObject({ _remainingPoints: 0, limit: 50000 });
    expect(await d.countByIdentifier('Patient', SYSTEM, 'S4')).toBe(0);
    expect(throttled.headers.get('retry-after')).toBeNull();

    // Azure: the wait of throttled entries in the headers of the 200 answer.
    d.behave({ transactionsAsBatches: true, entryThrottleHeadersMs: 1500, entryFaults: [{ status: 429, resourceType: 'Observation', times: 1, waitMs: 1500 }] });
    const azure = await post(d, subjectBundle('S5', 2, 5));
    expect([azure.status, ...statuses(azure.body)]).toEqual([200, '201', '429', '429']);
    expect([azure.headers.get('retry-after'), azure.headers.get('x-ms-retry-after-ms')]).toEqual(['2', '1500']);
  });

  it('a. gives entries 412, 500 and 504 as well', async () => {
    const d = await start({
      transactionsAsBatches: true,
      entryFaults: [
        { status: 412, resourceType: 'Patient' },
        { status: 500, where: (r) => (r as Observation).identifier?.[0]?.value === 'S1/1' },
        { status: 504, where: (r) => (r as Observation).identifier?.[0]?.value === 'S1/2' },
      ],
    });
    expect(statuses((await post(d, subjectBundle('S1', 2, 1))).body)).toEqual(['412', '500', '504']);
  });

  it('a. a Patient refused inside a batch leaves the references of its applied entries dangling, and the helper finds them', async () => {
    const d = await start({ transactionsAsBatches: true, entryFaults: [{ status: 400, resourceType: 'Patient' }] });
    expect(statuses((await post(d, subjectBundle('S1', 2, 1))).body)).toEqual(['400', '201', '201']);
    const dangling = await d.danglingReferences();
    expect(dangling).toHaveLength(2);
    for (const r of dangling) expect(r).toMatchObject({ from: expect.stringMatching(/^Observation\//), reference: expect.stringMatching(/^Patient\//), why: 'not found' });
  });

  it('a. an entry fault inside an atomic transaction fails it whole, with nothing applied', async () => {
    const d = await start({ entryFaults: [{ status: 409, resourceType: 'Observation', times: 1 }] });
    const res = await post(d, subjectBundle('S1', 2, 1));
    expect(res.status).toBe(409);
    expect((await d.holdings(['Patient', 'Observation'])).resources).toBe(0);
  });

  it('b. quota: Medplum answers 429 with the wait only in the diagnostics and RateLimit; Azure with Retry-After and x-ms-retry-after-ms', async () => {
    const d = await start({ quota: { style: 'medplum', waitMs: 1500, requests: 2 } });
    for (let i = 0; i < 2; i++) {
      const res = await post(d, subjectBundle('S1', 1, 1));
      expect(res.status).toBe(429);
      expect(res.headers.get('retry-after')).toBeNull();
      expect(res.headers.get('ratelimit')).toBe('"fhirInteractions";r=0;t=2');
      expect(JSON.parse((res.body as OperationOutcome).issue[0].diagnostics!)).toEqual({ _remainingPoints: 0, _msBeforeNext: 1500, limit: 50000 });
    }
    expect((await fetch(`${d.baseUrl}/metadata`)).status).toBe(200); // reads are not refused
    expect((await post(d, subjectBundle('S1', 1, 1))).status).toBe(200);
    d.behave({ quota: { style: 'azure', waitMs: 250 } });
    const azure = await post(d, subjectBundle('S2', 1, 2));
    expect(azure.status).toBe(429);
    expect(azure.headers.get('retry-after')).toBe('1');
    expect(azure.headers.get('x-ms-retry-after-ms')).toBe('250');
    expect(d.stats.quotaRefusals).toBe(3);
    expect(await d.countByIdentifier('Patient', SYSTEM, 'S2')).toBe(0);
  });

  it('c. entry caps: more than 8 entries with a conditional one, or more than 50 updates, are refused; within them the transaction is applied', async () => {
    const d = await start({ entryCaps: MEDPLUM_ENTRY_CAPS });
    const nine = await post(d, subjectBundle('S1', 8, 1));
    expect(nine.status).toBe(400);
    expect((nine.body as OperationOutcome).issue[0].details?.text).toBe('Transaction requires strict isolation but has too many entries');
    expect((await post(d, subjectBundle('S1', 7, 1))).status).toBe(200);
    const updates: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: Array.from({ length: 51 }, (_, i) => ({ resource: { resourceType: 'Patient', id: `p${i}` }, request: { method: 'PUT', url: `Patient/p${i}` } })),
    };
    const refused = await post(d, updates);
    expect(refused.status).toBe(400);
    expect((refused.body as OperationOutcome).issue[0].details?.text).toBe('Transaction contains more update operations than allowed');
    expect((await post(d, { ...updates, entry: updates.entry!.slice(0, 50) })).status).toBe(200);
    expect(d.stats).toMatchObject({ capRefusals: 2, largestTransaction: 50 });
  });

  describe('d. strict writes', () => {
    let sample: Bundle;
    beforeAll(async () => {
      const mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
      const mapped = await mapExport(mapping, ['examples/site-a'], { recorded: '2019-01-01T00:00:00Z', validator: await defaultValidator() });
      const bundle = mapped.bundles.find((b) => b.bundle.entry!.some((e) => e.resource?.resourceType === 'AdverseEvent'))!.bundle;
      // The outcome the mapping gave before it carried the base R4 code too (NCIt only), as measured on Medplum.
      sample = {
        ...bundle,
        entry: bundle.entry!.map((e) =>
          e.resource?.resourceType === 'AdverseEvent'
            ? { ...e, resource: { ...e.resource, outcome: { coding: [{ system: 'http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl', code: 'C49498', display: 'Recovered/Resolved' }] } } }
            : e,
        ),
      };
    });

    it('refuses a reference to a missing resource with Invalid reference (Not found)', async () => {
      const d = await start({ strict: true });
      const obs: Observation = { resourceType: 'Observation', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/missing' } };
      const res = await fetch(`${d.baseUrl}/Observation`, { method: 'POST', headers: { 'content-type': 'application/fhir+json' }, body: JSON.stringify(obs) });
      expect(res.status).toBe(400);
      expect(((await res.json()) as OperationOutcome).issue[0]).toMatchObject({ details: { text: 'Invalid reference (Not found)' }, expression: ['Observation.subject'] });
      expect((await post(d, subjectBundle('S1', 2, 1))).status).toBe(200);
    });

    it('refuses AdverseEvent.outcome outside the base R4 required value set: a sample transaction fails whole; as a batch the AdverseEvents and the Provenance fail, the rest is applied', async () => {
      const d = await start({ strict: true });
      const whole = await post(d, sample);
      expect(whole.status).toBe(400);
      expect((whole.body as OperationOutcome).issue[0]).toMatchObject({
        code: 'code-invalid',
        details: { text: 'Value did not satisfy terminology binding http://hl7.org/fhir/ValueSet/adverse-event-outcome|4.0.1' },
        expression: ['AdverseEvent.outcome'],
      });
      d.behave({ strict: true, transactionsAsBatches: true });
      const batch = await post(d, sample);
      expect(batch.status).toBe(200);
      const byType = new Map<string, Set<string>>();
      sample.entry!.forEach((e, i) => {
        const set = byType.get(e.resource!.resourceType) ?? new Set<string>();
        set.add((batch.body as Bundle).entry![i].response!.status!);
        byType.set(e.resource!.resourceType, set);
      });
      expect(byType.get('AdverseEvent')).toEqual(new Set(['400']));
      expect(byType.get('Provenance')).toEqual(new Set(['400']));
      const provenance = (batch.body as Bundle).entry!.at(-1)!.response!.outcome as OperationOutcome;
      expect(provenance.issue[0].details?.text).toBe('Invalid reference (Not found)');
      for (const [type, set] of byType) if (type !== 'AdverseEvent' && type !== 'Provenance') expect([type, [...set].every((s) => s.startsWith('2'))]).toEqual([type, true]);
      expect(await d.danglingReferences()).toEqual([]);
    });
  });

  it('e. redirects with 307 to another listener, which records the headers it gets and answers a success for nothing stored', async () => {
    const d = await start({ answer: { kind: 'redirect' } });
    const res = await post(d, subjectBundle('S1', 2, 1), { authorization: 'Bearer secret-token' });
    expect(res.status).toBe(307);
    expect(res.headers.get('location')).toBe(`http://127.0.0.1:${d.redirectTarget.port}/fhir/R4`);
    expect(d.redirectTarget.requests).toEqual([]);
    // A client that follows it: the listener records what arrived, and pretends success.
    const followed = await fetch(res.headers.get('location')!, { method: 'POST', headers: { 'content-type': 'application/fhir+json', authorization: 'Bearer leaked' }, body: JSON.stringify(subjectBundle('S1', 2, 1)) });
    expect(statuses((await followed.json()) as Bundle)).toEqual(['201 Created', '201 Created', '201 Created']);
    expect(d.redirectTarget.requests).toHaveLength(1);
    expect(d.redirectTarget.requests[0].headers.authorization).toBe('Bearer leaked');
    expect((await d.holdings(['Patient'])).resources).toBe(0);
  });

  it('f. g. answers an HTML login page, an empty or a short transaction-response, with nothing applied', async () => {
    const d = await start({ answer: { kind: 'html' } });
    const html = await post(d, subjectBundle('S1', 2, 1));
    expect([html.status, html.headers.get('content-type')]).toEqual([200, 'text/html; charset=utf-8']);
    expect(html.text).toMatch(/<form/);
    d.behave({ answer: { kind: 'short', entries: 0 } });
    const empty = await post(d, subjectBundle('S1', 2, 1));
    expect([empty.status, (empty.body as Bundle).type, (empty.body as Bundle).entry]).toEqual([200, 'transaction-response', undefined]);
    d.behave({ answer: { kind: 'short', entries: 1 } });
    expect(statuses((await post(d, subjectBundle('S1', 2, 1))).body)).toEqual(['201 Created']);
    d.behave({ answer: { kind: 'short', missing: 1 } });
    expect(statuses((await post(d, subjectBundle('S1', 2, 1))).body)).toEqual(['201 Created', '201 Created']);
    expect((await d.holdings(['Patient', 'Observation'])).resources).toBe(0);
    // Only the requests answerOnly picks: a one-entry transaction is served.
    d.behave({ answer: { kind: 'html' }, answerOnly: ({ entries }) => entries > 1 });
    expect((await post(d, subjectBundle('S1', 0, 1))).status).toBe(200);
    expect((await post(d, subjectBundle('S2', 2, 2))).headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect((await d.holdings(['Patient', 'Observation'])).resources).toBe(1);
  });

  it('h. streams an oversized answer lazily: a client reading 1 MiB and closing stops it; read whole it is exactly the size asked', async () => {
    const d = await start({ answer: { kind: 'oversized', bytes: 600 * MiB } });
    const controller = new AbortController();
    const res = await fetch(d.baseUrl, { method: 'POST', body: '{}', signal: controller.signal });
    let read = 0;
    const reader = res.body!.getReader();
    while (read < MiB) read += (await reader.read()).value?.length ?? 0;
    controller.abort();
    await reader.cancel().catch(() => undefined);
    await until(10_000, 'the double sees the client close the oversized answer', () => d.stats.oversizedAbandoned === 1, 10);
    expect(d.stats.oversizedBytesSent).toBeLessThan(600 * MiB);

    d.behave({ answer: { kind: 'oversized', bytes: 8 * MiB } });
    const whole = await fetch(d.baseUrl, { method: 'POST', body: '{}' });
    const text = await whole.text();
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(8 * MiB);
    expect(Buffer.byteLength(text)).toBeGreaterThan(8 * MiB - 64);
    const bundle = JSON.parse(text) as Bundle;
    expect(bundle.type).toBe('transaction-response');
    expect(bundle.entry!.length).toBeGreaterThan(100_000);
  });
});
