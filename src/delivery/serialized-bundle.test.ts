import type { Bundle } from '@medplum/fhirtypes';
import { describe, expect, it } from 'vitest';
import { bundleText, entryBytes, fromEntryTexts, fromStoredBundle, isSerialized, joinEntries, parseBundle, serializeBundle } from './serialized-bundle.ts';

/** Entries with characters of 1 to 4 UTF-8 bytes: offsets are in bytes, not characters. */
const bundle: Bundle = {
  resourceType: 'Bundle',
  type: 'transaction',
  entry: [
    { fullUrl: 'urn:uuid:a', resource: { resourceType: 'Patient', name: [{ family: 'Müller-Łukasiewicz' }] }, request: { method: 'PUT', url: 'Patient?identifier=s|1' } },
    { fullUrl: 'urn:uuid:b', resource: { resourceType: 'Observation', status: 'final', code: { text: '肝細胞癌 🩺' } }, request: { method: 'PUT', url: 'Observation?identifier=s|2' } },
    { resource: { resourceType: 'Patient', gender: 'female' }, request: { method: 'PUT', url: 'Patient?identifier=s|3' } },
  ],
};

describe('serialised bundles', () => {
  it('are the bytes JSON.stringify gives, with each entry found at its byte offsets', () => {
    const serialized = serializeBundle(bundle);
    expect(isSerialized(serialized)).toBe(true);
    expect(isSerialized(bundle)).toBe(false);
    expect(serialized.bytes.toString('utf8')).toBe(JSON.stringify({ resourceType: 'Bundle', type: 'transaction', entry: bundle.entry }));
    expect(serialized.entries.map((e) => e.fullUrl)).toEqual(['urn:uuid:a', 'urn:uuid:b', undefined]);
    serialized.entries.forEach((e, i) => expect(JSON.parse(entryBytes(serialized, e).toString('utf8'))).toEqual(bundle.entry![i]));
    expect(parseBundle(serialized)).toEqual(bundle);
  });

  it('join entries of several bundles into one transaction whose offsets hold too', () => {
    const first = serializeBundle(bundle);
    const second = serializeBundle({ ...bundle, entry: bundle.entry!.slice(1) });
    const joined = joinEntries([
      { bundle: first, entry: first.entries[0] },
      { bundle: second, entry: second.entries[1] },
      { bundle: second, entry: second.entries[0] },
    ]);
    const expected = [bundle.entry![0], bundle.entry![2], bundle.entry![1]];
    expect(parseBundle(joined).entry).toEqual(expected);
    joined.entries.forEach((e, i) => expect(JSON.parse(entryBytes(joined, e).toString('utf8'))).toEqual(expected[i]));
    expect(parseBundle(joinEntries([])).entry).toEqual([]);
  });

  it('come back from the text kept in a dead letter, and from the entry texts of the earlier form', () => {
    const serialized = serializeBundle(bundle);
    const kept = JSON.parse(JSON.stringify(bundleText(serialized))) as ReturnType<typeof bundleText>;
    expect(fromStoredBundle(kept)).toEqual(serialized);
    const earlier = { entries: bundle.entry!.map((e) => ({ ...(e.fullUrl ? { fullUrl: e.fullUrl } : {}), json: JSON.stringify(e) })) };
    expect(fromStoredBundle(earlier)).toEqual(serialized);
    expect(fromEntryTexts(earlier.entries).bytes.equals(serialized.bytes)).toBe(true);
  });
});
