/**
 * Read-back: whether a server holds the resources of delivered bundles, by searching for each entry's business
 * identifier the way its conditional update was keyed (`identifier`, or `_tag` for AdverseEvent and
 * Provenance), values escaped as FHIR search requires. Used after a delivery (`verify: sample | all` per
 * destination) and by `trialbridge reconcile` over everything delivered.
 *
 * Identifiers of one resource type go in one search as an OR list (`identifier=a|1,a|2,...`, BATCH at a time),
 * so a subject costs one search per resource type, not one per resource. An identifier that no resource holds
 * is missing; one that several hold is duplicated (a server that raced two conditional creates).
 */
import { createHash } from 'node:crypto';
import type { Bundle, BundleEntry, Coding, Identifier, Resource } from '@medplum/fhirtypes';
import { escapeSearchValue } from '../mapping/identity.ts';
import { FhirHttpError, outcomeText, type FhirClient } from './client.ts';
import { DeliveryRetryableError } from './deliver.ts';
import { entryBytes, type SerializedBundle } from './serialized-bundle.ts';

/** Read-back after delivery: none, one subject in VERIFY_SAMPLE_ONE_IN, or every subject. */
export type VerifyMode = 'off' | 'sample' | 'all';

/** `verify: sample` checks one subject in this many (chosen by a hash of destination, site and subject). */
export const VERIFY_SAMPLE_ONE_IN = 10;

/** Identifiers per search (keeps URLs around 2 KB, far below the 8 KB servers commonly accept). */
const BATCH = 20;
/** Pages followed per search at most: a server linking `next` to pages it already gave is not followed forever. */
const MAX_PAGES = 50;

/** One business identifier of a delivered entry: what its conditional update was keyed on. */
export interface DeliveredIdentifier {
  readonly type: string;
  /** `identifier`, or `_tag` for the types R4 gives no identifier search (AdverseEvent, Provenance). */
  readonly param: 'identifier' | '_tag';
  readonly system: string;
  readonly value: string;
}

/** The stable key of a business identifier, for sets and the engineer's terminal: `Type system|value`. */
export function identifierKey(id: Pick<DeliveredIdentifier, 'type' | 'system' | 'value'>): string {
  return `${id.type} ${id.system}|${id.value}`;
}

/** `\x` → `x`: a value taken out of a conditional URL, without its FHIR search escapes. */
function unescapeSearchValue(value: string): string {
  return value.replace(/\\(.)/g, '$1');
}

/**
 * The business identifier an entry's conditional update is keyed on, from its request URL
 * (`Type?identifier=system|value` or `?_tag=`: parts escaped and percent-encoded, one literal `|` between them),
 * else from the resource's business tag (every mapped resource carries one).
 */
export function entryIdentifier(entry: BundleEntry): DeliveredIdentifier | undefined {
  const match = /^([A-Z][A-Za-z]+)\?(identifier|_tag)=([^|&]*)\|([^&]*)$/.exec(entry.request?.url ?? '');
  if (match) {
    try {
      return {
        type: match[1],
        param: match[2] as DeliveredIdentifier['param'],
        system: unescapeSearchValue(decodeURIComponent(match[3])),
        value: unescapeSearchValue(decodeURIComponent(match[4])),
      };
    } catch {
      // A malformed percent-escape: the tag below says the same.
    }
  }
  const resource = entry.resource as Resource | undefined;
  const tag = resource?.meta?.tag?.[0];
  if (!resource || !tag?.system || !tag.code) return undefined;
  const byTag = resource.resourceType === 'AdverseEvent' || resource.resourceType === 'Provenance';
  return { type: resource.resourceType, param: byTag ? '_tag' : 'identifier', system: tag.system, value: tag.code };
}

/** The entries of a bundle, given as bytes or parsed. */
export function bundleEntries(bundle: SerializedBundle | Bundle): BundleEntry[] {
  if ('resourceType' in bundle) return bundle.entry ?? [];
  return bundle.entries.map((e) => JSON.parse(entryBytes(bundle, e).toString('utf8')) as BundleEntry);
}

/** The business identifiers of a bundle's entries (an entry without one is left out). */
export function bundleIdentifiers(bundle: SerializedBundle | Bundle): DeliveredIdentifier[] {
  return bundleEntries(bundle)
    .map(entryIdentifier)
    .filter((id): id is DeliveredIdentifier => id !== undefined);
}

/** Whether `verify: sample` checks this subject: a fixed one in VERIFY_SAMPLE_ONE_IN, the same on every run. */
export function sampled(destination: string, site: string, subject: string): boolean {
  const hash = createHash('sha256').update(`${destination}\u0000${site}\u0000${subject}`).digest();
  return hash.readUInt32BE(0) % VERIFY_SAMPLE_ONE_IN === 0;
}

/** Whether a destination's `verify` setting reads this subject back after delivering it. */
export function shouldVerify(mode: VerifyMode, destination: string, site: string, subject: string): boolean {
  return mode === 'all' || (mode === 'sample' && sampled(destination, site, subject));
}

export interface PresenceResult {
  /** Identifiers no resource on the server holds. */
  readonly missing: DeliveredIdentifier[];
  /** Identifiers more than one resource holds. */
  readonly duplicated: DeliveredIdentifier[];
  /** Search requests sent, pages included. */
  readonly requests: number;
}

/** The business identifiers a resource carries under a search parameter: identifiers, or meta.tag codes. */
function carried(resource: Resource, param: DeliveredIdentifier['param']): string[] {
  if (param === '_tag') return (resource.meta?.tag ?? []).map((t: Coding) => `${t.system ?? ''}|${t.code ?? ''}`);
  const ids = (resource as Resource & { identifier?: Identifier | Identifier[] }).identifier;
  return (Array.isArray(ids) ? ids : ids ? [ids] : []).map((i) => `${i.system ?? ''}|${i.value ?? ''}`);
}

/** A search the server refused or answered with something other than a searchset Bundle. */
export class VerificationSearchError extends Error {
  override readonly name = 'VerificationSearchError';
  /** The server's refusal, when it answered with an HTTP error. */
  readonly refusal: { readonly status: number; readonly retryable: boolean; readonly throttled: boolean; readonly retryAfterMs?: number } | undefined;

  constructor(message: string, refusal?: VerificationSearchError['refusal']) {
    super(message);
    this.refusal = refusal;
  }
}

/** Every resource a search matched, following `next` links on the server's own origin (MAX_PAGES at most). */
async function searchAll(client: FhirClient, type: string, query: string): Promise<{ resources: Resource[]; requests: number }> {
  const origin = new URL(client.baseUrl).origin;
  const resources: Resource[] = [];
  const seen = new Set<string>();
  let path: string | undefined = `${type}?${query}`;
  let requests = 0;
  while (path !== undefined) {
    if (seen.has(path) || requests >= MAX_PAGES) throw new VerificationSearchError(`${type} search: the server's next links do not end`);
    seen.add(path);
    requests++;
    const bundle: Bundle | undefined = await client.get<Bundle>(path).then(
      (response) => response.body,
      (error: unknown) => {
        // Named by type and status: the URL lists business identifiers, which have no place in a reason.
        if (error instanceof FhirHttpError) {
          throw new VerificationSearchError(`${type} search refused: HTTP ${error.status}${outcomeText(error.outcome) ? ` (${outcomeText(error.outcome)})` : ''}`, {
            status: error.status,
            retryable: error.retryable,
            throttled: error.kind === 'throttle',
            ...(error.retryAfterMs !== undefined ? { retryAfterMs: error.retryAfterMs } : {}),
          });
        }
        throw error;
      },
    );
    if (bundle?.resourceType !== 'Bundle') throw new VerificationSearchError(`${type} search: the server did not answer with a Bundle`);
    for (const entry of bundle.entry ?? []) {
      if (entry.resource && entry.search?.mode !== 'include' && entry.search?.mode !== 'outcome') resources.push(entry.resource);
    }
    const next: string | undefined = bundle.link?.find((l) => l.relation === 'next')?.url;
    if (next && new URL(next, client.baseUrl).origin !== origin) throw new VerificationSearchError(`${type} search: the server's next link leaves ${origin}: not followed`);
    path = next;
  }
  return { resources, requests };
}

/**
 * Which business identifiers the server does not hold, or holds more than once. Searches by type and search
 * parameter, BATCH identifiers at a time; throws when a search fails (the caller decides whether to retry).
 */
export async function findOnServer(client: FhirClient, identifiers: readonly DeliveredIdentifier[]): Promise<PresenceResult> {
  const groups = new Map<string, DeliveredIdentifier[]>();
  for (const id of identifiers) {
    const key = `${id.type}?${id.param}`;
    groups.set(key, [...(groups.get(key) ?? []), id]);
  }
  const missing: DeliveredIdentifier[] = [];
  const duplicated: DeliveredIdentifier[] = [];
  let requests = 0;
  for (const group of groups.values()) {
    const unique = [...new Map(group.map((id) => [`${id.system}|${id.value}`, id])).values()];
    for (let i = 0; i < unique.length; i += BATCH) {
      const batch = unique.slice(i, i + BATCH);
      const { type, param } = batch[0];
      // Each part escaped for FHIR (`\ , | $`) and then percent-encoded; the `|` and `,` between them stay syntax.
      const tokens = batch.map((id) => `${encodeURIComponent(escapeSearchValue(id.system))}|${encodeURIComponent(escapeSearchValue(id.value))}`);
      // _count: room for every match and a duplicate of each, so one page usually holds them all.
      const found = await searchAll(client, type, `${param}=${tokens.join(',')}&_count=${batch.length * 2 + 10}`);
      requests += found.requests;
      const counts = new Map<string, number>();
      for (const resource of found.resources) {
        if (resource.resourceType !== type) continue;
        for (const token of new Set(carried(resource, param))) counts.set(token, (counts.get(token) ?? 0) + 1);
      }
      for (const id of batch) {
        const n = counts.get(`${id.system}|${id.value}`) ?? 0;
        if (n === 0) missing.push(id);
        else if (n > 1) duplicated.push(id);
      }
    }
  }
  return { missing, duplicated, requests };
}

/**
 * What a failed read-back says: resource types and identifier systems, never the values (those hold subject
 * keys), e.g. `2 of 21 business identifiers not found on the server after delivery: AdverseEvent ×2 (…:adverse-event)`.
 */
export function describeUnconfirmed(missing: readonly DeliveredIdentifier[], total: number, what = 'not found on the server after delivery'): string {
  const byKind = new Map<string, number>();
  for (const id of missing) byKind.set(`${id.type} (${id.system})`, (byKind.get(`${id.type} (${id.system})`) ?? 0) + 1);
  const kinds = [...byKind].map(([kind, n]) => (n > 1 ? `${kind.replace(' (', ` ×${n} (`)}` : kind)).join(', ');
  return `${missing.length} of ${total} business identifier${total === 1 ? '' : 's'} ${what}: ${kinds}`;
}

/**
 * Reads a delivered bundle back: undefined when the server holds every entry's business identifier, else the
 * reason (missing ones named by type and system). A search that fails (a 429 from a server's quota, a 5xx, the
 * network) throws DeliveryRetryableError with the server's wait, so that the queue waits and tries again; the
 * reason names the resource type and status, never the identifiers searched for.
 */
export async function verifyDelivered(client: FhirClient, bundle: SerializedBundle | Bundle): Promise<string | undefined> {
  const identifiers = bundleIdentifiers(bundle);
  let missing: DeliveredIdentifier[];
  try {
    ({ missing } = await findOnServer(client, identifiers));
  } catch (error) {
    const refusal = error instanceof VerificationSearchError ? error.refusal : undefined;
    throw new DeliveryRetryableError(`verification: the read-back search failed: ${error instanceof Error ? error.message : String(error)}`, {
      attempts: 1,
      ...(refusal ? { status: refusal.status, kind: refusal.throttled ? 'throttle' : 'unavailable' } : { kind: 'unavailable' }),
      ...(refusal?.retryAfterMs !== undefined ? { retryAfterMs: refusal.retryAfterMs } : {}),
      cause: error,
    });
  }
  return missing.length === 0 ? undefined : `verification: ${describeUnconfirmed(missing, identifiers.length)}`;
}

/** A delivery whose read-back did not find everything: retried (the whole subject is sent again), then dead-lettered. */
export class DeliveryVerificationError extends Error {
  override readonly name = 'DeliveryVerificationError';
}
