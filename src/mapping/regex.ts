import { RE2JS } from 're2js';

/**
 * Regular expressions from mapping files (FHIRPath `matches`/`replaceMatches` in any expression, `source.recordKey`
 * included; file-name globs; date formats) run on RE2JS, a linear-time engine: it never backtracks, so no
 * pattern can freeze a process the way `^([0-9]|[0-9a-z]){1,64}$` froze JavaScript's RegExp on a 35-character
 * value. JavaScript regexes cannot be interrupted; these need not be.
 */

/**
 * Largest compiled program a mapping regex may have. Matching time is linear in input × program size; RE2
 * already caps a repetition at 1000, this caps what a 4 KB expression can stack up.
 */
export const MAX_REGEX_PROGRAM = 5000;

export class MappingRegexError extends Error {}

/** What RE2 refuses, in the terms of the JavaScript syntax the mapping author wrote. */
function unsupported(pattern: string, message: string): string {
  if (/\\[1-9]|\\k</.test(pattern)) return 'back-references are not supported (mapping regexes run on a linear-time engine)';
  if (/\(\?<?[=!]/.test(pattern)) return 'lookarounds are not supported (mapping regexes run on a linear-time engine)';
  if (/invalid repeat count/.test(message)) return 'a repetition count over 1000 (alone or nested) is not supported';
  if (/nested repetition/.test(message)) return 'possessive or nested repetition operators (a++, a*+) are not supported';
  return `invalid regular expression (${message.replace(/^error parsing regexp: /, '')})`;
}

const compiled = new Map<string, RE2JS>();
/** Patterns come from mapping files, which are few; the bound only stops a caller that compiles per record. */
const MAX_CACHED = 1000;

/**
 * Compiles a pattern written in JavaScript syntax (the FHIRPath spec's regex dialect as @medplum/core reads it)
 * for the linear-time engine, or throws a MappingRegexError saying what the engine cannot do.
 */
export function compileMappingRegex(pattern: string, caseInsensitive = false): RE2JS {
  const cacheKey = `${caseInsensitive ? 'i' : '-'}${pattern}`;
  const cached = compiled.get(cacheKey);
  if (cached) return cached;
  let regex: RE2JS;
  try {
    regex = RE2JS.compile(RE2JS.translateRegExp(pattern), caseInsensitive ? RE2JS.CASE_INSENSITIVE : 0);
  } catch (err) {
    throw new MappingRegexError(unsupported(pattern, (err as Error).message));
  }
  if (regex.programSize() > MAX_REGEX_PROGRAM) {
    throw new MappingRegexError(`the regular expression compiles to ${regex.programSize()} instructions (limit ${MAX_REGEX_PROGRAM})`);
  }
  if (compiled.size >= MAX_CACHED) compiled.delete(compiled.keys().next().value!);
  compiled.set(cacheKey, regex);
  return regex;
}

/** Why the engine cannot run a mapping regex, or undefined when it can. */
export function regexProblem(pattern: string): string | undefined {
  try {
    compileMappingRegex(pattern);
    return undefined;
  } catch (err) {
    if (err instanceof MappingRegexError) return err.message;
    throw err;
  }
}

/** FHIRPath `matches`: whether the pattern occurs anywhere in the text (as @medplum/core's `exec` did). */
export function regexMatches(regex: RE2JS, text: string): boolean {
  return regex.test(text);
}

/** FHIRPath `replaceMatches`: every match replaced; `$1`, `$<name>` and the spec's `${name}` name groups. */
export function regexReplaceAll(regex: RE2JS, text: string, substitution: string): string {
  return regex.matcher(text).replaceAll(substitution.replaceAll(/\$\{(\w+)\}/g, '$<$1>'));
}
