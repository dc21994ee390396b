/** One subject's survival observation: days from origin to the event or to censoring. */
export interface SurvivalPoint {
  time: number;
  event: boolean;
}

/** The estimate just after one distinct event time (or at time 0). */
export interface KaplanMeierStep {
  time: number;
  survival: number;
  /** subjects at risk just before `time` */
  atRisk: number;
  /** events at `time` */
  events: number;
  /** Greenwood standard error of S(t); null where S(t) = 0 (the formula divides by zero there) */
  stdErr: number | null;
  /** 95% pointwise confidence interval of S(t), log-log transform; null where not estimable (S(t) = 0) */
  lower: number | null;
  upper: number | null;
}

/** Subjects censored at one time, with the estimate they are drawn on (for censor ticks). */
export interface KaplanMeierCensoring {
  time: number;
  survival: number;
  count: number;
}

export interface KaplanMeierResult {
  /** subjects */
  n: number;
  /** observed events */
  events: number;
  /** smallest event time t with S(t) <= 0.5, or null when the curve never reaches 0.5 */
  medianDays: number | null;
  /** medianDays / 30.4375, rounded to 1 decimal */
  medianMonths: number | null;
  /**
   * 95% confidence interval of the median (Brookmeyer-Crowley, log-log transform), in days: the event times
   * at which the pointwise interval of S(t) contains 0.5. `lower` is the first time the lower band reaches
   * 0.5, `upper` the first time the upper band does; null when the band never gets there (not reached).
   */
  medianCiDays: { lower: number | null; upper: number | null };
  /** the step function: S(0) = 1, then one point per distinct event time */
  curve: KaplanMeierStep[];
  /** censoring times, with S(t) at each */
  censored: KaplanMeierCensoring[];
}

export const DAYS_PER_MONTH = 30.4375;

/** z for a two-sided 95% interval. */
export const Z_95 = 1.959963984540054;

export const KAPLAN_MEIER_METHOD =
  'Kaplan-Meier product-limit estimate (events before censorings at the same time); standard errors by Greenwood\'s formula; ' +
  '95% pointwise confidence intervals of S(t) with the log-log transform; median = smallest time with S(t) <= 0.5; ' +
  '95% confidence interval of the median by the Brookmeyer-Crowley method with the log-log transform ' +
  '(times at which the pointwise interval contains 0.5, as R survfit with conf.type = "log-log"); NR = not reached.';

/** Days to months as published: days / 30.4375, rounded to 1 decimal. */
export function daysToMonths(days: number): number {
  return Math.round((days / DAYS_PER_MONTH) * 10) / 10;
}

// Tolerance: S = 0.5 exactly must count even after floating-point products.
const reachesHalf = (s: number | null): boolean => s !== null && s <= 0.5 + 1e-12;

/**
 * The log-log (Kalbfleisch-Prentice) interval of S: S^exp(±z·se), se = sqrt(Σ d/(n(n-d))) / |ln S|, which
 * stays inside [0, 1] unlike the plain Greenwood interval.
 */
function logLogInterval(survival: number, greenwoodSum: number): { lower: number | null; upper: number | null } {
  if (survival >= 1) return { lower: 1, upper: 1 };
  if (survival <= 0 || !Number.isFinite(greenwoodSum)) return { lower: null, upper: null };
  const se = Math.sqrt(greenwoodSum) / Math.abs(Math.log(survival));
  return { lower: survival ** Math.exp(Z_95 * se), upper: survival ** Math.exp(-Z_95 * se) };
}

/**
 * Kaplan-Meier product-limit estimate. Subjects censored at an event time are still at risk at that time
 * (events are taken to happen before censorings at the same time).
 */
export function kaplanMeier(points: readonly SurvivalPoint[]): KaplanMeierResult {
  for (const p of points) {
    if (!Number.isFinite(p.time) || p.time < 0) throw new Error(`invalid survival time ${p.time}`);
  }
  const sorted = [...points].sort((a, b) => a.time - b.time);
  const curve: KaplanMeierStep[] = [{ time: 0, survival: 1, atRisk: sorted.length, events: 0, stdErr: 0, lower: 1, upper: 1 }];
  const censored: KaplanMeierCensoring[] = [];
  let atRisk = sorted.length;
  let survival = 1;
  // Σ d / (n (n - d)): Greenwood's sum, Var(S) = S² · sum
  let greenwoodSum = 0;
  let events = 0;
  for (let i = 0; i < sorted.length; ) {
    const time = sorted[i].time;
    let deaths = 0;
    let total = 0;
    while (i < sorted.length && sorted[i].time === time) {
      if (sorted[i].event) deaths++;
      total++;
      i++;
    }
    if (deaths > 0) {
      survival *= 1 - deaths / atRisk;
      greenwoodSum += atRisk === deaths ? Number.POSITIVE_INFINITY : deaths / (atRisk * (atRisk - deaths));
      events += deaths;
      const stdErr = survival > 0 && Number.isFinite(greenwoodSum) ? survival * Math.sqrt(greenwoodSum) : null;
      curve.push({ time, survival, atRisk, events: deaths, stdErr, ...logLogInterval(survival, greenwoodSum) });
    }
    if (total > deaths) censored.push({ time, survival, count: total - deaths });
    atRisk -= total;
  }
  const firstAtHalf = (value: (step: KaplanMeierStep) => number | null) => curve.find((step) => reachesHalf(value(step)))?.time ?? null;
  const medianDays = firstAtHalf((s) => s.survival);
  return {
    n: points.length,
    events,
    medianDays,
    medianMonths: medianDays === null ? null : daysToMonths(medianDays),
    // Once S(t) = 0 the bands are not estimable (null); the interval has reached 0.5 by then in any case.
    medianCiDays: { lower: firstAtHalf((s) => s.lower ?? s.survival), upper: firstAtHalf((s) => s.upper ?? s.survival) },
    curve,
    censored,
  };
}

/** Subjects still at risk at `time` (no event or censoring before it). */
export function atRiskAt(points: readonly SurvivalPoint[], time: number): number {
  return points.filter((p) => p.time >= time).length;
}
