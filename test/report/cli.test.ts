/** `trialbridge report` as a user runs it: a child process against an embedded FHIR server that wants a token. */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StudyReport } from '../../src/report/report.ts';
import { PUBLISHED_SUMMARY, startSampleServer, STUDY, type SampleServer } from './sample-server.ts';

const TOKEN = 'report-test-token-4f1c2c6e8a3b';

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI without blocking this process: the server answering it lives here. */
function trialbridge(args: string[], env: Record<string, string> = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['src/cli/main.ts', ...args], { env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

let sample: SampleServer;
let dir: string;

beforeAll(async () => {
  sample = await startSampleServer({ token: TOKEN, authorize: (header) => header === `Bearer ${TOKEN}` });
  dir = await mkdtemp(join(tmpdir(), 'report-cli-'));
});

afterAll(async () => {
  await sample?.server.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('trialbridge report', () => {
  it('--fhir with a bearer token from the environment: writes report.json and report.html and prints the summary', async () => {
    const out = join(dir, 'fhir');
    const run = await trialbridge(['report', '--fhir', sample.server.baseUrl, '--study', STUDY, '--out', out, '--bearer-env', 'TB_REPORT_TOKEN'], { TB_REPORT_TOKEN: TOKEN });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    for (const line of PUBLISHED_SUMMARY) expect(run.stdout).toContain(line);
    expect(run.stdout).toContain(`Report: ${join(out, 'report.html')}`);
    expect(run.stdout).not.toContain(TOKEN);
    expect(sample.leakedInto(run.stdout)).toEqual([]);
    const report = JSON.parse(await readFile(join(out, 'report.json'), 'utf8')) as StudyReport;
    expect(report.pooled.subjects).toBe(47);
    expect((await stat(join(out, 'report.html'))).size).toBeGreaterThan(10_000);
  });

  it('--destination reuses a destination of a destinations file: its base URL and auth', async () => {
    const config = join(dir, 'destinations.yaml');
    await writeFile(
      config,
      [
        'destinations:',
        '  - name: trial-registry',
        '    kind: registry',
        `    baseUrl: ${sample.server.baseUrl}`,
        "    sites: '*'",
        '    auth: { type: bearer, token: { env: TB_REGISTRY_TOKEN } }',
        '',
      ].join('\n'),
    );
    const out = join(dir, 'destination');
    const run = await trialbridge(['report', '--destination', 'trial-registry', '--config', config, '--study', STUDY, '--out', out], { TB_REGISTRY_TOKEN: TOKEN });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('47 subjects at 3 sites');
    expect((await stat(join(out, 'report.html'))).isFile()).toBe(true);
  });

  it('fails with the reason and exit code 1, without a stack trace, when the server refuses, the study is unknown or the options are wrong', async () => {
    const refused = await trialbridge(['report', '--fhir', sample.server.baseUrl, '--study', STUDY, '--out', join(dir, 'refused')]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe('report: ResearchStudy search refused by the server: HTTP 401 (Missing or invalid access token)\n');
    expect(refused.stderr).not.toMatch(/\n\s+at /);

    const unknown = await trialbridge(['report', '--fhir', sample.server.baseUrl, '--study', 'NO-SUCH-STUDY', '--bearer-env', 'TB_REPORT_TOKEN'], { TB_REPORT_TOKEN: TOKEN });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe('report: no ResearchStudy with identifier NO-SUCH-STUDY on the server\n');

    const noServer = await trialbridge(['report', '--study', STUDY]);
    expect(noServer.code).toBe(1);
    expect(noServer.stderr).toBe('report: give the server: --fhir URL, or --destination NAME (with --config FILE)\n');

    const unsetToken = await trialbridge(['report', '--fhir', sample.server.baseUrl, '--study', STUDY, '--bearer-env', 'TB_NOT_SET_ANYWHERE']);
    expect(unsetToken.code).toBe(1);
    expect(unsetToken.stderr).toBe('report: environment variable TB_NOT_SET_ANYWHERE is not set\n');
  });
});
