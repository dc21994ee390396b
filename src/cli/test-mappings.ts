import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Command } from 'commander';
import type { Resource } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { describeProblem } from '../source/record.ts';

/** Provenance.recorded used by every fixture, so expected files do not depend on file times. */
export const FIXTURE_RECORDED = '2020-01-01T00:00:00Z';

export interface FixtureResult {
  readonly mapping: string;
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

/** Every fixture of a mapping: `mappings/<site>/tests/<case>/` holds the input files and `expected.json`. */
export async function runMappingFixtures(mappingFile: string, update = false): Promise<FixtureResult[]> {
  const mapping = await compileMapping(await loadMapping(mappingFile));
  const testsDir = join(mappingFile.replace(/\.ya?ml$/, ''), 'tests');
  let cases: string[];
  try {
    cases = (await readdir(testsDir)).sort();
  } catch {
    return [];
  }
  const results: FixtureResult[] = [];
  for (const name of cases) {
    const dir = join(testsDir, name);
    if (!(await stat(dir)).isDirectory()) continue;
    const inputs = (await readdir(dir)).filter((f) => f !== 'expected.json').map((f) => join(dir, f));
    const mapped = await mapExport(mapping, inputs, { recorded: FIXTURE_RECORDED });
    const actual = {
      resources: mapped.bundles.flatMap((b) => (b.bundle.entry ?? []).map((e) => e.resource as Resource)),
      rejects: mapped.summary.rejects.map(describeProblem),
    };
    const expectedPath = join(dir, 'expected.json');
    if (update) {
      await writeFile(expectedPath, JSON.stringify(actual, null, 2) + '\n');
      results.push({ mapping: mappingFile, fixture: name, ok: true, differences: [] });
      continue;
    }
    let expected: unknown;
    try {
      expected = JSON.parse(await readFile(expectedPath, 'utf8'));
    } catch {
      results.push({ mapping: mappingFile, fixture: name, ok: false, differences: [`${expectedPath} is missing or not JSON (run with --update to create it)`] });
      continue;
    }
    const differences = jsonDifferences(expected, JSON.parse(JSON.stringify(actual)));
    results.push({ mapping: mappingFile, fixture: name, ok: differences.length === 0, differences });
  }
  return results;
}

export function registerTestMappings(program: Command): void {
  program
    .command('test-mappings')
    .description('run each mapping on its fixtures (mappings/<site>/tests/<case>/) and compare with expected.json')
    .argument('[mapping...]', 'mapping files (default: every mappings/*.yaml with a tests folder)')
    .option('--update', 'write expected.json from the current output (review the diff before committing)')
    .action(async (files: string[], options: { update?: boolean }) => {
      const mappings = files.length > 0 ? files : (await readdir('mappings')).filter((f) => /^site-.*\.ya?ml$/.test(f)).map((f) => join('mappings', f));
      let failed = 0;
      let total = 0;
      for (const file of mappings) {
        for (const result of await runMappingFixtures(file, options.update)) {
          total++;
          if (result.ok) console.log(`ok   ${basename(file)} ${result.fixture}`);
          else {
            failed++;
            console.log(`FAIL ${basename(file)} ${result.fixture}`);
            for (const line of result.differences.slice(0, 40)) console.log(`     ${line}`);
            if (result.differences.length > 40) console.log(`     ... ${result.differences.length - 40} more`);
          }
        }
      }
      console.log(`${total - failed} fixtures passed, ${failed} failed`);
      process.exitCode = failed > 0 ? 1 : 0;
    });
}
