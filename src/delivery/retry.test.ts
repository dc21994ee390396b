import { describe, expect, it } from 'vitest';
import { classify, classifyStatus, parseRetryAfter, RetryPolicy } from './retry.ts';

const errorWith = (props: Record<string, unknown>, message = 'boom'): Error => Object.assign(new Error(message), props);

describe('classify', () => {
  it('classifies statuses: 2xx ok, redirects permanent (never followed), 408/409/429/5xx retry, other 4xx permanent', () => {
    for (const s of [200, 201, 204]) expect(classifyStatus(s)).toBe('ok');
    for (const s of [301, 302, 304, 307, 308]) expect(classifyStatus(s)).toBe('permanent');
    for (const s of [408, 409, 429, 500, 502, 503, 504]) expect(classifyStatus(s)).toBe('retry');
    for (const s of [400, 401, 403, 404, 412, 422, 501]) expect(classifyStatus(s)).toBe('permanent');
    expect(classify(new Response(null, { status: 503 }))).toBe('retry');
    expect(classify(new Response('{}', { status: 422 }))).toBe('permanent');
    expect(classify(new Response('{}', { status: 201 }))).toBe('ok');
  });

  it('retries network errors and timeouts, through the cause chain of fetch', () => {
    expect(classify(errorWith({ code: 'ECONNRESET' }))).toBe('retry');
    expect(classify(errorWith({ code: 'ECONNREFUSED' }))).toBe('retry');
    expect(classify(new Error('socket hang up'))).toBe('retry');
    expect(classify(new TypeError('fetch failed', { cause: errorWith({ code: 'UND_ERR_SOCKET' }) }))).toBe('retry');
    expect(classify(new DOMException('The operation was aborted due to timeout', 'TimeoutError'))).toBe('retry');
    expect(classify(new DOMException('This operation was aborted', 'AbortError'))).toBe('retry');
    expect(classify(new TypeError('Invalid URL'))).toBe('permanent');
    expect(classify(errorWith({ status: 503 }))).toBe('retry');
  });
});

describe('RetryPolicy', () => {
  it('backs off exponentially with full jitter up to the cap', () => {
    const top = new RetryPolicy({ baseDelayMs: 100, maxDelayMs: 1000, random: () => 0.999999 });
    expect([1, 2, 3, 4, 5, 6].map((a) => top.delayFor(a))).toEqual([99, 199, 399, 799, 999, 999]);
    const bottom = new RetryPolicy({ baseDelayMs: 100, maxDelayMs: 1000, random: () => 0 });
    expect(bottom.delayFor(3)).toBe(0);
    const half = new RetryPolicy({ baseDelayMs: 100, random: () => 0.5 });
    expect(half.delayFor(2)).toBe(100);
  });

  it('never waits less than Retry-After, in seconds or as an HTTP date', () => {
    const policy = new RetryPolicy({ baseDelayMs: 10, maxDelayMs: 10, random: () => 0.5 });
    expect(policy.delayFor(1, '3')).toBe(3000);
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(policy.delayFor(1, 'Wed, 01 Jan 2025 00:00:07 GMT', now)).toBe(7000);
    expect(policy.delayFor(1, 'Tue, 31 Dec 2024 23:00:00 GMT', now)).toBe(5);
    expect(policy.delayFor(1, 'soon')).toBe(5);
    expect(parseRetryAfter('0')).toBe(0);
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });

  it('allows maxAttempts attempts', () => {
    const policy = new RetryPolicy({ maxAttempts: 3 });
    expect([1, 2, 3].map((a) => policy.canRetry(a))).toEqual([true, true, false]);
    expect(() => new RetryPolicy({ maxAttempts: 0 })).toThrow(RangeError);
  });
});
