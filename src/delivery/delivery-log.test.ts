import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SAMPLE_SITES } from '../cli/demo.ts';
import { createLogger } from '../log.ts';
import { compileMapping } from '../mapping/compile.ts';
import { loadMapping } from '../mapping/load.ts';
import { runInProcess } from '../queue/in-process.ts';
import { destinationWithDefaults } from './destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from './embedded-server.ts';

/** Each delivery logs one line of per-entry outcome counts by status class, never a subject or a value. */
let server: EmbeddedFhirServer;

beforeAll(async () => {
  server = await startEmbeddedFhirServer();
});

afterAll(async () => {
  await server?.close();
});

describe('the delivery log line', () => {
  it('one per subject, with status classes, attempts and requests; no subject key, business key or value', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
        done();
      },
    });
    const site = SAMPLE_SITES[0];
    const mapping = await compileMapping(await loadMapping(site.mapping));
    const result = await runInProcess({
      exports: [{ site: site.site, inputs: [site.input] }],
      mappings: [mapping],
      destinations: [destinationWithDefaults({ name: 'hospital', kind: 'hospital', baseUrl: server.baseUrl, transactions: true, maxEntries: 1000 })],
      validator: null,
      recorded: '2019-01-01T00:00:00Z',
      logger: createLogger({ destination: sink, level: 'info' }),
    });
    const deliveries = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'delivery');
    const delivered = result.submission.destinations.hospital.delivered ?? 0;
    expect(delivered).toBeGreaterThan(10);
    expect(deliveries).toHaveLength(delivered);
    for (const line of deliveries) {
      expect(line).toMatchObject({ destination: 'hospital', site: site.site, outcome: 'delivered', attempts: 1, requests: 1 });
      expect(Object.keys(line.entries as object)).toEqual(['2xx']);
    }
    const text = lines.join('\n');
    for (const subject of ['A001', 'A002', 'A010']) expect(text).not.toContain(subject);
  });
});
