import type { Coding, Quantity } from '@medplum/fhirtypes';
import { FieldError } from './errors.ts';
import { compileExpression, isTrue, type CompiledExpression, type EvalContext } from './expression.ts';
import { DateFormatError, parseDateOffset, parseSourceDate, shiftDate, type DateParseOptions } from './dates.ts';
import { UnmappedCodeError, type CodeTranslation } from './terminology.ts';
import { conversionFactor, convert, ucumCode, UCUM, UnitError } from './units.ts';

/** Builds one piece of a resource from the evaluation context; undefined means "leave the element out". */
export type Producer = (ctx: EvalContext) => unknown;

/**
 * Resolves `$ref` targets: the fullUrl of the resource a rule made for this subject (and key), or which
 * resource it would have been when that one was rejected.
 */
export type ReferenceResolver = (rule: string, key: string | undefined) => { fullUrl: string } | { rejected: string } | undefined;

export interface CompileEnv {
  readonly constants: ReadonlyMap<string, unknown>;
  readonly translations: ReadonlyMap<string, CodeTranslation>;
  readonly rules: ReadonlySet<string>;
  readonly dates: DateParseOptions;
  /** Records a problem in the mapping at a key path; compilation goes on to report them all at once. */
  issue(path: readonly string[], message: string): void;
}

const DIRECTIVES = ['$expr', '$date', '$map', '$quantity', '$ref', '$var', '$const', '$first'] as const;
type Directive = (typeof DIRECTIVES)[number];
const INTERPOLATION = /\{\{(.+?)\}\}/g;
const AGGREGATES = ['first', 'last', 'min', 'max', 'sum', 'count'] as const;
type Aggregate = (typeof AGGREGATES)[number];

const missing = Symbol('missing');

function expression(env: CompileEnv, path: readonly string[], source: unknown): CompiledExpression | undefined {
  if (typeof source !== 'string' || source.trim() === '') {
    env.issue(path, 'expected a FHIRPath expression (a string)');
    return undefined;
  }
  try {
    return compileExpression(source, env.constants);
  } catch (err) {
    env.issue(path, `invalid FHIRPath '${source}': ${(err as Error).message.replace(/^FhirPathError.*?: /, '')}`);
    return undefined;
  }
}

function display(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

function compare(a: unknown, b: unknown): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
}

function reduce(kind: Aggregate, values: unknown[]): unknown {
  if (kind === 'count') return values.length;
  if (values.length === 0) return undefined;
  switch (kind) {
    case 'first':
      return values[0];
    case 'last':
      return values[values.length - 1];
    case 'min':
      return values.reduce((a, b) => (compare(a, b) <= 0 ? a : b));
    case 'max':
      return values.reduce((a, b) => (compare(a, b) >= 0 ? a : b));
    case 'sum':
      return values.reduce((a, b) => Number(a) + Number(b), 0);
  }
}

/**
 * Evaluates `each` once for the record (or, with an aggregate inside a group, once per group member) and
 * combines the results. `each` returns `missing` for an absent value.
 */
function withAggregate(aggregate: Aggregate | undefined, each: (ctx: EvalContext) => unknown): Producer {
  if (!aggregate) return (ctx) => {
    const v = each(ctx);
    return v === missing ? undefined : v;
  };
  return (ctx) => {
    const members = ctx.group ?? [ctx.record];
    const values: unknown[] = [];
    for (const member of members) {
      const v = each(member === ctx.record ? ctx : ctx.forRecord(member));
      if (v !== missing && v !== undefined) values.push(v);
    }
    return reduce(aggregate, values);
  };
}

function aggregateOption(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Aggregate | undefined {
  const value = node.aggregate;
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !AGGREGATES.includes(value as Aggregate)) {
    env.issue([...path, 'aggregate'], `must be one of ${AGGREGATES.join(', ')}`);
    return undefined;
  }
  return value as Aggregate;
}

function checkOptions(env: CompileEnv, path: readonly string[], node: Record<string, unknown>, allowed: string[]): void {
  for (const key of Object.keys(node)) {
    if (!allowed.includes(key)) env.issue([...path, key], `unknown option '${key}' (allowed: ${allowed.join(', ')})`);
  }
}

function requiredCheck(node: Record<string, unknown>, field: () => string, producer: Producer): Producer {
  if (node.required !== true) return producer;
  return (ctx) => {
    const value = producer(ctx);
    if (value === undefined) throw new FieldError(field(), undefined, 'required value is missing');
    return value;
  };
}

const TYPE_COERCIONS: Record<string, (raw: unknown) => unknown> = {
  string: (raw) => String(raw),
  code: (raw) => String(raw).trim(),
  boolean: (raw) => {
    if (typeof raw === 'boolean') return raw;
    const text = String(raw).trim().toLowerCase();
    if (['true', 'y', 'yes', '1'].includes(text)) return true;
    if (['false', 'n', 'no', '0'].includes(text)) return false;
    throw new Error('is not a yes/no value');
  },
  decimal: (raw) => {
    const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (String(raw).trim() === '' || !Number.isFinite(n)) throw new Error('is not a number');
    return n;
  },
  integer: (raw) => {
    const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (!Number.isInteger(n)) throw new Error('is not a whole number');
    return n;
  },
  unsignedInt: (raw) => {
    const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (!Number.isInteger(n) || n < 0) throw new Error('is not a whole number ≥ 0');
    return n;
  },
  positiveInt: (raw) => {
    const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (!Number.isInteger(n) || n < 1) throw new Error('is not a whole number ≥ 1');
    return n;
  },
};

function compileExpr(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  checkOptions(env, path, node, ['$expr', 'as', 'required', 'aggregate']);
  const expr = expression(env, [...path, '$expr'], node.$expr);
  const as = node.as as string | undefined;
  const coerce = as === undefined ? undefined : TYPE_COERCIONS[as];
  if (as !== undefined && !coerce) env.issue([...path, 'as'], `unknown type '${as}' (one of ${Object.keys(TYPE_COERCIONS).join(', ')})`);
  if (!expr) return () => undefined;
  const producer = withAggregate(aggregateOption(env, path, node), (ctx) => {
    const raw = expr.one(ctx);
    if (raw === undefined || raw === null) return missing;
    if (!coerce) return raw;
    try {
      return coerce(raw);
    } catch (err) {
      throw new FieldError(expr.field, display(raw), `value ${(err as Error).message}`);
    }
  });
  return requiredCheck(node, () => expr.field, producer);
}

function compileDate(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  checkOptions(env, path, node, ['$date', 'type', 'required', 'aggregate', 'formats', 'offset']);
  const expr = expression(env, [...path, '$date'], node.$date);
  const type = node.type ?? 'dateTime';
  if (type !== 'date' && type !== 'dateTime') env.issue([...path, 'type'], "must be 'date' or 'dateTime'");
  const offset = node.offset === undefined ? undefined : parseDateOffset(String(node.offset));
  if (typeof offset === 'string') env.issue([...path, 'offset'], offset);
  const options: DateParseOptions = Array.isArray(node.formats) ? { ...env.dates, formats: node.formats as string[] } : env.dates;
  if (!expr) return () => undefined;
  const producer = withAggregate(aggregateOption(env, path, node), (ctx) => {
    const value = expr.one(ctx);
    if (value === undefined || value === null) return missing;
    const raw = display(value) ?? '';
    try {
      const parsed = parseSourceDate(raw, options);
      const value = offset && typeof offset !== 'string' ? shiftDate(parsed.value, offset.amount, offset.unit) : parsed.value;
      return type === 'date' && parsed.precision === 'time' ? value.slice(0, 10) : value;
    } catch (err) {
      if (err instanceof DateFormatError) throw new FieldError(expr.field, raw, err.message);
      throw err;
    }
  });
  return requiredCheck(node, () => expr.field, producer);
}

function compileMap(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  checkOptions(env, path, node, ['$map', 'value', 'as', 'text', 'display', 'required']);
  const name = node.$map;
  const translation = typeof name === 'string' ? env.translations.get(name) : undefined;
  if (!translation) env.issue([...path, '$map'], `unknown value map or ConceptMap '${String(name)}'`);
  const value = expression(env, [...path, 'value'], node.value);
  const text = node.text === undefined ? undefined : expression(env, [...path, 'text'], node.text);
  // For maps that pass codes through (a ConceptMap's unmapped mode `provided`), the source's own term.
  const displayExpr = node.display === undefined ? undefined : expression(env, [...path, 'display'], node.display);
  const as = node.as ?? 'Coding';
  if (!['Coding', 'CodeableConcept', 'code'].includes(as as string)) env.issue([...path, 'as'], "must be 'Coding', 'CodeableConcept' or 'code'");
  if (!translation || !value) return () => undefined;
  const producer: Producer = (ctx) => {
    const raw = display(value.one(ctx));
    let coding: Coding | undefined;
    if (raw !== undefined) {
      try {
        coding = translation.translate(raw);
      } catch (err) {
        if (err instanceof UnmappedCodeError) throw new FieldError(value.field, raw, err.message);
        throw err;
      }
    }
    if (coding && !coding.display && displayExpr) {
      const shown = display(displayExpr.evaluate(ctx)[0]);
      if (shown !== undefined) coding = { ...coding, display: shown };
    }
    if (as === 'code') return coding?.code;
    if (as === 'Coding') return coding ? { ...coding } : undefined;
    const textValue = text ? display(text.evaluate(ctx)[0]) : undefined;
    if (!coding && textValue === undefined) return undefined;
    return { ...(coding ? { coding: [{ ...coding }] } : {}), ...(textValue !== undefined ? { text: textValue } : {}) };
  };
  return requiredCheck(node, () => value.field, producer);
}

function compileQuantity(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  checkOptions(env, path, node, ['$quantity', 'unit', 'unitFrom', 'to', 'required', 'aggregate']);
  const expr = expression(env, [...path, '$quantity'], node.$quantity);
  const unitFrom = node.unitFrom === undefined ? undefined : expression(env, [...path, 'unitFrom'], node.unitFrom);
  let fixedUnit: string | undefined;
  let target: string | undefined;
  // Units the mapping file gives are no patient data: their errors quote them, with the library's reason.
  const mappingUnit = (unit: string, key: string): string | undefined => {
    try {
      return ucumCode(unit);
    } catch (err) {
      const detail = err instanceof UnitError && err.detail ? ` (${err.detail})` : '';
      env.issue([...path, key], `'${unit}': ${(err as Error).message}${detail}`);
      return undefined;
    }
  };
  if (typeof node.unit === 'string') fixedUnit = mappingUnit(node.unit, 'unit');
  else if (!unitFrom) env.issue(path, "a $quantity needs 'unit' (a UCUM unit) or 'unitFrom' (an expression)");
  if (node.to !== undefined) target = mappingUnit(String(node.to), 'to');
  if (fixedUnit && target) {
    try {
      conversionFactor(fixedUnit, target);
    } catch (err) {
      env.issue(path, `${fixedUnit} ${(err as Error).message}`);
    }
  }
  if (!expr) return () => undefined;
  const producer = withAggregate(aggregateOption(env, path, node), (ctx) => {
    const raw = expr.one(ctx);
    if (raw === undefined || raw === null) return missing;
    const number = typeof raw === 'number' ? raw : Number(String(raw).trim());
    if (!Number.isFinite(number) || String(raw).trim() === '') {
      throw new FieldError(expr.field, display(raw), 'value is not a number');
    }
    let unit = fixedUnit;
    if (!unit && unitFrom) {
      const unitText = display(unitFrom.evaluate(ctx)[0]);
      if (!unitText) throw new FieldError(unitFrom.field, undefined, 'unit is missing');
      try {
        unit = ucumCode(unitText);
      } catch (err) {
        // The reason names the rule, never the unit text: it is a record value (the rejects file keeps it).
        throw new FieldError(unitFrom.field, unitText, `unit: ${(err as Error).message}`);
      }
    }
    const code = target ?? unit!;
    let factor = 1;
    try {
      factor = conversionFactor(unit!, code);
    } catch (err) {
      if (err instanceof UnitError) throw new FieldError(unitFrom?.field ?? expr.field, unit, `unit ${err.message}`);
      throw err;
    }
    return { value: convert(number, factor), unit: code, system: UCUM, code } satisfies Quantity;
  });
  // A summed quantity arrives as a number: keep the Quantity shape.
  return requiredCheck(node, () => expr.field, producer);
}

function compileRef(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  checkOptions(env, path, node, ['$ref', 'key', 'optional', 'display']);
  const target = node.$ref;
  let rule: Producer;
  if (typeof target === 'string') {
    if (!env.rules.has(target)) env.issue([...path, '$ref'], `no resource rule named '${target}'`);
    rule = () => target;
  } else {
    rule = compileNode(env, [...path, '$ref'], target);
  }
  const key = node.key === undefined ? undefined : expression(env, [...path, 'key'], node.key);
  const optional = node.optional === true;
  const displayText = node.display === undefined ? undefined : compileNode(env, [...path, 'display'], node.display);
  return (ctx) => {
    const ruleId = rule(ctx);
    if (ruleId === undefined) return undefined;
    const keyValue = key ? display(key.evaluate(ctx)[0]) : undefined;
    const target = ctx.resolver?.(String(ruleId), keyValue);
    if (target && 'rejected' in target) {
      if (optional) return undefined;
      throw new FieldError('(reference)', undefined, `depends on ${target.rejected}, which was rejected`);
    }
    const fullUrl = target?.fullUrl;
    if (!fullUrl) {
      if (optional) return undefined;
      throw new FieldError(key?.field ?? String(ruleId), keyValue, `no ${String(ruleId)} resource${keyValue ? ' with that key' : ''} for this subject to refer to`);
    }
    const text = displayText?.(ctx);
    return text === undefined ? { reference: fullUrl } : { reference: fullUrl, display: String(text) };
  };
}

function compileInterpolation(env: CompileEnv, path: readonly string[], text: string): Producer {
  const parts: (string | CompiledExpression)[] = [];
  let last = 0;
  for (const match of text.matchAll(INTERPOLATION)) {
    if (match.index > last) parts.push(text.slice(last, match.index));
    const expr = expression(env, path, match[1]);
    if (expr) parts.push(expr);
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return (ctx) => {
    let out = '';
    for (const part of parts) {
      if (typeof part === 'string') out += part;
      else {
        const values = part.evaluate(ctx);
        // A placeholder with no value leaves the whole text out rather than writing half a sentence.
        if (values.length === 0) return undefined;
        out += values.map(display).join(', ');
      }
    }
    return out;
  };
}

function compileDirective(env: CompileEnv, path: readonly string[], node: Record<string, unknown>, directive: Directive): Producer {
  switch (directive) {
    case '$expr':
      return compileExpr(env, path, node);
    case '$date':
      return compileDate(env, path, node);
    case '$map':
      return compileMap(env, path, node);
    case '$quantity':
      return compileQuantity(env, path, node);
    case '$ref':
      return compileRef(env, path, node);
    case '$var': {
      checkOptions(env, path, node, ['$var', 'required']);
      const name = String(node.$var);
      return requiredCheck(node, () => name, (ctx) => {
        const value = ctx.lets.get(name);
        return value === null ? undefined : value;
      });
    }
    case '$const': {
      const value = node.$const;
      return () => value;
    }
    case '$first': {
      if (!Array.isArray(node.$first)) {
        env.issue([...path, '$first'], 'expected a list of alternatives');
        return () => undefined;
      }
      const options = node.$first.map((alt, i) => compileNode(env, [...path, '$first', String(i)], alt));
      return (ctx) => {
        for (const option of options) {
          const value = option(ctx);
          if (value !== undefined) return value;
        }
        return undefined;
      };
    }
  }
}

function compileObject(env: CompileEnv, path: readonly string[], node: Record<string, unknown>): Producer {
  const directives = DIRECTIVES.filter((d) => d in node);
  if (directives.length > 1) env.issue(path, `one directive per value, found ${directives.join(' and ')}`);
  const when = node.$when === undefined ? undefined : expression(env, [...path, '$when'], node.$when);
  let producer: Producer;
  if (directives.length > 0) {
    const rest = { ...node };
    delete rest.$when;
    producer = compileDirective(env, path, rest, directives[0]);
  } else {
    const entries: [string, Producer][] = [];
    for (const [key, value] of Object.entries(node)) {
      if (key === '$when') continue;
      if (key.startsWith('$')) {
        env.issue([...path, key], `unknown directive '${key}' (known: ${[...DIRECTIVES, '$when'].join(', ')})`);
        continue;
      }
      entries.push([key, compileNode(env, [...path, key], value)]);
    }
    producer = (ctx) => {
      let out: Record<string, unknown> | undefined;
      for (const [key, produce] of entries) {
        const value = produce(ctx);
        if (value !== undefined) (out ??= {})[key] = value;
      }
      return out;
    };
  }
  if (!when) return producer;
  return (ctx) => (isTrue(when.evaluate(ctx)) ? producer(ctx) : undefined);
}

/** Compiles one template value into a closure; problems are reported through `env.issue`. */
export function compileNode(env: CompileEnv, path: readonly string[], node: unknown): Producer {
  if (typeof node === 'string') {
    if (node.includes('{{')) return compileInterpolation(env, path, node);
    return () => node;
  }
  if (typeof node === 'number' || typeof node === 'boolean') return () => node;
  if (node === null || node === undefined) return () => undefined;
  if (Array.isArray(node)) {
    const items = node.map((item, i) => compileNode(env, [...path, String(i)], item));
    return (ctx) => {
      const out: unknown[] = [];
      for (const item of items) {
        const value = item(ctx);
        if (value === undefined) continue;
        // A directive that yields several values (a list) spreads into the array.
        if (Array.isArray(value)) out.push(...value);
        else out.push(value);
      }
      return out.length > 0 ? out : undefined;
    };
  }
  return compileObject(env, path, node as Record<string, unknown>);
}
