import {
  createConstraintIssue,
  createProcessingIssue,
  createStructureIssue,
  deepEquals,
  deepIncludes,
  evalFhirPathTyped,
  getDataType,
  isResourceType,
  type InternalSchemaElement,
  type InternalTypeSchema,
  type TypedValue,
} from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { nativeInvariant, type Invariant } from './invariants.ts';

/**
 * A validator compiled once per type schema (base R4 type or profile) into closures over plain JSON.
 *
 * It walks a resource the way @medplum/core's validateResource does — same schema (parsed by @medplum/core from
 * the StructureDefinition snapshot), same rules, same locations and messages — but without wrapping every
 * value in a typed value, with the common invariants as native code, and with what @medplum/core leaves out:
 * required bindings to value sets we hold. test/validation-corpus.test.ts checks that it reports everything
 * validateResource reports.
 */

/** Codes allowed by a required binding as `system|code`, or undefined when the value set is not known here. */
export type BindingLookup = (valueSetUrl: string) => ReadonlySet<string> | undefined;

/** A bare `code` element has no system: it is held to the codes of the set whatever their system. */
function bareCodes(codes: ReadonlySet<string>): Set<string> {
  return new Set([...codes].map((c) => c.slice(c.lastIndexOf('|') + 1)));
}

interface Walk {
  readonly issues: OperationOutcomeIssue[];
  readonly root: Resource;
  readonly resources: Resource[];
}

type ObjectCheck = (value: Record<string, unknown>, path: string, walk: Walk) => void;

/** A JSON property a schema element reads: its key in the object and the FHIR type of what is there. */
interface Slot {
  readonly type: string;
  readonly key: string;
  /** `_key`, where the extensions of a primitive sit. */
  readonly partnerKey: string;
}

const JS_TYPE: Record<string, 'string' | 'number' | 'boolean'> = {
  base64Binary: 'string',
  boolean: 'boolean',
  canonical: 'string',
  code: 'string',
  date: 'string',
  dateTime: 'string',
  decimal: 'number',
  id: 'string',
  instant: 'string',
  integer: 'number',
  integer64: 'string',
  markdown: 'string',
  oid: 'string',
  positiveInt: 'number',
  string: 'string',
  time: 'string',
  unsignedInt: 'number',
  uri: 'string',
  url: 'string',
  uuid: 'string',
  xhtml: 'string',
  'http://hl7.org/fhirpath/System.String': 'string',
};

// The FHIR R4 primitive formats, as @medplum/core checks them.
const FORMATS: Record<string, RegExp> = {
  canonical: /^\S*$/,
  code: /^[^\s]+( [^\s]+)*$/,
  date: /^(\d(\d(\d[1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2]\d|3[0-1]))?)?$/,
  dateTime:
    /^(\d(\d(\d[1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2]\d|3[0-1])(T([01]\d|2[0-3])(:[0-5]\d:([0-5]\d|60)(\.\d{1,9})?)?)?)?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)?)?)?$/,
  id: /^[A-Za-z0-9\-.]{1,64}$/,
  instant:
    /^(\d(\d(\d[1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2]\d|3[0-1])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))$/,
  markdown: /^[\r\n\t\u0020-\uFFFF]+$/,
  oid: /^urn:oid:[0-2](\.(0|[1-9]\d*))+$/,
  string: /^[\r\n\t\u0020-\uFFFF]+$/,
  time: /^([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?$/,
  uri: /^\S*$/,
  url: /^\S*$/,
  uuid: /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  xhtml: /.*/,
};

/**
 * Invariants @medplum/core does not evaluate (they need descendants() or are back-compatibility rules). ele-1 is
 * checked natively instead, on every element (ELE_1).
 */
const SKIPPED_INVARIANTS = new Set(['ele-1', 'dom-3', 'org-1', 'sdf-19']);
const ELE_1 = {
  key: 'ele-1',
  severity: 'error',
  description: 'All FHIR elements must have a @value or children',
  expression: 'hasValue() or (children().count() > id.count())',
} as NonNullable<InternalSchemaElement['constraints']>[number];
const HL7_SD = 'http://hl7.org/fhir/StructureDefinition/';
const INT_MIN = -2_147_483_648;
const INT_MAX = 2_147_483_647;
const TERMINOLOGY_TYPES = new Set(['code', 'Coding', 'CodeableConcept']);

const isPrimitive = (type: string) => type === 'undefined' || type in JS_TYPE;
const HISTORY = '(/_history/[A-Za-z0-9\\-.]{1,64})?';
// The shapes of a literal reference (R4 references.html): a contained #id, urn:uuid/urn:oid (bundle-local), Type/id
// (relative or after a base URL, with an optional version) or a conditional Type?query (transactions only).
const REFERENCE_LOCAL = /^(#([A-Za-z0-9\-.]{1,64})?|urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|urn:oid:[0-2](\.(0|[1-9]\d*))+)$/;
const REFERENCE_TYPED = new RegExp(`^(?:https?://[^\\s?#]+/)?([A-Z][A-Za-z]+)/[A-Za-z0-9\\-.]{1,64}${HISTORY}$`);
const REFERENCE_CONDITIONAL = /^([A-Z][A-Za-z]+)\?\S+$/;

/** The resource type a literal reference names (undefined for local ones); null when its shape is wrong. */
function referenceType(reference: string): string | undefined | null {
  if (REFERENCE_LOCAL.test(reference)) return undefined;
  const typed = REFERENCE_TYPED.exec(reference) ?? REFERENCE_CONDITIONAL.exec(reference);
  return typed && isResourceType(typed[1]) ? typed[1] : null;
}

/** The resource type a Bundle.entry.request.url addresses (`Patient?identifier=...`, `Observation/1`, `AdverseEvent`). */
function requestUrlType(url: string): string | undefined {
  const type = /^(?:https?:\/\/[^?]*\/)?([A-Z][A-Za-z]+)(?:[/?]|$)/.exec(url)?.[1];
  return type && isResourceType(type) ? type : undefined;
}
const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

function isEmptyValue(v: unknown): boolean {
  if (v === null || v === undefined) return true;
  if (typeof v === 'string') return v.length === 0;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v).length === 0;
  return false;
}

function calendarDateOk(str: string): boolean {
  if (str.length < 10) return true;
  const year = Number.parseInt(str.substring(0, 4), 10);
  const month = Number.parseInt(str.substring(5, 7), 10);
  const day = Number.parseInt(str.substring(8, 10), 10);
  return day <= new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** What is wrong with a primitive value, as @medplum/core words it; undefined when nothing is. */
function primitiveProblem(value: unknown, type: string): string | undefined {
  const expected = JS_TYPE[type];
  if (!expected) return `Invalid JSON type: ${type} is not a valid FHIR type`;
  if (typeof value !== expected) return value === null ? undefined : `Invalid JSON type: expected ${expected}, but got ${typeof value}`;
  if (expected === 'string') {
    const str = value as string;
    if (type === 'base64Binary') return !/^[A-Za-z\d+/]+={0,2}$/.test(str) || str.length % 4 !== 0 ? 'Invalid base64Binary format' : undefined;
    if (!str.trim()) return 'String must contain non-whitespace content';
    if (str.length > 1024 * 1024) return 'String cannot be larger than 1 MB';
    const format = FORMATS[type];
    if (format && !format.test(str)) return `Invalid ${type} format`;
    if ((type === 'date' || type === 'dateTime' || type === 'instant') && !calendarDateOk(str)) return `Invalid ${type} value`;
    // R4: "If hours and minutes are specified, a time zone SHALL be populated" (the published regex requires it).
    if (type === 'dateTime' && str.includes('T') && !/(Z|[+-]\d{2}:\d{2})$/.test(str)) return 'dateTime with a time must have a timezone';
    return undefined;
  }
  if (expected === 'number') {
    const n = value as number;
    const integer = type === 'integer' || type === 'positiveInt' || type === 'unsignedInt';
    if (Number.isNaN(n) || !Number.isFinite(n)) return 'Invalid numeric value';
    if (integer && !Number.isInteger(n)) return 'Expected number to be an integer';
    if (type === 'integer' && (n < INT_MIN || n > INT_MAX)) return `Expected number to be in the range ${INT_MIN}..${INT_MAX}`;
    if (type === 'positiveInt' && (n < 1 || n > INT_MAX)) return `Expected number to be in the range 1..${INT_MAX}`;
    if (type === 'unsignedInt' && (n < 0 || n > INT_MAX)) return `Expected number to be in the range 0..${INT_MAX}`;
  }
  return undefined;
}

/** Nulls anywhere in the JSON, as @medplum/core reports them before anything else. */
function checkNulls(obj: Record<string, unknown>, path: string, issues: OperationOutcomeIssue[]): void {
  for (const key in obj) {
    const value = obj[key];
    const propertyPath = `${path}.${key}`;
    if (value === null) issues.push(createStructureIssue(propertyPath, 'Invalid null value'));
    else if (Array.isArray(value)) {
      const partner = obj[key.startsWith('_') ? key.slice(1) : `_${key}`] as unknown[] | undefined;
      for (let i = 0; i < value.length; i++) {
        const item = value[i];
        if (item === undefined) issues.push(createStructureIssue(`${propertyPath}[${i}]`, 'Invalid undefined value'));
        else if (item === null && !partner?.[i]) issues.push(createStructureIssue(`${propertyPath}[${i}]`, 'Invalid null value'));
        else if (item && typeof item === 'object') checkNulls(item as Record<string, unknown>, `${propertyPath}[${i}]`, issues);
      }
    } else if (typeof value === 'object') checkNulls(value as Record<string, unknown>, propertyPath, issues);
  }
}

/** Finds which slot of an element an object fills (allocation-free: slots are made at compile time). */
type Reader = (obj: Record<string, unknown>) => Slot | undefined;

/** Compiles the read of one step of an element key (`name`, or `value[x]` → whichever `valueX` key is there). */
function stepReader(step: string, types: readonly string[], anyType = false): Reader {
  if (step.endsWith('[x]') && anyType) {
    // A parent on the way to a nested key is read whatever its type, as @medplum/core reads it.
    const base = step.slice(0, -3);
    return (obj) => {
      for (const key in obj) {
        if (key.length > base.length && key.startsWith(base) && /[A-Z]/.test(key[base.length])) {
          const type = key.charAt(base.length).toLowerCase() + key.slice(base.length + 1);
          return { key, type: types.find((t) => t.toLowerCase() === type.toLowerCase()) ?? type, partnerKey: `_${key}` };
        }
      }
      return undefined;
    };
  }
  if (step.endsWith('[x]')) {
    const base = step.slice(0, -3);
    const slots: Slot[] = types.map((type) => ({ key: base + capitalize(type), type, partnerKey: `_${base}${capitalize(type)}` }));
    return (obj) => {
      for (const slot of slots) if (obj[slot.key] !== undefined) return slot;
      return undefined;
    };
  }
  const slot: Slot = { key: step, type: types[0] ?? 'undefined', partnerKey: `_${step}` };
  return (obj) => (obj[step] === undefined ? undefined : slot);
}

function codesOf(value: unknown, type: string): string[] {
  if (type === 'code') return typeof value === 'string' ? [value] : [];
  if (type === 'Coding') {
    const c = value as { system?: string; code?: string };
    return c?.code ? [`${c.system ?? ''}|${c.code}`] : [];
  }
  // Malformed shapes (coding not an array, a coding not an object) are reported by the structure checks.
  const coding = (value as { coding?: unknown })?.coding;
  if (!Array.isArray(coding)) return [];
  return (coding as ({ system?: string; code?: string } | null)[]).filter((c) => c && typeof c === 'object' && c.code).map((c) => `${c!.system ?? ''}|${c!.code}`);
}

interface CompiledElement {
  readonly key: string;
  readonly steps: readonly string[];
  /** Readers of each step of the key (parents of a nested key, then the element itself). */
  readonly readers: readonly Reader[];
  readonly element: InternalSchemaElement;
  readonly types: readonly string[];
  readonly invariants: readonly Invariant[];
  readonly constraints: InternalSchemaElement['constraints'];
  readonly allowedCodes?: ReadonlySet<string>;
  readonly allowedBareCodes?: ReadonlySet<string>;
  /** The primitive format a value is held to when it differs from its declared type (Resource.id is an `id`). */
  readonly format?: string;
  /** Resource types a Reference value may name (undefined: any). */
  readonly referenceTargets?: ReadonlySet<string>;
  /** Validator of a complex value of the given type, resolved once per type. */
  childCheck(type: string): ObjectCheck | undefined;
  /** Per slice: the checks of a value that falls in it (its own elements, the profile its type names). */
  readonly sliceChecks: ReadonlyMap<string, readonly ObjectCheck[]>;
  /** Checks from profiles the element's type names (not sliced). */
  readonly profileChecks: readonly ObjectCheck[];
  readonly bindingUrl?: string;
}

export class ValidatorCompiler {
  private readonly cache = new Map<InternalTypeSchema, ObjectCheck>();
  private readonly bindings: BindingLookup;
  private readonly profileSchema: (url: string) => InternalTypeSchema | undefined;

  /**
   * `profileSchema` gives the schema of a profile a type points to (an extension's definition): values that
   * claim one are checked against it, which @medplum/core does not do.
   */
  constructor(bindings: BindingLookup = () => undefined, profileSchema: (url: string) => InternalTypeSchema | undefined = () => undefined) {
    this.bindings = bindings;
    this.profileSchema = profileSchema;
  }

  /** Validates a resource against a schema (a base type or a parsed profile); returns all issues. */
  validate(resource: Resource, schema: InternalTypeSchema): OperationOutcomeIssue[] {
    const walk: Walk = { issues: [], root: resource, resources: [resource] };
    const record = resource as unknown as Record<string, unknown>;
    checkNulls(record, schema.path, walk.issues);
    this.checkConstraints(this.invariantsOf(schema.constraints), schema.type ?? schema.name, resource, () => schema.path, walk);
    this.objectCheck(schema)(record, schema.path, walk);
    return walk.issues;
  }

  private invariantsOf(constraints: InternalSchemaElement['constraints']): Invariant[] {
    return (constraints ?? [])
      .filter((c) => c.severity === 'error' && !SKIPPED_INVARIANTS.has(c.key))
      .map((c) => nativeInvariant(c) ?? { constraint: c, check: undefined });
  }

  private checkConstraints(invariants: readonly Invariant[], type: string, value: unknown, pathOf: () => string, walk: Walk): void {
    for (const invariant of invariants) {
      let ok: boolean;
      const native = invariant.check?.(value);
      if (native !== undefined) ok = native;
      else {
        const typed: TypedValue = { type, value };
        const path = pathOf();
        const variables: Record<string, TypedValue> = {
          '%context': typed,
          '%ucum': { type: 'uri', value: 'http://unitsofmeasure.org' },
          '%resource': { type: walk.resources.at(-1)!.resourceType, value: walk.resources.at(-1) },
          '%rootResource': { type: walk.root.resourceType, value: walk.root },
        };
        try {
          const result = evalFhirPathTyped(invariant.constraint.expression, [typed], variables);
          ok = result.length === 1 && result[0].value === true;
        } catch (err) {
          walk.issues.push(createProcessingIssue(path, 'Error evaluating invariant expression', err as Error, { fhirpath: invariant.constraint.expression }));
          ok = false;
        }
      }
      if (!ok) {
        walk.issues.push(createConstraintIssue(pathOf(), invariant.constraint));
        return;
      }
    }
  }

  private typeCheck(type: string, inner: readonly InternalTypeSchema[]): ObjectCheck | undefined {
    if (isPrimitive(type)) return undefined;
    const schema = inner.find((t) => t.name === type) ?? getDataType(type);
    const check = this.objectCheck(schema);
    // The data type's own invariants (Period per-1, Quantity qty-3, Reference ref-1) hold wherever it is used;
    // @medplum/core checks them on the root only. Element-level copies are checked with the element.
    const invariants = this.invariantsOf(schema.constraints);
    if (invariants.length === 0 || inner.includes(schema)) return check;
    return (value, path, walk) => {
      this.checkConstraints(invariants, type, value, () => path, walk);
      check(value, path, walk);
    };
  }

  private compileElement(key: string, element: InternalSchemaElement, all: Record<string, InternalSchemaElement>, inner: readonly InternalTypeSchema[], isResource: boolean): CompiledElement {
    const steps = key.split('.');
    const children = new Map<string, ObjectCheck | undefined>();
    const childCheck = (type: string) => {
      if (!children.has(type)) children.set(type, this.typeCheck(type, inner));
      return children.get(type);
    };
    const required = element.binding?.strength === 'required' && element.binding.valueSet ? element.binding.valueSet.split('|')[0] : undefined;
    const allowedCodes = required ? this.bindings(required) : undefined;
    const targets = element.type.find((t) => t.code === 'Reference')?.targetProfile ?? [];
    const referenceTargets = targets.length > 0 && targets.every((t) => t.startsWith(HL7_SD)) && !targets.includes(`${HL7_SD}Resource`)
      ? new Set(targets.map((t) => t.slice(HL7_SD.length)))
      : undefined;
    return {
      key,
      steps,
      readers: steps.map((step, i) =>
        i === steps.length - 1 ? stepReader(step, element.type.map((t) => t.code)) : stepReader(step, (all[steps.slice(0, i + 1).join('.')]?.type ?? []).map((t) => t.code), true),
      ),
      element,
      types: element.type.map((t) => t.code),
      invariants: this.invariantsOf(element.constraints),
      constraints: element.constraints,
      ...(allowedCodes ? { allowedCodes, allowedBareCodes: bareCodes(allowedCodes), bindingUrl: required } : {}),
      ...(isResource && key === 'id' ? { format: 'id' } : {}),
      ...(referenceTargets ? { referenceTargets } : {}),
      childCheck,
      sliceChecks: new Map(
        (element.slicing?.slices ?? []).map((slice) => {
          const checks: ObjectCheck[] = [];
          if (Object.keys(slice.elements).length > 0) {
            checks.push(this.objectCheck({ name: `${element.path}:${slice.name}`, type: slice.type?.[0]?.code ?? 'Element', path: slice.path, elements: slice.elements, innerTypes: [] }, false));
          }
          for (const profile of slice.type?.flatMap((t) => t.profile ?? []) ?? []) {
            const schema = this.profileSchema(profile);
            if (schema) checks.push(this.objectCheck(schema));
          }
          const sliceBinding = slice.binding?.strength === 'required' && slice.binding.valueSet ? slice.binding.valueSet.split('|')[0] : undefined;
          const sliceCodes = sliceBinding ? this.bindings(sliceBinding) : undefined;
          const sliceType = slice.type?.[0]?.code ?? 'Coding';
          if (sliceCodes && TERMINOLOGY_TYPES.has(sliceType) && sliceType !== 'code') {
            // A slice's own binding (the research coding of AdverseEvent.outcome): @medplum/core checks none.
            checks.push((value, path, walk) => {
              const codes = codesOf(value, sliceType);
              if (codes.length > 0 && !codes.some((c) => sliceCodes.has(c))) {
                walk.issues.push({ severity: 'error', code: 'code-invalid', details: { text: `Value not in required value set ${sliceBinding}` }, expression: [path] });
              }
            });
          }
          return [slice.name, checks] as const;
        }),
      ),
      profileChecks: element.slicing
        ? []
        : element.type.flatMap((t) => t.profile ?? []).flatMap((url) => {
            const schema = this.profileSchema(url);
            return schema ? [this.objectCheck(schema)] : [];
          }),
    };
  }

  /** The closure validating objects of one schema, compiled on first use. */
  objectCheck(schema: InternalTypeSchema, checkUnknownProperties = true): ObjectCheck {
    const cached = this.cache.get(schema);
    if (cached) return cached;
    let compiled: ObjectCheck | undefined;
    // Recursive types (Extension.extension) refer to themselves: resolve lazily.
    const lazy: ObjectCheck = (value, path, walk) => compiled!(value, path, walk);
    this.cache.set(schema, lazy);
    compiled = this.compileObject(schema, checkUnknownProperties);
    return compiled;
  }

  private compileObject(schema: InternalTypeSchema, checkUnknownProperties: boolean): ObjectCheck {
    const inner = schema.innerTypes ?? [];
    const isResource = schema.kind === 'resource';
    const elements = Object.entries(schema.elements).map(([key, element]) => this.compileElement(key, element, schema.elements, inner, isResource));
    const known = new Set(Object.keys(schema.elements));
    const choicePrefixes = [...known].filter((k) => k.endsWith('[x]')).map((k) => k.slice(0, -3));
    // Types each choice element allows (a profile narrows `value[x]` to CodeableConcept, say).
    const allowed = new Map(choicePrefixes.map((p) => [p, new Set(schema.elements[`${p}[x]`].type.map((t) => t.code.toLowerCase()))]));
    const elementCheck = getDataType('Element');
    const typeNamed = (prefix: string, suffix: string) =>
      schema.elements[`${prefix}[x]`].type.find((t) => t.code.toLowerCase() === suffix.toLowerCase())?.code ?? suffix.charAt(0).toLowerCase() + suffix.slice(1);
    /** `_name`: the extensions of a primitive, an Element per value (an array of them beside an array). */
    const checkPartner = (obj: Record<string, unknown>, key: string, elementKey: string, valueKey: string, type: string, isArray: boolean, path: string, walk: Walk) => {
      const partnerPath = `${path}.${elementKey}`;
      if (!isPrimitive(type)) {
        walk.issues.push(createStructureIssue(`${path}.${key}`, `Invalid additional property "${key}": ${elementKey} is not a primitive element`));
        return;
      }
      const partner = obj[key];
      const values = obj[valueKey];
      const items = Array.isArray(partner) ? partner : [partner];
      if (Array.isArray(partner) !== isArray) {
        walk.issues.push(createStructureIssue(`${path}.${key}`, isArray ? 'Expected array of values for property' : 'Expected single value for property'));
        return;
      }
      items.forEach((item, i) => {
        const itemPath = isArray ? `${partnerPath}[${i}]` : partnerPath;
        if (item === null) return;
        if (typeof item !== 'object' || Array.isArray(item)) {
          walk.issues.push(createStructureIssue(itemPath, `Invalid JSON type: expected object (Element), but got ${Array.isArray(item) ? 'array' : typeof item}`));
          return;
        }
        const value = isArray ? (values as unknown[] | undefined)?.[i] : values;
        // ele-1: a primitive without a value must at least carry an extension.
        if ((value === undefined || value === null) && isEmptyValue((item as Record<string, unknown>).extension)) walk.issues.push(createConstraintIssue(itemPath, ELE_1));
        this.objectCheck(elementCheck)(item as Record<string, unknown>, itemPath, walk);
      });
    };

    const visitElement = (obj: Record<string, unknown>, path: string, el: CompiledElement, walk: Walk) => {
      if (el.steps.length === 1) {
        const slot = el.readers[0](obj);
        // The common case, an optional element that is not there, costs one property read.
        if (slot === undefined && el.element.min === 0) return;
        visitValue(obj, path, slot, el, walk, path);
        return;
      }
      // Nested keys (a profile constraining `effective[x].start`) read through each value of the parents.
      let parents: { obj: Record<string, unknown>; path: string }[] = [{ obj, path }];
      for (let s = 0; s < el.steps.length - 1; s++) {
        const next: { obj: Record<string, unknown>; path: string }[] = [];
        for (const p of parents) {
          const slot = el.readers[s](p.obj);
          if (!slot) continue;
          const value = p.obj[slot.key];
          const stepPath = `${p.path}.${el.steps[s]}`;
          // A primitive where a parent was expected has none of the children (as @medplum/core reads it).
          const asParent = (v: unknown) => (v && typeof v === 'object' ? (v as Record<string, unknown>) : {});
          if (Array.isArray(value)) value.forEach((v, i) => next.push({ obj: asParent(v), path: `${stepPath}[${i}]` }));
          else if (value !== undefined && value !== null) next.push({ obj: asParent(value), path: stepPath });
        }
        parents = next;
      }
      for (const parent of parents) visitValue(parent.obj, parent.path, el.readers[el.readers.length - 1](parent.obj), el, walk, path);
    };

    const visitValue = (parentObj: Record<string, unknown>, parentPath: string, slot: Slot | undefined, el: CompiledElement, walk: Walk, path: string) => {
      const { element } = el;
      // Paths are built only where an issue needs one or a child is entered: most values need neither.
      const valuePath = () => `${parentPath}.${el.steps[el.steps.length - 1]}`;
      const raw = slot === undefined ? undefined : parentObj[slot.key];
      // null, {} and [] are absent values (null is reported on its own); FHIR JSON allows no empty object or array.
      if (slot === undefined || raw === null || (typeof raw === 'object' && isEmptyValue(raw))) {
        if (raw !== null && raw !== undefined) walk.issues.push(createStructureIssue(valuePath(), 'Invalid empty value'));
        if (element.min > 0) walk.issues.push(createStructureIssue(valuePath(), 'Missing required property'));
        return;
      }
      const isArray = Array.isArray(raw);
      if (element.isArray !== isArray) {
        walk.issues.push(createStructureIssue(`${path}.${el.key}`, isArray ? 'Expected single value for property' : 'Expected array of values for property'));
        return;
      }
      const count = isArray ? (raw as unknown[]).length : 1;
      if (count < element.min || count > element.max) {
        walk.issues.push(createStructureIssue(element.path, `Invalid number of values: expected ${element.min}..${Number.isFinite(element.max) ? element.max : '*'}, but found ${count}`));
      }
      const slotType = slot.type;
      if (element.pattern || element.fixed) {
        const typed = isArray ? (raw as unknown[]).map((v) => ({ type: slotType, value: v })) : { type: slotType, value: raw };
        if ((element.pattern && !deepIncludes(typed, element.pattern)) || (element.fixed && !deepEquals(typed, element.fixed))) {
          walk.issues.push(createStructureIssue(`${path}.${el.key}`, 'Value did not match expected pattern'));
        }
      }
      const slicing = element.slicing;
      const sliceCounts = slicing ? new Map(slicing.slices.map((s) => [s.name, 0])) : undefined;
      const primitive = isPrimitive(slotType);
      const child = primitive || slotType === 'Resource' ? undefined : el.childCheck(slotType);
      for (let i = 0; i < count; i++) {
        const value = isArray ? (raw as unknown[])[i] : raw;
        const itemPath = isArray ? () => `${valuePath()}[${i}]` : valuePath;
        let type = slotType;
        if (type === 'Resource' && value && typeof value === 'object' && !Array.isArray(value)) {
          // A contained or bundled resource is read by its own resourceType, which must name a resource.
          const named = (value as { resourceType?: unknown }).resourceType;
          if (typeof named !== 'string' || !isResourceType(named)) {
            walk.issues.push(createStructureIssue(itemPath(), named === undefined ? 'Missing resourceType' : `Unknown resourceType ${JSON.stringify(named)}`));
            continue;
          }
          type = named;
        }
        if (el.invariants.length > 0) this.checkConstraints(el.invariants, type, value, itemPath, walk);
        if (primitive) {
          const problem = primitiveProblem(value, el.format ?? type);
          if (problem) walk.issues.push(createStructureIssue(itemPath(), problem));
        } else if (value !== null && (typeof value !== 'object' || Array.isArray(value))) {
          // "event": "Diarrhoea": a primitive (or a nested array) where a complex type belongs.
          walk.issues.push(createStructureIssue(itemPath(), `Invalid JSON type: expected object (${type}), but got ${Array.isArray(value) ? 'array' : typeof value}`));
          continue;
        } else if (isEmptyValue(value)) {
          walk.issues.push(createStructureIssue(itemPath(), 'Invalid empty non-primitive value'));
        }
        if (el.referenceTargets && type === 'Reference' && value && typeof value === 'object') {
          const target = referenceType(String((value as { reference?: unknown }).reference ?? ''));
          if (target && !el.referenceTargets.has(target)) {
            walk.issues.push(createStructureIssue(itemPath(), `Reference to a ${target} where ${[...el.referenceTargets].join(' | ')} is expected`));
          }
        }
        if (el.allowedCodes && TERMINOLOGY_TYPES.has(type)) {
          const codes = codesOf(value, type);
          const ok = type === 'code' ? codes.every((c) => el.allowedBareCodes!.has(c)) : codes.some((c) => el.allowedCodes!.has(c));
          if (codes.length > 0 && !ok) {
            walk.issues.push({ severity: 'error', code: 'code-invalid', details: { text: `Value not in required value set ${el.bindingUrl}` }, expression: [itemPath()] });
          }
        }
        if (sliceCounts && slicing && value && typeof value === 'object') {
          const slice = matchSlice(value as Record<string, unknown>, type, slicing);
          if (slice) {
            sliceCounts.set(slice, sliceCounts.get(slice)! + 1);
            for (const check of el.sliceChecks.get(slice) ?? []) check(value as Record<string, unknown>, itemPath(), walk);
          }
        }
        if (el.profileChecks.length > 0 && value && typeof value === 'object') {
          for (const check of el.profileChecks) check(value as Record<string, unknown>, itemPath(), walk);
        }
        if (!primitive && value && typeof value === 'object' && !Array.isArray(value)) {
          if (type !== slotType) {
            walk.resources.push(value as Resource);
            this.objectCheck(getDataType(type))(value as Record<string, unknown>, itemPath(), walk);
            walk.resources.pop();
          } else child?.(value as Record<string, unknown>, itemPath(), walk);
        }
      }
      if (sliceCounts && slicing) {
        for (const slice of slicing.slices) {
          const n = sliceCounts.get(slice.name)!;
          if (n < slice.min || n > slice.max) {
            walk.issues.push(createStructureIssue(`${path}.${el.key}`, `Incorrect number of values provided for slice '${slice.name}': expected ${slice.min}..${Number.isFinite(slice.max) ? slice.max : '*'}, but found ${n}`));
          }
        }
      }
    };

    const isBundleEntry = schema.name === 'BundleEntry';
    const isReference = schema.type === 'Reference' && !isResource;
    return (obj, path, walk) => {
      for (const el of elements) visitElement(obj, path, el, walk);
      if (!checkUnknownProperties) return;
      let chosen: Map<string, string[]> | undefined;
      let children = 0;
      for (const key in obj) {
        if (key === 'resourceType' || obj[key] === undefined) continue;
        if (key !== 'id' && obj[key] !== null) children++;
        const partner = key.startsWith('_');
        const name = partner ? key.slice(1) : key;
        if (known.has(name)) {
          if (partner) {
            const element = schema.elements[name];
            checkPartner(obj, key, name, name, element.type[0]?.code ?? 'undefined', element.isArray ?? false, path, walk);
          }
          continue;
        }
        const prefix = choicePrefixes.find((p) => name.startsWith(p) && name.length > p.length && /[A-Z]/.test(name[p.length]));
        if (prefix !== undefined) {
          const suffix = name.slice(prefix.length);
          if (!allowed.get(prefix)!.has(suffix.toLowerCase())) {
            walk.issues.push(createStructureIssue(`${path}.${key}`, `Type ${suffix} is not allowed for ${prefix}[x]`));
          } else if (partner) {
            checkPartner(obj, key, `${prefix}[x]`, name, typeNamed(prefix, suffix), false, path, walk);
          }
          // Two values of one choice element (performedPeriod and performedDateTime): a value and its `_` partner are one.
          chosen ??= new Map();
          const keys = chosen.get(prefix) ?? [];
          if (!keys.includes(name)) keys.push(name);
          chosen.set(prefix, keys);
          continue;
        }
        walk.issues.push(createStructureIssue(`${path}.${key}`, `Invalid additional property "${key}"`));
      }
      if (chosen) {
        for (const [prefix, keys] of chosen) {
          if (keys.length > 1) walk.issues.push(createStructureIssue(`${path}.${prefix}[x]`, `Only one value allowed for the choice element ${prefix}[x], found ${keys.join(', ')}`));
        }
      }
      // ele-1 on a complex element: something besides its id (an empty object is reported as empty instead).
      if (!isResource && children === 0 && obj.id !== undefined) walk.issues.push(createConstraintIssue(path, ELE_1));
      if (isReference && typeof obj.reference === 'string') {
        const target = referenceType(obj.reference);
        if (target === null) {
          walk.issues.push(createStructureIssue(`${path}.reference`, 'Invalid reference format: expected Type/id (relative or after a base URL), Type?query, urn:uuid:, urn:oid: or #id'));
        } else if (target && typeof obj.type === 'string' && obj.type !== target) {
          walk.issues.push(createStructureIssue(`${path}.type`, `Reference type ${obj.type} does not match the reference's ${target}`));
        }
      }
      if (isBundleEntry) checkBundleEntry(obj, path, walk);
    };
  }
}

/** A bundled resource must be of the type its request and fullUrl address. */
function checkBundleEntry(entry: Record<string, unknown>, path: string, walk: Walk): void {
  const resource = entry.resource as { resourceType?: unknown; id?: unknown } | undefined;
  const actual = resource && typeof resource === 'object' ? resource.resourceType : undefined;
  if (typeof actual !== 'string') return;
  const url = (entry.request as { url?: unknown } | undefined)?.url;
  const requested = typeof url === 'string' ? requestUrlType(url) : undefined;
  if (requested && requested !== actual) {
    walk.issues.push(createStructureIssue(`${path}.request.url`, `The request addresses ${requested} but the entry's resource is a ${actual}`));
  }
  const fullUrl = entry.fullUrl;
  const named = typeof fullUrl === 'string' && !fullUrl.startsWith('urn:') ? /\/([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}$/.exec(fullUrl)?.[1] : undefined;
  if (named && isResourceType(named) && named !== actual) {
    walk.issues.push(createStructureIssue(`${path}.fullUrl`, `The fullUrl names a ${named} but the entry's resource is a ${actual}`));
  }
}

function matchSlice(value: Record<string, unknown>, type: string, slicing: NonNullable<InternalSchemaElement['slicing']>): string | undefined {
  for (const slice of slicing.slices) {
    const matches = slicing.discriminator.every((d) => {
      const sliceElement = d.path === '$this' ? slice : slice.elements[d.path];
      const actual = d.path === '$this' ? value : value[d.path];
      if (d.type === 'type') return slice.type?.some((t) => t.code === type) ?? false;
      if (!sliceElement || actual === undefined) return false;
      const typed = { type: sliceElement.type?.[0]?.code ?? 'undefined', value: actual };
      if (sliceElement.pattern) return deepIncludes(typed, sliceElement.pattern);
      if (sliceElement.fixed) return deepEquals(typed, sliceElement.fixed);
      return sliceElement.binding?.strength === 'required' && Boolean(sliceElement.binding.valueSet);
    });
    if (matches) return slice.name;
  }
  return undefined;
}
