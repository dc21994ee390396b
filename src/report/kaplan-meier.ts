/** One subject's survival observation: days from origin to the event or to censoring. */
export interface SurvivalPoint {
  time: number;
  event: boolean;
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
  /** the step function: S(0) = 1, then one point per distinct event time */
  curve: { time: number; survival: number }[];
}

export const DAYS_PER_MONTH = 30.4375;

/** Days to months as published: days / 30.4375, rounded to 1 decimal. */
export function daysToMonths(days: number): number {
  return Math.round((days / DAYS_PER_MONTH) * 10) / 10;
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
  const curve: { time: number; survival: number }[] = [{ time: 0, survival: 1 }];
  let atRisk = sorted.length;
  let survival = 1;
  let medianDays: number | null = null;
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
      events += deaths;
      curve.push({ time, survival });
      // tolerance: S = 0.5 exactly must count even after floating-point products
      if (medianDays === null && survival <= 0.5 + 1e-12) medianDays = time;
    }
    atRisk -= total;
  }
  return {
    n: points.length,
    events,
    medianDays,
    medianMonths: medianDays === null ? null : daysToMonths(medianDays),
    curve,
  };
}
