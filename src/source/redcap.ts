import { readJson } from './json.ts';
import { ownFields, SourceFileError, type RawRecord, type ReadLimits } from './raw.ts';

/** One row of a REDCap data dictionary export (JSON form). */
interface DictionaryRow {
  field_name: string;
  field_type?: string;
  select_choices_or_calculations?: string;
}

/** Parses REDCap's `1, Male | 2, Female` choice notation. */
export function parseChoices(spec: string): Map<string, string> {
  const choices = new Map<string, string>();
  for (const part of spec.split('|')) {
    const comma = part.indexOf(',');
    if (comma < 0) continue;
    choices.set(part.slice(0, comma).trim(), part.slice(comma + 1).trim());
  }
  return choices;
}

const CHOICE_TYPES = new Set(['radio', 'dropdown', 'checkbox', 'yesno', 'truefalse']);

/** Choice labels per field, from the data dictionary. */
export async function readDictionary(path: string, encoding?: string, limits?: Partial<ReadLimits>): Promise<Map<string, Map<string, string>>> {
  const rows = await readJson(path, { encoding, limits });
  const labels = new Map<string, Map<string, string>>();
  for (const { fields, problem, row: n, file } of rows) {
    if (problem) throw new SourceFileError(file, `data dictionary row ${n}: ${problem.reason}`, { line: n });
    const row = fields as unknown as DictionaryRow;
    if (!row.field_name) continue;
    if (row.field_type === 'yesno') labels.set(row.field_name, new Map([['1', 'Yes'], ['0', 'No']]));
    else if (row.field_type === 'truefalse') labels.set(row.field_name, new Map([['1', 'True'], ['0', 'False']]));
    else if (row.field_type && CHOICE_TYPES.has(row.field_type) && row.select_choices_or_calculations) {
      labels.set(row.field_name, parseChoices(row.select_choices_or_calculations));
    }
  }
  return labels;
}

/**
 * Reads a REDCap flat export: one row per record and repeating-instrument instance. The record type is the
 * repeating instrument (or `record` for the base row); coded choices gain a `<field>_label` with their label.
 */
export async function readRedcap(
  path: string,
  options: { encoding?: string; dictionary?: Map<string, Map<string, string>>; limits?: Partial<ReadLimits> } = {},
): Promise<RawRecord[]> {
  const rows = await readJson(path, { encoding: options.encoding, limits: options.limits });
  return rows.map((raw) => {
    if (raw.problem) return { ...raw, fileType: 'record' };
    if (Object.keys(raw.fields).length === 0) return { ...raw, fileType: 'record', problem: { field: '(record)', reason: `record ${raw.row} is empty` } };
    const fields = ownFields(raw.fields);
    if (options.dictionary) {
      for (const [name, value] of Object.entries(raw.fields)) {
        const label = options.dictionary.get(name)?.get(value);
        if (label !== undefined) fields[`${name}_label`] = label;
      }
    }
    return { ...raw, fields, fileType: fields.redcap_repeat_instrument ?? 'record' };
  });
}
