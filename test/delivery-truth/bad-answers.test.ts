/**
 * Issue 11, acceptance: destinations whose answers are not a FHIR success — a 307 to another host, a 200 HTML
 * login page, a 200 transaction-response without entries or with fewer than sent, a 600 MB answer — beside a
 * healthy one, all fed by one `trialbridge worker` process from exports submitted through the API. Each bad
 * answer is given once to every request (the first one, writing the trial-wide ResearchStudy, fails) and once to
 * the subjects' bundles only.
 *
 * Nothing is counted delivered at a bad destination (each subject is dead-lettered with a reason), the
 * bearer token never reaches the host a redirect points at, the 600 MB answer is cut off (never read whole),
 * and the worker stays up: it delivers every subject to the healthy destination, also an export submitted
 * after the bad answers.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, ServerDouble, type AnswerBehaviour } from '../support/server-double.ts';
import { until } from '../support/worker-process.ts';
import { expectExact, expectHeldExactly, Rig, type Submission } from './rig.ts';

const TOKEN = 'double-bearer-token-7f3a';
const BAD: Record<string, AnswerBehaviour> = {
  redirect: { kind: 'redirect' },
  html: { kind: 'html' },
  empty: { kind: 'short', entries: 0 },
  short: { kind: 'short', missing: 1 },
  oversized: { kind: 'oversized', bytes: 600 * MiB },
};
const HEALTHY = 'healthy';

let rig: Rig;
const doubles = new Map<string, ServerDouble>();

/** Site A's export cut down to the given subjects (the point needs few bundles, each bad answer costs a request). */
async function siteAExport(dir: string, subjects: readonly string[]): Promise<string> {
  const lines = (await readFile('examples/site-a/export.csv', 'utf8')).split('\n');
  const kept = lines.filter((line, i) => i === 0 || subjects.includes(line.split(',')[1]));
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'export.csv'), kept.join('\n') + '\n');
  return dir;
}

beforeAll(async () => {
  doubles.set(HEALTHY, await ServerDouble.start());
  // Each bad answer twice: to every request (the trial-wide ResearchStudy, written first, is refused), and only to
  // subjects' bundles (more than one entry: the ResearchStudy is stored, the subjects' transactions are not).
  for (const [name, answer] of Object.entries(BAD)) {
    doubles.set(name, await ServerDouble.start({ answer }));
    doubles.set(`${name}-subjects`, await ServerDouble.start({ answer, answerOnly: ({ entries }) => entries > 1 }));
  }
  const bearer = ['    auth: { type: bearer, token: { file: token.txt } }'];
  rig = await Rig.start(
    [...doubles].map(([name, double]) => ({ name, double, lines: [...bearer, '    retry: { attempts: 3, requestAttempts: 2, baseMs: 20, maxMs: 100 }'] })),
    { files: { 'token.txt': TOKEN } },
  );
}, 240_000);

afterAll(async () => {
  await rig?.close();
  for (const d of doubles.values()) await d.close();
});

describe('destinations answering with redirects, HTML, short or oversized answers (serve + worker)', () => {
  it('counts nothing delivered there, keeps the token from the redirect target, survives 600 MB, and keeps delivering to the healthy destination', async ({ annotate }) => {
    const first: Submission = await rig.submit('site-a', [await siteAExport(join(rig.dir, 'first'), ['A001', 'A003', 'A004'])]);
    expect(first.expected.bundles).toHaveLength(3);
    const bad = Object.keys(BAD).flatMap((name) => [name, `${name}-subjects`]);
    for (const name of [HEALTHY, ...bad]) await rig.settled([first], name);

    const healthy = await expectExact(rig, [first], HEALTHY);
    expect(healthy.delivered).toBe(3);
    const lines: string[] = [`healthy: delivered ${healthy.delivered}, ${healthy.resources} resources held`];
    for (const name of bad) {
      const run = await expectExact(rig, [first], name);
      expect(run.delivered, `${name}: subjects counted delivered`).toBe(0);
      expect(run.deadLettered).toBe(3);
      for (const l of run.letters) expect(l.reason, `${name}: the dead letter's reason`).not.toBe('');
      expect((await doubles.get(name)!.resources(['Patient', 'Observation'])).length).toBe(0);
      lines.push(`${name}: delivered 0, dead-lettered ${run.deadLettered} (${[...new Set(run.letters.map((l) => `HTTP ${l.status ?? '-'}: ${l.reason.slice(0, 120)}`))].join(' | ')})`);
    }

    // The redirect was not followed, or if it was, without the token.
    const target = [...doubles.get('redirect')!.redirectTarget.requests, ...doubles.get('redirect-subjects')!.redirectTarget.requests];
    for (const r of target) expect(r.headers.authorization, 'Authorization sent to the redirect target').toBeUndefined();
    for (const name of ['oversized', 'oversized-subjects']) {
      const big = doubles.get(name)!.stats;
      expect(big.answers).toBeGreaterThan(0);
      await until(10_000, `the double sees every oversized answer cut off by the client (${name})`, () => big.oversizedAbandoned === big.answers, 20);
      expect(big.oversizedBytesSent).toBeLessThan(big.answers * 600 * MiB);
      lines.push(`${name}: ${big.answers} answers of 600 MiB begun, all cut off by the client after ${(big.oversizedBytesSent / MiB).toFixed(1)} MiB in all`);
    }
    lines.push(`redirect targets got ${target.length} requests`);

    // The worker is still up and delivers a later export to the healthy destination.
    expect(rig.worker.alive).toBe(true);
    expect(rig.worker.output.join('\n')).not.toMatch(/ERR_STRING_TOO_LONG|heap out of memory/);
    const second = await rig.submit('site-a', [await siteAExport(join(rig.dir, 'second'), ['A002', 'A005'])]);
    await rig.settled([second], HEALTHY);
    expect((await rig.status(second)).destinations[HEALTHY]).toMatchObject({ delivered: 2, deadLettered: 0 });
    const all = [...first.expected.bundles, ...second.expected.bundles].map((b) => b.bundle);
    const held = await expectHeldExactly(doubles.get(HEALTHY)!, [first, second], all, HEALTHY);
    expect(rig.worker.alive).toBe(true);
    lines.push(`after the bad answers the worker delivered 2 more subjects to the healthy destination: ${held} resources held`);
    await annotate(lines.join('\n'));
  }, 300_000);
});
