import { describe, expect, it } from 'vitest';
import { CircuitBreaker, CircuitBreakers, CircuitOpenError } from './circuit-breaker.ts';

function clock(start = 1_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

describe('CircuitBreaker', () => {
  it('opens after N consecutive failures, half-opens after openMs with one probe, and a successful probe closes it', () => {
    const c = clock();
    const b = new CircuitBreaker('hospital', { failures: 3, openMs: 500, now: c.now });
    expect(b.state).toBe('closed');
    for (let i = 0; i < 2; i++) {
      expect(b.tryAcquire()).toBe(true);
      b.failure();
    }
    expect(b.state).toBe('closed');
    expect(b.consecutiveFailures).toBe(2);
    expect(b.tryAcquire()).toBe(true);
    b.failure();
    expect(b.state).toBe('open');
    expect(b.tryAcquire()).toBe(false);
    expect(b.retryAfterMs()).toBe(500);

    c.advance(499);
    expect(b.state).toBe('open');
    expect(b.tryAcquire()).toBe(false);
    expect(b.retryAfterMs()).toBe(1);
    c.advance(1);
    expect(b.state).toBe('half-open');
    expect(b.tryAcquire()).toBe(true); // the probe
    expect(b.tryAcquire()).toBe(false); // only one at a time
    b.success();
    expect(b.state).toBe('closed');
    expect(b.tryAcquire()).toBe(true);
    expect(b.tryAcquire()).toBe(true);
  });

  it('a success resets the count of consecutive failures', () => {
    const b = new CircuitBreaker('x', { failures: 2, openMs: 100, now: clock().now });
    b.failure();
    b.success();
    b.failure();
    expect(b.state).toBe('closed');
    b.failure();
    expect(b.state).toBe('open');
  });

  it('a failed probe opens the circuit again for openMs from the failure', () => {
    const c = clock();
    const b = new CircuitBreaker('x', { failures: 1, openMs: 100, now: c.now });
    b.failure();
    c.advance(100);
    expect(b.tryAcquire()).toBe(true);
    c.advance(30); // the probe takes a while
    b.failure();
    expect(b.state).toBe('open');
    expect(b.retryAfterMs()).toBe(100);
    c.advance(99);
    expect(b.tryAcquire()).toBe(false);
    c.advance(1);
    expect(b.tryAcquire()).toBe(true);
    b.success();
    expect(b.state).toBe('closed');
  });

  it('a late failure of a request sent before the circuit opened does not extend the open period', () => {
    const c = clock();
    const b = new CircuitBreaker('x', { failures: 1, openMs: 100, now: c.now });
    b.failure();
    c.advance(50);
    b.failure();
    expect(b.retryAfterMs()).toBe(50);
  });

  it('run() refuses without calling fn while open, and counts thrown errors (or what isFailure says) as failures', async () => {
    const c = clock();
    const b = new CircuitBreaker('dest', { failures: 2, openMs: 1000, now: c.now });
    let calls = 0;
    const fail = () => b.run(async () => { calls++; throw new Error('down'); });
    await expect(fail()).rejects.toThrow('down');
    await expect(fail()).rejects.toThrow('down');
    const refused = await b.run(async () => { calls++; return 1; }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(CircuitOpenError);
    expect((refused as CircuitOpenError).retryAfterMs).toBe(1000);
    expect((refused as CircuitOpenError).message).toContain("'dest'");
    expect(calls).toBe(2);

    c.advance(1000);
    // A resolved value can count as a failure too (e.g. a 503 response).
    await expect(b.run(async () => ({ status: 503 }), (r) => 'error' in r || r.value!.status >= 500)).resolves.toEqual({ status: 503 });
    expect(b.state).toBe('open');
    c.advance(1000);
    await expect(b.run(async () => 'ok')).resolves.toBe('ok');
    expect(b.state).toBe('closed');
  });

  it('refuses bad options', () => {
    expect(() => new CircuitBreaker('x', { failures: 0, openMs: 1 })).toThrow('failures');
    expect(() => new CircuitBreaker('x', { failures: 1, openMs: 0 })).toThrow('openMs');
  });
});

describe('CircuitBreakers', () => {
  it('keeps one breaker per destination, from its circuitBreaker settings', () => {
    const c = clock();
    const breakers = new CircuitBreakers(c.now);
    const a = { name: 'a', circuitBreaker: { failures: 1, openMs: 10 } };
    const b = { name: 'b', circuitBreaker: { failures: 5, openMs: 10 } };
    expect(breakers.for(a)).toBe(breakers.for(a));
    breakers.for(a).failure();
    breakers.for(b).failure();
    expect(breakers.for(a).state).toBe('open');
    expect(breakers.for(b).state).toBe('closed');
  });
});
