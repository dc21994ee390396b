/**
 * Builds test/validation-corpus/corpus.json: resources of the sample sites' output, each with ONE planted
 * defect and the FHIRPath location where a validator must report it. Deterministic: run it again after the
 * mappings or sample data change (`npm exec -- node scripts/build-validation-corpus.ts`).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Bundle, Resource } from '@medplum/fhirtypes';
import { IndependentBindingChecker } from '../test/support/independent-validation.ts';
import { mapExport } from '../src/bundle/map-export.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';

// Corpus resources are JSON being broken on purpose: typed loosely on purpose.
type Json = Record<string, any>;

/** The classes of rule a defect breaks: the corpus figures are counted per class, and each has entries. */
export const RULE_CLASSES = [
  'binding',
  'cardinality',
  'slice',
  'fixed-pattern',
  'invariant',
  'profile-type',
  'primitive-format',
  'unknown-element',
  'primitive-for-complex',
  'complex-for-primitive',
  'object-for-array',
  'array-for-object',
  'choice-two-values',
  'resource-type',
  'empty-value',
  'whitespace-string',
  'id-shape',
  'reference-shape',
  'extension-url',
  'ext-1',
  'ele-1',
  'number-range',
  'primitive-extension',
] as const;
export type RuleClass = (typeof RULE_CLASSES)[number];

export interface CorpusCase {
  id: string;
  rule: RuleClass;
  defect: string;
  /** Where the defect must be reported (an OperationOutcome issue expression). */
  expression: string;
  resource: Resource;
}

interface Recipe {
  name: string;
  rule: RuleClass;
  defect: string;
  type: string;
  /** How many resources get this defect (default 3). */
  count?: number;
  /** Which resources of that type it applies to (default: all). */
  when?: (r: Json) => boolean;
  /** Plants the defect and returns the expected location. */
  plant: (r: Json) => string;
}

const GRADE = 'http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade';
const TIMEPOINT = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/assessment-timepoint';
const DOSE = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/radiotherapy-dose-delivered';
const PSEUDONYMISED = 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/trial-patient-pseudonymised';
const extIndex = (r: Json, url: string) => ((r.extension ?? []) as Json[]).findIndex((e) => e.url === url);
const isRadiotherapy = (r: Json) => extIndex(r, DOSE) >= 0;
/**
 * JSON can write a number no double holds (1e400): JSON.parse makes it Infinity, which JSON.stringify would write
 * as null. The corpus file holds the literal; in memory a marker stands for it until serializeCorpus.
 */
const HUGE_DECIMAL = '__tb_decimal_1e400__';

const RECIPES: Recipe[] = [
  // AdverseEvent
  { name: 'ae-grade-7', rule: 'binding', defect: 'CTCAE grade outside 1-5 (code not in the grade value set)', type: 'AdverseEvent', plant: (r) => { const i = extIndex(r, GRADE); r.extension[i].valueCodeableConcept.coding[0].code = 'C99999'; return `AdverseEvent.extension[${i}].value[x]`; } },
  { name: 'ae-missing-grade', rule: 'slice', defect: 'CTCAE grade extension missing', type: 'AdverseEvent', plant: (r) => { r.extension.splice(extIndex(r, GRADE), 1); return 'AdverseEvent.extension'; } },
  { name: 'ae-outcome-code', rule: 'binding', defect: 'outcome code outside the required value set', type: 'AdverseEvent', plant: (r) => { r.outcome.coding[0].code = 'RECOVERED'; return 'AdverseEvent.outcome'; } },
  { name: 'ae-seriousness-code', rule: 'binding', defect: 'seriousness code outside the required value set, in both spellings', type: 'AdverseEvent', plant: (r) => { for (const c of r.seriousness.coding) c.code = 'severe'; return 'AdverseEvent.seriousness'; } },
  { name: 'ae-actuality', rule: 'fixed-pattern', defect: 'actuality not the fixed value actual', type: 'AdverseEvent', plant: (r) => { r.actuality = 'potential'; return 'AdverseEvent.actuality'; } },
  { name: 'ae-no-event', rule: 'cardinality', defect: 'event missing (cardinality 1..1)', type: 'AdverseEvent', plant: (r) => { delete r.event; return 'AdverseEvent.event'; } },
  { name: 'ae-no-date', rule: 'cardinality', defect: 'date missing (cardinality 1..1)', type: 'AdverseEvent', plant: (r) => { delete r.date; return 'AdverseEvent.date'; } },
  { name: 'ae-not-meddra', rule: 'invariant', defect: 'event not MedDRA-coded (profile invariant)', type: 'AdverseEvent', plant: (r) => { r.event.coding[0].system = 'http://snomed.info/sct'; return 'AdverseEvent'; } },
  { name: 'ae-suspect-entity', rule: 'cardinality', defect: 'suspectEntity element prohibited by the backport profile', type: 'AdverseEvent', plant: (r) => { r.suspectEntity = [{ instance: { display: 'Sorafenib' } }]; return 'AdverseEvent.suspectEntity'; } },
  { name: 'ae-impossible-date', rule: 'primitive-format', defect: 'impossible date', type: 'AdverseEvent', plant: (r) => { r.date = '2016-02-30'; return 'AdverseEvent.date'; } },
  { name: 'ae-status-code', rule: 'binding', defect: 'workflow status code outside its value set', type: 'AdverseEvent', plant: (r) => { r.modifierExtension[0].valueCode = 'done'; return 'AdverseEvent.modifierExtension[0].value[x]'; } },
  { name: 'ae-unknown-element', rule: 'unknown-element', defect: 'unknown element', type: 'AdverseEvent', plant: (r) => { r.severityGrade = 'G3'; return 'AdverseEvent.severityGrade'; } },
  { name: 'ae-ext-1', rule: 'ext-1', defect: 'extension with both a value and nested extensions (invariant ext-1)', type: 'AdverseEvent', plant: (r) => { const i = extIndex(r, GRADE); r.extension[i].extension = [{ url: 'note', valueString: 'x' }]; return `AdverseEvent.extension[${i}]`; } },
  { name: 'ae-study-missing', rule: 'cardinality', defect: 'study missing (1..*)', type: 'AdverseEvent', plant: (r) => { delete r.study; return 'AdverseEvent.study'; } },
  // Radiotherapy course
  { name: 'rt-dose-in-gy', rule: 'fixed-pattern', defect: 'total dose in Gy where the profile fixes cGy', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[0].valueQuantity = { value: 60, unit: 'Gy', system: 'http://unitsofmeasure.org', code: 'Gy' }; return `Procedure.extension[${i}].extension[0].value[x].code`; } },
  { name: 'rt-no-dose', rule: 'slice', defect: 'dose-delivered extension missing', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.extension.splice(extIndex(r, DOSE), 1); return 'Procedure.extension'; } },
  { name: 'rt-period-reversed', rule: 'invariant', defect: 'period ends before it starts (invariant per-1)', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.performedPeriod = { start: '2016-05-02', end: '2016-03-01' }; return 'Procedure.performed[x]'; } },
  { name: 'rt-category', rule: 'fixed-pattern', defect: 'category does not match the radiotherapy pattern', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.category.coding[0].code = '387713003'; return 'Procedure.category'; } },
  { name: 'rt-fractions-negative', rule: 'number-range', defect: 'fractions not an unsignedInt', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = -25; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'rt-fractions-string', rule: 'primitive-format', defect: 'fractions of the wrong JSON type', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = '25'; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'procedure-status-code', rule: 'binding', defect: 'status code outside the R4 required value set', type: 'Procedure', plant: (r) => { r.status = 'finished'; return 'Procedure.status'; } },
  { name: 'procedure-no-reason', rule: 'cardinality', defect: 'reasonReference missing (1..*)', type: 'Procedure', plant: (r) => { delete r.reasonReference; return 'Procedure.reasonReference'; } },
  // MedicationAdministration
  { name: 'ma-route-code', rule: 'binding', defect: 'route outside the trial routes value set', type: 'MedicationAdministration', plant: (r) => { r.dosage.route.coding[0].code = '47625008'; return 'MedicationAdministration.dosage.route'; } },
  { name: 'ma-no-dose', rule: 'cardinality', defect: 'dose missing (1..1)', type: 'MedicationAdministration', plant: (r) => { delete r.dosage.dose; return 'MedicationAdministration.dosage.dose'; } },
  { name: 'ma-dose-no-system', rule: 'invariant', defect: 'dose with a unit code but no system (invariant qty-3)', type: 'MedicationAdministration', plant: (r) => { delete r.dosage.dose.system; return 'MedicationAdministration.dosage.dose'; } },
  { name: 'ma-not-rxnorm', rule: 'invariant', defect: 'drug not RxNorm-coded (profile invariant)', type: 'MedicationAdministration', plant: (r) => { r.medicationCodeableConcept.coding[0].system = 'http://snomed.info/sct'; return 'MedicationAdministration'; } },
  { name: 'ma-status-code', rule: 'binding', defect: 'status code outside the R4 required value set', type: 'MedicationAdministration', plant: (r) => { r.status = 'done'; return 'MedicationAdministration.status'; } },
  { name: 'ma-effective-datetime', rule: 'profile-type', defect: 'effective as dateTime where the profile requires a Period', type: 'MedicationAdministration', plant: (r) => { r.effectiveDateTime = r.effectivePeriod.start; delete r.effectivePeriod; return 'MedicationAdministration.effective[x]'; } },
  { name: 'ma-dose-string', rule: 'primitive-format', defect: 'dose value of the wrong JSON type', type: 'MedicationAdministration', plant: (r) => { r.dosage.dose.value = '500'; return 'MedicationAdministration.dosage.dose.value'; } },
  // Observation (tumour response)
  { name: 'obs-response-code', rule: 'binding', defect: 'response outside the mRECIST value set', type: 'Observation', plant: (r) => { r.valueCodeableConcept.coding[0].code = 'MR'; return 'Observation.value[x]'; } },
  { name: 'obs-no-timepoint', rule: 'slice', defect: 'assessment timepoint extension missing', type: 'Observation', plant: (r) => { r.extension.splice(extIndex(r, TIMEPOINT), 1); return 'Observation.extension'; } },
  { name: 'obs-code', rule: 'fixed-pattern', defect: 'code does not match the mRECIST overall response pattern', type: 'Observation', plant: (r) => { r.code.coding[0].code = 'recist-overall-response'; return 'Observation.code'; } },
  { name: 'obs-value-string', rule: 'profile-type', defect: 'value as string where the profile requires a CodeableConcept', type: 'Observation', plant: (r) => { r.valueString = 'PR'; delete r.valueCodeableConcept; return 'Observation.value[x]'; } },
  { name: 'obs-status-code', rule: 'binding', defect: 'status code outside the R4 required value set', type: 'Observation', plant: (r) => { r.status = 'done'; return 'Observation.status'; } },
  { name: 'obs-data-absent-and-value', rule: 'invariant', defect: 'value and dataAbsentReason together (invariant obs-6)', type: 'Observation', plant: (r) => { r.dataAbsentReason = { text: 'not done' }; return 'Observation'; } },
  // ResearchSubject
  { name: 'rs-status-code', rule: 'binding', defect: 'status outside the R4 research-subject-status codes', type: 'ResearchSubject', plant: (r) => { r.status = 'enrolled'; return 'ResearchSubject.status'; } },
  { name: 'rs-no-arm', rule: 'cardinality', defect: 'assignedArm missing (1..1)', type: 'ResearchSubject', plant: (r) => { delete r.assignedArm; return 'ResearchSubject.assignedArm'; } },
  { name: 'rs-no-period-start', rule: 'cardinality', defect: 'period.start missing (1..1)', type: 'ResearchSubject', plant: (r) => { delete r.period.start; return 'ResearchSubject.period.start'; } },
  { name: 'rs-broken-reference', rule: 'invariant', defect: 'reference to a contained resource that is not there (invariant ref-1)', type: 'ResearchSubject', plant: (r) => { r.individual = { reference: '#patient-1' }; return 'ResearchSubject.individual'; } },
  { name: 'rs-period-month-13', rule: 'primitive-format', defect: 'impossible month in a date', type: 'ResearchSubject', plant: (r) => { r.period.start = '2014-13-01'; return 'ResearchSubject.period.start'; } },
  // Patient
  { name: 'patient-gender-code', rule: 'binding', defect: 'gender outside the R4 administrative-gender codes', type: 'Patient', plant: (r) => { r.gender = 'M'; return 'Patient.gender'; } },
  { name: 'patient-no-identifier', rule: 'cardinality', defect: 'identifier missing (1..*)', type: 'Patient', plant: (r) => { delete r.identifier; return 'Patient.identifier'; } },
  { name: 'patient-name-pseudonymised', rule: 'cardinality', defect: 'name on sponsor-bound (pseudonymised) data', type: 'Patient', plant: (r) => { r.meta.profile = [PSEUDONYMISED]; r.birthDate = r.birthDate.slice(0, 4); r.name = [{ family: 'Synthetic' }]; return 'Patient.name'; } },
  { name: 'patient-birthdate-pseudonymised', rule: 'invariant', defect: 'full birth date on sponsor-bound (pseudonymised) data', type: 'Patient', when: (r) => String(r.birthDate ?? '').length === 10, plant: (r) => { r.meta.profile = [PSEUDONYMISED]; return 'Patient'; } },
  { name: 'patient-birthdate-impossible', rule: 'primitive-format', defect: 'impossible birth date', type: 'Patient', plant: (r) => { r.birthDate = '1950-02-30'; return 'Patient.birthDate'; } },
  { name: 'patient-deceased-timezone', rule: 'primitive-format', defect: 'date-time with hours but no timezone', type: 'Patient', plant: (r) => { r.deceasedDateTime = '2016-03-01T10:00:00'; delete r.deceasedBoolean; return 'Patient.deceased[x]'; } },
  // Condition, ResearchStudy
  { name: 'condition-no-code', rule: 'cardinality', defect: 'code missing (1..1)', type: 'Condition', plant: (r) => { delete r.code; return 'Condition.code'; } },
  { name: 'condition-stage-empty', rule: 'invariant', defect: 'stage without summary or assessment (invariant con-1)', type: 'Condition', when: (r) => Boolean(r.stage), plant: (r) => { r.stage = [{ type: { text: 'Vp' } }]; return 'Condition.stage[0]'; } },
  { name: 'study-no-title', rule: 'cardinality', defect: 'title missing (1..1)', type: 'ResearchStudy', plant: (r) => { delete r.title; return 'ResearchStudy.title'; } },
  { name: 'ae-no-research-outcome', rule: 'slice', defect: 'outcome without the clinical-research coding (slice 1..1)', type: 'AdverseEvent', plant: (r) => { r.outcome.coding.pop(); return 'AdverseEvent.outcome.coding'; } },
  { name: 'ae-only-research-outcome', rule: 'binding', defect: 'outcome with the research coding only: base R4 requires adverse-event-outcome', type: 'AdverseEvent', plant: (r) => { r.outcome.coding.shift(); return 'AdverseEvent.outcome'; } },
  // The structure rules every FHIR JSON resource meets, whatever its profile.
  { name: 'ae-event-string', rule: 'primitive-for-complex', defect: 'a string where a CodeableConcept belongs ("event": "Diarrhoea")', type: 'AdverseEvent', plant: (r) => { r.event = 'Diarrhoea'; return 'AdverseEvent.event'; } },
  { name: 'rs-study-string', rule: 'primitive-for-complex', defect: 'a string where a Reference belongs', type: 'ResearchSubject', count: 2, plant: (r) => { r.study = r.study.reference; return 'ResearchSubject.study'; } },
  { name: 'ma-dose-number', rule: 'primitive-for-complex', defect: 'a number where a Quantity belongs', type: 'MedicationAdministration', count: 2, plant: (r) => { r.dosage.dose = r.dosage.dose.value; return 'MedicationAdministration.dosage.dose'; } },
  { name: 'ae-date-object', rule: 'complex-for-primitive', defect: 'an object where a dateTime belongs', type: 'AdverseEvent', count: 2, plant: (r) => { r.date = { value: r.date }; return 'AdverseEvent.date'; } },
  { name: 'patient-gender-coding', rule: 'complex-for-primitive', defect: 'a Coding where a code belongs', type: 'Patient', count: 2, plant: (r) => { r.gender = { system: 'http://hl7.org/fhir/administrative-gender', code: r.gender }; return 'Patient.gender'; } },
  { name: 'ae-study-object', rule: 'object-for-array', defect: 'a single object where an array belongs (study 1..*)', type: 'AdverseEvent', count: 2, plant: (r) => { r.study = r.study[0]; return 'AdverseEvent.study'; } },
  { name: 'patient-identifier-object', rule: 'object-for-array', defect: 'a single object where an array belongs (identifier)', type: 'Patient', count: 2, plant: (r) => { r.identifier = r.identifier[0]; return 'Patient.identifier'; } },
  { name: 'ae-subject-array', rule: 'array-for-object', defect: 'an array where a single Reference belongs', type: 'AdverseEvent', count: 2, plant: (r) => { r.subject = [r.subject]; return 'AdverseEvent.subject'; } },
  { name: 'ma-dosage-array', rule: 'array-for-object', defect: 'an array where a single dosage belongs', type: 'MedicationAdministration', count: 2, plant: (r) => { r.dosage = [r.dosage]; return 'MedicationAdministration.dosage'; } },
  { name: 'rt-performed-twice', rule: 'choice-two-values', defect: 'performedPeriod and performedDateTime together', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.performedDateTime = r.performedPeriod.start; return 'Procedure.performed[x]'; } },
  { name: 'procedure-performed-twice', rule: 'choice-two-values', defect: 'performedDateTime and performedPeriod together', type: 'Procedure', when: (r) => !isRadiotherapy(r), count: 2, plant: (r) => { r.performedPeriod = { start: r.performedDateTime }; return 'Procedure.performed[x]'; } },
  { name: 'ma-effective-twice', rule: 'choice-two-values', defect: 'effectivePeriod and effectiveDateTime together', type: 'MedicationAdministration', count: 2, plant: (r) => { r.effectiveDateTime = r.effectivePeriod.start; return 'MedicationAdministration.effective[x]'; } },
  { name: 'ae-contained-no-type', rule: 'resource-type', defect: 'a contained resource without resourceType', type: 'AdverseEvent', count: 2, plant: (r) => { r.contained = [{ id: 'drug-1', code: { text: 'Sorafenib' } }]; return 'AdverseEvent.contained[0]'; } },
  { name: 'ae-contained-unknown-type', rule: 'resource-type', defect: 'a contained resource of no FHIR resourceType', type: 'AdverseEvent', count: 2, plant: (r) => { r.contained = [{ resourceType: 'Medicament', id: 'drug-1' }]; return 'AdverseEvent.contained[0]'; } },
  { name: 'ae-reference-type-mismatch', rule: 'resource-type', defect: 'Reference.type other than the type the reference names', type: 'AdverseEvent', count: 2, plant: (r) => { r.study[0] = { reference: 'ResearchStudy/LDCCRT-HCC-P2', type: 'Patient' }; return 'AdverseEvent.study[0].type'; } },
  { name: 'ae-subject-wrong-target', rule: 'resource-type', defect: 'a reference to a resource type the element does not allow (subject to a ResearchStudy)', type: 'AdverseEvent', count: 2, plant: (r) => { r.subject = { reference: 'ResearchStudy/LDCCRT-HCC-P2' }; return 'AdverseEvent.subject'; } },
  { name: 'ae-empty-string', rule: 'empty-value', defect: 'an empty string', type: 'AdverseEvent', count: 2, plant: (r) => { r.event.text = ''; return 'AdverseEvent.event.text'; } },
  { name: 'ae-empty-object', rule: 'empty-value', defect: 'an empty object (seriousness {})', type: 'AdverseEvent', count: 2, plant: (r) => { r.seriousness = {}; return 'AdverseEvent.seriousness'; } },
  { name: 'ae-empty-array', rule: 'empty-value', defect: 'an empty array (study [])', type: 'AdverseEvent', count: 2, plant: (r) => { r.study = []; return 'AdverseEvent.study'; } },
  { name: 'ae-empty-coding', rule: 'empty-value', defect: 'an empty object in an array (event.coding [..., {}])', type: 'AdverseEvent', count: 2, plant: (r) => { r.event.coding.push({}); return `AdverseEvent.event.coding[${r.event.coding.length - 1}]`; } },
  { name: 'ae-whitespace-text', rule: 'whitespace-string', defect: 'a whitespace-only string', type: 'AdverseEvent', count: 2, plant: (r) => { r.event.text = '  \t '; return 'AdverseEvent.event.text'; } },
  { name: 'patient-whitespace-identifier', rule: 'whitespace-string', defect: 'a whitespace-only identifier value', type: 'Patient', count: 2, plant: (r) => { r.identifier[0].value = '   '; return 'Patient.identifier[0].value'; } },
  { name: 'ae-id-space', rule: 'id-shape', defect: 'a resource id with a space', type: 'AdverseEvent', count: 2, plant: (r) => { r.id = 'AE 001'; return 'AdverseEvent.id'; } },
  { name: 'patient-id-too-long', rule: 'id-shape', defect: 'a resource id over 64 characters', type: 'Patient', count: 2, plant: (r) => { r.id = 'p'.repeat(65); return 'Patient.id'; } },
  { name: 'obs-id-underscore', rule: 'id-shape', defect: 'a resource id with a character ids do not allow', type: 'Observation', count: 2, plant: (r) => { r.id = 'resp_01'; return 'Observation.id'; } },
  { name: 'ae-reference-space', rule: 'reference-shape', defect: 'a reference with a space instead of /', type: 'AdverseEvent', count: 2, plant: (r) => { r.subject.reference = 'Patient 123'; return 'AdverseEvent.subject.reference'; } },
  { name: 'ae-reference-lowercase-type', rule: 'reference-shape', defect: 'a reference whose type is not a resource type (patient/123)', type: 'AdverseEvent', count: 2, plant: (r) => { r.subject.reference = 'patient/123'; return 'AdverseEvent.subject.reference'; } },
  { name: 'ma-reference-bad-uuid', rule: 'reference-shape', defect: 'a urn:uuid reference that is not a UUID', type: 'MedicationAdministration', count: 2, plant: (r) => { r.subject.reference = 'urn:uuid:patient-1'; return 'MedicationAdministration.subject.reference'; } },
  { name: 'ae-extension-no-url', rule: 'extension-url', defect: 'an extension without url', type: 'AdverseEvent', count: 2, plant: (r) => { const i = extIndex(r, GRADE); delete r.extension[i].url; return `AdverseEvent.extension[${i}].url`; } },
  { name: 'rt-sub-extension-no-url', rule: 'extension-url', defect: 'a sub-extension without url', type: 'Procedure', when: isRadiotherapy, count: 2, plant: (r) => { const i = extIndex(r, DOSE); delete r.extension[i].extension[1].url; return `Procedure.extension[${i}].extension[1].url`; } },
  { name: 'ae-extension-empty', rule: 'ext-1', defect: 'an extension with neither value nor extensions (invariant ext-1)', type: 'AdverseEvent', count: 2, plant: (r) => { r.extension.push({ url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/note' }); return `AdverseEvent.extension[${r.extension.length - 1}]`; } },
  { name: 'ae-coding-id-only', rule: 'ele-1', defect: 'a Coding with nothing but an id (invariant ele-1)', type: 'AdverseEvent', count: 2, plant: (r) => { r.event.coding.push({ id: 'c1' }); return `AdverseEvent.event.coding[${r.event.coding.length - 1}]`; } },
  { name: 'ae-primitive-id-only', rule: 'ele-1', defect: 'a primitive with neither value nor extension, only an id (_text: {id}) (invariant ele-1)', type: 'AdverseEvent', count: 2, plant: (r) => { delete r.event.text; r.event._text = { id: 't1' }; return 'AdverseEvent.event.text'; } },
  { name: 'ma-dose-infinite', rule: 'number-range', defect: 'a decimal out of range (1e400, not a finite number)', type: 'MedicationAdministration', count: 2, plant: (r) => { r.dosage.dose.value = HUGE_DECIMAL; return 'MedicationAdministration.dosage.dose.value'; } },
  { name: 'rt-fractions-too-large', rule: 'number-range', defect: 'an unsignedInt above 2147483647', type: 'Procedure', when: isRadiotherapy, count: 2, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = 4294967296; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'rt-fractions-fraction', rule: 'number-range', defect: 'an unsignedInt with a fraction', type: 'Procedure', when: isRadiotherapy, count: 2, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = 25.5; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'ae-extension-of-complex', rule: 'primitive-extension', defect: '_subject: primitive extensions on a complex element', type: 'AdverseEvent', count: 2, plant: (r) => { r._subject = { extension: [{ url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/note', valueString: 'x' }] }; return 'AdverseEvent._subject'; } },
  { name: 'ae-extension-of-unknown', rule: 'primitive-extension', defect: '_severityGrade: primitive extensions of an element AdverseEvent does not have', type: 'AdverseEvent', count: 2, plant: (r) => { r._severityGrade = { extension: [{ url: 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/note', valueString: 'x' }] }; return 'AdverseEvent._severityGrade'; } },
  { name: 'obs-extension-of-complex-choice', rule: 'primitive-extension', defect: '_valueCodeableConcept: primitive extensions on a complex choice', type: 'Observation', count: 2, plant: (r) => { r._valueCodeableConcept = { id: 'v1' }; return 'Observation._valueCodeableConcept'; } },
];

/** The three sample sites' bundles, validation off (the corpus plants defects into them). */
async function sampleBundles(): Promise<Bundle[]> {
  const out: Bundle[] = [];
  for (const site of ['site-a', 'site-b', 'site-c']) {
    const mapping = await compileMapping(await loadMapping(`mappings/${site}.yaml`));
    const mapped = await mapExport(mapping, [`examples/${site}`], { recorded: '2019-01-01T00:00:00Z', validate: false });
    for (const { bundle } of mapped.bundles) out.push(bundle);
  }
  return out;
}

const entryOf = (b: Json, type: string) => (b.entry as Json[]).findIndex((e) => e.resource?.resourceType === type);

/** Defects of bundled resources: a Bundle is the resource under test. */
const BUNDLE_RECIPES: Recipe[] = [
  { name: 'bundle-request-type-mismatch', rule: 'resource-type', defect: "an entry whose request addresses another resource type than its resource's", type: 'Bundle', count: 1, plant: (b) => { const i = entryOf(b, 'Observation'); b.entry[i].request.url = `Patient?identifier=${encodeURIComponent('urn:x|1')}`; return `Bundle.entry[${i}].request.url`; } },
  { name: 'bundle-resource-no-type', rule: 'resource-type', defect: 'a bundled resource without resourceType', type: 'Bundle', count: 1, plant: (b) => { const i = entryOf(b, 'Condition'); delete b.entry[i].resource.resourceType; return `Bundle.entry[${i}].resource`; } },
  { name: 'bundle-fullurl-type-mismatch', rule: 'resource-type', defect: "an entry whose fullUrl names another resource type than its resource's", type: 'Bundle', count: 1, plant: (b) => { const i = entryOf(b, 'Patient'); b.entry[i].fullUrl = 'https://fhir.example.org/R4/Observation/p1'; return `Bundle.entry[${i}].fullUrl`; } },
];

/**
 * One defect per required binding the sample output touches (found by the independent checker walking the
 * StructureDefinitions, so a binding the validator forgot still gets its case): the coded value replaced by a
 * code in none of its value sets.
 */
function bindingRecipes(resources: Json[]): Recipe[] {
  const checker = new IndependentBindingChecker();
  const recipes = new Map<string, Recipe>();
  for (const resource of resources) {
    for (const site of checker.sites(resource as Resource)) {
      const generic = site.path.replace(/\[\d+\]/g, '');
      const name = `binding-${generic.replace(/\[x\]/g, 'X').replace(/[^A-Za-z0-9]+/g, '-')}-${site.valueSet.split('/').pop()}`.toLowerCase();
      if (!site.checked || recipes.has(name)) continue;
      recipes.set(name, {
        name,
        rule: 'binding',
        defect: `${generic}: code outside the required value set ${site.valueSet}`,
        type: resource.resourceType,
        count: 1,
        when: (r) => checker.sites(r as Resource).some((s) => s.path === site.path && s.valueSet === site.valueSet),
        plant: (r) => {
          plantCode(r, site.path, site.type);
          return site.path;
        },
      });
    }
  }
  return [...recipes.values()];
}

/** Replaces the code(s) at a FHIRPath-like location (`AdverseEvent.outcome.coding[1]`, `...extension[0].value[x]`). */
function plantCode(resource: Json, path: string, type: string): void {
  const steps = path.split('.').slice(1);
  let parent: Json = resource;
  let key = '';
  for (let s = 0; s < steps.length; s++) {
    const [, name, index] = /^([^[]+?)(?:\[(\d+)\])?$/.exec(steps[s].replace('[x]', '__x'))!;
    const prop = name.endsWith('__x') ? Object.keys(parent).find((k) => k.startsWith(name.slice(0, -3)) && /[A-Z]/.test(k.charAt(name.length - 3)))! : name;
    if (s === steps.length - 1 && index === undefined) {
      key = prop;
      break;
    }
    if (s === steps.length - 1) {
      parent = parent[prop];
      key = index!;
      break;
    }
    parent = index === undefined ? parent[prop] : parent[prop][Number(index)];
  }
  const BAD = 'tb-not-in-value-set';
  if (type === 'code') parent[key] = BAD;
  else if (type === 'Coding') parent[key].code = BAD;
  else for (const coding of parent[key].coding ?? []) coding.code = BAD;
}

function plantAll(recipes: Recipe[], resources: Json[], defaultCount: number, cases: CorpusCase[]): void {
  for (const recipe of recipes) {
    const perRecipe = recipe.count ?? defaultCount;
    const candidates = resources.filter((r) => r.resourceType === recipe.type && (!recipe.when || recipe.when(r)));
    const step = Math.max(1, Math.floor(candidates.length / perRecipe));
    for (let k = 0; k < perRecipe && k * step < candidates.length; k++) {
      const resource = structuredClone(candidates[k * step]);
      const expression = recipe.plant(resource);
      cases.push({ id: `${recipe.name}-${k + 1}`, rule: recipe.rule, defect: recipe.defect, expression, resource: resource as Resource });
    }
  }
}

/** Up to `perRecipe` resources per recipe (fewer where a recipe says), spread over subjects and sites. */
export async function buildCorpus(perRecipe = 3): Promise<CorpusCase[]> {
  const bundles = await sampleBundles();
  const resources = bundles.flatMap((b) => (b.entry ?? []).map((e) => e.resource as Json));
  const cases: CorpusCase[] = [];
  plantAll(RECIPES, resources, perRecipe, cases);
  plantAll(bindingRecipes(resources), resources, perRecipe, cases);
  // Small bundles (a subject with few records) keep the corpus file readable.
  const small = [...bundles].sort((a, b) => (a.entry?.length ?? 0) - (b.entry?.length ?? 0)).slice(0, 3) as Json[];
  plantAll(BUNDLE_RECIPES, small, perRecipe, cases);
  return cases;
}

/** The corpus file's text: JSON, with the out-of-range decimal written as the literal a double cannot hold. */
export function serializeCorpus(cases: CorpusCase[]): string {
  return JSON.stringify(cases, null, 1).replaceAll(`"${HUGE_DECIMAL}"`, '1e400') + '\n';
}

export const CORPUS_PATH = 'test/validation-corpus/corpus.json';

if (import.meta.url === `file://${process.argv[1]}`) {
  const cases = await buildCorpus();
  await mkdir(dirname(CORPUS_PATH), { recursive: true });
  await writeFile(join(CORPUS_PATH), serializeCorpus(cases));
  console.log(`${cases.length} corpus cases in ${new Set(cases.map((c) => c.rule)).size} rule classes written to ${CORPUS_PATH}`);
}
