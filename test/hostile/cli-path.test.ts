/**
 * Hostile and bad input on the command-line path: the source readers and mapExport, as `trialbridge map`
 * runs them (and twice through the real binary). Each input of inputs.ts gets its verdict: the file refused
 * with a reason naming file and line, or only the bad rows rejected while everything else maps as before.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import type { AdverseEvent, Resource } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { SourceFileError } from '../../src/source/raw.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { AE_ROW, FORMULA, HOSTILE_INPUTS, SITE_A_TEXT, type HostileInput } from './inputs.ts';

const RECORDED = '2020-01-01T00:00:00Z';
const mappings = new Map<string, CompiledMapping>();
const baselines = new Map<string, MappedExport>();
let validator: ResourceValidator;
const dirs: string[] = [];

async function exportDir(input: Pick<HostileInput, 'site' | 'file' | 'content'>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tb-hostile-'));
  dirs.push(dir);
  await writeFile(join(dir, input.file), input.content);
  if (input.site === 'site-b') await copyFile('examples/site-b/data-dictionary.json', join(dir, 'data-dictionary.json'));
  return dir;
}

function map(site: string, dir: string): Promise<MappedExport> {
  return mapExport(mappings.get(site)!, [dir], { recorded: RECORDED, validator });
}

const rejectKeys = (m: MappedExport) => m.summary.rejects.map((r) => `${r.file}#${r.row}:${r.field}`).sort();
/** Every resource but the Provenance (whose source digest changes with the bytes). */
const resources = (m: MappedExport): Resource[] => m.bundles.flatMap((b) => (b.bundle.entry ?? []).map((e) => e.resource!)).filter((r) => r.resourceType !== 'Provenance');

beforeAll(async () => {
  validator = await defaultValidator();
  for (const site of ['site-a', 'site-b']) {
    const mapping = await compileMapping(await loadMapping(`mappings/${site}.yaml`));
    mappings.set(site, mapping);
    baselines.set(site, await mapExport(mapping, [`examples/${site}`], { recorded: RECORDED, validator }));
  }
});

afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

describe('hostile input on the CLI path (readers + mapExport)', () => {
  it.each(HOSTILE_INPUTS.map((input) => [input.name, input] as const))('%s', async (_name, input) => {
    const dir = await exportDir(input);
    const baseline = baselines.get(input.site)!;
    const expectation = input.expect;
    if (expectation.kind === 'file') {
      const error = await map(input.site, dir).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(SourceFileError);
      const e = error as SourceFileError;
      expect(e.file).toBe(input.file);
      expect(e.message.startsWith(`${input.file}: `)).toBe(true);
      expect(e.message).toMatch(expectation.reason);
      if (expectation.line !== undefined) expect(e.line).toBe(expectation.line);
      // The reason quotes nothing from the file.
      expect(e.message).not.toMatch(/Jane Doe|FATIGUE|A001/);
      return;
    }
    const mapped = await map(input.site, dir);
    if (expectation.kind === 'nothing') {
      expect(mapped.summary).toMatchObject({ recordsRead: 0, subjects: 0, recordsRejected: 0 });
      return;
    }
    if (expectation.kind === 'same') {
      expect(rejectKeys(mapped)).toEqual(rejectKeys(baseline));
      expect(JSON.stringify(resources(mapped))).toBe(JSON.stringify(resources(baseline)));
      return;
    }
    const extra = expectation.rows.map((r) => `${input.file}#${r.row}:${r.field}`);
    expect(rejectKeys(mapped)).toEqual([...rejectKeys(baseline), ...extra].sort());
    for (const want of expectation.rows) {
      const got = mapped.summary.rejects.find((r) => r.row === want.row && r.field === want.field)!;
      expect(got.reason).toMatch(want.reason);
      expect(got.key).toBe(`${input.file}#${want.row}`);
    }
    // Good records of the same file (and of the same subject) still map.
    expect(mapped.summary.subjects).toBe(baseline.summary.subjects);
    expect(resources(mapped).length).toBe(resources(baseline).length - expectation.rows.length);
  });

  it('keeps a formula in a free-text value as plain JSON text in the FHIR resource, and writes no spreadsheet format', async () => {
    const input = HOSTILE_INPUTS.find((i) => i.name.startsWith('CSV formula injection'))!;
    const mapped = await map('site-a', await exportDir(input));
    const events = resources(mapped).filter((r): r is AdverseEvent => r.resourceType === 'AdverseEvent');
    expect(events.filter((e) => e.event?.text === FORMULA)).toHaveLength(1);
  });

  it('refuses a file over the size limit before reading it (TRIALBRIDGE_MAX_FILE_BYTES)', async () => {
    const dir = await exportDir({ site: 'site-a', file: 'export.csv', content: Buffer.from(SITE_A_TEXT) });
    const previous = process.env.TRIALBRIDGE_MAX_FILE_BYTES;
    process.env.TRIALBRIDGE_MAX_FILE_BYTES = '1024';
    try {
      await expect(map('site-a', dir)).rejects.toThrow(/^export\.csv: file is \d+\.\d KiB, over the limit of 1\.0 KiB$/);
    } finally {
      if (previous === undefined) delete process.env.TRIALBRIDGE_MAX_FILE_BYTES;
      else process.env.TRIALBRIDGE_MAX_FILE_BYTES = previous;
    }
  });

  it('trialbridge map: exit 1 naming the file for an unreadable one, exit 2 naming the row for a ragged one', async () => {
    const run = promisify(execFile);
    const cli = async (dir: string) =>
      run(process.execPath, ['src/cli/main.ts', 'map', '-m', 'mappings/site-a.yaml', dir, '-o', join(dir, 'out'), '--recorded', RECORDED]).then(
        ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
    const binary = await cli(await exportDir(HOSTILE_INPUTS.find((i) => i.name.startsWith('binary data'))!));
    expect(binary.code).toBe(1);
    expect(binary.stderr.trim()).toBe('export.csv: binary data: a NUL byte at byte offset 18 (line 2); not a text export');
    const raggedDir = await exportDir(HOSTILE_INPUTS.find((i) => i.name === 'ragged row: a field missing')!);
    const ragged = await cli(raggedDir);
    expect(ragged.code).toBe(2);
    expect(ragged.stdout).toContain(`export.csv row ${AE_ROW} (export.csv#${AE_ROW}) field (row): the row has 19 fields, the header has 20`);
    // The rejects file keeps the row's place and reason; the values of a malformed row (maybe shifted) are not carried.
    const rejects = (await readFile(join(raggedDir, 'out', 'site-a.rejects.ndjson'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { row: number; value?: string });
    expect(rejects.find((r) => r.row === AE_ROW)).toEqual({ file: 'export.csv', row: AE_ROW, key: `export.csv#${AE_ROW}`, field: '(row)', reason: expect.stringMatching(/19 fields/) });
  });
});

describe('source digests', () => {
  it('name every source file of a subject in its Provenance, and change with the bytes', async () => {
    const provenance = (m: MappedExport) => m.bundles[0].bundle.entry!.at(-1)!.resource!;
    const baseline = baselines.get('site-a')!;
    const bytes = await readFile('examples/site-a/export.csv');
    const { createHash } = await import('node:crypto');
    expect(provenance(baseline)).toMatchObject({
      extension: [
        {
          url: 'https://trialbridge.dev/fhir/StructureDefinition/source-file',
          extension: [
            { url: 'name', valueString: 'export.csv' },
            { url: 'sha256', valueString: createHash('sha256').update(bytes).digest('hex') },
          ],
        },
      ],
    });
    const changed = await map('site-a', await exportDir({ site: 'site-a', file: basename('export.csv'), content: Buffer.concat([bytes, Buffer.from('\n')]) }));
    expect(JSON.stringify(provenance(changed))).not.toBe(JSON.stringify(provenance(baseline)));
  });
});
