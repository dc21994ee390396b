/**
 * Delivery measurements behind two choices of src/delivery (issue 11), printed as JSON lines:
 *
 * 1. Re-sending after per-entry failures: the whole subject again (what deliver.ts does) against only the failed
 *    entries with what they refer to, or with what refers to them too (a Provenance refers to every resource of
 *    its subject, so a failed entry's dependants are the whole subject). The three sample sites (47 subjects)
 *    go to the server double running transactions as batches, with 1 write in 40 failing 409 (conflicts) or
 *    429 (throttling: every later entry of that request fails too, as on Medplum).
 * 2. A 600 MB answer, streamed lazily, against the default 32 MiB maxResponseBytes: the process's RSS growth and
 *    what the server got to send before the client cut it off, for both transports.
 *
 * Run: node bench/delivery-answers.bench.ts
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Bundle, BundleEntry } from '@medplum/fhirtypes';
import { mapExport } from '../src/bundle/map-export.ts';
import { SAMPLE_SITES } from '../src/cli/demo.ts';
import { FhirClient } from '../src/delivery/client.ts';
import { deliverBundle } from '../src/delivery/deliver.ts';
import { fetchTransport, httpTransport } from '../src/delivery/http-transport.ts';
import { serializeBundle } from '../src/delivery/serialized-bundle.ts';
import { referencesOf } from '../src/delivery/split.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { ServerDouble } from '../test/support/server-double.ts';

const bundles: Bundle[] = [];
for (const site of SAMPLE_SITES) {
  const mapping = await compileMapping(await loadMapping(site.mapping));
  bundles.push(...(await mapExport(mapping, [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false })).bundles.map((b) => b.bundle));
}

/** Entries of `entries` that `seed` refers to, transitively, with the seed. */
function closure(entries: readonly BundleEntry[], seed: Iterable<BundleEntry>): Set<BundleEntry> {
  const byUrl = new Map(entries.map((e) => [e.fullUrl!, e] as const));
  const out = new Set<BundleEntry>();
  const add = (e: BundleEntry): void => {
    if (out.has(e)) return;
    out.add(e);
    for (const r of referencesOf(e.resource)) {
      const target = byUrl.get(r);
      if (target) add(target);
    }
  };
  for (const e of seed) add(e);
  return out;
}

for (const status of [409, 429] as const) {
  let n = 0;
  const double = await ServerDouble.start({ transactionsAsBatches: true, entryFaults: [{ status, where: () => ++n % 40 === 0 }] });
  let sent = 0;
  let failedWithDependencies = 0;
  let failedWithDependants = 0;
  const counting: typeof fetch = async (input, init) => {
    const request = JSON.parse(Buffer.from(init!.body as Uint8Array).toString('utf8')) as Bundle;
    const response = await fetch(input, init);
    const answer = (await response.clone().json()) as Bundle;
    const entries = request.entry ?? [];
    sent += entries.length;
    const failed = entries.filter((_e, i) => !String(answer.entry?.[i]?.response?.status).startsWith('2'));
    failedWithDependencies += closure(entries, failed).size;
    const refused = new Set(failed.map((e) => e.fullUrl));
    for (let grown = true; grown; ) {
      grown = false;
      for (const e of entries) {
        if (!refused.has(e.fullUrl) && referencesOf(e.resource).some((r) => refused.has(r))) {
          refused.add(e.fullUrl);
          grown = true;
        }
      }
    }
    failedWithDependants += closure(entries, entries.filter((e) => refused.has(e.fullUrl))).size;
    return response;
  };
  const client = new FhirClient({ baseUrl: double.baseUrl, fetch: counting });
  let delivered = 0;
  for (const bundle of bundles) {
    const result = await deliverBundle(client, serializeBundle(bundle), { transactions: true, retry: { maxAttempts: 8, baseDelayMs: 1, maxDelayMs: 2, maxRetryAfterMs: 600_000 }, sleep: async () => {} }).catch(() => undefined);
    if (result?.outcome === 'delivered') delivered++;
  }
  const entries = bundles.reduce((sum, b) => sum + b.entry!.length, 0);
  console.log(
    JSON.stringify({
      measure: 're-send after per-entry failures',
      fault: `1 write in 40 answered ${status}`,
      subjects: bundles.length,
      deliveredWithin8Attempts: delivered,
      entries,
      extraEntriesWholeSubject: sent - entries,
      extraEntriesFailedWithDependencies: failedWithDependencies,
      extraEntriesFailedWithDependenciesAndDependants: failedWithDependants,
    }),
  );
  await double.close();
}

const total = 600 * 1024 * 1024;
const chunk = Buffer.alloc(1024 * 1024, 'a');
let served = 0;
const server = createServer((_req, res) => {
  served = 0;
  res.writeHead(200, { 'content-type': 'application/fhir+json' });
  const pump = (): void => {
    while (served < total && !res.destroyed) {
      served += chunk.length;
      if (!res.write(chunk)) {
        res.once('drain', pump);
        return;
      }
    }
    if (served >= total) res.end();
  };
  res.on('error', () => {});
  pump();
});
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
for (const [name, transport] of [
  ['node:http', httpTransport()],
  ['fetch', fetchTransport(fetch)],
] as const) {
  const before = process.memoryUsage().rss;
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
  const error = await new FhirClient({ baseUrl: url, transport }).post('', {}).catch((e: unknown) => e);
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss);
  console.log(JSON.stringify({ measure: '600 MB answer, maxResponseBytes 32 MiB', transport: name, error: (error as Error).name, rssPeakGrowthMiB: Math.round((peak - before) / 1048576), servedMiB: Math.round(served / 1048576) }));
}
server.closeAllConnections();
server.close();
