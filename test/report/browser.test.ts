/**
 * The report's HTML page in a real headless browser: Debian's chromium driven by playwright-core. Skipped,
 * saying why, only where /usr/bin/chromium is not installed (.ci/run installs it).
 */
import { existsSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runStudyReport, type StudyReportRun } from '../../src/report/run.ts';
import { startSampleServer, STUDY } from './sample-server.ts';

const CHROMIUM = '/usr/bin/chromium';
const OUT = resolve('test-output/report');
const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) console.warn(`report browser test skipped: ${CHROMIUM} is not installed (apt-get install chromium)`);

describe.skipIf(!hasChromium)('report HTML in headless chromium', () => {
  let browser: Browser;
  let run: StudyReportRun;

  beforeAll(async () => {
    const sample = await startSampleServer();
    try {
      run = await runStudyReport({ client: sample.client, study: STUDY, outDir: OUT });
    } finally {
      await sample.server.close();
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  afterAll(async () => {
    await browser?.close();
  });

  it('renders the tables and the Kaplan-Meier curves offline, and is screenshot', async () => {
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    const requests: string[] = [];
    const problems: string[] = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(m.text());
    });
    page.on('pageerror', (e) => problems.push(e.message));
    await page.goto(pathToFileURL(run.htmlPath).href, { waitUntil: 'load' });

    expect(await page.title()).toBe(`${STUDY}: sponsor report`);
    // nothing but the page itself is loaded
    expect(requests).toEqual([pathToFileURL(run.htmlPath).href]);
    expect(problems).toEqual([]);

    // four charts (OS, PFS and both for the Vp3/Vp4 subgroup), each with pooled + three sites
    expect(await page.locator('svg.km-chart').count()).toBe(4);
    for (const id of ['km-os', 'km-pfs', 'km-pvi-os', 'km-pvi-pfs']) {
      const curves = page.locator(`#${id} path.km-curve`);
      expect(await curves.evaluateAll((paths) => paths.map((p) => p.getAttribute('data-group')))).toEqual(['pooled', 'site-a', 'site-b', 'site-c']);
      // drawn, and as steps: one horizontal and one vertical segment per event time
      const box = await curves.first().boundingBox();
      expect(box!.width).toBeGreaterThan(300);
      expect(box!.height).toBeGreaterThan(100);
      expect(await page.locator(`#${id} path.km-ci`).count()).toBe(1);
      expect(await page.locator(`#${id}-at-risk tbody tr`).count()).toBe(4);
    }
    const pooledOs = await page.locator('#km-os path.km-curve[data-group="pooled"]').getAttribute('d');
    const distinctDeathTimes = run.report.pooled.survival.os.curve.length - 1;
    expect(pooledOs!.match(/V/g)!.length).toBe(distinctDeathTimes);
    // the censor ticks: one short vertical stroke per censoring time
    const ticks = await page.locator('#km-os path.km-censor[data-group="pooled"]').getAttribute('d');
    expect(ticks!.match(/M/g)!.length).toBe(run.report.pooled.survival.os.censorings.length);
    expect(await page.locator('#km-os path.km-curve[data-group="pooled"]').evaluate((p) => (p as SVGPathElement).getTotalLength())).toBeGreaterThan(500);

    const value = (group: string, measure: string) => page.locator(`td[data-group="${group}"][data-measure="${measure}"]`).innerText();
    expect(await value('pooled', 'subjects')).toBe('47');
    expect(await value('site-a', 'subjects')).toBe('18');
    expect(await value('site-b', 'subjects')).toBe('15');
    expect(await value('site-c', 'subjects')).toBe('14');
    expect(await value('pooled', 'response-post-ccrt-week-4')).toBe('21/47 (44.7%)');
    expect(await value('pooled', 'best-response')).toBe('25/47 (53.2%)');
    expect(await value('pooled', 'conversion')).toBe('9/47 (19.1%)');
    expect(await value('pooled', 'median-dose')).toBe('60 Gy');
    expect(await value('pooled', 'median-os')).toBe('24.6 (95% CI 17.0–43.8)');
    expect(await value('pooled', 'median-pfs')).toBe('6.8 (95% CI 5.0–16.4)');
    expect(await value('pooled', 'ae-10012735')).toBe('17/47 (36.2%)');
    expect(await value('pooled', 'ae-10054524')).toBe('16/47 (34.0%)');
    expect(await page.locator('#ae-terms tbody tr').count()).toBe(run.report.pooled.adverseEvents.byTerm.length + 1);
    expect(await page.locator('#ae-grades tbody tr').count()).toBe(5);
    // the tables are laid out, not hidden
    for (const table of ['#key-results', '#ae-terms', '#ae-grades']) expect((await page.locator(table).boundingBox())!.height).toBeGreaterThan(100);

    await mkdir(OUT, { recursive: true });
    const screenshot = join(OUT, 'report.png');
    await page.screenshot({ path: screenshot, fullPage: true });
    expect((await stat(screenshot)).size).toBeGreaterThan(50_000);
    await page.close();
  });
});
