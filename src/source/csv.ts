import { basename } from 'node:path';
import { parse, type CsvError } from 'csv-parse/sync';
import { overlongField, presentFields, readLimits, readSourceText, SourceFileError, type RawRecord, type ReadLimits, type RowProblem } from './raw.ts';

export interface CsvOptions {
  readonly encoding?: string;
  readonly delimiter?: string;
  readonly fileType?: string;
  readonly limits?: Partial<ReadLimits>;
}

const OTHER_DELIMITERS = [',', ';', '\t', '|'];

function delimiterName(d: string): string {
  return d === '\t' ? 'tab' : `'${d}'`;
}

function errorLine(err: CsvError): number | undefined {
  return typeof err.lines === 'number' ? err.lines : undefined;
}

/** Reasons for csv-parse errors in our words: its own messages may quote a piece of the row. */
function skipReason(err: CsvError): string {
  switch (err.code) {
    case 'CSV_INVALID_CLOSING_QUOTE':
    case 'CSV_NON_TRIMABLE_CHAR_AFTER_CLOSING_QUOTE':
      return 'malformed quoting: text follows a closing quote';
    case 'CSV_RECORD_INCONSISTENT_FIELDS_LENGTH':
    case 'CSV_RECORD_INCONSISTENT_COLUMNS':
      return 'the row has a different number of fields than the header';
    default:
      return `the row cannot be parsed (${err.code})`;
  }
}

/**
 * Reads a delimited file with a header line; row numbers are file line numbers (header = 1, a row with quoted
 * line breaks numbered by its last line). A malformed row (more or fewer fields than the header, a value over
 * the length limit, a value under a nameless column, bad quoting) comes back with a `problem`, so it is
 * rejected while the other rows go on; a file the parser cannot resynchronise in (a quote never closed), a
 * header with duplicate names or the wrong delimiter is refused as a whole, naming the line.
 */
/**
 * Whether a record that spans several lines is really rows swallowed by an unclosed quote: it has the wrong
 * number of fields, or one of its values holds a line with as many delimiters as a row. Text with line
 * breaks in a well-quoted field passes.
 */
function swallowsRows(record: readonly string[], columns: number, delimiter: string): boolean {
  if (record.length !== columns) return true;
  if (columns < 4) return false;
  return record.some((value) => value.includes('\n') && value.split('\n').some((line) => line.split(delimiter).length >= columns));
}

export async function readCsv(path: string, options: CsvOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  const limits = readLimits(options.limits);
  const { text, digest } = await readSourceText(path, options.encoding, limits);
  const delimiter = options.delimiter ?? ',';
  const skipped: { line: number; reason: string }[] = [];
  let unclosedQuote: number | undefined;
  let rows: { record: string[]; info: { lines: number } }[];
  try {
    rows = parse(text, {
      delimiter,
      info: true,
      skip_empty_lines: true,
      relax_quotes: true,
      relax_column_count: true,
      skip_records_with_error: true,
      on_skip: (err) => {
        if (!err) return;
        if (err.code === 'CSV_QUOTE_NOT_CLOSED') unclosedQuote = errorLine(err);
        else skipped.push({ line: errorLine(err) ?? 0, reason: skipReason(err) });
      },
    }) as unknown as { record: string[]; info: { lines: number } }[];
  } catch (err) {
    const e = err as CsvError;
    const line = errorLine(e);
    throw new SourceFileError(file, `not a valid CSV file (${e.code ?? 'parse error'}${line ? ` at line ${line}` : ''})`, { line });
  }
  if (unclosedQuote !== undefined) {
    // The open quote swallowed everything after the last row read: that row's next line is where it opened.
    const opened = (rows.at(-1)?.info.lines ?? 0) + 1;
    throw new SourceFileError(file, `unbalanced quotes: a quoted field opened on line ${opened} is never closed, so lines ${opened}-${unclosedQuote} cannot be read`, {
      line: opened,
    });
  }
  if (rows.length === 0) throw new SourceFileError(file, 'no header line');
  const header = rows[0].record.map((h) => h.trim());
  const seen = new Map<string, number>();
  header.forEach((name, i) => {
    if (name === '') return;
    const first = seen.get(name);
    if (first !== undefined) throw new SourceFileError(file, `duplicate column name '${name}' in the header (columns ${first + 1} and ${i + 1})`, { line: 1 });
    seen.set(name, i);
  });
  if (header.length === 1) {
    const other = OTHER_DELIMITERS.find((d) => d !== delimiter && header[0].includes(d));
    if (other) {
      throw new SourceFileError(file, `the header has a single column: the file seems delimited by ${delimiterName(other)}, the mapping declares ${delimiterName(delimiter)} (source.delimiter)`, {
        line: 1,
      });
    }
  }

  const out: RawRecord[] = [];
  const base = { file, digest, ...(options.fileType ? { fileType: options.fileType } : {}) };
  for (const { line, reason } of skipped) out.push({ ...base, row: line, fields: {}, problem: { field: '(row)', reason } });
  let previousEnd = rows[0].info.lines;
  for (const { record, info } of rows.slice(1)) {
    const start = previousEnd + 1;
    previousEnd = info.lines;
    if (info.lines > start && swallowsRows(record, header.length, delimiter)) {
      // A stray quote that a later quote happens to close: the lines between vanish into one field.
      throw new SourceFileError(file, `unbalanced quotes: a quoted field opened on line ${start} runs to line ${info.lines}, swallowing the rows between`, { line: start });
    }
    // A line of blanks is an empty line that skip_empty_lines did not recognise.
    if (record.length === 1 && record[0].trim() === '') continue;
    const named: Record<string, string> = {};
    let problem: RowProblem | undefined;
    header.forEach((name, i) => {
      const value = record[i];
      if (value === undefined) return;
      if (name === '') {
        if (value.trim() !== '') problem ??= { field: `(column ${i + 1})`, reason: `a value under column ${i + 1}, which has no name in the header` };
        return;
      }
      named[name] = value;
    });
    if (record.length !== header.length) {
      problem = { field: '(row)', reason: `the row has ${record.length} fields, the header has ${header.length} (a missing or extra delimiter?)` };
    }
    const fields = presentFields(named);
    problem ??= overlongField(fields, limits.maxFieldLength);
    // A rejected row keeps no values: they may be shifted into the wrong columns, and they go nowhere.
    out.push(problem ? { ...base, row: info.lines, fields: {}, problem } : { ...base, row: info.lines, fields });
  }
  return out.sort((a, b) => a.row - b.row);
}
