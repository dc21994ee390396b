/**
 * A subject refused by a server that applies transactions entry by entry (Medplum without
 * `transaction-bundles`), or refused half-way through individual updates, leaves nothing on the server: what
 * the delivery created is removed again, so the server holds exactly the subjects reported delivered.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { ServerDouble } from '../../test/support/server-double.ts';
import { TransactionBatcher } from './batcher.ts';
import { FhirClient } from './client.ts';
import { deliverBundle, DeliveryRetryableError, isNonAtomic, undoAfterGivingUp, type DeliverOptions } from './deliver.ts';
import { serializeBundle } from './serialized-bundle.ts';

let withEvents: Bundle[];
let withoutEvents: Bundle[];
let double: ServerDouble | undefined;

beforeAll(async () => {
  const mapped: Bundle[] = [];
  for (const site of SAMPLE_SITES) {
    const done = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
    mapped.push(...done.bundles.map((b) => b.bundle));
  }
  const bundles = mapped;
  const hasEvent = (b: Bundle) => b.entry!.some((e) => e.resource!.resourceType === 'AdverseEvent');
  withEvents = bundles.filter(hasEvent);
  withoutEvents = bundles.filter((b) => !hasEvent(b));
  expect(withEvents.length).toBeGreaterThan(1);
  expect(withoutEvents.length).toBeGreaterThan(1);
});

afterEach(async () => {
  await double?.close();
  double = undefined;
});

const OPTIONS: DeliverOptions = { transactions: true, retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 2 } };

/** How many of the bundle's business identifiers the server holds. */
async function held(bundle: Bundle): Promise<number> {
  let n = 0;
  for (const entry of bundle.entry!) {
    const resource = entry.resource as Resource;
    const tag = resource.meta!.tag![0];
    const byTag = resource.resourceType === 'AdverseEvent' || resource.resourceType === 'Provenance';
    n += await double!.countByIdentifier(resource.resourceType, tag.system!, tag.code!, byTag ? '_tag' : 'identifier');
  }
  return n;
}

describe('what a refused subject had created is removed again', () => {
  it('transactions run as batches: the AdverseEvents refused, the rest of the subject removed; other subjects held whole', async () => {
    double = await ServerDouble.start({ transactionsAsBatches: true, entryFaults: [{ status: 400, resourceType: 'AdverseEvent', text: 'AdverseEvent.outcome: not in the required value set' }] });
    const client = new FhirClient({ baseUrl: double.baseUrl });
    const refused = await deliverBundle(client, serializeBundle(withEvents[0]), OPTIONS);
    expect(refused.outcome).toBe('rejected');
    expect(isNonAtomic(client)).toBe(true);
    const applied = withEvents[0].entry!.filter((e) => e.resource!.resourceType !== 'AdverseEvent').length;
    expect(refused.rejection!.message).toContain(`(${applied} resources this delivery had created removed again)`);
    expect(await held(withEvents[0])).toBe(0);
    const delivered = await deliverBundle(client, serializeBundle(withoutEvents[0]), OPTIONS);
    expect(delivered.outcome).toBe('delivered');
    expect(await held(withoutEvents[0])).toBe(withoutEvents[0].entry!.length);
    expect(await double.danglingReferences()).toEqual([]);
  });

  it('individual updates: the ones before the refused AdverseEvent are removed, dependants first', async () => {
    double = await ServerDouble.start({ entryFaults: [{ status: 400, resourceType: 'AdverseEvent' }] });
    const result = await deliverBundle(new FhirClient({ baseUrl: double.baseUrl }), withEvents[0], { ...OPTIONS, transactions: false });
    expect(result.outcome).toBe('rejected');
    expect(result.rejection!.status).toBe(400);
    expect(result.rejection!.message).toMatch(/\(\d+ resources this delivery had created removed again\)$/);
    expect(await held(withEvents[0])).toBe(0);
  });

  it('a resource held before the delivery (answered 200, not 201) stays', async () => {
    double = await ServerDouble.start({ transactionsAsBatches: true });
    const client = new FhirClient({ baseUrl: double.baseUrl });
    const patientOnly: Bundle = { ...withEvents[1], entry: withEvents[1].entry!.filter((e) => e.resource!.resourceType === 'Patient') };
    expect((await deliverBundle(client, patientOnly, OPTIONS)).outcome).toBe('delivered');
    double.behave({ transactionsAsBatches: true, entryFaults: [{ status: 400, resourceType: 'AdverseEvent' }] });
    expect((await deliverBundle(client, serializeBundle(withEvents[1]), OPTIONS)).outcome).toBe('rejected');
    expect(await held(withEvents[1])).toBe(1);
  });

  it('a shared transaction: only the refused subject is removed; the others are delivered and held', async () => {
    double = await ServerDouble.start({ transactionsAsBatches: true, entryFaults: [{ status: 400, resourceType: 'AdverseEvent' }] });
    const batcher = new TransactionBatcher(new FhirClient({ baseUrl: double.baseUrl }), { subjects: 3, entries: 1000 }, () => OPTIONS);
    const bundles = [withoutEvents[0], withEvents[0], withoutEvents[1]];
    const results = await Promise.all(bundles.map((b) => batcher.deliver(serializeBundle(b))));
    expect(results.map((r) => r.outcome)).toEqual(['delivered', 'rejected', 'delivered']);
    expect(batcher.stats).toMatchObject({ batches: 1, fallbacks: 0 });
    expect(results[1].rejection!.message).toContain('this delivery had created removed again');
    // Only the ResearchStudy it shares with the delivered subjects stays.
    expect(await held(bundles[1])).toBe(1);
    for (const b of [bundles[0], bundles[2]]) expect(await held(b)).toBe(b.entry!.length);
  });

  it('a subject given up after retryable entry failures (its last attempt) is removed again too', async () => {
    double = await ServerDouble.start({ transactionsAsBatches: true, entryFaults: [{ status: 409, resourceType: 'Observation' }] });
    const client = new FhirClient({ baseUrl: double.baseUrl });
    const bundle = withoutEvents.find((b) => b.entry!.some((e) => e.resource!.resourceType === 'Observation'))!;
    const serialized = serializeBundle(bundle);
    const error = await deliverBundle(client, serialized, OPTIONS).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DeliveryRetryableError);
    expect((error as DeliveryRetryableError).kind).toBe('conflict');
    expect(await held(bundle)).toBeGreaterThan(0);
    const note = await undoAfterGivingUp(client, serialized, error, OPTIONS);
    expect(note).toMatch(/^ \(\d+ resources this delivery had created removed again\)$/);
    expect(await held(bundle)).toBe(0);
    expect(await undoAfterGivingUp(client, serialized, new Error('not a delivery failure'), OPTIONS)).toBe('');
  });
});
