/**
 * Deterministic synthetic data for the reference trial LDCCRT-HCC-P2 (see examples/README.md).
 *
 *   npm run sample-data [-- OUTPUT_DIR]      (default: examples/)
 *
 * One seeded PRNG (mulberry32) drives every choice, so two runs write byte-identical files. The clinical
 * model is decided per subject first (a "profile" pins where the subject falls on the survival curves, so the
 * published Kaplan-Meier medians are hit exactly), then rendered in the three site shapes, then every
 * published figure is recomputed from the model and verified (the generator throws on any mismatch) before a
 * single file is written.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { stringify } from 'csv-stringify/sync';
import { kaplanMeier, type SurvivalPoint } from '../src/report/kaplan-meier.ts';
import type { SurvivalFigure, TrialFigures } from '../src/report/figures.ts';

export const SEED = 20_190_417;
const TRIAL = 'LDCCRT-HCC-P2';

// ---------------------------------------------------------------------------------------------------------
// PRNG and helpers

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  /** integer in [lo, hi] */
  int(lo: number, hi: number): number {
    if (hi < lo) throw new Error(`empty range ${lo}..${hi}`);
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
  weighted<T>(items: readonly (readonly [T, number])[]): T {
    const total = items.reduce((s, [, w]) => s + w, 0);
    let x = this.next() * total;
    for (const [item, w] of items) {
      x -= w;
      if (x < 0) return item;
    }
    return items[items.length - 1][0];
  }
  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}

const DAY_MS = 86_400_000;
function day(isoDate: string): number {
  return Math.round(Date.parse(`${isoDate}T00:00:00Z`) / DAY_MS);
}
function iso(d: number): string {
  return new Date(d * DAY_MS).toISOString().slice(0, 10);
}
function dmy(d: number): string {
  const [y, m, dd] = iso(d).split('-');
  return `${dd}/${m}/${y}`;
}
function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const ENROL_FIRST = day('2013-01-07');
const ENROL_LAST = day('2016-06-30');
const CUTOFF = day('2018-12-31');
const LAST_CONTACT_FIRST = day('2018-06-01');

// ---------------------------------------------------------------------------------------------------------
// Terminology

type Site = 'site-a' | 'site-b' | 'site-c';
type Response = 'CR' | 'PR' | 'SD' | 'PD' | 'NE';
type Suspect = 'SORA' | '5FU' | 'LV' | 'RT';
type Relatedness = 'NOT' | 'UNLIKELY' | 'POSSIBLE' | 'RELATED';
type Outcome = 'RECOVERED' | 'RECOVERING' | 'NOT RECOVERED' | 'SEQUELAE' | 'FATAL';
type Phase = 'ccrt' | 'sora';

interface AeTerm {
  code: string; // site-a local code
  redcap: string; // site-b choice code (CTCAE v5 term)
  ctcae: string; // CTCAE v5 term = MedDRA LLT
  lltCode: string;
  pt: string; // MedDRA preferred term
  ptCode: string;
  verbatims: string[];
  rate: number; // probability a subject has >= 1 event (other terms; DIAR/HFSR are fixed counts)
  maxGrade: number;
  phases: readonly (readonly [Phase, number])[];
}

const AE_TERMS: AeTerm[] = [
  { code: 'DIAR', redcap: '1', ctcae: 'Diarrhea', lltCode: '10012727', pt: 'Diarrhoea', ptCode: '10012735', verbatims: ['Diarrhoea', 'diarrhea', 'DIARRHEA', 'loose stools', 'Diarrhoea, watery', 'diarrhoea'], rate: 0, maxGrade: 3, phases: [['sora', 0.65], ['ccrt', 0.35]] },
  { code: 'HFSR', redcap: '2', ctcae: 'Palmar-plantar erythrodysesthesia syndrome', lltCode: '10054524', pt: 'Palmar-plantar erythrodysaesthesia syndrome', ptCode: '10054524', verbatims: ['hand-foot syndrome', 'Hand-foot skin reaction', 'HFSR', 'HAND FOOT SKIN REACTION', 'palmar-plantar erythrodysesthesia'], rate: 0, maxGrade: 3, phases: [['sora', 1]] },
  { code: 'FATG', redcap: '3', ctcae: 'Fatigue', lltCode: '10016256', pt: 'Fatigue', ptCode: '10016256', verbatims: ['Fatigue', 'fatigue', 'FATIGUE', 'tiredness', 'general weakness'], rate: 0.42, maxGrade: 3, phases: [['ccrt', 0.5], ['sora', 0.5]] },
  { code: 'ANOR', redcap: '4', ctcae: 'Anorexia', lltCode: '10002646', pt: 'Decreased appetite', ptCode: '10061428', verbatims: ['Anorexia', 'poor appetite', 'decreased appetite', 'ANOREXIA'], rate: 0.32, maxGrade: 3, phases: [['ccrt', 0.6], ['sora', 0.4]] },
  { code: 'NAUS', redcap: '5', ctcae: 'Nausea', lltCode: '10028813', pt: 'Nausea', ptCode: '10028813', verbatims: ['Nausea', 'nausea', 'NAUSEA', 'nausea, intermittent'], rate: 0.28, maxGrade: 3, phases: [['ccrt', 0.75], ['sora', 0.25]] },
  { code: 'ASTI', redcap: '6', ctcae: 'Aspartate aminotransferase increased', lltCode: '10003481', pt: 'Aspartate aminotransferase increased', ptCode: '10003481', verbatims: ['AST increased', 'AST elevation', 'SGOT increased', 'ast elevated'], rate: 0.3, maxGrade: 4, phases: [['ccrt', 0.6], ['sora', 0.4]] },
  { code: 'ALTI', redcap: '7', ctcae: 'Alanine aminotransferase increased', lltCode: '10001551', pt: 'Alanine aminotransferase increased', ptCode: '10001551', verbatims: ['ALT increased', 'ALT elevation', 'SGPT increased'], rate: 0.24, maxGrade: 4, phases: [['ccrt', 0.6], ['sora', 0.4]] },
  { code: 'PLTD', redcap: '8', ctcae: 'Platelet count decreased', lltCode: '10035528', pt: 'Platelet count decreased', ptCode: '10035528', verbatims: ['Thrombocytopenia', 'platelet count decreased', 'low platelets', 'THROMBOCYTOPENIA'], rate: 0.22, maxGrade: 4, phases: [['ccrt', 0.7], ['sora', 0.3]] },
  { code: 'ABDP', redcap: '9', ctcae: 'Abdominal pain', lltCode: '10000081', pt: 'Abdominal pain', ptCode: '10000081', verbatims: ['Abdominal pain', 'epigastric pain', 'abdominal pain, RUQ', 'ABDOMINAL PAIN'], rate: 0.18, maxGrade: 3, phases: [['ccrt', 0.5], ['sora', 0.5]] },
  { code: 'BILI', redcap: '10', ctcae: 'Blood bilirubin increased', lltCode: '10005364', pt: 'Blood bilirubin increased', ptCode: '10005364', verbatims: ['Hyperbilirubinemia', 'bilirubin increased', 'total bilirubin elevated'], rate: 0.2, maxGrade: 4, phases: [['ccrt', 0.5], ['sora', 0.5]] },
  { code: 'HTN', redcap: '11', ctcae: 'Hypertension', lltCode: '10020772', pt: 'Hypertension', ptCode: '10020772', verbatims: ['Hypertension', 'high blood pressure', 'HTN', 'hypertension'], rate: 0.12, maxGrade: 3, phases: [['sora', 1]] },
];
const TERM = Object.fromEntries(AE_TERMS.map((t) => [t.code, t])) as Record<string, AeTerm>;
const DIARRHOEA_PT = TERM.DIAR.ptCode;
const PPE_PT = TERM.HFSR.ptCode;

const REL_B: Record<Relatedness, string> = { NOT: '1', UNLIKELY: '2', POSSIBLE: '3', RELATED: '4' };
const REL_C: Record<Relatedness, string> = { NOT: 'NOT RELATED', UNLIKELY: 'UNLIKELY RELATED', POSSIBLE: 'POSSIBLY RELATED', RELATED: 'RELATED' };
const SUSPECT_B: Record<Suspect, string> = { SORA: '1', '5FU': '2', LV: '3', RT: '4' };
const SUSPECT_C: Record<Suspect, string> = { SORA: 'SORAFENIB', '5FU': 'FLUOROURACIL', LV: 'LEUCOVORIN', RT: 'RADIOTHERAPY' };
const OUTCOME_B: Record<Outcome, string> = { RECOVERED: '1', RECOVERING: '2', 'NOT RECOVERED': '3', SEQUELAE: '4', FATAL: '5' };
const OUTCOME_C: Record<Outcome, string> = {
  RECOVERED: 'RECOVERED/RESOLVED',
  RECOVERING: 'RECOVERING/RESOLVING',
  'NOT RECOVERED': 'NOT RECOVERED/NOT RESOLVED',
  SEQUELAE: 'RECOVERED/RESOLVED WITH SEQUELAE',
  FATAL: 'FATAL',
};
const RESPONSE_B: Record<Response, string> = { CR: '1', PR: '2', SD: '3', PD: '4', NE: '5' };
const MIXED_CASE: Record<Response, string[]> = {
  CR: ['CR', 'cr', 'Cr'],
  PR: ['PR', 'pr', 'Pr'],
  SD: ['SD', 'sd', 'Sd'],
  PD: ['PD', 'pd', 'Pd'],
  NE: ['NE', 'ne', 'Ne'],
};

// ---------------------------------------------------------------------------------------------------------
// Profiles: where each subject sits on the survival curves (days from enrolment)

type PfsSpec = { kind: 'preP4Death' } | { kind: 'pd'; lo: number; hi: number } | { kind: 'death' } | { kind: 'none' };
type OsSpec = { kind: 'death'; lo: number; hi: number } | { kind: 'censored' } | { kind: 'preP4Death' };
type RespSpec = 'p4' | 'late' | 'none';

interface Profile {
  label: string;
  sub: boolean; // Vp3/Vp4 subgroup
  pfs: PfsSpec;
  os: OsSpec;
  resp: RespSpec;
  surgery?: 'RESECT' | 'LT';
  fatalDiarrhoea?: boolean;
}

const pd = (lo: number, hi: number): PfsSpec => ({ kind: 'pd', lo, hi });
const dies = (lo: number, hi: number): OsSpec => ({ kind: 'death', lo, hi });
const CENSORED: OsSpec = { kind: 'censored' };
const NO_PD: PfsSpec = { kind: 'none' };
const AT_P4: [number, number] = [60, 80]; // only the post-CCRT week-4 assessment (day 67..76) falls here
const AT_FU1: [number, number] = [120, 165]; // only follow-up 1 (day 123..160)
const AT_FU2_EARLY: [number, number] = [179, 206];

function profiles(): Profile[] {
  const list: Profile[] = [];
  const add = (label: string, n: number, p: Omit<Profile, 'label'>) => {
    for (let i = 0; i < n; i++) list.push({ label: `${label}${i}`, ...p });
  };
  // 30 subjects Vp0..Vp2. Pooled design: 23 PFS events before day 207, the 24th at 207 (6.8 months);
  // 23 deaths before day 749, the 24th at 749 (24.6 months); nobody censored before either.
  add('N-A', 4, { sub: false, pfs: pd(...AT_P4), os: dies(150, 700), resp: 'none' });
  add('N-B', 5, { sub: false, pfs: pd(...AT_FU1), os: dies(200, 740), resp: 'none' });
  list.push({ label: 'N-C0', sub: false, pfs: pd(...AT_FU2_EARLY), os: dies(300, 740), resp: 'p4' });
  list.push({ label: 'N-C1', sub: false, pfs: pd(...AT_FU2_EARLY), os: dies(250, 740), resp: 'none' });
  list.push({ label: 'N-C2', sub: false, pfs: pd(...AT_FU2_EARLY), os: dies(749, 749), resp: 'none' });
  list.push({ label: 'N-D0', sub: false, pfs: pd(207, 207), os: dies(760, 1500), resp: 'p4' });
  add('N-Es', 3, { sub: false, pfs: pd(450, 1300), os: CENSORED, resp: 'p4', surgery: 'RESECT' });
  add('N-E', 6, { sub: false, pfs: pd(215, 700), os: dies(760, 1800), resp: 'p4' });
  add('N-El', 2, { sub: false, pfs: pd(240, 900), os: CENSORED, resp: 'late' });
  list.push({ label: 'N-F0', sub: false, pfs: { kind: 'death' }, os: dies(800, 1500), resp: 'p4' });
  add('N-Gt', 2, { sub: false, pfs: NO_PD, os: CENSORED, resp: 'p4', surgery: 'LT' });
  add('N-Gr', 2, { sub: false, pfs: NO_PD, os: CENSORED, resp: 'p4', surgery: 'RESECT' });
  add('N-G', 1, { sub: false, pfs: NO_PD, os: CENSORED, resp: 'p4' });
  // 17 subjects Vp3/Vp4: 8 PFS events before day 170, the 9th at 170 (5.6 months, a death without
  // progression); 8 deaths before day 396, the 9th at 396 (13.0 months).
  list.push({ label: 'S-a0', sub: true, pfs: { kind: 'preP4Death' }, os: { kind: 'preP4Death' }, resp: 'none' });
  add('S-b', 4, { sub: true, pfs: pd(...AT_P4), os: dies(100, 390), resp: 'none' });
  add('S-c', 2, { sub: true, pfs: pd(...AT_FU1), os: dies(180, 390), resp: 'none' });
  list.push({ label: 'S-c2', sub: true, pfs: pd(...AT_FU1), os: dies(420, 740), resp: 'none' });
  list.push({ label: 'S-d0', sub: true, pfs: { kind: 'death' }, os: dies(170, 170), resp: 'none', fatalDiarrhoea: true });
  list.push({ label: 'S-e0', sub: true, pfs: pd(...AT_FU2_EARLY), os: dies(396, 396), resp: 'none' });
  list.push({ label: 'S-e1', sub: true, pfs: pd(...AT_FU2_EARLY), os: dies(420, 740), resp: 'none' });
  list.push({ label: 'S-f0', sub: true, pfs: pd(300, 600), os: dies(420, 740), resp: 'late' });
  list.push({ label: 'S-f1', sub: true, pfs: pd(250, 700), os: dies(760, 1400), resp: 'late' });
  list.push({ label: 'S-f2', sub: true, pfs: pd(300, 900), os: dies(760, 1400), resp: 'p4' });
  list.push({ label: 'S-f3', sub: true, pfs: pd(500, 1200), os: CENSORED, resp: 'p4', surgery: 'RESECT' });
  list.push({ label: 'S-g0', sub: true, pfs: NO_PD, os: CENSORED, resp: 'p4', surgery: 'RESECT' });
  list.push({ label: 'S-g1', sub: true, pfs: NO_PD, os: CENSORED, resp: 'p4' });
  return list;
}

// ---------------------------------------------------------------------------------------------------------
// The clinical model of one subject (absolute epoch days)

interface Assessment {
  date: number;
  result: Response;
  visit: number; // 0 = post-CCRT week 4, n = follow-up n
}

interface Ae {
  term: AeTerm;
  verbatim: string;
  grade: number;
  serious: boolean;
  suspect: Suspect;
  rel: Relatedness;
  start: number;
  end: number | null;
  outcome: Outcome;
  partial: boolean; // site-c: dates reported to the month only
}

interface Subject {
  profile: Profile;
  site: Site;
  id: string; // A001 / 101 / LDCCRT-HCC-P2-C-001
  subjid: string; // site-c SUBJID
  vp: number;
  sex: 'M' | 'F';
  birth: number;
  birthPrecision: 'year' | 'month';
  dx: number;
  enrol: number;
  port: number;
  rtStart: number;
  rtEnd: number;
  doseGy: number;
  fractions: number;
  haic: { cycle: 1 | 2; start: number; end: number }[];
  sora: { start: number; end: number } | null;
  assessments: Assessment[];
  surgery: { type: 'RESECT' | 'LT'; date: number } | null;
  death: number | null;
  lastContact: number | null;
  aes: Ae[];
}

/** `count` intervals of 56..84 days summing to `total`. */
function intervals(rng: Rng, total: number): number[] {
  if (total === 0) return [];
  const k = Math.ceil(total / 84);
  if (56 * k > total) throw new Error(`no schedule for ${total} days`);
  const parts = Array.from({ length: k }, () => 56);
  let rest = total - 56 * k;
  while (rest > 0) {
    const i = rng.int(0, k - 1);
    if (parts[i] < 84) {
      parts[i]++;
      rest--;
    }
  }
  return parts;
}

function feasiblePd(p4: number, t: number): boolean {
  const d = t - p4;
  if (d === 0) return true;
  if (d < 56) return false;
  return 56 * Math.ceil(d / 84) <= d;
}

const DOSES_BELOW = [45, 50, 52.5, 55, 57.5];
const DOSES_ABOVE = [62.5, 65, 67.5, 70, 72];

function buildTimeline(rng: Rng, p: Profile, site: Site, doseGy: number): Subject {
  // relative days from enrolment
  let rtOffset = rng.int(7, 16);
  let pdDay: number | null = null;
  if (p.pfs.kind === 'pd') {
    const { lo, hi } = p.pfs;
    for (let attempt = 0; pdDay === null; attempt++) {
      if (attempt > 200) throw new Error(`${p.label}: no feasible progression day in ${lo}..${hi}`);
      const p4 = rtOffset + 60;
      const options: number[] = [];
      for (let t = lo; t <= hi; t++) if (feasiblePd(p4, t)) options.push(t);
      if (options.length > 0) pdDay = rng.pick(options);
      else rtOffset = rng.int(7, 16);
    }
  }
  const rtEndRel = rtOffset + 32;
  const p4 = rtEndRel + 28;

  let deathRel: number | null = null;
  let followUp: number | null = null; // censored: days to last contact
  if (p.os.kind === 'preP4Death') deathRel = rtEndRel + rng.int(8, 20);
  else if (p.os.kind === 'death') deathRel = rng.int(Math.max(p.os.lo, (pdDay ?? 0) + 30), p.os.hi);
  else followUp = rng.int(Math.max(790, (pdDay ?? 0) + 45), 2100);
  if (deathRel !== null && pdDay !== null && deathRel <= pdDay) throw new Error(`${p.label}: death before progression`);

  // calendar
  let enrol: number;
  let lastContact: number | null = null;
  if (deathRel !== null) {
    enrol = rng.int(ENROL_FIRST, Math.min(ENROL_LAST, CUTOFF - deathRel));
  } else {
    const fu = followUp!;
    enrol = rng.int(Math.max(ENROL_FIRST, LAST_CONTACT_FIRST - fu), Math.min(ENROL_LAST, CUTOFF - fu));
    lastContact = enrol + fu;
  }
  const death = deathRel === null ? null : enrol + deathRel;
  const endOfFollowUp = death ?? lastContact!;

  // assessments
  const assessments: Assessment[] = [];
  if (p.pfs.kind !== 'preP4Death') {
    const dates: number[] = [enrol + p4];
    if (pdDay !== null) {
      for (const step of intervals(rng, pdDay - p4)) dates.push(dates[dates.length - 1] + step);
    } else {
      for (;;) {
        const next = dates[dates.length - 1] + rng.int(56, 84);
        if (death !== null ? next >= death : next > lastContact!) break;
        dates.push(next);
      }
    }
    if (dates[dates.length - 1] >= endOfFollowUp + (death === null ? 1 : 0)) throw new Error(`${p.label}: assessment after end`);
    dates.forEach((date, visit) => assessments.push({ date, result: 'SD', visit }));
  }

  // surgery after the follow-up 1 response
  let surgery: Subject['surgery'] = null;
  if (p.surgery) {
    const fu1 = assessments[1];
    if (!fu1) throw new Error(`${p.label}: no follow-up before surgery`);
    surgery = { type: p.surgery, date: fu1.date + rng.int(14, 42) };
    const next = assessments[2];
    if (next && next.date <= surgery.date) throw new Error(`${p.label}: surgery after next assessment`);
  }

  // responses
  let current: Response = 'SD';
  assessments.forEach((a, i) => {
    const last = i === assessments.length - 1;
    if (last && pdDay !== null) {
      a.result = 'PD';
      return;
    }
    if (surgery && a.date > surgery.date) {
      a.result = 'CR';
      current = 'CR';
      return;
    }
    if (p.resp === 'p4') {
      if (i === 0) current = rng.chance(0.22) ? 'CR' : 'PR';
      else if (current === 'PR') current = rng.weighted<Response>([['PR', 0.72], ['CR', 0.18], ['SD', 0.1]]);
      else if (current === 'SD') current = rng.weighted<Response>([['SD', 0.7], ['PR', 0.3]]);
      a.result = i > 0 && rng.chance(0.04) ? 'NE' : current;
    } else if (p.resp === 'late') {
      if (i === 0) current = 'SD';
      else if (i === 1) current = 'PR';
      else if (current === 'PR') current = rng.weighted<Response>([['PR', 0.8], ['CR', 0.1], ['SD', 0.1]]);
      a.result = i > 1 && rng.chance(0.04) ? 'NE' : current;
    } else {
      a.result = rng.chance(0.08) ? 'NE' : 'SD';
    }
  });
  if (p.surgery && !['CR', 'PR'].includes(assessments[1].result)) assessments[1].result = 'PR';

  // treatment
  const rtStart = enrol + rtOffset;
  const rtEnd = enrol + rtEndRel;
  const haic: Subject['haic'] = [
    { cycle: 1, start: rtStart, end: rtStart + 4 },
    { cycle: 2, start: rtEnd - 4, end: rtEnd },
  ];
  let sora: Subject['sora'] = null;
  const soraStart = enrol + p4;
  const pdAtP4 = pdDay === p4;
  if ((death === null || death > soraStart) && !pdAtP4) {
    const stops = [endOfFollowUp];
    if (pdDay !== null) stops.push(enrol + pdDay);
    if (surgery) stops.push(surgery.date - 7);
    sora = { start: soraStart, end: Math.min(...stops) };
  }

  const sub = p.sub;
  const vp = sub ? (rng.chance(0.55) ? 3 : 4) : rng.weighted([[0, 0.15], [1, 0.35], [2, 0.5]]);
  const sex: 'M' | 'F' = rng.chance(0.8) ? 'M' : 'F';
  const age = rng.int(38, 79);
  const birth = enrol - age * 365 - rng.int(0, 364);
  return {
    profile: p,
    site,
    id: '',
    subjid: '',
    vp,
    sex,
    birth,
    birthPrecision: rng.chance(0.5) ? 'year' : 'month',
    dx: enrol - rng.int(10, 150),
    enrol,
    port: rtStart - rng.int(1, 5),
    rtStart,
    rtEnd,
    doseGy,
    fractions: doseGy === 72 ? 24 : 25,
    haic,
    sora,
    assessments,
    surgery,
    death,
    lastContact,
    aes: [],
  };
}

// ---------------------------------------------------------------------------------------------------------
// Adverse events

function drawGrade(rng: Rng, max: number): number {
  const g = rng.weighted([[1, 0.5], [2, 0.33], [3, 0.15], [4, 0.02]]);
  return Math.min(g, max);
}

function window(s: Subject, phase: Phase): [number, number] | null {
  const last = (s.death ?? s.lastContact!) - 1;
  let lo: number;
  let hi: number;
  if (phase === 'ccrt') {
    lo = s.rtStart + 3;
    hi = s.rtEnd + 20;
  } else {
    if (!s.sora) return null;
    lo = s.sora.start + 5;
    hi = Math.min(s.sora.end - 1, s.sora.start + 200);
  }
  hi = Math.min(hi, last);
  return hi >= lo ? [lo, hi] : null;
}

function makeAe(rng: Rng, s: Subject, term: AeTerm, phase: Phase, start: number, grade: number): Ae {
  const last = s.death ?? s.lastContact!;
  const suspect: Suspect = phase === 'sora' ? 'SORA' : term.code === 'DIAR' || term.code === 'NAUS' ? rng.weighted<Suspect>([['5FU', 0.6], ['LV', 0.1], ['RT', 0.3]]) : rng.weighted<Suspect>([['RT', 0.55], ['5FU', 0.35], ['LV', 0.1]]);
  const rel: Relatedness =
    suspect === 'SORA' && ['DIAR', 'HFSR', 'HTN'].includes(term.code)
      ? rng.weighted<Relatedness>([['RELATED', 0.6], ['POSSIBLE', 0.4]])
      : rng.weighted<Relatedness>([['NOT', 0.15], ['UNLIKELY', 0.25], ['POSSIBLE', 0.4], ['RELATED', 0.2]]);
  const duration = rng.int(3, grade >= 3 ? 45 : 30);
  let end: number | null = start + duration;
  let outcome: Outcome = 'RECOVERED';
  if (end > last) {
    end = null;
    outcome = s.death !== null ? 'NOT RECOVERED' : rng.pick<Outcome>(['RECOVERING', 'NOT RECOVERED']);
  } else if (grade >= 2 && rng.chance(0.05)) {
    outcome = 'SEQUELAE';
  }
  return {
    term,
    verbatim: rng.pick(term.verbatims),
    grade,
    serious: grade >= 4 || (grade === 3 && rng.chance(0.6)),
    suspect,
    rel,
    start,
    end,
    outcome,
    partial: false,
  };
}

function generateAes(rng: Rng, subjects: Subject[]): void {
  const episode = (s: Subject, term: AeTerm, after = 0): Ae | null => {
    const phases = term.phases.filter(([ph]) => window(s, ph) !== null);
    if (phases.length === 0) return null;
    const phase = rng.weighted(phases);
    const [lo, hi] = window(s, phase)!;
    if (Math.max(lo, after) > hi) return null;
    return makeAe(rng, s, term, phase, rng.int(Math.max(lo, after), hi), drawGrade(rng, term.maxGrade));
  };
  const addRepeat = (s: Subject, first: Ae) => {
    const again = episode(s, first.term, (first.end ?? Infinity) + rng.int(14, 60));
    if (again) s.aes.push(again);
  };

  // diarrhoea: exactly 17 subjects, one of them fatal (grade 5 on the day of death)
  const fatal = subjects.find((s) => s.profile.fatalDiarrhoea)!;
  const start = fatal.death! - rng.int(4, 9);
  fatal.aes.push({ term: TERM.DIAR, verbatim: 'Diarrhoea', grade: 5, serious: true, suspect: 'SORA', rel: 'POSSIBLE', start, end: fatal.death, outcome: 'FATAL', partial: false });
  const diar = rng.shuffle(subjects.filter((s) => s !== fatal)).slice(0, 16);
  diar.forEach((s, i) => {
    const ae = episode(s, TERM.DIAR)!;
    s.aes.push(ae);
    if (i < 5) addRepeat(s, ae);
  });
  // hand-foot skin reaction: exactly 16 subjects, all on sorafenib
  const onSora = subjects.filter((s) => s !== fatal && window(s, 'sora') !== null);
  rng.shuffle(onSora)
    .slice(0, 16)
    .forEach((s, i) => {
      const ae = episode(s, TERM.HFSR);
      if (!ae) throw new Error(`${s.id}: no room for HFSR`);
      s.aes.push(ae);
      if (i < 4) addRepeat(s, ae);
    });
  // other terms at their rates
  for (const s of subjects) {
    for (const term of AE_TERMS.slice(2)) {
      if (!rng.chance(term.rate * (s.profile.sub ? 1.2 : 1))) continue;
      const ae = episode(s, term);
      if (!ae) continue;
      s.aes.push(ae);
      if (rng.chance(0.12)) addRepeat(s, ae);
    }
    s.aes.sort((a, b) => a.start - b.start || a.term.ptCode.localeCompare(b.term.ptCode));
    for (const ae of s.aes) ae.partial = s.site === 'site-c' && rng.chance(0.25);
  }
}

// ---------------------------------------------------------------------------------------------------------
// The model

export interface Model {
  subjects: Subject[];
}

export function buildModel(seed = SEED): Model {
  const rng = new Rng(seed);
  const all = profiles();
  const sub = rng.shuffle(all.filter((p) => p.sub));
  const non = rng.shuffle(all.filter((p) => !p.sub));
  const sites: [Site, number, number][] = [
    ['site-a', 7, 11],
    ['site-b', 5, 10],
    ['site-c', 5, 9],
  ];
  // radiotherapy doses: 14 below 60 Gy, 15 at 60 Gy, 18 above -> the 24th of 47 is 60
  const doses = rng.shuffle([
    ...Array.from({ length: 14 }, () => rng.pick(DOSES_BELOW)),
    ...Array.from({ length: 15 }, () => 60),
    ...Array.from({ length: 18 }, () => rng.pick(DOSES_ABOVE)),
  ]);
  const subjects: Subject[] = [];
  for (const [site, nSub, nNon] of sites) {
    const mine = [...sub.splice(0, nSub), ...non.splice(0, nNon)];
    const built = mine.map((p) => buildTimeline(rng, p, site, doses.pop()!));
    built.sort((a, b) => a.enrol - b.enrol);
    built.forEach((s, i) => {
      const n = String(i + 1).padStart(3, '0');
      s.id = site === 'site-a' ? `A${n}` : site === 'site-b' ? String(101 + i) : `${TRIAL}-C-${n}`;
      s.subjid = n;
    });
    subjects.push(...built);
  }
  generateAes(rng, subjects);
  checkConsistency(subjects);
  return { subjects };
}

function checkConsistency(subjects: Subject[]): void {
  for (const s of subjects) {
    const dates: number[] = [s.dx, s.enrol, s.port, s.rtStart, s.rtEnd, ...s.haic.flatMap((h) => [h.start, h.end]), ...s.assessments.map((a) => a.date)];
    if (s.sora) dates.push(s.sora.start, s.sora.end);
    if (s.surgery) dates.push(s.surgery.date);
    for (const ae of s.aes) dates.push(ae.start, ...(ae.end === null ? [] : [ae.end]));
    const end = s.death ?? s.lastContact;
    if (end === null || Math.max(...dates) > end) throw new Error(`${s.id}: a date after death/last contact`);
    if (end > CUTOFF || s.enrol < ENROL_FIRST || s.enrol > ENROL_LAST) throw new Error(`${s.id}: outside the study period`);
    if (s.dx >= s.enrol || s.port < s.enrol || s.port >= s.rtStart) throw new Error(`${s.id}: diagnosis/port order`);
    if (s.sora && s.sora.end < s.sora.start) throw new Error(`${s.id}: sorafenib ends before it starts`);
    const prog = s.assessments.find((a) => a.result === 'PD');
    if (prog && s.assessments.some((a) => a.date > prog.date)) throw new Error(`${s.id}: assessment after progression`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Figures (from the model, with exactly the definitions of examples/README.md)

// The same shape the report computes from FHIR: the expected aggregates are compared with it field by field.
type Survival = SurvivalFigure;
interface Figures extends TrialFigures {
  resources: Record<string, number>;
}

export function osPoints(subjects: readonly Subject[]): SurvivalPoint[] {
  return subjects.map((s) => ({ time: (s.death ?? s.lastContact!) - s.enrol, event: s.death !== null }));
}
export function pfsPoints(subjects: readonly Subject[]): SurvivalPoint[] {
  return subjects.map((s) => {
    const prog = s.assessments.find((a) => a.result === 'PD')?.date;
    const events = [prog, s.death ?? undefined].filter((d): d is number => d !== undefined);
    return events.length > 0 ? { time: Math.min(...events) - s.enrol, event: true } : { time: s.lastContact! - s.enrol, event: false };
  });
}
function survival(points: SurvivalPoint[]): Survival {
  const km = kaplanMeier(points);
  return { n: km.n, events: km.events, medianMonths: km.medianMonths };
}

function figures(subjects: readonly Subject[], studies: number): Figures {
  const responded = (a: Assessment) => a.result === 'CR' || a.result === 'PR';
  const bySubject: Record<string, number> = {};
  const byGrade: Record<string, number> = {};
  let aeEvents = 0;
  for (const s of subjects) {
    for (const pt of new Set(s.aes.map((ae) => ae.term.ptCode))) bySubject[pt] = (bySubject[pt] ?? 0) + 1;
    for (const ae of s.aes) {
      aeEvents++;
      byGrade[ae.grade] = (byGrade[ae.grade] ?? 0) + 1;
    }
  }
  const doses = subjects.map((s) => s.doseGy).sort((a, b) => a - b);
  const sub = subjects.filter((s) => s.vp >= 3);
  const surgeries = subjects.filter((s) => s.surgery).length;
  const sora = subjects.filter((s) => s.sora).length;
  const assessments = subjects.reduce((n, s) => n + s.assessments.length, 0);
  return {
    subjects: subjects.length,
    responsePost4w: subjects.filter((s) => s.assessments.some((a) => a.visit === 0 && responded(a))).length,
    bestResponse: subjects.filter((s) => s.assessments.some(responded)).length,
    surgery: {
      resection: subjects.filter((s) => s.surgery?.type === 'RESECT').length,
      transplant: subjects.filter((s) => s.surgery?.type === 'LT').length,
      subjects: surgeries,
    },
    aeSubjectsByMeddraPt: Object.fromEntries(Object.entries(bySubject).sort(([a], [b]) => a.localeCompare(b))),
    aeEvents,
    aeEventsByGrade: Object.fromEntries(Object.entries(byGrade).sort(([a], [b]) => a.localeCompare(b))),
    medianRtDoseGy: median(doses),
    rtDosesGy: doses,
    sorafenibStarted: sora,
    deaths: subjects.filter((s) => s.death !== null).length,
    responseAssessments: assessments,
    km: {
      os: survival(osPoints(subjects)),
      pfs: survival(pfsPoints(subjects)),
      subgroupVp34: { n: sub.length, os: survival(osPoints(sub)), pfs: survival(pfsPoints(sub)) },
    },
    resources: {
      Patient: subjects.length,
      ResearchStudy: studies,
      ResearchSubject: subjects.length,
      Condition: subjects.length,
      Procedure: subjects.length * 2 + surgeries,
      MedicationAdministration: subjects.length * 4 + sora,
      AdverseEvent: aeEvents,
      Observation: assessments,
      Provenance: subjects.length,
    },
  };
}

/** The published figures; throws when the pooled model does not reproduce one of them exactly. */
export function verifyPublished(f: Figures): void {
  const checks: [string, unknown, unknown][] = [
    ['subjects', f.subjects, 47],
    ['responsePost4w', f.responsePost4w, 21],
    ['bestResponse', f.bestResponse, 25],
    ['surgery.subjects', f.surgery.subjects, 9],
    ['diarrhoea subjects', f.aeSubjectsByMeddraPt[DIARRHOEA_PT], 17],
    ['PPE subjects', f.aeSubjectsByMeddraPt[PPE_PT], 16],
    ['medianRtDoseGy', f.medianRtDoseGy, 60],
    ['km.os', f.km.os.medianMonths, 24.6],
    ['km.pfs', f.km.pfs.medianMonths, 6.8],
    ['km.subgroupVp34.os', f.km.subgroupVp34.os.medianMonths, 13],
    ['km.subgroupVp34.pfs', f.km.subgroupVp34.pfs.medianMonths, 5.6],
  ];
  const wrong = checks.filter(([, got, want]) => got !== want);
  if (wrong.length > 0) throw new Error(`published figures not reproduced: ${wrong.map(([k, g, w]) => `${k} = ${g} (want ${w})`).join('; ')}`);
}

// ---------------------------------------------------------------------------------------------------------
// Rendering

interface Reject {
  file: string;
  row: number;
  recordKey: string;
  field: string;
  problem: string;
}
const PROBLEM = {
  date: 'impossible date',
  grade: 'CTCAE grade out of range 1-5',
  missing: 'missing subject identifier',
  unknown: 'subject not enrolled',
  dose: 'dose not a number',
};

type Row = Record<string, string>;
interface Output {
  files: Map<string, string>; // relative path -> content
  records: Record<Site, Record<string, number>>;
  rejects: Record<Site, Reject[]>;
}

function csv(columns: string[], rows: Row[]): string {
  return stringify(rows, { header: true, columns, record_delimiter: '\n' });
}

/** A subject covering the given day with its follow-up, for planting a bad row. */
function coveringSubject(list: Subject[], d: number, skip: Subject[] = []): Subject {
  const s = list.find((x) => !skip.includes(x) && x.rtStart < d - 30 && (x.death ?? x.lastContact!) > d + 30);
  if (!s) throw new Error('no subject to carry a planted row');
  return s;
}
function soraSubject(list: Subject[], skip: Subject[]): Subject {
  const s = [...list].reverse().find((x) => !skip.includes(x) && x.sora && x.sora.end - x.sora.start > 90);
  if (!s) throw new Error('no sorafenib subject to carry a planted row');
  return s;
}

// ---- site-a

const A_COLUMNS = ['row_id', 'subject_id', 'record_type', 'start_date', 'end_date', 'item_code', 'item_text', 'value', 'unit', 'frequency', 'fractions', 'grade', 'serious', 'suspect', 'relatedness', 'outcome', 'sex', 'birth_date', 'pvi', 'visit'];
const A_ORDER = ['DIAGNOSIS', 'ENROL', 'PORT', 'RT', 'HAIC', 'RESPONSE', 'SORAFENIB', 'SURGERY', 'AE', 'LASTCONTACT', 'DEATH'];

function aAe(rng: Rng, s: { id: string }, ae: Ae): Row {
  return {
    subject_id: s.id,
    record_type: 'AE',
    start_date: dmy(ae.start),
    end_date: ae.end === null ? '' : dmy(ae.end),
    item_code: ae.term.code,
    item_text: ae.verbatim,
    grade: String(ae.grade),
    serious: ae.serious ? 'Y' : 'N',
    suspect: ae.suspect,
    relatedness: ae.rel,
    outcome: ae.outcome,
  };
}

function renderSiteA(rng: Rng, subjects: Subject[], out: Output): void {
  const file = 'examples/site-a/export.csv';
  type Item = { d: number; order: number; row: Row; reject?: Omit<Reject, 'file' | 'row' | 'recordKey'> };
  const groups: Item[][] = [];
  for (const s of subjects) {
    const items: Item[] = [];
    const add = (d: number, type: string, row: Row) => items.push({ d, order: A_ORDER.indexOf(type), row: { subject_id: s.id, record_type: type, ...row } });
    add(s.enrol, 'ENROL', { start_date: dmy(s.enrol), sex: s.sex, birth_date: dmy(s.birth) });
    add(s.dx, 'DIAGNOSIS', { start_date: dmy(s.dx), item_code: 'HCC', item_text: 'Hepatocellular carcinoma', pvi: `Vp${s.vp}` });
    add(s.port, 'PORT', { start_date: dmy(s.port), item_code: 'PORT', item_text: 'Hepatic arterial infusion port implantation' });
    add(s.rtStart, 'RT', { start_date: dmy(s.rtStart), end_date: dmy(s.rtEnd), item_code: 'RT-LIVER', item_text: 'Liver radiotherapy', value: String(s.doseGy), unit: 'Gy', fractions: String(s.fractions) });
    for (const h of s.haic) {
      for (const [code, text, dose] of [['5FU', '5-fluorouracil', '500'], ['LV', 'Leucovorin', '50']]) {
        add(h.start, 'HAIC', { start_date: dmy(h.start), end_date: dmy(h.end), item_code: code, item_text: text, value: dose, unit: 'mg', frequency: 'QD', visit: `C${h.cycle}` });
      }
    }
    if (s.sora) add(s.sora.start, 'SORAFENIB', { start_date: dmy(s.sora.start), end_date: dmy(s.sora.end), item_code: 'SORA', item_text: 'Sorafenib', value: '400', unit: 'mg', frequency: 'BID' });
    for (const a of s.assessments) {
      add(a.date, 'RESPONSE', { start_date: dmy(a.date), item_code: rng.pick(MIXED_CASE[a.result]), item_text: 'mRECIST overall response', visit: a.visit === 0 ? 'POST4W' : `FU${a.visit}` });
    }
    if (s.surgery) {
      const lt = s.surgery.type === 'LT';
      add(s.surgery.date, 'SURGERY', { start_date: dmy(s.surgery.date), item_code: s.surgery.type, item_text: lt ? 'Liver transplantation' : 'Hepatectomy' });
    }
    for (const ae of s.aes) items.push({ d: ae.start, order: A_ORDER.indexOf('AE'), row: aAe(rng, s, ae) });
    if (s.death !== null) add(s.death, 'DEATH', { start_date: dmy(s.death) });
    else add(s.lastContact!, 'LASTCONTACT', { start_date: dmy(s.lastContact!) });
    groups.push(items);
  }
  // planted bad rows
  const feb = day('2016-02-29');
  const s1 = coveringSubject(subjects, feb);
  groups[subjects.indexOf(s1)].push({
    d: feb,
    order: 99,
    row: { subject_id: s1.id, record_type: 'AE', start_date: '30/02/2016', end_date: '', item_code: 'FATG', item_text: 'Fatigue', grade: '1', serious: 'N', suspect: 'SORA', relatedness: 'POSSIBLE', outcome: 'RECOVERING' },
    reject: { field: 'start_date', problem: PROBLEM.date },
  });
  const s2 = subjects[4];
  const d2 = s2.rtStart + 12;
  groups[4].push({
    d: d2,
    order: 99,
    row: { subject_id: s2.id, record_type: 'AE', start_date: dmy(d2), end_date: dmy(d2 + 6), item_code: 'NAUS', item_text: 'Nausea', grade: '7', serious: 'N', suspect: '5FU', relatedness: 'POSSIBLE', outcome: 'RECOVERED' },
    reject: { field: 'grade', problem: PROBLEM.grade },
  });
  const s3 = soraSubject(subjects, [s1, s2]);
  const d3 = s3.sora!.start + 28;
  groups[subjects.indexOf(s3)].push({
    d: d3,
    order: 99,
    row: { subject_id: s3.id, record_type: 'SORAFENIB', start_date: dmy(d3), end_date: dmy(s3.sora!.end), item_code: 'SORA', item_text: 'Sorafenib', value: 'abc', unit: 'mg', frequency: 'BID' },
    reject: { field: 'value', problem: PROBLEM.dose },
  });
  for (const g of groups) g.sort((a, b) => a.d - b.d || a.order - b.order);
  const d4 = day('2015-06-15');
  groups.splice(9, 0, [{ d: d4, order: 0, row: { subject_id: '', record_type: 'AE', start_date: dmy(d4), end_date: dmy(d4 + 9), item_code: 'ABDP', item_text: 'abdominal pain', grade: '1', serious: 'N', suspect: 'RT', relatedness: 'UNLIKELY', outcome: 'RECOVERED' }, reject: { field: 'subject_id', problem: PROBLEM.missing } }]);
  const d5 = day('2016-09-02');
  groups.push([{ d: d5, order: 0, row: { subject_id: 'A099', record_type: 'AE', start_date: dmy(d5), end_date: dmy(d5 + 5), item_code: 'ANOR', item_text: 'Anorexia', grade: '2', serious: 'N', suspect: 'SORA', relatedness: 'POSSIBLE', outcome: 'RECOVERED' }, reject: { field: 'subject_id', problem: PROBLEM.unknown } }]);

  const rows: Row[] = [];
  const rejects: Reject[] = [];
  for (const item of groups.flat()) {
    const rowId = `R${String(rows.length + 1).padStart(5, '0')}`;
    rows.push({ row_id: rowId, ...item.row });
    if (item.reject) rejects.push({ file, row: rows.length + 1, recordKey: rowId, ...item.reject });
  }
  out.files.set('site-a/export.csv', csv(A_COLUMNS, rows));
  out.records['site-a'] = { [file]: rows.length };
  out.rejects['site-a'] = rejects;
}

// ---- site-b

interface DictField {
  field_name: string;
  form_name: string;
  field_type: string;
  field_label: string;
  select_choices_or_calculations: string;
  text_validation_type_or_show_slider_number: string;
}
const choices = (pairs: [string, string][]) => pairs.map(([c, l]) => `${c}, ${l}`).join(' | ');
const B_DICTIONARY: DictField[] = (
  [
    ['record_id', 'enrolment', 'text', 'Record ID', '', ''],
    ['enrol_date', 'enrolment', 'text', 'Date of enrolment', '', 'date_ymd'],
    ['sex', 'enrolment', 'radio', 'Sex', choices([['1', 'Male'], ['2', 'Female']]), ''],
    ['birth_date', 'enrolment', 'text', 'Date of birth', '', 'date_ymd'],
    ['dx_date', 'enrolment', 'text', 'Date of HCC diagnosis', '', 'date_ymd'],
    ['pvi', 'enrolment', 'dropdown', 'Portal vein invasion', choices([['0', 'Vp0'], ['1', 'Vp1'], ['2', 'Vp2'], ['3', 'Vp3'], ['4', 'Vp4']]), ''],
    ['port_date', 'treatment', 'text', 'Hepatic arterial port implantation date', '', 'date_ymd'],
    ['rt_start', 'treatment', 'text', 'Radiotherapy start date', '', 'date_ymd'],
    ['rt_end', 'treatment', 'text', 'Radiotherapy end date', '', 'date_ymd'],
    ['rt_dose_cgy', 'treatment', 'text', 'Radiotherapy total dose (cGy)', '', 'integer'],
    ['rt_fractions', 'treatment', 'text', 'Radiotherapy fractions', '', 'integer'],
    ['sora_start', 'treatment', 'text', 'Sorafenib start date', '', 'date_ymd'],
    ['sora_end', 'treatment', 'text', 'Sorafenib end date', '', 'date_ymd'],
    ['sora_dose_mg', 'treatment', 'text', 'Sorafenib dose per administration (mg)', '', 'integer'],
    ['sora_freq', 'treatment', 'text', 'Sorafenib frequency', '', ''],
    ['death_date', 'follow_up', 'text', 'Date of death', '', 'date_ymd'],
    ['last_contact_date', 'follow_up', 'text', 'Date of last contact (alive)', '', 'date_ymd'],
    ['haic_drug', 'haic', 'radio', 'HAIC drug', choices([['1', 'Fluorouracil'], ['2', 'Leucovorin']]), ''],
    ['haic_cycle', 'haic', 'text', 'HAIC cycle', '', 'integer'],
    ['haic_start', 'haic', 'text', 'HAIC start date', '', 'date_ymd'],
    ['haic_end', 'haic', 'text', 'HAIC end date', '', 'date_ymd'],
    ['haic_dose_mg', 'haic', 'text', 'HAIC daily dose (mg)', '', 'number'],
    ['resp_date', 'tumour_response', 'text', 'Assessment date', '', 'date_ymd'],
    ['resp_visit', 'tumour_response', 'radio', 'Assessment time point', choices([['1', 'Post-CCRT week 4'], ['2', 'Follow-up']]), ''],
    ['resp_result', 'tumour_response', 'dropdown', 'mRECIST overall response', choices([['1', 'CR'], ['2', 'PR'], ['3', 'SD'], ['4', 'PD'], ['5', 'NE']]), ''],
    ['ae_term', 'adverse_event', 'dropdown', 'Adverse event (CTCAE v5 term)', choices(AE_TERMS.map((t) => [t.redcap, t.ctcae])), ''],
    ['ae_verbatim', 'adverse_event', 'text', 'Verbatim term', '', ''],
    ['ae_grade', 'adverse_event', 'text', 'CTCAE grade', '', 'integer'],
    ['ae_serious', 'adverse_event', 'radio', 'Serious', choices([['0', 'No'], ['1', 'Yes']]), ''],
    ['ae_suspect', 'adverse_event', 'dropdown', 'Suspected treatment', choices([['1', 'Sorafenib'], ['2', 'Fluorouracil'], ['3', 'Leucovorin'], ['4', 'Radiotherapy']]), ''],
    ['ae_rel', 'adverse_event', 'dropdown', 'Relatedness', choices([['1', 'Not related'], ['2', 'Unlikely related'], ['3', 'Possibly related'], ['4', 'Related']]), ''],
    ['ae_start', 'adverse_event', 'text', 'Start date', '', 'date_ymd'],
    ['ae_end', 'adverse_event', 'text', 'End date', '', 'date_ymd'],
    ['ae_outcome', 'adverse_event', 'dropdown', 'Outcome', choices([['1', 'Recovered/resolved'], ['2', 'Recovering/resolving'], ['3', 'Not recovered/not resolved'], ['4', 'Recovered/resolved with sequelae'], ['5', 'Fatal']]), ''],
    ['surg_type', 'surgery', 'radio', 'Surgery', choices([['1', 'Hepatectomy'], ['2', 'Liver transplantation']]), ''],
    ['surg_date', 'surgery', 'text', 'Date of surgery', '', 'date_ymd'],
  ] as const
).map(([field_name, form_name, field_type, field_label, select_choices_or_calculations, text_validation_type_or_show_slider_number]) => ({
  field_name,
  form_name,
  field_type,
  field_label,
  select_choices_or_calculations,
  text_validation_type_or_show_slider_number,
}));
const B_FIELDS = B_DICTIONARY.map((f) => f.field_name).filter((f) => f !== 'record_id');

function bRow(recordId: string, instrument: string, instance: string, values: Row): Row {
  const row: Row = { record_id: recordId, redcap_repeat_instrument: instrument, redcap_repeat_instance: instance };
  for (const f of B_FIELDS) row[f] = values[f] ?? '';
  for (const k of Object.keys(values)) if (!(k in row)) throw new Error(`unknown REDCap field ${k}`);
  return row;
}
function bAe(ae: Ae): Row {
  return {
    ae_term: ae.term.redcap,
    ae_verbatim: ae.verbatim,
    ae_grade: String(ae.grade),
    ae_serious: ae.serious ? '1' : '0',
    ae_suspect: SUSPECT_B[ae.suspect],
    ae_rel: REL_B[ae.rel],
    ae_start: iso(ae.start),
    ae_end: ae.end === null ? '' : iso(ae.end),
    ae_outcome: OUTCOME_B[ae.outcome],
  };
}

function renderSiteB(rng: Rng, subjects: Subject[], out: Output): void {
  const file = 'examples/site-b/records.json';
  type Item = { row: Row; reject?: { field: string; problem: string } };
  const blocks: Item[][] = [];
  const feb = day('2015-02-28');
  const s1 = coveringSubject(subjects, feb);
  const s2 = subjects[6] === s1 ? subjects[7] : subjects[6];
  const s3 = soraSubject(subjects, [s1, s2]);
  for (const s of subjects) {
    const items: Item[] = [];
    items.push({
      row: bRow(s.id, '', '', {
        enrol_date: iso(s.enrol),
        sex: s.sex === 'M' ? '1' : '2',
        birth_date: iso(s.birth),
        dx_date: iso(s.dx),
        pvi: String(s.vp),
        port_date: iso(s.port),
        rt_start: iso(s.rtStart),
        rt_end: iso(s.rtEnd),
        rt_dose_cgy: String(Math.round(s.doseGy * 100)),
        rt_fractions: String(s.fractions),
        sora_start: s.sora ? iso(s.sora.start) : '',
        sora_end: s.sora ? iso(s.sora.end) : '',
        sora_dose_mg: s.sora ? '400' : '',
        sora_freq: s.sora ? 'BID' : '',
        death_date: s.death === null ? '' : iso(s.death),
        last_contact_date: s.lastContact === null ? '' : iso(s.lastContact),
      }),
    });
    let n = 0;
    for (const h of s.haic) {
      for (const [drug, dose] of [['1', '500'], ['2', '50']]) {
        items.push({ row: bRow(s.id, 'haic', String(++n), { haic_drug: drug, haic_cycle: String(h.cycle), haic_start: iso(h.start), haic_end: iso(h.end), haic_dose_mg: dose }) });
      }
    }
    if (s === s3) {
      const d = s.rtEnd + 3;
      items.push({ row: bRow(s.id, 'haic', String(++n), { haic_drug: '1', haic_cycle: '3', haic_start: iso(d), haic_end: iso(d + 4), haic_dose_mg: 'abc' }), reject: { field: 'haic_dose_mg', problem: PROBLEM.dose } });
    }
    s.assessments.forEach((a, i) => {
      items.push({ row: bRow(s.id, 'tumour_response', String(i + 1), { resp_date: iso(a.date), resp_visit: a.visit === 0 ? '1' : '2', resp_result: RESPONSE_B[a.result] }) });
    });
    s.aes.forEach((ae, i) => items.push({ row: bRow(s.id, 'adverse_event', String(i + 1), bAe(ae)) }));
    let k = s.aes.length;
    if (s === s1) {
      items.push({
        row: bRow(s.id, 'adverse_event', String(++k), { ae_term: '3', ae_verbatim: 'tiredness', ae_grade: '1', ae_serious: '0', ae_suspect: '1', ae_rel: '3', ae_start: '2015-02-30', ae_end: '', ae_outcome: '2' }),
        reject: { field: 'ae_start', problem: PROBLEM.date },
      });
    }
    if (s === s2) {
      const d = s.rtStart + 10;
      items.push({
        row: bRow(s.id, 'adverse_event', String(++k), { ae_term: '5', ae_verbatim: 'nausea', ae_grade: '7', ae_serious: '0', ae_suspect: '2', ae_rel: '3', ae_start: iso(d), ae_end: iso(d + 4), ae_outcome: '1' }),
        reject: { field: 'ae_grade', problem: PROBLEM.grade },
      });
    }
    if (s.surgery) items.push({ row: bRow(s.id, 'surgery', '1', { surg_type: s.surgery.type === 'LT' ? '2' : '1', surg_date: iso(s.surgery.date) }) });
    blocks.push(items);
  }
  const d4 = day('2014-11-20');
  blocks.splice(7, 0, [{ row: bRow('', 'adverse_event', '1', { ae_term: '9', ae_verbatim: 'Abdominal pain', ae_grade: '1', ae_serious: '0', ae_suspect: '4', ae_rel: '2', ae_start: iso(d4), ae_end: iso(d4 + 6), ae_outcome: '1' }), reject: { field: 'record_id', problem: PROBLEM.missing } }]);
  const d5 = day('2016-04-11');
  blocks.push([{ row: bRow('199', 'adverse_event', '1', { ae_term: '6', ae_verbatim: 'AST increased', ae_grade: '2', ae_serious: '0', ae_suspect: '1', ae_rel: '3', ae_start: iso(d5), ae_end: iso(d5 + 20), ae_outcome: '1' }), reject: { field: 'record_id', problem: PROBLEM.unknown } }]);

  const rows: Row[] = [];
  const rejects: Reject[] = [];
  for (const item of blocks.flat()) {
    rows.push(item.row);
    const r = item.row;
    // Record keys as mappings/site-b.yaml builds them; a row without record_id falls back to <file>#<row>.
    const recordKey = r.record_id ? `${r.record_id}:${r.redcap_repeat_instrument}:${r.redcap_repeat_instance}` : `records.json#${rows.length}`;
    if (item.reject) rejects.push({ file, row: rows.length, recordKey, ...item.reject });
  }
  out.files.set('site-b/records.json', `[\n${rows.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`);
  out.files.set('site-b/data-dictionary.json', `${JSON.stringify(B_DICTIONARY, null, 2)}\n`);
  out.records['site-b'] = { [file]: rows.length };
  out.rejects['site-b'] = rejects;
  void rng;
}

// ---- site-c

const C_COLUMNS = {
  dm: ['STUDYID', 'DOMAIN', 'USUBJID', 'SUBJID', 'SITEID', 'RFSTDTC', 'RFENDTC', 'BRTHDTC', 'SEX', 'ARMCD', 'ARM', 'DTHDTC', 'DTHFL', 'DIAGDTC', 'PVI'],
  ex: ['STUDYID', 'DOMAIN', 'USUBJID', 'EXSEQ', 'EXGRPID', 'EXTRT', 'EXDOSE', 'EXDOSU', 'EXDOSFRQ', 'EXROUTE', 'EXSTDTC', 'EXENDTC'],
  pr: ['STUDYID', 'DOMAIN', 'USUBJID', 'PRSEQ', 'PRTRT', 'PRCAT', 'PRDOSE', 'PRDOSU', 'PRFXNUM', 'PRLOC', 'PRSTDTC', 'PRENDTC'],
  ae: ['STUDYID', 'DOMAIN', 'USUBJID', 'AESEQ', 'AETERM', 'AELLT', 'AELLTCD', 'AEDECOD', 'AEPTCD', 'AETOXGR', 'AESER', 'AEREL', 'AERELTRT', 'AESTDTC', 'AEENDTC', 'AEOUT'],
  rs: ['STUDYID', 'DOMAIN', 'USUBJID', 'RSSEQ', 'RSTESTCD', 'RSTEST', 'RSCAT', 'RSORRES', 'RSSTRESC', 'VISIT', 'RSDTC'],
  ds: ['STUDYID', 'DOMAIN', 'USUBJID', 'DSSEQ', 'DSTERM', 'DSDECOD', 'DSCAT', 'DSSTDTC'],
} as const;
type Domain = keyof typeof C_COLUMNS;

function cAe(usubjid: string, seq: number, ae: Ae): Row {
  const date = (d: number | null) => (d === null ? '' : ae.partial ? iso(d).slice(0, 7) : iso(d));
  return {
    STUDYID: TRIAL,
    DOMAIN: 'AE',
    USUBJID: usubjid,
    AESEQ: String(seq),
    AETERM: ae.verbatim,
    AELLT: ae.term.ctcae,
    AELLTCD: ae.term.lltCode,
    AEDECOD: ae.term.pt,
    AEPTCD: ae.term.ptCode,
    AETOXGR: String(ae.grade),
    AESER: ae.serious ? 'Y' : 'N',
    AEREL: REL_C[ae.rel],
    AERELTRT: SUSPECT_C[ae.suspect],
    AESTDTC: date(ae.start),
    AEENDTC: date(ae.end),
    AEOUT: OUTCOME_C[ae.outcome],
  };
}

function renderSiteC(rng: Rng, subjects: Subject[], out: Output): void {
  const rows: Record<Domain, { row: Row; reject?: { field: string; problem: string } }[]> = { dm: [], ex: [], pr: [], ae: [], rs: [], ds: [] };
  const base = (domain: string, s: { id: string }) => ({ STUDYID: TRIAL, DOMAIN: domain, USUBJID: s.id });
  const feb = day('2016-02-29');
  const s1 = coveringSubject(subjects, feb);
  const s2 = subjects[9] === s1 ? subjects[10] : subjects[9];
  const s3 = soraSubject(subjects, [s1, s2]);
  subjects.forEach((s, index) => {
    rows.dm.push({
      row: {
        ...base('DM', s),
        SUBJID: s.subjid,
        SITEID: 'C',
        RFSTDTC: iso(s.enrol),
        RFENDTC: iso(s.death ?? s.lastContact!),
        BRTHDTC: s.birthPrecision === 'year' ? iso(s.birth).slice(0, 4) : iso(s.birth).slice(0, 7),
        SEX: s.sex,
        ARMCD: 'LDCCRT',
        ARM: 'LD-CCRT then sorafenib',
        DTHDTC: s.death === null ? '' : iso(s.death),
        DTHFL: s.death === null ? '' : 'Y',
        DIAGDTC: iso(s.dx),
        PVI: `Vp${s.vp}`,
      },
    });
    // EX: HAIC one row per infusion day, sorafenib one row
    let exseq = 0;
    for (const h of s.haic) {
      for (let d = h.start; d <= h.end; d++) {
        for (const [names, dose] of [[['FLUOROURACIL', 'Fluorouracil', '5-FU'], '500'], [['LEUCOVORIN CALCIUM', 'Leucovorin'], '50']] as const) {
          rows.ex.push({ row: { ...base('EX', s), EXSEQ: String(++exseq), EXGRPID: `C${h.cycle}`, EXTRT: rng.pick(names), EXDOSE: dose, EXDOSU: 'mg', EXDOSFRQ: 'QD', EXROUTE: 'INTRA-ARTERIAL', EXSTDTC: iso(d), EXENDTC: iso(d) } });
        }
      }
    }
    if (s.sora) {
      rows.ex.push({ row: { ...base('EX', s), EXSEQ: String(++exseq), EXGRPID: 'SORA', EXTRT: rng.pick(['SORAFENIB', 'Sorafenib']), EXDOSE: '400', EXDOSU: 'mg', EXDOSFRQ: 'BID', EXROUTE: 'ORAL', EXSTDTC: iso(s.sora.start), EXENDTC: iso(s.sora.end) } });
    }
    if (s === s3) {
      const d = s.sora!.start + 28;
      rows.ex.push({ row: { ...base('EX', s), EXSEQ: String(++exseq), EXGRPID: 'SORA2', EXTRT: 'SORAFENIB', EXDOSE: 'abc', EXDOSU: 'mg', EXDOSFRQ: 'BID', EXROUTE: 'ORAL', EXSTDTC: iso(d), EXENDTC: iso(s.sora!.end) }, reject: { field: 'EXDOSE', problem: PROBLEM.dose } });
    }
    // PR
    let prseq = 0;
    const pr = (r: Row) => rows.pr.push({ row: { ...base('PR', s), PRSEQ: String(++prseq), PRDOSE: '', PRDOSU: '', PRFXNUM: '', PRLOC: '', PRENDTC: '', ...r } });
    pr({ PRTRT: 'HEPATIC ARTERIAL PORT IMPLANTATION', PRCAT: 'INTERVENTIONAL PROCEDURE', PRSTDTC: iso(s.port) });
    pr({ PRTRT: 'RADIOTHERAPY', PRCAT: 'RADIOTHERAPY', PRDOSE: String(s.doseGy), PRDOSU: 'Gy', PRFXNUM: String(s.fractions), PRLOC: 'LIVER', PRSTDTC: iso(s.rtStart), PRENDTC: iso(s.rtEnd) });
    if (s.surgery) pr({ PRTRT: s.surgery.type === 'LT' ? 'LIVER TRANSPLANTATION' : 'HEPATECTOMY', PRCAT: 'SURGERY', PRSTDTC: iso(s.surgery.date), PRLOC: 'LIVER' });
    // AE
    let aeseq = 0;
    for (const ae of s.aes) rows.ae.push({ row: cAe(s.id, ++aeseq, ae) });
    if (s === s1) {
      rows.ae.push({ row: { ...cAe(s.id, ++aeseq, { term: TERM.FATG, verbatim: 'fatigue', grade: 1, serious: false, suspect: 'SORA', rel: 'POSSIBLE', start: feb, end: null, outcome: 'RECOVERING', partial: false }), AESTDTC: '2016-02-30' }, reject: { field: 'AESTDTC', problem: PROBLEM.date } });
    }
    if (s === s2) {
      const d = s.rtStart + 9;
      rows.ae.push({ row: { ...cAe(s.id, ++aeseq, { term: TERM.ASTI, verbatim: 'AST increased', grade: 1, serious: false, suspect: 'RT', rel: 'POSSIBLE', start: d, end: d + 14, outcome: 'RECOVERED', partial: false }), AETOXGR: '7' }, reject: { field: 'AETOXGR', problem: PROBLEM.grade } });
    }
    if (index === 6) {
      const d = day('2015-08-03');
      rows.ae.push({ row: cAe('', 1, { term: TERM.NAUS, verbatim: 'Nausea', grade: 1, serious: false, suspect: '5FU', rel: 'POSSIBLE', start: d, end: d + 3, outcome: 'RECOVERED', partial: false }), reject: { field: 'USUBJID', problem: PROBLEM.missing } });
    }
    // RS
    s.assessments.forEach((a, i) => {
      rows.rs.push({ row: { ...base('RS', s), RSSEQ: String(i + 1), RSTESTCD: 'OVRLRESP', RSTEST: 'Overall Response', RSCAT: 'MRECIST', RSORRES: rng.pick(MIXED_CASE[a.result]), RSSTRESC: a.result, VISIT: a.visit === 0 ? 'POST-CCRT WEEK 4' : `FOLLOW-UP ${a.visit}`, RSDTC: iso(a.date) } });
    });
    // DS
    rows.ds.push({
      row: s.death !== null
        ? { ...base('DS', s), DSSEQ: '1', DSTERM: 'DIED', DSDECOD: 'DEATH', DSCAT: 'DISPOSITION EVENT', DSSTDTC: iso(s.death) }
        : { ...base('DS', s), DSSEQ: '1', DSTERM: 'ALIVE AT LAST CONTACT', DSDECOD: 'LAST CONTACT', DSCAT: 'DISPOSITION EVENT', DSSTDTC: iso(s.lastContact!) },
    });
  });
  const d5 = day('2016-10-14');
  rows.ae.push({ row: cAe(`${TRIAL}-C-099`, 1, { term: TERM.PLTD, verbatim: 'Thrombocytopenia', grade: 2, serious: false, suspect: 'SORA', rel: 'POSSIBLE', start: d5, end: d5 + 21, outcome: 'RECOVERED', partial: false }), reject: { field: 'USUBJID', problem: PROBLEM.unknown } });

  out.records['site-c'] = {};
  const rejects: Reject[] = [];
  for (const domain of Object.keys(C_COLUMNS) as Domain[]) {
    const file = `examples/site-c/${domain}.csv`;
    const list = rows[domain];
    list.forEach((item, i) => {
      // Record keys as mappings/site-c.yaml builds them (USUBJID/DOMAIN/SEQ); without USUBJID, <file>#<row>.
      const seq = item.row[`${domain.toUpperCase()}SEQ`];
      const recordKey = item.row.USUBJID ? `${item.row.USUBJID}/${domain.toUpperCase()}/${seq}` : `${domain}.csv#${i + 2}`;
      if (item.reject) rejects.push({ file, row: i + 2, recordKey, ...item.reject });
    });
    out.files.set(`site-c/${domain}.csv`, csv([...C_COLUMNS[domain]], list.map((x) => x.row)));
    out.records['site-c'][file] = list.length;
  }
  out.rejects['site-c'] = rejects.sort((a, b) => a.file.localeCompare(b.file) || a.row - b.row);
}

// ---------------------------------------------------------------------------------------------------------

export function generate(seed = SEED): Map<string, string> {
  const model = buildModel(seed);
  const pooled = figures(model.subjects, 1);
  verifyPublished(pooled);
  const rng = new Rng(seed ^ 0x5eed);
  const out: Output = { files: new Map(), records: {} as Output['records'], rejects: {} as Output['rejects'] };
  const bySite = (site: Site) => model.subjects.filter((s) => s.site === site);
  renderSiteA(rng, bySite('site-a'), out);
  renderSiteB(rng, bySite('site-b'), out);
  renderSiteC(rng, bySite('site-c'), out);
  const sites = Object.fromEntries(
    (['site-a', 'site-b', 'site-c'] as Site[]).map((site) => [site, { ...figures(bySite(site), 1), records: out.records[site], rejects: out.rejects[site] }]),
  );
  const aggregates = { trial: TRIAL, pooled, sites };
  out.files.set('expected-aggregates.json', `${JSON.stringify(aggregates, null, 2)}\n`);
  return out.files;
}

export function main(outDir = 'examples'): string[] {
  const files = generate();
  const written: string[] = [];
  for (const [rel, content] of files) {
    const path = join(resolve(outDir), rel);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, content);
    written.push(path);
  }
  return written;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const written = main(process.argv[2] ?? 'examples');
  console.log(`wrote ${written.length} files:\n${written.map((p) => `  ${p}`).join('\n')}`);
}
