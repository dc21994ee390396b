/**
 * Every answer checked: what a destination says back decides `delivered`, entry by entry (nock injects the
 * answers real servers give, see ../shared/fhir-servers.md).
 */
import nock from 'nock';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Bundle, BundleEntry, OperationOutcome } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { FhirClient } from './client.ts';
import { deliverBundle, DeliveryRetryableError, isNonAtomic, type DeliverOptions } from './deliver.ts';
import { serializeBundle } from './serialized-bundle.ts';

const ORIGIN = 'http://answers.test';
const BASE = `${ORIGIN}/fhir/R4`;

let bundle: Bundle;

beforeAll(async () => {
  const site = SAMPLE_SITES[0];
  const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
  // A subject with adverse events: their Provenance points at them.
  bundle = mapped.bundles.map((b) => b.bundle).find((b) => b.entry!.some((e) => e.resource?.resourceType === 'AdverseEvent'))!;
});

beforeEach(() => nock.disableNetConnect());
afterEach(() => {
  nock.cleanAll();
  nock.enableNetConnect();
});

function recorder(): { waits: number[]; sleep: (ms: number) => Promise<void> } {
  const waits: number[] = [];
  return { waits, sleep: async (ms) => void waits.push(ms) };
}

const FAST = { maxAttempts: 3, baseDelayMs: 1, maxDelayMs: 4, maxRetryAfterMs: 60_000 };
const options = (sleep: (ms: number) => Promise<void>, extra: DeliverOptions = {}): DeliverOptions => ({ transactions: true, retry: FAST, sleep, ...extra });

const issue = (code: string, diagnostics: string): OperationOutcome => ({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: code as 'invalid', diagnostics }] });

/** A transaction-response with `status(i)` per entry (as Medplum answers a transaction it ran as a batch). */
function answer(request: Bundle, status: (entry: BundleEntry, i: number) => string | [string, OperationOutcome], type = 'transaction-response'): Bundle {
  return {
    resourceType: 'Bundle',
    type: type as Bundle['type'],
    entry: (request.entry ?? []).map((e, i) => {
      const s = status(e, i);
      const [code, outcome] = Array.isArray(s) ? s : [s, undefined];
      return { response: { status: code, ...(code.startsWith('2') ? { location: `${e.resource!.resourceType}/x${i}/_history/1` } : {}), ...(outcome ? { outcome } : {}) } };
    }),
  };
}

const typeOf = (e: BundleEntry): string => e.resource!.resourceType;

describe('a transaction answer is checked before anything counts delivered', () => {
  it('does not follow a 307 to another host, and never sends the credentials there', async () => {
    const elsewhere = nock('http://elsewhere.test').post(/.*/).reply(200, {});
    nock(ORIGIN).post('/fhir/R4').reply(307, '', { Location: 'http://elsewhere.test/fhir/R4?token=abc' });
    const client = new FhirClient({ baseUrl: BASE, auth: () => ({ authorization: 'Bearer secret' }) });
    const result = await deliverBundle(client, serializeBundle(bundle), options(recorder().sleep));
    expect(result.outcome).toBe('rejected');
    expect(result.rejection).toMatchObject({ status: 307, kind: 'answer' });
    expect(result.rejection!.message).toContain('http://elsewhere.test/fhir/R4; not followed');
    expect(result.rejection!.message).not.toContain('token=abc');
    expect(elsewhere.isDone()).toBe(false);
  });

  it('rejects a delivery whose CapabilityStatement (transactions: detect) is answered with a redirect, sending nothing', async () => {
    nock(ORIGIN).get('/fhir/R4/metadata').reply(302, '', { Location: 'https://login.example/authorize' });
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, { ...options(recorder().sleep), transactions: 'detect' });
    expect(result).toMatchObject({ outcome: 'rejected', requests: 0, rejection: { status: 302, kind: 'answer' } });
    expect(result.rejection!.message).toContain('https://login.example/authorize; not followed');
  });

  it('rejects an HTML login page answered with 200, an empty and a short transaction-response, and a batch-response', async () => {
    const client = new FhirClient({ baseUrl: BASE });
    nock(ORIGIN).post('/fhir/R4').reply(200, '<html><body>Sign in</body></html>', { 'Content-Type': 'text/html' });
    const html = await deliverBundle(client, bundle, options(recorder().sleep));
    expect(html.rejection).toMatchObject({ status: 200, kind: 'answer' });
    expect(html.rejection!.message).toMatch(/not JSON \(text\/html\).*not a transaction-response/);

    nock(ORIGIN).post('/fhir/R4').reply(200, { resourceType: 'Bundle', type: 'transaction-response', entry: [] });
    const empty = await deliverBundle(client, serializeBundle(bundle), options(recorder().sleep));
    expect(empty.outcome).toBe('rejected');
    expect(empty.rejection!.message).toContain(`0 entries for the ${bundle.entry!.length} sent`);
    expect(empty.statusClasses).toEqual({ missing: bundle.entry!.length });

    nock(ORIGIN).post('/fhir/R4').reply(200, async (request: Request) => {
      const sent = (await request.json()) as Bundle;
      return { ...answer(sent, () => '200 OK'), entry: answer(sent, () => '200 OK').entry!.slice(1) };
    });
    const short = await deliverBundle(client, bundle, options(recorder().sleep));
    expect(short.rejection!.message).toMatch(/entries missing/);

    nock(ORIGIN).post('/fhir/R4').reply(200, async (request: Request) => answer((await request.json()) as Bundle, () => '200 OK', 'batch-response'));
    const batch = await deliverBundle(client, bundle, options(recorder().sleep));
    expect(batch.rejection!.message).toContain('type batch-response, not a transaction-response');
  });

  it('re-sends the whole transaction after per-entry 409 and 429 inside a 200, waiting _msBeforeNext, and learns the server is not atomic', async () => {
    const { waits, sleep } = recorder();
    const throttled = issue('throttled', JSON.stringify({ _remainingPoints: 0, _msBeforeNext: 4200, limit: 50000 }));
    const bodies: string[] = [];
    const scope = nock(ORIGIN)
      .post('/fhir/R4')
      .reply(200, async (request: Request) => {
        const text = await request.text();
        bodies.push(text);
        // Medplum: once throttled, every remaining entry is 429; one serialization conflict before.
        return answer(JSON.parse(text) as Bundle, (_e, i) => (i === 1 ? ['409', issue('conflict', 'could not serialize access')] : i >= 5 ? ['429', throttled] : '201 Created'));
      })
      .post('/fhir/R4')
      .reply(200, async (request: Request) => {
        const text = await request.text();
        bodies.push(text);
        return answer(JSON.parse(text) as Bundle, () => '200 OK');
      });
    const client = new FhirClient({ baseUrl: BASE });
    expect(isNonAtomic(client)).toBe(false);
    const result = await deliverBundle(client, serializeBundle(bundle), options(sleep));
    expect(scope.isDone()).toBe(true);
    expect(result.outcome).toBe('delivered');
    // The whole subject again, byte for byte: conditional updates make it idempotent.
    expect(bodies[1]).toBe(bodies[0]);
    expect(waits).toEqual([4200]);
    expect(isNonAtomic(client)).toBe(true);
    const n = bundle.entry!.length;
    expect(result.statusClasses).toEqual({ '2xx': 4 + n, '4xx': n - 4 });
  });

  it('gives up with a throttle that carries the wait and the entry failures, for pacing', async () => {
    nock(ORIGIN)
      .post('/fhir/R4')
      .times(3)
      .reply(200, async (request: Request) => answer((await request.json()) as Bundle, (_e, i) => (i === 0 ? '200 OK' : ['429 Too Many Requests', issue('throttled', '{"_remainingPoints":0,"_msBeforeNext":900}')])), {
        RateLimit: '"fhirInteractions";r=0;t=2',
      });
    const error = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(recorder().sleep)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeliveryRetryableError);
    const retryable = error as DeliveryRetryableError;
    expect(retryable).toMatchObject({ kind: 'throttle', throttled: true, conflict: false, status: 429, attempts: 3 });
    // The RateLimit header's t (2 s) is preferred over the outcome's _msBeforeNext.
    expect(retryable.retryAfterMs).toBe(2000);
    expect(retryable.entries).toHaveLength(bundle.entry!.length - 1);
  });

  it('prefers x-ms-retry-after-ms to Retry-After on a whole 429 (Azure), and marks a 409 a conflict', async () => {
    const { waits, sleep } = recorder();
    nock(ORIGIN)
      .post('/fhir/R4')
      .reply(429, issue('throttled', 'busy'), { 'Retry-After': '2', 'x-ms-retry-after-ms': '350' })
      .post('/fhir/R4')
      .times(3)
      .reply(409, issue('conflict', 'race'));
    const error = (await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(sleep)).catch((e: unknown) => e)) as DeliveryRetryableError;
    expect(waits[0]).toBe(350);
    expect(error).toMatchObject({ kind: 'conflict', conflict: true, throttled: false, status: 409 });
  });

  it('tells a 412 serialization conflict (retried) from a 412 for several matches (dead-lettered)', async () => {
    nock(ORIGIN)
      .post('/fhir/R4')
      .reply(412, issue('conflict', 'could not serialize access due to concurrent update'))
      .post('/fhir/R4')
      .reply(200, async (request: Request) => answer((await request.json()) as Bundle, (_e, i) => (i === 0 ? ['412', issue('multiple-matches', 'Conditional PUT matched multiple resources')] : '200 OK')));
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), bundle, options(recorder().sleep));
    expect(result.attempts).toBe(2);
    expect(result.outcome).toBe('rejected');
    expect(result.rejection).toMatchObject({ status: 412, kind: 'invalid' });
  });

  it('names each refused entry by type and identifier system (no values), and a Provenance pointing at a refused AdverseEvent fails with it', async () => {
    const refused = issue('invalid', 'AdverseEvent.outcome: value not in required ValueSet');
    nock(ORIGIN)
      .post('/fhir/R4')
      .reply(200, async (request: Request) => answer((await request.json()) as Bundle, (e) => (typeOf(e) === 'AdverseEvent' ? ['400 Bad Request', refused] : '201 Created')));
    const result = await deliverBundle(new FhirClient({ baseUrl: BASE }), serializeBundle(bundle), options(recorder().sleep));
    expect(result.outcome).toBe('rejected');
    const failures = result.rejection!.entries!;
    const events = bundle.entry!.filter((e) => typeOf(e) === 'AdverseEvent');
    expect(failures.filter((f) => f.resourceType === 'AdverseEvent' && f.status === 400)).toHaveLength(events.length);
    const provenance = failures.find((f) => f.resourceType === 'Provenance');
    expect(provenance?.dependsOn).toBeDefined();
    expect(failures.find((f) => f.index === provenance!.dependsOn)?.resourceType).toBe('AdverseEvent');
    expect(failures[0].identifierSystem).toMatch(/^urn:trialbridge:.*adverse/);
    // The dead letter's reason names types and identifier systems, never a business key or record value.
    const values = events.map((e) => e.resource!.meta!.tag![0].code!);
    for (const value of values) expect(result.rejection!.message).not.toContain(value);
    expect(result.rejection!.message).toContain('refers to the refused AdverseEvent');
  });
});

describe('individual conditional updates (no transactions) are checked too', () => {
  const patientOnly = (): Bundle => ({ resourceType: 'Bundle', type: 'transaction', entry: bundle.entry!.filter((e) => typeOf(e) === 'Patient') });

  it('rejects a 200 HTML page, an OperationOutcome and an empty body without a Location; accepts an empty 201 with the Location of a Patient', async () => {
    const client = new FhirClient({ baseUrl: BASE });
    const put = () => nock(ORIGIN).put(/\/fhir\/R4\/Patient\?identifier=/);
    const opts = options(recorder().sleep, { transactions: false });

    put().reply(200, '<html>login</html>', { 'Content-Type': 'text/html' });
    expect((await deliverBundle(client, patientOnly(), opts)).rejection!.message).toMatch(/not FHIR JSON \(text\/html\)/);

    put().reply(200, issue('informational', 'all good'));
    expect((await deliverBundle(client, patientOnly(), opts)).rejection!.message).toMatch(/with a OperationOutcome, not the Patient written/);

    put().reply(200, '');
    expect((await deliverBundle(client, patientOnly(), opts)).rejection!.message).toMatch(/empty body and no Location/);

    put().reply(201, '', { Location: `${BASE}/Patient/abc/_history/1` });
    const minimal = await deliverBundle(client, patientOnly(), opts);
    expect(minimal.outcome).toBe('delivered');
    expect(minimal.located).toEqual({ [patientOnly().entry![0].fullUrl!]: 'Patient/abc' });
  });
});
