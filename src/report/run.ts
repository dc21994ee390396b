import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FhirClient } from '../delivery/client.ts';
import { readStudy, type ReadStudyOptions } from './fhir-source.ts';
import { renderReportHtml } from './html.ts';
import { buildStudyReport, type StudyReport } from './report.ts';
import { formatReportSummary } from './summary.ts';

export interface RunStudyReportOptions extends ReadStudyOptions {
  readonly client: FhirClient;
  /** the ResearchStudy identifier: `value` or `system|value` */
  readonly study: string;
  /** where report.json and report.html are written (created if missing) */
  readonly outDir: string;
  /** the report's timestamp (default now) */
  readonly generated?: Date;
}

export interface StudyReportRun {
  readonly report: StudyReport;
  readonly jsonPath: string;
  readonly htmlPath: string;
  /** the terminal summary (no identifiers) */
  readonly summary: string;
}

/** A base URL fit to print: no credentials, query or fragment. */
function displayUrl(url: string): string {
  const u = new URL(url);
  u.username = '';
  u.password = '';
  u.search = '';
  u.hash = '';
  return u.toString().replace(/\/$/, '');
}

/** Reads the study from the server, writes report.json and report.html, returns them with the summary. */
export async function runStudyReport(options: RunStudyReportOptions): Promise<StudyReportRun> {
  const source = await readStudy(options.client, options.study, options);
  const report = buildStudyReport(source, { identifier: options.study, server: displayUrl(options.client.baseUrl), generated: options.generated });
  await mkdir(options.outDir, { recursive: true });
  const jsonPath = join(options.outDir, 'report.json');
  const htmlPath = join(options.outDir, 'report.html');
  await writeFile(jsonPath, JSON.stringify(report, null, 2) + '\n');
  await writeFile(htmlPath, renderReportHtml(report));
  return { report, jsonPath, htmlPath, summary: formatReportSummary(report) };
}
