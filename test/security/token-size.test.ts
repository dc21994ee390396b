/**
 * A token endpoint answering a 1 MiB access token (broken or hostile). Sent as it was, the token made every
 * request's headers too large: the FHIR server answered 431 and the worker dead-lettered each bundle as a
 * rejection of its data. The token is a credentials problem: refused when it arrives, retried as the
 * destination's failure (never a 431 from the server, never a data rejection), and the dead letter of the
 * last attempt says what was wrong with the token.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator } from '../../src/bundle/map-export.ts';
import { MAX_ACCESS_TOKEN_BYTES, MAX_TOKEN_RESPONSE_BYTES } from '../../src/delivery/auth/token-cache.ts';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';
import { TestTokenServer } from '../support/token-server.ts';

let dir: string;
let fhir: EmbeddedFhirServer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-token-size-'));
  fhir = await startEmbeddedFhirServer();
});

afterAll(async () => {
  await fhir.close();
  await rm(dir, { recursive: true, force: true });
});

async function deliverWithToken(token: () => string): Promise<{ codes: string[]; reasons: string[]; statuses: (number | undefined)[]; tokenCalls: number }> {
  const tokens = await new TestTokenServer(() => ({ body: { access_token: token(), token_type: 'bearer', expires_in: 300 } })).start();
  const file = join(dir, `${randomUUID()}.yaml`);
  await writeFile(
    file,
    [
      'destinations:',
      '  - name: hospital',
      '    kind: hospital',
      `    baseUrl: ${fhir.baseUrl}`,
      "    sites: '*'",
      '    transactions: true',
      '    retry: { attempts: 2, requestAttempts: 1, baseMs: 10, maxMs: 20 }',
      '    circuitBreaker: { failures: 1000, openMs: 1000 }',
      '    auth:',
      '      type: oauth2-client-credentials',
      `      tokenUrl: ${tokens.tokenUrl}`,
      '      clientId: trialbridge',
      '      clientSecret: { env: TB_TOKEN_SIZE_SECRET }',
      '',
    ].join('\n'),
  );
  const pipeline = new QueuePipeline({
    connection: { host: '127.0.0.1', port: 6379 },
    prefix: `{tb-token-${randomUUID()}}`,
    mappings: [await compileMapping(await loadMapping('mappings/site-a.yaml'))],
    destinations: loadDestinations(file, { TB_TOKEN_SIZE_SECRET: 'a-client-secret' }),
    validator: await defaultValidator(),
  });
  try {
    pipeline.startWorkers();
    const submitted = await pipeline.submitExport('site-a', ['examples/site-a']);
    await pipeline.waitForSubmission(submitted);
    const letters = (await pipeline.deadLetters.list(submitted.submissionId)).filter((l) => l.stage === 'deliver');
    // A delivery given up after its attempts (the destination's failure), not a rejection answered by the server.
    return { codes: letters.map((l) => (l.reason.startsWith('gave up') ? 'delivery_gave_up' : 'delivery_rejected')), reasons: letters.map((l) => l.reason), statuses: letters.map((l) => l.status), tokenCalls: tokens.calls };
  } finally {
    await pipeline.closeWorkers();
    await pipeline.obliterate();
    await pipeline.close();
    await tokens.stop();
  }
}

describe('a token endpoint answering an oversized access token', () => {
  it('1 MiB: a credentials failure, retried, never a 431 taken for a rejection of the data; the response is not read whole', async () => {
    const { codes, reasons, statuses, tokenCalls } = await deliverWithToken(() => 'x'.repeat(1024 * 1024));
    expect(codes.length).toBeGreaterThan(0);
    expect(new Set(codes)).toEqual(new Set(['delivery_gave_up']));
    expect(statuses.every((s) => s === undefined)).toBe(true);
    for (const reason of reasons) expect(reason).toMatch(new RegExp(`the response is over ${MAX_TOKEN_RESPONSE_BYTES} bytes`));
    // Asked again on the retry: a token refused is not cached.
    expect(tokenCalls).toBeGreaterThan(1);
  });

  it('20 KiB (a response of a size a token endpoint may send): refused before it goes into a header', async () => {
    const { codes, reasons, statuses } = await deliverWithToken(() => 'y'.repeat(20 * 1024));
    expect(new Set(codes)).toEqual(new Set(['delivery_gave_up']));
    expect(statuses.every((s) => s === undefined)).toBe(true);
    for (const reason of reasons) expect(reason).toMatch(new RegExp(`the access_token is ${20 * 1024} bytes, over the limit of ${MAX_ACCESS_TOKEN_BYTES}`));
  });
});
