/**
 * Issue 11, acceptance: a strict Medplum project without `transaction-bundles`, as measured: transactions
 * processed as batches, referential integrity and base R4 validation with required bindings on every write
 * (server double, test/support/server-double.ts), and the AdverseEvents of one subject per site refused for
 * their required binding — so that subject's Provenance fails `Invalid reference (Not found)` while its other
 * entries are applied. The three sample sites go through the API and a `trialbridge worker` process.
 *
 * The server must hold exactly the subjects reported delivered (nothing of a dead-lettered one), every other
 * subject is a dead letter with the server's reason, no reference dangles; once the fault clears, the replay of
 * the dead letters delivers the rest. The other subjects also show that the sample passes the strict checks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerDouble } from '../support/server-double.ts';
import { clearAndReplay, expectExact, Rig, type Submission } from './rig.ts';

const REFUSED = ['A002', '102', 'LDCCRT-HCC-P2-C-002'];
const BINDING = 'Value did not satisfy terminology binding http://hl7.org/fhir/ValueSet/adverse-event-outcome|4.0.1';
const NAME = 'strict';

let rig: Rig;
let double: ServerDouble;
let submissions: Submission[];

beforeAll(async () => {
  double = await ServerDouble.start({ transactionsAsBatches: true, strict: true, entryFaults: [{ status: 400, subject: REFUSED, resourceType: 'AdverseEvent', text: BINDING }] });
  rig = await Rig.start([{ name: NAME, double }]);
  submissions = await rig.submitSampleSites();
}, 240_000);

afterAll(async () => {
  await rig?.close();
  await double?.close();
});

describe('a strict server that runs transactions as batches (serve + worker)', () => {
  it('holds exactly the delivered subjects; the subjects whose AdverseEvents were refused are dead letters with the reason; nothing dangles; the replay delivers them', async ({ annotate }) => {
    await rig.settled(submissions, NAME);
    const run = await expectExact(rig, submissions, NAME);
    expect(run.letters.map((l) => l.subject).sort()).toEqual([...REFUSED].sort());
    for (const l of run.letters) {
      expect(l.status).toBe(400);
      expect(l.reason).toContain(BINDING);
    }
    const replay = await clearAndReplay(rig, double, submissions, NAME);
    await annotate(`${NAME}: delivered ${run.delivered}, dead-lettered ${run.deadLettered}; AdverseEvents refused ${double.stats.entryFaults[400] ?? 0}, writes refused by the strict checks ${double.stats.strictRefusals}; replayed ${replay.replayed}: ${replay.resources} resources held`);
  }, 300_000);
});
