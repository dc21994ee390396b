import type { FhirPathAtom } from '@medplum/core';
import { checkResult, tick } from './budget.ts';

/**
 * A closure compiler for the FHIRPath that mappings actually use (field paths, variables, literals, comparisons,
 * string operators and a dozen functions), built from @medplum/core's parse tree. Going through the general
 * evaluator costs a typed-value allocation per step and a variables object per record; these closures work
 * on plain values. Anything outside the subset returns undefined at compile time, or throws Unsupported at
 * run time (a type mix, say), and the caller then uses @medplum/core for that expression: one semantics,
 * defined by the general engine, checked against it in fast-path.test.ts. Loops and string building tick the
 * evaluation budget (budget.ts) like the general engine's steps do.
 */
export class Unsupported extends Error {}

/** What a closure can read: the record's fields and the mapping's variables. */
export interface FastScope {
  readonly fields: Readonly<Record<string, unknown>>;
  variable(name: string): unknown;
}

type Fast = (scope: FastScope, focus: readonly unknown[]) => unknown[];

// The parse tree's classes are minified in the published bundle, so nodes are told apart by shape.
interface Node {
  name?: string;
  args?: Node[];
  operator?: string;
  left?: Node;
  right?: Node;
  value?: { type: string; value: unknown };
  child?: Node;
}

function children(focus: readonly unknown[], name: string): unknown[] {
  tick(1 + focus.length);
  const out: unknown[] = [];
  for (const item of focus) {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) continue;
    // Own fields only: `constructor` or `toString` of a record is no field of it.
    if (!Object.hasOwn(item, name)) continue;
    const value = (item as Record<string, unknown>)[name];
    if (value === undefined || value === null) continue;
    if (Array.isArray(value)) {
      for (const v of value) if (v !== undefined && v !== null) out.push(v);
    } else out.push(value);
  }
  return out;
}

function singleton(values: unknown[]): unknown {
  if (values.length > 1) throw new Unsupported();
  return values[0];
}

/** FHIRPath truthiness of a collection: empty → undefined, one boolean → itself, one anything else → true. */
function truth(values: unknown[]): boolean | undefined {
  if (values.length === 0) return undefined;
  if (values.length === 1 && typeof values[0] === 'boolean') return values[0];
  if (values.length === 1) return true;
  throw new Unsupported();
}

function literalString(node: Node | undefined): string | undefined {
  return node?.value && node.value.type === 'string' ? (node.value.value as string) : undefined;
}

function literalInteger(node: Node | undefined): number | undefined {
  return node?.value && node.value.type === 'integer' ? (node.value.value as number) : undefined;
}

const DECIMAL = /^[+-]?\d+(\.\d+)?$/;
const INTEGER = /^[+-]?\d+$/;

function stringFunction(fn: (s: string) => unknown): (focus: unknown[]) => unknown[] {
  return (focus) => {
    const v = singleton(focus);
    if (v === undefined) return [];
    if (typeof v !== 'string') throw new Unsupported();
    const r = fn(v);
    return r === undefined ? [] : [r];
  };
}

function compileFunction(node: Node, input: Fast): Fast | undefined {
  const args = node.args ?? [];
  const name = node.name!;
  const simple = (fn: (focus: unknown[]) => unknown[]): Fast => (scope, focus) => fn(input(scope, focus));
  if (args.length === 0) {
    switch (name) {
      case 'exists':
        return simple((f) => [f.length > 0]);
      case 'empty':
        return simple((f) => [f.length === 0]);
      case 'first':
        return simple((f) => f.slice(0, 1));
      case 'last':
        return simple((f) => f.slice(-1));
      case 'count':
        return simple((f) => [f.length]);
      case 'upper':
        return simple(stringFunction((s) => s.toUpperCase()));
      case 'lower':
        return simple(stringFunction((s) => s.toLowerCase()));
      case 'not':
        return simple((f) => {
          const t = truth(f);
          return t === undefined ? [] : [!t];
        });
      case 'toDecimal':
        return simple((f) => {
          const v = singleton(f);
          if (typeof v === 'number') return [v];
          if (typeof v === 'string') return DECIMAL.test(v) ? [Number(v)] : [];
          if (v === undefined) return [];
          throw new Unsupported();
        });
      case 'toInteger':
        return simple((f) => {
          const v = singleton(f);
          if (typeof v === 'number' && Number.isInteger(v)) return [v];
          if (typeof v === 'string') return INTEGER.test(v) ? [Number(v)] : [];
          if (v === undefined) return [];
          throw new Unsupported();
        });
      case 'toString':
        return simple((f) => {
          const v = singleton(f);
          if (v === undefined) return [];
          if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return [String(v)];
          throw new Unsupported();
        });
      default:
        return undefined;
    }
  }
  if (name === 'iif' && (args.length === 2 || args.length === 3)) {
    const [cond, yes, no] = args.map((a) => compile(a));
    if (!cond || !yes || (args.length === 3 && !no)) return undefined;
    return (scope, focus) => {
      const f = input(scope, focus);
      if (f.length > 1) throw new Unsupported();
      return truth(cond(scope, f)) === true ? yes(scope, f) : no ? no(scope, f) : [];
    };
  }
  if (name === 'where' && args.length === 1) {
    const criteria = compile(args[0]);
    if (!criteria) return undefined;
    return (scope, focus) =>
      input(scope, focus).filter((item) => {
        tick();
        return truth(criteria(scope, [item])) === true;
      });
  }
  if (name === 'exists' && args.length === 1) {
    const criteria = compile(args[0]);
    if (!criteria) return undefined;
    return (scope, focus) => [
      input(scope, focus).some((item) => {
        tick();
        return truth(criteria(scope, [item])) === true;
      }),
    ];
  }
  const s0 = literalString(args[0]);
  if (args.length === 1 && s0 !== undefined) {
    switch (name) {
      case 'contains':
        return simple(stringFunction((s) => s.includes(s0)));
      case 'startsWith':
        return simple(stringFunction((s) => s.startsWith(s0)));
      case 'endsWith':
        return simple(stringFunction((s) => s.endsWith(s0)));
    }
  }
  if (name === 'replace' && args.length === 2 && s0 !== undefined && literalString(args[1]) !== undefined) {
    const by = literalString(args[1])!;
    return simple((focus) => {
      const out = stringFunction((s) => s.split(s0).join(by))(focus);
      checkResult(out);
      return out;
    });
  }
  if (name === 'substring' && (args.length === 1 || args.length === 2)) {
    const start = literalInteger(args[0]);
    const length = args.length === 2 ? literalInteger(args[1]) : undefined;
    if (start === undefined || (args.length === 2 && length === undefined)) return undefined;
    return simple(stringFunction((s) => (start < 0 || start >= s.length ? undefined : length === undefined ? s.slice(start) : s.slice(start, start + length))));
  }
  return undefined;
}

function compare(op: string, a: unknown, b: unknown): boolean {
  if (typeof a !== typeof b || (typeof a !== 'string' && typeof a !== 'number' && typeof a !== 'boolean')) throw new Unsupported();
  switch (op) {
    case '=':
      return a === b;
    case '!=':
      return a !== b;
    case '<':
      return (a as number) < (b as number);
    case '>':
      return (a as number) > (b as number);
    case '<=':
      return (a as number) <= (b as number);
    default:
      return (a as number) >= (b as number);
  }
}

function compileBinary(node: Node): Fast | undefined {
  const op = node.operator!;
  // Unary operators come as an operator node whose both sides are the operand, with their own implementation.
  if (node.left === node.right) return undefined;
  const left = compile(node.left!);
  const right = op === '.' ? undefined : compile(node.right!);
  if (op === '.') {
    if (!left) return undefined;
    return compileStep(node.right!, left);
  }
  if (!left || !right) return undefined;
  switch (op) {
    case '=':
    case '!=':
    case '<':
    case '>':
    case '<=':
    case '>=':
      return (scope, focus) => {
        const a = left(scope, focus);
        const b = right(scope, focus);
        if (a.length === 0 || b.length === 0) return [];
        return [compare(op, singleton(a), singleton(b))];
      };
    case '&':
      return (scope, focus) => {
        const a = singleton(left(scope, focus));
        const b = singleton(right(scope, focus));
        if ((a !== undefined && typeof a !== 'string') || (b !== undefined && typeof b !== 'string')) throw new Unsupported();
        const joined = [(a ?? '') + (b ?? '')];
        checkResult(joined);
        return joined;
      };
    case '+':
    case '-':
    case '*':
    case '/':
      return (scope, focus) => {
        const a = singleton(left(scope, focus));
        const b = singleton(right(scope, focus));
        if (a === undefined || b === undefined) return [];
        if (op === '+' && typeof a === 'string' && typeof b === 'string') {
          const joined = [a + b];
          checkResult(joined);
          return joined;
        }
        if (typeof a !== 'number' || typeof b !== 'number') throw new Unsupported();
        // Decimal arithmetic in JS floats matches the general engine only for integers: leave the rest to it.
        if (!Number.isInteger(a) || !Number.isInteger(b)) throw new Unsupported();
        if (op === '/') throw new Unsupported();
        return [op === '+' ? a + b : op === '-' ? a - b : a * b];
      };
    case 'and':
    case 'or':
      return (scope, focus) => {
        const a = truth(left(scope, focus));
        const b = truth(right(scope, focus));
        if (op === 'and') {
          if (a === false || b === false) return [false];
          return a === true && b === true ? [true] : [];
        }
        if (a === true || b === true) return [true];
        return a === false && b === false ? [false] : [];
      };
    default:
      return undefined;
  }
}

/** The right-hand side of a `.`: a field name or a function applied to what the left side gave. */
function compileStep(node: Node, input: Fast): Fast | undefined {
  if (node.args) return compileFunction(node, input);
  if (node.name !== undefined && !node.name.startsWith('%') && !node.operator) {
    const name = node.name;
    return (scope, focus) => children(input(scope, focus), name);
  }
  return undefined;
}

function compile(node: Node): Fast | undefined {
  if ('original' in node && node.child) return compile(node.child);
  if (node.child) return undefined;
  if (node.value && 'type' in node.value && !node.operator) {
    const value = [node.value.value];
    return () => value;
  }
  if (node.args) return compileFunction(node, (_scope, focus) => focus as unknown[]);
  if (node.operator) return compileBinary(node);
  if (node.name !== undefined) {
    const name = node.name;
    if (name.startsWith('%')) {
      const variable = name.slice(1);
      return (scope) => {
        const value = scope.variable(variable);
        return value === undefined || value === null ? [] : [value];
      };
    }
    if (name === '$this') return (_scope, focus) => focus as unknown[];
    if (['true', 'false'].includes(name)) return undefined;
    return (_scope, focus) => children(focus, name);
  }
  return undefined;
}

/**
 * Closure for a parsed expression, or undefined when it uses FHIRPath beyond the fast subset. The closure
 * takes the record's fields as focus.
 */
export function compileFast(atom: FhirPathAtom): ((scope: FastScope) => unknown[]) | undefined {
  const fast = compile(atom as unknown as Node);
  if (!fast) return undefined;
  return (scope) => fast(scope, [scope.fields]);
}
