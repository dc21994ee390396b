import { beforeAll, describe, expect, it } from 'vitest';
import type { Bundle, BundleEntry } from '@medplum/fhirtypes';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { conditionalReference, dependencyOrder, referencesOf, splitTransaction, toConditionalUpdates } from './split.ts';

const bundles: Bundle[] = [];

beforeAll(async () => {
  for (const site of SAMPLE_SITES) {
    const mapping = await compileMapping(await loadMapping(site.mapping));
    const mapped = await mapExport(mapping, [site.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
    bundles.push(...mapped.bundles.map((b) => b.bundle));
  }
});

const keyOf = (entry: BundleEntry): string => entry.request!.url;

/** Checks that a sequence of requests refers only backwards, by urn:uuid inside a request, conditionally across. */
function checkSequence(original: Bundle, requests: BundleEntry[][]): void {
  const byFullUrl = new Map((original.entry ?? []).map((e) => [e.fullUrl!, e]));
  const byConditional = new Map((original.entry ?? []).map((e) => [e.request!.url, e]));
  const seen = new Set<string>();
  for (const request of requests) {
    const here = new Set(request.map((e) => e.fullUrl!));
    for (const entry of request) {
      for (const reference of referencesOf(entry.resource)) {
        if (reference.startsWith('urn:uuid:')) {
          expect(here.has(reference), `${reference} resolves inside its request`).toBe(true);
        } else {
          const target = byConditional.get(reference);
          expect(target, `${reference} is the conditional URL of an entry`).toBeDefined();
          expect(seen.has(target!.fullUrl!), `${reference} was sent before`).toBe(true);
        }
      }
    }
    for (const fullUrl of here) seen.add(fullUrl);
  }
  // Every entry once, resources unchanged but for their references.
  const sent = requests.flat();
  expect(sent.map(keyOf).sort()).toEqual((original.entry ?? []).map(keyOf).sort());
  for (const entry of sent) {
    const before = byFullUrl.get(entry.fullUrl!)!;
    expect(entry.request).toEqual(before.request);
    const strip = (e: BundleEntry): string => JSON.stringify(e.resource).replace(/"reference":"[^"]*"/g, '');
    expect(strip(entry)).toBe(strip(before));
  }
}

describe('conditionalReference', () => {
  it('is the conditional-update URL of every sample entry (identifier, or _tag for AdverseEvent and Provenance)', () => {
    for (const entry of bundles.flatMap((b) => b.entry ?? [])) expect(conditionalReference(entry)).toBe(entry.request!.url);
    const types = new Set(bundles.flatMap((b) => b.entry ?? []).map((e) => conditionalReference(e)!.split('=')[0]));
    expect(types).toContain('AdverseEvent?_tag');
    expect(types).toContain('Provenance?_tag');
    expect(types).toContain('Patient?identifier');
  });
});

describe('splitTransaction', () => {
  it('leaves a bundle that fits alone', () => {
    const bundle = bundles[0];
    expect(splitTransaction(bundle, bundle.entry!.length)).toEqual([bundle]);
  });

  it.each([1, 5, 8])('splits every sample bundle into parts of at most %i that refer only backwards', (maxEntries) => {
    let split = 0;
    for (const bundle of bundles) {
      const before = JSON.stringify(bundle);
      const parts = splitTransaction(bundle, maxEntries);
      expect(JSON.stringify(bundle)).toBe(before);
      expect(parts).toHaveLength(Math.ceil(bundle.entry!.length / maxEntries));
      for (const part of parts) {
        expect(part.resourceType).toBe('Bundle');
        expect(part.type).toBe('transaction');
        expect(part.entry!.length).toBeGreaterThan(0);
        expect(part.entry!.length).toBeLessThanOrEqual(maxEntries);
      }
      checkSequence(
        bundle,
        parts.map((p) => p.entry!),
      );
      if (parts.length > 1) split++;
    }
    expect(split).toBeGreaterThan(10);
  });

  it('puts the Patient in the first part and keeps bundle order when it already respects references', () => {
    for (const bundle of bundles) {
      const parts = splitTransaction(bundle, 8);
      expect(parts[0].entry!.map((e) => e.resource!.resourceType)).toContain('Patient');
      expect(parts.flatMap((p) => p.entry!).map((e) => e.fullUrl)).toEqual(bundle.entry!.map((e) => e.fullUrl));
    }
  });

  it('moves referenced entries ahead of the entries referring to them', () => {
    const bundle = bundles[0];
    const reversed: Bundle = { ...bundle, entry: [...bundle.entry!].reverse() };
    const parts = splitTransaction(reversed, 4);
    expect(parts[0].entry![0].resource!.resourceType).toMatch(/^(ResearchStudy|Patient)$/);
    expect(parts.at(-1)!.entry!.at(-1)!.resource!.resourceType).toBe('Provenance');
    checkSequence(
      bundle,
      parts.map((p) => p.entry!),
    );
  });

  it('refuses to split a reference cycle across parts', () => {
    const a: BundleEntry = {
      fullUrl: 'urn:uuid:a',
      resource: { resourceType: 'Patient', meta: { tag: [{ system: 's', code: 'a' }] }, link: [{ type: 'seealso', other: { reference: 'urn:uuid:b' } }] },
      request: { method: 'PUT', url: 'Patient?identifier=s|a' },
    };
    const b: BundleEntry = {
      fullUrl: 'urn:uuid:b',
      resource: { resourceType: 'Patient', meta: { tag: [{ system: 's', code: 'b' }] }, link: [{ type: 'seealso', other: { reference: 'urn:uuid:a' } }] },
      request: { method: 'PUT', url: 'Patient?identifier=s|b' },
    };
    const bundle: Bundle = { resourceType: 'Bundle', type: 'transaction', entry: [a, b] };
    expect(() => splitTransaction(bundle, 1)).toThrow(/refer to each other/);
    expect(splitTransaction(bundle, 2)).toEqual([bundle]);
  });
});

describe('toConditionalUpdates', () => {
  it('orders every sample bundle referenced-first and leaves no urn:uuid reference', () => {
    for (const bundle of bundles) {
      const before = JSON.stringify(bundle);
      const updates = toConditionalUpdates(bundle);
      expect(JSON.stringify(bundle)).toBe(before);
      for (const entry of updates) expect(referencesOf(entry.resource).filter((r) => r.startsWith('urn:uuid:'))).toEqual([]);
      checkSequence(
        bundle,
        updates.map((e) => [e]),
      );
    }
  });

  it('sorts a shuffled bundle into dependency order', () => {
    const bundle = bundles[1];
    const reversed = [...bundle.entry!].reverse();
    const ordered = dependencyOrder(reversed);
    const position = new Map(ordered.map((e, i) => [e.fullUrl!, i]));
    for (const entry of ordered) {
      for (const reference of referencesOf(entry.resource)) {
        if (position.has(reference)) expect(position.get(reference)!).toBeLessThan(position.get(entry.fullUrl!)!);
      }
    }
    checkSequence(
      bundle,
      toConditionalUpdates({ ...bundle, entry: reversed }).map((e) => [e]),
    );
  });
});
