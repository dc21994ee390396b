import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { baseMappingDir } from './support/mapping-dir.ts';

const run = promisify(execFile);
const FIXTURE = 'mappings/site-a/tests/one-subject-with-bad-rows';

/** Runs the CLI as a user would; resolves with exit code and output instead of throwing on a non-zero exit. */
async function trialbridge(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['src/cli/main.ts', ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('trialbridge CLI', () => {
  it('map: exit 2 when records were rejected, bundles, summary and rejects written, no field values on the terminal', async () => {
    const out = await mkdtemp(join(tmpdir(), 'cli-'));
    const result = await trialbridge('map', '-m', 'mappings/site-a.yaml', FIXTURE, '-o', out, '--recorded', '2020-01-01T00:00:00Z');
    expect(result.code).toBe(2);
    expect(result.stdout).toContain('5 records rejected');
    expect(result.stdout).toContain('export.csv row 14 (R00013) field subject_id: subject is not enrolled: no record of type ENROL');
    // Neither the unknown subject's id nor the bad values reach the terminal; they are in the rejects file.
    expect(result.stdout).not.toMatch(/A099|30\/02\/2016|abc/);
    expect(await readdir(join(out, 'site-a'))).toEqual(['bundle-0001.json']);
    const rejects = (await readFile(join(out, 'site-a.rejects.ndjson'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(rejects.map((r) => [r.row, r.field, r.value])).toEqual([
      [9, 'start_date', '30/02/2016'],
      [10, 'grade', '7'],
      [13, 'subject_id', undefined],
      [14, 'subject_id', 'A099'],
      [15, 'value', 'abc'],
    ]);
    const summary = JSON.parse(await readFile(join(out, 'site-a.summary.json'), 'utf8'));
    expect(summary).toMatchObject({ site: 'site-a', recordsRead: 14, recordsRejected: 5, subjects: 1 });
  });

  it('map: exit 0 and NDJSON output when nothing is rejected', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const rows = (await readFile(join(FIXTURE, 'export.csv'), 'utf8')).split('\n').filter((l) => !/R0000[89]|R0001[234]/.test(l));
    await writeFile(join(dir, 'export.csv'), rows.join('\n'));
    const result = await trialbridge('map', '-m', 'mappings/site-a.yaml', dir, '-o', join(dir, 'out'), '--ndjson');
    expect(result.code).toBe(0);
    const lines = (await readFile(join(dir, 'out', 'site-a.bundles.ndjson'), 'utf8')).trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]).type).toBe('transaction');
  });

  it('map: exit 1 with file, line and key when the mapping is malformed, before reading any input', async () => {
    const dir = await baseMappingDir('cli-');
    const text = (await readFile('mappings/site-a.yaml', 'utf8')).replace('  recordKey: row_id', '  recordKey: row_id\n  recordKye: oops');
    await writeFile(join(dir, 'broken.yaml'), text);
    const result = await trialbridge('map', '-m', join(dir, 'broken.yaml'), '/nonexistent', '-o', join(dir, 'out'));
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/broken\.yaml:\d+: source\.recordKye: unknown key 'recordKye'/);
  });

  it('map: exit 1 naming the input that is missing', async () => {
    const result = await trialbridge('map', '-m', 'mappings/site-a.yaml', '/nonexistent/export.csv');
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('/nonexistent/export.csv: no such file or directory');
  });

  it('check-mapping and test-mappings succeed on the shipped mappings', async () => {
    const check = await trialbridge('check-mapping', 'mappings/site-a.yaml', 'mappings/site-b.yaml', 'mappings/site-c.yaml');
    expect(check.code).toBe(0);
    expect(check.stdout.match(/: ok/g)).toHaveLength(3);
    const fixtures = await trialbridge('test-mappings');
    expect(fixtures.code).toBe(0);
    expect(fixtures.stdout).toMatch(/\d+ fixtures passed, 0 failed/);
  });

  it('test-mappings prints a readable diff and exits 1 when a mapping no longer gives the expected resources', async () => {
    const dir = await baseMappingDir('cli-');
    const text = (await readFile('mappings/site-a.yaml', 'utf8')).replace('DIAR: { code: "10012735"', 'DIAR: { code: "99999999"');
    await writeFile(join(dir, 'site-a.yaml'), text);
    const fixture = join(dir, 'site-a', 'tests', 'case');
    await run('mkdir', ['-p', fixture]);
    await writeFile(join(fixture, 'export.csv'), await readFile(join(FIXTURE, 'export.csv')));
    await writeFile(join(fixture, 'expected.json'), await readFile(join(FIXTURE, 'expected.json')));
    const result = await trialbridge('test-mappings', join(dir, 'site-a.yaml'));
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/FAIL site-a: case/);
    expect(result.stdout).toMatch(/\$\.resources\[\d+\]\.event\.coding\[0\]\.code: expected "10012735", got "99999999"/);
  });

  it('check-mapping: a misspelled let and a let read before it is defined fail, in the site file, naming the fix', async () => {
    const dir = await baseMappingDir('cli-');
    const text = (await readFile('mappings/site-a.yaml', 'utf8'))
      .replace('      gender: { $map: sex, value: sex, as: code }', '      gendr: { $map: sex, value: sex, as: code }')
      .replace('      birthDate: { $date: birth_date, type: date }', '      birthDate: { $date: "%born" }\n      born: birth_date');
    await writeFile(join(dir, 'site-a.yaml'), text);
    const result = await trialbridge('check-mapping', join(dir, 'site-a.yaml'));
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/site-a\.yaml:44: resources\.patient\.let\.gendr: let 'gendr' is never read: did you mean 'gender'\?/);
    expect(result.stderr).toMatch(/site-a\.yaml:45: resources\.patient\.let\.birthDate: reads 'born', which is defined after it \(lets are computed in order: move 'born' above 'birthDate'\)/);
  });

  it('test-mappings: fixtures under <site>/tests/ beside a mapping of any file name, reported by site and case', async () => {
    const dir = await baseMappingDir('cli-');
    await writeFile(join(dir, 'mapping.yaml'), await readFile('mappings/site-a.yaml'));
    const fixture = join(dir, 'site-a', 'tests', 'bad-rows');
    await run('mkdir', ['-p', fixture]);
    await writeFile(join(fixture, 'export.csv'), await readFile(join(FIXTURE, 'export.csv')));
    await writeFile(join(fixture, 'expected.json'), await readFile(join(FIXTURE, 'expected.json')));
    const result = await trialbridge('test-mappings', join(dir, 'mapping.yaml'));
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('ok   site-a: bad-rows');
    expect(result.stdout).not.toContain('mapping.yaml');
  });

  it('test-mappings: a mapping without fixtures fails, naming where to put them, unless --allow-empty', async () => {
    const dir = await baseMappingDir('cli-');
    await writeFile(join(dir, 'site-a.yaml'), await readFile('mappings/site-a.yaml'));
    const result = await trialbridge('test-mappings', join(dir, 'site-a.yaml'));
    expect(result.code).toBe(1);
    expect(result.stdout).toContain(`FAIL site-a: no fixtures for ${join(dir, 'site-a.yaml')} (looked in ${join(dir, 'site-a', 'tests')}, ${join(dir, 'tests')})`);
    expect(result.stdout).toContain(`add ${join(dir, 'site-a', 'tests', '<case>')}/ with the input files and expected.json`);
    expect(result.stdout).toContain('0 fixtures passed, 0 failed, 1 mapping without fixtures');
    const allowed = await trialbridge('test-mappings', '--allow-empty', join(dir, 'site-a.yaml'));
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toContain('skip site-a: no fixtures');
  });

  it('validate: exit 0 on conforming bundles, exit 2 naming resource and location of each defect', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-'));
    const out = join(dir, 'out');
    await trialbridge('map', '-m', 'mappings/site-a.yaml', FIXTURE, '-o', out, '--recorded', '2020-01-01T00:00:00Z');
    const ok = await trialbridge('validate', join(out, 'site-a', 'bundle-0001.json'));
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('11 resources validated, 0 with errors');
    const corpus = JSON.parse(await readFile('test/validation-corpus/corpus.json', 'utf8')) as { id: string; expression: string; resource: unknown }[];
    const picked = corpus.filter((c) => ['ae-grade-7-1', 'rt-dose-in-gy-1'].includes(c.id));
    await writeFile(join(dir, 'bad.ndjson'), picked.map((c) => JSON.stringify(c.resource)).join('\n') + '\n');
    const bad = await trialbridge('validate', join(dir, 'bad.ndjson'));
    expect(bad.code).toBe(2);
    for (const c of picked) expect(bad.stdout).toContain(`  ${c.expression}: `);
    expect(bad.stdout).toContain('2 resources validated, 2 with errors');
    // A destination's profile applies to resources of its type only: here the sponsor's pseudonymised Patient.
    const sponsor = await trialbridge('validate', join(out, 'site-a', 'bundle-0001.json'), '--profile', 'https://trialbridge.dev/fhir/ldccrt-hcc-p2/StructureDefinition/trial-patient-pseudonymised');
    expect(sponsor.code).toBe(2);
    expect(sponsor.stdout).toMatch(/entry \d+ \(Patient\):\n  Patient: Constraint tb-pat-1 not met/);
    expect(sponsor.stdout).toContain('11 resources validated, 1 with errors');
  });
});
