import type { Bundle, Patient, Resource } from '@medplum/fhirtypes';
import { beforeAll, describe, expect, it } from 'vitest';
import { mapExport } from '../bundle/map-export.ts';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { bundleGroups, trialFigures } from '../report/figures.ts';
import { ResourceValidator } from '../validation/validator.ts';
import { PSEUDONYMISED_PATIENT_PROFILE, pseudonymiseBundle } from './pseudonymise.ts';

const KEY = 'test-only key: 0123456789abcdef0123456789abcdef';
const OTHER_KEY = new Uint8Array(32).fill(7);

let bundles: Bundle[] = [];

beforeAll(async () => {
  for (const sample of SAMPLE_SITES) {
    const mapping = await compileMapping(await loadMapping(sample.mapping));
    const result = await mapExport(mapping, [sample.input], { recorded: '2019-01-01T00:00:00Z', validate: false });
    bundles.push(...result.bundles.map((b) => b.bundle));
  }
});

function patientOf(bundle: Bundle): Patient {
  return bundle.entry!.find((e) => e.resource?.resourceType === 'Patient')!.resource as Patient;
}

function subjectIds(bundle: Bundle): string[] {
  return patientOf(bundle).identifier!.map((i) => i.value!);
}

/** A subject id standing as a token anywhere in the JSON (raw or URL-encoded). */
function leaks(bundle: Bundle, id: string): boolean {
  const token = (s: string) => new RegExp(`(?<![A-Za-z0-9])${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?![A-Za-z0-9])`);
  const json = JSON.stringify(bundle);
  return token(id).test(json) || token(encodeURIComponent(id)).test(json) || (id.length >= 4 && json.includes(id));
}

describe('pseudonymiseBundle', () => {
  it('leaves no subject id of the sample sites anywhere in the bundle', () => {
    expect(bundles.length).toBeGreaterThan(40);
    const seen = new Set<string>();
    for (const bundle of bundles) {
      const ids = subjectIds(bundle);
      for (const id of ids) {
        seen.add(id);
        expect(leaks(bundle, id)).toBe(true); // the check would see it
        expect(leaks(pseudonymiseBundle(bundle, KEY), id), `subject ${id}`).toBe(false);
      }
    }
    // The three shapes of subject id of the sample sites were all covered.
    expect(seen).toContain('A001');
    expect(seen).toContain('101');
    expect(seen).toContain('LDCCRT-HCC-P2-C-001');
  });

  it('replaces the subject id consistently in identifiers, tags, conditional URLs and Provenance', () => {
    const bundle = bundles.find((b) => subjectIds(b).includes('LDCCRT-HCC-P2-C-001'))!;
    const out = pseudonymiseBundle(bundle, KEY);
    const pseudonym = patientOf(out).identifier![0].value!;
    expect(pseudonym).toMatch(/^[0-9a-f]{64}$/);
    expect(patientOf(out).meta!.tag![0].code).toBe(pseudonym);

    const ae = out.entry!.find((e) => e.resource?.resourceType === 'AdverseEvent')!;
    const original = bundle.entry!.find((e) => e.resource?.resourceType === 'AdverseEvent')!;
    const key = (original.resource as { identifier: { value: string } }).identifier.value; // LDCCRT-HCC-P2-C-001/AE/n
    const expected = key.replace('LDCCRT-HCC-P2-C-001', pseudonym);
    expect((ae.resource as { identifier: { value: string } }).identifier.value).toBe(expected);
    expect(ae.resource!.meta!.tag![0].code).toBe(expected);
    expect(ae.request!.url).toBe(original.request!.url.replace(encodeURIComponent(key), encodeURIComponent(expected)));

    const provenance = out.entry!.find((e) => e.resource?.resourceType === 'Provenance')!;
    expect(provenance.request!.url.endsWith(`|${pseudonym}`)).toBe(true);
    const displays = (provenance.resource as { entity: { what: { display: string } }[] }).entity.map((e) => e.what.display);
    expect(displays.some((d) => d.includes(`${pseudonym}/AE/`))).toBe(true);
    // Trial-wide resources keep their identifiers.
    const study = out.entry!.find((e) => e.resource?.resourceType === 'ResearchStudy')!;
    expect(study.request!.url).toBe(bundle.entry!.find((e) => e.resource?.resourceType === 'ResearchStudy')!.request!.url);
  });

  it('replaces the name-based fullUrls and keeps every reference resolvable', () => {
    for (const bundle of bundles.slice(0, 10)) {
      const out = pseudonymiseBundle(bundle, KEY);
      const before = new Set(bundle.entry!.map((e) => e.fullUrl));
      const fullUrls = new Set(out.entry!.map((e) => e.fullUrl));
      expect(fullUrls.size).toBe(before.size);
      for (const url of fullUrls) expect(before.has(url)).toBe(false);
      const references = JSON.stringify(out).match(/"reference":"[^"]*"/g) ?? [];
      expect(references.length).toBeGreaterThan(0);
      for (const ref of references) expect(fullUrls.has(ref.slice(13, -1))).toBe(true);
    }
  });

  it('is stable for one key, different for another, and leaves its input untouched', () => {
    const bundle = bundles[0];
    const copy = structuredClone(bundle);
    const a = pseudonymiseBundle(bundle, KEY);
    expect(bundle).toEqual(copy);
    expect(pseudonymiseBundle(structuredClone(bundle), KEY)).toEqual(a);
    expect(pseudonymiseBundle(bundle, new TextEncoder().encode(KEY))).toEqual(a);
    const b = pseudonymiseBundle(bundle, OTHER_KEY);
    expect(patientOf(b).identifier![0].value).not.toBe(patientOf(a).identifier![0].value);
    expect(b.entry![1].fullUrl).not.toBe(a.entry![1].fullUrl);
    expect(patientOf(pseudonymiseBundle(bundle, KEY, { encoding: 'base64url' })).identifier![0].value).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('strips direct identifiers from the Patient and switches its profile', () => {
    const bundle = structuredClone(bundles[0]);
    const patient = patientOf(bundle);
    Object.assign(patient, {
      birthDate: '1940-04-10',
      name: [{ family: 'Synthetic', given: ['Test'] }],
      telecom: [{ system: 'phone', value: '+33 1 00 00 00 00' }],
      address: [{ city: 'Nowhere' }],
      photo: [{ contentType: 'image/png', data: 'AAAA' }],
      contact: [{ name: { family: 'Relative' } }],
      text: { status: 'generated', div: '<div xmlns="http://www.w3.org/1999/xhtml">Test Synthetic</div>' },
      extension: [{ url: 'http://hl7.org/fhir/StructureDefinition/patient-birthPlace', valueAddress: { city: 'Nowhere' } }],
    } satisfies Partial<Patient>);
    const out = patientOf(pseudonymiseBundle(bundle, KEY));
    for (const key of ['name', 'telecom', 'address', 'photo', 'contact', 'text', 'extension']) expect(out).not.toHaveProperty(key);
    expect(out.birthDate).toBe('1940');
    expect(out.meta!.profile).toEqual([PSEUDONYMISED_PATIENT_PROFILE]);
    expect(JSON.stringify(out)).not.toMatch(/Synthetic|Nowhere|Relative/);
  });

  it('gives resources that meet the trial profiles, and the same trial figures', async () => {
    const pseudonymised = bundles.map((b) => pseudonymiseBundle(b, KEY));
    const validator = await ResourceValidator.load();
    for (const bundle of pseudonymised) {
      for (const entry of bundle.entry!) {
        const errors = validator.validate(entry.resource as Resource).filter((i) => i.severity === 'error' || i.severity === 'fatal');
        expect(errors.map((e) => `${entry.resource!.resourceType} ${e.expression?.[0]}: ${e.details?.text}`)).toEqual([]);
      }
    }
    expect(trialFigures(bundleGroups(pseudonymised))).toEqual(trialFigures(bundleGroups(bundles)));
  });

  it('refuses a bundle without its Patient and a short key', () => {
    const bundle = structuredClone(bundles[0]);
    bundle.entry = bundle.entry!.filter((e) => e.resource?.resourceType !== 'Patient');
    expect(() => pseudonymiseBundle(bundle, KEY)).toThrow(/no Patient/);
    expect(() => pseudonymiseBundle(bundles[0], 'short')).toThrow(/too short/);
  });
});
