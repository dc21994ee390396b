import type { Command } from 'commander';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';

export function registerCheckMapping(program: Command): void {
  program
    .command('check-mapping')
    .description('check mapping files: schema, expressions, value maps, referenced files')
    .argument('<mapping...>', 'mapping files (YAML)')
    .action(async (files: string[]) => {
      let failed = 0;
      for (const file of files) {
        try {
          const mapping = await compileMapping(await loadMapping(file));
          console.log(`${file}: ok (site ${mapping.site}, version ${mapping.version}, ${mapping.rules.length} resource rules)`);
        } catch (err) {
          failed++;
          console.error((err as Error).message);
        }
      }
      process.exitCode = failed > 0 ? 1 : 0;
    });
}
