/**
 * Builds test/validation-corpus/corpus.json: resources of the sample sites' output, each with ONE planted
 * defect and the FHIRPath location where a validator must report it. Deterministic: run it again after the
 * mappings or sample data change (`npm exec -- node scripts/build-validation-corpus.ts`).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Resource } from '@medplum/fhirtypes';
import { mapExport } from '../src/bundle/map-export.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';

// Corpus resources are JSON being broken on purpose: typed loosely on purpose.
type Json = Record<string, any>;

export interface CorpusCase {
  id: string;
  defect: string;
  /** Where the defect must be reported (an OperationOutcome issue expression). */
  expression: string;
  resource: Resource;
}

interface Recipe {
  name: string;
  defect: string;
  type: string;
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

const RECIPES: Recipe[] = [
  // AdverseEvent
  { name: 'ae-grade-7', defect: 'CTCAE grade outside 1-5 (code not in the grade value set)', type: 'AdverseEvent', plant: (r) => { const i = extIndex(r, GRADE); r.extension[i].valueCodeableConcept.coding[0].code = 'C99999'; return `AdverseEvent.extension[${i}].value[x]`; } },
  { name: 'ae-missing-grade', defect: 'CTCAE grade extension missing', type: 'AdverseEvent', plant: (r) => { r.extension.splice(extIndex(r, GRADE), 1); return 'AdverseEvent.extension'; } },
  { name: 'ae-outcome-code', defect: 'outcome code outside the required value set', type: 'AdverseEvent', plant: (r) => { r.outcome.coding[0].code = 'RECOVERED'; return 'AdverseEvent.outcome'; } },
  { name: 'ae-seriousness-code', defect: 'seriousness code outside the required value set', type: 'AdverseEvent', plant: (r) => { r.seriousness.coding[0].code = 'severe'; return 'AdverseEvent.seriousness'; } },
  { name: 'ae-actuality', defect: 'actuality not the fixed value actual', type: 'AdverseEvent', plant: (r) => { r.actuality = 'potential'; return 'AdverseEvent.actuality'; } },
  { name: 'ae-no-event', defect: 'event missing (cardinality 1..1)', type: 'AdverseEvent', plant: (r) => { delete r.event; return 'AdverseEvent.event'; } },
  { name: 'ae-no-date', defect: 'date missing (cardinality 1..1)', type: 'AdverseEvent', plant: (r) => { delete r.date; return 'AdverseEvent.date'; } },
  { name: 'ae-not-meddra', defect: 'event not MedDRA-coded (profile invariant)', type: 'AdverseEvent', plant: (r) => { r.event.coding[0].system = 'http://snomed.info/sct'; return 'AdverseEvent'; } },
  { name: 'ae-suspect-entity', defect: 'suspectEntity element prohibited by the backport profile', type: 'AdverseEvent', plant: (r) => { r.suspectEntity = [{ instance: { display: 'Sorafenib' } }]; return 'AdverseEvent.suspectEntity'; } },
  { name: 'ae-impossible-date', defect: 'impossible date', type: 'AdverseEvent', plant: (r) => { r.date = '2016-02-30'; return 'AdverseEvent.date'; } },
  { name: 'ae-status-code', defect: 'workflow status code outside its value set', type: 'AdverseEvent', plant: (r) => { r.modifierExtension[0].valueCode = 'done'; return 'AdverseEvent.modifierExtension[0].value[x]'; } },
  { name: 'ae-unknown-element', defect: 'unknown element', type: 'AdverseEvent', plant: (r) => { r.severityGrade = 'G3'; return 'AdverseEvent.severityGrade'; } },
  { name: 'ae-ext-1', defect: 'extension with both a value and nested extensions (invariant ext-1)', type: 'AdverseEvent', plant: (r) => { const i = extIndex(r, GRADE); r.extension[i].extension = [{ url: 'note', valueString: 'x' }]; return `AdverseEvent.extension[${i}]`; } },
  { name: 'ae-study-missing', defect: 'study missing (1..*)', type: 'AdverseEvent', plant: (r) => { delete r.study; return 'AdverseEvent.study'; } },
  // Radiotherapy course
  { name: 'rt-dose-in-gy', defect: 'total dose in Gy where the profile fixes cGy', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[0].valueQuantity = { value: 60, unit: 'Gy', system: 'http://unitsofmeasure.org', code: 'Gy' }; return `Procedure.extension[${i}].extension[0].value[x].code`; } },
  { name: 'rt-no-dose', defect: 'dose-delivered extension missing', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.extension.splice(extIndex(r, DOSE), 1); return 'Procedure.extension'; } },
  { name: 'rt-period-reversed', defect: 'period ends before it starts (invariant per-1)', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.performedPeriod = { start: '2016-05-02', end: '2016-03-01' }; return 'Procedure.performed[x]'; } },
  { name: 'rt-category', defect: 'category does not match the radiotherapy pattern', type: 'Procedure', when: isRadiotherapy, plant: (r) => { r.category.coding[0].code = '387713003'; return 'Procedure.category'; } },
  { name: 'rt-fractions-negative', defect: 'fractions not an unsignedInt', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = -25; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'rt-fractions-string', defect: 'fractions of the wrong JSON type', type: 'Procedure', when: isRadiotherapy, plant: (r) => { const i = extIndex(r, DOSE); r.extension[i].extension[1].valueUnsignedInt = '25'; return `Procedure.extension[${i}].extension[1].value[x]`; } },
  { name: 'procedure-status-code', defect: 'status code outside the R4 required value set', type: 'Procedure', plant: (r) => { r.status = 'finished'; return 'Procedure.status'; } },
  { name: 'procedure-no-reason', defect: 'reasonReference missing (1..*)', type: 'Procedure', plant: (r) => { delete r.reasonReference; return 'Procedure.reasonReference'; } },
  // MedicationAdministration
  { name: 'ma-route-code', defect: 'route outside the trial routes value set', type: 'MedicationAdministration', plant: (r) => { r.dosage.route.coding[0].code = '47625008'; return 'MedicationAdministration.dosage.route'; } },
  { name: 'ma-no-dose', defect: 'dose missing (1..1)', type: 'MedicationAdministration', plant: (r) => { delete r.dosage.dose; return 'MedicationAdministration.dosage.dose'; } },
  { name: 'ma-dose-no-system', defect: 'dose with a unit code but no system (invariant qty-3)', type: 'MedicationAdministration', plant: (r) => { delete r.dosage.dose.system; return 'MedicationAdministration.dosage.dose'; } },
  { name: 'ma-not-rxnorm', defect: 'drug not RxNorm-coded (profile invariant)', type: 'MedicationAdministration', plant: (r) => { r.medicationCodeableConcept.coding[0].system = 'http://snomed.info/sct'; return 'MedicationAdministration'; } },
  { name: 'ma-status-code', defect: 'status code outside the R4 required value set', type: 'MedicationAdministration', plant: (r) => { r.status = 'done'; return 'MedicationAdministration.status'; } },
  { name: 'ma-effective-datetime', defect: 'effective as dateTime where the profile requires a Period', type: 'MedicationAdministration', plant: (r) => { r.effectiveDateTime = r.effectivePeriod.start; delete r.effectivePeriod; return 'MedicationAdministration.effective[x]'; } },
  { name: 'ma-dose-string', defect: 'dose value of the wrong JSON type', type: 'MedicationAdministration', plant: (r) => { r.dosage.dose.value = '500'; return 'MedicationAdministration.dosage.dose.value'; } },
  // Observation (tumour response)
  { name: 'obs-response-code', defect: 'response outside the mRECIST value set', type: 'Observation', plant: (r) => { r.valueCodeableConcept.coding[0].code = 'MR'; return 'Observation.value[x]'; } },
  { name: 'obs-no-timepoint', defect: 'assessment timepoint extension missing', type: 'Observation', plant: (r) => { r.extension.splice(extIndex(r, TIMEPOINT), 1); return 'Observation.extension'; } },
  { name: 'obs-code', defect: 'code does not match the mRECIST overall response pattern', type: 'Observation', plant: (r) => { r.code.coding[0].code = 'recist-overall-response'; return 'Observation.code'; } },
  { name: 'obs-value-string', defect: 'value as string where the profile requires a CodeableConcept', type: 'Observation', plant: (r) => { r.valueString = 'PR'; delete r.valueCodeableConcept; return 'Observation.value[x]'; } },
  { name: 'obs-status-code', defect: 'status code outside the R4 required value set', type: 'Observation', plant: (r) => { r.status = 'done'; return 'Observation.status'; } },
  { name: 'obs-data-absent-and-value', defect: 'value and dataAbsentReason together (invariant obs-6)', type: 'Observation', plant: (r) => { r.dataAbsentReason = { text: 'not done' }; return 'Observation'; } },
  // ResearchSubject
  { name: 'rs-status-code', defect: 'status outside the R4 research-subject-status codes', type: 'ResearchSubject', plant: (r) => { r.status = 'enrolled'; return 'ResearchSubject.status'; } },
  { name: 'rs-no-arm', defect: 'assignedArm missing (1..1)', type: 'ResearchSubject', plant: (r) => { delete r.assignedArm; return 'ResearchSubject.assignedArm'; } },
  { name: 'rs-no-period-start', defect: 'period.start missing (1..1)', type: 'ResearchSubject', plant: (r) => { delete r.period.start; return 'ResearchSubject.period.start'; } },
  { name: 'rs-broken-reference', defect: 'reference to a contained resource that is not there (invariant ref-1)', type: 'ResearchSubject', plant: (r) => { r.individual = { reference: '#patient-1' }; return 'ResearchSubject.individual'; } },
  { name: 'rs-period-month-13', defect: 'impossible month in a date', type: 'ResearchSubject', plant: (r) => { r.period.start = '2014-13-01'; return 'ResearchSubject.period.start'; } },
  // Patient
  { name: 'patient-gender-code', defect: 'gender outside the R4 administrative-gender codes', type: 'Patient', plant: (r) => { r.gender = 'M'; return 'Patient.gender'; } },
  { name: 'patient-no-identifier', defect: 'identifier missing (1..*)', type: 'Patient', plant: (r) => { delete r.identifier; return 'Patient.identifier'; } },
  { name: 'patient-name-pseudonymised', defect: 'name on sponsor-bound (pseudonymised) data', type: 'Patient', plant: (r) => { r.meta.profile = [PSEUDONYMISED]; r.birthDate = r.birthDate.slice(0, 4); r.name = [{ family: 'Synthetic' }]; return 'Patient.name'; } },
  { name: 'patient-birthdate-pseudonymised', defect: 'full birth date on sponsor-bound (pseudonymised) data', type: 'Patient', when: (r) => String(r.birthDate ?? '').length === 10, plant: (r) => { r.meta.profile = [PSEUDONYMISED]; return 'Patient'; } },
  { name: 'patient-birthdate-impossible', defect: 'impossible birth date', type: 'Patient', plant: (r) => { r.birthDate = '1950-02-30'; return 'Patient.birthDate'; } },
  { name: 'patient-deceased-timezone', defect: 'date-time with hours but no timezone', type: 'Patient', plant: (r) => { r.deceasedDateTime = '2016-03-01T10:00:00'; delete r.deceasedBoolean; return 'Patient.deceased[x]'; } },
  // Condition, ResearchStudy
  { name: 'condition-no-code', defect: 'code missing (1..1)', type: 'Condition', plant: (r) => { delete r.code; return 'Condition.code'; } },
  { name: 'condition-stage-empty', defect: 'stage without summary or assessment (invariant con-1)', type: 'Condition', when: (r) => Boolean(r.stage), plant: (r) => { r.stage = [{ type: { text: 'Vp' } }]; return 'Condition.stage[0]'; } },
  { name: 'study-no-title', defect: 'title missing (1..1)', type: 'ResearchStudy', plant: (r) => { delete r.title; return 'ResearchStudy.title'; } },
];

/** Resources of the three sample sites, validated-free (the corpus plants defects into them). */
async function sampleResources(): Promise<Json[]> {
  const out: Json[] = [];
  for (const site of ['site-a', 'site-b', 'site-c']) {
    const mapping = await compileMapping(await loadMapping(`mappings/${site}.yaml`));
    const mapped = await mapExport(mapping, [`examples/${site}`], { recorded: '2019-01-01T00:00:00Z', validate: false });
    for (const { bundle } of mapped.bundles) for (const entry of bundle.entry ?? []) out.push(entry.resource as Json);
  }
  return out;
}

/** Up to `perRecipe` resources per recipe, spread over subjects and sites. */
export async function buildCorpus(perRecipe = 3): Promise<CorpusCase[]> {
  const resources = await sampleResources();
  const cases: CorpusCase[] = [];
  for (const recipe of RECIPES) {
    const candidates = resources.filter((r) => r.resourceType === recipe.type && (!recipe.when || recipe.when(r)));
    const step = Math.max(1, Math.floor(candidates.length / perRecipe));
    for (let k = 0; k < perRecipe && k * step < candidates.length; k++) {
      const resource = structuredClone(candidates[k * step]);
      const expression = recipe.plant(resource);
      cases.push({ id: `${recipe.name}-${k + 1}`, defect: recipe.defect, expression, resource: resource as Resource });
    }
  }
  return cases;
}

export const CORPUS_PATH = 'test/validation-corpus/corpus.json';

if (import.meta.url === `file://${process.argv[1]}`) {
  const cases = await buildCorpus();
  await mkdir(dirname(CORPUS_PATH), { recursive: true });
  await writeFile(join(CORPUS_PATH), JSON.stringify(cases, null, 1) + '\n');
  console.log(`${cases.length} corpus cases from ${RECIPES.length} defect recipes written to ${CORPUS_PATH}`);
}
