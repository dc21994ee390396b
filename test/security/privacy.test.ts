/**
 * Logs and error messages carry record keys, never names, birth dates or hospital patient numbers.
 *
 * The three sample sites, with a patient name and a hospital number planted on every subject and identifying
 * values planted as the bad values of rejected records, go through the whole service as an operator runs it:
 * `trialbridge serve` and `trialbridge worker` as child processes on Redis, delivering to an embedded FHIR
 * server; submissions (good, with rejects, and refused), the submission and dead-letter API, a replay,
 * `trialbridge dlq list/show` and `trialbridge map`. Everything they print (stdout, stderr, the audit log) and
 * every API answer is collected, then searched for every identifying value of the data.
 *
 * What counts as identifying: planted names and hospital numbers, and every birth date of the sample data in
 * the forms it was written and in ISO form. Year-only birth dates (site C's BRTHDTC for half the subjects) are
 * left out: a year alone does not identify (HIPAA Safe Harbor keeps it), and four digits turn up by chance in
 * hashes and ids.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashApiKey } from '../../src/api/keys.ts';
import { startEmbeddedFhirServer, type EmbeddedFhirServer } from '../../src/delivery/embedded-server.ts';

const REDIS_URL = 'redis://127.0.0.1:6379';
const KEYS = { 'site-a': `a-${randomUUID()}`, 'site-b': `b-${randomUUID()}`, 'site-c': `c-${randomUUID()}` } as const;
type Site = keyof typeof KEYS;

const GIVEN = ['Marguerite', 'Ottoline', 'Bartholomew', 'Philippa', 'Leopoldine', 'Ignatius', 'Cordelia', 'Evander', 'Rosalind', 'Thaddeus', 'Wilhelmina', 'Peregrine', 'Seraphina', 'Augustin', 'Henrietta', 'Lysander', 'Clementine', 'Barnaby', 'Ottilie', 'Fitzgerald'];
const FAMILY = ['Abernathy', 'Quillfeather', 'Vandersloot', 'Ashcombe', 'Pendergast', 'Whitlock', 'Ravensworth', 'Oakenshaw', 'Bramblecote', 'Harrowgate'];

/** Identifying values planted or found; each is searched for in everything the service printed or answered. */
const identifying = new Set<string>();

function personOf(n: number): { name: string; mrn: string } {
  const name = `${GIVEN[n % GIVEN.length]} ${FAMILY[Math.floor(n / GIVEN.length) % FAMILY.length]}`;
  const mrn = `MRN${String(4_400_000 + n * 7919)}`;
  // The name, and each part alone: a message cut short may quote only one of them.
  identifying.add(name);
  for (const part of name.split(' ')) identifying.add(part);
  identifying.add(mrn);
  return { name, mrn };
}

function addBirthDate(value: string | undefined): void {
  if (!value) return;
  const dmy = /^(\d{2})\/(\d{2})\/(\d{4})$/.exec(value);
  if (dmy) {
    identifying.add(value);
    identifying.add(`${dmy[3]}-${dmy[2]}-${dmy[1]}`);
  } else if (/^\d{4}-\d{2}(-\d{2})?$/.test(value)) {
    identifying.add(value);
  }
}

/** Naive CSV line split: the sample files quote only free text, never in the columns read here. */
const cells = (line: string) => line.split(',');

/** Site A: name and hospital number columns on every row, a name as an AE code, an impossible birth date. */
async function siteA(dir: string): Promise<void> {
  const lines = (await readFile('examples/site-a/export.csv', 'utf8')).split('\n');
  const header = cells(lines[0]);
  const subjectCol = header.indexOf('subject_id');
  const birthCol = header.indexOf('birth_date');
  const subjects = new Map<string, number>();
  let plantedCode = false;
  let plantedBirth = false;
  const out = lines.map((line, i) => {
    if (i === 0) return `${line},patient_name,hospital_number`;
    if (line === '') return line;
    const c = cells(line);
    addBirthDate(c[birthCol]);
    const subject = c[subjectCol];
    if (!subjects.has(subject)) subjects.set(subject, subjects.size);
    const person = personOf(subjects.get(subject)!);
    let row = line;
    if (!plantedCode && c[2] === 'AE' && !line.includes('"')) {
      plantedCode = true;
      const d = [...c];
      d[5] = person.name;
      row = d.join(',');
    } else if (!plantedBirth && c[2] === 'ENROL' && subjects.size > 3) {
      plantedBirth = true;
      const d = [...c];
      d[birthCol] = '31/02/1951';
      addBirthDate('31/02/1951');
      row = d.join(',');
    }
    return `${row},${person.name},${person.mrn}`;
  });
  expect(plantedCode && plantedBirth).toBe(true);
  await writeFile(join(dir, 'export.csv'), out.join('\n'));
}

/** Site B (REDCap): name and hospital number on the base records, a hospital number as a grade. */
async function siteB(dir: string): Promise<void> {
  const records = JSON.parse(await readFile('examples/site-b/records.json', 'utf8')) as Record<string, string>[];
  const subjects = new Map<string, number>();
  let planted = false;
  for (const r of records) {
    addBirthDate(r.birth_date);
    if (!subjects.has(r.record_id)) subjects.set(r.record_id, 100 + subjects.size);
    const person = personOf(subjects.get(r.record_id)!);
    if (r.redcap_repeat_instrument === '') Object.assign(r, { patient_name: person.name, hospital_number: person.mrn });
    if (!planted && r.redcap_repeat_instrument === 'adverse_event' && r.ae_grade !== '') {
      planted = true;
      r.ae_grade = person.mrn;
    }
  }
  expect(planted).toBe(true);
  await writeFile(join(dir, 'records.json'), `[\n${records.map((r) => JSON.stringify(r)).join(',\n')}\n]\n`);
  await writeFile(join(dir, 'data-dictionary.json'), await readFile('examples/site-b/data-dictionary.json'));
}

/** Site C (SDTM): name and hospital number columns in DM. */
async function siteC(dir: string): Promise<void> {
  for (const file of ['ae.csv', 'ds.csv', 'ex.csv', 'pr.csv', 'rs.csv']) await writeFile(join(dir, file), await readFile(join('examples/site-c', file)));
  const lines = (await readFile('examples/site-c/dm.csv', 'utf8')).split('\n');
  const birthCol = cells(lines[0]).indexOf('BRTHDTC');
  const out = lines.map((line, i) => {
    if (i === 0) return `${line},PATNAME,MRN`;
    if (line === '') return line;
    const c = cells(line);
    // Year-only values are left out (see the top of this file); month precision is kept.
    if (/^\d{4}-\d{2}$/.test(c[birthCol])) addBirthDate(c[birthCol]);
    const person = personOf(200 + i);
    return `${line},${person.name},${person.mrn}`;
  });
  await writeFile(join(dir, 'dm.csv'), out.join('\n'));
}

interface Proc {
  readonly child: ChildProcess;
  readonly output: () => string;
  readonly exited: Promise<number | null>;
}

function run(args: string[], env: Record<string, string>): Proc {
  let output = '';
  const child = spawn(process.execPath, ['src/cli/main.ts', ...args], { env: { ...process.env, REDIS_URL, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Resolves with the first line the process prints that matches `pattern` (its readiness line). */
function waitFor(proc: Proc, pattern: RegExp, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const line = proc.output().split('\n').find((l) => pattern.test(l));
      if (line === undefined) return false;
      cleanup();
      resolve(line);
      return true;
    };
    const onExit = () => {
      if (!check()) {
        cleanup();
        reject(new Error(`${what} exited before it was ready:\n${proc.output()}`));
      }
    };
    const cleanup = () => {
      proc.child.stdout!.off('data', check);
      proc.child.stderr!.off('data', check);
      proc.child.off('exit', onExit);
    };
    proc.child.stdout!.on('data', check);
    proc.child.stderr!.on('data', check);
    proc.child.on('exit', onExit);
    check();
  });
}

describe('privacy of logs and error messages', () => {
  let dir: string;
  let fhir: EmbeddedFhirServer;
  const procs: Proc[] = [];
  /** Everything printed or answered, with where it came from. */
  const captured: { source: string; text: string }[] = [];
  const prefix = `{tb-privacy-${randomUUID()}}`;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tb-privacy-'));
    for (const [site, build] of [['site-a', siteA], ['site-b', siteB], ['site-c', siteC]] as const) {
      await mkdir(join(dir, site));
      await build(join(dir, site));
    }
    fhir = await startEmbeddedFhirServer();
    await writeFile(
      join(dir, 'destinations.yaml'),
      ['destinations:', '  - name: hospital', '    kind: hospital', `    baseUrl: ${fhir.baseUrl}`, "    sites: '*'", '    retry: { attempts: 2, baseMs: 10, maxMs: 50 }', '    auth: { type: none }', ''].join('\n'),
    );
  });

  afterAll(async () => {
    for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await fhir?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('finds no name, birth date or hospital number in anything the service printed or answered', { timeout: 240_000 }, async () => {
    const common = ['-d', join(dir, 'destinations.yaml'), '--prefix', prefix];
    const worker = run(['worker', ...common], {});
    procs.push(worker);
    const auditLog = join(dir, 'audit.log');
    const serve = run(['serve', ...common, '--port', '0', '--audit-log', auditLog, '--upload-dir', join(dir, 'uploads')], {
      TRIALBRIDGE_API_KEYS: Object.entries(KEYS).map(([site, key]) => `${site}:${hashApiKey(key)}`).join(','),
    });
    procs.push(serve);
    const listening = JSON.parse(await waitFor(serve, /"event":"listening"/, 'serve')) as { port: number };
    await waitFor(worker, /"event":"ready"/, 'worker');
    const base = `http://127.0.0.1:${listening.port}`;
    const api = async (path: string, init: RequestInit & { site: Site }): Promise<{ status: number; json: unknown }> => {
      const res = await fetch(`${base}${path}`, { ...init, headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${KEYS[init.site]}` } });
      const text = await res.text();
      captured.push({ source: `${init.method ?? 'GET'} ${path}`, text });
      return { status: res.status, json: JSON.parse(text) as unknown };
    };

    // Good submissions (with their planted rejects), through multipart.
    const submissions: { site: Site; id: string }[] = [];
    for (const site of Object.keys(KEYS) as Site[]) {
      const form = new FormData();
      const names = site === 'site-a' ? ['export.csv'] : site === 'site-b' ? ['records.json', 'data-dictionary.json'] : ['dm.csv', 'ae.csv', 'ds.csv', 'ex.csv', 'pr.csv', 'rs.csv'];
      for (const name of names) form.append('files', new Blob([new Uint8Array(await readFile(join(dir, site, name)))]), name);
      const res = await api(`/v1/sites/${site}/submissions`, { method: 'POST', body: form, site });
      expect(res.status, JSON.stringify(res.json)).toBe(202);
      submissions.push({ site, id: (res.json as { id: string }).id });
    }
    // Refused submissions whose content holds identifying values right where a parser stops.
    const [person] = [personOf(0)];
    const refusals: [Site, string, string][] = [
      // V8's JSON.parse quotes the text around an unexpected token: a bare name is one.
      ['site-b', 'records.json', `[{"record_id":"101","patient_name":${person.name},"birth_date":"1951-02-31"}]`],
      ['site-b', 'records.json', `[{"record_id":"101","patient_name":"${person.name}" "birth_date":"1951-02-31"}]`],
      ['site-a', 'export.csv', `row_id,subject_id,record_type\nR1,A001,"${person.name}\n`],
      ['site-a', 'export.csv', `row_id,subject_id,record_type\r\n\u0000${person.mrn}`],
    ];
    const dictionary = { name: 'data-dictionary.json', content: await readFile('examples/site-b/data-dictionary.json', 'utf8') };
    for (const [site, name, content] of refusals) {
      const res = await api(`/v1/sites/${site}/submissions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ files: [{ name, content }, ...(site === 'site-b' ? [dictionary] : [])] }),
        site,
      });
      expect(res.status, JSON.stringify(res.json)).toBe(422);
      expect((res.json as { error: { file: string } }).error.file).toBe(name);
    }
    const bad = await api('/v1/sites/site-a/submissions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"files":[{"name":"export.csv","content":${person.name}}]}`, site: 'site-a' });
    expect(bad.status).toBe(400);

    // Follow each submission to its end, then read its dead letters one by one, and replay one.
    const deadLetterIds: string[] = [];
    for (const { site, id } of submissions) {
      await expect
        .poll(async () => ((await api(`/v1/submissions/${id}`, { site })).json as { status: string }).status, { timeout: 120_000, interval: 250 })
        .toBe('finished');
      const letters = (await api(`/v1/dead-letters?submission=${id}`, { site })).json as { deadLetters: { id: string; replayable: boolean }[] };
      expect(letters.deadLetters.length).toBeGreaterThan(0);
      for (const letter of letters.deadLetters) {
        await api(`/v1/dead-letters/${encodeURIComponent(letter.id)}`, { site });
        deadLetterIds.push(letter.id);
      }
      const replayable = letters.deadLetters.find((l) => l.replayable);
      if (replayable) expect((await api(`/v1/dead-letters/${encodeURIComponent(replayable.id)}/replay`, { method: 'POST', site })).status).toBe(202);
    }
    const mapped = (await api(`/v1/submissions/${submissions[0].id}`, { site: 'site-a' })).json as { counts: { delivered: number; rejected: { records: number } } };
    expect(mapped.counts.delivered).toBeGreaterThan(10);
    // The planted bad values were rejected: the name as an AE code, the impossible birth date, the MRN as a grade.
    expect(mapped.counts.rejected.records).toBeGreaterThanOrEqual(7);

    // The operator's commands.
    const cli = async (args: string[]) => {
      const proc = run(args, {});
      procs.push(proc);
      await proc.exited;
      captured.push({ source: `trialbridge ${args.slice(0, 2).join(' ')}`, text: proc.output() });
      return proc;
    };
    for (const { id } of submissions) await cli(['dlq', 'list', '--submission', id, '--prefix', prefix]);
    for (const id of deadLetterIds.slice(0, 12)) await cli(['dlq', 'show', id, '--prefix', prefix]);
    for (const site of Object.keys(KEYS) as Site[]) await cli(['map', '-m', `mappings/${site}.yaml`, join(dir, site), '-o', join(dir, 'out', site)]);

    serve.child.kill('SIGTERM');
    worker.child.kill('SIGTERM');
    expect(await serve.exited).toBe(0);
    expect(await worker.exited).toBe(0);
    captured.push({ source: 'serve', text: serve.output() }, { source: 'worker', text: worker.output() }, { source: 'audit log', text: await readFile(auditLog, 'utf8') });

    // The search is worth something only if the values are really in the data that went through.
    expect(identifying.size).toBeGreaterThan(100);
    expect(await readFile(join(dir, 'out', 'site-a', 'site-a.rejects.ndjson'), 'utf8')).toContain('31/02/1951');
    expect(captured.find((c) => c.source === 'audit log')!.text).toContain('submission.accepted');

    const found: string[] = [];
    for (const { source, text } of captured) {
      for (const value of identifying) {
        const pattern = new RegExp(`(?<![0-9A-Za-z])${value.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}(?![0-9])`);
        const at = pattern.exec(text);
        if (at) found.push(`${source}: '${value}' in …${text.slice(Math.max(0, at.index - 80), at.index + value.length + 40).replace(/\n/g, '⏎')}…`);
      }
    }
    expect(found).toEqual([]);
  });
});
