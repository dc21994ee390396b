import type { Command } from 'commander';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { terminalSafe, terminalSafeLines } from '../terminal.ts';

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
          console.log(terminalSafe(`${file}: ok (site ${mapping.site}, version ${mapping.version}, ${mapping.rules.length} resource rules)`));
        } catch (err) {
          failed++;
          // Messages quote the mapping file (expressions, paths): an escape sequence in it is shown, not obeyed.
          console.error(terminalSafeLines((err as Error).message));
        }
      }
      process.exitCode = failed > 0 ? 1 : 0;
    });
}
