import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MedicationAdministration, Patient, Procedure } from '@medplum/fhirtypes';
import type { SourceRecord } from '../source/record.ts';
import { compileMapping, type CompiledMapping } from './compile.ts';
import { mapRecords } from './engine.ts';
import { loadMapping } from './load.ts';

const MAPPING = `trial: { id: T1, namespace: "urn:trialbridge:t1" }
site: site-x
version: "1"
source:
  format: csv
  files: [{ match: x.csv }]
  subject: SUBJ
  recordType: TYPE
  enrolment: DM
valueMaps:
  sex: { caseInsensitive: true, map: { M: male, F: female } }
resources:
  patient:
    type: Patient
    from: DM
    key: "%subjectKey"
    template:
      gender: { $map: sex, value: SEX, as: code }
      birthDate: { $date: DOB, type: date }
  dose:
    type: MedicationAdministration
    from: EX
    groupBy: "CYCLE"
    template:
      status: completed
      medicationCodeableConcept: { text: "{{DRUG}}" }
      subject: { $ref: patient }
      effectivePeriod:
        start: { $date: DAY, aggregate: min }
        end: { $date: DAY, aggregate: max }
      dosage:
        dose: { $quantity: DOSE, unit: mg, aggregate: first }
  rt:
    type: Procedure
    from: RT
    template:
      status: completed
      code: { text: radiotherapy }
      subject: { $ref: patient }
      performedDateTime: { $date: DAY }
      extension:
        - url: https://example.org/dose
          valueQuantity: { $quantity: DOSE, unit: Gy, to: cGy }
        - $when: "FX.exists()"
          url: https://example.org/fractions
          valueUnsignedInt: { $expr: FX, as: unsignedInt }
`;

let mapping: CompiledMapping;
async function compile(text = MAPPING): Promise<CompiledMapping> {
  const dir = await mkdtemp(join(tmpdir(), 'engine-'));
  await writeFile(join(dir, 'm.yaml'), text);
  return compileMapping(await loadMapping(join(dir, 'm.yaml')));
}

let row = 1;
function rec(subject: string, type: string, fields: Record<string, string>): SourceRecord {
  row++;
  return { site: 'site-x', file: 'x.csv', row, type, subject, key: `R${row}`, fields: { SUBJ: subject, TYPE: type, ...fields } };
}

describe('mapRecords', async () => {
  mapping = await compile();

  it('makes one resource per record, several rows into one with groupBy, and resolves references in the subject', () => {
    const records = [
      rec('S1', 'DM', { SEX: 'f', DOB: '1950-03' }),
      rec('S1', 'EX', { CYCLE: 'C1', DRUG: '5-FU', DAY: '2016-01-03', DOSE: '500' }),
      rec('S1', 'EX', { CYCLE: 'C1', DRUG: '5-FU', DAY: '2016-01-01', DOSE: '500' }),
      rec('S1', 'EX', { CYCLE: 'C1', DRUG: '5-FU', DAY: '2016-01-02', DOSE: '500' }),
      rec('S1', 'RT', { DAY: '2016-01-01', DOSE: '60', FX: '25' }),
    ];
    const result = mapRecords(mapping, records);
    expect(result.problems).toEqual([]);
    const [subject] = result.subjects;
    const byRule = Object.fromEntries(subject.resources.map((r) => [r.rule, r]));
    const patient = byRule.patient.resource as Patient;
    expect(patient).toMatchObject({ resourceType: 'Patient', gender: 'female', birthDate: '1950-03' });
    expect(patient.identifier).toEqual([{ use: 'official', system: 'urn:trialbridge:t1:site-x:patient', value: 'S1' }]);
    const dose = byRule.dose.resource as MedicationAdministration;
    expect(dose.effectivePeriod).toEqual({ start: '2016-01-01', end: '2016-01-03' });
    expect(dose.subject).toEqual({ reference: byRule.patient.fullUrl });
    expect(byRule.dose.records).toHaveLength(3);
    const rt = byRule.rt.resource as Procedure;
    expect(rt.extension).toEqual([
      { url: 'https://example.org/dose', valueQuantity: { value: 6000, unit: 'cGy', system: 'http://unitsofmeasure.org', code: 'cGy' } },
      { url: 'https://example.org/fractions', valueUnsignedInt: 25 },
    ]);
  });

  it('gives the same identifiers and fullUrls every time', () => {
    const make = () => mapRecords(mapping, [rec('S1', 'DM', { SEX: 'M' })]).subjects[0].resources[0];
    const a = make();
    row -= 1;
    const b = make();
    expect(a.fullUrl).toBe(b.fullUrl);
    expect(a.fullUrl).toMatch(/^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it('rejects a bad record with its field and reason while the rest of the subject still maps', () => {
    const enrol = rec('S1', 'DM', { SEX: 'M' });
    const badDose = rec('S1', 'RT', { DAY: '2016-01-01', DOSE: 'sixty' });
    const badDate = rec('S1', 'RT', { DAY: '2016-02-30', DOSE: '60' });
    const result = mapRecords(mapping, [enrol, badDose, badDate, rec('S1', 'RT', { DAY: '2016-03-01', DOSE: '50' })]);
    expect(result.problems).toEqual([
      expect.objectContaining({ row: badDose.row, field: 'DOSE', value: 'sixty', reason: 'value is not a number' }),
      expect.objectContaining({ row: badDate.row, field: 'DAY', value: '2016-02-30', reason: 'impossible date (ISO 8601): the day is past the end of the month (February has 28 or 29 days)' }),
    ]);
    expect(result.subjects[0].resources.map((r) => r.rule)).toEqual(['patient', 'rt']);
  });

  it('rejects records without subject, of subjects never enrolled, and everything that refers to a rejected record', () => {
    const result = mapRecords(mapping, [
      rec('', 'RT', { DAY: '2016-01-01', DOSE: '60' }),
      rec('S9', 'RT', { DAY: '2016-01-01', DOSE: '60' }),
      rec('S2', 'DM', { SEX: 'X' }),
      rec('S2', 'RT', { DAY: '2016-01-01', DOSE: '60' }),
    ]);
    expect(result.problems.map((p) => [p.field, p.reason])).toEqual([
      ['SUBJ', 'missing subject id'],
      ['SUBJ', 'subject is not enrolled: no record of type DM'],
      ['SEX', "not in value map 'sex' (expected one of M, F)"],
      ['(reference)', 'depends on the patient resource, which was rejected'],
    ]);
    expect(result.subjects).toEqual([]);
  });

  it('rejects records of a type no rule reads instead of ignoring them', () => {
    const result = mapRecords(mapping, [rec('S1', 'DM', { SEX: 'M' }), rec('S1', 'LAB', { X: '1' })]);
    expect(result.problems).toEqual([expect.objectContaining({ field: 'TYPE', reason: 'no rule of the mapping reads records of this type', value: 'LAB' })]);
    expect(result.subjects[0].records.map((r) => r.type)).toEqual(['DM']);
  });

  it('rejects the second of two records with the same record key instead of merging them', () => {
    const first = rec('S1', 'RT', { DAY: '2016-01-01', DOSE: '60' });
    const twin = { ...rec('S1', 'RT', { DAY: '2016-02-01', DOSE: '50' }), key: first.key };
    const result = mapRecords(mapping, [rec('S1', 'DM', { SEX: 'M' }), first, twin]);
    expect(result.problems).toEqual([expect.objectContaining({ row: twin.row, reason: expect.stringMatching(/already makes this rt/) })]);
    const rt = result.subjects[0].resources.filter((r) => r.rule === 'rt');
    expect(rt.map((r) => r.records.length)).toEqual([1]);
  });

  it('refuses two records that claim the same business identifier', () => {
    const twin = await_compile_twin();
    return twin.then((m) => {
      const result = mapRecords(m, [rec('S1', 'DM', { SEX: 'M' }), rec('S1', 'DM', { SEX: 'F' })]);
      expect(result.problems).toHaveLength(1);
      expect(result.problems[0].reason).toMatch(/already makes this patient/);
      expect(result.subjects[0].resources).toHaveLength(1);
    });
  });

  it('runs a validation check on each resource and rejects the records behind a failing one', () => {
    const result = mapRecords(mapping, [rec('S1', 'DM', { SEX: 'M' }), rec('S1', 'RT', { DAY: '2016-01-01', DOSE: '60' })], (resource) =>
      resource.resourceType === 'Procedure' ? [{ field: 'Procedure.code', reason: 'code is not allowed here' }] : [],
    );
    expect(result.problems).toEqual([expect.objectContaining({ field: 'Procedure.code', reason: expect.stringContaining('fails validation: code is not allowed here') })]);
    const withOutcome = mapRecords(mapping, [rec('S1', 'DM', { SEX: 'M' }), rec('S1', 'RT', { DAY: '2016-01-01', DOSE: '60' })], (resource) =>
      resource.resourceType === 'Procedure'
        ? [{ field: 'Procedure.code', reason: 'bad', issue: { severity: 'error', code: 'structure', expression: ['Procedure.code'], details: { text: 'bad' } } }]
        : [],
    );
    expect(withOutcome.problems[0].outcome).toEqual({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'structure', expression: ['Procedure.code'], details: { text: 'bad' } }] });
    expect(result.subjects[0].resources.map((r) => r.rule)).toEqual(['patient']);
  });
});

function await_compile_twin(): Promise<CompiledMapping> {
  return compile(MAPPING);
}
