/**
 * JSON as a hostile sender may write it. JSON.parse keeps the last of two equal keys without a word and
 * builds any depth of nesting; this scan runs before it and reports both, with where they are. Error messages
 * never quote the text: V8's own quote the characters around the fault, which may be a patient's name.
 */

export type JsonPath = readonly (string | number)[];

export interface DuplicateKey {
  readonly key: string;
  /** Path of the object holding the key twice. */
  readonly path: JsonPath;
  readonly offset: number;
}

export interface JsonScan {
  readonly duplicates: DuplicateKey[];
  /** Set when nesting goes past the limit (the scan stops there). */
  readonly tooDeep?: { readonly path: JsonPath; readonly offset: number };
}

type Frame = { kind: 'object'; keys: Set<string>; key: string | undefined; expectKey: boolean } | { kind: 'array'; index: number };

function pathOf(stack: readonly Frame[]): (string | number)[] {
  return stack.map((f) => (f.kind === 'array' ? f.index : (f.key ?? '')));
}

/** Scans JSON text for duplicate keys and nesting deeper than `maxDepth`; malformed text is left to JSON.parse. */
export function scanJson(text: string, maxDepth: number): JsonScan {
  const duplicates: DuplicateKey[] = [];
  const stack: Frame[] = [];
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      for (;;) {
        j = text.indexOf('"', j);
        if (j < 0) return { duplicates };
        let backslashes = 0;
        for (let k = j - 1; text.charCodeAt(k) === 0x5c; k--) backslashes++;
        if (backslashes % 2 === 0) break;
        j++;
      }
      const top = stack.at(-1);
      if (top?.kind === 'object' && top.expectKey) {
        const raw = text.slice(i, j + 1);
        let key: string;
        try {
          key = raw.includes('\\') ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        } catch {
          return { duplicates };
        }
        if (top.keys.has(key)) duplicates.push({ key, path: pathOf(stack.slice(0, -1)), offset: i });
        top.keys.add(key);
        top.key = key;
        top.expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      stack.push(c === 0x7b ? { kind: 'object', keys: new Set(), key: undefined, expectKey: true } : { kind: 'array', index: 0 });
      if (stack.length > maxDepth) return { duplicates, tooDeep: { path: pathOf(stack.slice(0, -1)), offset: i } };
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack.at(-1);
      if (top?.kind === 'object') top.expectKey = true;
      else if (top) top.index++;
    }
    i++;
  }
  return { duplicates };
}

/** A run that a number with more than 15 significant digits must contain; most exports have none. */
const LONG_NUMBER = /[0-9.]{16}/;

/** Significant digits of a JSON number as written (`-0.00120e5` has 3). */
function significantDigits(source: string): number {
  return source.replace(/^-/, '').replace(/[eE].*$/, '').replace('.', '').replace(/^0+/, '').length;
}

/** Reviver: a number a double cannot hold exactly (more than 15 significant digits) stays its source text. */
function keepLongNumbers(_key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value !== 'number' || context?.source === undefined) return value;
  return significantDigits(context.source) > 15 ? context.source : value;
}

/**
 * JSON.parse for source exports. A REDCap record id such as 9007199254740993 is beyond 2^53: as a number it
 * becomes 9007199254740992, and two subjects become one. Such numbers keep their text (Node's reviver sees the
 * source); the reviver is slow, so it runs only when the text has a digit run that long.
 */
export function parseSourceJson(text: string): unknown {
  return LONG_NUMBER.test(text) ? JSON.parse(text, keepLongNumbers) : JSON.parse(text);
}

/** 1-based line and column of a character offset. */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i >= 0 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart + 1 };
}

/** Why JSON.parse failed, in words that quote nothing from the text, and where when V8 says. */
export function jsonSyntaxProblem(err: unknown, text: string): { reason: string; line?: number } {
  const message = err instanceof Error ? err.message : String(err);
  const at = /at position (\d+)/.exec(message);
  if (at) {
    const { line, column } = lineColumn(text, Number(at[1]));
    return { reason: `not valid JSON: syntax error at line ${line}, column ${column}`, line };
  }
  if (/Unexpected end of JSON input/.test(message)) return { reason: 'not valid JSON: the text ends in the middle of a value' };
  return { reason: 'not valid JSON: unexpected character' };
}

/** A key as messages name it: keys come from the sender, so a long one is cut. */
export function keyName(key: string): string {
  return key.length > 60 ? `${key.slice(0, 60)}...` : key;
}

export function describePath(path: JsonPath): string {
  return path.length === 0 ? 'the top level' : path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${keyName(p)}`)).join('').replace(/^\./, '');
}

export class StrictJsonError extends Error {
  readonly line: number | undefined;
  constructor(message: string, line?: number) {
    super(message);
    this.name = 'StrictJsonError';
    this.line = line;
  }
}

/** JSON.parse that refuses duplicate keys and nesting past `maxDepth`, with messages that quote nothing. */
export function parseStrictJson(text: string, maxDepth: number): unknown {
  const scan = scanJson(text, maxDepth);
  if (scan.tooDeep) {
    const { line } = lineColumn(text, scan.tooDeep.offset);
    throw new StrictJsonError(`JSON nested deeper than ${maxDepth} levels (at ${describePath(scan.tooDeep.path)}, line ${line})`, line);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const problem = jsonSyntaxProblem(err, text);
    throw new StrictJsonError(problem.reason, problem.line);
  }
  const dup = scan.duplicates[0];
  if (dup) {
    const { line } = lineColumn(text, dup.offset);
    throw new StrictJsonError(`duplicate key '${keyName(dup.key)}' in ${describePath(dup.path)} (line ${line}); JSON.parse would silently keep only the last`, line);
  }
  return value;
}
