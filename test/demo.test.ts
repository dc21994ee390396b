import { execFile } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);

describe('npm run demo (the README main job)', () => {
  it('maps the three sample sites, reproduces the published figures and delivers exactly the mapped resources, twice without duplicates', async () => {
    const out = await mkdtemp(join(tmpdir(), 'demo-'));
    const { stdout } = await run(process.execPath, ['src/cli/main.ts', 'demo', '-o', out]);
    expect(stdout).toContain('response 4 weeks after LD-CCRT 21/47 (44.7%); best response 25/47 (53.2%)');
    expect(stdout).toContain('resection or transplant 9/47 (19.1%)');
    expect(stdout).toContain('diarrhoea 17/47 (36.2%); hand-foot skin reaction 16/47 (34.0%)');
    expect(stdout).toContain('median OS 24.6 months, PFS 6.8 months');
    expect(stdout).toContain('(n=17): OS 13.0, PFS 5.6 months');
    expect(stdout).toContain('Delivery in process (no REDIS_URL');
    expect(stdout.match(/bundles delivered: hospital 47, sponsor 47; dead-lettered 0/g)).toHaveLength(2);
    expect(stdout.match(/15 records rejected/g)).toHaveLength(2);
    expect(stdout.match(/exactly the mapped resources on both servers, no duplicates/g)).toHaveLength(2);
    expect(stdout).toMatch(/hospital holds \(FHIR search\): AdverseEvent 147, .*Patient 47, .*ResearchStudy 1, ResearchSubject 47/);
    expect(stdout).toMatch(/sponsor holds \(FHIR search\): AdverseEvent 147, .*Patient 47, .*ResearchStudy 1, ResearchSubject 47/);
    const figures = JSON.parse(await readFile(join(out, 'pooled-figures.json'), 'utf8'));
    expect(figures.subjects).toBe(47);
    // The sponsor's report, read back from the pseudonymised server alone.
    expect(stdout).toContain("Sponsor report from the sponsor's FHIR server");
    expect(stdout).toContain('47 subjects at 3 sites (site-a 18, site-b 15, site-c 14)');
    expect(stdout).toContain('median OS 24.6 (95% CI 17.0–43.8) months; PFS 6.8 (95% CI 5.0–16.4) months');
    expect(stdout).toContain(`HTML: ${join(out, 'report', 'report.html')}`);
    const html = await readFile(join(out, 'report', 'report.html'), 'utf8');
    expect(html).toContain('<svg');
  });

  it('goes through BullMQ when REDIS_URL is set: the second submission queues nothing and changes no count', async () => {
    const out = await mkdtemp(join(tmpdir(), 'demo-'));
    const { stdout } = await run(process.execPath, ['src/cli/main.ts', 'demo', '-o', out], { env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:6379' } });
    expect(stdout).toContain('Delivery through BullMQ (Redis 127.0.0.1:6379)');
    expect(stdout).toMatch(/pass 1: 50 subjects queued, 0 already queued or delivered .*bundles delivered: hospital 47, sponsor 47; dead-lettered 0/);
    expect(stdout).toMatch(/pass 2: 0 subjects queued, 50 already queued or delivered .*bundles delivered: hospital 0, sponsor 0; dead-lettered 0/);
    expect(stdout.match(/exactly the mapped resources on both servers, no duplicates/g)).toHaveLength(2);
  });

  it('stops with a clear error when REDIS_URL names a Redis that does not answer', async () => {
    const out = await mkdtemp(join(tmpdir(), 'demo-'));
    const failed = run(process.execPath, ['src/cli/main.ts', 'demo', '-o', out], { env: { ...process.env, REDIS_URL: 'redis://127.0.0.1:1' } });
    await expect(failed).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('REDIS_URL is set but Redis at 127.0.0.1:1 does not answer') });
  });
});
