import type { SourceRecord } from '../../src/source/record.ts';
import { describe, expect, it } from 'vitest';
import { DeliveryRetryableError } from '../../src/delivery/deliver.ts';
import type { Destination } from '../../src/delivery/destinations.ts';
import { canonicalJson, deliveryJobId, mappingJobId, recordsHash, replayJobId } from '../../src/queue/job-ids.ts';
import { queueNames } from '../../src/queue/names.ts';
import { deliveryBackoff } from '../../src/queue/stages.ts';

const record = (row: number, fields: Record<string, string>): SourceRecord => ({ site: 's', file: 'f.csv', row, type: 'T', subject: 'A:1', key: `k${row}`, fields });

describe('job ids', () => {
  it('are deterministic, order-independent over records and free of ":"', () => {
    const a = [record(2, { x: '1', y: '2' }), record(3, { z: '3' })];
    const b = [record(3, { z: '3' }), record(2, { y: '2', x: '1' })];
    expect(recordsHash(a)).toBe(recordsHash(b));
    expect(recordsHash(a)).not.toBe(recordsHash([record(2, { x: '1', y: '2' }), record(3, { z: '4' })]));
    const id = mappingJobId('site:a', 'A:1', '1.0.0', recordsHash(a));
    expect(id).toBe(mappingJobId('site:a', 'A:1', '1.0.0', recordsHash(b)));
    expect(id).not.toContain(':');
    expect(id.split('.')).toHaveLength(5);
    expect(mappingJobId('site-a', 'A1', '1.0.1', recordsHash(a))).not.toBe(mappingJobId('site-a', 'A1', '1.0.0', recordsHash(a)));
    const bundle = { resourceType: 'Bundle' as const, type: 'transaction' as const, entry: [] };
    expect(deliveryJobId('dest', 'site-a', 'A:1', bundle)).toBe(deliveryJobId('dest', 'site-a', 'A:1', { ...bundle }));
    expect(deliveryJobId('dest', 'site-a', 'A:1', bundle)).not.toContain(':');
    expect(replayJobId(id, 'x:y')).not.toContain(':');
    expect(canonicalJson({ b: 1, a: [{ d: 1, c: 2 }] })).toBe('{"a":[{"c":2,"d":1}],"b":1}');
  });

  it('queue names take a hash-tag prefix and refuse ":" in it', () => {
    const names = queueNames('{tb}');
    expect(names.mapping).not.toContain(':');
    expect(names.delivery('sponsor:edc')).not.toContain(':');
    expect(names.submissionKey('id').startsWith('{tb}:')).toBe(true);
    expect(() => queueNames('a:b')).toThrow(/prefix/);
  });
});

describe('delivery backoff', () => {
  const destination = { retry: { attempts: 5, baseMs: 100, maxMs: 1000 } } as Destination;
  it('honours the Retry-After a retryable error carries', () => {
    const error = new DeliveryRetryableError('503', { attempts: 2, status: 503, retryAfterMs: 180_000, cause: undefined });
    expect(deliveryBackoff(destination, 1, error)).toBe(180_000);
  });
  it('is exponential with jitter, capped at maxMs', () => {
    expect(deliveryBackoff(destination, 1, new Error('x'), () => 1)).toBe(100);
    expect(deliveryBackoff(destination, 3, new Error('x'), () => 1)).toBe(400);
    expect(deliveryBackoff(destination, 3, new Error('x'), () => 0)).toBe(200);
    expect(deliveryBackoff(destination, 10, new Error('x'), () => 1)).toBe(1000);
  });
});
