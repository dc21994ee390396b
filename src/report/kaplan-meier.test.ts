import { describe, expect, it } from 'vitest';
import { atRiskAt, daysToMonths, kaplanMeier, type KaplanMeierResult } from './kaplan-meier.ts';

const ev = (time: number) => ({ time, event: true });
const cens = (time: number) => ({ time, event: false });
const steps = (km: KaplanMeierResult) => km.curve.map(({ time, survival }) => ({ time, survival }));

describe('kaplanMeier', () => {
  it('handles an empty input', () => {
    expect(kaplanMeier([])).toEqual({
      n: 0,
      events: 0,
      medianDays: null,
      medianMonths: null,
      medianCiDays: { lower: null, upper: null },
      curve: [{ time: 0, survival: 1, atRisk: 0, events: 0, stdErr: 0, lower: 1, upper: 1 }],
      censored: [],
    });
  });

  it('without censoring the median is the first time S drops to 0.5 or below', () => {
    // S: 3/4 at 10, 2/4 at 20 -> median 20 (S = 0.5 exactly counts)
    const km = kaplanMeier([ev(40), ev(10), ev(30), ev(20)]);
    expect(km.n).toBe(4);
    expect(km.events).toBe(4);
    expect(steps(km)).toEqual([
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
    expect(steps(km)[1]).toEqual({ time: 10, survival: 0.6 });
    expect(km.curve[2].survival).toBeCloseTo(0.4, 12);
    expect(km.events).toBe(3);
    expect(km.medianDays).toBe(20);
  });

  it('returns null when the curve never reaches 0.5', () => {
    const km = kaplanMeier([ev(10), cens(20), cens(30), cens(40)]);
    expect(km.medianDays).toBeNull();
    expect(km.medianMonths).toBeNull();
    expect(steps(km)).toEqual([{ time: 0, survival: 1 }, { time: 10, survival: 0.75 }]);
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

/**
 * Freireich et al. (1963) 6-mercaptopurine trial in acute leukaemia, remission times in weeks (Gehan 1965), the
 * textbook example of Klein & Moeschberger (Survival Analysis, 2nd ed., Table 4.1A) and Kleinbaum & Klein
 * (ch. 2). The survival, Greenwood standard errors and log-log intervals below are the published ones (3 to 4
 * decimals), also printed by R: survfit(Surv(time, status) ~ 1, conf.type = "log-log").
 */
describe('kaplanMeier on the 6-MP leukaemia data (textbook values)', () => {
  const sixMp = [ev(6), ev(6), ev(6), cens(6), ev(7), cens(9), ev(10), cens(10), cens(11), ev(13), ev(16), cens(17), cens(19), cens(20), ev(22), ev(23), cens(25), cens(32), cens(32), cens(34), cens(35)];
  const placebo = [1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23].map(ev);

  it('6-MP arm: S(t), numbers at risk and Greenwood standard errors', () => {
    const km = kaplanMeier(sixMp);
    expect(km.n).toBe(21);
    expect(km.events).toBe(9);
    const table = km.curve.slice(1).map((s) => [s.time, s.atRisk, s.events, round(s.survival, 3), round(s.stdErr!, 4)]);
    expect(table).toEqual([
      [6, 21, 3, 0.857, 0.0764],
      [7, 17, 1, 0.807, 0.0869],
      [10, 15, 1, 0.753, 0.0963],
      [13, 12, 1, 0.69, 0.1068],
      [16, 11, 1, 0.627, 0.1141],
      [22, 7, 1, 0.538, 0.1282],
      [23, 6, 1, 0.448, 0.1346],
    ]);
    expect(km.censored.map((c) => [c.time, c.count])).toEqual([[6, 1], [9, 1], [10, 1], [11, 1], [17, 1], [19, 1], [20, 1], [25, 1], [32, 2], [34, 1], [35, 1]]);
  });

  it('6-MP arm: log-log 95% intervals of S(t)', () => {
    const bands = kaplanMeier(sixMp).curve.slice(1).map((s) => [s.time, round(s.lower!, 3), round(s.upper!, 3)]);
    expect(bands).toEqual([
      [6, 0.62, 0.952],
      [7, 0.563, 0.923],
      [10, 0.503, 0.889],
      [13, 0.432, 0.849],
      [16, 0.368, 0.805],
      [22, 0.268, 0.747],
      [23, 0.188, 0.68],
    ]);
  });

  it('6-MP arm: median 23 weeks, 95% CI 13 to not reached (Brookmeyer-Crowley, log-log)', () => {
    const km = kaplanMeier(sixMp);
    expect(km.medianDays).toBe(23);
    expect(km.medianCiDays).toEqual({ lower: 13, upper: null });
  });

  it('placebo arm (no censoring): median 8 weeks; Greenwood reduces to the binomial standard error', () => {
    const km = kaplanMeier(placebo);
    expect(km.medianDays).toBe(8);
    const at8 = km.curve.find((s) => s.time === 8)!;
    expect(at8.survival).toBeCloseTo(8 / 21, 12);
    expect(at8.stdErr!).toBeCloseTo(Math.sqrt(((8 / 21) * (13 / 21)) / 21), 12);
    // the last event empties the risk set: S = 0, and the Greenwood term is not defined there
    expect(km.curve.at(-1)).toMatchObject({ time: 23, survival: 0, stdErr: null, lower: null, upper: null });
    expect(km.medianCiDays.lower).not.toBeNull();
    expect(km.medianCiDays.lower!).toBeLessThanOrEqual(8);
    expect(km.medianCiDays.upper!).toBeGreaterThanOrEqual(8);
  });

  it('counts the subjects at risk at a time', () => {
    expect(atRiskAt(sixMp, 0)).toBe(21);
    expect(atRiskAt(sixMp, 7)).toBe(17);
    expect(atRiskAt(sixMp, 36)).toBe(0);
  });
});

function round(x: number, digits: number): number {
  return Math.round(x * 10 ** digits) / 10 ** digits;
}
