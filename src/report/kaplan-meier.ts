export interface SurvivalPoint {
  /** Days from origin to event or censoring. */
  readonly time: number;
  /** True for an event (death, progression), false for censoring. */
  readonly event: boolean;
}

export interface KaplanMeierResult {
  readonly n: number;
  readonly events: number;
  readonly medianDays: number | null;
  /** days / 30.4375, rounded to one decimal. */
  readonly medianMonths: number | null;
  readonly curve: { time: number; survival: number }[];
}

export const DAYS_PER_MONTH = 30.4375;

/** Kaplan-Meier product-limit estimate; the median is the first event time where S(t) ≤ 0.5. */
export function kaplanMeier(points: readonly SurvivalPoint[]): KaplanMeierResult {
  const sorted = [...points].sort((a, b) => a.time - b.time || Number(b.event) - Number(a.event));
  let atRisk = sorted.length;
  let survival = 1;
  let medianDays: number | null = null;
  const curve: { time: number; survival: number }[] = [];
  let i = 0;
  while (i < sorted.length) {
    const time = sorted[i].time;
    let deaths = 0;
    let leaving = 0;
    while (i < sorted.length && sorted[i].time === time) {
      if (sorted[i].event) deaths++;
      leaving++;
      i++;
    }
    if (deaths > 0) {
      survival *= 1 - deaths / atRisk;
      curve.push({ time, survival });
      if (medianDays === null && survival <= 0.5 + 1e-12) medianDays = time;
    }
    atRisk -= leaving;
  }
  return {
    n: points.length,
    events: points.filter((p) => p.event).length,
    medianDays,
    medianMonths: medianDays === null ? null : Math.round((medianDays / DAYS_PER_MONTH) * 10) / 10,
    curve,
  };
}
