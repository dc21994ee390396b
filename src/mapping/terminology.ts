import { readFile } from 'node:fs/promises';
import type { Coding, ConceptMap } from '@medplum/fhirtypes';
import type { CodingSpec, ValueMapSpec } from './types.ts';

/** Local code → standard coding, from a value map in the mapping file or a FHIR ConceptMap. */
export interface CodeTranslation {
  readonly name: string;
  /** The coding for a source value; undefined when unmapped and the map says `omit`. Throws UnmappedCodeError. */
  translate(value: string): Coding | undefined;
}

export class UnmappedCodeError extends Error {}

function toCoding(entry: string | CodingSpec, system: string | undefined): Coding {
  if (typeof entry === 'string') return system ? { system, code: entry } : { code: entry };
  const coding: Coding = {};
  const sys = entry.system ?? system;
  if (sys) coding.system = sys;
  coding.code = entry.code;
  if (entry.display) coding.display = entry.display;
  return coding;
}

const normalize = (value: string, caseInsensitive: boolean) => (caseInsensitive ? value.trim().toUpperCase() : value.trim());

export function valueMapTranslation(name: string, spec: ValueMapSpec): CodeTranslation {
  const caseInsensitive = spec.caseInsensitive ?? false;
  const table = new Map<string, Coding>();
  for (const [source, target] of Object.entries(spec.map)) {
    table.set(normalize(source, caseInsensitive), Object.freeze(toCoding(target, spec.system)));
  }
  const unmapped = spec.unmapped ?? 'error';
  const fallback = typeof unmapped === 'object' ? Object.freeze(toCoding(unmapped.default, spec.system)) : undefined;
  return {
    name,
    translate(value) {
      const hit = table.get(normalize(value, caseInsensitive));
      if (hit) return hit;
      if (fallback) return fallback;
      if (unmapped === 'omit') return undefined;
      throw new UnmappedCodeError(`not in value map '${name}' (expected one of ${[...table.keys()].slice(0, 12).join(', ')})`);
    },
  };
}

/** Loads a FHIR ConceptMap; `group.unmapped` (provided/fixed) is honoured, anything else unmapped is an error. */
export async function conceptMapTranslation(name: string, path: string): Promise<CodeTranslation> {
  const map = JSON.parse(await readFile(path, 'utf8')) as ConceptMap;
  if (map.resourceType !== 'ConceptMap') throw new Error(`${path} is not a FHIR ConceptMap`);
  const table = new Map<string, Coding>();
  const defaults: ((value: string) => Coding | undefined)[] = [];
  for (const group of map.group ?? []) {
    for (const element of group.element ?? []) {
      const target = element.target?.find((t) => t.equivalence !== 'unmatched' && t.equivalence !== 'disjoint');
      if (!element.code || !target?.code || table.has(element.code)) continue;
      table.set(element.code, Object.freeze({ system: group.target, code: target.code, ...(target.display ? { display: target.display } : {}) }));
    }
    const unmapped = group.unmapped;
    if (unmapped?.mode === 'provided') defaults.push((value) => ({ system: group.target, code: value }));
    else if (unmapped?.mode === 'fixed' && unmapped.code) {
      const fixed = { system: group.target, code: unmapped.code, ...(unmapped.display ? { display: unmapped.display } : {}) };
      defaults.push(() => fixed);
    }
  }
  return {
    name,
    translate(value) {
      const hit = table.get(value.trim());
      if (hit) return hit;
      for (const fallback of defaults) {
        const coding = fallback(value.trim());
        if (coding) return coding;
      }
      throw new UnmappedCodeError(`not mapped by ConceptMap '${name}' (${map.url ?? path})`);
    },
  };
}
