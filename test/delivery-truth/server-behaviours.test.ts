/**
 * Issue 11, acceptance: the three sample sites (47 subjects) submitted through the API and delivered by a
 * `trialbridge worker` process to one destination per server behaviour of ../shared/fhir-servers.md, each a
 * server double (test/support/server-double.ts), all in one run:
 *
 * - medplum-batch: transactions processed as batches (HTTP 200 transaction-response) with failing entries:
 *   409 serialization conflicts (first 6 Observations written), 429 inside a batch (first 2
 *   MedicationAdministrations, every later entry of those batches 429 too), and a permanent 400 on every entry of
 *   one subject per site;
 * - quota-medplum / quota-azure: the first 4 writes answered 429, the wait only in the OperationOutcome
 *   diagnostics and the RateLimit header (Medplum), or in Retry-After and x-ms-retry-after-ms (Azure);
 * - caps: Medplum's entry caps (8 entries when any is conditional, 50 updates) with a destination that does not
 *   know them; caps-preset: the same server with `server: medplum`;
 *
 * Strict writes are in strict-writes.test.ts.
 *
 * Per destination: the server holds exactly what trialbridge reports delivered (per business identifier, by
 * search), every other subject is a dead letter carrying the server's reason, no reference dangles; then the
 * fault is cleared, the dead letters are replayed through the API, and every subject is on the server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MEDPLUM_ENTRY_CAPS, ServerDouble, type ServerBehaviour } from '../support/server-double.ts';
import { clearAndReplay, expectExact, Rig, type Submission } from './rig.ts';

/** One subject per site refused for good (400 on each of its entries). */
const REFUSED = ['A002', '102', 'LDCCRT-HCC-P2-C-002'];
const REFUSAL = 'Subject refused by the server double (test fault)';

const BEHAVIOURS: Record<string, { behaviour: ServerBehaviour; lines?: string[] }> = {
  'medplum-batch': {
    behaviour: {
      transactionsAsBatches: true,
      entryFaults: [
        { status: 409, resourceType: 'Observation', times: 6 },
        { status: 429, resourceType: 'MedicationAdministration', times: 2 },
        { status: 400, subject: REFUSED, text: REFUSAL },
      ],
    },
  },
  'quota-medplum': { behaviour: { quota: { style: 'medplum', waitMs: 300, requests: 4 } } },
  'quota-azure': { behaviour: { quota: { style: 'azure', waitMs: 300, requests: 4 } } },
  caps: { behaviour: { entryCaps: MEDPLUM_ENTRY_CAPS } },
  'caps-preset': { behaviour: { entryCaps: MEDPLUM_ENTRY_CAPS }, lines: ['    server: medplum', '    concurrency: 2'] },
};

let rig: Rig;
let submissions: Submission[];
const doubles = new Map<string, ServerDouble>();

beforeAll(async () => {
  for (const [name, { behaviour }] of Object.entries(BEHAVIOURS)) doubles.set(name, await ServerDouble.start(behaviour));
  rig = await Rig.start(Object.entries(BEHAVIOURS).map(([name, { lines }]) => ({ name, double: doubles.get(name)!, ...(lines ? { lines } : {}) })));
  submissions = await rig.submitSampleSites();
}, 240_000);

afterAll(async () => {
  await rig?.close();
  for (const d of doubles.values()) await d.close();
});

const replayAfterClearing = (name: string) => clearAndReplay(rig, doubles.get(name)!, submissions, name);

describe('the three sample sites against real servers’ behaviours (serve + worker)', () => {
  it('transactions processed as batches with 409, 429 and 400 entries: delivered = held, the refused subjects dead-lettered with the server’s reason', async ({ annotate }) => {
    const name = 'medplum-batch';
    await rig.settled(submissions, name);
    const d = doubles.get(name)!;
    const run = await expectExact(rig, submissions, name);
    expect(run.letters.map((l) => l.subject).sort()).toEqual([...REFUSED].sort());
    for (const l of run.letters) {
      expect(l.status).toBe(400);
      expect(l.reason).toContain(REFUSAL);
    }
    expect(d.stats.entryFaults).toMatchObject({ 409: 6, 429: 2 });
    const replay = await replayAfterClearing(name);
    expect(replay.replayed).toBe(REFUSED.length);
    await annotate(`${name}: delivered ${run.delivered}, dead-lettered ${run.deadLettered} (400); faults applied ${JSON.stringify(d.stats.entryFaults)}; after clearing, replayed ${replay.replayed}: ${replay.resources} resources held`);
  }, 300_000);

  for (const name of ['quota-medplum', 'quota-azure']) {
    it(`${name}: 429s with the server's wait are waited out; every subject delivered exactly once`, async ({ annotate }) => {
      await rig.settled(submissions, name);
      const d = doubles.get(name)!;
      const run = await expectExact(rig, submissions, name);
      expect(d.stats.quotaRefusals).toBe(4);
      expect(run.letters).toEqual([]);
      expect(run.delivered).toBe(47);
      await annotate(`${name}: ${d.stats.quotaRefusals} requests refused 429; delivered ${run.delivered}, ${run.resources} resources held`);
    }, 300_000);
  }

  it('entry caps the destination does not know: transactions refused 400, each subject dead-lettered with the reason; after the caps go, the replay delivers them', async ({ annotate }) => {
    const name = 'caps';
    await rig.settled(submissions, name);
    const d = doubles.get(name)!;
    const run = await expectExact(rig, submissions, name);
    expect(run.deadLettered).toBeGreaterThan(0);
    for (const l of run.letters) {
      expect(l.status).toBe(400);
      expect(l.reason).toContain('Transaction requires strict isolation but has too many entries');
    }
    const replay = await replayAfterClearing(name);
    await annotate(`${name}: delivered ${run.delivered}, dead-lettered ${run.deadLettered} (${d.stats.capRefusals} transactions refused); replayed ${replay.replayed}: ${replay.resources} resources held`);
  }, 300_000);

  it('entry caps with `server: medplum`: no transaction over 8 entries, every subject delivered exactly once', async ({ annotate }) => {
    const name = 'caps-preset';
    await rig.settled(submissions, name);
    const d = doubles.get(name)!;
    const run = await expectExact(rig, submissions, name);
    expect(d.stats.capRefusals).toBe(0);
    expect(d.stats.largestTransaction).toBeLessThanOrEqual(8);
    expect(run.delivered).toBe(47);
    await annotate(`${name}: delivered ${run.delivered}, largest transaction ${d.stats.largestTransaction} entries, ${run.resources} resources held`);
  }, 300_000);
});
