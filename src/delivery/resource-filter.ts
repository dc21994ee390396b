import type { Bundle, BundleEntry, Identifier, Reference, Resource } from '@medplum/fhirtypes';

/**
 * A subject's bundle cut down to the resource types a destination takes (its `resourceTypes` allow-list).
 *
 * Dropping entries would leave references to them dangling (a ResearchSubject's study, a Provenance's
 * targets). A reference to a dropped resource that has a business identifier becomes a logical reference
 * (`Reference.identifier` + `type`): valid R4, resolvable by the receiver if it ever gets the resource, and
 * needing nothing on its server. A reference to a dropped resource without an identifier is removed from
 * its list (e.g. Provenance.target), or, where it stands alone, kept as text only (`display`).
 *
 * Returns the bundle itself when every type is allowed, and null when no entry is left to send.
 */
export function filterBundle(bundle: Bundle, allowed: '*' | readonly string[]): Bundle | null {
  if (allowed === '*') return bundle;
  const allow = new Set(allowed);
  const kept: BundleEntry[] = [];
  const dropped = new Map<string, Reference | null>();
  for (const entry of bundle.entry ?? []) {
    const resource = entry.resource;
    if (resource && allow.has(resource.resourceType)) kept.push(entry);
    else if (entry.fullUrl && resource) dropped.set(entry.fullUrl, logicalReference(resource));
  }
  if (kept.length === 0) return null;
  if (dropped.size === 0) return bundle;
  return { ...bundle, entry: kept.map((entry) => ({ ...entry, resource: replaceReferences(entry.resource!, dropped) })) };
}

function logicalReference(resource: Resource): Reference | null {
  const raw = (resource as { identifier?: Identifier | Identifier[] }).identifier;
  const identifier = Array.isArray(raw) ? raw[0] : raw;
  if (!identifier?.system || !identifier.value) return null;
  return { type: resource.resourceType, identifier: { system: identifier.system, value: identifier.value } };
}

function isDroppedReference(value: unknown, dropped: ReadonlyMap<string, Reference | null>): value is Reference {
  return value !== null && typeof value === 'object' && typeof (value as Reference).reference === 'string' && dropped.has((value as Reference).reference!);
}

/** The replacement of a reference to a dropped resource, or undefined to remove it. */
function replacement(reference: Reference, dropped: ReadonlyMap<string, Reference | null>, inList: boolean): Reference | undefined {
  const logical = dropped.get(reference.reference!);
  const { reference: _removed, ...rest } = reference;
  if (logical) return { ...rest, ...logical };
  if (inList) return undefined;
  return { ...rest, display: rest.display ?? 'not sent to this destination' };
}

function replaceReferences<T>(value: T, dropped: ReadonlyMap<string, Reference | null>): T {
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    for (const item of value) {
      if (isDroppedReference(item, dropped)) {
        const r = replacement(item, dropped, true);
        if (r) out.push(r);
      } else {
        out.push(replaceReferences(item, dropped));
      }
    }
    return out as T;
  }
  if (value !== null && typeof value === 'object') {
    const copy: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) {
      const next = isDroppedReference(item, dropped) ? replacement(item, dropped, false) : replaceReferences(item, dropped);
      // FHIR has no empty lists: a list whose every reference was removed goes.
      if (Array.isArray(next) && next.length === 0 && Array.isArray(item) && item.length > 0) continue;
      copy[key] = next;
    }
    return copy as T;
  }
  return value;
}
