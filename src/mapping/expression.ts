import { evalFhirPathTyped, parseFhirPath, type AtomContext, type FhirPathAtom, type TypedValue } from '@medplum/core';
import type { SourceRecord } from '../source/record.ts';
import { FieldError } from './errors.ts';
import { compileFast, Unsupported, type FastScope } from './fast-path.ts';

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
    if (name === 'group') return this.group ? { all: this.group.map((g) => g.fields) } : undefined;
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
      if (this.group) variables['%group'] = { type: 'BackboneElement', value: { all: this.group.map((g) => g.fields) } };
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
    const grouped: Record<string, Record<string, string>[]> = { all: [] };
    for (const r of records) {
      grouped.all.push(r.fields);
      (grouped[r.type] ??= []).push(r.fields);
    }
    view = grouped;
    subjectViews.set(records, view);
  }
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

const SIMPLE_FIELD = /^[A-Za-z_][A-Za-z0-9_]*$/;
const SIMPLE_VARIABLE = /^%[A-Za-z_][A-Za-z0-9_]*$/;
/** First identifier the expression navigates from its input, for error messages. */
function firstField(expression: string): string {
  const stripped = expression.replace(/'(?:[^'\\]|\\.)*'/g, "''");
  const match = /(?<![.%A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()/.exec(stripped);
  return match ? match[1] : expression;
}

/**
 * Compiles a FHIRPath expression once. Plain field names and variables become direct reads, the common case
 * in mappings; anything else runs on @medplum/core's FHIRPath engine (sandboxed: no JavaScript evaluation).
 * Throws on a syntax error, which the compiler turns into a mapping error.
 */
export function compileExpression(source: string, constants: ReadonlyMap<string, unknown>): CompiledExpression {
  const text = source.trim();
  if (SIMPLE_FIELD.test(text) && !['true', 'false'].includes(text)) {
    return {
      source: text,
      field: text,
      evaluate: (ctx) => {
        const value = ctx.record.fields[text];
        return value === undefined ? [] : [value];
      },
      one: (ctx) => ctx.record.fields[text],
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
  const atom: FhirPathAtom = parseFhirPath(text);
  const general = (ctx: EvalContext) => evalFhirPathTyped(atom, ctx.input, ctx.fhirPathContext.variables).map((t) => t.value);
  const fast = compileFast(atom);
  const field = firstField(text);
  let evaluate: (ctx: EvalContext) => unknown[];
  const compiled: CompiledExpression = {
    source: text,
    field,
    evaluate: (ctx) => evaluate(ctx),
    one: (ctx) => singleValue(text, field, evaluate(ctx)),
  };
  evaluate = fast
      ? (ctx) => {
          try {
            return fast(ctx);
          } catch (err) {
            if (err instanceof Unsupported) return general(ctx);
            throw err;
          }
        }
      : general;
  return compiled;
}

/** FHIRPath truthiness of a result: a single `true`, or (per the spec's singleton rule) any non-empty non-boolean. */
export function isTrue(values: unknown[]): boolean {
  if (values.length === 0) return false;
  if (values.length === 1 && typeof values[0] === 'boolean') return values[0];
  return true;
}
