import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { defaultValidator, mapExport, type MappedExport } from '../bundle/map-export.ts';
import { compileMapping, type CompiledMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { startEmbeddedFhirServer } from '../delivery/embedded-server.ts';
import { bundleGroups, trialFigures } from '../report/figures.ts';
import { FhirClient } from '../delivery/client.ts';
import { runStudyReport } from '../report/run.ts';
import { demoDelivery } from './demo-delivery.ts';
import { formatSummary, writeMappedExport } from './output.ts';
import { redisConnection } from './worker.ts';

/** The sample sites of the reference trial and their mappings. */
export const SAMPLE_SITES = [
  { site: 'site-a', mapping: 'mappings/site-a.yaml', input: 'examples/site-a' },
  { site: 'site-b', mapping: 'mappings/site-b.yaml', input: 'examples/site-b' },
  { site: 'site-c', mapping: 'mappings/site-c.yaml', input: 'examples/site-c' },
] as const;

/** The reference trial's ResearchStudy identifier (mappings/ldccrt-hcc-base.yaml). */
const STUDY_IDENTIFIER = 'LDCCRT-HCC-P2';

/** Fixed so the demo's output is the same on every machine. */
const DEMO_RECORDED = '2019-01-01T00:00:00Z';

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'map the three sample sites of the reference trial, print the pooled trial figures, and deliver them to embedded FHIR servers (through BullMQ when REDIS_URL is set, in process otherwise)',
    )
    .option('-o, --out <dir>', 'output directory', 'out/demo')
    .action(async (options: { out: string }) => {
      const mapped: MappedExport[] = [];
      const mappings: CompiledMapping[] = [];
      const validator = await defaultValidator();
      for (const sample of SAMPLE_SITES) {
        const mapping = await compileMapping(await loadMapping(sample.mapping));
        mappings.push(mapping);
        const result = await mapExport(mapping, [sample.input], { recorded: DEMO_RECORDED, validator });
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
      const expected: Record<string, number> = {};
      for (const m of mapped) {
        for (const [type, n] of Object.entries(m.summary.resourcesByType)) expected[type] = (expected[type] ?? 0) + n;
      }
      // The ResearchStudy is one for the whole trial, whichever site sends it.
      expected.ResearchStudy = 1;
      const hospital = await startEmbeddedFhirServer();
      const sponsor = await startEmbeddedFhirServer();
      try {
        const passes = await demoDelivery({
          mappings,
          validator,
          exports: SAMPLE_SITES.map((s) => ({ site: s.site, inputs: [s.input] })),
          hospital,
          sponsor,
          expected,
          recorded: DEMO_RECORDED,
          ...(process.env.REDIS_URL ? { redis: redisConnection(process.env.REDIS_URL) } : {}),
          log: (line) => console.log(line),
        });
        if (passes.some((p) => !p.exact || p.deadLettered > 0)) process.exitCode = 1;
        // The sponsor's view: the report reads the study back from the sponsor's (pseudonymised) server alone.
        const report = await runStudyReport({ client: new FhirClient({ baseUrl: sponsor.baseUrl }), study: STUDY_IDENTIFIER, outDir: join(options.out, 'report') });
        console.log(`\nSponsor report from the sponsor's FHIR server (${sponsor.baseUrl}), by FHIR search alone:`);
        console.log(report.summary);
        console.log(`  HTML: ${report.htmlPath}\n  JSON: ${report.jsonPath}`);
      } finally {
        await Promise.all([hospital.close(), sponsor.close()]);
      }
    });
}
