import { basename } from 'node:path';
import { presentFields, readText, SourceFileError, type RawRecord } from './raw.ts';

export interface JsonOptions {
  readonly encoding?: string;
  readonly fileType?: string;
  /** Where the records sit in a JSON document (a property name); default: the document is the array. */
  readonly recordsAt?: string;
}

function toRaw(file: string, row: number, value: unknown, fileType: string | undefined): RawRecord {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new SourceFileError(file, `record ${row} is not a JSON object`);
  }
  return { file, row, fields: presentFields(value as Record<string, unknown>), ...(fileType ? { fileType } : {}) };
}

/** Reads a JSON array of flat objects; row = 1-based index in the array. */
export async function readJson(path: string, options: JsonOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  let doc: unknown;
  try {
    doc = JSON.parse(await readText(path, options.encoding));
  } catch (err) {
    if (err instanceof SourceFileError) throw err;
    throw new SourceFileError(file, `not valid JSON: ${(err as Error).message}`);
  }
  const list = options.recordsAt ? (doc as Record<string, unknown> | null)?.[options.recordsAt] : doc;
  if (!Array.isArray(list)) {
    throw new SourceFileError(file, options.recordsAt ? `no array at '${options.recordsAt}'` : 'expected a JSON array of records');
  }
  return list.map((value, i) => toRaw(file, i + 1, value, options.fileType));
}

/** Reads newline-delimited JSON; row = line number. */
export async function readNdjson(path: string, options: JsonOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  const lines = (await readText(path, options.encoding)).split(/\r?\n/);
  const out: RawRecord[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new SourceFileError(file, `line ${i + 1} is not valid JSON: ${(err as Error).message}`);
    }
    out.push(toRaw(file, i + 1, value, options.fileType));
  });
  return out;
}
