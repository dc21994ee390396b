import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { mapExport, type MappedExport } from '../bundle/map-export.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { FhirClient } from '../delivery/client.ts';
import { deliverBundle } from '../delivery/deliver.ts';
import { startEmbeddedFhirServer } from '../delivery/embedded-server.ts';
import { bundleGroups, trialFigures } from '../report/figures.ts';
import { formatSummary, writeMappedExport } from './output.ts';

/** The sample sites of the reference trial and their mappings. */
export const SAMPLE_SITES = [
  { site: 'site-a', mapping: 'mappings/site-a.yaml', input: 'examples/site-a' },
  { site: 'site-b', mapping: 'mappings/site-b.yaml', input: 'examples/site-b' },
  { site: 'site-c', mapping: 'mappings/site-c.yaml', input: 'examples/site-c' },
] as const;

/** Fixed so the demo's output is the same on every machine. */
const DEMO_RECORDED = '2019-01-01T00:00:00Z';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('map the three sample sites of the reference trial, deliver them to an embedded FHIR server, print the pooled trial figures')
    .option('-o, --out <dir>', 'output directory', 'out/demo')
    .action(async (options: { out: string }) => {
      const mapped: MappedExport[] = [];
      for (const sample of SAMPLE_SITES) {
        const mapping = await compileMapping(await loadMapping(sample.mapping));
        const result = await mapExport(mapping, [sample.input], { recorded: DEMO_RECORDED });
        await writeMappedExport(options.out, result, false);
        console.log(formatSummary(result));
        mapped.push(result);
      }
      const figures = trialFigures(bundleGroups(mapped.flatMap((m) => m.bundles.map((b) => b.bundle))));
      await mkdir(options.out, { recursive: true });
      await writeFile(join(options.out, 'pooled-figures.json'), JSON.stringify(figures, null, 2) + '\n');
      const pct = (n: number) => `${n}/${figures.subjects} (${((100 * n) / figures.subjects).toFixed(1)}%)`;
      console.log('\nPooled figures from the FHIR output of all sites:');
      console.log(`  subjects ${figures.subjects}`);
      console.log(`  response 4 weeks after LD-CCRT ${pct(figures.responsePost4w)}; best response ${pct(figures.bestResponse)}`);
      console.log(`  resection or transplant ${pct(figures.surgery.subjects)}`);
      console.log(`  diarrhoea ${pct(figures.aeSubjectsByMeddraPt['10012735'] ?? 0)}; hand-foot skin reaction ${pct(figures.aeSubjectsByMeddraPt['10054524'] ?? 0)}`);
      console.log(`  median radiotherapy dose ${figures.medianRtDoseGy} Gy`);
      console.log(`  median OS ${figures.km.os.medianMonths?.toFixed(1)} months, PFS ${figures.km.pfs.medianMonths?.toFixed(1)} months`);
      console.log(`  portal trunk/first branch invasion (n=${figures.km.subgroupVp34.n}): OS ${figures.km.subgroupVp34.os.medianMonths?.toFixed(1)}, PFS ${figures.km.subgroupVp34.pfs.medianMonths?.toFixed(1)} months`);
      console.log(`\nBundles, summaries and rejects in ${options.out}/`);
      await deliverToEmbeddedServer(mapped);
    });
}

/**
 * Delivers every bundle twice to an embedded FHIR server (in memory, on a local port) and reads the counts
 * back by FHIR search: the second pass must change nothing, since every entry is a conditional update.
 */
async function deliverToEmbeddedServer(mapped: readonly MappedExport[]): Promise<void> {
  const server = await startEmbeddedFhirServer();
  try {
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const expected: Record<string, number> = {};
    for (const m of mapped) {
      for (const [type, n] of Object.entries(m.summary.resourcesByType)) expected[type] = (expected[type] ?? 0) + n;
    }
    // The ResearchStudy is one for the whole trial, whichever site sends it.
    expected.ResearchStudy = 1;
    const counts = async () => {
      const out: Record<string, number> = {};
      for (const type of Object.keys(expected).sort()) {
        const response = await client.get<{ total?: number }>(`${type}?_summary=count`);
        out[type] = response.body?.total ?? 0;
      }
      return out;
    };
    const bundles = mapped.flatMap((m) => m.bundles.map((b) => b.bundle));
    for (const pass of [1, 2]) {
      const started = performance.now();
      let rejected = 0;
      for (const bundle of bundles) if ((await deliverBundle(client, bundle)).outcome === 'rejected') rejected++;
      const seconds = (performance.now() - started) / 1000;
      const onServer = await counts();
      const same = Object.keys(expected).every((type) => onServer[type] === expected[type]);
      console.log(
        `\nDelivery pass ${pass} to the embedded FHIR server ${server.baseUrl}: ${bundles.length - rejected} bundles delivered, ${rejected} rejected, in ${seconds.toFixed(1)} s`,
      );
      console.log(`  on the server (FHIR search): ${Object.entries(onServer).map(([t, n]) => `${t} ${n}`).join(', ')}`);
      console.log(`  ${same ? 'exactly the mapped resources, no duplicates' : `DIFFERS from the mapping: ${JSON.stringify(expected)}`}`);
      if (!same || rejected > 0) process.exitCode = 1;
    }
  } finally {
    await server.close();
  }
}

