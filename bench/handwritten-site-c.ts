/**
 * Hand-written TypeScript equivalent of mappings/site-c.yaml (+ ldccrt-hcc-base.yaml): plain code that turns the
 * SourceRecords of a site-c SDTM export into the same per-subject transaction bundles as the engine (same
 * resources, identifiers, urn:uuid fullUrls, key order). Used by bench/mapping.bench.ts as the speed reference.
 *
 * Failure handling mirrors the engine for this mapping: a record whose resource cannot be built is rejected and
 * every resource it feeds is dropped; everything refers to the DM-derived resources, so a bad DM row drops the
 * subject. Duplicate business keys reject the later record.
 */
import { readFileSync } from 'node:fs';
import type { Bundle, BundleEntry, Coding, ConceptMap, Resource } from '@medplum/fhirtypes';
import type { SourceRecord } from '../src/source/record.ts';
import { SOURCE_FILE_EXTENSION, TRIALBRIDGE_VERSION } from '../src/bundle/provenance.ts';
import { conditionalUrl, fullUrlFor } from '../src/mapping/identity.ts';

export const TRIAL_ID = 'LDCCRT-HCC-P2';
export const NS = 'urn:trialbridge:ldccrt-hcc-p2';
export const SITE = 'site-c';
export const VERSION = '1.0.0';
export const MAPPING_URI = `${NS}:mapping:${SITE}|${VERSION}`;
export const UCUM = 'http://unitsofmeasure.org';

const SCT = 'http://snomed.info/sct';
const RXNORM = 'http://www.nlm.nih.gov/research/umls/rxnorm';
const NCIT = 'http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl';
const TRIAL_CS = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/CodeSystem';
const ARM = 'LD-CCRT then sorafenib';
const AE_IG = 'http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition';
const PROFILE_BASE = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition';

/** Identifier system of a rule: `<namespace>:<site>:<rule>`, or `<namespace>:<rule>` for trial-wide rules. */
export const systemOf = (rule: string, trialWide = false) => (trialWide ? `${NS}:${rule}` : `${NS}:${SITE}:${rule}`);

// ---- terminology (the value maps of the base mapping, as code) -------------------------------------------

type Table = Map<string, Coding>;
function table(system: string | undefined, entries: Record<string, [string, string] | [string, string, string]>): Table {
  const out: Table = new Map();
  for (const [source, e] of Object.entries(entries)) {
    const sys = e.length === 3 ? e[0] : system;
    const [code, display] = e.length === 3 ? [e[1], e[2]] : e;
    out.set(source, Object.freeze(sys ? { system: sys, code, display } : { code, display }));
  }
  return out;
}

const FU: [string, string, string] = [RXNORM, '4492', 'Fluorouracil'];
const LV: [string, string, string] = [RXNORM, '6313', 'Leucovorin'];
const SORA: [string, string, string] = [RXNORM, '495881', 'Sorafenib'];
const RT: [string, string, string] = [SCT, '33195004', 'Teleradiotherapy procedure'];
export const TREATMENT = table(undefined, {
  '5FU': FU, '5-FU': FU, FLUOROURACIL: FU, LV, LEUCOVORIN: LV, 'LEUCOVORIN CALCIUM': LV, SORA, SORAFENIB: SORA, RT, RADIOTHERAPY: RT,
});
const SEX: Record<string, string> = { M: 'male', MALE: 'male', F: 'female', FEMALE: 'female', U: 'unknown' };
const GRADE = table(NCIT, {
  '1': ['C41338', 'Grade 1 Mild Adverse Event'],
  '2': ['C41339', 'Grade 2 Moderate Adverse Event'],
  '3': ['C41340', 'Grade 3 Severe Adverse Event'],
  '4': ['C41337', 'Grade 4 Life Threatening or Disabling Adverse Event'],
  '5': ['C48275', 'Grade 5 Death Related to Adverse Event'],
});
const SERIOUS: [string, string] = ['serious', 'Serious'];
const NON_SERIOUS: [string, string] = ['non-serious', 'Non-serious'];
const SERIOUSNESS = table('http://terminology.hl7.org/CodeSystem/adverse-event-seriousness', {
  Y: SERIOUS, YES: SERIOUS, '1': SERIOUS, N: NON_SERIOUS, NO: NON_SERIOUS, '0': NON_SERIOUS,
});
const SERIOUSNESS_R4 = table('http://terminology.hl7.org/CodeSystem/adverse-event-seriousness', {
  serious: ['Serious', 'Serious'], 'non-serious': ['Non-serious', 'Non-serious'],
});
const RESOLVED: [string, string] = ['resolved', 'Resolved'];
const RECOVERING: [string, string] = ['recovering', 'Recovering'];
const ONGOING: [string, string] = ['ongoing', 'Ongoing'];
const SEQUELAE: [string, string] = ['resolvedWithSequelae', 'Resolved with Sequelae'];
const OUTCOME = table('http://terminology.hl7.org/CodeSystem/adverse-event-outcome', {
  RECOVERED: RESOLVED, 'RECOVERED/RESOLVED': RESOLVED, RECOVERING, 'RECOVERING/RESOLVING': RECOVERING,
  'NOT RECOVERED': ONGOING, 'NOT RECOVERED/NOT RESOLVED': ONGOING, SEQUELAE, 'RECOVERED/RESOLVED WITH SEQUELAE': SEQUELAE,
  FATAL: ['fatal', 'Fatal'],
});
const OUTCOME_RESEARCH = table('urn:oid:2.16.840.1.113883.3.989.2.1.1.19', {
  resolved: ['recoveredorresolved', 'Recovered/Resolved'],
  recovering: ['roveringorresolving', 'Recovering/Resolving'],
  ongoing: ['notrecoveredorresolved', 'Not Recovered/Not Resolved'],
  resolvedWithSequelae: ['resolvedwithsequelae', 'Recovered/Resolved with Sequelae'],
  fatal: ['fatal', 'Fatal'],
});
const RELATEDNESS = table(NCIT, {
  NOT: ['C53256', 'Not Related'], 'NOT RELATED': ['C53256', 'Not Related'],
  UNLIKELY: ['C53257', 'Unlikely Related'], 'UNLIKELY RELATED': ['C53257', 'Unlikely Related'],
  POSSIBLE: ['C53258', 'Possibly Related'], 'POSSIBLY RELATED': ['C53258', 'Possibly Related'],
  RELATED: ['C53260', 'Related'],
});
const MRECIST = table(`${TRIAL_CS}/mrecist-response`, {
  CR: ['CR', 'Complete response'], PR: ['PR', 'Partial response'], SD: ['SD', 'Stable disease'], PD: ['PD', 'Progressive disease'], NE: ['NE', 'Not evaluable'],
});
const POST4W: [string, string] = ['post-ccrt-week-4', '4 weeks after LD-CCRT'];
const TIMEPOINT = table(`${TRIAL_CS}/assessment-timepoint`, { POST4W, 'POST-CCRT WEEK 4': POST4W, 'FOLLOW-UP': ['follow-up', 'Follow-up assessment'] });
const PVI = table(`${TRIAL_CS}/portal-vein-invasion`, {
  VP0: ['Vp0', 'No portal vein invasion'],
  VP1: ['Vp1', 'Invasion of a portal vein branch distal to the second-order branches'],
  VP2: ['Vp2', 'Invasion of second-order branches of the portal vein'],
  VP3: ['Vp3', 'Invasion of first-order branches of the portal vein'],
  VP4: ['Vp4', 'Invasion of the main trunk of the portal vein'],
});
const HEPATECTOMY: [string, string, string] = [`${TRIAL_CS}/procedure`, 'hepatectomy', 'Hepatectomy'];
const LT: [string, string, string] = [SCT, '18027006', 'Transplantation of liver'];
const SURGERY = table(undefined, { RESECT: HEPATECTOMY, HEPATECTOMY, LT, 'LIVER TRANSPLANTATION': LT });

/** MedDRA LLT → PT from the trial's FHIR ConceptMap (unmapped mode `provided`: the code maps to itself). */
export interface MeddraMap {
  readonly target: string;
  readonly codes: Record<string, { code: string; display?: string }>;
}
export function loadMeddraMap(path = new URL('../mappings/terminology/meddra-llt-to-pt.json', import.meta.url)): MeddraMap {
  const map = JSON.parse(readFileSync(path, 'utf8')) as ConceptMap;
  const group = map.group![0];
  const codes: MeddraMap['codes'] = {};
  for (const e of group.element ?? []) {
    const t = e.target?.find((x) => x.equivalence !== 'unmatched' && x.equivalence !== 'disjoint');
    if (e.code && t?.code && !(e.code in codes)) codes[e.code] = t.display ? { code: t.code, display: t.display } : { code: t.code };
  }
  return { target: group.target!, codes };
}

class BadValue extends Error {}

function lookup(map: Table, name: string, value: string, caseInsensitive = true): Coding {
  const hit = map.get(caseInsensitive ? value.trim().toUpperCase() : value.trim());
  if (!hit) throw new BadValue(`'${value}' is not in value map '${name}'`);
  return { ...hit };
}
const optionalLookup = (map: Table, name: string, value: string | undefined, ci = true) => (value === undefined ? undefined : lookup(map, name, value, ci));

// ---- values ----------------------------------------------------------------------------------------------

const ISO_PARTIAL = /^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$/;
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;

function checkCalendar(y: number, m: number | undefined, d: number | undefined): void {
  if (m !== undefined && (m < 1 || m > 12)) throw new BadValue(`impossible date: month ${m}`);
  if (m !== undefined && d !== undefined && (d < 1 || d > new Date(Date.UTC(y, m, 0)).getUTCDate())) throw new BadValue(`impossible date: day ${d}`);
}

/** ISO 8601 date (partial kept partial) or date-time with offset; the mapping declares no timezone or formats. */
export function isoDate(text: string | undefined, dateOnly = false): string | undefined {
  if (text === undefined) return undefined;
  const value = text.trim();
  const p = ISO_PARTIAL.exec(value);
  if (p) {
    checkCalendar(+p[1], p[2] ? +p[2] : undefined, p[3] ? +p[3] : undefined);
    return value;
  }
  const t = ISO_TIME.exec(value);
  if (!t) throw new BadValue(`'${value}' is not a date`);
  const [, y, mo, d, h, mi, s, frac, offset] = t;
  checkCalendar(+y, +mo, +d);
  if (+h > 23 || +mi > 59 || (s !== undefined && +s > 59)) throw new BadValue(`impossible time in '${value}'`);
  if (!offset) throw new BadValue(`date-time '${value}' has no timezone`);
  if (dateOnly) return value.slice(0, 10);
  const zone = offset === 'Z' ? 'Z' : offset.length === 5 ? `${offset.slice(0, 3)}:${offset.slice(3)}` : offset;
  return `${y}-${mo}-${d}T${h}:${mi}:${s ?? '00'}${frac ?? ''}${zone}`;
}

function decimal(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(n)) throw new BadValue(`'${text}' is not a number`);
  return n;
}
function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) throw new BadValue(`${field}: required value is missing`);
  return value;
}
/** FHIRPath toDecimal(): a decimal literal, or nothing. */
const toDecimal = (text: string | undefined) => (text !== undefined && /^-?\d{1,9}(\.\d{1,9})?$/.test(text) ? parseFloat(text) : undefined);

/** Dose units to centigray, as UCUM converts them (case-sensitive UCUM codes). */
const TO_CGY: Record<string, number> = { Gy: 100, cGy: 1, mGy: 0.1 };
function cGy(value: number, unit: string): number {
  const factor = TO_CGY[unit.trim()];
  if (factor === undefined) throw new BadValue(`'${unit}' is not a dose unit`);
  return factor === 1 ? value : Number((value * factor).toPrecision(12));
}
const mg = (value: number) => ({ value, unit: 'mg', system: UCUM, code: 'mg' });

// ---- resources -------------------------------------------------------------------------------------------

const HCC = { system: SCT, code: '25370001', display: 'Hepatocellular carcinoma' };
const LIVER = { system: SCT, code: '10200004', display: 'Liver structure' };
const ARM_DESCRIPTION =
  'Liver radiotherapy over 5 weeks with hepatic arterial infusion of 5-fluorouracil 500 mg/day and leucovorin 50 mg/day during the first and last 5 days, then sorafenib 400 mg twice daily from 4 weeks after radiotherapy.';
const IA_ROUTE = { system: SCT, code: '58100008', display: 'Intra-arterial route' };
const ORAL_ROUTE = { system: SCT, code: '26643006', display: 'Oral route' };
const PER_DAY = { value: 1, unit: 'd', system: UCUM, code: 'd' };

export interface Built {
  readonly rule: string;
  readonly type: string;
  readonly system: string;
  readonly key: string;
  readonly fullUrl: string;
  readonly resource: Record<string, unknown>;
  readonly records: readonly SourceRecord[];
}

/** Identity (business identifier, tag, fullUrl) of a resource, computed before its body so references resolve. */
function identity(rule: string, key: string, trialWide = false) {
  const system = systemOf(rule, trialWide);
  return { system, key, fullUrl: fullUrlFor(system, key) };
}

/** resourceType, meta (profile of the trial, tag with the business key), business identifier. */
function head(type: string, profile: string, id: { system: string; key: string }, single = false, extraIdentifiers: unknown[] = []): Record<string, unknown> {
  const business = { use: 'official', system: id.system, value: id.key };
  return {
    resourceType: type,
    meta: { profile: [`${PROFILE_BASE}/${profile}`], tag: [{ system: id.system, code: id.key }] },
    identifier: single ? business : [business, ...extraIdentifiers],
  };
}

interface SubjectRefs {
  readonly study: string;
  readonly patient: string;
  readonly condition: string;
  readonly researchSubject: string;
}

function researchStudy(id: ReturnType<typeof identity>): Record<string, unknown> {
  return {
    ...head('ResearchStudy', 'trial-research-study', id, false, [{ system: 'urn:trialbridge:protocol', value: TRIAL_ID }]),
    title: 'Liver-directed concurrent chemoradiotherapy followed by sorafenib for advanced hepatocellular carcinoma (phase 2)',
    status: 'completed',
    phase: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/research-study-phase', code: 'phase-2', display: 'Phase 2' }] },
    condition: [{ coding: [{ ...HCC }] }],
    arm: [{ name: ARM, description: ARM_DESCRIPTION }],
  };
}

function patient(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>): Record<string, unknown> {
  const r = head('Patient', 'trial-patient', id);
  r.active = true;
  if (f.SEX !== undefined) {
    const gender = SEX[f.SEX.trim().toUpperCase()];
    if (gender === undefined) throw new BadValue(`'${f.SEX}' is not in value map 'sex'`);
    r.gender = gender;
  }
  const birthDate = isoDate(f.BRTHDTC, true);
  if (birthDate !== undefined) r.birthDate = birthDate;
  const death = isoDate(f.DTHDTC);
  if (death !== undefined) r.deceasedDateTime = death;
  return r;
}

function condition(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, refs: SubjectRefs): Record<string, unknown> {
  const onset = isoDate(f.DIAGDTC);
  const pvi = optionalLookup(PVI, 'portal-vein-invasion', f.PVI);
  const r = head('Condition', 'trial-condition', id);
  r.clinicalStatus = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] };
  r.verificationStatus = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-ver-status', code: 'confirmed' }] };
  r.category = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-category', code: 'problem-list-item' }] }];
  r.code = { coding: [{ ...HCC }], text: 'Hepatocellular carcinoma' };
  r.bodySite = [{ coding: [{ ...LIVER }] }];
  r.subject = { reference: refs.patient };
  if (onset !== undefined) r.onsetDateTime = onset;
  if (pvi) r.stage = [{ summary: { coding: [pvi] }, type: { text: 'Portal vein invasion (Vp, Liver Cancer Study Group of Japan)' } }];
  return r;
}

function researchSubject(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, ds: readonly SourceRecord[], refs: SubjectRefs): Record<string, unknown> {
  const start = required(isoDate(f.RFSTDTC), 'RFSTDTC');
  const death = isoDate(f.DTHDTC);
  let last = death;
  if (last === undefined) {
    let contact: string | undefined;
    for (const d of ds) {
      if (d.fields.DSDECOD === 'LAST CONTACT' && d.fields.DSSTDTC !== undefined) {
        contact = d.fields.DSSTDTC;
        break;
      }
    }
    last = isoDate(contact) ?? isoDate(f.RFENDTC);
  }
  const r = head('ResearchSubject', 'trial-research-subject', id);
  r.status = death !== undefined ? 'off-study' : 'follow-up';
  r.period = last !== undefined ? { start, end: last } : { start };
  r.study = { reference: refs.study };
  r.individual = { reference: refs.patient };
  r.assignedArm = ARM;
  r.actualArm = ARM;
  return r;
}

function port(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, refs: SubjectRefs): Record<string, unknown> {
  const date = required(isoDate(f.PRSTDTC), 'PRSTDTC');
  const r = head('Procedure', 'trial-procedure', id);
  r.status = 'completed';
  r.code = {
    coding: [{ system: `${TRIAL_CS}/procedure`, code: 'hai-port-implantation', display: 'Implantation of a hepatic arterial infusion port' }],
    text: 'Hepatic arterial infusion port implantation',
  };
  r.subject = { reference: refs.patient };
  r.performedDateTime = date;
  r.reasonReference = [{ reference: refs.condition }];
  return r;
}

function radiotherapy(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, refs: SubjectRefs): Record<string, unknown> {
  const start = required(isoDate(f.PRSTDTC), 'PRSTDTC');
  const end = isoDate(f.PRENDTC);
  const dose = required(decimal(f.PRDOSE), 'PRDOSE');
  const unit = required(f.PRDOSU, 'PRDOSU');
  let fractions: number | undefined;
  if (f.PRFXNUM !== undefined) {
    fractions = Number(f.PRFXNUM.trim());
    if (!Number.isInteger(fractions) || fractions < 0) throw new BadValue(`'${f.PRFXNUM}' is not a whole number ≥ 0`);
  }
  const total = { url: 'totalDoseDelivered', valueQuantity: { value: cGy(dose, unit), unit: 'cGy', system: UCUM, code: 'cGy' } };
  const r = head('Procedure', 'trial-radiotherapy-course', id);
  r.extension =
    fractions === undefined
      ? [{ url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/radiotherapy-dose-delivered', extension: [total] }]
      : [
          {
            url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/radiotherapy-dose-delivered',
            extension: [total, { url: 'fractionsDelivered', valueUnsignedInt: fractions }],
          },
          { url: 'http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-radiotherapy-sessions', valueUnsignedInt: fractions },
        ];
  r.status = 'completed';
  r.category = { coding: [{ system: SCT, code: '108290001', display: 'Radiation oncology AND/OR radiotherapy' }] };
  r.code = { coding: [{ ...RT_CODING }], text: 'Liver-directed radiotherapy course' };
  r.subject = { reference: refs.patient };
  r.performedPeriod = end !== undefined ? { start, end } : { start };
  r.bodySite = [{ coding: [{ ...LIVER }] }];
  r.reasonReference = [{ reference: refs.condition }];
  return r;
}
const RT_CODING = { system: SCT, code: '33195004', display: 'Teleradiotherapy procedure' };

function medication(
  id: ReturnType<typeof identity>,
  drug: Coding | undefined,
  start: string | undefined,
  end: string | undefined,
  dose: number | undefined,
  dailyDose: number | undefined,
  route: Coding,
  dosageText: string | undefined,
  refs: SubjectRefs,
): Record<string, unknown> {
  const r = head('MedicationAdministration', 'trial-medication-administration', id);
  r.status = 'completed';
  r.medicationCodeableConcept = { coding: [required(drug, 'EXTRT')] };
  r.subject = { reference: refs.patient };
  const s = required(start, 'EXSTDTC');
  r.effectivePeriod = end !== undefined ? { start: s, end } : { start: s };
  r.reasonReference = [{ reference: refs.condition }];
  const dosage: Record<string, unknown> = {};
  if (dosageText !== undefined) dosage.text = dosageText;
  dosage.route = { coding: [route] };
  dosage.dose = mg(required(dose, 'EXDOSE'));
  dosage.rateRatio = dailyDose !== undefined ? { numerator: mg(dailyDose), denominator: PER_DAY } : { denominator: PER_DAY };
  r.dosage = dosage;
  return r;
}

function surgery(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, refs: SubjectRefs): Record<string, unknown> {
  const procedure = optionalLookup(SURGERY, 'surgery', f.PRTRT);
  const date = isoDate(f.PRSTDTC);
  const r = head('Procedure', 'trial-procedure', id);
  r.status = 'completed';
  r.code = { coding: [required(procedure, 'PRTRT')] };
  r.subject = { reference: refs.patient };
  r.performedDateTime = required(date, 'PRSTDTC');
  r.reasonReference = [{ reference: refs.condition }];
  return r;
}

function adverseEvent(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, meddra: MeddraMap, refs: SubjectRefs): Record<string, unknown> {
  let event: Coding | undefined;
  if (f.AEPTCD !== undefined) {
    const code = f.AEPTCD.trim();
    const hit = meddra.codes[code];
    event = hit ? { system: meddra.target, ...hit } : { system: meddra.target, code };
    // A code the ConceptMap passes through keeps the site's own term (AEDECOD) as display.
    if (!event.display && f.AEDECOD !== undefined) event.display = f.AEDECOD;
  }
  const grade = optionalLookup(GRADE, 'ctcae-grade', f.AETOXGR, false);
  const seriousness = optionalLookup(SERIOUSNESS, 'seriousness', f.AESER);
  const suspect = optionalLookup(TREATMENT, 'treatment', f.AERELTRT);
  const relatedness = optionalLookup(RELATEDNESS, 'relatedness', f.AEREL);
  const start = isoDate(f.AESTDTC);
  const end = isoDate(f.AEENDTC);
  const outcome = optionalLookup(OUTCOME, 'ae-outcome', f.AEOUT);

  const r = head('AdverseEvent', 'trial-adverse-event', id, true);
  r.modifierExtension = [{ url: `${AE_IG}/status`, valueCode: end !== undefined ? 'completed' : 'in-progress' }];
  const extension: unknown[] = [{ url: `${AE_IG}/ae-grade`, valueCodeableConcept: { coding: [required(grade, 'AETOXGR')] } }];
  if (end !== undefined) extension.push({ url: `${AE_IG}/resolve-date`, valueDateTime: end });
  if (suspect) {
    const parts: unknown[] = [{ url: 'instance', valueCodeableConcept: { coding: [suspect] } }];
    if (relatedness) parts.push({ url: 'causality', extension: [{ url: 'entityRelatedness', valueCodeableConcept: { coding: [relatedness] } }] });
    extension.push({ url: `${AE_IG}/suspect-entity`, extension: parts });
  }
  extension.push({ url: `${AE_IG}/research-subject-ref`, valueReference: { reference: refs.researchSubject } });
  r.extension = extension;
  r.actuality = 'actual';
  r.event = f.AETERM !== undefined ? { coding: [required(event, 'AEPTCD')], text: f.AETERM } : { coding: [required(event, 'AEPTCD')] };
  r.subject = { reference: refs.patient };
  r.date = required(start, 'AESTDTC');
  const seriousnessCoding = required(seriousness, 'AESER');
  r.seriousness = { coding: [seriousnessCoding, SERIOUSNESS_R4.get(seriousnessCoding.code!)!] };
  const outcomeCoding = required(outcome, 'AEOUT');
  r.outcome = { coding: [outcomeCoding, OUTCOME_RESEARCH.get(outcomeCoding.code!)!] };
  r.study = [{ reference: refs.study }];
  return r;
}

function tumourResponse(id: ReturnType<typeof identity>, f: Readonly<Record<string, string>>, refs: SubjectRefs): Record<string, unknown> {
  const response = optionalLookup(MRECIST, 'mrecist', f.RSSTRESC);
  const timepoint = lookup(TIMEPOINT, 'timepoint', f.VISIT !== undefined && f.VISIT.toUpperCase() === 'POST-CCRT WEEK 4' ? 'POST4W' : 'FOLLOW-UP');
  const date = isoDate(f.RSDTC);
  const r = head('Observation', 'trial-tumour-response', id);
  r.extension = [
    { url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/assessment-timepoint', valueCodeableConcept: { coding: [timepoint] } },
  ];
  r.status = 'final';
  r.category = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/observation-category', code: 'imaging', display: 'Imaging' }] }];
  r.code = {
    coding: [{ system: `${TRIAL_CS}/observation`, code: 'mrecist-overall-response', display: 'Overall tumour response (mRECIST)' }],
    text: 'Overall tumour response (mRECIST)',
  };
  r.subject = { reference: refs.patient };
  r.focus = [{ reference: refs.condition }];
  r.effectiveDateTime = required(date, 'RSDTC');
  r.valueCodeableConcept = { coding: [required(response, 'RSSTRESC')] };
  return r;
}

// ---- subjects and bundles --------------------------------------------------------------------------------

const upper = (v: string | undefined) => (v === undefined ? undefined : v.toUpperCase());

/** Builds the resources of one subject, in the engine's order: rule by rule, records in export order. */
export interface SubjectResult {
  readonly built: Built[];
  /** Records rejected (they stay out of the Provenance; every other record of the subject is accounted for). */
  readonly rejected: ReadonlySet<SourceRecord>;
}

function mapSubject(subject: string, records: readonly SourceRecord[], meddra: MeddraMap): SubjectResult | undefined {
  const dm: SourceRecord[] = [], ex: SourceRecord[] = [], pr: SourceRecord[] = [], ae: SourceRecord[] = [], rs: SourceRecord[] = [], ds: SourceRecord[] = [];
  for (const r of records) {
    switch (r.type) {
      case 'DM': dm.push(r); break;
      case 'EX': ex.push(r); break;
      case 'PR': pr.push(r); break;
      case 'AE': ae.push(r); break;
      case 'RS': rs.push(r); break;
      case 'DS': ds.push(r); break;
    }
  }
  if (dm.length === 0) return undefined;
  const rejected = new Set<SourceRecord>();
  const out: Built[] = [];
  const keys = new Map<string, Set<string>>();
  const add = (rule: string, type: string, id: ReturnType<typeof identity>, members: readonly SourceRecord[], build: () => Record<string, unknown>) => {
    let seen = keys.get(rule);
    if (!seen) keys.set(rule, (seen = new Set()));
    if (seen.has(id.key)) {
      for (const m of members) rejected.add(m);
      return;
    }
    seen.add(id.key);
    try {
      out.push({ rule, type, system: id.system, key: id.key, fullUrl: id.fullUrl, resource: build(), records: members });
    } catch (err) {
      if (!(err instanceof BadValue)) throw err;
      for (const m of members) rejected.add(m);
    }
  };

  const d = dm[0];
  const studyId = identity('research-study', TRIAL_ID, true);
  const patientId = identity('patient', subject);
  const conditionId = identity('condition', subject);
  const subjectId = identity('research-subject', subject);
  const refs: SubjectRefs = { study: studyId.fullUrl, patient: patientId.fullUrl, condition: conditionId.fullUrl, researchSubject: subjectId.fullUrl };
  for (const extra of dm.slice(1)) rejected.add(extra); // a second DM row would make a second Patient of the same key
  add('research-study', 'ResearchStudy', studyId, [d], () => researchStudy(studyId));
  add('patient', 'Patient', patientId, [d], () => patient(patientId, d.fields));
  add('condition', 'Condition', conditionId, [d], () => condition(conditionId, d.fields, refs));
  add('research-subject', 'ResearchSubject', subjectId, [d], () => researchSubject(subjectId, d.fields, ds, refs));
  // Everything else refers to the DM resources: a bad DM row takes the subject down.
  if (rejected.has(d)) return undefined;

  for (const p of pr) {
    if (upper(p.fields.PRTRT) === 'HEPATIC ARTERIAL PORT IMPLANTATION') {
      const id = identity('port', p.key);
      add('port', 'Procedure', id, [p], () => port(id, p.fields, refs));
    }
  }
  for (const p of pr) {
    if (upper(p.fields.PRCAT) === 'RADIOTHERAPY') {
      const id = identity('radiotherapy', p.key);
      add('radiotherapy', 'Procedure', id, [p], () => radiotherapy(id, p.fields, refs));
    }
  }
  // HAIC: one row per infusion day, one MedicationAdministration per subject, cycle (EXGRPID) and drug.
  const cycles = new Map<string, SourceRecord[]>();
  for (const e of ex) {
    const f = e.fields;
    if (upper(f.EXROUTE) !== 'INTRA-ARTERIAL') continue;
    if (f.USUBJID === undefined || f.EXGRPID === undefined) {
      rejected.add(e); // no cycle to group the infusion day into
      continue;
    }
    const key = `${f.USUBJID}/${f.EXGRPID}/${f.EXTRT !== undefined && f.EXTRT.toUpperCase().includes('LEUCOVORIN') ? 'LV' : '5FU'}`;
    const members = cycles.get(key);
    if (members) members.push(e);
    else cycles.set(key, [e]);
  }
  for (const [key, members] of cycles) {
    const id = identity('haic', key);
    add('haic', 'MedicationAdministration', id, members, () => {
      const f = members[0].fields;
      const drug = optionalLookup(TREATMENT, 'treatment', f.EXTRT);
      let start: string | undefined;
      let end: string | undefined;
      for (const m of members) {
        const s = isoDate(m.fields.EXSTDTC);
        if (s !== undefined && (start === undefined || s < start)) start = s;
        const e = isoDate(m.fields.EXENDTC);
        if (e !== undefined && (end === undefined || e > end)) end = e;
      }
      const dose = decimal(f.EXDOSE);
      const text = f.EXDOSE !== undefined && f.EXDOSU !== undefined && f.EXGRPID !== undefined
        ? `${f.EXDOSE} ${f.EXDOSU}/day by hepatic arterial infusion (cycle ${f.EXGRPID})` : undefined;
      return medication(id, drug, start, end, dose, dose, IA_ROUTE, text, refs);
    });
  }
  for (const e of ex) {
    const f = e.fields;
    if (upper(f.EXROUTE) !== 'ORAL') continue;
    const id = identity('sorafenib', e.key);
    add('sorafenib', 'MedicationAdministration', id, [e], () => {
      const drug = optionalLookup(TREATMENT, 'treatment', f.EXTRT);
      const start = isoDate(f.EXSTDTC);
      const end = isoDate(f.EXENDTC);
      const dose = decimal(f.EXDOSE);
      const perDose = toDecimal(f.EXDOSE);
      const daily = perDose === undefined ? undefined : upper(f.EXDOSFRQ) === 'BID' ? perDose * 2 : perDose;
      const text = f.EXDOSE !== undefined && f.EXDOSU !== undefined ? `${f.EXDOSE} ${f.EXDOSU} twice daily by mouth` : undefined;
      return medication(id, drug, start, end, dose, daily, ORAL_ROUTE, text, refs);
    });
  }
  for (const p of pr) {
    if (upper(p.fields.PRCAT) === 'SURGERY') {
      const id = identity('surgery', p.key);
      add('surgery', 'Procedure', id, [p], () => surgery(id, p.fields, refs));
    }
  }
  for (const a of ae) {
    const id = identity('adverse-event', a.key);
    add('adverse-event', 'AdverseEvent', id, [a], () => adverseEvent(id, a.fields, meddra, refs));
  }
  for (const r of rs) {
    if (r.fields.RSTESTCD !== 'OVRLRESP') continue;
    const id = identity('tumour-response', r.key);
    add('tumour-response', 'Observation', id, [r], () => tumourResponse(id, r.fields, refs));
  }
  // A record rejected by one resource takes down every resource it feeds.
  return { built: rejected.size === 0 ? out : out.filter((b) => !b.records.some((r) => rejected.has(r))), rejected };
}

/** The subject's transaction bundle: one conditional update per resource, then the subject's Provenance. */
export function bundleOf(subject: string, built: readonly Built[], subjectRecords: readonly SourceRecord[], rejected: ReadonlySet<SourceRecord>, recorded: string): Bundle {
  const entry: BundleEntry[] = built.map((b) => ({
    fullUrl: b.fullUrl,
    resource: b.resource as unknown as Resource,
    request: { method: 'PUT', url: conditionalUrl(b.type, b.system, b.key) },
  }));
  const system = `${NS}:${SITE}:provenance`;
  const used = subjectRecords.filter((r) => !rejected.has(r));
  const digests = new Map(used.filter((r) => r.digest).map((r) => [r.file, r.digest!]));
  const files = [...digests]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([file, digest]) => ({ url: SOURCE_FILE_EXTENSION, extension: [{ url: 'name', valueString: file }, { url: 'sha256', valueString: digest }] }));
  const provenance = {
    resourceType: 'Provenance',
    meta: { tag: [{ system, code: subject }] },
    ...(files.length > 0 ? { extension: files } : {}),
    target: built.map((b) => ({ reference: b.fullUrl })),
    recorded,
    policy: [MAPPING_URI],
    activity: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'UPDATE', display: 'revise' }] },
    agent: [
      {
        type: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'assembler', display: 'Assembler' }] },
        who: {
          identifier: { system: 'https://trialbridge.dev/fhir/software', value: `trialbridge/${TRIALBRIDGE_VERSION}` },
          display: `trialbridge ${TRIALBRIDGE_VERSION}, mapping ${SITE} version ${VERSION}`,
        },
      },
    ],
    entity: used.map((r) => ({
        role: 'source',
        what: { identifier: { system: `${NS}:${SITE}:source`, value: `${r.file}#${r.row}` }, display: `${r.file} row ${r.row} (${r.type} ${r.key})` },
      })),
  };
  entry.push({ fullUrl: fullUrlFor(system, subject), resource: provenance as Resource, request: { method: 'PUT', url: conditionalUrl('Provenance', system, subject) } });
  return { resourceType: 'Bundle', type: 'transaction', entry };
}

/** Groups records by subject in export order (records without a subject are left out, as the engine rejects them). */
export function bySubject(records: readonly SourceRecord[]): Map<string, SourceRecord[]> {
  const out = new Map<string, SourceRecord[]>();
  for (const r of records) {
    if (!r.subject) continue;
    const list = out.get(r.subject);
    if (list) list.push(r);
    else out.set(r.subject, [r]);
  }
  return out;
}

/** Maps a site-c export (records as readSourceRecords yields them) to one transaction bundle per subject. */
export function mapSiteC(records: readonly SourceRecord[], recorded: string, meddra: MeddraMap): Bundle[] {
  const bundles: Bundle[] = [];
  for (const [subject, list] of bySubject(records)) {
    const result = mapSubject(subject, list, meddra);
    if (result && result.built.length > 0) bundles.push(bundleOf(subject, result.built, list, result.rejected, recorded));
  }
  return bundles;
}
