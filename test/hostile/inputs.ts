/**
 * Hostile and bad exports, built from the sample sites: each is one file of a site's export with one thing
 * wrong, and what trialbridge must do with it. The CLI-path test (readers + mapExport) and the API test
 * (POST /v1/sites/{site}/submissions) both go through this list, so the two paths answer alike.
 */
import { readFileSync } from 'node:fs';

export type Expectation =
  /** The file is refused as a whole: a clear reason naming the file (and line where there is one). */
  | { readonly kind: 'file'; readonly reason: RegExp; readonly line?: number; readonly tooLarge?: boolean }
  /** Only these rows are rejected (beyond the site's planted rejects); every other record maps as before. */
  | { readonly kind: 'rows'; readonly rows: readonly { readonly row: number; readonly field: string; readonly reason: RegExp }[] }
  /** The export maps exactly like the original. */
  | { readonly kind: 'same' }
  /** Read without error and nothing to map (no records). */
  | { readonly kind: 'nothing' };

export interface HostileInput {
  readonly name: string;
  readonly site: 'site-a' | 'site-b';
  readonly file: string;
  readonly content: Buffer;
  readonly expect: Expectation;
}

const SITE_A = 'examples/site-a/export.csv';
const SITE_B = 'examples/site-b/records.json';
export const SITE_A_TEXT = readFileSync(SITE_A, 'utf8');
export const SITE_B_TEXT = readFileSync(SITE_B, 'utf8');

/** Site A's export with line `line` (1-based, header = 1) rewritten. */
function siteALine(line: number, edit: (text: string) => string): string {
  const lines = SITE_A_TEXT.split('\n');
  lines[line - 1] = edit(lines[line - 1]);
  return lines.join('\n');
}

/** Site B's records.json (one record per line, record n on line n + 1) with record `n` rewritten. */
function siteBRecord(n: number, edit: (text: string) => string): string {
  const lines = SITE_B_TEXT.split('\n');
  lines[n] = edit(lines[n]);
  return lines.join('\n');
}

const utf8 = (text: string) => Buffer.from(text, 'utf8');

function utf16be(text: string): Buffer {
  const le = Buffer.from(text, 'utf16le');
  for (let i = 0; i + 1 < le.length; i += 2) [le[i], le[i + 1]] = [le[i + 1], le[i]];
  return le;
}

/** The last line of site A's export with a quote in it (a quote opened after it is never closed). */
const LAST_QUOTE_LINE = SITE_A_TEXT.split('\n').findLastIndex((l) => l.includes('"')) + 1;

/** Row 9 of site A: R00008, an adverse event of A001 (item_text FATIGUE); row 8: R00007, another one. */
export const AE_ROW = 9;
export const OTHER_AE_ROW = 8;
export const FORMULA = "=cmd|' /C calc'!A0";
/** Site A's row 9 with a Latin-1 é: byte offset of that byte in the file. */
const latin1 = Buffer.from(siteALine(AE_ROW, (l) => l.replace('FATIGUE', 'FATIGU\u00c9')), 'latin1');

export const HOSTILE_INPUTS: readonly HostileInput[] = [
  {
    name: 'ragged row: a field missing',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(AE_ROW, (l) => l.replace(',RECOVERED,,,,', ',RECOVERED,,,'))),
    expect: { kind: 'rows', rows: [{ row: AE_ROW, field: '(row)', reason: /the row has 19 fields, the header has 20/ }] },
  },
  {
    name: 'ragged row: an unquoted delimiter in a value',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(AE_ROW, (l) => l.replace('FATIGUE', 'FATIGUE, severe'))),
    expect: { kind: 'rows', rows: [{ row: AE_ROW, field: '(row)', reason: /the row has 21 fields, the header has 20/ }] },
  },
  {
    name: 'unbalanced quotes, closed by a quote further down',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(AE_ROW, (l) => l.replace('FATIGUE', '"FATIGUE'))),
    expect: { kind: 'file', line: AE_ROW, reason: new RegExp(`unbalanced quotes: a quoted field opened on line ${AE_ROW} runs to line \\d+, swallowing the rows between`) },
  },
  {
    name: 'unbalanced quotes, never closed',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(LAST_QUOTE_LINE + 2, (l) => l.replace(',', ',"'))),
    expect: { kind: 'file', line: LAST_QUOTE_LINE + 2, reason: new RegExp(`unbalanced quotes: a quoted field opened on line ${LAST_QUOTE_LINE + 2} is never closed`) },
  },
  {
    name: 'wrong delimiter (semicolons, the mapping declares commas)',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(SITE_A_TEXT.replace(/"nausea, intermittent"/g, 'nausea intermittent').replaceAll(',', ';')),
    expect: { kind: 'file', line: 1, reason: /seems delimited by ';', the mapping declares ','/ },
  },
  {
    name: 'duplicate column names',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(1, (l) => l.replace('item_text', 'item_code'))),
    expect: { kind: 'file', line: 1, reason: /duplicate column name 'item_code' in the header \(columns 6 and 7\)/ },
  },
  {
    name: 'Latin-1 bytes in a file read as UTF-8',
    site: 'site-a',
    file: 'export.csv',
    content: latin1,
    expect: { kind: 'file', line: AE_ROW, reason: new RegExp(`not valid UTF-8: byte 0xC9 at byte offset ${latin1.indexOf(0xc9)} \\(line ${AE_ROW}\\)`) },
  },
  { name: 'UTF-8 with a byte-order mark', site: 'site-a', file: 'export.csv', content: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), utf8(SITE_A_TEXT)]), expect: { kind: 'same' } },
  { name: 'UTF-16 LE with a byte-order mark', site: 'site-a', file: 'export.csv', content: Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(SITE_A_TEXT, 'utf16le')]), expect: { kind: 'same' } },
  { name: 'UTF-16 BE with a byte-order mark', site: 'site-a', file: 'export.csv', content: Buffer.concat([Buffer.from([0xfe, 0xff]), utf16be(SITE_A_TEXT)]), expect: { kind: 'same' } },
  {
    name: 'UTF-16 without a byte-order mark',
    site: 'site-a',
    file: 'export.csv',
    content: Buffer.from(SITE_A_TEXT, 'utf16le'),
    expect: { kind: 'file', reason: /looks like UTF-16 text without a byte-order mark/ },
  },
  {
    name: 'binary data (NUL bytes)',
    site: 'site-a',
    file: 'export.csv',
    content: Buffer.concat([utf8('row_id,subject_id\n'), Buffer.from([0x00, 0x13, 0x37, 0xfe, 0x00, 0x00, 0x42])]),
    expect: { kind: 'file', line: 2, reason: /binary data: a NUL byte at byte offset 18 \(line 2\)/ },
  },
  {
    name: 'an Excel workbook instead of CSV',
    site: 'site-a',
    file: 'export.csv',
    content: Buffer.concat([Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0x00]), Buffer.alloc(64, 7)]),
    expect: { kind: 'file', reason: /binary data: this is a ZIP archive \(an \.xlsx workbook\?\)/ },
  },
  { name: 'empty file', site: 'site-a', file: 'export.csv', content: Buffer.alloc(0), expect: { kind: 'file', reason: /empty file \(0 bytes\)/ } },
  { name: 'blank file', site: 'site-a', file: 'export.csv', content: utf8(' \r\n\n  \n'), expect: { kind: 'file', reason: /empty file \(only blank space\)/ } },
  { name: 'header only', site: 'site-a', file: 'export.csv', content: utf8(SITE_A_TEXT.split('\n')[0] + '\n'), expect: { kind: 'nothing' } },
  {
    name: 'a field of 70 000 characters',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(AE_ROW, (l) => l.replace('FATIGUE', 'F'.repeat(70_000)))),
    expect: { kind: 'rows', rows: [{ row: AE_ROW, field: 'item_text', reason: /value is 70000 characters long, over the limit of 65536/ }] },
  },
  {
    name: 'a value under a column without a name',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(SITE_A_TEXT.split('\n').map((l, i) => (i === 0 ? `${l},` : i === OTHER_AE_ROW - 1 ? `${l},stray` : l === '' ? l : `${l},`)).join('\n')),
    expect: { kind: 'rows', rows: [{ row: OTHER_AE_ROW, field: '(column 21)', reason: /a value under column 21, which has no name in the header/ }] },
  },
  {
    name: 'CSV formula injection in a free-text value',
    site: 'site-a',
    file: 'export.csv',
    content: utf8(siteALine(AE_ROW, (l) => l.replace('FATIGUE', `"${FORMULA.replaceAll('"', '""')}"`))),
    // Mapped like any text: FHIR JSON is not a spreadsheet (see README, "Security and hostile input").
    expect: { kind: 'rows', rows: [] },
  },
  {
    name: 'JSON: a key twice in one record',
    site: 'site-b',
    file: 'records.json',
    content: utf8(siteBRecord(5, (l) => l.replace('"haic_cycle":', '"haic_cycle":"9","haic_cycle":'))),
    expect: { kind: 'rows', rows: [{ row: 5, field: 'haic_cycle', reason: /key 'haic_cycle' appears twice in the record; JSON\.parse would silently keep only the last/ }] },
  },
  {
    name: 'JSON: a record that is not an object',
    site: 'site-b',
    file: 'records.json',
    content: utf8(siteBRecord(5, () => '"Jane Doe, born 1950-01-01",')),
    expect: { kind: 'rows', rows: [{ row: 5, field: '(record)', reason: /record 5 is not a JSON object/ }] },
  },
  {
    name: 'JSON: nested 100 000 levels deep',
    site: 'site-b',
    file: 'records.json',
    content: utf8(siteBRecord(5, (l) => l.replace('"haic_cycle":', `"nested":${'['.repeat(100_000)}${']'.repeat(100_000)},"haic_cycle":`))),
    expect: { kind: 'file', line: 6, reason: /JSON nested deeper than 32 levels \(at \[4\]\.nested/ },
  },
  {
    name: 'JSON: a syntax error next to a name',
    site: 'site-b',
    file: 'records.json',
    content: utf8(siteBRecord(5, (l) => l.replace('{', '{"patient":"Jane Doe" "x":1,'))),
    expect: { kind: 'file', line: 6, reason: /not valid JSON: syntax error at line 6, column \d+/ },
  },
  {
    name: 'JSON: an object instead of the array of records',
    site: 'site-b',
    file: 'records.json',
    content: utf8('{"records": []}'),
    expect: { kind: 'file', reason: /expected a JSON array of records/ },
  },
];
