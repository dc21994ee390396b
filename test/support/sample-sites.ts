/**
 * The three sample sites mapped once per test file, with what a FHIR server must hold after they are
 * delivered, and helpers to read that back by FHIR search.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { FhirClient } from '../../src/delivery/client.ts';
import { loadDestinations, type Destination } from '../../src/delivery/destinations.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';

export const RECORDED = '2019-01-01T00:00:00Z';
export const SITES = [
  { site: 'site-a', mapping: 'mappings/site-a.yaml', inputs: ['examples/site-a'] },
  { site: 'site-b', mapping: 'mappings/site-b.yaml', inputs: ['examples/site-b'] },
  { site: 'site-c', mapping: 'mappings/site-c.yaml', inputs: ['examples/site-c'] },
] as const;

export interface SampleSites {
  readonly mappings: CompiledMapping[];
  readonly validator: ResourceValidator;
  readonly exports: MappedExport[];
  /** Resources per type a server holds once every site is delivered (one ResearchStudy for the trial). */
  readonly expected: Record<string, number>;
  readonly bundles: number;
}

export async function mapSampleSites(): Promise<SampleSites> {
  const validator = await defaultValidator();
  const mappings: CompiledMapping[] = [];
  const exports: MappedExport[] = [];
  const expected: Record<string, number> = {};
  for (const s of SITES) {
    const mapping = await compileMapping(await loadMapping(s.mapping));
    mappings.push(mapping);
    const mapped = await mapExport(mapping, s.inputs, { recorded: RECORDED, validator });
    exports.push(mapped);
    for (const [type, n] of Object.entries(mapped.summary.resourcesByType)) expected[type] = (expected[type] ?? 0) + n;
  }
  expected.ResearchStudy = 1;
  return { mappings, validator, exports, expected, bundles: exports.reduce((n, e) => n + e.bundles.length, 0) };
}

/** What a server holds, per resource type of `expected`, by FHIR search (`_summary=count`). */
export async function serverCounts(baseUrl: string, expected: Record<string, number>, headers: Record<string, string> = {}): Promise<Record<string, number>> {
  const client = new FhirClient({ baseUrl, headers });
  const out: Record<string, number> = {};
  for (const type of Object.keys(expected).sort()) {
    out[type] = (await client.get<{ total?: number }>(`${type}?_summary=count`)).body?.total ?? 0;
  }
  return out;
}

/** Loads destinations from YAML lines written to a temporary file (the real loader, schema and secrets). */
export async function destinationsFrom(lines: readonly string[], env: Record<string, string> = {}, files: Record<string, string> = {}): Promise<Destination[]> {
  const dir = await mkdtemp(join(tmpdir(), 'tb-destinations-'));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  const file = join(dir, `${randomUUID()}.yaml`);
  await writeFile(file, ['destinations:', ...lines].join('\n') + '\n');
  return loadDestinations(file, env);
}
