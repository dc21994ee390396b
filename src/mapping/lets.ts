import type { MappingIssue } from './errors.ts';
import { BUILT_IN_VARIABLES } from './expression.ts';
import type { LoadedMapping } from './load.ts';
import type { ResourceRuleSpec } from './types.ts';

/**
 * Names a piece of a rule reads as lets: `%name` in expressions (outside quoted literals) and `$var: name`.
 * Constants and built-ins are not lets.
 */
export function letReads(node: unknown, constants: ReadonlyMap<string, unknown>, out = new Set<string>()): Set<string> {
  if (typeof node === 'string') {
    for (const m of node.replace(/'(?:[^'\\]|\\.)*'/g, "''").matchAll(/%([A-Za-z_][A-Za-z0-9_]*)/g)) {
      if (!BUILT_IN_VARIABLES.has(m[1]) && !constants.has(m[1])) out.add(m[1]);
    }
  } else if (Array.isArray(node)) node.forEach((n) => letReads(n, constants, out));
  else if (node && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$var' && typeof value === 'string') out.add(value);
      else letReads(value, constants, out);
    }
  }
  return out;
}

/** Names a template reads with `$var: name, required: true`: lets the site must define for the rule to map. */
function requiredReads(node: unknown, out = new Set<string>()): Set<string> {
  if (Array.isArray(node)) node.forEach((n) => requiredReads(n, out));
  else if (node && typeof node === 'object') {
    const record = node as Record<string, unknown>;
    if (typeof record.$var === 'string' && record.required === true) out.add(record.$var);
    Object.values(record).forEach((n) => requiredReads(n, out));
  }
  return out;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1].toLowerCase() === b[j - 1].toLowerCase() ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length];
}

/** The candidate closest to `name` when it is close enough to be a typo of it. */
export function closestName(name: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(name.length / 4)) ? best : undefined;
}

/** What a base rule asks of a site file: the lets its template reads, and those it cannot map without. */
export interface RuleContract {
  readonly reads: readonly string[];
  readonly required: readonly string[];
}

export function ruleContract(rule: Pick<ResourceRuleSpec, 'template'>, constants: ReadonlyMap<string, unknown>): RuleContract {
  return { reads: [...letReads(rule.template, constants)].sort(), required: [...requiredReads(rule.template)].sort() };
}

/**
 * Lets that cannot do what their author meant, found when the mapping loads rather than as empty values or
 * "required value is missing" rejects on every record later:
 * - a let read by `when`, `key` or `groupBy` (computed before any let) or by an earlier let (lets are computed
 *   in order): it reads as empty there;
 * - a let nothing reads (a misspelled name: the template reads another), with the close name it may mean;
 * - a let the template requires (`$var: name, required: true`) that the rule does not define: the base's
 *   contract, reported in the site file.
 */
export function letIssues(loaded: LoadedMapping, constants: ReadonlyMap<string, unknown>): MappingIssue[] {
  const issues: MappingIssue[] = [];
  const at = (where: { file: string; line?: number }, key: readonly string[], message: string) => issues.push({ ...where, key: key.join('.'), message });
  for (const [id, rule] of Object.entries(loaded.spec.resources)) {
    const path = ['resources', id];
    const lets = Object.entries(rule.let ?? {});
    const names = new Set(lets.map(([name]) => name));
    const read = new Set<string>();
    for (const key of ['when', 'key', 'groupBy'] as const) {
      for (const name of letReads(rule[key], constants)) {
        read.add(name);
        if (names.has(name)) {
          at(loaded.locate([...path, key]), [...path, key], `reads %${name}, a let of this rule, but ${key} is computed before the lets: it is always empty there (read the source field instead)`);
        }
      }
    }
    lets.forEach(([name, node], i) => {
      for (const used of letReads(node, constants)) {
        read.add(used);
        const defined = lets.findIndex(([other]) => other === used);
        if (defined >= i) {
          const order = defined === i ? 'itself' : `'${used}', which is defined after it (lets are computed in order: move '${used}' above '${name}')`;
          at(loaded.locate([...path, 'let', name]), [...path, 'let', name], `reads ${order}; it is empty there`);
        }
      }
    });
    const contract = ruleContract(rule, constants);
    for (const name of contract.reads) read.add(name);
    for (const [name] of lets) {
      if (read.has(name)) continue;
      const guess = closestName(name, contract.reads.filter((r) => !names.has(r)));
      const hint = guess ? `did you mean '${guess}'? ` : '';
      at(loaded.locate([...path, 'let', name]), [...path, 'let', name], `let '${name}' is never read: ${hint}the template of rule '${id}' reads ${contract.reads.map((r) => `'${r}'`).join(', ') || 'no lets'}`);
    }
    for (const name of contract.required) {
      if (names.has(name)) continue;
      const base = loaded.locateBase([...path, 'template']);
      const where = base ? ` (${base.line ? `${base.file}:${base.line}` : base.file})` : '';
      at(loaded.locateSite([...path, 'let']), [...path, 'let', name], `rule '${id}'${where} requires let '${name}' and the mapping does not define it: add it under resources.${id}.let`);
    }
  }
  return issues;
}
