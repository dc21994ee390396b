/**
 * The acceptance test of the sponsor report: the trial's published results computed back from a FHIR server
 * alone (the embedded one, filled from the three sample sites over HTTP), per site and pooled.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bundle } from '@medplum/fhirtypes';
import { FhirClient } from '../../src/delivery/client.ts';
import type { TrialFigures } from '../../src/report/figures.ts';
import { renderReportHtml } from '../../src/report/html.ts';
import type { GroupReport, StudyReport } from '../../src/report/report.ts';
import { runStudyReport, type StudyReportRun } from '../../src/report/run.ts';
import { PUBLISHED_SUMMARY, startSampleServer, STUDY, type SampleServer } from './sample-server.ts';

const DIARRHOEA = '10012735';
const HAND_FOOT = '10054524';

let sample: SampleServer;
let out: string;
let run: StudyReportRun;

beforeAll(async () => {
  sample = await startSampleServer();
  out = await mkdtemp(join(tmpdir(), 'study-report-'));
  run = await runStudyReport({ client: sample.client, study: STUDY, outDir: out });
});

afterAll(async () => {
  await sample?.server.close();
  if (out) await rm(out, { recursive: true, force: true });
});

const term = (g: GroupReport, code: string) => g.adverseEvents.byTerm.find((t) => t.code === code)!;
const timepoint = (g: GroupReport, code: string) => g.response.timepoints.find((t) => t.code === code)!;

describe('sponsor report from the FHIR server filled by the three sample sites', () => {
  it('reproduces the published pooled results', () => {
    const p = run.report.pooled;
    expect(p.subjects).toBe(47);
    expect(timepoint(p, 'post-ccrt-week-4').responders).toEqual({ n: 21, of: 47, percent: 44.7 });
    expect(p.response.best).toEqual({ n: 25, of: 47, percent: 53.2 });
    expect(p.conversion).toEqual({ resection: 7, transplant: 2, subjects: { n: 9, of: 47, percent: 19.1 } });
    expect(term(p, DIARRHOEA).subjects).toEqual({ n: 17, of: 47, percent: 36.2 });
    expect(term(p, HAND_FOOT).subjects).toEqual({ n: 16, of: 47, percent: 34 });
    expect(p.radiotherapy.medianDoseGy).toBe(60);
    expect(p.survival.os).toMatchObject({ n: 47, events: 34, medianMonths: 24.6 });
    expect(p.survival.pfs).toMatchObject({ n: 47, events: 40, medianMonths: 6.8 });
    expect(p.survival.portalVeinInvasion).toMatchObject({ marked: 47, n: 17, os: { medianMonths: 13 }, pfs: { medianMonths: 5.6 } });
  });

  it('gives the confidence intervals of the medians (measured values, Brookmeyer-Crowley log-log)', () => {
    const p = run.report.pooled.survival;
    expect(p.os.medianCiMonths).toEqual({ lower: 17, upper: 43.8 });
    expect(p.pfs.medianCiMonths).toEqual({ lower: 5, upper: 16.4 });
    expect(p.portalVeinInvasion!.os.medianCiMonths).toEqual({ lower: 6.1, upper: 35.8 });
    expect(p.portalVeinInvasion!.pfs.medianCiMonths).toEqual({ lower: 2.2, upper: 16.5 });
    for (const e of [p.os, p.pfs]) {
      expect(e.medianCiMonths.lower!).toBeLessThanOrEqual(e.medianMonths!);
      expect(e.medianCiMonths.upper!).toBeGreaterThanOrEqual(e.medianMonths!);
    }
    expect(run.report.methods.survival).toContain('Brookmeyer-Crowley');
    expect(run.report.methods.survival).toContain('Greenwood');
  });

  it('splits the subjects by site as the identifiers name them, and the sites add up to the pooled figures', () => {
    const { pooled, bySite } = run.report;
    expect(run.report.sites).toEqual(['site-a', 'site-b', 'site-c']);
    expect(bySite.map((g) => [g.group, g.subjects])).toEqual([
      ['site-a', 18],
      ['site-b', 15],
      ['site-c', 14],
    ]);
    const sum = (value: (g: GroupReport) => number) => bySite.reduce((n, g) => n + value(g), 0);
    const additive: [string, (g: GroupReport) => number][] = [
      ['subjects', (g) => g.subjects],
      ['best response', (g) => g.response.best.n],
      ['conversion', (g) => g.conversion.subjects.n],
      ['adverse events', (g) => g.adverseEvents.events],
      ['subjects with any adverse event', (g) => g.adverseEvents.anyGrade.n],
      ['radiotherapy courses', (g) => g.radiotherapy.courses],
      ['deaths', (g) => g.survival.os.events],
      ['progression or death', (g) => g.survival.pfs.events],
      ['Vp3/Vp4 subjects', (g) => g.survival.portalVeinInvasion?.n ?? 0],
      ...pooled.response.timepoints.map((t, i): [string, (g: GroupReport) => number] => [`response at ${t.code}`, (g) => g.response.timepoints[i].responders.n]),
      ...pooled.adverseEvents.byTerm.flatMap((t, i): [string, (g: GroupReport) => number][] => [
        [`AE ${t.code}`, (g) => g.adverseEvents.byTerm[i].subjects.n],
        [`AE ${t.code} grade 3+`, (g) => g.adverseEvents.byTerm[i].grade3plus.n],
      ]),
      ...pooled.adverseEvents.byGrade.map((t, i): [string, (g: GroupReport) => number] => [`grade ${t.grade}`, (g) => g.adverseEvents.byGrade[i].subjects.n]),
    ];
    for (const [what, value] of additive) expect(sum(value), what).toBe(value(pooled));
    for (const g of bySite) expect(g.adverseEvents.byTerm.map((t) => t.code)).toEqual(pooled.adverseEvents.byTerm.map((t) => t.code));
  });

  it('computes from the server the same figures as from the mapped bundles (examples/expected-aggregates.json)', async () => {
    type Expected = TrialFigures & { resources?: unknown; records?: unknown; rejects?: unknown };
    const expected = JSON.parse(await readFile('examples/expected-aggregates.json', 'utf8')) as { pooled: Expected; sites: Record<string, Expected> };
    const strip = ({ resources: _r, records: _c, rejects: _j, ...figures }: Expected): TrialFigures => figures;
    expect(run.report.pooled.figures).toEqual(strip(expected.pooled));
    for (const g of run.report.bySite) expect(g.figures, g.group).toEqual(strip(expected.sites[g.group]));
  });

  it('reads the study in a handful of searches: subjects in batches, Patients by _include', () => {
    // 1 ResearchStudy, 1 ResearchSubject (+ _include), 2 batches of 40 subjects x 5 types, 1 more Observation page
    expect(run.report.study.requests).toBe(13);
  });

  it('writes the JSON and a self-contained HTML page, and a short terminal summary, with no identifier of a subject', async () => {
    const json = await readFile(run.jsonPath, 'utf8');
    expect(JSON.parse(json)).toEqual(JSON.parse(JSON.stringify(run.report)));
    const html = await readFile(run.htmlPath, 'utf8');
    expect(html).toMatch(/^<!DOCTYPE html>/);
    expect(html.match(/<svg class="km-chart"/g)).toHaveLength(4);
    // offline: nothing is fetched from anywhere
    expect(html).not.toMatch(/<script|<link|src=|@import|url\(/i);
    for (const line of PUBLISHED_SUMMARY) expect(run.summary).toContain(line);
    for (const [name, text] of [['json', json], ['html', html], ['summary', run.summary]] as const) expect(sample.leakedInto(text), name).toEqual([]);
    // the check itself finds what it looks for
    expect(sample.identifying.length).toBeGreaterThan(47);
    expect(sample.leakedInto(`subjects ${sample.identifying.join(' ')}`).length).toBeGreaterThan(47);
  });

  it('escapes whatever the server sends into the page', () => {
    const hostile: StudyReport = structuredClone(run.report);
    hostile.study.title = '<script>alert(1)</script>';
    hostile.pooled.adverseEvents.byTerm[0].display = '<img src=x onerror=alert(1)>';
    const html = renderReportHtml(hostile);
    expect(html).not.toContain('<script>');
    expect(html).not.toContain('<img');
    expect(html).toContain('&#60;script&#62;alert(1)&#60;/script&#62;');
  });
});

describe('paging', () => {
  const comparable = (r: StudyReport) => ({ pooled: r.pooled, bySite: r.bySite, sites: r.sites });

  it('pages with _offset where the server writes no next link (the embedded server), with identical results', async () => {
    const paged = await runStudyReport({ client: sample.client, study: STUDY, outDir: join(out, 'offset'), pageSize: 7, batchSize: 10 });
    expect(comparable(paged.report)).toEqual(comparable(run.report));
    expect(paged.report.study.requests).toBeGreaterThan(100);
  });

  it('follows the next links of a server that pages with them (opaque page tokens, no total)', async () => {
    const pages = new Map<string, string>();
    const seen: string[] = [];
    // In front of the embedded server: each page gets a next link to a token, as HAPI FHIR's _getpages.
    const linkPaging: typeof fetch = async (input, init) => {
      let url = new URL(String(input));
      seen.push(url.search);
      const token = url.searchParams.get('_getpages');
      if (token) url = new URL(pages.get(token)!);
      const response = await fetch(url, init);
      const bundle = (await response.json()) as Bundle;
      if (bundle.resourceType !== 'Bundle' || bundle.type !== 'searchset') return Response.json(bundle, { status: response.status });
      const count = Number(url.searchParams.get('_count'));
      const offset = Number(url.searchParams.get('_offset') ?? 0);
      const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
      const total = bundle.total ?? 0;
      delete bundle.total;
      if (offset + matches < total && matches === count) {
        const next = new URL(url);
        next.searchParams.set('_offset', String(offset + count));
        const id = `page-${pages.size + 1}`;
        pages.set(id, next.toString());
        bundle.link = [{ relation: 'next', url: `${sample.server.baseUrl}?_getpages=${id}` }];
      }
      return Response.json(bundle, { status: response.status });
    };
    const client = new FhirClient({ baseUrl: sample.server.baseUrl, fetch: linkPaging });
    const paged = await runStudyReport({ client, study: STUDY, outDir: join(out, 'links'), pageSize: 9, batchSize: 12 });
    expect(comparable(paged.report)).toEqual(comparable(run.report));
    expect(pages.size).toBeGreaterThan(50);
    expect(seen.filter((s) => s.startsWith('?_getpages='))).toHaveLength(pages.size);
    // the reader never made up an _offset of its own: every page after the first came from a link
    expect(seen.filter((s) => s.includes('_offset'))).toEqual([]);
  });
});
