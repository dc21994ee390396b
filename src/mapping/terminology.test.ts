import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { conceptMapTranslation, UnmappedCodeError, valueMapTranslation } from './terminology.ts';

describe('value maps', () => {
  it('maps local codes to codings, case-insensitively when asked', () => {
    const map = valueMapTranslation('ae', { system: 'https://www.meddra.org', caseInsensitive: true, map: { DIAR: { code: '10012735', display: 'Diarrhoea' } } });
    expect(map.translate(' diar ')).toEqual({ system: 'https://www.meddra.org', code: '10012735', display: 'Diarrhoea' });
    expect(() => map.translate('XYZ')).toThrow(UnmappedCodeError);
  });

  it('follows the unmapped policy: omit or a default', () => {
    expect(valueMapTranslation('a', { unmapped: 'omit', map: { A: 'x' } }).translate('B')).toBeUndefined();
    expect(valueMapTranslation('a', { system: 's', unmapped: { default: 'UNK' }, map: { A: 'x' } }).translate('B')).toEqual({ system: 's', code: 'UNK' });
    expect(() => valueMapTranslation('a', { map: { A: 'x' } }).translate('a')).toThrow(/not in value map 'a'/);
  });
});

describe('ConceptMap', () => {
  it('translates listed codes and honours unmapped mode provided', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-'));
    const path = join(dir, 'cm.json');
    await writeFile(path, JSON.stringify({
      resourceType: 'ConceptMap', status: 'active',
      group: [{ source: 'https://www.meddra.org', target: 'https://www.meddra.org', element: [{ code: '10012727', target: [{ code: '10012735', equivalence: 'wider' }] }], unmapped: { mode: 'provided' } }],
    }));
    const map = await conceptMapTranslation('llt', path);
    expect(map.translate('10012727')).toEqual({ system: 'https://www.meddra.org', code: '10012735' });
    expect(map.translate('10028813')).toEqual({ system: 'https://www.meddra.org', code: '10028813' });
  });

  it('refuses a file that is not a ConceptMap', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cm-'));
    await writeFile(join(dir, 'x.json'), '{"resourceType":"ValueSet"}');
    await expect(conceptMapTranslation('x', join(dir, 'x.json'))).rejects.toThrow(/not a FHIR ConceptMap/);
  });
});
