import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nock from 'nock';
import type { Bundle } from '@medplum/fhirtypes';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport, type MappedExport } from '../../src/bundle/map-export.ts';
import { FhirClient } from '../../src/delivery/client.ts';
import { loadDestinations, type Destination } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { runInProcess } from '../../src/queue/in-process.ts';
import { deliveryJobId } from '../../src/queue/job-ids.ts';
import { isRedisReachable, QueuePipeline } from '../../src/queue/pipeline.ts';
import type { SubmissionCounters } from '../../src/queue/submissions.ts';
import { FaultProxy } from '../support/fault-proxy.ts';
import { until } from '../support/worker-process.ts';
import { deliveryDoneKey, runMappingJob, type DeliveryJobData, type DeliveryJobResult, type MappingJobData, type PipelineStore } from '../../src/queue/stages.ts';
import { serializeBundle } from '../../src/delivery/serialized-bundle.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const RECORDED = '2019-01-01T00:00:00Z';
const SITE = 'site-a';
const INPUTS = ['examples/site-a'];
const PSEUDONYM_KEY = 'k'.repeat(40);

let mapping: CompiledMapping;
let validator: ResourceValidator;
let expectedExport: MappedExport;
let expected: Record<string, number>;
let configDir: string;

beforeAll(async () => {
  mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
  validator = await defaultValidator();
  expectedExport = await mapExport(mapping, INPUTS, { recorded: RECORDED, validator });
  expected = { ...expectedExport.summary.resourcesByType, ResearchStudy: 1 };
  configDir = await mkdtemp(join(tmpdir(), 'tb-queue-test-'));
});

afterAll(async () => {
  await rm(configDir, { recursive: true, force: true });
});

/** Destinations from a real config file: the hospital (identifiable) and optionally a pseudonymised sponsor. */
async function destinations(hospital: EmbeddedFhirServer, sponsor?: EmbeddedFhirServer): Promise<Destination[]> {
  const lines = [
    'destinations:',
    '  - name: hospital',
    '    kind: hospital',
    `    baseUrl: ${hospital.baseUrl}`,
    `    sites: [${SITE}]`,
    '    retry: { attempts: 2, requestAttempts: 2, baseMs: 10, maxMs: 50 }',
    '    auth: { type: none }',
  ];
  if (sponsor) {
    lines.push(
      '  - name: sponsor',
      '    kind: sponsor',
      `    baseUrl: ${sponsor.baseUrl}`,
      '    sites: "*"',
      '    retry: { attempts: 2, requestAttempts: 2, baseMs: 10, maxMs: 50 }',
      '    pseudonymisationKey: { env: TB_TEST_PSEUDONYM_KEY }',
      '    auth: { type: none }',
    );
  }
  const file = join(configDir, `${randomUUID()}.yaml`);
  await writeFile(file, lines.join('\n') + '\n');
  return loadDestinations(file, { TB_TEST_PSEUDONYM_KEY: PSEUDONYM_KEY });
}

/** What the server holds, per resource type of the mapping, by FHIR search. */
async function serverCounts(server: EmbeddedFhirServer): Promise<Record<string, number>> {
  const client = new FhirClient({ baseUrl: server.baseUrl });
  const out: Record<string, number> = {};
  for (const type of Object.keys(expected).sort()) {
    out[type] = (await client.get<{ total?: number }>(`${type}?_summary=count`)).body?.total ?? 0;
  }
  return out;
}

function expectCountersAddUp(c: SubmissionCounters, destinationNames: readonly string[], dead: Record<string, number> = {}): void {
  expect(c.queued + c.duplicates).toBe(c.subjects);
  expect(c.mapped + c.subjectsRejected + c.mappingFailed).toBe(c.queued);
  for (const name of destinationNames) {
    const d = c.destinations[name] ?? { deliveryQueued: 0, deliveryDuplicates: 0, delivered: 0, deadLettered: 0, replayed: 0 };
    expect(d.deliveryQueued + d.deliveryDuplicates).toBe(c.mapped + d.replayed);
    expect(d.delivered + d.deadLettered).toBe(d.deliveryQueued);
    expect(d.deadLettered).toBe(dead[name] ?? 0);
  }
}

describe('queue pipeline on Redis', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    nock.cleanAll();
    nock.enableNetConnect();
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setUp(servers: { sponsor: boolean }, mappingAttempts?: number) {
    const hospital = await startEmbeddedFhirServer();
    cleanups.push(() => hospital.close());
    const sponsor = servers.sponsor ? await startEmbeddedFhirServer() : undefined;
    if (sponsor) cleanups.push(() => sponsor.close());
    const pipeline = new QueuePipeline({
      connection: REDIS,
      prefix: `tb-test-${randomUUID()}`,
      mappings: [mapping],
      destinations: await destinations(hospital, sponsor),
      validator,
      mappingAttempts,
    });
    cleanups.push(async () => {
      await pipeline.closeWorkers();
      await pipeline.obliterate();
      await pipeline.close();
    });
    return { hospital, sponsor, pipeline };
  }

  it('delivers a site exactly once per destination, pseudonymised for the sponsor, and queues nothing on re-submission', async () => {
    const started = performance.now();
    const { hospital, sponsor, pipeline } = await setUp({ sponsor: true });
    pipeline.startWorkers();

    const first = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    // Submitted again at once, while the first one's jobs are pending: nothing new is queued.
    const again = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    expect(first.queued).toBe(first.subjects);
    expect(again.queued).toBe(0);
    expect(again.duplicates).toBe(again.subjects);

    await pipeline.waitForSubmission(first);
    expect(await serverCounts(hospital)).toEqual(expected);
    expect(await serverCounts(sponsor!)).toEqual(expected);

    // The sponsor got pseudonymised data: no site subject id, no name.
    const sponsorClient = new FhirClient({ baseUrl: sponsor!.baseUrl });
    const patients = (await sponsorClient.get<Bundle>('Patient')).body!.entry!.map((e) => e.resource as { name?: unknown; identifier?: { value?: string }[] });
    expect(patients.some((p) => p.name !== undefined)).toBe(false);
    expect(patients.flatMap((p) => p.identifier ?? []).some((i) => expectedExport.bundles.some((b) => b.subject === i.value))).toBe(false);

    const counters = await pipeline.submission(first.submissionId);
    expect(counters.mapped).toBe(expectedExport.bundles.length);
    // One subject of site-a has no enrolment record: its records are rejected and it makes no bundle.
    expect(counters.subjectsRejected).toBe(first.subjects - expectedExport.bundles.length);
    expect(counters.recordsRejected).toBe(expectedExport.summary.recordsRejected);
    expect(counters.destinations.hospital.delivered).toBe(expectedExport.bundles.length);
    expect(counters.destinations.sponsor.delivered).toBe(expectedExport.bundles.length);
    expectCountersAddUp(counters, ['hospital', 'sponsor']);
    const deadLetters = await pipeline.deadLetters.list(first.submissionId);
    expect(deadLetters).toHaveLength(expectedExport.summary.rejects.length);
    expect(deadLetters.map((d) => `${d.location!.file}#${d.location!.row}`).sort()).toEqual(expectedExport.summary.rejects.map((r) => `${r.file}#${r.row}`).sort());
    // Dead letters carry locations and reasons, never the offending value.
    expect(deadLetters.every((d) => d.site === SITE && d.reason && !('value' in (d.location as object)))).toBe(true);

    // Bundles are kept only until their delivery ends; finished delivery jobs keep no resource.
    expect(await pipeline.redis.keys(`${pipeline.names.prefix}:tb-bundle:*`)).toEqual([]);
    const finished = await pipeline.deliveryQueue('hospital').getCompleted(0, -1);
    expect(finished).toHaveLength(expectedExport.bundles.length);
    for (const job of finished) expect(JSON.stringify(job.data)).not.toContain('resourceType');
    // Nor do completed mapping jobs keep the records (emptied just after completion).
    await expect
      .poll(async () => (await pipeline.mappingQueue.getCompleted(0, -1)).map((job) => (job.data as MappingJobData).records.length))
      .toEqual(Array(first.subjects).fill(0));

    const duplicate = await pipeline.submission(again.submissionId);
    expect(duplicate).toMatchObject({ subjects: first.subjects, queued: 0, duplicates: first.subjects, mapped: 0 });

    // Submitted again after completion: the retained jobs still deduplicate it; nothing changes.
    const third = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    expect(third.queued).toBe(0);
    await pipeline.waitForSubmission(third);
    expect(await serverCounts(hospital)).toEqual(expected);
    expect(await pipeline.submission(first.submissionId)).toEqual(counters);
    console.log(`queue: site-a to 2 destinations in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  });

  it('counts a delivery job as queued when its mapping job runs again after dying between queueing and counting it', async () => {
    const { hospital, pipeline } = await setUp({ sponsor: false });
    const submitted = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    // What the first run of a mapping job did before its worker died: it added the subject's delivery job, and
    // counted nothing (the count comes after). Reproduced with the stage itself and a store that keeps nothing.
    const victim = submitted.mappingJobs.find((j) => expectedExport.bundles.some((b) => b.subject === j.subject))!;
    const job = (await pipeline.mappingQueue.getJob(victim.jobId))!;
    const added: { jobId: string; data: DeliveryJobData }[] = [];
    const forgetful: PipelineStore = { count: async () => {}, deadLetter: async () => {} };
    await runMappingJob(pipeline.context, forgetful, victim.jobId, job.data as MappingJobData, async (jobId, data) => {
      added.push({ jobId, data });
      return true;
    });
    expect(added).toHaveLength(1);
    expect(await pipeline.enqueueDelivery(added[0].jobId, added[0].data)).toBe(true);

    pipeline.startWorkers();
    await pipeline.waitForSubmission(submitted);
    const counters = await pipeline.submission(submitted.submissionId);
    expect(counters.destinations.hospital).toMatchObject({ deliveryQueued: expectedExport.bundles.length, deliveryDuplicates: 0, delivered: expectedExport.bundles.length });
    expectCountersAddUp(counters, ['hospital']);
    expect(await serverCounts(hospital)).toEqual(expected);
  });

  it('answers a delivery job whose bundle is gone: ended before (counted) without sending it, expired as a dead letter; runs jobs of the inline form', async () => {
    const { hospital, pipeline } = await setUp({ sponsor: false });
    const submissionId = randomUUID();
    const jobs = expectedExport.bundles.slice(0, 4).map(({ subject, bundle }) => {
      const data: DeliveryJobData = { submissionId, destination: 'hospital', site: SITE, subject, bundle: serializeBundle(bundle) };
      return { jobId: deliveryJobId('hospital', SITE, subject, data.bundle), data };
    });
    const [kept, endedBefore, expired, inline] = jobs;
    for (const job of [kept, endedBefore, expired]) expect(await pipeline.enqueueDelivery(job.jobId, job.data)).toBe(true);
    expect((await pipeline.bundles.load(kept.jobId))?.equals(kept.data.bundle.bytes)).toBe(true);
    // endedBefore: delivered and counted, its bundle removed, then its worker died before BullMQ recorded the end.
    await pipeline.submissions.count(submissionId, deliveryDoneKey(endedBefore.jobId), { 'delivered:hospital': 1 });
    await pipeline.bundles.release(endedBefore.jobId);
    // expired: the bundle went while the job waited.
    await pipeline.bundles.release(expired.jobId);
    // inline: queued by an earlier version, the bundle's entry texts in the job's data.
    const { bundle: _bytes, ...meta } = inline.data;
    const texts = expectedExport.bundles[3].bundle.entry!.map((e) => ({ fullUrl: e.fullUrl, json: JSON.stringify(e) }));
    await pipeline.deliveryQueue('hospital').add('deliver', { ...meta, bundle: { entries: texts } }, { jobId: inline.jobId });

    pipeline.startWorkers();
    await pipeline.waitForJobs(jobs.map(({ jobId }) => ({ destination: 'hospital', jobId })));
    const results = await Promise.all(jobs.map(async ({ jobId }) => (await pipeline.deliveryQueue('hospital').getJob(jobId))!.returnvalue as DeliveryJobResult));
    expect(results.map((r) => r.outcome)).toEqual(['delivered', 'delivered', 'dead-lettered', 'delivered']);
    // Only `kept` and `inline` were sent.
    const patients = (await new FhirClient({ baseUrl: hospital.baseUrl }).get<Bundle>('Patient')).body!.entry ?? [];
    const sentSubjects = patients.flatMap((e) => (e.resource as { identifier?: { value?: string }[] }).identifier ?? []).map((i) => i.value);
    expect(sentSubjects.filter((v) => jobs.some((j) => j.data.subject === v)).sort()).toEqual([kept.data.subject, inline.data.subject].sort());
    const dead = await pipeline.deadLetters.list(submissionId);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ subject: expired.data.subject, stage: 'deliver', replayable: false });
    expect(dead[0].reason).toMatch(/no longer kept: submit the export again/);
    expect((await pipeline.submission(submissionId)).destinations.hospital).toMatchObject({ delivered: 3, deadLettered: 1 });
    expect(await pipeline.redis.keys(`${pipeline.names.prefix}:tb-bundle:*`)).toEqual([]);
  });

  it('shares transactions between subjects where the destination allows, and dead-letters only the subjects the server refuses', async () => {
    /** Site A through a pipeline whose hospital takes up to 4 subjects per transaction, behind a counting proxy. */
    const run = async (hospital: EmbeddedFhirServer) => {
      // Transactions are held until every subject is mapped, so that delivery jobs wait behind them as they do
      // whenever a server is slower than mapping: then jobs run together and share transactions.
      let pipelineRef: QueuePipeline | undefined;
      let mapped: Promise<unknown> | undefined;
      const proxy = await FaultProxy.start(hospital.baseUrl, {
        onRequest: async ({ method }) => {
          if (method !== 'POST') return;
          mapped ??= until(30_000, 'every subject mapped', async () => Object.values(await pipelineRef!.mappingQueue.getJobCounts('waiting', 'active', 'delayed')).every((n) => n === 0), 20);
          await mapped;
        },
      });
      cleanups.push(() => proxy.close());
      const file = join(configDir, `${randomUUID()}.yaml`);
      await writeFile(
        file,
        [
          'destinations:',
          '  - name: hospital',
          '    kind: hospital',
          `    baseUrl: ${proxy.baseUrl}`,
          `    sites: [${SITE}]`,
          '    transactions: true',
          '    maxEntries: 1000',
          '    subjectsPerTransaction: 4',
          '    concurrency: 4',
          '    retry: { attempts: 2, requestAttempts: 1, baseMs: 10, maxMs: 50 }',
          '    auth: { type: none }',
        ].join('\n') + '\n',
      );
      const pipeline = new QueuePipeline({ connection: REDIS, prefix: `tb-test-${randomUUID()}`, mappings: [mapping], destinations: await loadDestinations(file), validator });
      pipelineRef = pipeline;
      cleanups.push(async () => {
        await pipeline.closeWorkers();
        await pipeline.obliterate();
        await pipeline.close();
      });
      pipeline.startWorkers();
      const submitted = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
      await pipeline.waitForSubmission(submitted);
      const counters = await pipeline.submission(submitted.submissionId);
      const dead = (await pipeline.deadLetters.list(submitted.submissionId)).filter((d) => d.stage === 'deliver');
      return { counters, dead, posts: proxy.stats.received.POST ?? 0, stats: pipeline.context.batcher(pipeline.context.destination('hospital')).stats };
    };

    const roomy = await startEmbeddedFhirServer();
    cleanups.push(() => roomy.close());
    const shared = await run(roomy);
    expect(shared.counters.destinations.hospital).toMatchObject({ delivered: expectedExport.bundles.length, deadLettered: 0 });
    expect(await serverCounts(roomy)).toEqual(expected);
    expect(shared.stats.batches).toBeGreaterThan(0);
    expect(shared.posts).toBeLessThan(expectedExport.bundles.length);

    // A server that refuses transactions above 30 entries: the combined ones it refuses are sent again one
    // subject at a time, and only the subjects too large on their own end dead-lettered, with its message.
    const limit = 30;
    const strict = await startEmbeddedFhirServer({ maxTransactionEntries: limit });
    cleanups.push(() => strict.close());
    const refused = await run(strict);
    // The trial-wide ResearchStudy is written once on its own, before the subjects: it is not in their transactions.
    const tooLarge = expectedExport.bundles.filter((b) => b.bundle.entry!.filter((e) => e.resource!.resourceType !== 'ResearchStudy').length > limit).map((b) => b.subject).sort();
    expect(tooLarge.length).toBeGreaterThan(0);
    expect(refused.stats.fallbacks).toBeGreaterThan(0);
    expect(refused.dead.map((d) => d.subject).sort()).toEqual(tooLarge);
    for (const d of refused.dead) expect(d).toMatchObject({ status: 400, reason: expect.stringMatching(new RegExp(`more than the ${limit} allowed`)) });
    expect(refused.counters.destinations.hospital).toMatchObject({ delivered: expectedExport.bundles.length - tooLarge.length, deadLettered: tooLarge.length });
    expectCountersAddUp(refused.counters, ['hospital'], { hospital: tooLarge.length });
    expect((await serverCounts(strict)).Patient).toBe(expected.Patient - tooLarge.length);
  });

  it('dead-letters the bundles a destination rejects with its message, and replay delivers them once the fault is gone', async () => {
    const { hospital, pipeline } = await setUp({ sponsor: false });
    const affected = expectedExport.bundles.slice(2, 4).map((b) => b.subject);
    const message = 'Rejected by the test: subject under query';
    const origin = new URL(hospital.baseUrl).origin;
    const isAffected = (body: unknown) => affected.some((s) => JSON.stringify(body).includes(`"value":"${s}"`));
    nock(origin, { allowUnmocked: true })
      .persist()
      .post(new URL(hospital.baseUrl).pathname, (body) => isAffected(body))
      .reply(400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'business-rule', diagnostics: message }] }, { 'Content-Type': 'application/fhir+json' });
    pipeline.startWorkers();

    const submitted = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    await pipeline.waitForSubmission(submitted);

    const dead = (await pipeline.deadLetters.list(submitted.submissionId)).filter((d) => d.stage === 'deliver');
    expect(dead.map((d) => d.subject).sort()).toEqual([...affected].sort());
    for (const d of dead) {
      expect(d).toMatchObject({ destination: 'hospital', site: SITE, status: 400, replayable: true });
      expect(d.reason).toContain(message);
      expect(d.outcome?.issue?.[0]?.diagnostics).toBe(message);
      expect(await pipeline.deadLetters.show(d.id)).toEqual(d);
    }
    let counters = await pipeline.submission(submitted.submissionId);
    expectCountersAddUp(counters, ['hospital'], { hospital: affected.length });
    const held = await serverCounts(hospital);
    expect(held.Patient).toBe(expected.Patient - affected.length);

    // The fault is removed: replaying the submission's dead letters delivers the two bundles.
    nock.cleanAll();
    const replay = await pipeline.replayAll(submitted.submissionId);
    const deliveryReplays = replay.jobs.filter((id) => id.startsWith('dlv.'));
    expect(deliveryReplays).toHaveLength(affected.length);
    await pipeline.waitForJobs(deliveryReplays.map((jobId) => ({ destination: 'hospital', jobId })));
    // Record rejects were replayed too (the subjects re-mapped, rejected again): wait for those mapping jobs.
    await pipeline.waitForSubmission({ mappingJobs: replay.jobs.filter((id) => id.startsWith('map.')).map((jobId) => ({ jobId, subject: '', added: true })) });
    expect(await serverCounts(hospital)).toEqual(expected);
    counters = await pipeline.submission(submitted.submissionId);
    expect(counters.destinations.hospital.delivered).toBe(expectedExport.bundles.length);
    expect(counters.destinations.hospital.replayed).toBe(affected.length);
    expect((await pipeline.deadLetters.list(submitted.submissionId)).filter((d) => d.stage === 'deliver')).toHaveLength(0);
  });

  it('retries a bundle the destination answers 503 to with BullMQ backoff, and dead-letters it once the attempts are spent', async () => {
    const { hospital, pipeline } = await setUp({ sponsor: false });
    const [recovers, down] = expectedExport.bundles.slice(5, 7).map((b) => b.subject);
    const origin = new URL(hospital.baseUrl).origin;
    const path = new URL(hospital.baseUrl).pathname;
    const about = (subject: string) => (body: unknown) => JSON.stringify(body).includes(`"value":"${subject}"`);
    const unavailable = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: 'maintenance' }] };
    // retry.attempts 2: deliverBundle tries each request twice, BullMQ runs the job twice.
    nock(origin, { allowUnmocked: true }).post(path, about(recovers)).times(2).reply(503, unavailable);
    nock(origin, { allowUnmocked: true }).persist().post(path, about(down)).reply(503, unavailable);
    pipeline.startWorkers();

    const submitted = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    await pipeline.waitForSubmission(submitted);

    const recoveredBundle = expectedExport.bundles.find((b) => b.subject === recovers)!.bundle;
    const job = await pipeline.deliveryQueue('hospital').getJob(deliveryJobId('hospital', SITE, recovers, recoveredBundle));
    // attemptsMade counts finished attempts, the successful one included: one failure, then success.
    expect(job?.attemptsMade).toBe(2);
    expect(job?.returnvalue).toEqual({ outcome: 'delivered' });
    const downBundle = expectedExport.bundles.find((b) => b.subject === down)!.bundle;
    const downJob = await pipeline.deliveryQueue('hospital').getJob(deliveryJobId('hospital', SITE, down, downBundle));
    expect(downJob?.attemptsMade).toBe(2);
    expect(downJob?.returnvalue).toMatchObject({ outcome: 'dead-lettered', status: 503 });
    const dead = (await pipeline.deadLetters.list(submitted.submissionId)).filter((d) => d.stage === 'deliver');
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ subject: down, destination: 'hospital', status: 503, replayable: true });
    expect(dead[0].reason).toMatch(/gave up/);
    const counters = await pipeline.submission(submitted.submissionId);
    expectCountersAddUp(counters, ['hospital'], { hospital: 1 });
    expect((await serverCounts(hospital)).Patient).toBe(expected.Patient - 1);
  });

  it('dead-letters a subject whose mapping job fails for good (a worker with another mapping version)', async () => {
    const { pipeline } = await setUp({ sponsor: false }, 1);
    const prefix = pipeline.names.prefix;
    const worker = new QueuePipeline({
      connection: REDIS,
      prefix,
      mappings: [{ ...mapping, version: '9.9.9' }],
      destinations: [pipeline.context.destination('hospital')],
      validator,
      mappingAttempts: 1,
    });
    cleanups.push(async () => {
      await worker.close();
    });
    worker.startWorkers();
    const submitted = await pipeline.submitExport(SITE, INPUTS, { recorded: RECORDED });
    // A mapping job failed for good is finished (dead-lettered before it was failed): the wait ends.
    await worker.waitForSubmission(submitted);
    const counters = await pipeline.submission(submitted.submissionId);
    expect(counters.mappingFailed).toBe(submitted.queued);
    expectCountersAddUp(counters, ['hospital']);
    const failed = (await pipeline.deadLetters.list(submitted.submissionId)).filter((d) => d.reason.startsWith('mapping failed'));
    expect(failed).toHaveLength(submitted.queued);
    expect(failed.every((d) => d.replayable && d.stage === 'map')).toBe(true);
    expect(failed[0].reason).toMatch(/mapping site-a 1\.0\.0, this worker has 9\.9\.9/);
  });
});

describe('in-process runner', () => {
  it('is what to use when no Redis answers', async () => {
    expect(await isRedisReachable(REDIS)).toBe(true);
    expect(await isRedisReachable({ host: '127.0.0.1', port: 1 }, 300)).toBe(false);
  });

  let server: EmbeddedFhirServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('delivers the same counts without Redis', async () => {
    server = await startEmbeddedFhirServer();
    const result = await runInProcess({ exports: [{ site: SITE, inputs: INPUTS }], mappings: [mapping], destinations: await destinations(server), validator, recorded: RECORDED });
    expect(await serverCounts(server)).toEqual(expected);
    const subjects = result.submission.subjects;
    expect(result.submission).toMatchObject({ queued: subjects, mapped: expectedExport.bundles.length, subjectsRejected: subjects - expectedExport.bundles.length });
    expect(result.submission.recordsRejected).toBe(expectedExport.summary.recordsRejected);
    expect(result.submission.destinations.hospital).toMatchObject({ deliveryQueued: expectedExport.bundles.length, delivered: expectedExport.bundles.length, deadLettered: 0 });
    expect(result.deadLetters).toHaveLength(expectedExport.summary.rejects.length);
  });
});
