/**
 * `trialbridge report` against hostile or broken FHIR servers, run as a user runs it (a child process): a
 * `next` link to itself or pages without end, error text and values carrying terminal escapes, answers that
 * are too large or drip in; and a study whose subjects have no follow-up dates, which still gets its report.
 * Every failure ends in one `report:` line with the reason, never a stack trace.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AdverseEvent, Bundle, Patient, ResearchStudy, ResearchSubject, Resource } from '@medplum/fhirtypes';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../src/delivery/client.ts';
import { CLI_TEST_MS, runCli, type CliRun as Run } from '../support/cli-run.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';

const STUDY = 'HOSTILE-REPORT-1';
const ESC = '\u001b';
/** OSC window title, clear screen, red: what a hostile server puts in its text. */
const ANSI = `${ESC}]0;owned${ESC}\\${ESC}[2J${ESC}[31m`;

function report(base: string, out: string, ...extra: string[]): Promise<Run> {
  return runCli(['report', '--fhir', base, '--study', STUDY, '--out', out, ...extra], { maxBuffer: 16 * 1024 * 1024 });
}

const study: ResearchStudy = { resourceType: 'ResearchStudy', id: 's1', status: 'active', identifier: [{ system: 'urn:trial:hostile:research-study', value: STUDY }] };
const searchset = (resources: Resource[], extra: Partial<Bundle> = {}): Bundle => ({
  resourceType: 'Bundle',
  type: 'searchset',
  entry: resources.map((resource) => ({ resource, search: { mode: 'match' } })),
  ...extra,
});

/** A FHIR server that misbehaves as `handler` says; counts the requests it got. */
type Handler = (req: IncomingMessage, res: ServerResponse, base: string) => void;
let handler: Handler = (_req, res) => res.end();
let requests = 0;
let hostile: Server;
let hostileBase: string;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tb-report-hostile-'));
  hostile = createServer((req, res) => {
    requests++;
    handler(req, res, hostileBase);
  });
  await new Promise<void>((r) => hostile.listen(0, '127.0.0.1', () => r()));
  hostileBase = `http://127.0.0.1:${(hostile.address() as AddressInfo).port}/fhir`;
});

afterAll(async () => {
  hostile.closeAllConnections();
  await new Promise<void>((r) => hostile.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

function answer(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

/** The single line a failed report prints: `report: <reason>`, no stack trace, no raw control character. */
function expectOneLine(run: Run, reason: RegExp): void {
  expect(run.code).toBe(1);
  expect(run.stderr).toMatch(/^report: [^\n]*\n$/);
  expect(run.stderr).toMatch(reason);
  expect(run.stderr).not.toMatch(/\n\s+at /);
  expect(run.stderr).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
}

describe('report paging', () => {
  it('refuses a next link to a page it has already read (a link to itself)', { timeout: CLI_TEST_MS }, async () => {
    requests = 0;
    handler = (req, res, base) => answer(res, 200, searchset([study], { link: [{ relation: 'next', url: `${base.replace(/\/fhir$/, '')}${req.url}` }] }));
    const run = await report(hostileBase, join(dir, 'loop'));
    expectOneLine(run, /^report: ResearchStudy search: the server's next link points to a page already read \(a paging loop\); stopped after 1 pages$/m);
    expect(requests).toBe(1);
  });

  it('stops a server that pages without end, each link new, at the page cap', { timeout: CLI_TEST_MS }, async () => {
    requests = 0;
    handler = (req, res, base) => {
      const page = Number(new URL(req.url!, 'http://x').searchParams.get('page') ?? '0');
      answer(res, 200, searchset([study], { link: [{ relation: 'next', url: `${base}/ResearchStudy?page=${page + 1}` }] }));
    };
    const run = await report(hostileBase, join(dir, 'endless'));
    expectOneLine(run, /^report: ResearchStudy search: more than 1000 pages; stopped/m);
    expect(requests).toBe(1000);
  });
});

describe('report failures: one line with the reason', () => {
  it("shows a server's error text with its terminal escapes escaped", { timeout: CLI_TEST_MS }, async () => {
    handler = (_req, res) =>
      answer(res, 403, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'forbidden', details: { text: `${ANSI}scope too narrow` } }] });
    const run = await report(hostileBase, join(dir, 'ansi'));
    expectOneLine(run, /HTTP 403/);
    expect(run.stderr).toContain('\\x1b]0;owned\\x1b\\\\x1b[2J\\x1b[31mscope too narrow');
  });

  it('an answer over the size cap', { timeout: CLI_TEST_MS }, async () => {
    handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+json', 'content-length': String(256 * 1024 * 1024) });
      res.write('{"resourceType":"Bundle","entry":[');
    };
    expectOneLine(await report(hostileBase, join(dir, 'huge')), /^report: ResearchStudy search: the server's answer is too large \(the answer \(HTTP 200\) is larger than \d+ bytes/);
  });

  it('an answer that drips in past the timeout', { timeout: CLI_TEST_MS }, async () => {
    const drips: NodeJS.Timeout[] = [];
    handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/fhir+json' });
      const drip = setInterval(() => res.write(' '), 100);
      drips.push(drip);
      res.on('close', () => clearInterval(drip));
    };
    try {
      expectOneLine(await report(hostileBase, join(dir, 'drip'), '--timeout', '1000'), /^report: ResearchStudy search: no complete answer within 1000 ms \(--timeout\)$/m);
    } finally {
      drips.forEach(clearInterval);
    }
  });
});

describe('a study without follow-up dates', () => {
  let server: EmbeddedFhirServer;

  beforeAll(async () => {
    server = await startEmbeddedFhirServer();
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const created = (await client.post<ResearchStudy>('ResearchStudy', { ...study, id: undefined })).body!;
    for (let i = 1; i <= 3; i++) {
      const patient = (await client.post<Patient>('Patient', { resourceType: 'Patient', identifier: [{ system: 'urn:trial:hostile:site-x:patient', value: `P${i}` }] })).body!;
      // No period: neither enrolment nor end of follow-up.
      await client.post<ResearchSubject>('ResearchSubject', {
        resourceType: 'ResearchSubject',
        status: 'on-study',
        identifier: [{ system: 'urn:trial:hostile:site-x:research-subject', value: `S${i}` }],
        study: { reference: `ResearchStudy/${created.id}` },
        individual: { reference: `Patient/${patient.id}` },
      });
      await client.post<AdverseEvent>('AdverseEvent', {
        resourceType: 'AdverseEvent',
        actuality: 'actual',
        subject: { reference: `Patient/${patient.id}` },
        study: [{ reference: `ResearchStudy/${created.id}` }],
        event: { coding: [{ system: 'https://www.meddra.org', code: '10012735', display: `${ANSI}Diarrhoea` }] },
      });
    }
  });

  afterAll(async () => {
    await server?.close();
  });

  it('still gets its report, with the survival section marked, and values from the server shown escaped', { timeout: CLI_TEST_MS }, async () => {
    const out = join(dir, 'no-follow-up');
    const run = await report(server.baseUrl, out);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`Study ${STUDY}: 3 subjects`);
    expect(run.stdout).toContain('survival not estimated: no subject has an enrolment date with a death or end of follow-up date');
    expect(run.stdout).toContain('\\x1b[2J\\x1b[31mDiarrhoea 3/3');
    expect(run.stdout).not.toContain(ESC);
    const html = await readFile(join(out, 'report.html'), 'utf8');
    expect(html).toMatch(/<figure class="km no-data" id="km-os"><figcaption>Overall survival: not estimated/);
    expect(html).toMatch(/<figure class="km no-data" id="km-pfs">/);
  });
});
