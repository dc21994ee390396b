/**
 * The demo's delivery: the three sample sites through the real pipeline stages to two embedded FHIR servers
 * (a hospital receiving identifiable data, a sponsor receiving pseudonymised data), twice, with the counts read
 * back by FHIR search after each pass. Through BullMQ when REDIS_URL is set, in process otherwise.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { destinationWithDefaults, Secret } from '../delivery/destinations.ts';
import { FhirClient } from '../delivery/client.ts';
import type { EmbeddedFhirServer } from '../delivery/embedded-server.ts';
import type { CompiledMapping } from '../mapping/compile.ts';
import { runInProcess } from '../queue/in-process.ts';
import { isRedisReachable, QueuePipeline, type QueueConnection } from '../queue/pipeline.ts';
import type { SubmissionCounters } from '../queue/submissions.ts';
import type { ResourceValidator } from '../validation/validator.ts';

export interface DemoExport {
  readonly site: string;
  readonly inputs: readonly string[];
}

export interface DemoDeliveryOptions {
  readonly mappings: readonly CompiledMapping[];
  readonly validator: ResourceValidator;
  readonly exports: readonly DemoExport[];
  readonly hospital: EmbeddedFhirServer;
  readonly sponsor: EmbeddedFhirServer;
  /** What each server must hold (per resource type). */
  readonly expected: Readonly<Record<string, number>>;
  readonly recorded: string;
  /** BullMQ when given; in process otherwise. */
  readonly redis?: QueueConnection;
  readonly log: (line: string) => void;
}

export interface DemoPass {
  readonly delivered: Record<string, number>;
  readonly deadLettered: number;
  readonly onServer: Record<string, Record<string, number>>;
  readonly exact: boolean;
  readonly seconds: number;
}

async function counts(baseUrl: string, types: readonly string[]): Promise<Record<string, number>> {
  const client = new FhirClient({ baseUrl });
  const out: Record<string, number> = {};
  for (const type of types) out[type] = (await client.get<{ total?: number }>(`${type}?_summary=count`)).body?.total ?? 0;
  return out;
}

/** Runs two delivery passes; resolves them for the caller to judge (and prints them). */
export async function demoDelivery(options: DemoDeliveryOptions): Promise<DemoPass[]> {
  // A fresh key per run: the demo's sponsor pseudonyms are not meant to be stable.
  const key = new Secret(randomBytes(32).toString('base64'), 'generated for the demo');
  const destinations = [
    destinationWithDefaults({ name: 'hospital', kind: 'hospital', baseUrl: options.hospital.baseUrl, transactions: true }),
    destinationWithDefaults({ name: 'sponsor', kind: 'sponsor', baseUrl: options.sponsor.baseUrl, transactions: true, pseudonymisationKey: key }),
  ];
  const config = { mappings: options.mappings, destinations, validator: options.validator };
  const types = Object.keys(options.expected).sort();
  let pipeline: QueuePipeline | undefined;
  if (options.redis) {
    if (!(await isRedisReachable(options.redis))) throw new Error(`REDIS_URL is set but Redis at ${options.redis.host}:${options.redis.port} does not answer`);
    // Its own prefix, removed at the end: the demo leaves nothing in the user's Redis.
    pipeline = new QueuePipeline({ ...config, connection: options.redis, prefix: `tb-demo-${randomUUID()}` });
    pipeline.startWorkers();
  }
  options.log(
    pipeline
      ? `\nDelivery through BullMQ (Redis ${options.redis!.host}:${options.redis!.port}) to two embedded FHIR servers: hospital (identifiable) and sponsor (pseudonymised)`
      : '\nDelivery in process (no REDIS_URL: the pipeline stages without a queue) to two embedded FHIR servers: hospital (identifiable) and sponsor (pseudonymised)',
  );
  const passes: DemoPass[] = [];
  try {
    for (const pass of [1, 2]) {
      const started = performance.now();
      let submission: SubmissionCounters;
      if (pipeline) {
        const submissionId = randomUUID();
        for (const e of options.exports) {
          const result = await pipeline.submitExport(e.site, e.inputs, { submissionId, recorded: options.recorded });
          await pipeline.waitForSubmission(result);
        }
        submission = await pipeline.submission(submissionId);
      } else {
        submission = (await runInProcess({ ...config, exports: options.exports, recorded: options.recorded })).submission;
      }
      const seconds = (performance.now() - started) / 1000;
      const onServer = { hospital: await counts(options.hospital.baseUrl, types), sponsor: await counts(options.sponsor.baseUrl, types) };
      const exact = Object.values(onServer).every((held) => types.every((t) => held[t] === options.expected[t]));
      const delivered = Object.fromEntries(destinations.map((d) => [d.name, submission.destinations[d.name]?.delivered ?? 0]));
      const deadLettered = destinations.reduce((n, d) => n + (submission.destinations[d.name]?.deadLettered ?? 0), 0);
      passes.push({ delivered, deadLettered, onServer, exact, seconds });
      const what = pipeline
        ? `${submission.queued} subjects queued, ${submission.duplicates} already queued or delivered (not queued again)`
        : `${submission.mapped} subjects mapped`;
      options.log(`  pass ${pass}: ${what}; ${submission.recordsRejected} records rejected (kept as dead letters with their reasons); bundles delivered: hospital ${delivered.hospital}, sponsor ${delivered.sponsor}; dead-lettered ${deadLettered}; ${seconds.toFixed(1)} s`);
      for (const [name, held] of Object.entries(onServer)) {
        options.log(`    ${name} holds (FHIR search): ${types.map((t) => `${t} ${held[t]}`).join(', ')}`);
      }
      options.log(`    ${exact ? 'exactly the mapped resources on both servers, no duplicates' : `DIFFERS from the mapping: ${JSON.stringify(options.expected)}`}`);
    }
  } finally {
    if (pipeline) {
      await pipeline.closeWorkers();
      await pipeline.obliterate();
      await pipeline.close();
    }
  }
  return passes;
}
