/**
 * Dead letters as an attacker fills them: one subject whose rows all carry an unknown local code, mapped by
 * the queue worker. Each row is a dead letter; what they cost in Redis must grow with the rows rejected, not
 * with rows × the subject's size (every dead letter once carried a copy of every record of its subject: a
 * 42 KB upload added 76 MB to Redis, 82 KB added 302 MB). Every key holding them expires, and `dlq purge`
 * empties them by submission, by age or all, leaving an audit line.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDestinations } from '../../src/delivery/destinations.ts';
import { compileMapping, type CompiledMapping } from '../../src/mapping/compile.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import { QueuePipeline } from '../../src/queue/pipeline.ts';

const REDIS = { host: '127.0.0.1', port: 6379 };
const run = promisify(execFile);
const HEADER = 'row_id,subject_id,record_type,start_date,end_date,item_code,item_text,value,unit,frequency,fractions,grade,serious,suspect,relatedness,outcome,sex,birth_date,pvi,visit';

let mapping: CompiledMapping;
let dir: string;
let destinations: string;
const redis = new Redis(REDIS);

beforeAll(async () => {
  mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
  dir = await mkdtemp(join(tmpdir(), 'tb-hostile-dl-'));
  destinations = join(dir, 'destinations.yaml');
  // Never called: every record of the subject is rejected, so nothing is delivered.
  await writeFile(destinations, ['destinations:', '  - name: hospital', '    kind: hospital', '    baseUrl: http://127.0.0.1:9/fhir', "    sites: '*'", '    auth: { type: none }', ''].join('\n'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await redis.quit();
});

/** One subject, `rows` adverse events with a local code the mapping does not know. */
async function badExport(rows: number): Promise<string> {
  const lines = [HEADER];
  for (let i = 1; i <= rows; i++) lines.push(`R${String(i).padStart(5, '0')},A001,AE,23/02/2013,01/03/2013,ZZZ${i % 7},unknown term,,,,,1,N,5FU,UNLIKELY,RECOVERED,,,,`);
  const exportDir = await mkdtemp(join(dir, `export-${rows}-`));
  const file = join(exportDir, 'export.csv');
  await writeFile(file, lines.join('\n') + '\n');
  return file;
}

async function keysOf(prefix: string, pattern: string): Promise<string[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:${pattern}`, 'COUNT', '1000');
    found.push(...keys);
    cursor = next;
  } while (cursor !== '0');
  return found;
}

async function bytesOf(keys: readonly string[]): Promise<number> {
  let total = 0;
  for (const key of keys) total += Number((await redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')) ?? 0);
  return total;
}

interface Filled {
  readonly prefix: string;
  readonly submissionId: string;
  readonly fileBytes: number;
  readonly deadLetters: number;
  /** Redis bytes of every dead-letter key (entries, payloads, indexes). */
  readonly bytes: number;
  readonly keys: string[];
}

/** Submits `rows` bad rows of one subject, lets the mapping worker dead-letter them, measures what Redis holds. */
async function fill(rows: number, prefix = `{tb-dl-${randomUUID()}}`): Promise<Filled> {
  const pipeline = new QueuePipeline({ connection: REDIS, prefix, mappings: [mapping], destinations: loadDestinations(destinations, {}), validator: null });
  try {
    pipeline.startWorkers();
    const file = await badExport(rows);
    const submitted = await pipeline.submitExport('site-a', [file]);
    await pipeline.waitForSubmission(submitted);
    const letters = await pipeline.deadLetters.list(submitted.submissionId);
    const keys = await keysOf(prefix, 'tb-dead*');
    return { prefix, submissionId: submitted.submissionId, fileBytes: (await readFile(file)).length, deadLetters: letters.length, bytes: await bytesOf(keys), keys };
  } finally {
    await pipeline.close();
  }
}

async function cleanup(prefix: string): Promise<void> {
  const keys = await keysOf(prefix, '*');
  if (keys.length > 0) await redis.del(...keys);
}

describe('dead letters of one subject with hundreds of bad rows', () => {
  it('take Redis memory linear in the rows rejected, and every key expires', async () => {
    const small = await fill(400);
    const large = await fill(800);
    try {
      expect(small.deadLetters).toBe(400);
      expect(large.deadLetters).toBe(800);
      const perSmall = small.bytes / small.deadLetters;
      const perLarge = large.bytes / large.deadLetters;
      console.info(
        `dead letters: 400 rows (${small.fileBytes} B export) → ${(small.bytes / 1024 ** 2).toFixed(2)} MiB, ${perSmall.toFixed(0)} B each; ` +
          `800 rows (${large.fileBytes} B) → ${(large.bytes / 1024 ** 2).toFixed(2)} MiB, ${perLarge.toFixed(0)} B each`,
      );
      // Linear: twice the rows, about twice the bytes (quadratic growth made it four times).
      expect(large.bytes / small.bytes).toBeLessThan(2.6);
      // A dead letter costs a few hundred bytes beside one copy of the subject's records, not a copy each.
      expect(large.bytes).toBeLessThan(20 * large.fileBytes);
      for (const key of [...small.keys, ...large.keys]) expect(await redis.ttl(key), key).toBeGreaterThan(0);
    } finally {
      await cleanup(small.prefix);
      await cleanup(large.prefix);
    }
  });
});

describe('trialbridge dlq purge', () => {
  const cli = (...args: string[]) => run(process.execPath, ['src/cli/main.ts', 'dlq', ...args], { env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:6379' } });

  // Five CLI runs, each a Node process loading the service.
  it('removes dead letters and their payloads by submission, by age or all, each with an audit line', { timeout: 180_000 }, async () => {
    const prefix = `{tb-dl-${randomUUID()}}`;
    const first = await fill(5, prefix);
    const second = await fill(7, prefix);
    const auditLog = join(dir, `audit-${randomUUID()}.log`);
    try {
      expect(first.keys.length).toBeGreaterThan(5);
      // Nothing is a day old yet.
      expect((await cli('purge', '--older-than', '1', '--prefix', prefix, '--audit-log', auditLog)).stdout).toMatch(/^purged 0 dead letters$/m);
      expect((await cli('purge', '--submission', first.submissionId, '--prefix', prefix, '--audit-log', auditLog)).stdout).toMatch(/^purged 5 dead letters$/m);
      const left = await keysOf(prefix, 'tb-dead*');
      // The first submission's entries, payload and index are gone; the second's are all there.
      expect(left.sort()).toEqual(second.keys.filter((k) => !first.keys.includes(k)).sort());
      await expect(cli('purge', '--prefix', prefix)).rejects.toMatchObject({ stderr: expect.stringMatching(/--older-than DAYS and\/or --submission ID, or --all/) });
      expect((await cli('purge', '--all', '--prefix', prefix, '--audit-log', auditLog)).stdout).toMatch(/^purged 7 dead letters$/m);
      expect(await keysOf(prefix, 'tb-dead*')).toEqual([]);
      const audit = (await readFile(auditLog, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(audit).toEqual([
        expect.objectContaining({ event: 'dead-letters.purged', purged: 0, createdBefore: expect.any(String) }),
        expect.objectContaining({ event: 'dead-letters.purged', purged: 5, submission: first.submissionId }),
        expect.objectContaining({ event: 'dead-letters.purged', purged: 7, all: true }),
      ]);
    } finally {
      await cleanup(prefix);
    }
  });
});
