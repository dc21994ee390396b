/**
 * Issue 11, acceptance: the crafted-key attack end to end. Sites B and C are delivered first (sample exports
 * through the API, a `trialbridge worker` process); then site A submits subjects and record keys holding `,`
 * `|` `$` `\` aimed at site B's and site C's resources — by identifier (Patient, Observation) and by `_tag`
 * (AdverseEvent) — e.g. subject `Z9,urn:trialbridge:ldccrt-hcc-p2:site-b:patient|101` (the example) and
 * `Z8,101` (unescaped, `,` is OR: `site-a|Z8` or value `101` in any system). Two destinations, both server
 * doubles whose search follows the FHIR escaping rules (`,` is OR unless escaped): one sent transactions, one
 * individual conditional updates.
 *
 * Every resource of sites B and C keeps its version (the trial-wide ResearchStudy aside, which every site
 * writes); a crafted subject is either held as its own resources (found by an escaped search for its exact key)
 * or refused with a reason, never counted delivered without being held.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import type { Patient, Resource } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerDouble } from '../support/server-double.ts';
import { expectHeldExactly, Rig, type Submission } from './rig.ts';

const NS = 'urn:trialbridge:ldccrt-hcc-p2';
const PATIENT_A = `${NS}:site-a:patient`;
/** Crafted subjects, and the row keys their AdverseEvent / RESPONSE rows get (aimed at site B's). */
const CRAFTED: { subject: string; ae?: (n: number) => string; response?: (n: number) => string }[] = [
  { subject: `Z9,${NS}:site-b:patient|101` },
  { subject: 'Z8,101', ae: (n) => `Q${n},102:adverse_event:${n}`, response: (n) => `S${n},102:tumour_response:${n}` },
  { subject: 'Z7\\,102', ae: (n) => `P${n}\\,102:adverse_event:${n}` },
  { subject: 'Z6$101', response: (n) => `T${n}$102:tumour_response:${n}` },
  { subject: 'Z5,LDCCRT-HCC-P2-C-001', ae: (n) => `U${n}|${NS}:site-c:adverse-event|LDCCRT-HCC-P2-C-001/AE/${n}` },
];
const MODES = { transaction: ['    transactions: true'], updates: ['    transactions: false'] } as const;

let rig: Rig;
const doubles = new Map<string, ServerDouble>();

/** Site A's subject A001, copied once per crafted subject with crafted subject id and row keys. */
async function craftedExport(dir: string): Promise<string> {
  const rows = parse(await readFile('examples/site-a/export.csv', 'utf8'), { columns: true }) as Record<string, string>[];
  const template = rows.filter((r) => r.subject_id === 'A001');
  const out: Record<string, string>[] = [];
  CRAFTED.forEach((c, i) => {
    let ae = 0;
    let response = 0;
    template.forEach((r, j) => {
      let rowId = `C${i}-${j}`;
      if (r.record_type === 'AE' && c.ae) rowId = c.ae(++ae);
      if (r.record_type === 'RESPONSE' && c.response) rowId = c.response(++response);
      out.push({ ...r, row_id: rowId, subject_id: c.subject });
    });
  });
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'export.csv'), stringify(out, { header: true, columns: Object.keys(rows[0]) }));
  return dir;
}

/** `Type/id` → versionId of every resource a destination holds. */
async function versions(double: ServerDouble, types: Iterable<string>): Promise<Map<string, string>> {
  return new Map((await double.resources(types)).map((r: Resource) => [`${r.resourceType}/${r.id}`, r.meta?.versionId ?? '']));
}

beforeAll(async () => {
  for (const name of Object.keys(MODES)) doubles.set(name, await ServerDouble.start());
  rig = await Rig.start(Object.entries(MODES).map(([name, lines]) => ({ name, double: doubles.get(name)!, lines })));
}, 240_000);

afterAll(async () => {
  await rig?.close();
  for (const d of doubles.values()) await d.close();
});

describe('crafted subject ids and record keys (serve + worker)', () => {
  it('leave every resource of the other sites untouched, in transaction and individual-update modes', async ({ annotate }) => {
    const others: Submission[] = [await rig.submit('site-b', ['examples/site-b']), await rig.submit('site-c', ['examples/site-c'])];
    for (const name of Object.keys(MODES)) await rig.settled(others, name);
    const types = new Set(others.flatMap((s) => s.expected.bundles.flatMap((b) => b.bundle.entry!.map((e) => e.resource!.resourceType))));
    const before = new Map<string, Map<string, string>>();
    for (const [name, double] of doubles) before.set(name, await versions(double, types));

    const crafted = await rig.submit('site-a', [await craftedExport(join(rig.dir, 'crafted'))]);
    const lines: string[] = [];
    for (const [name, double] of doubles) {
      await rig.settled([crafted], name);
      const after = await versions(double, types);
      const changed = [...before.get(name)!].filter(([ref, version]) => !ref.startsWith('ResearchStudy/') && after.get(ref) !== version).map(([ref]) => ref);
      expect(changed, `${name}: resources of sites B and C rewritten by site A`).toEqual([]);

      // Each crafted subject: held as its own resources (exactly), or refused; never counted delivered otherwise.
      const a = await rig.account(crafted, name);
      // A subject refused at mapping as a whole (its key holds '|') has no bundle; the rest ended in one place each.
      const mapped = new Set(crafted.expected.bundles.map((b) => b.subject));
      expect(a.unaccounted.filter((subject) => mapped.has(subject)), `${name}: subjects that ended nowhere`).toEqual([]);
      expect(a.unaccounted.length).toBe(a.counters.subjectsRejected);
      expect(a.twice).toEqual([]);
      for (const b of a.deliveredBundles.values()) {
        const patient = b.entry!.find((e) => e.resource?.resourceType === 'Patient')!.resource as Patient;
        expect(await double.countByIdentifier('Patient', PATIENT_A, patient.identifier![0].value!), `${name}: a delivered crafted Patient, by escaped search`).toBe(1);
      }
      const delivered = [...others.flatMap((s) => s.expected.bundles.map((b) => b.bundle)), ...a.deliveredBundles.values()];
      const held = await expectHeldExactly(double, [...others, crafted], delivered, name);
      const refused = CRAFTED.length - a.subjects.delivered;
      const letters = await rig.deadLetters(crafted, name);
      lines.push(
        `${name}: ${before.get(name)!.size} resources of sites B and C, none rewritten; crafted subjects delivered ${a.subjects.delivered}, refused ${refused} (dead letters ${letters.length}, rejected records ${a.rejected}); ${held} resources held`,
      );
    }
    // The subjects without '|' are valid keys: they must arrive (as their own resources), not be dropped.
    const accepted = await rig.account(crafted, 'transaction');
    expect(accepted.subjects.delivered).toBeGreaterThanOrEqual(CRAFTED.filter((c) => !c.subject.includes('|') && !c.ae?.(1).includes('|')).length);
    await annotate(lines.join('\n'));
  }, 300_000);
});
