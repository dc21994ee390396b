/**
 * The worker's mapping stage against a hostile mapping and export, as an attacker reaches it: a real
 * `trialbridge worker` process maps the subjects of a submission whose mapping runs a nested-alternation regex
 * on a 35-character value, and whose export has a patient's name in a dose-unit column. The regex runs on the
 * linear-time engine (the worker does not freeze), and nothing but the worker's own JSON lines reaches its
 * stdout: the unit library's message quoting the name is held back, and the reject's reason does not quote it.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AdverseEvent } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';
import { baseMappingDir } from '../support/mapping-dir.ts';
import { within, WorkerProcess } from '../support/worker-process.ts';
import { SITE_A_TEXT } from './inputs.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const NAME = 'Wilhelmina Quillfeather';
const HOSTILE_TEXT = `${'1'.repeat(34)}!`;
const RT_ROW = 5;
const AE_ROW = 9;

let dir: string;
let fhir: EmbeddedFhirServer;
let producer: QueuePipeline | undefined;
let worker: WorkerProcess | undefined;

beforeAll(async () => {
  dir = await baseMappingDir('tb-worker-hostile-');
  fhir = await startEmbeddedFhirServer();
});

afterAll(async () => {
  await worker?.kill();
  if (producer) {
    await producer.obliterate();
    await producer.close();
  }
  await fhir?.close();
  await rm(dir, { recursive: true, force: true });
});

function editLine(text: string, line: number, edit: (l: string) => string): string {
  const lines = text.split('\n');
  const edited = edit(lines[line - 1]);
  if (edited === lines[line - 1]) throw new Error('export.csv changed: the test cannot plant its value');
  lines[line - 1] = edited;
  return lines.join('\n');
}

describe("the worker's mapping stage", () => {
  it('maps through a backtracking-prone regex at once and keeps its stdout to its own JSON lines, without the name', { timeout: 300_000 }, async () => {
    const site = (await readFile('mappings/site-a.yaml', 'utf8')).replace('verbatim: { $expr: item_text }', () => `verbatim: { $expr: "iif(item_text.matches('^([0-9]|[0-9a-z]){1,64}$'), 'coded', item_text)" }`);
    const mappingPath = join(dir, 'site-a.yaml');
    await writeFile(mappingPath, site);
    const input = await mkdtemp(join(tmpdir(), 'tb-worker-hostile-export-'));
    let csv = editLine(SITE_A_TEXT, RT_ROW, (l) => l.replace(',Gy,', `,${NAME},`));
    csv = editLine(csv, AE_ROW, (l) => l.replace(',FATIGUE,', `,${HOSTILE_TEXT},`));
    await writeFile(join(input, 'export.csv'), csv);
    const config = join(dir, 'destinations.yaml');
    await writeFile(config, ['destinations:', '  - name: hospital', '    kind: hospital', `    baseUrl: ${fhir.baseUrl}`, '    sites: "*"', '    auth: { type: none }'].join('\n') + '\n');

    const prefix = `tb-worker-hostile-${randomUUID()}`;
    const mapping = await compileMapping(await loadMapping(mappingPath));
    producer = new QueuePipeline({ connection: REDIS, prefix, mappings: [mapping], destinations: await loadDestinations(config), validator: await defaultValidator() });
    worker = new WorkerProcess({ destinations: config, prefix, redisUrl: `redis://${REDIS.host}:${REDIS.port}`, mappings: [mappingPath], name: 'hostile-mapping worker' });
    await worker.ready(120_000);
    const submitted = await producer.submitExport('site-a', [input], { recorded: '2019-01-01T00:00:00Z' });
    // A deadline for the failure message only: on a backtracking engine the worker never finishes this subject.
    await within(180_000, 'the submission is mapped and delivered', producer.waitForSubmission(submitted));

    const counters = await producer.submission(submitted.submissionId);
    expect(counters.mappingFailed ?? 0).toBe(0);
    // The adverse event with the hostile text was mapped and delivered: its text went through the regex.
    const events = (await fhir.repository.searchResources({ resourceType: 'AdverseEvent' })) as AdverseEvent[];
    expect(events.some((e) => e.event?.text === HOSTILE_TEXT)).toBe(true);

    // Every stdout line is one of the worker's JSON lines; none carries the name.
    const stdout = worker.output.filter((l) => !l.startsWith('stderr: '));
    expect(stdout.length).toBeGreaterThan(0);
    expect(stdout.filter((l) => !l.startsWith('{'))).toEqual([]);
    expect(worker.output.filter((l) => l.includes('Wilhelmina'))).toEqual([]);
    // The unit was refused all the same, with a reason that names the rule, not the value.
    const dead = await producer.deadLetters.list(submitted.submissionId);
    const unit = dead.filter((d) => JSON.stringify(d).includes('not a UCUM unit'));
    expect(unit.length).toBeGreaterThan(0);
    expect(JSON.stringify(unit.map((d) => d.reason))).not.toContain('Wilhelmina');
    await rm(input, { recursive: true, force: true });
  });
});
