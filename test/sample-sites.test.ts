import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Provenance } from '@medplum/fhirtypes';
import { mapExport, type MappedExport } from '../src/bundle/map-export.ts';
import { SAMPLE_SITES } from '../src/cli/demo.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { bundleGroups, trialFigures, type TrialFigures } from '../src/report/figures.ts';
import { baseValidationIssues } from '../src/validation/base.ts';

interface ExpectedReject {
  file: string;
  row: number;
  recordKey: string;
  field: string;
}
interface ExpectedFigures extends TrialFigures {
  resources: Record<string, number>;
  rejects?: ExpectedReject[];
}
interface ExpectedAggregates {
  pooled: ExpectedFigures;
  sites: Record<string, ExpectedFigures>;
}

const RECORDED = '2019-01-01T00:00:00Z';
let expected: ExpectedAggregates;
const mapped = new Map<string, MappedExport>();

async function mapSite(site: (typeof SAMPLE_SITES)[number]): Promise<MappedExport> {
  const mapping = await compileMapping(await loadMapping(site.mapping));
  return mapExport(mapping, [site.input], { recorded: RECORDED });
}

beforeAll(async () => {
  expected = JSON.parse(await readFile('examples/expected-aggregates.json', 'utf8')) as ExpectedAggregates;
  for (const site of SAMPLE_SITES) mapped.set(site.site, await mapSite(site));
});

describe.each(SAMPLE_SITES)('sample site $site', (site) => {
  it('yields exactly the resources the expected aggregates imply', () => {
    expect(mapped.get(site.site)!.summary.resourcesByType).toEqual(expected.sites[site.site].resources);
  });

  it('reproduces the site figures from its FHIR output', () => {
    const figures = trialFigures(bundleGroups(mapped.get(site.site)!.bundles.map((b) => b.bundle)));
    const { resources: _resources, rejects: _rejects, ...want } = expected.sites[site.site] as ExpectedFigures & { records?: unknown };
    delete (want as { records?: unknown }).records;
    expect(figures).toEqual(want);
  });

  it('rejects every planted bad record, naming its field, and nothing else', () => {
    const got = mapped.get(site.site)!.summary.rejects.map((r) => ({ file: r.file, row: r.row, key: r.key, field: r.field }));
    const want = (expected.sites[site.site].rejects ?? []).map((r) => ({ file: basename(r.file), row: r.row, key: r.recordKey, field: r.field }));
    expect(got).toEqual(want);
    for (const reject of mapped.get(site.site)!.summary.rejects) expect(reject.reason.length).toBeGreaterThan(10);
  });

  it('loses no good record: every record read is either rejected or named by the Provenance of its subject', () => {
    const result = mapped.get(site.site)!;
    const read = result.summary.files.reduce((n, f) => n + f.rows, 0);
    const named = result.bundles.flatMap((b) =>
      (b.bundle.entry ?? []).filter((e) => e.resource?.resourceType === 'Provenance').flatMap((e) => (e.resource as Provenance).entity ?? []).map((en) => en.what.identifier?.value),
    );
    expect(new Set(named).size).toBe(named.length);
    expect(named.length + result.summary.recordsRejected).toBe(read);
  });

  it('produces only resources that @medplum/core accepts', () => {
    const findings = mapped
      .get(site.site)!
      .bundles.flatMap((b) => (b.bundle.entry ?? []).flatMap((e) => baseValidationIssues(e.resource!).map((i) => `${e.resource!.resourceType}: ${i.details?.text}`)));
    expect(findings).toEqual([]);
  });

  it('maps the same export to byte-identical bundles', async () => {
    const again = await mapSite(site);
    expect(JSON.stringify(again.bundles)).toBe(JSON.stringify(mapped.get(site.site)!.bundles));
  });
});

describe('pooled over the three sites', () => {
  it('reproduces the published figures of the trial', () => {
    const figures = trialFigures(bundleGroups([...mapped.values()].flatMap((m) => m.bundles.map((b) => b.bundle))));
    expect(figures.subjects).toBe(47);
    expect(figures.responsePost4w).toBe(21);
    expect(figures.bestResponse).toBe(25);
    expect(figures.surgery.subjects).toBe(9);
    expect(figures.aeSubjectsByMeddraPt['10012735']).toBe(17);
    expect(figures.aeSubjectsByMeddraPt['10054524']).toBe(16);
    expect(figures.medianRtDoseGy).toBe(60);
    expect(figures.km.os.medianMonths).toBe(24.6);
    expect(figures.km.pfs.medianMonths).toBe(6.8);
    expect(figures.km.subgroupVp34.os.medianMonths).toBe(13);
    expect(figures.km.subgroupVp34.pfs.medianMonths).toBe(5.6);
    const { resources: _resources, ...want } = expected.pooled;
    expect(figures).toEqual(want);
  });
});
