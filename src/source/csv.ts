import { basename } from 'node:path';
import { parse } from 'csv-parse/sync';
import { presentFields, readText, SourceFileError, type RawRecord } from './raw.ts';

export interface CsvOptions {
  readonly encoding?: string;
  readonly delimiter?: string;
  readonly fileType?: string;
}

/** Reads a delimited file with a header line; row numbers are file line numbers (header = 1). */
export async function readCsv(path: string, options: CsvOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  const text = await readText(path, options.encoding);
  let rows: { record: Record<string, string>; info: { lines: number } }[];
  try {
    rows = parse(text, {
      columns: (header: string[]) => header.map((h) => h.trim()),
      delimiter: options.delimiter ?? ',',
      info: true,
      skip_empty_lines: true,
      relax_quotes: true,
    });
  } catch (err) {
    throw new SourceFileError(file, `not a valid CSV file: ${(err as Error).message}`);
  }
  return rows.map(({ record, info }) => ({
    file,
    row: info.lines,
    fields: presentFields(record),
    ...(options.fileType ? { fileType: options.fileType } : {}),
  }));
}
