import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import type { Resource } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { describeProblem } from '../source/record.ts';
import { terminalSafe } from '../terminal.ts';

/** Provenance.recorded used by every fixture, so expected files do not depend on file times. */
export const FIXTURE_RECORDED = '2020-01-01T00:00:00Z';

export interface FixtureResult {
  readonly mapping: string;
  /** The mapping's `site`: fixtures are reported as `<site>: <case>` (a mapping file may be called anything). */
  readonly site: string;
  readonly fixture: string;
  readonly ok: boolean;
  readonly differences: string[];
}

/** Paths where two JSON values differ, as `path: expected X, got Y` lines. */
export function jsonDifferences(expected: unknown, actual: unknown, path = '$'): string[] {
  if (JSON.stringify(expected) === JSON.stringify(actual)) return [];
  const isObj = (v: unknown) => v !== null && typeof v === 'object';
  if (!isObj(expected) || !isObj(actual) || Array.isArray(expected) !== Array.isArray(actual)) {
    return [`${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`];
  }
  const e = expected as Record<string, unknown>;
  const a = actual as Record<string, unknown>;
  const keys = [...new Set([...Object.keys(e), ...Object.keys(a)])];
  return keys.flatMap((k) => jsonDifferences(e[k], a[k], Array.isArray(expected) ? `${path}[${k}]` : `${path}.${k}`));
}

/**
 * Folders that may hold a mapping's fixtures, in the order they are tried: `<dir>/<site>/tests/` (the documented
 * place, beside the mapping file), then `<dir>/<mapping file name>/tests/` (where fixtures were read from before;
 * the same folder for the sample sites, whose files are named after their site) and `<dir>/tests/` (a mapping in
 * a folder of its own).
 */
export function fixtureFolders(mappingFile: string, site: string): string[] {
  const dir = dirname(mappingFile);
  return [...new Set([join(dir, site, 'tests'), join(mappingFile.replace(/\.ya?ml$/i, ''), 'tests'), join(dir, 'tests')])];
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** Every fixture of a mapping: `<site>/tests/<case>/` beside the mapping file holds the input files and `expected.json`. */
export async function runMappingFixtures(mappingFile: string, update = false): Promise<FixtureResult[]> {
  const mapping = await compileMapping(await loadMapping(mappingFile));
  let testsDir: string | undefined;
  for (const folder of fixtureFolders(mappingFile, mapping.site)) {
    if (await isDirectory(folder)) {
      testsDir = folder;
      break;
    }
  }
  if (!testsDir) return [];
  const cases = (await readdir(testsDir)).sort();
  const site = mapping.site;
  const results: FixtureResult[] = [];
  for (const name of cases) {
    const dir = join(testsDir, name);
    if (!(await isDirectory(dir))) continue;
    const inputs = (await readdir(dir)).filter((f) => f !== 'expected.json').map((f) => join(dir, f));
    const mapped = await mapExport(mapping, inputs, { recorded: FIXTURE_RECORDED });
    const actual = {
      resources: mapped.bundles.flatMap((b) => (b.bundle.entry ?? []).map((e) => e.resource as Resource)),
      rejects: mapped.summary.rejects.map(describeProblem),
    };
    const expectedPath = join(dir, 'expected.json');
    if (update) {
      await writeFile(expectedPath, JSON.stringify(actual, null, 2) + '\n');
      results.push({ mapping: mappingFile, site, fixture: name, ok: true, differences: [] });
      continue;
    }
    let expected: unknown;
    try {
      expected = JSON.parse(await readFile(expectedPath, 'utf8'));
    } catch {
      results.push({ mapping: mappingFile, site, fixture: name, ok: false, differences: [`${expectedPath} is missing or not JSON (run with --update to create it)`] });
      continue;
    }
    const differences = jsonDifferences(expected, JSON.parse(JSON.stringify(actual)));
    results.push({ mapping: mappingFile, site, fixture: name, ok: differences.length === 0, differences });
  }
  return results;
}

export function registerTestMappings(program: Command): void {
  program
    .command('test-mappings')
    .description('run each mapping on its fixtures (<site>/tests/<case>/ beside the mapping file) and compare with expected.json')
    .argument('[mapping...]', 'mapping files (default: every mappings/site-*.yaml)')
    .option('--update', 'write expected.json from the current output (review the diff before committing)')
    .option('--allow-empty', 'a mapping without fixtures passes (by default it fails: an untested mapping is not a passing one)')
    .action(async (files: string[], options: { update?: boolean; allowEmpty?: boolean }) => {
      const mappings = files.length > 0 ? files : (await readdir('mappings')).filter((f) => /^site-.*\.ya?ml$/.test(f)).map((f) => join('mappings', f));
      let failed = 0;
      let total = 0;
      let empty = 0;
      for (const file of mappings) {
        const results = await runMappingFixtures(file, options.update);
        if (results.length === 0) {
          const { site } = (await loadMapping(file)).spec;
          const where = fixtureFolders(file, site).join(', ');
          if (options.allowEmpty) console.log(terminalSafe(`skip ${site}: no fixtures (looked in ${where})`));
          else {
            empty++;
            console.log(terminalSafe(`FAIL ${site}: no fixtures for ${file} (looked in ${where}); add ${join(dirname(file), site, 'tests', '<case>')}/ with the input files and expected.json (test-mappings --update writes it), or pass --allow-empty`));
          }
        }
        for (const result of results) {
          total++;
          const label = terminalSafe(`${result.site}: ${result.fixture}`);
          if (result.ok) console.log(`ok   ${label}`);
          else {
            failed++;
            console.log(`FAIL ${label}`);
            for (const line of result.differences.slice(0, 40)) console.log(`     ${line}`);
            if (result.differences.length > 40) console.log(`     ... ${result.differences.length - 40} more`);
          }
        }
      }
      console.log(`${total - failed} fixtures passed, ${failed} failed${empty > 0 ? `, ${empty} mapping${empty === 1 ? '' : 's'} without fixtures` : ''}`);
      process.exitCode = failed > 0 || empty > 0 ? 1 : 0;
    });
}
