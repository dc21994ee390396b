import nock from 'nock';
import type { Bundle, ResearchStudy } from '@medplum/fhirtypes';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { combine, TransactionBatcher } from './batcher.ts';
import { FhirClient } from './client.ts';
import type { DeliverOptions } from './deliver.ts';
import { parseBundle, serializeBundle } from './serialized-bundle.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from './embedded-server.ts';

let bundles: Bundle[];
let server: EmbeddedFhirServer;

beforeAll(async () => {
  const site = SAMPLE_SITES[0];
  const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
  bundles = mapped.bundles.slice(0, 3).map((b) => b.bundle);
  server = await startEmbeddedFhirServer();
});

afterAll(async () => {
  await server?.close();
});

afterEach(() => {
  nock.cleanAll();
  nock.enableNetConnect();
});

const OPTIONS: DeliverOptions = { transactions: true, retry: { maxAttempts: 1 } };

async function patientCount(): Promise<number> {
  return (await new FhirClient({ baseUrl: server.baseUrl }).get<Bundle>('Patient?_summary=count')).body?.total ?? 0;
}

describe('combine', () => {
  it('keeps one copy of an entry the bundles share, and leaves out a bundle holding another version of it', () => {
    const study = (b: Bundle) => b.entry!.filter((e) => e.resource?.resourceType === 'ResearchStudy');
    expect(study(bundles[0])).toHaveLength(1);
    const { combined, conflicting } = combine(bundles.map(serializeBundle));
    expect(conflicting).toEqual([]);
    const parsed = parseBundle(combined);
    expect(study(parsed)).toHaveLength(1);
    expect(parsed.entry).toHaveLength(bundles.reduce((n, b) => n + b.entry!.length, 0) - 2);
    expect(new Set(parsed.entry!.map((e) => e.fullUrl)).size).toBe(parsed.entry!.length);

    const otherStudy = structuredClone(bundles[1]);
    (study(otherStudy)[0].resource as ResearchStudy).title = 'another title';
    const mixed = combine([bundles[0], otherStudy, bundles[2]].map(serializeBundle));
    expect(mixed.conflicting).toEqual([1]);
    expect(mixed.combined.entries).toHaveLength(bundles[0].entry!.length + bundles[2].entry!.length - 1);
  });
});

describe('TransactionBatcher against the embedded FHIR server', () => {
  it('sends bundles that arrive together in one transaction, and each gets delivered', async () => {
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const batcher = new TransactionBatcher(client, { subjects: 3, entries: 1000 }, () => OPTIONS);
    const before = await patientCount();
    const results = await Promise.all(bundles.map((b) => batcher.deliver(serializeBundle(b))));
    expect(results.map((r) => r.outcome)).toEqual(['delivered', 'delivered', 'delivered']);
    expect(batcher.stats).toEqual({ batches: 1, batchedSubjects: 3, fallbacks: 0 });
    expect(await patientCount()).toBe(before + 3);
    // Sent again: conditional updates, nothing new.
    await Promise.all(bundles.map((b) => batcher.deliver(serializeBundle(b))));
    expect(await patientCount()).toBe(before + 3);
  });

  it('on a rejection sends each bundle alone: only the subject the server refuses is rejected, with its message', async () => {
    // The server refuses transactions of more entries than the second subject's bundle has (a 400 with an
    // OperationOutcome), so it refuses the combined one and that subject's, and takes the others'.
    const sizes = bundles.map((b) => b.entry!.length);
    expect(sizes[1]).toBeGreaterThan(Math.max(sizes[0], sizes[2]));
    const fresh = await startEmbeddedFhirServer({ maxTransactionEntries: sizes[1] - 1 });
    try {
      const batcher = new TransactionBatcher(new FhirClient({ baseUrl: fresh.baseUrl }), { subjects: 3, entries: 1000 }, () => OPTIONS);
      const results = await Promise.all(bundles.map((b) => batcher.deliver(serializeBundle(b))));
      expect(results.map((r) => r.outcome)).toEqual(['delivered', 'rejected', 'delivered']);
      expect(results[1].rejection).toMatchObject({ status: 400, message: `Transaction has ${sizes[1]} entries, more than the ${sizes[1] - 1} allowed` });
      expect(batcher.stats).toMatchObject({ batches: 1, fallbacks: 1 });
      const patients = (await new FhirClient({ baseUrl: fresh.baseUrl }).get<Bundle>('Patient?_summary=count')).body?.total;
      expect(patients).toBe(2);
    } finally {
      await fresh.close();
    }
  });

  it('fails every bundle of a transaction the server does not answer (to be retried by the queue), and batches no more than the entry limit', async () => {
    nock('http://batch.test').post('/fhir').reply(503, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient' }] });
    const bodies: Bundle[] = [];
    const batcher = new TransactionBatcher(new FhirClient({ baseUrl: 'http://batch.test/fhir' }), { subjects: 3, entries: 1000 }, () => OPTIONS);
    const settled = await Promise.allSettled(bundles.map((b) => batcher.deliver(serializeBundle(b))));
    expect(settled.map((s) => s.status)).toEqual(['rejected', 'rejected', 'rejected']);

    // Room for the first two bundles (counted whole), not for the third as well.
    const limit = bundles[0].entry!.length + bundles[1].entry!.length;
    nock('http://batch.test')
      .post('/fhir')
      .times(3)
      .reply(200, async (request: Request) => {
        const body = (await request.json()) as Bundle;
        bodies.push(body);
        return { resourceType: 'Bundle', type: 'transaction-response', entry: body.entry!.map(() => ({ response: { status: '200 OK' } })) };
      });
    const limited = new TransactionBatcher(new FhirClient({ baseUrl: 'http://batch.test/fhir' }), { subjects: 3, entries: limit }, () => OPTIONS);
    const results = await Promise.all(bundles.map((b) => limited.deliver(serializeBundle(b))));
    expect(results.every((r) => r.outcome === 'delivered')).toBe(true);
    expect(bodies.map((b) => b.entry!.length)).toEqual([limit - 1, bundles[2].entry!.length]);
  });

  it('judges each subject of a shared transaction a non-atomic server answered entry by entry by its own entries, without sending again', async () => {
    // The second subject's Patient refused inside a 200 (Medplum running the transaction as a batch).
    const refusedUrl = bundles[1].entry!.find((e) => e.resource!.resourceType === 'Patient')!.request!.url;
    nock('http://batch.test')
      .post('/fhir')
      .reply(200, async (request: Request) => {
        const body = (await request.json()) as Bundle;
        return {
          resourceType: 'Bundle',
          type: 'transaction-response',
          entry: body.entry!.map((e) =>
            e.request!.url === refusedUrl
              ? { response: { status: '400', outcome: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', diagnostics: 'birthDate in the future' }] } } }
              : { response: { status: '201 Created' } },
          ),
        };
      });
    const batcher = new TransactionBatcher(new FhirClient({ baseUrl: 'http://batch.test/fhir' }), { subjects: 3, entries: 1000 }, () => OPTIONS);
    const results = await Promise.all(bundles.map((b) => batcher.deliver(serializeBundle(b))));
    expect(results.map((r) => r.outcome)).toEqual(['delivered', 'rejected', 'delivered']);
    expect(batcher.stats).toMatchObject({ batches: 1, fallbacks: 0 });
    const failures = results[1].rejection!.entries!;
    // The Patient, and every entry of that subject referring to it (all of them but the ResearchStudy).
    const patientAt = bundles[1].entry!.findIndex((e) => e.request!.url === refusedUrl);
    expect(failures.find((f) => f.dependsOn === undefined)).toMatchObject({ index: patientAt, resourceType: 'Patient', status: 400 });
    expect(failures.filter((f) => f.dependsOn !== undefined).length).toBeGreaterThan(3);
    expect(nock.isDone()).toBe(true);
  });
});
