/**
 * `report` warns when the server's data looks incomplete: the sample study delivered whole gives no warning;
 * with a Patient, one subject's treatments and one site's adverse events deleted on the server, the report's
 * JSON, HTML and terminal summary (the CLI's output) say so, with counts and no identifier.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Bundle, Resource, ResearchSubject } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { escapeSearchValue } from '../../src/mapping/identity.ts';
import { runStudyReport } from '../../src/report/run.ts';
import { startSampleServer, STUDY, type SampleServer } from './sample-server.ts';

let sample: SampleServer;
let dir: string;

function trialbridge(args: string[]): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['src/cli/main.ts', ...args], (err, stdout) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout }));
  });
}

async function search<T extends Resource>(query: string): Promise<T[]> {
  return ((await sample.client.get<Bundle>(query)).body?.entry ?? []).map((e) => e.resource as T);
}

async function remove(resources: readonly Resource[]): Promise<void> {
  for (const r of resources) await sample.client.request('DELETE', `${r.resourceType}/${r.id}`);
}

beforeAll(async () => {
  sample = await startSampleServer();
  dir = await mkdtemp(join(tmpdir(), 'report-completeness-'));
}, 120_000);

afterAll(async () => {
  await sample?.server.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('report: incompleteness warnings', () => {
  it('gives none for the study delivered whole', async () => {
    const run = await runStudyReport({ client: sample.client, study: STUDY, outDir: join(dir, 'whole') });
    expect(run.report.warnings).toEqual([]);
    expect(run.summary).not.toContain('WARNING');
  });

  it('names subjects without Patient or treatment, dangling references and a site without adverse events', async () => {
    const subjects = await search<ResearchSubject>('ResearchSubject?_count=1000');
    const siteA = subjects.filter((s) => s.identifier?.some((i) => i.system?.includes(':site-a:')));
    // One site-a subject loses its Patient, another every treatment; site-b loses its adverse events.
    const lostPatient = siteA[0].individual!.reference!;
    await remove(await search(`Patient?_id=${lostPatient.split('/')[1]}`));
    const untreated = siteA[1].individual!.reference!;
    const bySubject = (type: string, ref: string) => search(`${type}?subject=${encodeURIComponent(escapeSearchValue(ref))}`);
    const treatments = [...(await bySubject('MedicationAdministration', untreated)), ...(await bySubject('Procedure', untreated))];
    expect(treatments.length).toBeGreaterThan(0);
    await remove(treatments);
    const siteBEvents = (await search('AdverseEvent?_count=1000')).filter((r) =>
      r.meta?.tag?.some((t) => t.system?.includes(':site-b:')),
    );
    expect(siteBEvents.length).toBeGreaterThan(0);
    await remove(siteBEvents);
    expect((await bySubject('Condition', lostPatient)).length).toBeGreaterThan(0);

    const run = await runStudyReport({ client: sample.client, study: STUDY, outDir: join(dir, 'incomplete') });
    expect(run.report.warnings).toEqual([
      `1 of ${subjects.length} subjects have no Patient on the server (their ResearchSubject refers to one it does not hold): they are left out of every figure`,
      `1 of ${subjects.length} subjects have no treatment on the server (no MedicationAdministration or Procedure)`,
      // What referred to the lost Patient now dangles: its ResearchSubject, Condition and the rest.
      expect.stringMatching(/^\d+ references point to resources the server does not hold: (?=.*ResearchSubject\.individual → Patient)(?=.*Condition\.subject → Patient)/),
      expect.stringMatching(/^site site-b: the server holds no AdverseEvent for its 15 subjects$/),
    ]);
    expect(run.summary.split('\n').slice(0, 4).every((line) => line.startsWith('WARNING: the data looks incomplete: '))).toBe(true);
    const html = await readFile(run.htmlPath, 'utf8');
    expect(html).toContain('<div class="warnings" role="alert"><strong>The data looks incomplete</strong>');
    const json = JSON.parse(await readFile(run.jsonPath, 'utf8')) as { warnings: string[] };
    expect(json.warnings).toEqual(run.report.warnings);
    for (const w of run.report.warnings) expect(sample.leakedInto(w)).toEqual([]);

    const cli = await trialbridge(['report', '--fhir', sample.server.baseUrl, '--study', STUDY, '--out', join(dir, 'cli')]);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain('WARNING: the data looks incomplete: site site-b: the server holds no AdverseEvent for its 15 subjects');
  }, 60_000);
});
