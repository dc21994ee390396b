/**
 * The three sample sites through BullMQ (real Redis) to embedded FHIR servers over HTTP: exact counts,
 * re-submission, faults injected with nock, a destination down beside one up (circuit breaker), OAuth2 and
 * SMART Backend Services against a token endpoint, and resource-type allow-lists.
 */
import { createHash, randomUUID } from 'node:crypto';
import { exportPKCS8, generateKeyPair, jwtVerify } from 'jose';
import nock from 'nock';
import type { Bundle, ResearchSubject } from '@medplum/fhirtypes';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../src/delivery/client.ts';
import { CLIENT_ASSERTION_TYPE } from '../../src/delivery/auth/smart-backend-services.ts';
import type { Destination } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from '../../src/delivery/embedded-server.ts';
import { QueuePipeline, type SubmitResult } from '../../src/queue/pipeline.ts';
import type { SubmissionCounters } from '../../src/queue/submissions.ts';
import { destinationsFrom, mapSampleSites, RECORDED, serverCounts, SITES, type SampleSites } from '../support/sample-sites.ts';
import { SwitchableProxy } from '../support/switchable-proxy.ts';
import { TestTokenServer } from '../support/token-server.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
let sample: SampleSites;

beforeAll(async () => {
  sample = await mapSampleSites();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  nock.cleanAll();
  nock.enableNetConnect();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function server(options: EmbeddedFhirServerOptions = {}): Promise<EmbeddedFhirServer> {
  const s = await startEmbeddedFhirServer(options);
  cleanups.push(() => s.close());
  return s;
}

function pipelineFor(destinations: Destination[], options: { lockDuration?: number } = {}): QueuePipeline {
  const pipeline = new QueuePipeline({
    connection: REDIS,
    prefix: `tb-test-${randomUUID()}`,
    mappings: sample.mappings,
    destinations,
    validator: sample.validator,
    ...(options.lockDuration ? { workers: { lockDuration: options.lockDuration } } : {}),
  });
  cleanups.push(async () => {
    await pipeline.closeWorkers();
    await pipeline.obliterate();
    await pipeline.close();
  });
  return pipeline;
}

async function submitAll(pipeline: QueuePipeline, submissionId?: string): Promise<SubmitResult[]> {
  const out: SubmitResult[] = [];
  for (const s of SITES) out.push(await pipeline.submitExport(s.site, s.inputs, { recorded: RECORDED, ...(submissionId ? { submissionId } : {}) }));
  return out;
}

function destination(name: string, baseUrl: string, extra: readonly string[] = []): string[] {
  return [`  - name: ${name}`, '    kind: hospital', `    baseUrl: ${baseUrl}`, '    sites: "*"', '    auth: { type: none }', ...extra];
}

function delivered(c: SubmissionCounters, name: string): number {
  return c.destinations[name]?.delivered ?? 0;
}

describe('the three sample sites through BullMQ', () => {
  it('puts exactly the mapped resources on the server; a second submission queues nothing and changes no count', async () => {
    const hospital = await server();
    const pipeline = pipelineFor(await destinationsFrom(destination('hospital', hospital.baseUrl)));
    pipeline.startWorkers();
    const id = randomUUID();
    const first = await submitAll(pipeline, id);
    for (const r of first) await pipeline.waitForSubmission(r);
    expect(await serverCounts(hospital.baseUrl, sample.expected)).toEqual(sample.expected);
    const counters = await pipeline.submission(id);
    // Subjects whose every record is a planted bad one make no bundle.
    expect(counters.mapped).toBe(sample.bundles);
    expect(counters.subjects).toBe(counters.mapped + counters.subjectsRejected);
    expect(delivered(counters, 'hospital')).toBe(sample.bundles);

    const againId = randomUUID();
    const again = await submitAll(pipeline, againId);
    expect(again.reduce((n, r) => n + r.queued, 0)).toBe(0);
    const againCounters = await pipeline.submission(againId);
    // Reported as already there: every subject a duplicate of a job that was delivered.
    expect(againCounters.duplicates).toBe(counters.subjects);
    expect(await serverCounts(hospital.baseUrl, sample.expected)).toEqual(sample.expected);
  });

  it('delivers everything once when a third of the requests meet 429 with Retry-After, 503, a reset connection or a timeout', async ({ annotate }) => {
    const hospital = await server();
    const pipeline = pipelineFor(
      await destinationsFrom(
        destination('hospital', hospital.baseUrl, ['    transactions: true', '    timeoutMs: 1500', '    retry: { attempts: 4, requestAttempts: 2, baseMs: 20, maxMs: 200 }']),
      ),
    );
    const { origin, pathname } = new URL(hospital.baseUrl);
    // Which bundle meets which fault is fixed by its content, so the run is the same every time.
    const kinds = ['429', '503', 'reset', 'timeout'] as const;
    const faulted = new Set<string>();
    const injected: Record<(typeof kinds)[number], number> = { '429': 0, '503': 0, reset: 0, timeout: 0 };
    const keyOf = (body: unknown) => createHash('sha256').update(JSON.stringify(body)).digest();
    const faultFor = (body: unknown, kind: (typeof kinds)[number]): boolean => {
      const key = keyOf(body);
      const id = key.toString('hex');
      // 4 of every 12 bundles: a third.
      if (key[0] % 12 !== kinds.indexOf(kind) || faulted.has(id)) return false;
      faulted.add(id);
      injected[kind]++;
      return true;
    };
    const unavailable = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: 'overloaded' }] };
    const scope = nock(origin, { allowUnmocked: true });
    scope.persist().post(pathname, (b) => faultFor(b, '429')).reply(429, unavailable, { 'Retry-After': '0.05' });
    scope.persist().post(pathname, (b) => faultFor(b, '503')).reply(503, unavailable);
    scope.persist().post(pathname, (b) => faultFor(b, 'reset')).replyWithError({ code: 'ECONNRESET', message: 'socket hang up' });
    // A server that never answers: the client's timeout (1.5 s) ends the request.
    scope.persist().post(pathname, (b) => faultFor(b, 'timeout')).reply(() => new Promise<never>(() => {}));
    pipeline.startWorkers();

    const id = randomUUID();
    for (const r of await submitAll(pipeline, id)) await pipeline.waitForSubmission(r);

    const faults = Object.values(injected).reduce((a, b) => a + b, 0);
    await annotate(`${faults} faults on ${sample.bundles} bundles: ${JSON.stringify(injected)}`);
    for (const kind of kinds) expect(injected[kind], `${kind} faults injected`).toBeGreaterThan(0);
    expect(faults).toBeGreaterThanOrEqual(Math.floor(sample.bundles / 4));
    expect(await serverCounts(hospital.baseUrl, sample.expected)).toEqual(sample.expected);
    const counters = await pipeline.submission(id);
    expect(delivered(counters, 'hospital')).toBe(sample.bundles);
    expect(counters.destinations.hospital.deadLettered).toBe(0);
    expect((await pipeline.deadLetters.list(id)).filter((d) => d.stage === 'deliver')).toEqual([]);
  });

  it('goes on delivering to one destination while another is down, pauses the dead one, and delivers to it once it is back', async ({ annotate }) => {
    const up = await server();
    const behind = await server();
    const proxy = await SwitchableProxy.start(() => behind.port);
    cleanups.push(() => proxy.close());
    const pipeline = pipelineFor(
      await destinationsFrom([
        ...destination('hospital', up.baseUrl, ['    transactions: true']),
        ...destination('registry', `http://127.0.0.1:${proxy.port}/fhir/R4`, [
          '    transactions: true',
          '    retry: { attempts: 20, requestAttempts: 2, baseMs: 50, maxMs: 400 }',
          '    circuitBreaker: { failures: 3, openMs: 600 }',
        ]),
      ]),
    );
    pipeline.startWorkers();
    const id = randomUUID();
    const results = await submitAll(pipeline, id);
    const jobs = (await Promise.all(results.map((r) => pipeline.waitForMapping(r)))).flat();
    const hospitalJobs = jobs.filter((j) => j.destination === 'hospital');
    const registryJobs = jobs.filter((j) => j.destination === 'registry');
    expect(hospitalJobs).toHaveLength(sample.bundles);
    expect(registryJobs).toHaveLength(sample.bundles);

    // The hospital gets everything while the registry refuses every connection.
    await pipeline.waitForJobs(hospitalJobs);
    expect(await serverCounts(up.baseUrl, sample.expected)).toEqual(sample.expected);
    const registryQueue = pipeline.deliveryQueue('registry');
    const states = await Promise.all(registryJobs.map((j) => registryQueue.getJobState(j.jobId)));
    expect(states.filter((s) => s === 'completed' || s === 'failed')).toEqual([]);
    expect(pipeline.context.breaker(pipeline.context.destination('registry')).state).not.toBe('closed');
    // Paused and probed, not hammered: far fewer connections than bundles (without the breaker each bundle
    // would have cost requestAttempts connections per job attempt).
    const whileDown = proxy.refused;
    await annotate(`${whileDown} connections to the dead destination while ${sample.bundles} bundles reached the other`);
    expect(whileDown).toBeGreaterThan(0);
    expect(whileDown).toBeLessThan(sample.bundles);

    proxy.mode = 'up';
    await pipeline.waitForJobs(registryJobs);
    expect(await serverCounts(behind.baseUrl, sample.expected)).toEqual(sample.expected);
    const counters = await pipeline.submission(id);
    expect(delivered(counters, 'registry')).toBe(sample.bundles);
    expect(counters.destinations.registry.deadLettered).toBe(0);
  });

  it('authenticates with OAuth2 client credentials: token cached, refreshed after a 401', async () => {
    const valid = new Set<string>();
    const tokens = await new TestTokenServer((req, call) => {
      if (req.form.grant_type !== 'client_credentials' || req.authorization !== `Basic ${Buffer.from('trialbridge:s3cret').toString('base64')}`) {
        return { status: 401, body: { error: 'invalid_client' } };
      }
      // The first token is revoked on the FHIR server before it is used: the client must refresh on 401.
      const token = `tok-${call}`;
      if (call > 1) valid.add(`Bearer ${token}`);
      return { body: { access_token: token, token_type: 'bearer', expires_in: 3600 } };
    }).start();
    cleanups.push(() => tokens.stop());
    const hospital = await server({ authorize: (authorization) => authorization !== undefined && valid.has(authorization) });
    const pipeline = pipelineFor(
      await destinationsFrom(
        [
          '  - name: registry',
          '    kind: registry',
          `    baseUrl: ${hospital.baseUrl}`,
          '    sites: "*"',
          '    transactions: true',
          '    auth:',
          '      type: oauth2-client-credentials',
          `      tokenUrl: ${tokens.tokenUrl}`,
          '      clientId: trialbridge',
          '      clientSecret: { env: TB_TEST_SECRET }',
        ],
        { TB_TEST_SECRET: 's3cret' },
      ),
    );
    pipeline.startWorkers();
    const id = randomUUID();
    for (const r of await submitAll(pipeline, id)) await pipeline.waitForSubmission(r);
    expect(await serverCounts(hospital.baseUrl, sample.expected, { authorization: [...valid][0] })).toEqual(sample.expected);
    expect(delivered(await pipeline.submission(id), 'registry')).toBe(sample.bundles);
    // One token refused, one fetched after the 401 and cached for the rest of the run.
    expect(tokens.calls).toBe(2);
  });

  it('authenticates with SMART Backend Services: every client assertion verified (RS384) by the token endpoint', async () => {
    const { privateKey, publicKey } = await generateKeyPair('RS384', { extractable: true });
    const issued = new Set<string>();
    const verified: string[] = [];
    const tokens = await new TestTokenServer(async (req, call) => {
      if (req.form.grant_type !== 'client_credentials' || req.form.client_assertion_type !== CLIENT_ASSERTION_TYPE) {
        return { status: 400, body: { error: 'invalid_request' } };
      }
      try {
        const { payload } = await jwtVerify(req.form.client_assertion, publicKey, {
          algorithms: ['RS384'],
          issuer: 'trialbridge-ldccrt',
          subject: 'trialbridge-ldccrt',
          audience: tokens.tokenUrl,
          requiredClaims: ['exp', 'jti'],
        });
        verified.push(payload.jti!);
      } catch (err) {
        return { status: 401, body: { error: 'invalid_client', error_description: (err as Error).message } };
      }
      issued.add(`Bearer smart-${call}`);
      return { body: { access_token: `smart-${call}`, token_type: 'bearer', expires_in: 300, scope: req.form.scope } };
    }).start();
    cleanups.push(() => tokens.stop());
    const hospital = await server({ authorize: (authorization) => authorization !== undefined && issued.has(authorization) });
    const pipeline = pipelineFor(
      await destinationsFrom(
        [
          '  - name: hopital',
          '    kind: hospital',
          `    baseUrl: ${hospital.baseUrl}`,
          '    sites: [site-a]',
          '    transactions: true',
          '    auth:',
          '      type: smart-backend-services',
          `      tokenUrl: ${tokens.tokenUrl}`,
          '      clientId: trialbridge-ldccrt',
          '      alg: RS384',
          '      kid: test-key',
          '      privateKey: { file: smart-key.pem }',
          '      scope: system/*.write',
        ],
        {},
        { 'smart-key.pem': await exportPKCS8(privateKey) },
      ),
    );
    pipeline.startWorkers();
    const result = await pipeline.submitExport('site-a', SITES[0].inputs, { recorded: RECORDED });
    await pipeline.waitForSubmission(result);
    const siteA = sample.exports[0];
    const expected = { ...siteA.summary.resourcesByType, ResearchStudy: 1 };
    expect(await serverCounts(hospital.baseUrl, expected, { authorization: [...issued][0] })).toEqual(expected);
    expect(verified).toHaveLength(1);
    // Without a token the server refuses: the deliveries above really were authenticated.
    await expect(new FhirClient({ baseUrl: hospital.baseUrl }).get('Patient')).rejects.toMatchObject({ status: 401 });
  });

  it('sends a destination only the resource types it takes, references to the others made logical', async () => {
    const hospital = await server();
    const registry = await server();
    const pipeline = pipelineFor(
      await destinationsFrom([
        ...destination('hospital', hospital.baseUrl),
        ...destination('registry', registry.baseUrl, ['    resourceTypes: [Patient, ResearchSubject, Procedure, Provenance]']),
      ]),
    );
    pipeline.startWorkers();
    for (const r of await submitAll(pipeline)) await pipeline.waitForSubmission(r);
    expect(await serverCounts(hospital.baseUrl, sample.expected)).toEqual(sample.expected);
    const allowed = ['Patient', 'ResearchSubject', 'Procedure', 'Provenance'];
    const onRegistry = await serverCounts(registry.baseUrl, sample.expected);
    for (const [type, n] of Object.entries(sample.expected)) expect(onRegistry[type], type).toBe(allowed.includes(type) ? n : 0);
    // ResearchSubject.study pointed at the ResearchStudy the registry does not take: now by identifier.
    const subjects = (await new FhirClient({ baseUrl: registry.baseUrl }).get<Bundle<ResearchSubject>>('ResearchSubject?_count=5')).body!.entry!;
    for (const { resource } of subjects) {
      expect(resource!.study.reference).toBeUndefined();
      expect(resource!.study).toMatchObject({ type: 'ResearchStudy', identifier: { system: expect.any(String), value: expect.any(String) } });
      expect(resource!.individual?.reference).toMatch(/^Patient\//);
    }
  });
});
