/**
 * The report as one self-contained HTML page: inline CSS and SVG, no script, no external resource, so it
 * opens offline and can be mailed as a single file. Every text from the server is escaped.
 */
import { escapeHtml } from './escape.ts';
import { renderKmSvg, SERIES_COLOURS, type KmSeries } from './km-svg.ts';
import type { GroupReport, Proportion, StudyReport, SurvivalEstimate } from './report.ts';

export function formatProportion(p: Proportion): string {
  return p.percent === null ? `${p.n}/${p.of}` : `${p.n}/${p.of} (${p.percent.toFixed(1)}%)`;
}

const months = (v: number | null) => (v === null ? 'NR' : v.toFixed(1));

/** `24.6 (95% CI 17.3–30.0)`; NR where not reached. */
export function formatMedian(e: Pick<SurvivalEstimate, 'medianMonths' | 'medianCiMonths'>): string {
  return `${months(e.medianMonths)} (95% CI ${months(e.medianCiMonths.lower)}–${months(e.medianCiMonths.upper)})`;
}

export function formatGy(v: number | null): string {
  return v === null ? '–' : `${Number(v.toFixed(2))} Gy`;
}

const label = (g: GroupReport) => (g.group === 'pooled' ? 'Pooled' : g.group);

function cell(group: GroupReport, measure: string, text: string): string {
  return `<td data-group="${escapeHtml(group.group)}" data-measure="${escapeHtml(measure)}">${escapeHtml(text)}</td>`;
}

function table(id: string, caption: string, head: readonly string[], rows: readonly string[]): string {
  return (
    `<table id="${id}"><caption>${escapeHtml(caption)}</caption>` +
    `<thead><tr>${head.map((h) => `<th scope="col">${escapeHtml(h)}</th>`).join('')}</tr></thead>` +
    `<tbody>${rows.join('')}</tbody></table>`
  );
}

function row(header: string, cells: readonly string[]): string {
  return `<tr><th scope="row">${escapeHtml(header)}</th>${cells.join('')}</tr>`;
}

function keyResults(report: StudyReport, groups: readonly GroupReport[]): string {
  const rows: string[] = [];
  const line = (header: string, measure: string, value: (g: GroupReport) => string) => rows.push(row(header, groups.map((g) => cell(g, measure, value(g)))));
  line('Subjects enrolled', 'subjects', (g) => String(g.subjects));
  report.pooled.response.timepoints.forEach((t, i) => {
    line(`Objective response (CR+PR), ${t.display}`, `response-${t.code}`, (g) => formatProportion(g.response.timepoints[i].responders));
  });
  line('Best objective response (CR+PR)', 'best-response', (g) => formatProportion(g.response.best));
  line('Conversion to resection or transplant', 'conversion', (g) => formatProportion(g.conversion.subjects));
  line('Median radiotherapy dose', 'median-dose', (g) => formatGy(g.radiotherapy.medianDoseGy));
  line('Median overall survival, months', 'median-os', (g) => formatMedian(g.survival.os));
  line('Deaths / subjects', 'os-events', (g) => `${g.survival.os.events}/${g.survival.os.n}`);
  line('Median progression-free survival, months', 'median-pfs', (g) => formatMedian(g.survival.pfs));
  line('Progression or death / subjects', 'pfs-events', (g) => `${g.survival.pfs.events}/${g.survival.pfs.n}`);
  if (report.pooled.survival.portalVeinInvasion) {
    const pvi = (g: GroupReport) => g.survival.portalVeinInvasion;
    line('Portal vein invasion Vp3/Vp4, subjects', 'pvi-subjects', (g) => (pvi(g) ? `${pvi(g)!.n} of ${pvi(g)!.marked} with Vp coded` : 'not coded'));
    line('Vp3/Vp4: median overall survival, months', 'pvi-median-os', (g) => (pvi(g) && pvi(g)!.n > 0 ? formatMedian(pvi(g)!.os) : '–'));
    line('Vp3/Vp4: median progression-free survival, months', 'pvi-median-pfs', (g) => (pvi(g) && pvi(g)!.n > 0 ? formatMedian(pvi(g)!.pfs) : '–'));
  }
  return table('key-results', 'Key results, pooled and per site', ['', ...groups.map(label)], rows);
}

function adverseEventsByTerm(report: StudyReport, groups: readonly GroupReport[]): string {
  const rows = report.pooled.adverseEvents.byTerm.map((term, i) =>
    row(term.display, [
      `<td class="code">${escapeHtml(term.code)}</td>`,
      ...groups.map((g) => cell(g, `ae-${term.code}`, formatProportion(g.adverseEvents.byTerm[i].subjects))),
      cell(report.pooled, `ae-${term.code}-grade3plus`, formatProportion(term.grade3plus)),
    ]),
  );
  rows.push(
    row('Any adverse event', ['<td class="code"></td>', ...groups.map((g) => cell(g, 'ae-any', formatProportion(g.adverseEvents.anyGrade))), cell(report.pooled, 'ae-any-grade3plus', '')]),
  );
  return table(
    'ae-terms',
    'Adverse events by MedDRA term: subjects with at least one event / subjects',
    ['MedDRA term', 'code', ...groups.map(label), 'Pooled, grade ≥ 3'],
    rows,
  );
}

function adverseEventsByGrade(groups: readonly GroupReport[]): string {
  const rows = groups[0].adverseEvents.byGrade.map((grade, i) =>
    row(`Grade ${grade.grade}`, groups.map((g) => cell(g, `grade-${grade.grade}`, `${formatProportion(g.adverseEvents.byGrade[i].subjects)}; ${g.adverseEvents.byGrade[i].events} events`))),
  );
  return table('ae-grades', 'Adverse events by CTCAE grade: subjects with at least one event of the grade / subjects; events', ['', ...groups.map(label)], rows);
}

function atRiskTable(id: string, series: readonly KmSeries[]): string {
  const grid = series[0].estimate.atRisk.map((a) => a.months);
  const rows = series.map((s) => `<tr><th scope="row">${escapeHtml(s.label)}</th>${s.estimate.atRisk.map((a) => `<td>${a.n}</td>`).join('')}</tr>`);
  return (
    `<table class="at-risk" id="${id}-at-risk"><caption>Number at risk</caption>` +
    `<thead><tr><th scope="col">months</th>${grid.map((m) => `<th scope="col">${m}</th>`).join('')}</tr></thead><tbody>${rows.join('')}</tbody></table>`
  );
}

/** Marked in the report when no subject has the dates a curve needs: the rest of the report stands. */
export const NO_FOLLOW_UP = 'not estimated: no subject has an enrolment date with a death or end of follow-up date';

function chart(id: string, title: string, series: readonly KmSeries[], maxMonths: number): string {
  if (series.length === 0) return `<figure class="km no-data" id="${id}"><figcaption>${escapeHtml(title)}: ${escapeHtml(NO_FOLLOW_UP)}</figcaption></figure>`;
  return `<figure class="km" id="${id}">${renderKmSvg(series, { title, maxMonths })}${atRiskTable(id, series)}</figure>`;
}

function seriesOf(groups: readonly GroupReport[], pick: (g: GroupReport) => SurvivalEstimate | undefined): KmSeries[] {
  const series: KmSeries[] = [];
  groups.forEach((g, i) => {
    const estimate = pick(g);
    if (!estimate || estimate.n === 0) return;
    const pooled = g.group === 'pooled';
    series.push({ id: g.group, label: label(g), estimate, color: pooled ? '#111111' : SERIES_COLOURS[(i - 1) % SERIES_COLOURS.length], emphasis: pooled });
  });
  return series;
}

const STYLE = `
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1b1b1b; margin: 2rem auto; max-width: 1100px; padding: 0 1.5rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th[scope="row"] { text-align: left; font-weight: normal; white-space: normal; }
thead th { border-bottom: 2px solid #999; }
thead th:first-child { text-align: left; }
td[data-group="pooled"] { font-weight: 600; }
td.code { color: #666; font-size: 0.85em; }
figure.km { margin: 1rem 0 2rem; }
.km-chart { max-width: 100%; height: auto; font-size: 12px; }
.km-chart .grid { stroke: #e6e6e6; }
.km-chart .grid.half { stroke: #999; stroke-dasharray: 4 3; }
.km-chart .frame { fill: none; stroke: #888; }
.km-chart .tick, .km-chart .axis { fill: #444; }
.km-chart .chart-title { font-weight: 600; font-size: 14px; }
.km-chart .km-curve { fill: none; stroke-linejoin: miter; }
.km-chart .km-censor { stroke-width: 1.2; }
.km-chart .km-ci { opacity: 0.12; stroke: none; }
table.at-risk { font-size: 0.85em; margin-top: 0; }
.methods dt { font-weight: 600; margin-top: 0.5rem; }
.methods dd { margin-left: 1rem; }
.warnings { border: 2px solid #b00020; background: #fdecea; padding: 0.5rem 1rem; margin: 1rem 0; }
`;

/** The whole page. */
export function renderReportHtml(report: StudyReport): string {
  const groups = [report.pooled, ...report.bySite];
  const maxMonths = report.pooled.survival.os.atRisk.at(-1)?.months ?? 0;
  const title = report.study.title ?? `Study ${report.study.identifier}`;
  const charts = [
    chart('km-os', 'Overall survival', seriesOf(groups, (g) => g.survival.os), maxMonths),
    chart('km-pfs', 'Progression-free survival', seriesOf(groups, (g) => g.survival.pfs), maxMonths),
  ];
  if (report.pooled.survival.portalVeinInvasion) {
    charts.push(
      chart('km-pvi-os', 'Overall survival, portal vein invasion Vp3/Vp4', seriesOf(groups, (g) => g.survival.portalVeinInvasion?.os), maxMonths),
      chart('km-pvi-pfs', 'Progression-free survival, portal vein invasion Vp3/Vp4', seriesOf(groups, (g) => g.survival.portalVeinInvasion?.pfs), maxMonths),
    );
  }
  const methods = Object.entries(report.methods)
    .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`)
    .join('');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>${escapeHtml(`${report.study.identifier}: sponsor report`)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>${escapeHtml(title)}</h1>
<p class="meta">Study ${escapeHtml(report.study.identifier)}${report.study.status ? ` (${escapeHtml(report.study.status)})` : ''} ·
${report.pooled.subjects} subjects at ${report.sites.length} sites · read from ${escapeHtml(report.study.server)} in ${report.study.requests} FHIR searches ·
generated ${escapeHtml(report.generated)}</p>
${(report.warnings ?? []).length > 0 ? `<div class="warnings" role="alert"><strong>The data looks incomplete</strong><ul>${report.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join('')}</ul></div>` : ''}
<h2>Key results</h2>
${keyResults(report, groups)}
<h2>Survival</h2>
${charts.join('\n')}
<h2>Adverse events</h2>
${adverseEventsByTerm(report, groups)}
${adverseEventsByGrade(groups)}
<h2>Methods</h2>
<dl class="methods">${methods}</dl>
</body>
</html>
`;
}
