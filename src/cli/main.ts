import { Command, CommanderError } from 'commander';
import { MappingError } from '../mapping/errors.ts';
import { SourceFileError } from '../source/raw.ts';
import { registerCheckMapping } from './check-mapping.ts';
import { registerDemo } from './demo.ts';
import { registerDlq } from './dlq.ts';
import { registerMap } from './map.ts';
import { registerReconcile } from './reconcile.ts';
import { registerReport } from './report.ts';
import { registerServe } from './serve.ts';
import { registerTestMappings } from './test-mappings.ts';
import { registerValidate } from './validate.ts';
import { registerWorker } from './worker.ts';

const program = new Command('trialbridge')
  .description('Maps clinical-trial site exports to FHIR R4 and delivers them to FHIR servers')
  .version('0.1.0')
  .exitOverride();

registerMap(program);
registerCheckMapping(program);
registerTestMappings(program);
registerValidate(program);
registerDemo(program);
registerWorker(program);
registerDlq(program);
registerServe(program);
registerReport(program);
registerReconcile(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // commander already printed the message; help and version are not errors.
    process.exitCode = err.exitCode === 0 ? 0 : 1;
  } else if (err instanceof MappingError || err instanceof SourceFileError) {
    console.error(err.message);
    process.exitCode = 1;
  } else {
    console.error(err);
    process.exitCode = 1;
  }
}
