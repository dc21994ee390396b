import { createHash } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readCsv } from './csv.ts';
import { readJson, readNdjson } from './json.ts';
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
    const digest = createHash('sha256').update(await readFile(path)).digest('hex');
    expect(rows).toEqual([
      { file: 'ae.csv', row: 3, fields: { USUBJID: 'S1', AETERM: 'loose\nstools' }, fileType: 'AE', digest },
      { file: 'ae.csv', row: 4, fields: { USUBJID: 'S2', AETERM: 'Nausea', AEENDTC: '2016-03' }, fileType: 'AE', digest },
    ]);
  });

  it('reads the declared encoding and delimiter', async () => {
    const path = await file('x.csv', Buffer.from('name;city\nRen\xe9e;Gen\xe8ve\n', 'latin1'));
    expect((await readCsv(path, { encoding: 'latin1', delimiter: ';' }))[0].fields).toEqual({ name: 'Renée', city: 'Genève' });
    await expect(readCsv(path, { delimiter: ';' })).rejects.toThrow(/^x\.csv: not valid UTF-8: byte 0xE9 at byte offset 13 \(line 2\)/);
  });

  it('names the file and line of a CSV it cannot read past, and rejects only the ragged row of one it can', async () => {
    const path = await file('bad.csv', 'a,b\n1,"2\n3,4\n');
    await expect(readCsv(path)).rejects.toThrow(SourceFileError);
    await expect(readCsv(path)).rejects.toThrow(/^bad\.csv: unbalanced quotes: a quoted field opened on line 2 is never closed/);
    const ragged = await readCsv(await file('ragged.csv', 'a,b\n1,2,3\n4,5\n'));
    expect(ragged.map((r) => [r.row, r.fields, r.problem?.field])).toEqual([
      [2, {}, '(row)'],
      [3, { a: '4', b: '5' }, undefined],
    ]);
  });
});

describe('readNdjson', () => {
  it('numbers records by line and rejects a bad line on its own', async () => {
    expect((await readNdjson(await file('a.ndjson', '{"a":1}\n\n{"a":"x"}\n'))).map((r) => [r.row, r.fields.a])).toEqual([[1, '1'], [3, 'x']]);
    const rows = await readNdjson(await file('b.ndjson', '{"a":1}\n{oops\n{"a":3}\n'));
    expect(rows.map((r) => [r.row, r.fields.a, r.problem?.reason])).toEqual([
      [1, '1', undefined],
      [2, undefined, 'line 2 is not valid JSON: syntax error at column 2'],
      [3, '3', undefined],
    ]);
  });
});

describe('readJson', () => {
  it('rejects a record with a duplicate key on its own, and refuses a duplicate outside the records', async () => {
    const path = await file('r.json', '{"meta":{"v":1},"records":[{"id":"1","x":"a"},{"id":"2","x":"a","x":"b"}]}');
    const rows = await readJson(path, { recordsAt: 'records' });
    expect(rows.map((r) => [r.row, r.fields, r.problem?.field])).toEqual([
      [1, { id: '1', x: 'a' }, undefined],
      [2, {}, 'x'],
    ]);
    await expect(readJson(await file('s.json', '{"records":[],"records":[{"id":"1"}]}'), { recordsAt: 'records' })).rejects.toThrow(
      /^s\.json: duplicate key 'records' in the top level \(line 1\)/,
    );
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
