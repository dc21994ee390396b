import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { Registry } from 'prom-client';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { MemoryPacer, paced, pacingKeys, pacingMetrics, RedisPacer, type Attempt, type Lease, type Pacer, type PacerOptions, type PacingIncident } from './pacing.ts';

// Two connections: two worker processes on one destination.
const redisA = new Redis({ host: '127.0.0.1', port: 6379 });
const redisB = new Redis({ host: '127.0.0.1', port: 6379 });
afterAll(async () => {
  await redisA.quit();
  await redisB.quit();
});

/** A clock the test moves; nothing here waits on real time. */
function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

function granted(attempt: Attempt): Lease {
  if (!attempt.granted) throw new Error(`expected a permit, got ${attempt.reason} (wait ${attempt.waitMs} ms)`);
  return attempt.lease;
}

async function take(pacer: Pacer, n: number): Promise<Lease[]> {
  const leases: Lease[] = [];
  for (let i = 0; i < n; i++) leases.push(granted(await pacer.tryAcquire()));
  return leases;
}

const THROTTLE = { kind: 'throttle', status: 429 } as const;
const SETTINGS = { decrease: 0.5, incidentMs: 10_000, recoverAfter: 3, leaseMs: 60_000 };

interface Pair {
  readonly a: Pacer;
  readonly b: Pacer;
  readonly time: ReturnType<typeof clock>;
  readonly incidents: PacingIncident[];
}

type MakePair = (options?: Partial<PacerOptions>) => Pair;

let prefix: string;
beforeEach(() => {
  prefix = `tb-test-${randomUUID()}`;
});
afterAll(async () => {
  const keys = await redisA.keys('tb-test-*:tb-pace:*');
  if (keys.length > 0) await redisA.del(...keys);
});

const redisPair: MakePair = (options = {}) => {
  const time = clock();
  const incidents: PacingIncident[] = [];
  const common: PacerOptions = { concurrency: 4, settings: SETTINGS, now: time.now, onIncident: (i) => incidents.push(i), ...options };
  return { a: new RedisPacer(redisA, prefix, 'hospital', common), b: new RedisPacer(redisB, prefix, 'hospital', common), time, incidents };
};

/** One in-memory pacer standing for both workers: the same state machine without Redis. */
const memoryPair: MakePair = (options = {}) => {
  const time = clock();
  const incidents: PacingIncident[] = [];
  const pacer = new MemoryPacer('hospital', { concurrency: 4, settings: SETTINGS, now: time.now, onIncident: (i) => incidents.push(i), ...options });
  return { a: pacer, b: pacer, time, incidents };
};

for (const [name, makePair] of [
  ['RedisPacer (two workers)', redisPair],
  ['MemoryPacer', memoryPair],
] as const) {
  describe(name, () => {
    it('shares the limit and the leases in flight between workers', async () => {
      const { a, b } = makePair();
      await take(a, 2);
      const [fromB] = await take(b, 2);
      const full = await a.tryAcquire();
      expect(full).toMatchObject({ granted: false, reason: 'limit' });
      expect(await b.tryAcquire()).toMatchObject({ granted: false, reason: 'limit' });
      expect(await a.state()).toMatchObject({ limit: 4, inFlight: 4 });
      await fromB.release({ kind: 'success' });
      expect(await b.state()).toMatchObject({ inFlight: 3 });
      granted(await a.tryAcquire());
    });

    it('halves the limit once per incident, however many 429s the incident brings', async () => {
      const { a, b, time, incidents } = makePair();
      const leases = [...(await take(a, 2)), ...(await take(b, 2))];
      for (const lease of leases) await lease.release(THROTTLE);
      expect((await a.state()).limit).toBe(2);
      expect(incidents).toEqual([{ destination: 'hospital', kind: 'throttle', status: 429, previousLimit: 4, limit: 2 }]);

      // A retry of the same burst within the window cuts nothing more.
      time.advance(9_999);
      await (await take(b, 1))[0].release(THROTTLE);
      expect((await b.state())).toMatchObject({ limit: 2, incidents: 1 });

      // After the window a 429 is a new incident; the floor is one.
      time.advance(1);
      await (await take(a, 1))[0].release({ kind: 'conflict', status: 409 });
      time.advance(10_000);
      await (await take(a, 1))[0].release(THROTTLE);
      expect(await a.state()).toMatchObject({ limit: 1, incidents: 3 });
      expect(incidents.map((i) => `${i.kind} ${i.previousLimit}->${i.limit}`)).toEqual(['throttle 4->2', 'conflict 2->1', 'throttle 1->1']);
    });

    it('grows back by one per run of successes, up to the configured concurrency', async () => {
      const { a, b, time } = makePair();
      await (await take(a, 1))[0].release(THROTTLE);
      time.advance(10_000);
      await (await take(a, 1))[0].release(THROTTLE);
      expect((await a.state()).limit).toBe(1);

      const succeed = async (pacer: Pacer, times: number) => {
        for (let i = 0; i < times; i++) await (await take(pacer, 1))[0].release({ kind: 'success' });
      };
      await succeed(a, 2);
      await succeed(b, 1); // the run counts across workers
      expect((await a.state()).limit).toBe(2);
      // A 429 inside the incident window cuts nothing but breaks the run of successes.
      await succeed(a, 2);
      await (await take(b, 1))[0].release(THROTTLE);
      await succeed(a, 2);
      expect((await a.state()).limit).toBe(2);
      await succeed(b, 1);
      expect((await a.state()).limit).toBe(3);
      await succeed(a, 3 * 5);
      expect((await a.state()).limit).toBe(4);
      // Neutral answers (a rejected resource, a network error) change nothing.
      await (await take(a, 1))[0].release({ kind: 'neutral' });
      expect(await a.state()).toMatchObject({ limit: 4, inFlight: 0 });
    });

    it('frees the permit of an expired lease (a killed worker)', async () => {
      const { a, b, time } = makePair({ concurrency: 1 });
      const lost = granted(await a.tryAcquire());
      const blocked = await b.tryAcquire();
      expect(blocked).toMatchObject({ granted: false, reason: 'limit', waitMs: 60_000 });
      time.advance(59_999);
      expect((await b.tryAcquire()).granted).toBe(false);
      time.advance(1);
      const taken = granted(await b.tryAcquire());
      // The dead worker's lease is gone: renewing it fails and its late release frees nobody else's permit.
      expect(await lost.renew()).toBe(false);
      await lost.release({ kind: 'success' });
      expect(await b.state()).toMatchObject({ inFlight: 1 });
      expect(await taken.renew()).toBe(true);
      time.advance(59_999);
      expect((await a.tryAcquire()).granted).toBe(false);
    });

    it("makes every worker wait for the server's requested time", async () => {
      const { a, b, time } = makePair();
      await (await take(a, 1))[0].release({ kind: 'throttle', status: 429, retryAfterMs: 1500 });
      expect(await b.tryAcquire()).toEqual({ granted: false, reason: 'not-before', waitMs: 1500 });
      time.advance(1000);
      expect(await b.tryAcquire()).toEqual({ granted: false, reason: 'not-before', waitMs: 500 });
      time.advance(500);
      await granted(await b.tryAcquire()).release({ kind: 'success' });
      // A shorter wait asked later does not shorten a longer one already set.
      const [first, second] = [...(await take(a, 1)), ...(await take(b, 1))];
      await first.release({ kind: 'throttle', status: 429, retryAfterMs: 5000 });
      await second.release({ kind: 'throttle', status: 429, retryAfterMs: 10 });
      expect(await a.tryAcquire()).toMatchObject({ granted: false, waitMs: 5000 });
    });

    it('a server wait longer than the incident window stretches the window', async () => {
      const { a, b, time } = makePair();
      const [first, second] = [...(await take(a, 1)), ...(await take(b, 1))];
      await first.release({ kind: 'throttle', status: 429, retryAfterMs: 30_000 });
      time.advance(29_999);
      await second.release({ kind: 'throttle', status: 429 });
      expect((await a.state()).incidents).toBe(1);
      time.advance(1);
      await (await take(b, 1))[0].release({ kind: 'throttle', status: 429 });
      expect((await a.state()).incidents).toBe(2);
    });
  });
}

describe('RedisPacer', () => {
  it('keeps a lower configured concurrency when the file changes, and starts a new destination at its concurrency', async () => {
    const time = clock();
    const wide = new RedisPacer(redisA, prefix, 'registry', { concurrency: 8, now: time.now });
    await take(wide, 3);
    const narrow = new RedisPacer(redisB, prefix, 'registry', { concurrency: 2, now: time.now });
    expect(await narrow.state()).toMatchObject({ limit: 2, inFlight: 3 });
    expect((await narrow.tryAcquire()).granted).toBe(false);
    expect(await redisA.exists(pacingKeys(prefix, 'registry').leases)).toBe(1);
  });
});

describe('paced', () => {
  it('waits out the not-before time and the limit, renews nothing it does not hold, and reports the answer', async () => {
    const time = clock();
    const pacer = new MemoryPacer('hospital', { concurrency: 1, settings: SETTINGS, now: time.now });
    await (await take(pacer, 1))[0].release({ kind: 'throttle', status: 429, retryAfterMs: 700 });
    const slept: number[] = [];
    const sleep = async (ms: number) => {
      slept.push(ms);
      time.advance(ms);
    };
    const value = await paced(pacer, async () => 'delivered', () => ({ kind: 'success' }), { sleep });
    expect(value).toBe('delivered');
    expect(slept).toEqual([700]);
    await expect(
      paced(pacer, async () => Promise.reject(new Error('429')), () => ({ kind: 'throttle', status: 429, retryAfterMs: 20_000 }), { sleep }),
    ).rejects.toThrow('429');
    expect(await pacer.state()).toMatchObject({ inFlight: 0, notBefore: time.now() + 20_000 });
  });
});

describe('pacing metrics', () => {
  it('count incidents, not retries, and show the current limit', async () => {
    const time = clock();
    const a = new RedisPacer(redisA, prefix, 'hospital', { concurrency: 4, settings: SETTINGS, now: time.now });
    const b = new RedisPacer(redisB, prefix, 'hospital', { concurrency: 4, settings: SETTINGS, now: time.now });
    const registry = new Registry();
    pacingMetrics(registry, [a]);
    // Ten 429s of one burst from two workers, retries included: one incident.
    for (let i = 0; i < 10; i++) await (await take(i % 2 ? a : b, 1))[0].release(THROTTLE);
    time.advance(10_000);
    await (await take(b, 1))[0].release(THROTTLE);
    const text = await registry.metrics();
    expect(text).toContain('trialbridge_destination_backoff_incidents_total{destination="hospital"} 2');
    expect(text).toContain('trialbridge_destination_concurrency_limit{destination="hospital"} 1');
  });
});

describe('Pacer.report', () => {
  for (const [name, makePair] of [
    ['RedisPacer', redisPair],
    ['MemoryPacer', memoryPair],
  ] as const) {
    it(`${name}: a 429 seen inside a delivery stops the other workers at once, without a lease of its own`, async () => {
      const { a, b, incidents } = makePair();
      const held = granted(await a.tryAcquire());
      expect(await b.report({ kind: 'throttle', status: 429, retryAfterMs: 2000 })).toMatchObject({ previousLimit: 4, limit: 2 });
      expect(await a.tryAcquire()).toEqual({ granted: false, reason: 'not-before', waitMs: 2000 });
      expect(await a.state()).toMatchObject({ inFlight: 1, limit: 2 });
      await held.release({ kind: 'throttle', status: 429 });
      expect(incidents).toHaveLength(1);
    });
  }
});
