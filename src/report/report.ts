/**
 * The sponsor's study report: per site and pooled, from the resources a FHIR server holds for the study (see
 * fhir-source.ts). Only aggregates: no identifier, name or date of a subject appears in it.
 */
import type { Coding, Identifier, ResearchStudy } from '@medplum/fhirtypes';
import {
  adverseEventTerms,
  converted,
  days,
  figuresFromFacts,
  isResponse,
  median,
  osPoints,
  pfsPoints,
  subjectFacts,
  type SubjectFacts,
  type TrialFigures,
} from './figures.ts';
import { completenessWarnings } from './completeness.ts';
import type { StudySource, StudySubject } from './fhir-source.ts';
import { atRiskAt, DAYS_PER_MONTH, daysToMonths, KAPLAN_MEIER_METHOD, kaplanMeier, type SurvivalPoint } from './kaplan-meier.ts';

/** n of a denominator, with the percentage rounded to 1 decimal (null when the denominator is 0). */
export interface Proportion {
  n: number;
  of: number;
  percent: number | null;
}

export interface SurvivalEstimate {
  n: number;
  events: number;
  censored: number;
  medianMonths: number | null;
  /** 95% CI of the median (Brookmeyer-Crowley, log-log); null = not reached */
  medianCiMonths: { lower: number | null; upper: number | null };
  medianDays: number | null;
  medianCiDays: { lower: number | null; upper: number | null };
  /** S(0) = 1, then one step per distinct event time */
  curve: { days: number; survival: number; lower: number | null; upper: number | null; atRisk: number; events: number; stdErr: number | null }[];
  /** censoring times (tick marks on the curve) */
  censorings: { days: number; survival: number; count: number }[];
  /** numbers at risk on the report's month grid */
  atRisk: { months: number; n: number }[];
}

export interface TimepointResponse {
  code: string;
  display: string;
  /** subjects with at least one assessment at this timepoint */
  assessed: number;
  /** subjects with CR or PR at this timepoint, of all subjects */
  responders: Proportion;
}

export interface AdverseEventTermRow {
  system: string;
  code: string;
  display: string;
  /** subjects with at least one event of the term, of all subjects */
  subjects: Proportion;
  /** subjects with at least one event of the term of CTCAE grade 3 or more */
  grade3plus: Proportion;
  events: number;
}

export interface GroupReport {
  /** `pooled` or the site id */
  group: string;
  subjects: number;
  response: { timepoints: TimepointResponse[]; best: Proportion };
  conversion: { resection: number; transplant: number; subjects: Proportion };
  adverseEvents: {
    events: number;
    anyGrade: Proportion;
    byTerm: AdverseEventTermRow[];
    byGrade: { grade: string; subjects: Proportion; events: number }[];
  };
  radiotherapy: { courses: number; medianDoseGy: number | null; minDoseGy: number | null; maxDoseGy: number | null };
  survival: {
    os: SurvivalEstimate;
    pfs: SurvivalEstimate;
    /** subjects with portal trunk or first-order branch invasion; null when no subject's data marks invasion */
    portalVeinInvasion: { definition: string; marked: number; n: number; os: SurvivalEstimate; pfs: SurvivalEstimate } | null;
  };
  /** the trial's figures as the mapping tests compute them (src/report/figures.ts) */
  figures: TrialFigures;
}

export interface StudyReport {
  generated: string;
  study: { identifier: string; title?: string; status?: string; server: string; requests: number };
  sites: string[];
  pooled: GroupReport;
  bySite: GroupReport[];
  methods: Record<string, string>;
  /** Signs that the server's data is incomplete (completeness.ts): counts only, empty when none. */
  warnings: string[];
}

export const POOLED = 'pooled';
/** Months between two rows of the numbers-at-risk table. */
const AT_RISK_STEP_MONTHS = 6;
const GRADES = ['1', '2', '3', '4', '5'];
const PORTAL_VEIN_DEFINITION = 'portal vein invasion Vp3 or Vp4 (first-order branch or main trunk)';

export const REPORT_METHODS: Record<string, string> = {
  source:
    'Read from the FHIR server alone: the ResearchStudy by identifier, its ResearchSubjects with their Patients, and the ' +
    "subjects' Conditions, mRECIST response Observations, Procedures, MedicationAdministrations and the study's AdverseEvents.",
  site: 'The site of a subject is the one named in the business identifier system of its ResearchSubject (or Patient): <trial namespace>:<site>:<rule>.',
  response:
    'Objective response: mRECIST complete or partial response (CR or PR). Per timepoint: subjects with CR/PR at an assessment ' +
    'of that timepoint; best: at any assessment. Denominator: all subjects enrolled.',
  conversion: 'Subjects with a hepatectomy or a liver transplantation (SNOMED CT 18027006) Procedure, of all subjects.',
  adverseEvents:
    'Incidence: subjects with at least one event (by MedDRA code of AdverseEvent.event; by CTCAE grade from the ae-grade extension), of all subjects.',
  radiotherapy: 'Median of the total dose delivered per radiotherapy course (cGy converted to Gy).',
  survival:
    'Overall survival: enrolment (ResearchSubject.period.start) to death (Patient.deceasedDateTime), censored at the end of follow-up ' +
    '(ResearchSubject.period.end). Progression-free survival: to the first PD assessment or death, whichever comes first. ' +
    `Months = days / ${DAYS_PER_MONTH}. ${KAPLAN_MEIER_METHOD}`,
  portalVeinInvasion: `Subgroup: ${PORTAL_VEIN_DEFINITION}, from the stage summary of the Condition; shown where the data codes Vp0 to Vp4.`,
};

export function proportion(n: number, of: number): Proportion {
  return { n, of, percent: of === 0 ? null : Math.round((1000 * n) / of) / 10 };
}

/** The site segment of a business identifier system `<namespace>:<site>:<rule>`. */
function siteFrom(systems: readonly (string | undefined)[], namespace: string | undefined): string | undefined {
  for (const system of systems) {
    if (!system) continue;
    if (namespace && system.startsWith(`${namespace}:`)) {
      const rest = system.slice(namespace.length + 1).split(':');
      if (rest.length === 2 && rest[0]) return rest[0];
    }
  }
  return undefined;
}

/** The namespace the trial's business identifiers share: the study's official system without its rule id. */
function trialNamespace(study: ResearchStudy): string | undefined {
  const systems = (study.identifier ?? []).map((i) => i.system).filter((s): s is string => Boolean(s));
  return systems.find((s) => s.endsWith(':research-study'))?.slice(0, -':research-study'.length);
}

function siteOf(subject: StudySubject, namespace: string | undefined): string {
  const systems = (identifiers: Identifier[] | undefined, tags: Coding[] | undefined) => [...(identifiers ?? []).map((i) => i.system), ...(tags ?? []).map((t) => t.system)];
  return (
    siteFrom(systems(subject.researchSubject.identifier, subject.researchSubject.meta?.tag), namespace) ??
    siteFrom(systems(subject.patient?.identifier, subject.patient?.meta?.tag), namespace) ??
    'unknown'
  );
}

/** Things listed in the same order in every group (so a site's rows line up with the pooled ones). */
interface Catalogue {
  timepoints: { code: string; display: string }[];
  terms: { system: string; code: string; display: string }[];
  gridMonths: number[];
}

function mostCommon(values: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))[0]?.[0] ?? '';
}

function catalogue(facts: readonly SubjectFacts[]): Catalogue {
  const timepoints = new Map<string, { displays: string[]; days: number[] }>();
  for (const f of facts) {
    for (const r of f.responses) {
      const code = r.timepoint?.code;
      if (!code) continue;
      const t = timepoints.get(code) ?? { displays: [], days: [] };
      if (r.timepoint?.display) t.displays.push(r.timepoint.display);
      if (f.enrolled && r.date) t.days.push(days(f.enrolled, r.date));
      timepoints.set(code, t);
    }
  }
  const terms = new Map<string, { system: string; displays: string[]; subjects: number }>();
  for (const f of facts) {
    for (const code of adverseEventTerms(f)) {
      const term = terms.get(code) ?? { system: '', displays: [], subjects: 0 };
      term.subjects++;
      terms.set(code, term);
    }
    for (const c of f.adverseEvents.flatMap((e) => e.terms)) {
      const term = terms.get(c.code!)!;
      term.system ||= c.system ?? '';
      if (c.display) term.displays.push(c.display);
    }
  }
  const longest = Math.max(0, ...osPoints(facts).map((p) => p.time), ...pfsPoints(facts).map((p) => p.time));
  const lastMonth = Math.ceil(longest / DAYS_PER_MONTH / AT_RISK_STEP_MONTHS) * AT_RISK_STEP_MONTHS;
  return {
    // in the order they happen: by median time from enrolment
    timepoints: [...timepoints]
      .map(([code, t]) => ({ code, display: mostCommon(t.displays) || code, at: median(t.days) ?? Number.POSITIVE_INFINITY }))
      .sort((a, b) => a.at - b.at || a.code.localeCompare(b.code))
      .map(({ code, display }) => ({ code, display })),
    // the most frequent first
    terms: [...terms]
      .map(([code, t]) => ({ system: t.system, code, display: mostCommon(t.displays) || code, subjects: t.subjects }))
      .sort((a, b) => b.subjects - a.subjects || a.display.localeCompare(b.display))
      .map(({ system, code, display }) => ({ system, code, display })),
    gridMonths: Array.from({ length: lastMonth / AT_RISK_STEP_MONTHS + 1 }, (_, i) => i * AT_RISK_STEP_MONTHS),
  };
}

function survivalEstimate(points: SurvivalPoint[], gridMonths: readonly number[]): SurvivalEstimate {
  const km = kaplanMeier(points);
  const months = (d: number | null) => (d === null ? null : daysToMonths(d));
  return {
    n: km.n,
    events: km.events,
    censored: km.n - km.events,
    medianMonths: km.medianMonths,
    medianCiMonths: { lower: months(km.medianCiDays.lower), upper: months(km.medianCiDays.upper) },
    medianDays: km.medianDays,
    medianCiDays: km.medianCiDays,
    curve: km.curve.map((s) => ({ days: s.time, survival: s.survival, lower: s.lower, upper: s.upper, atRisk: s.atRisk, events: s.events, stdErr: s.stdErr })),
    censorings: km.censored.map((c) => ({ days: c.time, survival: c.survival, count: c.count })),
    atRisk: gridMonths.map((m) => ({ months: m, n: atRiskAt(points, m * DAYS_PER_MONTH) })),
  };
}

function groupReport(group: string, facts: readonly SubjectFacts[], cat: Catalogue): GroupReport {
  const n = facts.length;
  const count = (test: (f: SubjectFacts) => boolean) => facts.filter(test).length;
  const of = (test: (f: SubjectFacts) => boolean) => proportion(count(test), n);
  const doses = facts.flatMap((f) => f.rtDosesGy);
  const marked = count((f) => f.portalVeinInvasion.length > 0);
  const subgroup = facts.filter((f) => f.vp34);
  return {
    group,
    subjects: n,
    response: {
      timepoints: cat.timepoints.map(({ code, display }) => ({
        code,
        display,
        assessed: count((f) => f.responses.some((r) => r.timepoint?.code === code)),
        responders: of((f) => f.responses.some((r) => r.timepoint?.code === code && isResponse(r))),
      })),
      best: of((f) => f.responses.some(isResponse)),
    },
    conversion: {
      resection: count((f) => f.resections > 0),
      transplant: count((f) => f.transplants > 0),
      subjects: of(converted),
    },
    adverseEvents: {
      events: facts.reduce((sum, f) => sum + f.adverseEvents.length, 0),
      anyGrade: of((f) => f.adverseEvents.length > 0),
      byTerm: cat.terms.map((term) => {
        const ofTerm = (f: SubjectFacts) => f.adverseEvents.filter((e) => e.terms.some((t) => t.code === term.code));
        return {
          ...term,
          subjects: of((f) => ofTerm(f).length > 0),
          grade3plus: of((f) => ofTerm(f).some((e) => Number(e.grade) >= 3)),
          events: facts.reduce((sum, f) => sum + ofTerm(f).length, 0),
        };
      }),
      byGrade: GRADES.map((grade) => ({
        grade,
        subjects: of((f) => f.adverseEvents.some((e) => e.grade === grade)),
        events: facts.reduce((sum, f) => sum + f.adverseEvents.filter((e) => e.grade === grade).length, 0),
      })),
    },
    radiotherapy: {
      courses: doses.length,
      medianDoseGy: median(doses),
      minDoseGy: doses.length ? Math.min(...doses) : null,
      maxDoseGy: doses.length ? Math.max(...doses) : null,
    },
    survival: {
      os: survivalEstimate(osPoints(facts), cat.gridMonths),
      pfs: survivalEstimate(pfsPoints(facts), cat.gridMonths),
      portalVeinInvasion:
        marked === 0
          ? null
          : {
              definition: PORTAL_VEIN_DEFINITION,
              marked,
              n: subgroup.length,
              os: survivalEstimate(osPoints(subgroup), cat.gridMonths),
              pfs: survivalEstimate(pfsPoints(subgroup), cat.gridMonths),
            },
    },
    figures: figuresFromFacts(facts),
  };
}

/** The report of a study read from a server. */
export function buildStudyReport(source: StudySource, context: { identifier: string; server: string; generated?: Date }): StudyReport {
  const namespace = trialNamespace(source.study);
  const subjectSites = source.subjects.map((s) => siteOf(s, namespace));
  const subjects = source.subjects
    .map((s, i) => ({ site: subjectSites[i], facts: subjectFacts(s.resources) }))
    .filter((s): s is { site: string; facts: SubjectFacts } => s.facts !== undefined);
  const all = subjects.map((s) => s.facts);
  const cat = catalogue(all);
  const sites = [...new Set(subjects.map((s) => s.site))].sort();
  return {
    generated: (context.generated ?? new Date()).toISOString(),
    study: {
      identifier: context.identifier,
      ...(source.study.title ? { title: source.study.title } : {}),
      ...(source.study.status ? { status: source.study.status } : {}),
      server: context.server,
      requests: source.requests,
    },
    sites,
    pooled: groupReport(POOLED, all, cat),
    bySite: sites.map((site) => groupReport(site, subjects.filter((s) => s.site === site).map((s) => s.facts), cat)),
    methods: REPORT_METHODS,
    warnings: completenessWarnings(source, (i) => subjectSites[i]),
  };
}
