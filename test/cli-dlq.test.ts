/**
 * `trialbridge dlq list | show | replay` as a user runs them (child processes on real Redis): a destination that
 * rejects every bundle fills the dead letters; after the fix (the destination replaced), `replay --all` delivers.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadDestinations } from '../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../src/delivery/embedded-server.ts';
import { QueuePipeline } from '../src/queue/pipeline.ts';
import { mapSampleSites, RECORDED, serverCounts, SITES, type SampleSites } from './support/sample-sites.ts';

const run = promisify(execFile);
const REDIS_URL = 'redis://127.0.0.1:6379';
let sample: SampleSites;
beforeAll(async () => {
  sample = await mapSampleSites();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function destinationsFile(server: EmbeddedFhirServer): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tb-dlq-'));
  const file = join(dir, 'destinations.yaml');
  const lines = ['destinations:', '  - name: hospital', '    kind: hospital', `    baseUrl: ${server.baseUrl}`, '    sites: "*"', '    transactions: true', '    auth: { type: none }'];
  await writeFile(file, lines.join('\n') + '\n');
  return file;
}

function cli(...args: string[]) {
  return run(process.execPath, ['src/cli/main.ts', ...args], { env: { ...process.env, REDIS_URL } });
}

describe('trialbridge dlq', () => {
  // Several CLI runs, each a Node process loading the service.
  it('lists and shows dead letters without subject ids, and replays them into the fixed destination', { timeout: 180_000 }, async () => {
    const rejecting = await startEmbeddedFhirServer({ maxTransactionEntries: 3 });
    const fixed = await startEmbeddedFhirServer();
    cleanups.push(() => rejecting.close(), () => fixed.close());
    const prefix = `tb-test-${randomUUID()}`;
    const site = SITES[0];
    const siteExport = sample.exports[0];

    const first = new QueuePipeline({ connection: { host: '127.0.0.1', port: 6379 }, prefix, mappings: sample.mappings, destinations: loadDestinations(await destinationsFile(rejecting), {}), validator: sample.validator });
    first.startWorkers();
    const submitted = await first.submitExport(site.site, site.inputs, { recorded: RECORDED });
    await first.waitForSubmission(submitted);
    await first.close();

    const list = await cli('dlq', 'list', '--submission', submitted.submissionId, '--prefix', prefix);
    const lines = list.stdout.trim().split('\n');
    const deliveries = lines.filter((l) => l.includes('  deliver  '));
    expect(deliveries).toHaveLength(siteExport.bundles.length);
    expect(lines.length).toBe(siteExport.bundles.length + siteExport.summary.rejects.length);
    expect(list.stderr).toContain(`${lines.length} dead letters`);
    for (const line of deliveries) expect(line).toMatch(/^dl-[0-9a-f]{12} .* destination hospital {2}status 400 {2}replayable/);
    // Subject ids identify patients: never on the terminal.
    for (const b of siteExport.bundles) expect(list.stdout).not.toContain(b.subject);

    const handle = deliveries[0].split(' ')[0];
    const show = await cli('dlq', 'show', handle, '--prefix', prefix);
    expect(show.stdout).toMatch(new RegExp(`^id +${handle}$`, 'm'));
    expect(show.stdout).toMatch(/^status +400$/m);
    // The server's message may quote the data: the terminal shows a code, the rejects file the message.
    expect(show.stdout).toMatch(/^code +delivery_rejected$/m);
    expect(show.stdout).toMatch(/^reason +the destination rejected the bundle \(HTTP 400\)/m);
    const rejectsFile = join(await mkdtemp(join(tmpdir(), 'tb-dlq-rejects-')), 'rejects.jsonl');
    await cli('dlq', 'rejects', '--submission', submitted.submissionId, '--out', rejectsFile, '--prefix', prefix);
    const rejects = (await readFile(rejectsFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as { handle: string; fullReason: string });
    expect(rejects).toHaveLength(lines.length);
    expect(rejects.find((r) => r.handle === handle)!.fullReason).toMatch(/3/);
    await expect(cli('dlq', 'show', 'dl-000000000000', '--prefix', prefix)).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining("no dead letter 'dl-000000000000'") });

    // The fix: the hospital's server now takes the bundles. Workers on it, then replay every dead letter.
    const fixedFile = await destinationsFile(fixed);
    const second = new QueuePipeline({ connection: { host: '127.0.0.1', port: 6379 }, prefix, mappings: sample.mappings, destinations: loadDestinations(fixedFile, {}), validator: sample.validator });
    cleanups.push(async () => {
      await second.closeWorkers();
      await second.obliterate();
      await second.close();
    });
    second.startWorkers();
    const replay = await cli('dlq', 'replay', '--all', '--submission', submitted.submissionId, '-d', fixedFile, '--prefix', prefix);
    // A record without a subject id (read stage) cannot be replayed: it needs a new export.
    const readStage = lines.filter((l) => l.includes('  read  ')).length;
    expect(readStage).toBe(1);
    expect(replay.stdout).toContain(`replayed ${lines.length - readStage} dead letters as ${lines.length - readStage} new jobs; ${readStage} not replayable`);
    const queue = second.deliveryQueue('hospital');
    const replayed = (await queue.getJobs(['waiting', 'active', 'delayed', 'completed', 'prioritized'])).filter((j) => j.id!.includes('.replay-'));
    expect(replayed).toHaveLength(siteExport.bundles.length);
    await second.waitForJobs(replayed.map((j) => ({ destination: 'hospital', jobId: j.id! })));
    const expected = { ...siteExport.summary.resourcesByType, ResearchStudy: 1 };
    expect(await serverCounts(fixed.baseUrl, expected)).toEqual(expected);
  });
});
