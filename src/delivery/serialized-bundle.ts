/**
 * A subject's transaction bundle as bytes: what a delivery job delivers. Serialised once when mapped, it is
 * kept in Redis as it is (queue/bundle-store.ts: no JSON escaping inside a job's data, no parsing by the
 * worker), posted as it is, and several subjects' bundles are joined into one transaction (delivery/batcher.ts)
 * by slicing their entries out of the bytes, never parsing them again.
 */
import type { Bundle, BundleEntry } from '@medplum/fhirtypes';

/** Where one entry's JSON is in the bundle's bytes. */
export interface SerializedEntry {
  /** The entry's fullUrl, to find entries that several bundles share. */
  readonly fullUrl?: string;
  /**
   * A trial-wide entry, the same in every subject's bundle (the ResearchStudy): written once per destination
   * before the bundles that refer to it (shared-entries.ts), not with each of them.
   */
  readonly shared?: true;
  readonly start: number;
  readonly end: number;
}

export interface SerializedBundle {
  /** The transaction bundle's JSON text, UTF-8: the same bytes JSON.stringify gives for `{ resourceType, type, entry }`. */
  readonly bytes: Buffer;
  readonly entries: readonly SerializedEntry[];
}

const HEAD_TEXT = '{"resourceType":"Bundle","type":"transaction","entry":[';
const TAIL_TEXT = ']}';
const HEAD = Buffer.from(HEAD_TEXT);
const TAIL = Buffer.from(TAIL_TEXT);
const COMMA = Buffer.from(',');

/** The entries of a transaction bundle as bytes (a transaction bundle is its entries: nothing else is kept). */
export function serializeBundle(bundle: Bundle): SerializedBundle {
  return fromEntryTexts(
    (bundle.entry ?? []).map((e) => ({ ...(e.fullUrl ? { fullUrl: e.fullUrl } : {}), ...(isTrialWide(e) ? { shared: true as const } : {}), json: JSON.stringify(e) })),
  );
}

/**
 * Resource types one resource of which serves the whole trial: a mapping's `scope: trial` rule makes the
 * ResearchStudy, and nothing else is trial-wide in R4 terms of a subject's bundle.
 */
const TRIAL_WIDE_TYPES: ReadonlySet<string> = new Set(['ResearchStudy']);

export function isTrialWide(entry: BundleEntry): boolean {
  return entry.resource !== undefined && TRIAL_WIDE_TYPES.has(entry.resource.resourceType);
}

/**
 * A bundle from its entries' JSON texts. Also reads the form delivery jobs and dead letters had before bundles
 * were kept as bytes (`{ entries: [{ fullUrl, json }] }`), so that jobs queued by an earlier version still go.
 */
export function fromEntryTexts(texts: readonly { readonly fullUrl?: string; readonly shared?: true; readonly json: string }[]): SerializedBundle {
  let at = HEAD.length;
  const entries = texts.map(({ fullUrl, shared, json }) => {
    const end = at + Buffer.byteLength(json);
    const entry: SerializedEntry = { ...(fullUrl !== undefined ? { fullUrl } : {}), ...(shared ? { shared } : {}), start: at, end };
    at = end + COMMA.length;
    return entry;
  });
  return { bytes: Buffer.from(HEAD_TEXT + texts.map((t) => t.json).join(',') + TAIL_TEXT), entries };
}

export function isSerialized(bundle: Bundle | SerializedBundle): bundle is SerializedBundle {
  return !('resourceType' in bundle);
}

/** One entry's JSON bytes (a view, not a copy). */
export function entryBytes(bundle: SerializedBundle, entry: SerializedEntry): Buffer {
  return bundle.bytes.subarray(entry.start, entry.end);
}

/** One transaction of entries taken from several bundles, in the order given. */
export function joinEntries(parts: readonly { readonly bundle: SerializedBundle; readonly entry: SerializedEntry }[]): SerializedBundle {
  const chunks: Buffer[] = [HEAD];
  const entries: SerializedEntry[] = [];
  let at = HEAD.length;
  parts.forEach(({ bundle, entry }, i) => {
    if (i > 0) {
      chunks.push(COMMA);
      at += COMMA.length;
    }
    const bytes = entryBytes(bundle, entry);
    chunks.push(bytes);
    entries.push({ ...(entry.fullUrl !== undefined ? { fullUrl: entry.fullUrl } : {}), start: at, end: at + bytes.length });
    at += bytes.length;
  });
  chunks.push(TAIL);
  return { bytes: Buffer.concat(chunks, at + TAIL.length), entries };
}

export function parseBundle(bundle: SerializedBundle): Bundle {
  return JSON.parse(bundle.bytes.toString('utf8')) as Bundle;
}

/** A serialised bundle as JSON-safe data (a dead letter's replay payload): the text beside the entries' places. */
export interface BundleText {
  readonly text: string;
  readonly entries: readonly SerializedEntry[];
}

export function bundleText(bundle: SerializedBundle): BundleText {
  return { text: bundle.bytes.toString('utf8'), entries: bundle.entries };
}

/** A bundle kept as JSON: BundleText, or the entry texts of an earlier version (see fromEntryTexts). */
export type StoredBundle = BundleText | { readonly entries: readonly { readonly fullUrl?: string; readonly json: string }[] };

export function fromStoredBundle(stored: StoredBundle): SerializedBundle {
  return 'text' in stored ? { bytes: Buffer.from(stored.text, 'utf8'), entries: stored.entries } : fromEntryTexts(stored.entries);
}
