import type {
  AdverseEvent,
  Bundle,
  CodeableConcept,
  Coding,
  Condition,
  MedicationAdministration,
  Observation,
  Patient,
  Procedure,
  Resource,
  ResearchSubject,
} from '@medplum/fhirtypes';
import { kaplanMeier, type SurvivalPoint } from './kaplan-meier.ts';

/** The trial's figures computed from FHIR resources alone, as a sponsor would from any site's data. */
export interface TrialFigures {
  subjects: number;
  responsePost4w: number;
  bestResponse: number;
  surgery: { resection: number; transplant: number; subjects: number };
  aeSubjectsByMeddraPt: Record<string, number>;
  aeEvents: number;
  aeEventsByGrade: Record<string, number>;
  medianRtDoseGy: number | null;
  rtDosesGy: number[];
  sorafenibStarted: number;
  deaths: number;
  responseAssessments: number;
  km: {
    os: SurvivalFigure;
    pfs: SurvivalFigure;
    subgroupVp34: { n: number; os: SurvivalFigure; pfs: SurvivalFigure };
  };
}

export interface SurvivalFigure {
  n: number;
  events: number;
  medianMonths: number | null;
}

/** One tumour assessment (mRECIST overall response). */
export interface ResponseFact {
  /** CR, PR, SD, PD, NE (every code of the value) */
  codes: string[];
  /** the assessment-timepoint coding, when the Observation carries one */
  timepoint?: Coding;
  date?: string;
}

/** One adverse event. */
export interface AdverseEventFact {
  /** MedDRA codings of the event */
  terms: Coding[];
  /** CTCAE grade '1' to '5', when coded */
  grade?: string;
}

/** What the trial's figures need to know about one subject, read from the subject's FHIR resources. */
export interface SubjectFacts {
  enrolled?: string;
  lastDate?: string;
  death?: string;
  firstProgression?: string;
  /** portal-vein invasion codes on the Condition's stage (Vp0 to Vp4), when the data marks it */
  portalVeinInvasion: string[];
  /** portal trunk or first-order branch invasion (Vp3 or Vp4) */
  vp34: boolean;
  responses: ResponseFact[];
  resections: number;
  transplants: number;
  rtDosesGy: number[];
  sorafenibAdministrations: number;
  adverseEvents: AdverseEventFact[];
}

const MEDDRA_SYSTEMS: ReadonlySet<string> = new Set(['https://www.meddra.org', 'http://terminology.hl7.org/CodeSystem/MDRAE']);
const GRADE_CODES: Record<string, string> = { C41338: '1', C41339: '2', C41340: '3', C41337: '4', C48275: '5' };
const PORTAL_VEIN_INVASION = /^Vp[0-4]$/;
const DAY_MS = 86_400_000;

function codes(concept: CodeableConcept | undefined): string[] {
  return (concept?.coding ?? []).map((c) => c.code ?? '');
}

function ext(resource: { extension?: { url: string }[] }, suffix: string) {
  return resource.extension?.find((e) => e.url.endsWith(suffix)) as Record<string, unknown> | undefined;
}

/** Whole days between two FHIR dates (or date-times, read at day precision). */
export function days(from: string, to: string): number {
  return Math.round((Date.parse(to.slice(0, 10)) - Date.parse(from.slice(0, 10))) / DAY_MS);
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Whether an assessment is an objective response (mRECIST CR or PR). */
export function isResponse(response: ResponseFact): boolean {
  return response.codes.includes('CR') || response.codes.includes('PR');
}

/** Whether the subject went on to resection or transplant (conversion to curative surgery). */
export function converted(facts: SubjectFacts): boolean {
  return facts.resections + facts.transplants > 0;
}

/** A subject's facts from its resources; undefined when they hold no Patient (not a subject). */
export function subjectFacts(resources: readonly Resource[]): SubjectFacts | undefined {
  const patient = resources.find((r): r is Patient => r.resourceType === 'Patient');
  if (!patient) return undefined;
  const f: SubjectFacts = {
    death: patient.deceasedDateTime,
    portalVeinInvasion: [],
    vp34: false,
    responses: [],
    resections: 0,
    transplants: 0,
    rtDosesGy: [],
    sorafenibAdministrations: 0,
    adverseEvents: [],
  };
  for (const r of resources) {
    switch (r.resourceType) {
      case 'ResearchSubject': {
        const rs = r as ResearchSubject;
        f.enrolled = rs.period?.start;
        f.lastDate = rs.period?.end;
        break;
      }
      case 'Condition':
        for (const stage of (r as Condition).stage ?? []) f.portalVeinInvasion.push(...codes(stage.summary).filter((c) => PORTAL_VEIN_INVASION.test(c)));
        break;
      case 'Observation': {
        const o = r as Observation;
        const response: ResponseFact = { codes: codes(o.valueCodeableConcept), date: o.effectiveDateTime };
        const timepoint = (ext(o, '/assessment-timepoint')?.valueCodeableConcept as CodeableConcept | undefined)?.coding?.[0];
        if (timepoint) response.timepoint = timepoint;
        f.responses.push(response);
        if (response.codes.includes('PD') && o.effectiveDateTime && (!f.firstProgression || o.effectiveDateTime < f.firstProgression)) {
          f.firstProgression = o.effectiveDateTime;
        }
        break;
      }
      case 'Procedure': {
        const p = r as Procedure;
        const code = codes(p.code);
        if (code.includes('hepatectomy')) f.resections++;
        if (code.includes('18027006')) f.transplants++;
        const dose = ext(p, '/radiotherapy-dose-delivered')?.extension as { url: string; valueQuantity?: { value?: number; code?: string } }[] | undefined;
        const total = dose?.find((e) => e.url === 'totalDoseDelivered')?.valueQuantity;
        if (total?.value !== undefined) f.rtDosesGy.push(total.code === 'cGy' ? total.value / 100 : total.value);
        break;
      }
      case 'MedicationAdministration':
        if (codes((r as MedicationAdministration).medicationCodeableConcept).includes('495881')) f.sorafenibAdministrations++;
        break;
      case 'AdverseEvent': {
        const ae = r as AdverseEvent;
        const event: AdverseEventFact = { terms: (ae.event?.coding ?? []).filter((c) => c.code && MEDDRA_SYSTEMS.has(c.system ?? '')) };
        const grade = GRADE_CODES[codes(ext(ae, '/ae-grade')?.valueCodeableConcept as CodeableConcept)[0] ?? ''];
        if (grade) event.grade = grade;
        f.adverseEvents.push(event);
        break;
      }
    }
  }
  f.vp34 = f.portalVeinInvasion.some((c) => c === 'Vp3' || c === 'Vp4');
  return f;
}

/** Overall survival: enrolment to death, censored at the end of follow-up. */
export function osPoints(list: readonly SubjectFacts[]): SurvivalPoint[] {
  return list.filter((s) => s.enrolled && (s.death ?? s.lastDate)).map((s) => ({ time: days(s.enrolled!, (s.death ?? s.lastDate)!), event: Boolean(s.death) }));
}

/** Progression-free survival: enrolment to first progression (PD) or death, censored at the end of follow-up. */
export function pfsPoints(list: readonly SubjectFacts[]): SurvivalPoint[] {
  return list
    .filter((s) => s.enrolled && (s.firstProgression ?? s.death ?? s.lastDate))
    .map((s) => {
      const events = [s.firstProgression, s.death].filter((d): d is string => Boolean(d)).sort();
      return events.length > 0 ? { time: days(s.enrolled!, events[0]), event: true } : { time: days(s.enrolled!, s.lastDate!), event: false };
    });
}

/** The distinct MedDRA codes of a subject's adverse events. */
export function adverseEventTerms(facts: SubjectFacts): Set<string> {
  return new Set(facts.adverseEvents.flatMap((e) => e.terms.map((t) => t.code!)));
}

function survival(points: SurvivalPoint[]): SurvivalFigure {
  const km = kaplanMeier(points);
  return { n: km.n, events: km.events, medianMonths: km.medianMonths };
}

/** The trial's figures over a set of subjects. */
export function figuresFromFacts(facts: readonly SubjectFacts[]): TrialFigures {
  const aeSubjects: Record<string, number> = {};
  const aeEventsByGrade: Record<string, number> = {};
  for (const f of facts) {
    for (const term of adverseEventTerms(f)) aeSubjects[term] = (aeSubjects[term] ?? 0) + 1;
    for (const e of f.adverseEvents) if (e.grade) aeEventsByGrade[e.grade] = (aeEventsByGrade[e.grade] ?? 0) + 1;
  }
  const doses = facts.flatMap((f) => f.rtDosesGy);
  const count = (test: (f: SubjectFacts) => boolean) => facts.filter(test).length;
  const sum = (value: (f: SubjectFacts) => number) => facts.reduce((n, f) => n + value(f), 0);
  const subgroup = facts.filter((s) => s.vp34);
  return {
    subjects: facts.length,
    responsePost4w: count((f) => f.responses.some((r) => isResponse(r) && r.timepoint?.code === 'post-ccrt-week-4')),
    bestResponse: count((f) => f.responses.some(isResponse)),
    surgery: { resection: sum((f) => f.resections), transplant: sum((f) => f.transplants), subjects: count(converted) },
    aeSubjectsByMeddraPt: Object.fromEntries(Object.entries(aeSubjects).sort()),
    aeEvents: sum((f) => f.adverseEvents.length),
    aeEventsByGrade,
    medianRtDoseGy: median(doses),
    rtDosesGy: [...doses].sort((a, b) => a - b),
    sorafenibStarted: sum((f) => f.sorafenibAdministrations),
    deaths: count((f) => Boolean(f.death)),
    responseAssessments: sum((f) => f.responses.length),
    km: {
      os: survival(osPoints(facts)),
      pfs: survival(pfsPoints(facts)),
      subgroupVp34: { n: subgroup.length, os: survival(osPoints(subgroup)), pfs: survival(pfsPoints(subgroup)) },
    },
  };
}

/** Figures from groups of resources, one group per subject (a subject bundle, or a read-back from a server). */
export function trialFigures(subjects: readonly (readonly Resource[])[]): TrialFigures {
  return figuresFromFacts(subjects.map(subjectFacts).filter((f): f is SubjectFacts => f !== undefined));
}

/** The resources of subject bundles, one group per bundle. */
export function bundleGroups(bundles: readonly Bundle[]): Resource[][] {
  return bundles.map((b) => (b.entry ?? []).map((e) => e.resource).filter((r): r is Resource => Boolean(r)));
}
