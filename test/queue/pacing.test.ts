import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { pacingMetrics, type PacingIncident } from '../../src/delivery/pacing.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };

/**
 * A front for the FHIR server that answers the first `throttled` POSTs 429 (Retry-After: 1) without passing them
 * on, holds every other POST's answer a little (a server with some latency, so that deliveries overlap), and
 * records the most POSTs it had in flight at once.
 */
async function throttlingFront(target: string, throttled: number): Promise<{ url: string; stats: { throttled: number; inFlight: number; maxInFlight: number; forwarded: number }; close: () => Promise<void> }> {
  const stats = { throttled: 0, inFlight: 0, maxInFlight: 0, forwarded: 0 };
  const server: Server = createServer(async (req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (req.method === 'POST' && stats.throttled < throttled) {
      stats.throttled++;
      res.writeHead(429, { 'Content-Type': 'application/fhir+json', 'Retry-After': '1' });
      res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled', diagnostics: 'Too Many Requests' }] }));
      return;
    }
    const post = req.method === 'POST';
    if (post) {
      stats.inFlight++;
      stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
      stats.forwarded++;
    }
    try {
      const upstream = await fetch(`${target}${req.url!.replace(/^\/fhir/, '')}`, {
        method: req.method,
        headers: { 'content-type': req.headers['content-type'] ?? 'application/fhir+json', accept: 'application/fhir+json' },
        ...(post || req.method === 'PUT' ? { body: Buffer.concat(chunks) } : {}),
      });
      const body = Buffer.from(await upstream.arrayBuffer());
      // Latency of a real server: without the shared limit, two workers with concurrency 2 each overlap 4 deep.
      if (post) await new Promise((resolve) => setTimeout(resolve, 40));
      res.writeHead(upstream.status, { 'Content-Type': upstream.headers.get('content-type') ?? 'application/fhir+json' });
      res.end(body);
    } finally {
      if (post) stats.inFlight--;
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`,
    stats,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('pacing of the BullMQ delivery workers', () => {
  let dir: string;
  let hospital: EmbeddedFhirServer;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trialbridge-pacing-'));
    hospital = await startEmbeddedFhirServer();
  });
  afterAll(async () => {
    await hospital.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Site A through two worker pipelines to the throttling front; resolves what the test reads. */
  async function deliverThrough(throttled: number, requestAttempts: number, check: (run: { counters: Awaited<ReturnType<QueuePipeline['submission']>>; incidents: PacingIncident[]; stats: { throttled: number; maxInFlight: number }; workers: QueuePipeline[]; destinations: ReturnType<typeof loadDestinations> }) => Promise<void>): Promise<void> {
    const front = await throttlingFront(hospital.baseUrl, throttled);
    const file = join(dir, 'destinations.yaml');
    await writeFile(
      file,
      [
        'destinations:',
        '  - name: hospital',
        '    kind: hospital',
        `    baseUrl: ${front.url}`,
        '    sites: [site-a]',
        '    server: hapi',
        '    concurrency: 2',
        `    retry: { attempts: 8, requestAttempts: ${requestAttempts}, baseMs: 10, maxMs: 2000 }`,
        '    circuitBreaker: { failures: 50, openMs: 1000 }',
        '    auth: { type: none }',
      ].join('\n') + '\n',
    );
    const destinations = loadDestinations(file, {});
    const mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
    const validator = await defaultValidator();
    const prefix = `tb-test-${randomUUID()}`;
    const incidents: PacingIncident[] = [];
    // Two pipelines on one prefix: two worker processes, each running 2 delivery jobs at once.
    const workers = [0, 1].map(() => new QueuePipeline({ connection: REDIS, prefix, mappings: [mapping], destinations, validator, onBackoff: (i) => incidents.push(i) }));
    try {
      for (const w of workers) w.startWorkers();
      const submitted = await workers[0].submitExport('site-a', ['examples/site-a'], { recorded: '2019-01-01T00:00:00Z' });
      await workers[0].waitForSubmission(submitted);
      const counters = await workers[0].submission(submitted.submissionId);
      await check({ counters, incidents, stats: front.stats, workers, destinations });
    } finally {
      for (const w of workers) await w.closeWorkers();
      await workers[0].obliterate();
      for (const w of workers) await w.close();
      await front.close();
    }
  }

  it('two workers share one concurrency limit, back off once for a burst of 429s, and deliver everything', async () => {
    await deliverThrough(3, 1, async ({ counters, incidents, stats, workers, destinations }) => {
      const front = { stats };
      expect(counters.destinations.hospital).toMatchObject({ delivered: counters.mapped, deadLettered: 0 });
      expect(counters.mapped).toBeGreaterThan(10);

      expect(front.stats.throttled).toBe(3);
      expect(front.stats.maxInFlight).toBeLessThanOrEqual(2);
      expect(front.stats.maxInFlight).toBeGreaterThan(0);
      // Three 429s, one incident: one log line in one of the two processes, one count.
      expect(incidents).toHaveLength(1);
      expect(incidents[0]).toMatchObject({ destination: 'hospital', kind: 'throttle', status: 429, previousLimit: 2, limit: 1, retryAfterMs: 1000 });
      const registry = new Registry();
      pacingMetrics(registry, [workers[1].context.pacer(destinations[0])]);
      expect(await registry.metrics()).toContain('trialbridge_destination_backoff_incidents_total{destination="hospital"} 1');
      // Every lease was given back.
      expect(await workers[1].context.pacer(destinations[0]).state()).toMatchObject({ inFlight: 0, incidents: 1 });
    });
  });

  it('a 429 that a delivery retries itself, and then gets through, still backs the destination off', async () => {
    await deliverThrough(1, 3, async ({ counters, incidents, stats, workers, destinations }) => {
      expect(counters.destinations.hospital).toMatchObject({ delivered: counters.mapped, deadLettered: 0 });
      expect(stats.throttled).toBe(1);
      // No job failed (the delivery's own retry went through), yet the pacer heard of the 429 while it ran.
      expect(incidents).toHaveLength(1);
      expect(incidents[0]).toMatchObject({ destination: 'hospital', kind: 'throttle', status: 429, previousLimit: 2, limit: 1, retryAfterMs: 1000 });
      expect(await workers[0].context.pacer(destinations[0]).state()).toMatchObject({ inFlight: 0, incidents: 1 });
    });
  });
});
