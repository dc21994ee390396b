import type { InternalSchemaElement } from '@medplum/core';

type Constraint = NonNullable<InternalSchemaElement['constraints']>[number];

/**
 * An invariant of a profile or base type. `check` answers natively for the common cases (true/false), or
 * undefined when it cannot decide, and the FHIRPath expression is evaluated by @medplum/core instead.
 */
export interface Invariant {
  readonly constraint: Constraint;
  readonly check: ((value: unknown) => boolean | undefined) | undefined;
}

type Obj = Record<string, unknown> | undefined;
const has = (v: unknown) => v !== undefined && v !== null && !(Array.isArray(v) && v.length === 0);
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined || v === null ? [] : [v]);

/** `contained.<path>` is empty over every contained resource. */
function containedEmpty(value: unknown, ...path: string[]): boolean {
  let level = list((value as Obj)?.contained);
  for (const step of path) level = level.flatMap((x) => list((x as Obj)?.[step]));
  return level.length === 0;
}

/** Choice elements `value[x]`: any `valueXxx` key. */
function hasChoice(obj: Obj, prefix: string): boolean {
  if (!obj) return false;
  for (const key in obj) if (key.startsWith(prefix) && key.length > prefix.length && /[A-Z]/.test(key[prefix.length]) && has(obj[key])) return true;
  return false;
}

const SIMPLE_DATE = /^\d{4}(-\d{2}(-\d{2})?)?$/;

/**
 * Native versions of the R4 invariants that resources of this project meet on every element, keyed by
 * constraint key and held to the exact expression (a profile reusing a key with other text gets FHIRPath).
 */
const NATIVE: Record<string, { expression: string; check: (value: unknown) => boolean | undefined }> = {
  'dom-2': { expression: 'contained.contained.empty()', check: (v) => containedEmpty(v, 'contained') },
  'dom-4': {
    expression: 'contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()',
    check: (v) => containedEmpty(v, 'meta', 'versionId') && containedEmpty(v, 'meta', 'lastUpdated'),
  },
  'dom-5': { expression: 'contained.meta.security.empty()', check: (v) => containedEmpty(v, 'meta', 'security') },
  'ext-1': { expression: 'extension.exists() != value.exists()', check: (v) => has((v as Obj)?.extension) !== hasChoice(v as Obj, 'value') },
  'ref-1': {
    expression: "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))",
    // Only contained references need the general engine.
    check: (v) => {
      const ref = (v as Obj)?.reference;
      return typeof ref === 'string' && ref.startsWith('#') ? undefined : true;
    },
  },
  'per-1': {
    expression: 'start.hasValue().not() or end.hasValue().not() or (start <= end)',
    check: (v) => {
      const { start, end } = (v as { start?: unknown; end?: unknown }) ?? {};
      if (typeof start !== 'string' || typeof end !== 'string') return true;
      // Equal precision dates compare as text; anything else (times, mixed precision) goes to FHIRPath.
      if (start.length === end.length && SIMPLE_DATE.test(start) && SIMPLE_DATE.test(end)) return start <= end;
      return undefined;
    },
  },
  'qty-3': { expression: 'code.empty() or system.exists()', check: (v) => !has((v as Obj)?.code) || has((v as Obj)?.system) },
  'mad-1': { expression: 'dose.exists() or rate.exists()', check: (v) => has((v as Obj)?.dose) || hasChoice(v as Obj, 'rate') },
  'obs-6': { expression: 'dataAbsentReason.empty() or value.empty()', check: (v) => !has((v as Obj)?.dataAbsentReason) || !hasChoice(v as Obj, 'value') },
  'con-1': { expression: 'summary.exists() or assessment.exists()', check: (v) => has((v as Obj)?.summary) || has((v as Obj)?.assessment) },
  'obs-7': {
    expression: 'value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()',
    // Only an Observation with both a value and components needs the general engine.
    check: (v) => (!hasChoice(v as Obj, 'value') || !has((v as Obj)?.component) ? true : undefined),
  },
  'rat-1': {
    expression: '(numerator.empty() xor denominator.exists()) and (numerator.exists() or extension.exists())',
    check: (v) => {
      const n = has((v as Obj)?.numerator);
      const d = has((v as Obj)?.denominator);
      return !n !== d && (n || has((v as Obj)?.extension));
    },
  },
  'con-5': {
    expression: "verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-ver-status' and code='entered-in-error').empty() or clinicalStatus.empty()",
    check: (v) => {
      const obj = v as Obj;
      const codings = list((obj?.verificationStatus as Obj)?.coding) as ({ system?: string; code?: string } | null)[];
      const error = codings.some((c) => c?.system === 'http://terminology.hl7.org/CodeSystem/condition-ver-status' && c?.code === 'entered-in-error');
      return !error || !has(obj?.clinicalStatus);
    },
  },
  'con-4': {
    expression:
      "abatement.empty() or clinicalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-clinical' and (code='resolved' or code='remission' or code='inactive')).exists()",
    check: (v) => {
      const obj = v as Obj;
      if (!hasChoice(obj, 'abatement')) return true;
      const codings = list((obj?.clinicalStatus as Obj)?.coding) as ({ system?: string; code?: string } | null)[];
      return codings.some((c) => c?.system === 'http://terminology.hl7.org/CodeSystem/condition-clinical' && ['resolved', 'remission', 'inactive'].includes(c?.code ?? ''));
    },
  },
};

export function nativeInvariant(constraint: Constraint): Invariant | undefined {
  const native = NATIVE[constraint.key];
  if (!native || native.expression !== constraint.expression) return undefined;
  return { constraint, check: native.check };
}

/** The keys handled natively, for the test that holds them to the general engine. */
export const NATIVE_INVARIANT_KEYS = Object.keys(NATIVE);
