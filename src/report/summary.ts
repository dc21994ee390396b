/** The report's few key lines for a terminal: counts and rates only, never a subject's identifier. */
import { formatGy, formatMedian, formatProportion, NO_FOLLOW_UP } from './html.ts';
import type { StudyReport } from './report.ts';

/** Adverse-event terms named on the terminal (the full table is in the HTML and JSON). */
const TOP_TERMS = 5;

export function formatReportSummary(report: StudyReport): string {
  const p = report.pooled;
  const sites = report.bySite.map((g) => `${g.group} ${g.subjects}`).join(', ');
  const lines = [
    `Study ${report.study.identifier}: ${p.subjects} subjects at ${report.sites.length} sites (${sites}), read in ${report.study.requests} FHIR searches`,
    `  objective response (mRECIST CR+PR): ${[
      ...p.response.timepoints.map((t) => `${t.display} ${formatProportion(t.responders)}`),
      `best ${formatProportion(p.response.best)}`,
    ].join('; ')}`,
    `  conversion to resection or transplant ${formatProportion(p.conversion.subjects)}`,
    `  adverse events (subjects): ${p.adverseEvents.byTerm
      .slice(0, TOP_TERMS)
      .map((t) => `${t.display} ${formatProportion(t.subjects)}`)
      .join('; ')}${p.adverseEvents.byTerm.length > TOP_TERMS ? `; ${p.adverseEvents.byTerm.length - TOP_TERMS} more terms in the report` : ''}`,
    `  median radiotherapy dose ${formatGy(p.radiotherapy.medianDoseGy)}`,
    p.survival.os.n === 0 && p.survival.pfs.n === 0
      ? `  survival ${NO_FOLLOW_UP}`
      : `  median OS ${formatMedian(p.survival.os)} months; PFS ${formatMedian(p.survival.pfs)} months`,
  ];
  const pvi = p.survival.portalVeinInvasion;
  if (pvi && pvi.n > 0) lines.push(`  portal vein invasion Vp3/Vp4 (n=${pvi.n}): median OS ${formatMedian(pvi.os)}, PFS ${formatMedian(pvi.pfs)} months`);
  // First, where nobody can miss them: figures from incomplete data look like any others.
  return [...(report.warnings ?? []).map((w) => `WARNING: the data looks incomplete: ${w}`), ...lines].join('\n');
}
