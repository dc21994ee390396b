import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import { open } from 'node:fs/promises';
import { basename } from 'node:path';

/** A reader's verdict on one row it could not take as is: the row is rejected, the others go on. */
export interface RowProblem {
  /** The column at fault, or `(row)` / `(record)` when the row as a whole is. */
  readonly field: string;
  readonly reason: string;
}

/** A row as a reader sees it, before the mapping says what its subject, key and type are. */
export interface RawRecord {
  readonly file: string;
  readonly row: number;
  readonly fields: Record<string, string>;
  /** Record type fixed by the file (an SDTM domain file, say), when the mapping declares one. */
  readonly fileType?: string;
  /** Lower-case hex SHA-256 of the file's bytes, for Provenance. */
  readonly digest?: string;
  /** Set when the row is malformed (ragged, over a limit, a duplicate key): the record is rejected with it. */
  readonly problem?: RowProblem;
}

/** Where in a file a file-level problem was found. */
export interface FilePosition {
  readonly line?: number;
  readonly offset?: number;
}

/** A file that cannot be read at all (as opposed to a bad record inside it). Messages never quote file content. */
export class SourceFileError extends Error {
  readonly file: string;
  readonly reason: string;
  readonly line: number | undefined;
  readonly offset: number | undefined;
  /** The file is over the size limit (an HTTP API answers 413 rather than 422). */
  readonly tooLarge: boolean;
  constructor(file: string, message: string, position: FilePosition & { tooLarge?: boolean } = {}) {
    super(`${file}: ${message}`);
    this.name = 'SourceFileError';
    this.file = file;
    this.reason = message;
    this.line = position.line;
    this.offset = position.offset;
    this.tooLarge = position.tooLarge ?? false;
  }
}

/**
 * Limits that keep one hostile file from exhausting memory or producing unusable records. Defaults come from
 * the environment so an operator can change them without a code change; tests pass their own.
 */
export interface ReadLimits {
  /** Largest file read, in bytes (default 128 MiB, env TRIALBRIDGE_MAX_FILE_BYTES). */
  readonly maxFileBytes: number;
  /** Longest field value, in characters; a longer one rejects its row (default 65 536, env TRIALBRIDGE_MAX_FIELD_LENGTH). */
  readonly maxFieldLength: number;
  /** Deepest JSON nesting (default 32, env TRIALBRIDGE_MAX_JSON_DEPTH). */
  readonly maxJsonDepth: number;
}

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name} must be a positive integer (got '${raw}')`);
  return n;
}

export function defaultReadLimits(): ReadLimits {
  return {
    maxFileBytes: envInt('TRIALBRIDGE_MAX_FILE_BYTES', 128 * 1024 * 1024),
    maxFieldLength: envInt('TRIALBRIDGE_MAX_FIELD_LENGTH', 64 * 1024),
    maxJsonDepth: envInt('TRIALBRIDGE_MAX_JSON_DEPTH', 32),
  };
}

export function readLimits(overrides: Partial<ReadLimits> = {}): ReadLimits {
  return { ...defaultReadLimits(), ...overrides };
}

/** A decoded text file with the digest of its bytes. */
export interface SourceText {
  readonly file: string;
  readonly text: string;
  /** Lower-case hex SHA-256 of the bytes as read. */
  readonly digest: string;
  readonly bytes: number;
  /** The encoding actually used (a byte-order mark overrides the declared one). */
  readonly encoding: string;
}

const MAGIC: readonly { bytes: readonly number[]; what: string }[] = [
  { bytes: [0x50, 0x4b, 0x03, 0x04], what: 'a ZIP archive (an .xlsx workbook?)' },
  { bytes: [0xd0, 0xcf, 0x11, 0xe0], what: 'a legacy Office document (an .xls workbook?)' },
  { bytes: [0x25, 0x50, 0x44, 0x46], what: 'a PDF document' },
  { bytes: [0x1f, 0x8b], what: 'a gzip archive' },
  { bytes: [0x42, 0x5a, 0x68], what: 'a bzip2 archive' },
  { bytes: [0x53, 0x51, 0x4c, 0x69, 0x74, 0x65], what: 'an SQLite database' },
  { bytes: [0x89, 0x50, 0x4e, 0x47], what: 'a PNG image' },
  { bytes: [0xff, 0xd8, 0xff], what: 'a JPEG image' },
];

function startsWith(bytes: Uint8Array, prefix: readonly number[]): boolean {
  return bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b);
}

/** Encoding named by a byte-order mark, and the mark's length. */
function sniffBom(bytes: Uint8Array): { encoding: string; length: number } | undefined {
  if (startsWith(bytes, [0xef, 0xbb, 0xbf])) return { encoding: 'utf-8', length: 3 };
  if (startsWith(bytes, [0xff, 0xfe])) return { encoding: 'utf-16le', length: 2 };
  if (startsWith(bytes, [0xfe, 0xff])) return { encoding: 'utf-16be', length: 2 };
  return undefined;
}

/** 1-based line of a byte offset (LF bytes before it), for encodings where LF is the byte 0x0A. */
function lineAt(bytes: Uint8Array, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < bytes.length; i++) if (bytes[i] === 0x0a) line++;
  return line;
}

/** Offset of the first byte that does not start or continue a well-formed UTF-8 sequence. */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    let need: number;
    let min: number;
    if (b < 0x80) {
      i++;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) [need, min] = [1, 0x80];
    else if (b >= 0xe0 && b <= 0xef) [need, min] = [2, 0x800];
    else if (b >= 0xf0 && b <= 0xf4) [need, min] = [3, 0x10000];
    else return i;
    let cp = b & (0x3f >> need);
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || (c & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (c & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are as invalid as stray bytes.
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += need + 1;
  }
  return -1;
}

/** Whether the bytes look like UTF-16 text saved without a byte-order mark (every other byte NUL). */
function looksLikeBomlessUtf16(bytes: Uint8Array): boolean {
  const sample = bytes.subarray(0, 4096);
  if (sample.length < 4) return false;
  let evenNul = 0;
  let oddNul = 0;
  for (let i = 0; i < sample.length; i++) if (sample[i] === 0) (i % 2 === 0 ? evenNul++ : oddNul++);
  const half = sample.length / 2;
  return (evenNul > half * 0.4 && oddNul < half * 0.05) || (oddNul > half * 0.4 && evenNul < half * 0.05);
}

function formatBytes(n: number): string {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(1)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} bytes`;
}

/**
 * Reads a source file as text: refuses files over the size limit before reading them, binary files (archives,
 * workbooks, NUL bytes), empty files and bytes that are not valid in the encoding (naming the byte offset and
 * line); a byte-order mark (UTF-8, UTF-16 LE/BE) overrides the declared encoding.
 */
export async function readSourceText(path: string, encoding = 'utf-8', limits: Pick<ReadLimits, 'maxFileBytes'> = defaultReadLimits()): Promise<SourceText> {
  const file = basename(path);
  let bytes: Buffer;
  try {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      if (size > limits.maxFileBytes) {
        throw new SourceFileError(file, `file is ${formatBytes(size)}, over the limit of ${formatBytes(limits.maxFileBytes)}`, { tooLarge: true });
      }
      bytes = await handle.readFile();
    } finally {
      await handle.close();
    }
  } catch (err) {
    if (err instanceof SourceFileError) throw err;
    throw new SourceFileError(file, `cannot read (${(err as NodeJS.ErrnoException).code ?? 'unknown error'})`);
  }
  // A file growing between stat and read is held to the same limit.
  if (bytes.length > limits.maxFileBytes) {
    throw new SourceFileError(file, `file is over the limit of ${formatBytes(limits.maxFileBytes)}`, { tooLarge: true });
  }
  const digest = createHash('sha256').update(bytes).digest('hex');
  if (bytes.length === 0) throw new SourceFileError(file, 'empty file (0 bytes)');
  const magic = MAGIC.find((m) => startsWith(bytes, m.bytes));
  if (magic) throw new SourceFileError(file, `binary data: this is ${magic.what}, not a text export`, { offset: 0 });

  const bom = sniffBom(bytes);
  let used = bom?.encoding ?? encoding;
  let decoder: TextDecoder;
  try {
    decoder = new TextDecoder(used, { fatal: true, ignoreBOM: true });
    used = decoder.encoding;
  } catch {
    throw new SourceFileError(file, `unknown encoding '${encoding}' (source.encoding of the mapping)`);
  }
  const body = bom ? bytes.subarray(bom.length) : bytes;
  const utf16 = used === 'utf-16le' || used === 'utf-16be';
  if (!utf16) {
    if (looksLikeBomlessUtf16(body)) {
      throw new SourceFileError(file, `looks like UTF-16 text without a byte-order mark; save it as UTF-8, or declare source.encoding utf-16le or utf-16be`);
    }
    const nul = body.indexOf(0);
    if (nul >= 0) {
      const offset = nul + (bom?.length ?? 0);
      throw new SourceFileError(file, `binary data: a NUL byte at byte offset ${offset} (line ${lineAt(bytes, offset)}); not a text export`, { offset, line: lineAt(bytes, offset) });
    }
  }
  if (used === 'utf-8' && !isUtf8(body)) {
    const offset = firstInvalidUtf8(body) + (bom?.length ?? 0);
    const line = lineAt(bytes, offset);
    throw new SourceFileError(
      file,
      `not valid UTF-8: byte 0x${bytes[offset].toString(16).toUpperCase().padStart(2, '0')} at byte offset ${offset} (line ${line}); ` +
        `if the file is Latin-1 or Windows-1252, declare source.encoding in the mapping`,
      { offset, line },
    );
  }
  let text: string;
  try {
    text = decoder.decode(body);
  } catch {
    throw new SourceFileError(file, `not valid ${used} text`);
  }
  if (utf16 && text.includes('\u0000')) {
    const at = text.indexOf('\u0000');
    throw new SourceFileError(file, `binary data: a NUL character at character ${at}; not a text export`);
  }
  if (text.trim() === '') throw new SourceFileError(file, 'empty file (only blank space)');
  return { file, text, digest, bytes: bytes.length, encoding: used };
}

/**
 * An empty field map without a prototype: a column named `constructor`, `toString` or `__proto__` is a field like
 * any other, and an expression reading a field the record lacks finds nothing (not Object.prototype's members).
 */
export function ownFields(from?: Readonly<Record<string, string>>): Record<string, string> {
  const fields = Object.create(null) as Record<string, string>;
  if (from) for (const name of Object.keys(from)) fields[name] = from[name];
  return fields;
}

/** Keeps only non-blank values: an empty cell means "no value", so FHIRPath `exists()` behaves. */
export function presentFields(input: Record<string, unknown>): Record<string, string> {
  const out = ownFields();
  for (const [name, value] of Object.entries(input)) {
    if (value === null || value === undefined) continue;
    const text = typeof value === 'string' ? value.trim() : typeof value === 'object' ? JSON.stringify(value) : String(value);
    if (text !== '') out[name] = text;
  }
  return out;
}

/** The first field over the length limit, as a row problem. */
export function overlongField(fields: Record<string, string>, maxFieldLength: number): RowProblem | undefined {
  for (const [name, value] of Object.entries(fields)) {
    if (value.length > maxFieldLength) {
      return { field: name, reason: `value is ${value.length} characters long, over the limit of ${maxFieldLength}` };
    }
  }
  return undefined;
}
