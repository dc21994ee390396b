import type {
  AdverseEvent,
  Bundle,
  CodeableConcept,
  MedicationAdministration,
  Observation,
  Patient,
  Procedure,
  Resource,
  ResearchSubject,
} from '@medplum/fhirtypes';
import { kaplanMeier } from './kaplan-meier.ts';

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

const MEDDRA_SYSTEMS = new Set(['https://www.meddra.org', 'http://terminology.hl7.org/CodeSystem/MDRAE']);
const GRADE_CODES: Record<string, string> = { C41338: '1', C41339: '2', C41340: '3', C41337: '4', C48275: '5' };
const DAY_MS = 86_400_000;

function codes(concept: CodeableConcept | undefined): string[] {
  return (concept?.coding ?? []).map((c) => c.code ?? '');
}

function ext(resource: { extension?: { url: string }[] }, suffix: string) {
  return resource.extension?.find((e) => e.url.endsWith(suffix)) as Record<string, unknown> | undefined;
}

function days(from: string, to: string): number {
  return Math.round((Date.parse(to.slice(0, 10)) - Date.parse(from.slice(0, 10))) / DAY_MS);
}

function median(values: number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

interface SubjectFacts {
  enrolled?: string;
  lastDate?: string;
  death?: string;
  firstProgression?: string;
  vp34: boolean;
}

function survival(points: { time: number; event: boolean }[]): SurvivalFigure {
  const km = kaplanMeier(points);
  return { n: km.n, events: km.events, medianMonths: km.medianMonths };
}

/** Figures from groups of resources, one group per subject (a subject bundle, or a read-back from a server). */
export function trialFigures(subjects: readonly (readonly Resource[])[]): TrialFigures {
  const figures: TrialFigures = {
    subjects: 0,
    responsePost4w: 0,
    bestResponse: 0,
    surgery: { resection: 0, transplant: 0, subjects: 0 },
    aeSubjectsByMeddraPt: {},
    aeEvents: 0,
    aeEventsByGrade: {},
    medianRtDoseGy: null,
    rtDosesGy: [],
    sorafenibStarted: 0,
    deaths: 0,
    responseAssessments: 0,
    km: { os: { n: 0, events: 0, medianMonths: null }, pfs: { n: 0, events: 0, medianMonths: null }, subgroupVp34: { n: 0, os: { n: 0, events: 0, medianMonths: null }, pfs: { n: 0, events: 0, medianMonths: null } } },
  };
  const doses: number[] = [];
  const facts: SubjectFacts[] = [];
  for (const resources of subjects) {
    const patient = resources.find((r): r is Patient => r.resourceType === 'Patient');
    if (!patient) continue;
    figures.subjects++;
    const f: SubjectFacts = { vp34: false, death: patient.deceasedDateTime };
    if (f.death) figures.deaths++;
    let post4w = false;
    let best = false;
    let surgery = false;
    const aeTerms = new Set<string>();
    for (const r of resources) {
      switch (r.resourceType) {
        case 'ResearchSubject': {
          const rs = r as ResearchSubject;
          f.enrolled = rs.period?.start;
          f.lastDate = rs.period?.end;
          break;
        }
        case 'Condition':
          if (r.stage?.some((s) => codes(s.summary).some((c) => c === 'Vp3' || c === 'Vp4'))) f.vp34 = true;
          break;
        case 'Observation': {
          const o = r as Observation;
          figures.responseAssessments++;
          const response = codes(o.valueCodeableConcept);
          const responded = response.includes('CR') || response.includes('PR');
          const timepoint = ext(o, '/assessment-timepoint')?.valueCodeableConcept as CodeableConcept | undefined;
          if (responded) best = true;
          if (responded && codes(timepoint).includes('post-ccrt-week-4')) post4w = true;
          if (response.includes('PD') && o.effectiveDateTime && (!f.firstProgression || o.effectiveDateTime < f.firstProgression)) {
            f.firstProgression = o.effectiveDateTime;
          }
          break;
        }
        case 'Procedure': {
          const p = r as Procedure;
          const code = codes(p.code);
          if (code.includes('hepatectomy')) {
            figures.surgery.resection++;
            surgery = true;
          }
          if (code.includes('18027006')) {
            figures.surgery.transplant++;
            surgery = true;
          }
          const dose = ext(p, '/radiotherapy-dose-delivered')?.extension as { url: string; valueQuantity?: { value?: number; code?: string } }[] | undefined;
          const total = dose?.find((e) => e.url === 'totalDoseDelivered')?.valueQuantity;
          if (total?.value !== undefined) doses.push(total.code === 'cGy' ? total.value / 100 : total.value);
          break;
        }
        case 'MedicationAdministration':
          if (codes((r as MedicationAdministration).medicationCodeableConcept).includes('495881')) figures.sorafenibStarted++;
          break;
        case 'AdverseEvent': {
          const ae = r as AdverseEvent;
          figures.aeEvents++;
          for (const c of ae.event?.coding ?? []) if (c.code && MEDDRA_SYSTEMS.has(c.system ?? '')) aeTerms.add(c.code);
          const grade = GRADE_CODES[codes(ext(ae, '/ae-grade')?.valueCodeableConcept as CodeableConcept)[0] ?? ''];
          if (grade) figures.aeEventsByGrade[grade] = (figures.aeEventsByGrade[grade] ?? 0) + 1;
          break;
        }
      }
    }
    if (post4w) figures.responsePost4w++;
    if (best) figures.bestResponse++;
    if (surgery) figures.surgery.subjects++;
    for (const term of aeTerms) figures.aeSubjectsByMeddraPt[term] = (figures.aeSubjectsByMeddraPt[term] ?? 0) + 1;
    facts.push(f);
  }
  figures.aeSubjectsByMeddraPt = Object.fromEntries(Object.entries(figures.aeSubjectsByMeddraPt).sort());
  figures.medianRtDoseGy = median(doses);
  figures.rtDosesGy = [...doses].sort((a, b) => a - b);

  const os = (list: SubjectFacts[]) =>
    list.filter((s) => s.enrolled && (s.death ?? s.lastDate)).map((s) => ({ time: days(s.enrolled!, (s.death ?? s.lastDate)!), event: Boolean(s.death) }));
  const pfs = (list: SubjectFacts[]) =>
    list
      .filter((s) => s.enrolled && (s.firstProgression ?? s.death ?? s.lastDate))
      .map((s) => {
        const events = [s.firstProgression, s.death].filter((d): d is string => Boolean(d)).sort();
        return events.length > 0 ? { time: days(s.enrolled!, events[0]), event: true } : { time: days(s.enrolled!, s.lastDate!), event: false };
      });
  const subgroup = facts.filter((s) => s.vp34);
  figures.km = {
    os: survival(os(facts)),
    pfs: survival(pfs(facts)),
    subgroupVp34: { n: subgroup.length, os: survival(os(subgroup)), pfs: survival(pfs(subgroup)) },
  };
  return figures;
}

/** The resources of subject bundles, one group per bundle. */
export function bundleGroups(bundles: readonly Bundle[]): Resource[][] {
  return bundles.map((b) => (b.entry ?? []).map((e) => e.resource).filter((r): r is Resource => Boolean(r)));
}
