import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { FhirClient } from './client.ts';
import { deliverBundle, type DeliverOptions, type DeliveryResult } from './deliver.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from './embedded-server.ts';
import { referencesOf } from './split.ts';

/** Correctness against a real FHIR server (the embedded @medplum/fhir-router one): counts, idempotence, references. */

const bundles: Bundle[] = [];
/** Distinct resources per type: the ResearchStudy rides in every bundle but is one resource. */
const expected: Record<string, number> = {};
let server: EmbeddedFhirServer | undefined;

beforeAll(async () => {
  for (const site of SAMPLE_SITES) {
    const mapping = await compileMapping(await loadMapping(site.mapping));
    const mapped = await mapExport(mapping, [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
    bundles.push(...mapped.bundles.map((b) => b.bundle));
  }
  const seen = new Set<string>();
  for (const entry of bundles.flatMap((b) => b.entry ?? [])) {
    if (seen.has(entry.request!.url)) continue;
    seen.add(entry.request!.url);
    expected[entry.resource!.resourceType] = (expected[entry.resource!.resourceType] ?? 0) + 1;
  }
});

afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function counts(client: FhirClient): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const type of Object.keys(expected)) {
    const response = await client.get<Bundle>(`${type}?_summary=count`);
    out[type] = response.body!.total!;
  }
  return out;
}

/** Every resource on the server, by `Type/id`. */
async function everything(client: FhirClient): Promise<Map<string, Resource>> {
  const all = new Map<string, Resource>();
  for (const type of Object.keys(expected)) {
    const response = await client.get<Bundle>(`${type}?_count=10000`);
    for (const entry of response.body!.entry ?? []) all.set(`${type}/${entry.resource!.id}`, entry.resource!);
  }
  return all;
}

async function deliverAll(client: FhirClient, options: DeliverOptions): Promise<DeliveryResult[]> {
  const results: DeliveryResult[] = [];
  for (const bundle of bundles) results.push(await deliverBundle(client, bundle, { retry: { baseDelayMs: 1, maxDelayMs: 4 }, ...options }));
  return results;
}

const modes: { name: string; server: EmbeddedFhirServerOptions; deliver: DeliverOptions; requests: (b: Bundle) => number }[] = [
  { name: 'whole transactions', server: {}, deliver: { transactions: true }, requests: () => 1 },
  { name: 'transactions split at 8 entries', server: { maxTransactionEntries: 8 }, deliver: { maxEntries: 8 }, requests: (b) => Math.ceil(b.entry!.length / 8) },
  { name: 'conditional updates (no transactions, detected)', server: { transactions: false }, deliver: { transactions: 'detect' }, requests: (b) => b.entry!.length },
];

describe.each(modes)('delivering the sample bundles as $name', (mode) => {
  it('puts every resource on the server once, with resolvable references, and changes nothing when sent again', async () => {
    server = await startEmbeddedFhirServer(mode.server);
    const client = new FhirClient({ baseUrl: server.baseUrl, timeoutMs: 10_000 });

    const first = await deliverAll(client, mode.deliver);
    expect(first.filter((r) => r.outcome !== 'delivered')).toEqual([]);
    expect(first.map((r) => r.requests)).toEqual(bundles.map(mode.requests));
    const total = Object.values(expected).reduce((a, b) => a + b, 0);
    expect(first.reduce((n, r) => n + r.entries.created, 0)).toBe(total);
    expect(await counts(client)).toEqual(expected);

    // Every reference is a literal one to a resource on the server (no urn:uuid, no unresolved conditional one).
    const stored = await everything(client);
    expect(stored.size).toBe(total);
    const dangling = [...stored.values()].flatMap((r) => referencesOf(r).filter((ref) => !stored.has(ref)));
    expect(dangling).toEqual([]);

    const again = await deliverAll(client, mode.deliver);
    expect(again.filter((r) => r.outcome !== 'delivered')).toEqual([]);
    expect(again.reduce((n, r) => n + r.entries.created, 0)).toBe(0);
    expect(await counts(client)).toEqual(expected);
  });
});

describe('delivering to the embedded server', () => {
  it('is rejected with the server message when a transaction is over its limit', async () => {
    server = await startEmbeddedFhirServer({ maxTransactionEntries: 8 });
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const big = bundles.find((b) => b.entry!.length > 8)!;
    const result = await deliverBundle(client, big, { transactions: true, retry: { maxAttempts: 3, baseDelayMs: 1 } });
    expect(result.outcome).toBe('rejected');
    expect(result.attempts).toBe(1);
    expect(result.rejection!.status).toBe(400);
    expect(result.rejection!.outcome.resourceType).toBe('OperationOutcome');
    expect(result.rejection!.message.length).toBeGreaterThan(5);
  });
});
