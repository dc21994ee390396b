import { readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { readCsv } from '../source/csv.ts';
import { readJson, readNdjson } from '../source/json.ts';
import { SourceFileError, type RawRecord } from '../source/raw.ts';
import type { SourceRecord } from '../source/record.ts';
import { readDictionary, readRedcap } from '../source/redcap.ts';
import type { CompiledMapping, CompiledSourceFile } from './compile.ts';
import { FieldError } from './errors.ts';
import { EvalContext, type CompiledExpression } from './expression.ts';
import { compileMappingRegex, MappingRegexError } from './regex.ts';

export interface SourceReadResult {
  readonly records: SourceRecord[];
  /** Data rows read per file (base name). */
  readonly files: { file: string; rows: number }[];
}

/** A file-name glob of the mapping on the linear-time engine: `*a*a*a*…` would backtrack on a RegExp. */
function globToRegExp(glob: string): { test(name: string): boolean } {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  try {
    return compileMappingRegex(`^${escaped}$`, true);
  } catch (err) {
    // Thousands of `*` make a program past the engine's limit: the mapping's pattern is named, not a stack.
    if (err instanceof MappingRegexError) throw new SourceFileError(glob, `file name pattern not usable: ${err.message}`);
    throw err;
  }
}

/** Input paths as files: a directory stands for the files directly in it. */
export async function expandInputs(inputs: readonly string[]): Promise<string[]> {
  const files: string[] = [];
  for (const input of inputs) {
    let info;
    try {
      info = await stat(input);
    } catch {
      throw new SourceFileError(input, 'no such file or directory');
    }
    if (info.isDirectory()) {
      for (const name of (await readdir(input)).sort()) {
        if ((await stat(join(input, name))).isFile()) files.push(join(input, name));
      }
    } else files.push(input);
  }
  return files;
}

function firstString(expr: CompiledExpression | undefined, ctx: EvalContext): string | undefined {
  if (!expr) return undefined;
  const value = expr.evaluate(ctx)[0];
  return value === undefined || value === null || value === '' ? undefined : String(value);
}

const NO_CONSTANTS = new Map();

function toRecord(mapping: CompiledMapping, spec: CompiledSourceFile, raw: RawRecord): SourceRecord {
  const draft: SourceRecord = {
    site: mapping.site,
    file: raw.file,
    row: raw.row,
    type: raw.fileType ?? spec.type ?? 'record',
    subject: '',
    key: `${raw.file}#${raw.row}`,
    fields: raw.fields,
    ...(raw.digest ? { digest: raw.digest } : {}),
  };
  // A malformed row has no trustworthy subject or key: it is rejected on its own, at the read stage.
  if (raw.problem) return { ...draft, problem: raw.problem };
  const ctx = new EvalContext(draft, [], mapping.constants ?? NO_CONSTANTS);
  try {
    const type = firstString(mapping.recordType, ctx) ?? draft.type;
    const subject = firstString(mapping.subject, ctx) ?? '';
    const key = firstString(spec.keyExpression ?? mapping.recordKey, ctx) ?? draft.key;
    return { ...draft, type, subject, key };
  } catch (err) {
    const field = err instanceof FieldError ? err.field : '(expression)';
    return { ...draft, problem: { field, reason: `cannot tell the record's type, subject or key: ${(err as Error).message}` } };
  }
}

/** Reads the export files a mapping names, from the given inputs (files or directories). */
export async function readSourceRecords(mapping: CompiledMapping, inputs: readonly string[]): Promise<SourceReadResult> {
  const available = await expandInputs(inputs);
  const { format, encoding, delimiter, recordsAt } = mapping.spec.source;
  let dictionary: Map<string, Map<string, string>> | undefined;
  if (mapping.dictionary) {
    const pattern = globToRegExp(mapping.dictionary);
    const path = available.find((p) => pattern.test(basename(p)));
    if (!path) throw new SourceFileError(mapping.dictionary, 'data dictionary named by the mapping is not among the inputs');
    dictionary = await readDictionary(path, encoding);
  }
  const records: SourceRecord[] = [];
  const files: { file: string; rows: number }[] = [];
  // A file feeds only the first `files` entry that matches it; later entries see what is left.
  const used = new Map<string, number>();
  for (const [index, spec] of mapping.files.entries()) {
    const pattern = globToRegExp(spec.match);
    const matches = available.filter((p) => pattern.test(basename(p)) && !used.has(p) && basename(p) !== mapping.dictionary);
    if (matches.length === 0 && !spec.optional) {
      const taken = available.filter((p) => pattern.test(basename(p)) && used.has(p));
      if (taken.length > 0) {
        const by = mapping.files[used.get(taken[0])!];
        throw new SourceFileError(
          spec.match,
          `no input file left for source.files[${index}] (match '${spec.match}'): ${taken.map((p) => basename(p)).join(', ')} already feeds source.files[${used.get(taken[0])}] (match '${by.match}'), and a file feeds only the first entry it matches; make the patterns match different files`,
        );
      }
      throw new SourceFileError(spec.match, `no input file matches '${spec.match}' (inputs: ${available.map((p) => basename(p)).join(', ') || 'none'})`);
    }
    for (const path of matches) {
      used.set(path, index);
      let raws: RawRecord[];
      switch (format) {
        case 'csv':
        case 'sdtm':
          raws = await readCsv(path, { encoding, delimiter, fileType: spec.type });
          break;
        case 'json':
          raws = await readJson(path, { encoding, fileType: spec.type, recordsAt });
          break;
        case 'ndjson':
          raws = await readNdjson(path, { encoding, fileType: spec.type });
          break;
        case 'redcap':
          raws = await readRedcap(path, { encoding, dictionary });
          break;
      }
      files.push({ file: basename(path), rows: raws.length });
      for (const raw of raws) records.push(toRecord(mapping, spec, raw));
    }
  }
  return { records, files };
}
