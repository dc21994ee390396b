/**
 * Read-back after delivery (`verify`): a server that answers a transaction as written but keeps nothing (the
 * fault, injected with nock in front of the embedded server, whose searches still answer) is caught, retried,
 * then dead-lettered with a reason naming types and identifier systems only; a server that holds the data
 * passes; `off` trusts the answer; `sample` reads back a fixed tenth of the subjects.
 */
import nock from 'nock';
import type { Bundle } from '@medplum/fhirtypes';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { DeliveryRetryableError } from '../../src/delivery/deliver.ts';
import { serializeBundle } from '../../src/delivery/serialized-bundle.ts';
import { DeliveryVerificationError, sampled, shouldVerify, VERIFY_SAMPLE_ONE_IN } from '../../src/delivery/verify.ts';
import type { DeliveryOrigin } from '../../src/queue/delivered.ts';
import { COUNTERS, perDestination, PipelineContext, runDeliveryJob, type DeadLetter, type DeliveryJobData, type PipelineStore } from '../../src/queue/stages.ts';
import { destinationsFrom, mapSampleSites, type SampleSites } from '../support/sample-sites.ts';

let sample: SampleSites;
beforeAll(async () => {
  sample = await mapSampleSites();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  nock.cleanAll();
  nock.enableNetConnect();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

class Store implements PipelineStore {
  readonly counts: Record<string, number> = {};
  readonly letters: DeadLetter[] = [];
  readonly recorded: DeliveryOrigin[] = [];
  async count(_id: string, _once: string, increments: Readonly<Record<string, number>>): Promise<void> {
    for (const [k, n] of Object.entries(increments)) this.counts[k] = (this.counts[k] ?? 0) + n;
  }
  async deadLetter(entries: DeadLetter | readonly DeadLetter[]): Promise<void> {
    this.letters.push(...(Array.isArray(entries) ? entries : [entries as DeadLetter]));
  }
  async delivered(origin: DeliveryOrigin): Promise<void> {
    this.recorded.push(origin);
  }
}

async function setup(verify: 'off' | 'sample' | 'all', forgetful: boolean): Promise<{ ctx: PipelineContext; server: EmbeddedFhirServer; job: DeliveryJobData }> {
  const server = await startEmbeddedFhirServer();
  cleanups.push(() => server.close());
  const destinations = await destinationsFrom([
    '  - name: registry',
    '    kind: registry',
    `    baseUrl: ${server.baseUrl}`,
    '    sites: "*"',
    '    transactions: true',
    `    verify: ${verify}`,
    '    retry: { attempts: 2, requestAttempts: 1, baseMs: 1, maxMs: 2 }',
    '    auth: { type: none }',
  ]);
  if (forgetful) {
    // The server answers every transaction as written, entry by entry, and keeps none of it.
    const { origin, pathname } = new URL(server.baseUrl);
    nock(origin, { allowUnmocked: true })
      .persist()
      .post(pathname)
      .reply(async (request: Request) => {
        const sent = (await request.json()) as Bundle;
        return [
          200,
          {
            resourceType: 'Bundle',
            type: 'transaction-response',
            entry: (sent.entry ?? []).map((e, i) => ({
              response: { status: '201 Created', location: `${e.resource?.resourceType}/forgotten-${i}/_history/1` },
              resource: { ...e.resource, id: `forgotten-${i}` },
            })),
          },
        ];
      });
  }
  const ctx = new PipelineContext({ mappings: sample.mappings, destinations, validator: null });
  const bundle = sample.exports[0].bundles[0];
  const job: DeliveryJobData = { submissionId: 's1', destination: 'registry', site: 'site-a', subject: bundle.subject, bundle: serializeBundle(bundle.bundle) };
  return { ctx, server, job };
}

describe('verify: read-back after delivery', () => {
  it('catches a server that answers written but keeps nothing: retried, then dead-lettered, never counted delivered', async () => {
    const { ctx, job } = await setup('all', true);
    const store = new Store();
    const first = runDeliveryJob(ctx, store, 'dlv.1', job, false);
    await expect(first).rejects.toBeInstanceOf(DeliveryVerificationError);
    await expect(first).rejects.toThrow(/not found on the server after delivery: .*Patient \(urn:trialbridge:ldccrt-hcc-p2:site-a:patient\)/);
    expect(store.letters).toEqual([]);

    const last = await runDeliveryJob(ctx, store, 'dlv.1', job, true);
    expect(last.outcome).toBe('dead-lettered');
    expect(store.letters).toHaveLength(1);
    const entries = (job.bundle.entries ?? []).length;
    expect(store.letters[0].reason).toMatch(new RegExp(`^verification: ${entries} of ${entries} business identifiers not found`));
    // Types and systems only: the subject key is not in the reason.
    expect(store.letters[0].reason).not.toContain(job.subject);
    expect(store.letters[0].replayable).toBe(true);
    expect(store.counts[perDestination(COUNTERS.delivered, 'registry')]).toBeUndefined();
    expect(store.counts[perDestination(COUNTERS.deadLettered, 'registry')]).toBe(1);
    expect(store.recorded).toEqual([]);
  });

  it('confirms a delivery the server holds, and records it', async () => {
    const { ctx, job } = await setup('all', false);
    const store = new Store();
    expect((await runDeliveryJob(ctx, store, 'dlv.1', job, false)).outcome).toBe('delivered');
    expect(store.counts[perDestination(COUNTERS.delivered, 'registry')]).toBe(1);
    expect(store.recorded.map((r) => [r.site, r.subject, r.jobId, r.trial])).toEqual([['site-a', job.subject, 'dlv.1', 'LDCCRT-HCC-P2']]);
  });

  it('waits out a throttled read-back (the server asks to wait) instead of counting the subject delivered', async () => {
    const { ctx, server, job } = await setup('all', false);
    const { origin, pathname } = new URL(server.baseUrl);
    const quota = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled', diagnostics: 'Too Many Requests' }] };
    nock(origin, { allowUnmocked: true }).persist().get((path) => path.startsWith(`${pathname}/`) && !path.includes('metadata'))
      .query(true)
      .reply(429, quota, { 'Retry-After': '1' });
    const store = new Store();
    const first = runDeliveryJob(ctx, store, 'dlv.1', job, false);
    await expect(first).rejects.toBeInstanceOf(DeliveryRetryableError);
    await expect(first).rejects.toMatchObject({ status: 429, retryAfterMs: 1000, kind: 'throttle' });
    await expect(first).rejects.toThrow(/^verification: the read-back search failed: \w+ search refused: HTTP 429/);
    const last = await runDeliveryJob(ctx, store, 'dlv.1', job, true);
    expect(last.outcome).toBe('dead-lettered');
    expect(store.letters[0].reason).not.toContain(job.subject);
    expect(store.recorded).toEqual([]);
    expect(store.counts[perDestination(COUNTERS.delivered, 'registry')]).toBeUndefined();
  });

  it('trusts the answer when off (the default)', async () => {
    const { ctx, job } = await setup('off', true);
    const store = new Store();
    expect((await runDeliveryJob(ctx, store, 'dlv.1', job, true)).outcome).toBe('delivered');
  });

  it('samples a fixed tenth of the subjects, the same on every run', () => {
    const subjects = Array.from({ length: 2000 }, (_, i) => `S-${i}`);
    const picked = subjects.filter((s) => sampled('registry', 'site-a', s));
    expect(picked.length).toBeGreaterThan(2000 / VERIFY_SAMPLE_ONE_IN / 1.3);
    expect(picked.length).toBeLessThan((2000 / VERIFY_SAMPLE_ONE_IN) * 1.3);
    expect(subjects.filter((s) => sampled('registry', 'site-a', s))).toEqual(picked);
    // Another destination samples other subjects.
    expect(subjects.filter((s) => sampled('sponsor', 'site-a', s))).not.toEqual(picked);
    expect(shouldVerify('sample', 'registry', 'site-a', picked[0])).toBe(true);
    expect(shouldVerify('off', 'registry', 'site-a', picked[0])).toBe(false);
    expect(subjects.every((s) => shouldVerify('all', 'registry', 'site-a', s))).toBe(true);
  });
});
