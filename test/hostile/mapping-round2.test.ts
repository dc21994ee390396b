/**
 * Hostile input, round 2 (issue 12), on the paths an attacker uses: `trialbridge map` and `check-mapping` run
 * as a user runs them, with a mapping file and an export the attacker wrote. A linear-time regex engine, units
 * bounded before parsing, reasons without values, library output held back, identifiers kept as written,
 * `extends` confined, field access limited to a record's own fields, control characters shown escaped.
 */
import { copyFile, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AdverseEvent, Bundle } from '@medplum/fhirtypes';
import { afterAll, describe, expect, it } from 'vitest';
import { compileExpression, EvalContext } from '../../src/mapping/expression.ts';
import type { SourceRecord } from '../../src/source/record.ts';
import { CLI_TEST_MS, runCli, type CliRun as Run } from '../support/cli-run.ts';
import { baseMappingDir } from '../support/mapping-dir.ts';
import { SITE_A_TEXT, SITE_B_TEXT } from './inputs.ts';

const RECORDED = '2020-01-01T00:00:00Z';
const SITE_A_MAPPING = await readFile('mappings/site-a.yaml', 'utf8');
const dirs: string[] = [];

afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

function trialbridge(args: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> {
  return runCli(args, { env });
}

/** A directory with the base mapping and a site A mapping edited by `edit`; returns the mapping's path. */
async function siteAMapping(edit: (text: string) => string): Promise<string> {
  const dir = await baseMappingDir('tb-round2-');
  dirs.push(dir);
  const text = edit(SITE_A_MAPPING);
  if (text === SITE_A_MAPPING) throw new Error('site-a.yaml changed: the test cannot plant its edit');
  await writeFile(join(dir, 'site-a.yaml'), text);
  return join(dir, 'site-a.yaml');
}

async function exportDir(file: string, content: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tb-round2-export-'));
  dirs.push(dir);
  await writeFile(join(dir, file), content);
  return dir;
}

/** Site A's export with line `line` (1-based, header = 1) rewritten. */
function siteALine(line: number, edit: (text: string) => string): string {
  const lines = SITE_A_TEXT.split('\n');
  const edited = edit(lines[line - 1]);
  if (edited === lines[line - 1]) throw new Error('export.csv changed: the test cannot plant its value');
  lines[line - 1] = edited;
  return lines.join('\n');
}

async function map(mapping: string, input: string): Promise<Run & { out: string }> {
  // Never inside the input: a committed example folder must stay as it is (test/sample-data.test.ts).
  const parent = await mkdtemp(join(tmpdir(), 'tb-map-out-'));
  dirs.push(parent);
  const out = join(parent, 'out');
  return { ...(await trialbridge(['map', '-m', mapping, input, '-o', out, '--recorded', RECORDED])), out };
}

async function bundlesOf(out: string, site: string): Promise<Bundle[]> {
  const dir = join(out, site);
  return Promise.all((await readdir(dir)).sort().map(async (f) => JSON.parse(await readFile(join(dir, f), 'utf8')) as Bundle));
}

async function rejectsOf(out: string, site: string): Promise<{ row: number; field: string; reason: string; value?: string }[]> {
  const text = await readFile(join(out, `${site}.rejects.ndjson`), 'utf8');
  return text.trim() === '' ? [] : text.trim().split('\n').map((l) => JSON.parse(l) as { row: number; field: string; reason: string; value?: string });
}

async function summaryOf(out: string, site: string): Promise<{ subjects: number; recordsRejected: number; resourcesByType: Record<string, number> }> {
  const { subjects, recordsRejected, resourcesByType } = JSON.parse(await readFile(join(out, `${site}.summary.json`), 'utf8')) as Awaited<ReturnType<typeof summaryOf>>;
  return { subjects, recordsRejected, resourcesByType };
}

const RT_ROW = 5;
const AE_ROW = 9;

describe('mapping regexes run on a linear-time engine', () => {
  const REDOS = '^([0-9]|[0-9a-z]){1,64}$';

  it('a nested alternation in source.recordKey maps a 35-character value at once (map), and check-mapping accepts it', { timeout: CLI_TEST_MS }, async () => {
    const recordKey = `"iif(row_id.matches('${REDOS}'), 'k-' & row_id, row_id)"`;
    const mapping = await siteAMapping((t) => t.replace('  recordKey: row_id', () => `  recordKey: ${recordKey}`));
    expect((await trialbridge(['check-mapping', mapping])).code).toBe(0);
    // 34 digits and a character outside the class: a backtracking engine tries 2^34 ways before giving up.
    const hostile = `${'1'.repeat(34)}!`;
    const input = await exportDir('export.csv', siteALine(AE_ROW, (l) => l.replace(/^R00008,/, `${hostile},`)));
    const run = await map(mapping, input);
    expect(run.stderr).toBe('');
    // Every record maps as with plain row ids: the key expression ran on every row, the hostile one included.
    const baseline = await map('mappings/site-a.yaml', await exportDir('export.csv', SITE_A_TEXT));
    expect(run.code).toBe(baseline.code);
    expect(await summaryOf(run.out, 'site-a')).toEqual(await summaryOf(baseline.out, 'site-a'));
    expect(JSON.stringify(await rejectsOf(run.out, 'site-a'))).not.toContain(hostile);
  });

  it('refuses at load, naming file, line and key, what the engine cannot do (back-references, lookarounds)', { timeout: CLI_TEST_MS }, async () => {
    for (const [pattern, reason] of [
      // TypeScript, YAML and FHIRPath each unescape once: the regex sees `(a)\1`.
      ['(a)\\\\\\\\1', /back-references are not supported/],
      ['^(?=R)R', /lookarounds are not supported/],
    ] as const) {
      const mapping = await siteAMapping((t) => t.replace('  recordKey: row_id', () => `  recordKey: "iif(row_id.matches('${pattern}'), row_id, row_id)"`));
      const run = await trialbridge(['check-mapping', mapping]);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/site-a\.yaml:15: source\.recordKey: invalid FHIRPath/);
      expect(run.stderr).toMatch(reason);
    }
  });
});

describe('units and reasons', () => {
  it("a name in a unit column is rejected naming file, row and field; the name reaches only the rejects file, not stdout", { timeout: CLI_TEST_MS }, async () => {
    const name = 'Wilhelmina Quillfeather';
    const input = await exportDir('export.csv', siteALine(RT_ROW, (l) => l.replace(',Gy,', `,${name},`)));
    const run = await map('mappings/site-a.yaml', input);
    expect(run.code).toBe(2);
    expect(run.stdout).toContain(`export.csv row ${RT_ROW} (R00004) field %doseUnit: unit: not a UCUM unit`);
    // Neither the reason nor the unit library (which logs what it could not parse) prints the name.
    expect(run.stdout + run.stderr).not.toContain('Wilhelmina');
    expect(await readFile(join(run.out, 'site-a.summary.json'), 'utf8')).not.toContain('Wilhelmina');
    const rejects = await rejectsOf(run.out, 'site-a');
    expect(rejects.find((r) => r.row === RT_ROW)).toMatchObject({ field: '%doseUnit', reason: 'unit: not a UCUM unit', value: name });
  });

  it('a 60 KB unit is refused before the unit library parses it', { timeout: CLI_TEST_MS }, async () => {
    const unit = `${'kg.'.repeat(20_000)}m`;
    const input = await exportDir('export.csv', siteALine(RT_ROW, (l) => l.replace(',Gy,', `,${unit},`)));
    const run = await map('mappings/site-a.yaml', input);
    expect(run.code).toBe(2);
    expect(run.stdout).toContain(`export.csv row ${RT_ROW} (R00004) field %doseUnit: unit: unit is 60001 characters long, over the limit of 64`);
  });
});

describe('source readers keep identifiers as written', () => {
  it('REDCap record ids 9007199254740993 and 9007199254740992 (JSON numbers beyond 2^53) stay two subjects', { timeout: CLI_TEST_MS }, async () => {
    const text = SITE_B_TEXT.replaceAll('"record_id":"101"', '"record_id":9007199254740993').replaceAll('"record_id":"102"', '"record_id":9007199254740992');
    const input = await exportDir('records.json', text);
    await copyFile('examples/site-b/data-dictionary.json', join(input, 'data-dictionary.json'));
    const baseline = await map('mappings/site-b.yaml', 'examples/site-b');
    const run = await map('mappings/site-b.yaml', input);
    expect(await summaryOf(run.out, 'site-b')).toEqual(await summaryOf(baseline.out, 'site-b'));
    const text2 = JSON.stringify(await bundlesOf(run.out, 'site-b'));
    expect(text2).toContain('"9007199254740993"');
    expect(text2).toContain('"9007199254740992"');
    // The terminal names rejects by file, row and field: REDCap record keys (`record_id:instrument:instance`) spell out the subject id.
    expect(run.stdout).toContain('records.json row 25 field ae_start: impossible date (ISO 8601): the day is past the end of the month (February has 28 or 29 days)');
    expect(run.stdout + baseline.stdout).not.toMatch(/900719925474099|\(\d+:[a-z_]+:\d+\)/);
    await rm(baseline.out, { recursive: true, force: true });
  });
});

describe('extends stays in the mapping directory, like ConceptMaps', () => {
  it('refuses an absolute path, .. out of the directory and a symbolic link out of it (even to /proc/self/environ)', { timeout: CLI_TEST_MS }, async () => {
    const outside = await baseMappingDir('tb-round2-outside-');
    dirs.push(outside);
    const site = await baseMappingDir('tb-round2-site-');
    dirs.push(site);
    await symlink('/proc/self/environ', join(site, 'environ.yaml'));
    await symlink(join(outside, 'ldccrt-hcc-base.yaml'), join(site, 'linked-base.yaml'));
    const cases = [
      [join(outside, 'ldccrt-hcc-base.yaml'), /is an absolute path/],
      [`../${outside.split('/').at(-1)}/ldccrt-hcc-base.yaml`, /is outside the directory of the mapping file that names it/],
      ['environ.yaml', /is outside the directory of the mapping file that names it/],
      ['linked-base.yaml', /is outside the directory of the mapping file that names it/],
    ] as const;
    for (const [target, reason] of cases) {
      await writeFile(join(site, 'site-a.yaml'), SITE_A_MAPPING.replace('extends: ldccrt-hcc-base.yaml', `extends: ${JSON.stringify(target)}`));
      const run = await trialbridge(['check-mapping', join(site, 'site-a.yaml')], { ...process.env, TB_ENVIRON_CANARY: 'canary-environ-value' });
      expect(run.code, target).toBe(1);
      expect(run.stderr, target).toMatch(/site-a\.yaml:\d+: extends: /);
      expect(run.stderr, target).toMatch(reason);
      expect(run.stderr).not.toContain('canary-environ-value');
    }
    // The base beside the site mapping still works.
    await writeFile(join(site, 'site-a.yaml'), SITE_A_MAPPING);
    expect((await trialbridge(['check-mapping', join(site, 'site-a.yaml')])).code).toBe(0);
  });
});

describe("expressions read a record's own fields only", () => {
  it('a field named constructor that the record lacks yields nothing in the resources (map), not Object internals', { timeout: CLI_TEST_MS }, async () => {
    const mapping = await siteAMapping((t) => t.replace('verbatim: { $expr: item_text }', 'verbatim: { $expr: constructor }'));
    const run = await map(mapping, 'examples/site-a');
    const bundles = await bundlesOf(run.out, 'site-a');
    expect(JSON.stringify(bundles)).not.toMatch(/native code|function/);
    // The adverse events map, without a text: the record has no such field.
    const events = bundles.flatMap((b) => (b.entry ?? []).map((e) => e.resource!)).filter((r): r is AdverseEvent => r.resourceType === 'AdverseEvent');
    expect(events.length).toBeGreaterThan(0);
    expect(events.filter((e) => e.event?.text !== undefined)).toEqual([]);
  });

  it("nor do toString, __proto__ or hasOwnProperty, on any evaluator, also for records whose fields have Object's prototype (as a job's JSON gives them)", () => {
    const fields = { AETERM: 'x' };
    const record: SourceRecord = { site: 's', file: 'f.csv', row: 2, type: 'constructor', subject: 'S1', key: 'K1', fields };
    const ctx = new EvalContext(record, [record], new Map());
    for (const name of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
      for (const expression of [name, `${name}.exists()`, `${name} & ''`, `iif(${name}.exists(), 'odd', 'ok')`, `%subject.all.${name}`, `'{{' & ${name}.toString() & '}}'`]) {
        const values = compileExpression(expression, new Map()).evaluate(ctx);
        expect(JSON.stringify(values), expression).not.toMatch(/native code|function|true|odd|\{\{[^}]/);
      }
    }
    // A record type named like an Object member is data: `%subject.constructor` lists those records.
    expect(compileExpression('%subject.constructor.AETERM', new Map()).evaluate(ctx)).toEqual(['x']);
  });
});

describe('terminal output', () => {
  it('map shows control characters of a record key escaped: no ANSI or OSC sequence reaches the terminal', { timeout: CLI_TEST_MS }, async () => {
    const key = '\u001b]0;pwned\u0007\u001b[2J\u001b[31mR00008';
    const input = await exportDir('export.csv', siteALine(AE_ROW, (l) => l.replace(/^R00008,/, `${key},`).replace(',FATG,', ',NOT-A-CODE,')));
    const run = await map('mappings/site-a.yaml', input);
    expect(run.code).toBe(2);
    expect(run.stdout).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/);
    expect(run.stdout).toContain('(\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mR00008)');
  });
});
