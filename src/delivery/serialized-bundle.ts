/**
 * A subject's transaction bundle as the JSON text of its entries: what a delivery job carries. Serialised once
 * when mapped, it travels through Redis as strings, is posted as it is, and several subjects' bundles are joined
 * into one transaction (delivery/batcher.ts) without being parsed again.
 */
import type { Bundle } from '@medplum/fhirtypes';

export interface SerializedEntry {
  /** The entry's fullUrl, to find entries that several bundles share. */
  readonly fullUrl?: string;
  readonly json: string;
}

export interface SerializedBundle {
  readonly entries: readonly SerializedEntry[];
}

/** The entries of a transaction bundle as text (a transaction bundle is its entries: nothing else is kept). */
export function serializeBundle(bundle: Bundle): SerializedBundle {
  return { entries: (bundle.entry ?? []).map((e) => ({ ...(e.fullUrl ? { fullUrl: e.fullUrl } : {}), json: JSON.stringify(e) })) };
}

export function isSerialized(bundle: Bundle | SerializedBundle): bundle is SerializedBundle {
  return !('resourceType' in bundle);
}

/** The transaction's JSON text: the same bytes JSON.stringify gives for `{ resourceType, type, entry }`. */
export function bundleJson(entries: readonly SerializedEntry[]): string {
  return `{"resourceType":"Bundle","type":"transaction","entry":[${entries.map((e) => e.json).join(',')}]}`;
}

export function parseBundle(bundle: SerializedBundle): Bundle {
  return { resourceType: 'Bundle', type: 'transaction', entry: bundle.entries.map((e) => JSON.parse(e.json) as NonNullable<Bundle['entry']>[number]) };
}
