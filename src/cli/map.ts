import type { Command } from 'commander';
import { mapExport } from '../bundle/map-export.ts';
import { compileMapping } from '../mapping/compile.ts';
import { MappingError } from '../mapping/errors.ts';
import { loadMapping } from '../mapping/load.ts';
import { SourceFileError } from '../source/raw.ts';
import { defaultRecorded, formatSummary, writeMappedExport } from './output.ts';
import { progress } from './progress.ts';
import { terminalSafeLines } from '../terminal.ts';

interface MapOptions {
  mapping: string;
  out: string;
  ndjson?: boolean;
  validate: boolean;
  recorded?: string;
  profile?: string[];
}

export function registerMap(program: Command): void {
  program
    .command('map')
    .description('map a site export to one FHIR transaction bundle per subject')
    .argument('<input...>', 'export files or directories holding them')
    .requiredOption('-m, --mapping <file>', 'site mapping file (YAML)')
    .option('-o, --out <dir>', 'output directory', 'out')
    .option('--ndjson', 'write all bundles to one NDJSON file')
    .option('--no-validate', 'skip validation of the resources')
    .option('--recorded <instant>', 'Provenance.recorded (default: newest modification time of the inputs)')
    .option('-p, --profile <url...>', "profiles every resource must also meet (a destination's)")
    .action(async (inputs: string[], options: MapOptions) => {
      try {
        await mapToFiles(inputs, options);
      } catch (err) {
        if (!(err instanceof MappingError || err instanceof SourceFileError)) throw err;
        // These name files and quote the mapping: shown with control characters escaped.
        console.error(terminalSafeLines(err.message));
        process.exitCode = 1;
      }
    });
}

async function mapToFiles(inputs: string[], options: MapOptions): Promise<void> {
  const mapping = await compileMapping(await loadMapping(options.mapping));
  const recorded = options.recorded ?? (await defaultRecorded(inputs));
  const bar = progress(`mapping ${mapping.site}`);
  const mapped = await mapExport(mapping, inputs, { recorded, validate: options.validate, requiredProfiles: options.profile, onSubject: bar.update });
  bar.stop();
  await writeMappedExport(options.out, mapped, options.ndjson ?? false);
  console.log(formatSummary(mapped));
  console.log(`  written to ${options.out}`);
  process.exitCode = mapped.summary.recordsRejected > 0 ? 2 : 0;
}
