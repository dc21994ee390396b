import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { compileMapping } from './compile.ts';
import { MappingError } from './errors.ts';
import { loadMapping, mergeLayers } from './load.ts';

async function files(entries: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'mapping-'));
  for (const [name, text] of Object.entries(entries)) await writeFile(join(dir, name), text);
  return dir;
}

const base = `trial: { id: T1, namespace: "urn:trialbridge:t1" }
resources:
  patient:
    type: Patient
    key: "%subjectKey"
    template:
      gender: { $var: gender }
`;

const site = `extends: base.yaml
site: site-x
version: "1"
source:
  format: csv
  files: [{ match: x.csv }]
  subject: SUBJ
  enrolment: record
resources:
  patient:
    from: record
    let:
      gender: { $map: sex, value: SEX, as: code }
valueMaps:
  sex: { map: { M: male, F: female } }
`;

async function issuesOf(promise: Promise<unknown>) {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(MappingError);
    return (err as MappingError).issues;
  }
  throw new Error('expected a MappingError');
}

describe('loadMapping', () => {
  it('merges a site file over its base', async () => {
    const dir = await files({ 'base.yaml': base, 'site.yaml': site });
    const loaded = await loadMapping(join(dir, 'site.yaml'));
    expect(loaded.spec.resources.patient.type).toBe('Patient');
    expect(loaded.spec.resources.patient.from).toBe('record');
    await expect(compileMapping(loaded)).resolves.toBeDefined();
  });

  it('names file, line and key of a schema error in the file that has it', async () => {
    const dir = await files({ 'base.yaml': base, 'site.yaml': site.replace('  subject: SUBJ\n', '  subject: SUBJ\n  delimeter: ";"\n') });
    const issues = await issuesOf(loadMapping(join(dir, 'site.yaml')));
    expect(issues).toEqual([expect.objectContaining({ key: 'source.delimeter', line: 8, message: "unknown key 'delimeter'" })]);
    expect(issues[0].file).toMatch(/site\.yaml$/);
  });

  it('places errors of inherited keys in the base file', async () => {
    const dir = await files({ 'base.yaml': base.replace('type: Patient', 'type: patient'), 'site.yaml': site });
    const issues = await issuesOf(loadMapping(join(dir, 'site.yaml')));
    expect(issues[0]).toMatchObject({ key: 'resources.patient.type', line: 4 });
    expect(issues[0].file).toMatch(/base\.yaml$/);
  });

  it('reports bad expressions, unknown value maps and unknown directives at compile time, all at once', async () => {
    const broken = site
      .replace('{ $map: sex, value: SEX, as: code }', '{ $map: gender-map, value: "SEX.(" }')
      .replace('resources:\n  patient:\n    from: record', 'resources:\n  patient:\n    from: record\n    when: "SEX ="');
    const dir = await files({ 'base.yaml': base.replace('gender: { $var: gender }', 'gender: { $var: gender }\n      birthDate: { $dat: DOB }'), 'site.yaml': broken });
    const issues = await issuesOf(compileMapping(await loadMapping(join(dir, 'site.yaml'))));
    const keys = issues.map((i) => i.key);
    expect(keys).toContain('resources.patient.let.gender.$map');
    expect(keys).toContain('resources.patient.let.gender.value');
    expect(keys).toContain('resources.patient.when');
    expect(keys).toContain('resources.patient.template.birthDate.$dat');
    expect(issues.every((i) => i.line !== undefined)).toBe(true);
  });

  it('reports YAML syntax errors with their line and refuses circular extends', async () => {
    const dir = await files({ 'bad.yaml': 'site: x\n  version: [1\n', 'a.yaml': 'extends: b.yaml\n', 'b.yaml': 'extends: a.yaml\n' });
    const syntax = await issuesOf(loadMapping(join(dir, 'bad.yaml')));
    expect(syntax[0].message).toMatch(/YAML syntax/);
    expect(syntax[0].line).toBeGreaterThan(0);
    const circular = await issuesOf(loadMapping(join(dir, 'a.yaml')));
    expect(circular[0].message).toMatch(/circular/);
  });
});

describe('mergeLayers', () => {
  it('merges objects, replaces lists and removes keys set to null', () => {
    expect(mergeLayers({ a: { b: 1, c: 2 }, l: [1, 2], d: 1 }, { a: { c: 3 }, l: [3], d: null })).toEqual({ a: { b: 1, c: 3 }, l: [3] });
  });
});
