import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';

/** A row as a reader sees it, before the mapping says what its subject, key and type are. */
export interface RawRecord {
  readonly file: string;
  readonly row: number;
  readonly fields: Record<string, string>;
  /** Record type fixed by the file (an SDTM domain file, say), when the mapping declares one. */
  readonly fileType?: string;
}

/** A file that cannot be read at all (as opposed to a bad record inside it). */
export class SourceFileError extends Error {
  readonly file: string;
  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = 'SourceFileError';
    this.file = file;
  }
}

/** Reads a text file in the declared encoding, without a byte-order mark. */
export async function readText(path: string, encoding = 'utf-8'): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new SourceFileError(basename(path), `cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  let decoder: TextDecoder;
  try {
    decoder = new TextDecoder(encoding, { fatal: true });
  } catch {
    throw new SourceFileError(basename(path), `unknown encoding '${encoding}'`);
  }
  try {
    const text = decoder.decode(bytes);
    return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
  } catch {
    throw new SourceFileError(basename(path), `not valid ${encoding} text`);
  }
}

/** Keeps only non-blank values: an empty cell means "no value", so FHIRPath `exists()` behaves. */
export function presentFields(input: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(input)) {
    if (value === null || value === undefined) continue;
    const text = typeof value === 'string' ? value.trim() : typeof value === 'object' ? JSON.stringify(value) : String(value);
    if (text !== '') out[name] = text;
  }
  return out;
}
