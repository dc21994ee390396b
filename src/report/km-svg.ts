/** Kaplan-Meier curves as an inline SVG: step functions with censor ticks, the first group's 95% band. */
import { escapeHtml } from './escape.ts';
import { DAYS_PER_MONTH } from './kaplan-meier.ts';
import type { SurvivalEstimate } from './report.ts';

export interface KmSeries {
  /** group id, put in data-group */
  readonly id: string;
  readonly label: string;
  readonly color: string;
  readonly estimate: SurvivalEstimate;
  /** heavier line and the confidence band */
  readonly emphasis?: boolean;
}

export interface KmChartOptions {
  readonly title: string;
  /** the x axis runs from 0 to this many months */
  readonly maxMonths: number;
  readonly tickMonths?: number;
}

const WIDTH = 720;
const HEIGHT = 380;
const MARGIN = { left: 58, right: 20, top: 34, bottom: 46 };
const PLOT_W = WIDTH - MARGIN.left - MARGIN.right;
const PLOT_H = HEIGHT - MARGIN.top - MARGIN.bottom;
const TICK = 4;

const fmt = (v: number) => String(Math.round(v * 10) / 10);

/** Colours that stay apart for colour-blind readers (Okabe-Ito), pooled in black. */
export const SERIES_COLOURS = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#F0E442'];

export function renderKmSvg(series: readonly KmSeries[], options: KmChartOptions): string {
  const maxMonths = Math.max(options.maxMonths, 1);
  const x = (days: number) => MARGIN.left + (Math.min(days / DAYS_PER_MONTH, maxMonths) / maxMonths) * PLOT_W;
  const y = (s: number) => MARGIN.top + (1 - s) * PLOT_H;
  const parts: string[] = [];

  const step = options.tickMonths ?? 6;
  for (let m = 0; m <= maxMonths + 1e-9; m += step) {
    const px = fmt(x(m * DAYS_PER_MONTH));
    parts.push(`<line class="grid" x1="${px}" y1="${MARGIN.top}" x2="${px}" y2="${MARGIN.top + PLOT_H}"/>`);
    parts.push(`<text class="tick" x="${px}" y="${MARGIN.top + PLOT_H + 16}" text-anchor="middle">${m}</text>`);
  }
  for (const s of [0, 0.25, 0.5, 0.75, 1]) {
    const py = fmt(y(s));
    parts.push(`<line class="grid${s === 0.5 ? ' half' : ''}" x1="${MARGIN.left}" y1="${py}" x2="${MARGIN.left + PLOT_W}" y2="${py}"/>`);
    parts.push(`<text class="tick" x="${MARGIN.left - 8}" y="${py}" dy="0.32em" text-anchor="end">${s * 100}%</text>`);
  }
  parts.push(`<rect class="frame" x="${MARGIN.left}" y="${MARGIN.top}" width="${PLOT_W}" height="${PLOT_H}"/>`);
  parts.push(`<text class="axis" x="${MARGIN.left + PLOT_W / 2}" y="${HEIGHT - 8}" text-anchor="middle">Months from enrolment</text>`);
  parts.push(`<text class="axis" transform="translate(14 ${MARGIN.top + PLOT_H / 2}) rotate(-90)" text-anchor="middle">Probability</text>`);
  parts.push(`<text class="chart-title" x="${MARGIN.left}" y="20">${escapeHtml(options.title)}</text>`);

  for (const s of series) {
    const e = s.estimate;
    const lastDays = Math.max(e.curve.at(-1)?.days ?? 0, ...e.censorings.map((c) => c.days));
    if (s.emphasis) {
      const band = bandPath(e, x, y, lastDays);
      if (band) parts.push(`<path class="km-ci" data-group="${escapeHtml(s.id)}" d="${band}" fill="${s.color}"/>`);
    }
    parts.push(
      `<path class="km-curve" data-group="${escapeHtml(s.id)}" d="${curvePath(e, x, y, lastDays)}" stroke="${s.color}" stroke-width="${s.emphasis ? 2.6 : 1.6}"><title>${escapeHtml(s.label)}</title></path>`,
    );
    const ticks = e.censorings.map((c) => `M${fmt(x(c.days))} ${fmt(y(c.survival) - TICK)}V${fmt(y(c.survival) + TICK)}`).join('');
    if (ticks) parts.push(`<path class="km-censor" data-group="${escapeHtml(s.id)}" d="${ticks}" stroke="${s.color}"/>`);
  }

  // legend, top right
  series.forEach((s, i) => {
    const ly = MARGIN.top + 14 + i * 18;
    const lx = MARGIN.left + PLOT_W - 190;
    const median = s.estimate.medianMonths === null ? 'NR' : s.estimate.medianMonths.toFixed(1);
    parts.push(
      `<g class="legend-item" data-group="${escapeHtml(s.id)}"><line x1="${lx}" y1="${ly}" x2="${lx + 22}" y2="${ly}" stroke="${s.color}" stroke-width="${s.emphasis ? 2.6 : 1.6}"/>` +
        `<text x="${lx + 28}" y="${ly}" dy="0.32em">${escapeHtml(`${s.label} (n=${s.estimate.n}, median ${median})`)}</text></g>`,
    );
  });

  return (
    `<svg class="km-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" role="img" aria-label="${escapeHtml(options.title)}">` +
    parts.join('') +
    '</svg>'
  );
}

type Scale = (v: number) => number;

/** The step function: flat until the next event, then down; flat again to the last censoring. */
function curvePath(e: SurvivalEstimate, x: Scale, y: Scale, lastDays: number): string {
  let d = `M${fmt(x(0))} ${fmt(y(1))}`;
  for (const step of e.curve.slice(1)) d += `H${fmt(x(step.days))}V${fmt(y(step.survival))}`;
  if (lastDays > (e.curve.at(-1)?.days ?? 0)) d += `H${fmt(x(lastDays))}`;
  return d;
}

/** The 95% pointwise band as one closed shape: along the upper limits, back along the lower ones. */
function bandPath(e: SurvivalEstimate, x: Scale, y: Scale, lastDays: number): string | undefined {
  // Limits are missing only once S(t) = 0, at the end of the curve.
  const undefinedFrom = e.curve.findIndex((s) => s.lower === null || s.upper === null);
  const steps = undefinedFrom === -1 ? e.curve : e.curve.slice(0, undefinedFrom);
  if (steps.length < 2) return undefined;
  const ends = steps.map((_, i) => e.curve[i + 1]?.days ?? lastDays);
  let upper = '';
  steps.forEach((s, i) => {
    upper += `${i === 0 ? 'M' : 'L'}${fmt(x(s.days))} ${fmt(y(s.upper!))}H${fmt(x(ends[i]))}`;
  });
  let lower = '';
  for (let i = steps.length - 1; i >= 0; i--) lower += `L${fmt(x(ends[i]))} ${fmt(y(steps[i].lower!))}H${fmt(x(steps[i].days))}`;
  return `${upper}${lower}Z`;
}
