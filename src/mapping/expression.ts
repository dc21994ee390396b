import { ArithmeticOperatorAtom, evalFhirPathTyped, FunctionAtom, parseFhirPath, type AtomContext, type FhirPathAtom, type TypedValue } from '@medplum/core';
import type { SourceRecord } from '../source/record.ts';
import { checkRegexInput, checkResult, tick, withinBudget } from './budget.ts';
import { calendarUnit, DateFormatError, shiftDate } from './dates.ts';
import { FieldError } from './errors.ts';
import { compileFast, Unsupported, type FastScope } from './fast-path.ts';
import { compileMappingRegex, regexMatches, regexProblem, regexReplaceAll } from './regex.ts';

/** Record facts every expression can read as variables (`%site`, `%row`, ...). */
const BUILT_INS: Record<string, (r: SourceRecord) => unknown> = {
  site: (r) => r.site,
  subjectKey: (r) => r.subject,
  recordKey: (r) => r.key,
  recordType: (r) => r.type,
  file: (r) => r.file,
  row: (r) => r.row,
};

/** Every variable name the engine defines itself (FHIRPath's own %ucum, %sct, %loinc included). */
export const BUILT_IN_VARIABLES: ReadonlySet<string> = new Set([...Object.keys(BUILT_INS), 'subject', 'group', 'ucum', 'sct', 'loinc']);

/**
 * Everything an expression can see while one resource is built: the record's fields as the FHIRPath input,
 * and variables (%site, %subjectKey, %recordKey, %recordType, %file, %row, %subject, %group, constants, lets).
 */
export class EvalContext implements FastScope {
  readonly record: SourceRecord;
  readonly subjectRecords: readonly SourceRecord[];
  readonly group: readonly SourceRecord[] | undefined;
  /** Values a rule's `let` computed, by name (any JSON; FHIRPath sees the primitives). */
  private letValues: Map<string, unknown> | undefined;
  /** Set by the engine: finds the resource a `$ref` points to. */
  resolver: ((rule: string, key: string | undefined) => { fullUrl: string } | { rejected: string } | undefined) | undefined;
  private readonly constants: ReadonlyMap<string, TypedValue>;
  private atomContext: AtomContext | undefined;
  private inputValue: TypedValue[] | undefined;

  constructor(
    record: SourceRecord,
    subjectRecords: readonly SourceRecord[],
    constants: ReadonlyMap<string, TypedValue>,
    group?: readonly SourceRecord[],
  ) {
    this.record = record;
    this.subjectRecords = subjectRecords;
    this.constants = constants;
    this.group = group;
  }

  /** A context for another record of the same subject (aggregates over a group evaluate per member). */
  forRecord(record: SourceRecord): EvalContext {
    const ctx = new EvalContext(record, this.subjectRecords, this.constants, this.group);
    if (this.letValues) for (const [k, v] of this.letValues) ctx.lets.set(k, v);
    ctx.resolver = this.resolver;
    ctx.declared = this.declared;
    return ctx;
  }

  get fields(): Readonly<Record<string, string>> {
    return this.record.fields;
  }

  /** A variable for the fast path: the same names and values the general engine gets. */
  variable(name: string): unknown {
    if (this.letValues?.has(name)) return this.letValues.get(name);
    const constant = this.constants.get(name);
    if (constant) return constant.value;
    const builtIn = BUILT_INS[name];
    if (builtIn) return builtIn(this.record);
    if (name === 'subject') return byType(this.subjectRecords);
    if (name === 'group') return this.group ? groupView(this.group) : undefined;
    if (this.declared.includes(name)) return undefined;
    throw new Error(`Undefined variable %${name}`);
  }

  get input(): TypedValue[] {
    this.inputValue ??= [{ type: 'BackboneElement', value: this.record.fields }];
    return this.inputValue;
  }

  get fhirPathContext(): AtomContext {
    if (!this.atomContext) {
      const variables: Record<string, TypedValue> = {};
      for (const [name, value] of this.constants) variables[`%${name}`] = value;
      for (const [name, read] of Object.entries(BUILT_INS)) variables[`%${name}`] = toTyped(read(this.record))!;
      variables['%subject'] = { type: 'BackboneElement', value: byType(this.subjectRecords) };
      if (this.group) variables['%group'] = { type: 'BackboneElement', value: groupView(this.group) };
      // A let without a value (or one the site does not define) reads as empty, so `%end.exists()` is false.
      for (const name of this.declared) variables[`%${name}`] = { type: 'string', value: undefined };
      for (const [name, value] of this.letValues ?? []) {
        variables[`%${name}`] = toTyped(value) ?? { type: 'string', value: undefined };
      }
      this.atomContext = { variables };
    }
    return this.atomContext;
  }

  /** Values a rule's `let` computed (made on first use: most records of most rules have none). */
  get lets(): Map<string, unknown> {
    this.letValues ??= new Map();
    return this.letValues;
  }

  /** Variables the rule's expressions mention; they exist (empty) even when no let defines them. */
  declared: readonly string[] = [];

  /** Lets are computed in order; a later one sees the earlier ones. */
  setLet(name: string, value: unknown): void {
    this.lets.set(name, value);
    this.atomContext = undefined;
  }
}

const subjectViews = new WeakMap<readonly SourceRecord[], Record<string, unknown>>();

function byType(records: readonly SourceRecord[]): Record<string, unknown> {
  let view = subjectViews.get(records);
  if (!view) {
    // No prototype: a record type or field named `constructor` or `__proto__` is data, not Object's member.
    const grouped = Object.create(null) as Record<string, Record<string, string>[]>;
    grouped.all = [];
    for (const r of records) {
      grouped.all.push(r.fields);
      (grouped[r.type] ??= []).push(r.fields);
    }
    view = grouped;
    subjectViews.set(records, view);
  }
  return view;
}

function groupView(group: readonly SourceRecord[]): Record<string, unknown> {
  const view = Object.create(null) as Record<string, unknown>;
  view.all = group.map((g) => g.fields);
  return view;
}

export function toTyped(value: unknown): TypedValue | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return { type: 'string', value };
  if (typeof value === 'boolean') return { type: 'boolean', value };
  if (typeof value === 'number') return { type: Number.isInteger(value) ? 'integer' : 'decimal', value };
  return { type: 'BackboneElement', value };
}

/** A compiled expression: its results as plain values (empty array = no value). */
export interface CompiledExpression {
  readonly source: string;
  /** Source field the expression reads first, to name in errors. */
  readonly field: string;
  evaluate(ctx: EvalContext): unknown[];
  /** The single value (undefined when empty); more than one is a FieldError. No array on the hot path. */
  one(ctx: EvalContext): unknown;
}

function singleValue(source: string, field: string, values: unknown[]): unknown {
  if (values.length > 1) {
    throw new FieldError(field, JSON.stringify(values), `expression '${source}' gave ${values.length} values where one is expected`);
  }
  return values[0];
}

/** Longest expression a mapping may hold: the parser recurses per nesting level. */
export const MAX_EXPRESSION_LENGTH = 4096;

/**
 * FHIRPath functions a mapping may call. Left out: `trace` (the spec's debug log: record values would reach
 * logs), `resolve` (the spec's reference fetch), `now`/`today`/`timeOfDay` (the same export would no longer
 * map to the same bytes), `htmlChecks`, and the functions @medplum/core only stubs (`repeat`, `children`,
 * `descendants`, `split`, `trim`, `encode`, `decode`, `escape`, `unescape`), which would silently give nothing.
 */
const ALLOWED_FUNCTIONS: ReadonlySet<string> = new Set([
  'empty', 'hasValue', 'exists', 'all', 'allTrue', 'anyTrue', 'allFalse', 'anyFalse', 'subsetOf', 'supersetOf', 'count',
  'distinct', 'isDistinct', 'where', 'select', 'ofType', 'single', 'first', 'last', 'tail', 'skip', 'take', 'intersect',
  'exclude', 'union', 'combine', 'iif', 'toBoolean', 'convertsToBoolean', 'toInteger', 'convertsToInteger', 'toDate',
  'convertsToDate', 'toDateTime', 'convertsToDateTime', 'toDecimal', 'convertsToDecimal', 'toQuantity', 'convertsToQuantity',
  'toString', 'convertsToString', 'toTime', 'convertsToTime', 'indexOf', 'substring', 'startsWith', 'endsWith', 'contains',
  'upper', 'lower', 'replace', 'matches', 'replaceMatches', 'length', 'toChars', 'join', 'abs', 'ceiling', 'exp', 'floor',
  'ln', 'log', 'power', 'round', 'sqrt', 'truncate', 'between', 'is', 'not', 'as', 'type', 'conformsTo', 'getResourceKey',
  'getReferenceKey', 'extension',
]);

const REGEX_FUNCTIONS: ReadonlySet<string> = new Set(['matches', 'replaceMatches']);

/**
 * Why a regular expression from a mapping cannot run, or undefined. Mapping regexes run on a linear-time engine
 * (regex.ts), so backtracking is no concern; what that engine cannot do (back-references, lookarounds, huge
 * repetition counts) is refused when the mapping loads, with the reason.
 */
export function unsafeRegex(pattern: string): string | undefined {
  return regexProblem(pattern);
}

/** Refuses functions outside the allowed set and unsafe regexes, at compile time. */
function checkFunctions(node: unknown, seen = new Set<unknown>()): void {
  if (node === null || typeof node !== 'object' || seen.has(node)) return;
  seen.add(node);
  if (node instanceof FunctionAtom) {
    if (!ALLOWED_FUNCTIONS.has(node.name)) throw new Error(`function '${node.name}()' is not allowed in mapping expressions`);
    if (REGEX_FUNCTIONS.has(node.name)) {
      const pattern = (node.args[0] as { value?: { type?: string; value?: unknown } } | undefined)?.value;
      if (pattern?.type !== 'string' || typeof pattern.value !== 'string') throw new Error(`${node.name}() takes a literal regular expression in mappings`);
      const unsafe = unsafeRegex(pattern.value);
      if (unsafe) throw new Error(`${node.name}('${pattern.value}'): ${unsafe}`);
    }
  }
  for (const value of Object.values(node)) {
    if (Array.isArray(value)) value.forEach((v) => checkFunctions(v, seen));
    else checkFunctions(value, seen);
  }
}

type AtomEval = (context: AtomContext, input: TypedValue[]) => TypedValue[];

function isAtom(value: unknown): value is { eval: AtomEval } {
  return value !== null && typeof value === 'object' && typeof (value as { eval?: unknown }).eval === 'function';
}

/** Makes every node of a parse tree (ours alone: parseFhirPath builds a new one each call) tick the budget. */
function instrument(node: { eval: AtomEval }, seen = new Set<object>()): void {
  if (seen.has(node)) return;
  seen.add(node);
  for (const value of Object.values(node)) {
    if (isAtom(value)) instrument(value, seen);
    else if (Array.isArray(value)) for (const v of value) if (isAtom(v)) instrument(v, seen);
  }
  const original = node instanceof FunctionAtom && REGEX_FUNCTIONS.has(node.name) ? linearRegex(node) : node.eval.bind(node);
  node.eval = (context, input) => {
    tick(1 + input.length);
    const out = original(context, input);
    checkResult(out, (t) => (t as TypedValue).value);
    return out;
  };
}

/**
 * `date + 28 days` and `date - 1 'mo'` as FHIRPath defines them. @medplum/core (5.x) joins a date and a quantity
 * as text (`@2016-05-08 + 28 days` gives "2016-05-0828"), so every `+`/`-` whose right side is a time quantity
 * is computed here (dates.ts keeps the date's precision); all other arithmetic stays with the engine. A date a
 * let holds is a string: it is read as a date when it is one, since string + quantity means nothing else.
 */
function dateArithmetic(node: unknown, seen = new Set<unknown>()): void {
  if (node === null || typeof node !== 'object' || seen.has(node)) return;
  seen.add(node);
  for (const value of Object.values(node)) {
    if (Array.isArray(value)) value.forEach((v) => dateArithmetic(v, seen));
    else dateArithmetic(value, seen);
  }
  if (!(node instanceof ArithmeticOperatorAtom) || (node.operator !== '+' && node.operator !== '-') || node.left === node.right) return;
  const atom = node;
  const original = atom.eval.bind(atom);
  atom.eval = (context, input) => {
    const right = atom.right.eval(context, input);
    const quantity = right.length === 1 && right[0].type === 'Quantity' ? (right[0].value as { value?: number; unit?: string; code?: string }) : undefined;
    const unit = calendarUnit(quantity?.code ?? quantity?.unit);
    if (!quantity || !unit) return original(context, input);
    const left = atom.left.eval(context, input);
    if (left.length === 0 || typeof quantity.value !== 'number') return [];
    if (left.length > 1) throw new Error(`date arithmetic on ${left.length} values where one is expected`);
    const { type, value } = left[0];
    if (typeof value !== 'string' || !['date', 'dateTime', 'string'].includes(type)) {
      throw new Error(`cannot add ${unit} to a ${type}: the left side must be a date or date-time`);
    }
    try {
      return [{ type, value: shiftDate(value, atom.operator === '-' ? -quantity.value : quantity.value, unit) }];
    } catch (err) {
      if (err instanceof DateFormatError) throw new Error(err.message);
      throw err;
    }
  };
}

/** The literal pattern of a `matches`/`replaceMatches` call (checkFunctions made sure there is one). */
function regexLiteral(node: FunctionAtom): string {
  return (node.args[0] as unknown as { value: { value: string } }).value.value;
}

/**
 * `matches`/`replaceMatches` on the linear-time engine instead of @medplum/core's, which builds a JavaScript
 * RegExp per call (a backtracking engine nothing can interrupt). Same results: a search anywhere in a single
 * string input, groups as `$1`, `$<name>` or `${name}` in the substitution.
 */
function linearRegex(node: FunctionAtom): AtomEval {
  const regex = compileMappingRegex(regexLiteral(node));
  const substitution = node.args[1] as unknown as { eval: AtomEval } | undefined;
  return (context, input) => {
    if (input.length === 0) return [];
    if (input.length > 1) throw new Error(`${node.name}() on ${input.length} values where one is expected`);
    const text = input[0].value;
    if (typeof text !== 'string') throw new TypeError(`${node.name}() on a value that is not a string`);
    checkRegexInput(text);
    if (node.name === 'matches') return [{ type: 'boolean', value: regexMatches(regex, text) }];
    const replacement = substitution?.eval(context, input)[0]?.value;
    if (typeof replacement !== 'string') throw new TypeError('replaceMatches() needs a string substitution');
    return [{ type: 'string', value: regexReplaceAll(regex, text, replacement) }];
  };
}

function clip(text: string, max = 120): string {
  return text.length > max ? `${text.slice(0, max)}...` : text;
}

/** A record's own field: `constructor` or `toString` of a record is no field of it. */
function ownField(fields: Readonly<Record<string, string>>, name: string): string | undefined {
  return Object.hasOwn(fields, name) ? fields[name] : undefined;
}

const SIMPLE_FIELD = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SIMPLE_VARIABLE = /^%[A-Za-z_][A-Za-z0-9_]*$/;
/** First identifier the expression navigates from its input, for error messages. */
function firstField(expression: string): string {
  // Quoted strings, date literals and calendar words after a number (`28 days`) are not fields: an error in
  // `@2016-05-08 + 28 days` once blamed a field called `days`.
  const stripped = expression
    .replace(/'(?:[^'\\]|\\.)*'/g, "''")
    .replace(/@[0-9T:.+\-Z]+/g, '@')
    .replace(/(\d)\s*(?:years?|months?|weeks?|days?|hours?|minutes?|seconds?|milliseconds?)\b/g, '$1');
  const match = /(?<![.%A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()/.exec(stripped);
  return match ? match[1] : expression;
}

/**
 * Compiles a FHIRPath expression once. Plain field names and variables become direct reads, the common case
 * in mappings; anything else runs on @medplum/core's FHIRPath engine (sandboxed: no JavaScript evaluation,
 * nothing that reaches the environment, files or network) under the evaluation budget of budget.ts.
 * Throws on a syntax error, a function a mapping may not call or an unsafe regex: the compiler turns it into
 * a mapping error.
 */
export function compileExpression(source: string, constants: ReadonlyMap<string, unknown>): CompiledExpression {
  const text = source.trim();
  if (SIMPLE_FIELD.test(text) && !['true', 'false'].includes(text)) {
    return {
      source: text,
      field: text,
      evaluate: (ctx) => {
        const value = ownField(ctx.record.fields, text);
        return value === undefined ? [] : [value];
      },
      one: (ctx) => ownField(ctx.record.fields, text),
    };
  }
  if (SIMPLE_VARIABLE.test(text)) {
    const name = text.slice(1);
    const builtIn = BUILT_INS[name];
    if (builtIn) return { source: text, field: text, evaluate: (ctx) => [builtIn(ctx.record)], one: (ctx) => builtIn(ctx.record) };
    if (constants.has(name)) {
      const constant = constants.get(name);
      const value = [constant];
      return { source: text, field: text, evaluate: () => value, one: () => constant };
    }
    return {
      source: text,
      field: text,
      evaluate: (ctx) => {
        const value = ctx.lets.get(name);
        return value === undefined || value === null ? [] : [value];
      },
      one: (ctx) => ctx.lets.get(name) ?? undefined,
    };
  }
  if (text.length > MAX_EXPRESSION_LENGTH) throw new Error(`expression is ${text.length} characters long (limit ${MAX_EXPRESSION_LENGTH})`);
  const atom: FhirPathAtom = parseFhirPath(text);
  checkFunctions(atom);
  const fast = compileFast(atom);
  dateArithmetic(atom);
  instrument(atom as unknown as { eval: AtomEval });
  const general = (ctx: EvalContext) => evalFhirPathTyped(atom, ctx.input, ctx.fhirPathContext.variables).map((t) => t.value);
  const field = firstField(text);
  const run: (ctx: EvalContext) => unknown[] = fast
    ? (ctx) => {
        try {
          return fast(ctx);
        } catch (err) {
          if (err instanceof Unsupported) return general(ctx);
          throw err;
        }
      }
    : general;
  const stopped = (reason: string) => new FieldError(field, undefined, `expression '${clip(text)}' stopped: ${reason}`);
  const evaluate = (ctx: EvalContext): unknown[] => withinBudget(() => run(ctx), stopped);
  return {
    source: text,
    field,
    evaluate,
    one: (ctx) => singleValue(text, field, evaluate(ctx)),
  };
}

/** FHIRPath truthiness of a result: a single `true`, or (per the spec's singleton rule) any non-empty non-boolean. */
export function isTrue(values: unknown[]): boolean {
  if (values.length === 0) return false;
  if (values.length === 1 && typeof values[0] === 'boolean') return values[0];
  return true;
}
