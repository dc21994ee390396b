import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parse } from 'csv-parse/sync';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../scripts/generate-sample-data.ts';
import { kaplanMeier } from '../src/report/kaplan-meier.ts';

/**
 * The committed sample data is exactly what the seeded generator writes, and the figures in
 * expected-aggregates.json can be recomputed from the site files themselves (not from generator internals).
 */

const EXAMPLES = 'examples';
type Row = Record<string, string>;

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .filter((f) => f !== 'README.md')
    .sort();
}

const readCsv = async (path: string): Promise<Row[]> => parse(await readFile(path, 'utf8'), { columns: true }) as Row[];

/** A real calendar date (rejects 2016-02-30 and friends). */
function validIso(value: string): boolean {
  const m = /^(\d{4})-(\d{2})(?:-(\d{2}))?$/.exec(value);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3] ?? '1')];
  const date = new Date(Date.UTC(y, mo - 1, d));
  return date.getUTCFullYear() === y && date.getUTCMonth() === mo - 1 && date.getUTCDate() === d;
}
const dmyToIso = (v: string) => (/^\d{2}\/\d{2}\/\d{4}$/.test(v) ? `${v.slice(6)}-${v.slice(3, 5)}-${v.slice(0, 2)}` : v);
const validGrade = (g: string) => /^[1-5]$/.test(g);
const days = (from: string, to: string) => Math.round((Date.parse(to) - Date.parse(from)) / 86_400_000);

interface Facts {
  subjects: string[];
  aeSubjects: Record<'diarrhoea' | 'ppe', Set<string>>;
  survival: { enrol: string; death?: string; last?: string; firstPd?: string; vp34: boolean }[];
  post4w: number;
}

function survivalFacts(f: Facts) {
  const os = f.survival.map((s) => ({ time: days(s.enrol, (s.death ?? s.last)!), event: Boolean(s.death) }));
  const pfs = f.survival.map((s) => {
    const events = [s.firstPd, s.death].filter((d): d is string => Boolean(d)).sort();
    return events.length ? { time: days(s.enrol, events[0]), event: true } : { time: days(s.enrol, s.last!), event: false };
  });
  return { os, pfs };
}

async function siteA(dir: string): Promise<Facts> {
  const rows = await readCsv(join(dir, 'site-a/export.csv'));
  const enrolled = new Set(rows.filter((r) => r.record_type === 'ENROL').map((r) => r.subject_id));
  const facts: Facts = { subjects: [...enrolled], aeSubjects: { diarrhoea: new Set(), ppe: new Set() }, survival: [], post4w: 0 };
  for (const r of rows) {
    if (r.record_type !== 'AE' || !enrolled.has(r.subject_id) || !validIso(dmyToIso(r.start_date)) || !validGrade(r.grade)) continue;
    if (r.item_code === 'DIAR') facts.aeSubjects.diarrhoea.add(r.subject_id);
    if (r.item_code === 'HFSR') facts.aeSubjects.ppe.add(r.subject_id);
  }
  for (const id of enrolled) {
    const mine = rows.filter((r) => r.subject_id === id);
    const date = (type: string) => mine.find((r) => r.record_type === type)?.start_date;
    const pd = mine.filter((r) => r.record_type === 'RESPONSE' && r.item_code.toUpperCase() === 'PD').map((r) => dmyToIso(r.start_date)).sort()[0];
    const death = date('DEATH');
    const last = date('LASTCONTACT');
    facts.survival.push({
      enrol: dmyToIso(date('ENROL')!),
      death: death && dmyToIso(death),
      last: last && dmyToIso(last),
      firstPd: pd,
      vp34: ['Vp3', 'Vp4'].includes(mine.find((r) => r.record_type === 'DIAGNOSIS')!.pvi),
    });
    if (mine.some((r) => r.record_type === 'RESPONSE' && r.visit === 'POST4W' && ['CR', 'PR'].includes(r.item_code.toUpperCase()))) facts.post4w++;
  }
  return facts;
}

async function siteB(dir: string): Promise<Facts> {
  const rows = JSON.parse(await readFile(join(dir, 'site-b/records.json'), 'utf8')) as Row[];
  const base = rows.filter((r) => r.redcap_repeat_instrument === '' && r.record_id !== '');
  const enrolled = new Set(base.map((r) => r.record_id));
  const facts: Facts = { subjects: [...enrolled], aeSubjects: { diarrhoea: new Set(), ppe: new Set() }, survival: [], post4w: 0 };
  for (const r of rows) {
    if (r.redcap_repeat_instrument !== 'adverse_event' || !enrolled.has(r.record_id) || !validIso(r.ae_start) || !validGrade(r.ae_grade)) continue;
    if (r.ae_term === '1') facts.aeSubjects.diarrhoea.add(r.record_id);
    if (r.ae_term === '2') facts.aeSubjects.ppe.add(r.record_id);
  }
  for (const b of base) {
    const responses = rows.filter((r) => r.record_id === b.record_id && r.redcap_repeat_instrument === 'tumour_response');
    const pd = responses.filter((r) => r.resp_result === '4').map((r) => r.resp_date).sort()[0];
    facts.survival.push({ enrol: b.enrol_date, death: b.death_date || undefined, last: b.last_contact_date || undefined, firstPd: pd, vp34: ['3', '4'].includes(b.pvi) });
    if (responses.some((r) => r.resp_visit === '1' && ['1', '2'].includes(r.resp_result))) facts.post4w++;
  }
  return facts;
}

async function siteC(dir: string): Promise<Facts> {
  const dm = await readCsv(join(dir, 'site-c/dm.csv'));
  const ae = await readCsv(join(dir, 'site-c/ae.csv'));
  const rs = await readCsv(join(dir, 'site-c/rs.csv'));
  const ds = await readCsv(join(dir, 'site-c/ds.csv'));
  const enrolled = new Set(dm.map((r) => r.USUBJID));
  const facts: Facts = { subjects: [...enrolled], aeSubjects: { diarrhoea: new Set(), ppe: new Set() }, survival: [], post4w: 0 };
  for (const r of ae) {
    if (!enrolled.has(r.USUBJID) || !validIso(r.AESTDTC) || !validGrade(r.AETOXGR)) continue;
    if (r.AEPTCD === '10012735') facts.aeSubjects.diarrhoea.add(r.USUBJID);
    if (r.AEPTCD === '10054524') facts.aeSubjects.ppe.add(r.USUBJID);
  }
  for (const d of dm) {
    const responses = rs.filter((r) => r.USUBJID === d.USUBJID);
    const last = ds.find((r) => r.USUBJID === d.USUBJID && r.DSDECOD === 'LAST CONTACT')?.DSSTDTC;
    const pd = responses.filter((r) => r.RSSTRESC === 'PD').map((r) => r.RSDTC).sort()[0];
    facts.survival.push({ enrol: d.RFSTDTC, death: d.DTHDTC || undefined, last, firstPd: pd, vp34: ['Vp3', 'Vp4'].includes(d.PVI) });
    if (responses.some((r) => r.VISIT === 'POST-CCRT WEEK 4' && ['CR', 'PR'].includes(r.RSSTRESC))) facts.post4w++;
  }
  return facts;
}

describe('sample data (examples/)', () => {
  let out: string;
  beforeAll(async () => {
    out = await mkdtemp(join(tmpdir(), 'trialbridge-sample-'));
    main(out);
  });
  afterAll(async () => {
    await rm(out, { recursive: true, force: true });
  });

  it('the committed files are byte-identical to a fresh seeded run', async () => {
    const generated = await listFiles(out);
    expect(await listFiles(EXAMPLES)).toEqual(generated);
    expect(generated).toContain('expected-aggregates.json');
    for (const file of generated) {
      const fresh = await readFile(join(out, file));
      const committed = await readFile(join(EXAMPLES, file));
      expect(fresh.equals(committed), `${file} differs from a fresh run of npm run sample-data`).toBe(true);
    }
  });

  it('expected-aggregates.json agrees with figures recomputed from the site files', async () => {
    const expected = JSON.parse(await readFile(join(out, 'expected-aggregates.json'), 'utf8'));
    const sites: Record<string, Facts> = { 'site-a': await siteA(out), 'site-b': await siteB(out), 'site-c': await siteC(out) };
    expect(Object.fromEntries(Object.entries(sites).map(([k, f]) => [k, f.subjects.length]))).toEqual({ 'site-a': 18, 'site-b': 15, 'site-c': 14 });
    for (const [site, f] of Object.entries(sites)) {
      const e = expected.sites[site];
      expect(f.subjects.length, site).toBe(e.subjects);
      expect(f.aeSubjects.diarrhoea.size, `${site} diarrhoea`).toBe(e.aeSubjectsByMeddraPt['10012735']);
      expect(f.aeSubjects.ppe.size, `${site} PPE`).toBe(e.aeSubjectsByMeddraPt['10054524']);
      expect(f.post4w, `${site} post-CCRT week 4 response`).toBe(e.responsePost4w);
      expect(e.rejects).toHaveLength(5);
    }
    const all = Object.values(sites);
    const sum = (fn: (f: Facts) => number) => all.reduce((n, f) => n + fn(f), 0);
    expect(sum((f) => f.subjects.length)).toBe(47);
    expect(sum((f) => f.aeSubjects.diarrhoea.size)).toBe(17);
    expect(sum((f) => f.aeSubjects.ppe.size)).toBe(16);
    expect(sum((f) => f.post4w)).toBe(21);
    expect(expected.pooled).toMatchObject({ subjects: 47, responsePost4w: 21, bestResponse: 25, medianRtDoseGy: 60, surgery: { subjects: 9 } });

    // Kaplan-Meier medians from the files' own dates
    const pooled: Facts = { subjects: [], aeSubjects: { diarrhoea: new Set(), ppe: new Set() }, survival: all.flatMap((f) => f.survival), post4w: 0 };
    const sub: Facts = { ...pooled, survival: pooled.survival.filter((s) => s.vp34) };
    const p = survivalFacts(pooled);
    const s = survivalFacts(sub);
    expect(kaplanMeier(p.os).medianMonths).toBe(24.6);
    expect(kaplanMeier(p.pfs).medianMonths).toBe(6.8);
    expect(kaplanMeier(s.os).medianMonths).toBe(13);
    expect(kaplanMeier(s.pfs).medianMonths).toBe(5.6);
    expect(expected.pooled.km).toEqual({
      os: { n: 47, events: kaplanMeier(p.os).events, medianMonths: 24.6 },
      pfs: { n: 47, events: kaplanMeier(p.pfs).events, medianMonths: 6.8 },
      subgroupVp34: { n: 17, os: { n: 17, events: kaplanMeier(s.os).events, medianMonths: 13 }, pfs: { n: 17, events: kaplanMeier(s.pfs).events, medianMonths: 5.6 } },
    });
  });

  it('the planted rejects point at the rows they describe', async () => {
    const expected = JSON.parse(await readFile(join(out, 'expected-aggregates.json'), 'utf8'));
    for (const site of Object.values(expected.sites) as { rejects: { file: string; row: number; recordKey: string; field: string }[] }[]) {
      for (const r of site.rejects) {
        const path = join(out, r.file.replace(/^examples\//, ''));
        const row: Row = r.file.endsWith('.json')
          ? (JSON.parse(await readFile(path, 'utf8')) as Row[])[r.row - 1]
          : (await readCsv(path))[r.row - 2];
        expect(row, `${r.file}:${r.row}`).toBeDefined();
        expect(Object.keys(row)).toContain(r.field);
        // Keys as the site mappings build them: row_id, record_id:instrument:instance, USUBJID/DOMAIN/SEQ, or <file>#<row>.
        const base = r.file.split('/').pop()!;
        const key = r.file.endsWith('.json')
          ? row.record_id ? `${row.record_id}:${row.redcap_repeat_instrument}:${row.redcap_repeat_instance}` : `${base}#${r.row}`
          : (row.row_id ?? (row.USUBJID ? `${row.USUBJID}/${row.DOMAIN}/${row.AESEQ ?? row.EXSEQ}` : `${base}#${r.row}`));
        expect(key).toBe(r.recordKey);
      }
    }
  });
});
