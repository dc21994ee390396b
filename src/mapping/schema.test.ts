import { cp, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { loadMapping } from './load.ts';
import { PUBLISHED_SCHEMA_FILE, publishedMappingSchema } from './schema.ts';

const sampleMappings = async () => (await readdir('mappings')).filter((f) => f.endsWith('.yaml')).map((f) => join('mappings', f));

describe('published mapping schema', () => {
  it('is the one generated from schema.ts (regenerate with node scripts/write-mapping-schema.ts)', async () => {
    expect(JSON.parse(await readFile(PUBLISHED_SCHEMA_FILE, 'utf8'))).toEqual(publishedMappingSchema());
  });

  it('accepts every sample mapping file on its own (base and sites) and catches a misspelled key', async () => {
    const validate = new Ajv({ allErrors: true, strict: false }).compile(publishedMappingSchema());
    const files = await sampleMappings();
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const file of files) {
      const ok = validate(parse(await readFile(file, 'utf8')));
      expect({ file, errors: validate.errors ?? null, ok }).toEqual({ file, errors: null, ok: true });
    }
    expect(validate({ source: { recordsAt: 'data', files: [{ match: 'x.csv', optinal: true }] } })).toBe(false);
    expect(validate.errors?.[0]).toMatchObject({ keyword: 'additionalProperties', params: { additionalProperty: 'optinal' } });
  });

  it('is named on the first line of every sample mapping, for yaml-language-server', async () => {
    for (const file of await sampleMappings()) {
      expect((await readFile(file, 'utf8')).split('\n')[0]).toBe('# yaml-language-server: $schema=mapping.schema.json');
    }
  });

  it('a $schema key is accepted by the loader and left out of the mapping', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'schema-key-'));
    await cp('mappings', dir, { recursive: true });
    const site = await readFile('mappings/site-a.yaml', 'utf8');
    await writeFile(join(dir, 'site-a.yaml'), `$schema: ./mapping.schema.json\n${site}`);
    const loaded = await loadMapping(join(dir, 'site-a.yaml'));
    expect(loaded.spec.site).toBe('site-a');
    expect('$schema' in loaded.spec).toBe(false);
  });
});
