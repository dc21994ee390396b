import { basename } from 'node:path';
import { overlongField, presentFields, readLimits, readSourceText, SourceFileError, type RawRecord, type ReadLimits, type RowProblem } from './raw.ts';
import { describePath, jsonSyntaxProblem, keyName, lineColumn, parseSourceJson, scanJson, type DuplicateKey } from './strict-json.ts';

export interface JsonOptions {
  readonly encoding?: string;
  readonly fileType?: string;
  /** Where the records sit in a JSON document (a property name); default: the document is the array. */
  readonly recordsAt?: string;
  readonly limits?: Partial<ReadLimits>;
}

interface RecordContext {
  readonly file: string;
  readonly digest: string;
  readonly fileType: string | undefined;
  readonly maxFieldLength: number;
}

function toRaw(ctx: RecordContext, row: number, value: unknown, duplicate: DuplicateKey | undefined): RawRecord {
  const base = { file: ctx.file, row, digest: ctx.digest, ...(ctx.fileType ? { fileType: ctx.fileType } : {}) };
  let problem: RowProblem | undefined;
  let fields: Record<string, string> = {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    problem = { field: '(record)', reason: `record ${row} is not a JSON object` };
  } else if (duplicate) {
    problem = { field: keyName(duplicate.key), reason: `key '${keyName(duplicate.key)}' appears twice in the record; JSON.parse would silently keep only the last` };
  } else {
    fields = presentFields(value as Record<string, unknown>);
    problem = overlongField(fields, ctx.maxFieldLength);
  }
  return problem ? { ...base, fields: {}, problem } : { ...base, fields };
}

/**
 * Reads a JSON array of flat objects; row = 1-based index in the array. A record that is not an object, holds
 * a key twice or a value over the length limit comes back with a `problem` (rejected, the others go on);
 * invalid JSON, nesting past the depth limit or a duplicate key outside the records refuse the file.
 */
export async function readJson(path: string, options: JsonOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  const limits = readLimits(options.limits);
  const { text, digest } = await readSourceText(path, options.encoding, limits);
  const scan = scanJson(text, limits.maxJsonDepth);
  if (scan.tooDeep) {
    const { line } = lineColumn(text, scan.tooDeep.offset);
    throw new SourceFileError(file, `JSON nested deeper than ${limits.maxJsonDepth} levels (at ${describePath(scan.tooDeep.path)}, line ${line})`, { line });
  }
  let doc: unknown;
  try {
    doc = parseSourceJson(text);
  } catch (err) {
    const problem = jsonSyntaxProblem(err, text);
    throw new SourceFileError(file, problem.reason, { line: problem.line });
  }
  // Records are the elements of the top-level array, or of the array under `recordsAt`.
  const depth = options.recordsAt ? 2 : 1;
  const inRecords = (d: DuplicateKey) => d.path.length >= depth && typeof d.path[depth - 1] === 'number' && (!options.recordsAt || d.path[0] === options.recordsAt);
  const outside = scan.duplicates.find((d) => !inRecords(d));
  if (outside) {
    const { line } = lineColumn(text, outside.offset);
    throw new SourceFileError(file, `duplicate key '${keyName(outside.key)}' in ${describePath(outside.path)} (line ${line}); JSON.parse would silently keep only the last`, { line });
  }
  const list = options.recordsAt ? (doc as Record<string, unknown> | null)?.[options.recordsAt] : doc;
  if (!Array.isArray(list)) {
    throw new SourceFileError(file, options.recordsAt ? `no array at '${options.recordsAt}'` : 'expected a JSON array of records');
  }
  const duplicateIn = new Map<number, DuplicateKey>();
  for (const d of scan.duplicates) if (!duplicateIn.has(d.path[depth - 1] as number)) duplicateIn.set(d.path[depth - 1] as number, d);
  const ctx: RecordContext = { file, digest, fileType: options.fileType, maxFieldLength: limits.maxFieldLength };
  return list.map((value, i) => toRaw(ctx, i + 1, value, duplicateIn.get(i)));
}

/**
 * Reads newline-delimited JSON; row = line number. Each line stands alone, so a bad line (invalid JSON, too
 * deep, a duplicate key, not an object) is a rejected row and the next line is read normally.
 */
export async function readNdjson(path: string, options: JsonOptions = {}): Promise<RawRecord[]> {
  const file = basename(path);
  const limits = readLimits(options.limits);
  const { text, digest } = await readSourceText(path, options.encoding, limits);
  const ctx: RecordContext = { file, digest, fileType: options.fileType, maxFieldLength: limits.maxFieldLength };
  const out: RawRecord[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    const row = i + 1;
    const lineProblem = (reason: string): void => {
      out.push({ file, row, digest, fields: {}, problem: { field: '(line)', reason }, ...(options.fileType ? { fileType: options.fileType } : {}) });
    };
    const scan = scanJson(line, limits.maxJsonDepth);
    if (scan.tooDeep) return lineProblem(`line ${row}: JSON nested deeper than ${limits.maxJsonDepth} levels`);
    let value: unknown;
    try {
      value = parseSourceJson(line);
    } catch (err) {
      return lineProblem(`line ${row} is ${jsonSyntaxProblem(err, line).reason.replace(/line 1, /, '')}`);
    }
    const nested = scan.duplicates.find((d) => d.path.length > 0);
    if (nested) return lineProblem(`duplicate key '${keyName(nested.key)}' in ${describePath(nested.path)}; JSON.parse would silently keep only the last`);
    out.push(toRaw(ctx, row, value, scan.duplicates[0]));
  });
  return out;
}
