import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readCsv } from './csv.ts';
import { readNdjson } from './json.ts';
import { SourceFileError } from './raw.ts';
import { parseChoices, readDictionary, readRedcap } from './redcap.ts';

async function file(name: string, content: string | Buffer): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'src-'));
  await writeFile(join(dir, name), content);
  return join(dir, name);
}

describe('readCsv', () => {
  it('numbers rows by file line, drops empty cells, and copes with quoted line breaks and a BOM', async () => {
    const path = await file('ae.csv', '\uFEFFUSUBJID,AETERM,AEENDTC\nS1,"loose\nstools",\nS2,Nausea,2016-03\n');
    const rows = await readCsv(path, { fileType: 'AE' });
    expect(rows).toEqual([
      { file: 'ae.csv', row: 3, fields: { USUBJID: 'S1', AETERM: 'loose\nstools' }, fileType: 'AE' },
      { file: 'ae.csv', row: 4, fields: { USUBJID: 'S2', AETERM: 'Nausea', AEENDTC: '2016-03' }, fileType: 'AE' },
    ]);
  });

  it('reads the declared encoding and delimiter', async () => {
    const path = await file('x.csv', Buffer.from('name;city\nRen\xe9e;Gen\xe8ve\n', 'latin1'));
    expect((await readCsv(path, { encoding: 'latin1', delimiter: ';' }))[0].fields).toEqual({ name: 'Renée', city: 'Genève' });
    await expect(readCsv(path, { delimiter: ';' })).rejects.toThrow(/not valid utf-8 text/);
  });

  it('names the file of a broken CSV', async () => {
    const path = await file('bad.csv', 'a,b\n1,2,3\n');
    await expect(readCsv(path)).rejects.toThrow(SourceFileError);
    await expect(readCsv(path)).rejects.toThrow(/^bad\.csv: not a valid CSV file/);
  });
});

describe('readNdjson', () => {
  it('numbers records by line and names a bad line', async () => {
    expect((await readNdjson(await file('a.ndjson', '{"a":1}\n\n{"a":"x"}\n'))).map((r) => [r.row, r.fields.a])).toEqual([[1, '1'], [3, 'x']]);
    await expect(readNdjson(await file('b.ndjson', '{"a":1}\n{oops\n'))).rejects.toThrow(/b\.ndjson: line 2 is not valid JSON/);
  });
});

describe('REDCap', () => {
  it('parses choice notation', () => {
    expect([...parseChoices('1, Male | 2, Female, other')]).toEqual([['1', 'Male'], ['2', 'Female, other']]);
  });

  it('types rows by repeating instrument and adds choice labels from the dictionary', async () => {
    const dictionary = await readDictionary(await file('dd.json', JSON.stringify([
      { field_name: 'sex', field_type: 'radio', select_choices_or_calculations: '1, Male | 2, Female' },
      { field_name: 'ae_serious', field_type: 'yesno', select_choices_or_calculations: '' },
    ])));
    const rows = await readRedcap(await file('r.json', JSON.stringify([
      { record_id: '101', redcap_repeat_instrument: '', redcap_repeat_instance: '', sex: '2', ae_serious: '' },
      { record_id: '101', redcap_repeat_instrument: 'adverse_event', redcap_repeat_instance: '1', sex: '', ae_serious: '1' },
    ])), { dictionary });
    expect(rows.map((r) => [r.fileType, r.fields])).toEqual([
      ['record', { record_id: '101', sex: '2', sex_label: 'Female' }],
      ['adverse_event', { record_id: '101', redcap_repeat_instrument: 'adverse_event', redcap_repeat_instance: '1', ae_serious: '1', ae_serious_label: 'Yes' }],
    ]);
  });
});
