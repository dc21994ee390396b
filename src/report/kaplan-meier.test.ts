import { describe, expect, it } from 'vitest';
import { daysToMonths, kaplanMeier } from './kaplan-meier.ts';

const ev = (time: number) => ({ time, event: true });
const cens = (time: number) => ({ time, event: false });

describe('kaplanMeier', () => {
  it('handles an empty input', () => {
    expect(kaplanMeier([])).toEqual({ n: 0, events: 0, medianDays: null, medianMonths: null, curve: [{ time: 0, survival: 1 }] });
  });

  it('without censoring the median is the first time S drops to 0.5 or below', () => {
    // S: 3/4 at 10, 2/4 at 20 -> median 20 (S = 0.5 exactly counts)
    const km = kaplanMeier([ev(40), ev(10), ev(30), ev(20)]);
    expect(km.n).toBe(4);
    expect(km.events).toBe(4);
    expect(km.curve).toEqual([
      { time: 0, survival: 1 },
      { time: 10, survival: 0.75 },
      { time: 20, survival: 0.5 },
      { time: 30, survival: 0.25 },
      { time: 40, survival: 0 },
    ]);
    expect(km.medianDays).toBe(20);
  });

  it('odd n: the median of 5 uncensored times is the 3rd', () => {
    expect(kaplanMeier([ev(5), ev(1), ev(4), ev(2), ev(3)]).medianDays).toBe(3);
  });

  it('censoring reduces the number at risk', () => {
    // 10 event (5/6), 20 censored, 30 event: 5/6 * 3/4 = 0.625, 40 event: 0.625 * 2/3 = 0.41667
    const km = kaplanMeier([ev(10), cens(20), ev(30), ev(40), cens(50), ev(60)]);
    expect(km.events).toBe(4);
    expect(km.curve.map((p) => p.time)).toEqual([0, 10, 30, 40, 60]);
    expect(km.curve[2].survival).toBeCloseTo(0.625, 12);
    expect(km.curve[3].survival).toBeCloseTo(0.625 * (2 / 3), 12);
    expect(km.curve[4].survival).toBe(0);
    expect(km.medianDays).toBe(40);
  });

  it('tied events count together; a censoring at an event time is still at risk then', () => {
    // at 10: 2 events among 5 -> 3/5; at 20: 1 event among 3 (censored at 20 still at risk) -> 3/5*2/3 = 0.4
    const km = kaplanMeier([ev(10), ev(10), ev(20), cens(20), cens(30)]);
    expect(km.curve).toHaveLength(3);
    expect(km.curve[1]).toEqual({ time: 10, survival: 0.6 });
    expect(km.curve[2].survival).toBeCloseTo(0.4, 12);
    expect(km.events).toBe(3);
    expect(km.medianDays).toBe(20);
  });

  it('returns null when the curve never reaches 0.5', () => {
    const km = kaplanMeier([ev(10), cens(20), cens(30), cens(40)]);
    expect(km.medianDays).toBeNull();
    expect(km.medianMonths).toBeNull();
    expect(km.curve).toEqual([{ time: 0, survival: 1 }, { time: 10, survival: 0.75 }]);
  });

  it('converts the median to months (days / 30.4375, 1 decimal)', () => {
    const times = Array.from({ length: 47 }, (_, i) => ev(i < 23 ? 100 + i : i === 23 ? 749 : 800 + i));
    const km = kaplanMeier(times);
    expect(km.medianDays).toBe(749);
    expect(km.medianMonths).toBe(24.6);
    expect(daysToMonths(207)).toBe(6.8);
    expect(daysToMonths(396)).toBe(13);
    expect(daysToMonths(170)).toBe(5.6);
  });

  it('rejects negative or non-finite times', () => {
    expect(() => kaplanMeier([ev(-1)])).toThrow();
    expect(() => kaplanMeier([ev(Number.NaN)])).toThrow();
  });
});
