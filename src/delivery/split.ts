import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import { conditionalUrl } from '../mapping/identity.ts';

/**
 * The conditional reference to a resource by its business key: `Type?identifier=system|value`, or
 * `Type?_tag=system|value` for the types R4 gives no identifier search (AdverseEvent, Provenance) — the same
 * form as the conditional-update URL of its entry. The key is read from `meta.tag[0]`, where trialbridge puts
 * it on every resource; failing that, from the entry's conditional request URL, then from `identifier`.
 */
export function conditionalReference(entry: BundleEntry): string | undefined {
  const resource = entry.resource;
  if (!resource) return undefined;
  const tag = resource.meta?.tag?.[0];
  if (tag?.system && tag.code) return conditionalUrl(resource.resourceType, tag.system, tag.code);
  const url = entry.request?.url;
  if (url && url.startsWith(`${resource.resourceType}?`)) return url;
  const raw = (resource as { identifier?: unknown }).identifier;
  const identifier = (Array.isArray(raw) ? raw[0] : raw) as { system?: string; value?: string } | undefined;
  if (identifier?.system && identifier.value) return conditionalUrl(resource.resourceType, identifier.system, identifier.value);
  return undefined;
}

/** Every `reference` string inside a resource (any depth). */
export function referencesOf(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) {
    for (const item of value) referencesOf(item, out);
  } else if (value !== null && typeof value === 'object') {
    for (const [key, item] of Object.entries(value)) {
      if (key === 'reference' && typeof item === 'string') out.push(item);
      else referencesOf(item, out);
    }
  }
  return out;
}

/** A deep copy of `value` with each `reference` string that `rewrite` maps replaced. */
export function rewriteReferences<T>(value: T, rewrite: (reference: string) => string | undefined): T {
  if (Array.isArray(value)) return value.map((item) => rewriteReferences(item, rewrite)) as T;
  if (value !== null && typeof value === 'object') {
    const copy: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value)) {
      copy[key] = key === 'reference' && typeof item === 'string' ? (rewrite(item) ?? item) : rewriteReferences(item, rewrite);
    }
    return copy as T;
  }
  return value;
}

/**
 * The entries in dependency order: each entry after the entries of the bundle it refers to (by fullUrl),
 * otherwise in bundle order (a depth-first, stable topological sort). A reference cycle keeps bundle order
 * for the entries in it.
 */
export function dependencyOrder(entries: readonly BundleEntry[]): BundleEntry[] {
  const byFullUrl = new Map<string, number>();
  entries.forEach((entry, i) => {
    if (entry.fullUrl) byFullUrl.set(entry.fullUrl, i);
  });
  const state: ('new' | 'visiting' | 'done')[] = entries.map(() => 'new');
  const ordered: BundleEntry[] = [];
  const visit = (i: number): void => {
    if (state[i] !== 'new') return;
    state[i] = 'visiting';
    for (const reference of referencesOf(entries[i].resource)) {
      const target = byFullUrl.get(reference);
      if (target !== undefined && target !== i) visit(target);
    }
    state[i] = 'done';
    ordered.push(entries[i]);
  };
  entries.forEach((_, i) => visit(i));
  return ordered;
}

/** Rewrites references to entries outside the current request into conditional references. */
function referenceRewriter(earlier: ReadonlyMap<string, BundleEntry>): (reference: string) => string | undefined {
  return (reference) => {
    const target = earlier.get(reference);
    if (!target) return undefined;
    const conditional = conditionalReference(target);
    if (!conditional) {
      throw new Error(
        `cannot refer to ${target.resource?.resourceType ?? 'entry'} ${reference} across requests: it has no business key (meta.tag, conditional URL or identifier)`,
      );
    }
    return conditional;
  };
}

function withRewrittenResource(entry: BundleEntry, rewrite: (reference: string) => string | undefined): BundleEntry {
  return entry.resource ? { ...entry, resource: rewriteReferences(entry.resource, rewrite) as Resource } : { ...entry };
}

/**
 * Splits one transaction into transactions of at most `maxEntries` entries, for a destination that limits
 * them. Entries go in dependency order (the Patient and what else later parts refer to first, bundle order
 * otherwise); a reference to an entry of an earlier part becomes a conditional reference to it (see
 * {@link conditionalReference}), references within a part stay `urn:uuid`. Each part is a transaction of
 * its own, valid once the parts before it are applied. A bundle that fits is returned as it is.
 */
export function splitTransaction(bundle: Bundle, maxEntries: number): Bundle[] {
  if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError(`maxEntries must be a positive integer, got ${maxEntries}`);
  const entries = bundle.entry ?? [];
  if (entries.length <= maxEntries) return [bundle];
  const ordered = dependencyOrder(entries);
  const partOf = new Map<string, number>();
  ordered.forEach((entry, i) => {
    if (entry.fullUrl) partOf.set(entry.fullUrl, Math.floor(i / maxEntries));
  });
  const byFullUrl = new Map(ordered.filter((e) => e.fullUrl).map((e) => [e.fullUrl!, e] as const));
  const parts: Bundle[] = [];
  for (let start = 0; start < ordered.length; start += maxEntries) {
    const part = start / maxEntries;
    const earlier = new Map<string, BundleEntry>();
    for (const [fullUrl, p] of partOf) {
      if (p < part) earlier.set(fullUrl, byFullUrl.get(fullUrl)!);
    }
    const rewrite = referenceRewriter(earlier);
    const chunk = ordered.slice(start, start + maxEntries).map((entry) => {
      for (const reference of referencesOf(entry.resource)) {
        if ((partOf.get(reference) ?? part) > part) {
          throw new Error(`cannot split the transaction into parts of ${maxEntries}: ${entry.fullUrl} and ${reference} refer to each other`);
        }
      }
      return withRewrittenResource(entry, rewrite);
    });
    parts.push({ ...bundle, type: 'transaction', entry: chunk });
  }
  return parts;
}

/**
 * The entries of a transaction as individual requests, for a server without transactions: dependency order
 * (referenced before referencing) and every reference to another entry rewritten into a conditional
 * reference, since no `urn:uuid` resolves outside a transaction. The request URLs stay the entries'
 * conditional updates.
 */
export function toConditionalUpdates(bundle: Bundle): BundleEntry[] {
  const entries = bundle.entry ?? [];
  const all = new Map<string, BundleEntry>();
  for (const entry of entries) if (entry.fullUrl) all.set(entry.fullUrl, entry);
  const rewrite = referenceRewriter(all);
  return dependencyOrder(entries).map((entry) => withRewrittenResource(entry, rewrite));
}
