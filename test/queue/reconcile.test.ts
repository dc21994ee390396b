/**
 * Reconcile and repair, end to end: the three sample sites delivered through the queue (read back after each
 * delivery, `verify: all`) to the embedded server, resources deleted on the server behind trialbridge's back,
 * `trialbridge reconcile` (a child process) lists exactly them, `--repair --wait` restores them through the
 * workers of this process, and a second reconcile is clean.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../src/delivery/client.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { reconcile } from '../../src/delivery/reconcile.ts';
import { findOnServer, identifierKey, type DeliveredIdentifier } from '../../src/delivery/verify.ts';
import { isRedisReachable, QueuePipeline } from '../../src/queue/pipeline.ts';
import type { SubjectDelivery } from '../../src/queue/delivered.ts';
import { escapeSearchValue } from '../../src/mapping/identity.ts';
import { destinationsFrom, mapSampleSites, RECORDED, SITES, type SampleSites } from '../support/sample-sites.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const STUDY = 'LDCCRT-HCC-P2';
const DESTINATION = 'registry';

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** The CLI as a child process, so that this process's workers can deliver what it queues. */
function trialbridge(args: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['src/cli/main.ts', ...args], { env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:6379' } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const redisUp = await isRedisReachable(REDIS);
let sample: SampleSites;
let server: EmbeddedFhirServer;
let client: FhirClient;
let pipeline: QueuePipeline;
let prefix: string;
let dir: string;
let config: string;
let delivered: SubjectDelivery[];

/** One identifier of a given type from a subject of a site, and that subject. */
function pick(site: string, type: string): { delivery: SubjectDelivery; id: DeliveredIdentifier } {
  const delivery = delivered.find((d) => d.site === site && d.identifiers.some((i) => i.type === type))!;
  return { delivery, id: delivery.identifiers.find((i) => i.type === type)! };
}

/** Deletes the resource holding a business identifier, as a server's administrator (or a lost disk) would. */
async function deleteOnServer(id: DeliveredIdentifier): Promise<void> {
  const found = await client.get<Bundle>(`${id.type}?${id.param}=${encodeURIComponent(escapeSearchValue(id.system))}|${encodeURIComponent(escapeSearchValue(id.value))}`);
  const matches = found.body?.entry ?? [];
  expect(matches).toHaveLength(1);
  await client.request('DELETE', `${id.type}/${matches[0].resource!.id}`);
}

beforeAll(async () => {
  if (!redisUp) return;
  sample = await mapSampleSites();
  server = await startEmbeddedFhirServer();
  client = new FhirClient({ baseUrl: server.baseUrl });
  dir = await mkdtemp(join(tmpdir(), 'tb-reconcile-'));
  const lines = ['destinations:', `  - name: ${DESTINATION}`, '    kind: registry', `    baseUrl: ${server.baseUrl}`, '    sites: "*"', '    verify: all', '    auth: { type: none }'];
  config = join(dir, 'destinations.yaml');
  await writeFile(config, lines.join('\n') + '\n');
  const destinations = await destinationsFrom(lines.slice(1));
  prefix = `{tb-reconcile-${randomUUID().slice(0, 8)}}`;
  pipeline = new QueuePipeline({ connection: REDIS, prefix, mappings: sample.mappings, destinations, validator: sample.validator });
  pipeline.startWorkers();
  for (const s of SITES) await pipeline.waitForSubmission(await pipeline.submitExport(s.site, [...s.inputs], { recorded: RECORDED }));
  delivered = await pipeline.delivered.list(DESTINATION, STUDY);
}, 180_000);

afterAll(async () => {
  if (!redisUp) return;
  await pipeline?.closeWorkers();
  await pipeline?.obliterate();
  await pipeline?.close();
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe.runIf(redisUp)('reconcile', () => {
  it('records every delivered subject with the business identifier of each entry it sent', async () => {
    expect(delivered).toHaveLength(sample.bundles);
    const sent = sample.exports.flatMap((e) => e.bundles).reduce((n, b) => n + (b.bundle.entry ?? []).length, 0);
    expect(delivered.reduce((n, d) => n + d.identifiers.length, 0)).toBe(sent);
    const counters = await pipeline.submission(delivered[0].submissionId);
    expect(counters.destinations[DESTINATION].delivered).toBeGreaterThan(0);
    // Every one of them is on the server (the read-back after each delivery said so, and so does a search now).
    const all = delivered.flatMap((d) => d.identifiers);
    expect((await findOnServer(client, all)).missing).toEqual([]);
  });

  it('lists exactly the resources deleted on the server, repairs them, and is clean afterwards', async () => {
    const deleted = [pick('site-a', 'Patient'), pick('site-b', 'AdverseEvent'), pick('site-c', 'MedicationAdministration')];
    for (const { id } of deleted) await deleteOnServer(id);

    const found = await reconcile(client, delivered);
    const want = deleted.map(({ delivery, id }) => `${delivery.site} ${delivery.subject} ${identifierKey(id)}`).sort();
    expect(found.differences.flatMap((d) => d.missing.map((id) => `${d.site} ${d.subject} ${identifierKey(id)}`)).sort()).toEqual(want);
    expect(found.differences.every((d) => d.duplicated.length === 0)).toBe(true);

    const listed = await trialbridge(['reconcile', '--destination', DESTINATION, '--config', config, '--study', STUDY, '--prefix', prefix]);
    expect(listed.stderr).toContain('3 subjects differ (3 missing, 0 duplicated)');
    expect(listed.code).toBe(1);
    const rows = listed.stdout.trim().split('\n').sort();
    expect(rows).toEqual(deleted.map(({ delivery, id }) => ['missing', delivery.site, delivery.subject, id.type, `${id.system}|${id.value}`].join('\t')).sort());

    // The originals' finished jobs are still retained (they would deduplicate a re-submission): repair bypasses them.
    const repaired = await trialbridge(['reconcile', '--destination', DESTINATION, '--config', config, '--study', STUDY, '--prefix', prefix, '--repair', '--wait']);
    expect(repaired.stderr).toContain('repair: queued 3 subjects again');
    expect(repaired.stderr).toMatch(/after repair:\n.*no differences/);
    expect(repaired.code).toBe(0);
    expect((await findOnServer(client, deleted.map((d) => d.id))).missing).toEqual([]);

    const again = await trialbridge(['reconcile', '--destination', DESTINATION, '--config', config, '--study', STUDY, '--prefix', prefix]);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe('');
    expect(again.stderr).toContain('no differences');

    // The repair counted into the original submissions like a replay: queued again, delivered again.
    for (const submissionId of new Set(deleted.map((d) => d.delivery.submissionId))) {
      const c = (await pipeline.submission(submissionId)).destinations[DESTINATION];
      expect(c.delivered + c.deadLettered).toBe(c.deliveryQueued);
      expect(c.replayed).toBe(deleted.filter((d) => d.delivery.submissionId === submissionId).length);
    }
  }, 120_000);

  it('knows no delivery of another study; refuses bad options with exit code 2', async () => {
    const other = await trialbridge(['reconcile', '--destination', DESTINATION, '--config', config, '--study', 'NO-SUCH-STUDY', '--prefix', prefix]);
    expect(other.code).toBe(0);
    expect(other.stderr).toContain('no delivery of study NO-SUCH-STUDY');
    const unknown = await trialbridge(['reconcile', '--destination', 'nowhere', '--config', config, '--study', STUDY, '--prefix', prefix]);
    expect([unknown.code, unknown.stderr.trim()]).toEqual([2, `reconcile: no destination named 'nowhere' in ${config}`]);
    const waitAlone = await trialbridge(['reconcile', '--destination', DESTINATION, '--config', config, '--study', STUDY, '--prefix', prefix, '--wait']);
    expect([waitAlone.code, waitAlone.stderr.trim()]).toEqual([2, 'reconcile: --wait goes with --repair']);
  }, 60_000);
});
