import nock from 'nock';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Bundle, BundleEntry, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { FhirClient, FhirHttpError } from './client.ts';
import { deliverBundle, DeliveryRetryableError, type DeliverOptions, type PressureSignal } from './deliver.ts';
import { serializeBundle } from './serialized-bundle.ts';
import { referencesOf } from './split.ts';

const ORIGIN = 'http://fhir.test';
const BASE = `${ORIGIN}/fhir/R4`;

let bundle: Bundle;

beforeAll(async () => {
  const site = SAMPLE_SITES[0];
  const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
  bundle = mapped.bundles[0].bundle;
});

/** Releases replies held back to simulate a stalled server, so nothing is left pending after a test. */
let release: () => void = () => {};
let stalled: Promise<void> = Promise.resolve();

beforeEach(() => {
  nock.disableNetConnect();
  stalled = new Promise((resolve) => (release = resolve));
});

afterEach(() => {
  release();
  nock.cleanAll();
  nock.enableNetConnect();
});

/** Waits asked for, recorded instead of slept. */
function recorder(): { waits: number[]; sleep: (ms: number) => Promise<void> } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

const FAST = { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 4 };

function options(sleep: (ms: number) => Promise<void>, extra: DeliverOptions = {}): DeliverOptions {
  return { transactions: true, retry: FAST, sleep, ...extra };
}

/** A server's answer to a transaction: every entry created, with a location. */
function transactionResponse(request: Bundle): Bundle {
  return {
    resourceType: 'Bundle',
    type: 'transaction-response',
    entry: (request.entry ?? []).map((e, i) => ({
      response: { status: '201 Created', location: `${e.resource!.resourceType}/id-${i}-${e.resource!.resourceType.toLowerCase()}/_history/1` },
    })),
  };
}

/** nock 15 calls reply functions with the fetch Request. */
const answerTransaction = async (request: Request): Promise<Bundle> => transactionResponse((await request.json()) as Bundle);

const outcome = (text: string, code = 'invalid'): OperationOutcome => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'error', code: code as 'invalid', details: { text }, expression: ['Patient.birthDate'] }],
});

const resetError = (): Error => Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });

describe('deliverBundle against faults', () => {
  it('retries 503 and a reset connection, then delivers', async () => {
    const { waits, sleep } = recorder();
    const scope = nock(ORIGIN)
      .post('/fhir/R4')
      .reply(503, outcome('overloaded', 'transient'))
      .post('/fhir/R4')
      .replyWithError(resetError())
      .post('/fhir/R4')
      .reply(200, answerTransaction);
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep));
    expect(scope.isDone()).toBe(true);
    expect(result).toEqual({ outcome: 'delivered', attempts: 3, requests: 1, entries: { created: bundle.entry!.length, updated: 0 }, statusClasses: { '2xx': bundle.entry!.length }, located: expect.any(Object) });
    expect(waits).toHaveLength(2);
    for (const w of waits) expect(w).toBeLessThanOrEqual(FAST.maxDelayMs);
  });

  it('waits at least what Retry-After asks for (seconds and HTTP date)', async () => {
    const { waits, sleep } = recorder();
    const now = Date.parse('2025-03-01T12:00:00Z');
    nock(ORIGIN)
      .post('/fhir/R4')
      .reply(429, outcome('slow down', 'throttled'), { 'Retry-After': '3' })
      .post('/fhir/R4')
      .reply(503, outcome('maintenance', 'transient'), { 'Retry-After': 'Sat, 01 Mar 2025 12:00:08 GMT' })
      .post('/fhir/R4')
      .reply(200, answerTransaction);
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep, { now: () => now }));
    expect(result.outcome).toBe('delivered');
    expect(result.attempts).toBe(3);
    expect(waits[0]).toBeGreaterThanOrEqual(3000);
    expect(waits[1]).toBeGreaterThanOrEqual(8000);
  });

  it('tells each throttle and conflict it retries itself as pressure, before waiting, and nothing else', async () => {
    const { sleep } = recorder();
    const told: PressureSignal[] = [];
    nock(ORIGIN)
      .post('/fhir/R4')
      .reply(429, outcome('slow down', 'throttled'), { 'Retry-After': '2' })
      .post('/fhir/R4')
      .reply(409, outcome('could not serialize access', 'conflict'))
      .post('/fhir/R4')
      .reply(503, outcome('maintenance', 'transient'))
      .post('/fhir/R4')
      .reply(200, answerTransaction);
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep, { onPressure: (signal) => void told.push(signal) }));
    // The retries succeeded: without the hook the destination's pacer would never have heard of the 429.
    expect(result.outcome).toBe('delivered');
    expect(told).toEqual([
      { kind: 'throttle', status: 429, retryAfterMs: 2000 },
      { kind: 'conflict', status: 409 },
    ]);
  });

  it('gives up without sleeping when Retry-After is longer than the policy waits in process', async () => {
    const { waits, sleep } = recorder();
    nock(ORIGIN).post('/fhir/R4').reply(503, outcome('down for an hour', 'transient'), { 'Retry-After': '3600' });
    const error = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeliveryRetryableError);
    expect((error as DeliveryRetryableError).retryAfterMs).toBe(3_600_000);
    expect(waits).toEqual([]);
  });

  it('retries a request that outlasts the timeout', async () => {
    const { waits, sleep } = recorder();
    const scope = nock(ORIGIN)
      .post('/fhir/R4')
      .reply(async () => {
        await stalled;
        return [200, {}];
      })
      .post('/fhir/R4')
      .reply(200, answerTransaction);
    // The first answer never comes; 1 s leaves the second one room on a loaded machine.
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE, timeoutMs: 1000 }), bundle, options(sleep));
    expect(scope.isDone()).toBe(true);
    expect(result.rejection).toBeUndefined();
    expect(result.outcome).toBe('delivered');
    expect(result.attempts).toBe(2);
    expect(waits).toHaveLength(1);
  });

  it('rejects once on a 400 with an OperationOutcome, with the server message, and does not retry', async () => {
    const { waits, sleep } = recorder();
    nock(ORIGIN).post('/fhir/R4').reply(400, outcome('birthDate must not be in the future'), { 'Content-Type': 'application/fhir+json' });
    const spare = nock(ORIGIN).post('/fhir/R4').reply(200, {});
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep));
    expect(result.outcome).toBe('rejected');
    expect(result.attempts).toBe(1);
    expect(result.requests).toBe(1);
    expect(result.rejection!.status).toBe(400);
    expect(result.rejection!.message).toContain('birthDate must not be in the future');
    expect(result.rejection!.outcome.issue[0].details!.text).toBe('birthDate must not be in the future');
    expect(spare.isDone()).toBe(false);
    expect(waits).toEqual([]);
  });

  it('on 401 calls onUnauthorized once and sends again with fresh credentials', async () => {
    let token = 'stale';
    const refused: Record<string, string>[] = [];
    const client = new FhirClient({
      baseUrl: BASE,
      auth: async () => ({ Authorization: `Bearer ${token}` }),
      onUnauthorized: async (rejected) => {
        refused.push(rejected ?? {});
        token = 'fresh';
      },
    });
    const scope = nock(ORIGIN)
      .post('/fhir/R4')
      .matchHeader('authorization', 'Bearer stale')
      .reply(401, outcome('token expired', 'login'))
      .post('/fhir/R4')
      .matchHeader('authorization', 'Bearer fresh')
      .reply(200, answerTransaction);
    const result = await deliverBundle(client, bundle, options(recorder().sleep));
    expect(scope.isDone()).toBe(true);
    expect(result.outcome).toBe('delivered');
    expect(refused).toEqual([{ Authorization: 'Bearer stale' }]);
  });

  it('fails with the 401 when fresh credentials are refused too (a credentials problem, not a rejection)', async () => {
    let refreshes = 0;
    const client = new FhirClient({ baseUrl: BASE, auth: { headers: async () => ({ Authorization: 'Bearer x' }), onUnauthorized: async () => void refreshes++ } });
    nock(ORIGIN).post('/fhir/R4').times(2).reply(401, outcome('invalid token', 'login'));
    const error = await deliverBundle(client, bundle, options(recorder().sleep)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FhirHttpError);
    expect((error as FhirHttpError).status).toBe(401);
    expect((error as FhirHttpError).message).toContain('invalid token');
    expect(refreshes).toBe(1);
  });

  it('throws DeliveryRetryableError once retries are exhausted', async () => {
    const { waits, sleep } = recorder();
    nock(ORIGIN).post('/fhir/R4').times(2).reply(503, outcome('unavailable', 'transient')).post('/fhir/R4').times(2).replyWithError(resetError());
    const error = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeliveryRetryableError);
    expect((error as DeliveryRetryableError).attempts).toBe(FAST.maxAttempts);
    expect(waits).toHaveLength(FAST.maxAttempts - 1);
    expect(nock.pendingMocks()).toEqual([]);
  });

  it('splits for maxEntries, referring to earlier parts by the server ids they got', async () => {
    const sent: Bundle[] = [];
    nock(ORIGIN)
      .post('/fhir/R4')
      .times(10)
      .reply(200, async (request: Request) => {
        const body = (await request.json()) as Bundle;
        sent.push(body);
        return transactionResponse(body);
      });
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(recorder().sleep, { maxEntries: 8 }));
    expect(result.requests).toBe(Math.ceil(bundle.entry!.length / 8));
    expect(sent).toHaveLength(result.requests);
    expect(result.entries.created).toBe(bundle.entry!.length);
    for (const part of sent) expect(part.entry!.length).toBeLessThanOrEqual(8);
    // The Patient went in part 1 (entry 1) and got id-1-patient; later parts point there.
    const later = sent.slice(1).flatMap((p) => p.entry!.flatMap((e) => referencesOf(e.resource)));
    expect(later).toContain('Patient/id-1-patient');
    for (const ref of later) expect(ref).toMatch(/^(urn:uuid:|[A-Za-z]+\/id-)/);
  });

  it('posts a serialised bundle as the text it is, and parses and splits one larger than maxEntries', async () => {
    const serialized = serializeBundle(bundle);
    const bodies: string[] = [];
    nock(ORIGIN)
      .post('/fhir/R4')
      .times(10)
      .reply(200, async (request: Request) => {
        const text = await request.text();
        bodies.push(text);
        return transactionResponse(JSON.parse(text) as Bundle);
      });
    const client = new FhirClient({ baseUrl: BASE });
    const whole = await deliverBundle(client, serialized, options(recorder().sleep));
    expect(whole).toEqual({ outcome: 'delivered', attempts: 1, requests: 1, entries: { created: bundle.entry!.length, updated: 0 }, statusClasses: { '2xx': bundle.entry!.length }, located: expect.any(Object) });
    expect(bodies).toEqual([JSON.stringify(bundle)]);
    const split = await deliverBundle(client, serialized, options(recorder().sleep, { maxEntries: 8 }));
    expect(split.requests).toBe(Math.ceil(bundle.entry!.length / 8));
    expect(bodies.slice(1).map((b) => (JSON.parse(b) as Bundle).entry!.length)).toEqual(
      Array.from({ length: split.requests }, (_, i) => Math.min(8, bundle.entry!.length - 8 * i)),
    );
  });

  it('rejects a serialised bundle on a 400 with the server message, once', async () => {
    nock(ORIGIN).post('/fhir/R4').reply(400, outcome('birthDate is not a date'));
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), serializeBundle(bundle), options(recorder().sleep));
    expect(result).toMatchObject({ outcome: 'rejected', attempts: 1, requests: 1, rejection: { status: 400, message: expect.stringContaining('birthDate is not a date') } });
  });

  it('without transactions (detected once per client) sends conditional PUTs and rejects at the first refused one', async () => {
    const client = new FhirClient({ baseUrl: BASE });
    const puts: { url: string; body: Resource }[] = [];
    nock(ORIGIN)
      .get('/fhir/R4/metadata')
      .once()
      .reply(200, { resourceType: 'CapabilityStatement', rest: [{ mode: 'server', interaction: [{ code: 'search-system' }] }] });
    let n = 0;
    nock(ORIGIN)
      .put(/\/fhir\/R4\/\w+\?/)
      .times(100)
      .reply(async (request: Request) => {
        const resource = (await request.json()) as Resource;
        puts.push({ url: request.url, body: resource });
        n++;
        if (n === bundle.entry!.length + 3) return [422, outcome('unknown code')];
        return [n % 2 ? 201 : 200, { ...resource, id: `x${n}` }];
      });
    const first = await deliverBundle(client, bundle, { retry: FAST, sleep: recorder().sleep });
    expect(first).toMatchObject({ outcome: 'delivered', requests: bundle.entry!.length, attempts: bundle.entry!.length });
    expect(first.entries.created + first.entries.updated).toBe(bundle.entry!.length);
    for (const put of puts) {
      expect(put.url).toMatch(/\?(identifier|_tag)=/);
      expect(referencesOf(put.body).filter((r) => r.startsWith('urn:uuid:'))).toEqual([]);
    }
    const second = await deliverBundle(client, bundle, { retry: FAST, sleep: recorder().sleep });
    expect(second.outcome).toBe('rejected');
    expect(second.requests).toBe(3);
    expect(second.rejection!.message).toContain('unknown code');
  });
});

describe('FhirHttpError', () => {
  it('carries status, outcome, retryability and the server diagnostics in its message', async () => {
    nock(ORIGIN).get('/fhir/R4/Patient/1').reply(503, outcome('database unavailable', 'transient'), { 'Retry-After': '5' });
    nock(ORIGIN).get('/fhir/R4/Patient/2').reply(404, 'no such thing');
    const client = new FhirClient({ baseUrl: `${BASE}/` });
    const e1 = (await client.get('Patient/1').catch((e: unknown) => e)) as FhirHttpError;
    expect(e1).toBeInstanceOf(FhirHttpError);
    expect(e1).toMatchObject({ status: 503, retryable: true, retryAfter: '5' });
    expect(e1.outcome?.resourceType).toBe('OperationOutcome');
    expect(e1.message).toContain('database unavailable at Patient.birthDate');
    const e2 = (await client.get('Patient/2').catch((e: unknown) => e)) as FhirHttpError;
    expect(e2).toMatchObject({ status: 404, retryable: false, outcome: undefined });
    expect(e2.message).toContain('no such thing');
  });

  it('sends and accepts application/fhir+json', async () => {
    nock(ORIGIN)
      .matchHeader('accept', 'application/fhir+json')
      .matchHeader('content-type', /application\/fhir\+json/)
      .put('/fhir/R4/Patient?identifier=s%7Cv')
      .reply(201, { resourceType: 'Patient', id: 'p' }, { 'Content-Type': 'application/fhir+json' });
    const response = await new FhirClient({ baseUrl: BASE }).put<BundleEntry>('Patient?identifier=s|v', { resourceType: 'Patient' });
    expect(response.status).toBe(201);
    expect(response.body).toEqual({ resourceType: 'Patient', id: 'p' });
  });
});
