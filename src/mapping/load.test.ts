import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { compileMapping } from './compile.ts';
import { MappingError } from './errors.ts';
import { loadMapping, mergeLayers } from './load.ts';
import { readSourceRecords } from './records.ts';

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

/** Messages that once sent engineers to the wrong place: each must name what to fix, and where. */
const contractBase = `${base}      birthDate: { $var: birthDate, required: true }
`;

const siteWith = (resources: string, source = 'files: [{ match: x.csv }]') => `extends: base.yaml
site: site-x
version: "1"
source:
  format: csv
  ${source}
  subject: SUBJ
  enrolment: record
${resources}`;

const patient = `resources:
  patient:
    from: record
    let:
      gender: SEX
      birthDate: { $date: DOB, type: date }
`;

async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected a failure');
}

const checkSite = async (dir: string) => compileMapping(await loadMapping(join(dir, 'site.yaml')));

describe('mapping messages name what to fix', () => {
  it('a file taken by an earlier files entry: names the entry that took it and the first-match rule', async () => {
    const dir = await files({
      'base.yaml': contractBase,
      'site.yaml': siteWith(patient, "files: [{ match: '*.csv', type: record }, { match: registry_export.csv, type: record }]"),
      'registry_export.csv': 'SUBJ,SEX,DOB\n1,M,2000-01-01\n',
    });
    const message = await failure(readSourceRecords(await checkSite(dir), [join(dir, 'registry_export.csv')]));
    expect(message).toContain("no input file left for source.files[1] (match 'registry_export.csv')");
    expect(message).toContain("registry_export.csv already feeds source.files[0] (match '*.csv')");
    expect(message).toContain('a file feeds only the first entry it matches');
  });

  it('a base that cannot be read: names the extending file, its extends line and the path', async () => {
    const dir = await files({ 'site.yaml': `# a site\n${siteWith(patient).replace('extends: base.yaml', 'extends: bsae.yaml')}` });
    const message = await failure(checkSite(dir));
    expect(message).toMatch(/site\.yaml:2: extends: cannot read the base mapping 'bsae\.yaml' this file extends \(.*bsae\.yaml: no such file\)/);
  });

  it('a key the site must add is located in the site file and names the base rule', async () => {
    const dir = await files({ 'base.yaml': contractBase, 'site.yaml': siteWith('resources:\n  patient:\n    let:\n      gender: SEX\n      birthDate: DOB\n') });
    const message = await failure(checkSite(dir));
    expect(message).toMatch(/site\.yaml:\d+: resources\.patient\.from: missing required key 'from' of base rule 'patient' \(.*base\.yaml:\d+\): the site file must add it/);
    expect(message).not.toMatch(/^[^\n]*base\.yaml:\d+: resources/m);
  });

  it('a let read before it is defined is reported at load, not left empty', async () => {
    const lets = patient.replace('      gender: SEX\n', '      gender: "iif(%sex.exists(), SEX, {})"\n      sex: SEX\n').replace('    from: record\n', '    from: record\n    when: "%birthDate.exists()"\n');
    const message = await failure(checkSite(await files({ 'base.yaml': contractBase, 'site.yaml': siteWith(lets) })));
    expect(message).toMatch(/site\.yaml:\d+: resources\.patient\.let\.gender: reads 'sex', which is defined after it \(lets are computed in order: move 'sex' above 'gender'\)/);
    expect(message).toMatch(/resources\.patient\.when: reads %birthDate, a let of this rule, but when is computed before the lets/);
  });

  it('a misspelled let name is reported with the name the template reads', async () => {
    const message = await failure(checkSite(await files({ 'base.yaml': contractBase, 'site.yaml': siteWith(patient.replace('      gender: SEX', '      gendr: SEX')) })));
    expect(message).toMatch(/resources\.patient\.let\.gendr: let 'gendr' is never read: did you mean 'gender'\? the template of rule 'patient' reads 'birthDate', 'gender'/);
  });

  it("a let the base's template requires and the site leaves out is named in the site file", async () => {
    const message = await failure(checkSite(await files({ 'base.yaml': contractBase, 'site.yaml': siteWith(patient.replace(/      birthDate:.*\n/, '')) })));
    expect(message).toMatch(/site\.yaml:\d+: resources\.patient\.let\.birthDate: rule 'patient' \(.*base\.yaml:\d+\) requires let 'birthDate' and the mapping does not define it/);
  });

  it('accepts the sample layout: correct lets load', async () => {
    const mapping = await checkSite(await files({ 'base.yaml': contractBase, 'site.yaml': siteWith(patient) }));
    expect(mapping.rules.map((r) => r.id)).toEqual(['patient']);
  });
});
