import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Command } from 'commander';
import type { Bundle, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { ResourceValidator } from '../validation/validator.ts';

interface Located {
  readonly where: string;
  readonly resource: Resource;
}

/** Resources of a file: a Bundle's entries, a single resource, or NDJSON lines of either. */
export async function resourcesIn(path: string): Promise<Located[]> {
  const text = await readFile(path, 'utf8');
  const file = basename(path);
  const unpack = (doc: Resource, where: string): Located[] =>
    doc.resourceType === 'Bundle'
      ? ((doc as Bundle).entry ?? []).filter((e) => e.resource).map((e, i) => ({ where: `${where} entry ${i + 1}`, resource: e.resource! }))
      : [{ where, resource: doc }];
  if (path.endsWith('.ndjson')) {
    return text
      .split(/\r?\n/)
      .map((line, i) => ({ line, i }))
      .filter(({ line }) => line.trim() !== '')
      .flatMap(({ line, i }) => unpack(JSON.parse(line) as Resource, `${file} line ${i + 1}`));
  }
  return unpack(JSON.parse(text) as Resource, file);
}

export function registerValidate(program: Command): void {
  program
    .command('validate')
    .description("validate bundles or resources (JSON or NDJSON) against base FHIR R4 and the trial's profiles")
    .argument('<file...>', 'Bundle or resource JSON files, or NDJSON files')
    .option('-p, --profile <url...>', 'profiles every resource must also meet (a destination\'s)')
    .option('--json', 'print one OperationOutcome per invalid resource as NDJSON')
    .action(async (files: string[], options: { profile?: string[]; json?: boolean }) => {
      const validator = await ResourceValidator.load();
      for (const url of options.profile ?? []) {
        if (!validator.knowsProfile(url)) throw new Error(`unknown profile ${url} (profiles/ has no StructureDefinition with that url)`);
      }
      let total = 0;
      let invalid = 0;
      for (const file of files) {
        for (const { where, resource } of await resourcesIn(file)) {
          total++;
          const issues = validator.validate(resource, options.profile ?? []);
          const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
          if (errors.length === 0) continue;
          invalid++;
          if (options.json) {
            const outcome: OperationOutcome = { resourceType: 'OperationOutcome', issue: issues };
            console.log(JSON.stringify({ where, resourceType: resource.resourceType, outcome }));
          } else {
            console.log(`${where} (${resource.resourceType}):`);
            for (const issue of errors) console.log(`  ${issue.expression?.[0] ?? resource.resourceType}: ${issue.details?.text ?? issue.code}`);
          }
        }
      }
      if (!options.json) console.log(`${total} resources validated, ${invalid} with errors`);
      process.exitCode = invalid > 0 ? 2 : 0;
    });
}
