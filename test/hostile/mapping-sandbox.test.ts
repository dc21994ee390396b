/**
 * Mapping files from a less trusted author: expressions cannot reach the environment, files or network, a
 * pathological expression is stopped by the evaluation budget with a reject naming the record and field, and
 * YAML alias bombs, oversized files and paths outside the mapping's directory are refused before anything runs.
 */
import { copyFile, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { defaultValidator, mapExport } from '../../src/bundle/map-export.ts';
import { setEvaluationLimits } from '../../src/mapping/budget.ts';
import { compileMapping } from '../../src/mapping/compile.ts';
import { MappingError } from '../../src/mapping/errors.ts';
import { compileExpression, EvalContext, unsafeRegex } from '../../src/mapping/expression.ts';
import { loadMapping } from '../../src/mapping/load.ts';
import type { SourceRecord } from '../../src/source/record.ts';
import type { ResourceValidator } from '../../src/validation/validator.ts';
import { baseMappingDir } from '../support/mapping-dir.ts';

const SITE_A = await readFile('mappings/site-a.yaml', 'utf8');
const RECORDED = '2020-01-01T00:00:00Z';
let dir: string;
let validator: ResourceValidator;
/** Counts requests: nothing a mapping says may make the process call it. */
let canary: Server;
let canaryHits = 0;
let canaryUrl: string;

beforeAll(async () => {
  dir = await baseMappingDir('tb-sandbox-');
  validator = await defaultValidator();
  canary = createServer((_req, res) => {
    canaryHits++;
    res.end('{}');
  });
  await new Promise<void>((r) => canary.listen(0, '127.0.0.1', () => r()));
  canaryUrl = `http://127.0.0.1:${(canary.address() as AddressInfo).port}/canary`;
});

afterAll(async () => {
  await new Promise<void>((r) => canary.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

let restoreLimits: (() => void) | undefined;
afterEach(() => {
  restoreLimits?.();
  restoreLimits = undefined;
});

/** Site A's mapping with the adverse events' `verbatim` taken from `expression` instead of item_text. */
async function siteAWith(expression: string, name = `site-a-${Math.random().toString(36).slice(2)}.yaml`): Promise<string> {
  const text = SITE_A.replace(
    'verbatim: { $expr: item_text }',
    `verbatim: { $expr: ${JSON.stringify(expression)} }`,
  );
  if (!text.includes(JSON.stringify(expression))) throw new Error('site-a.yaml changed: the test cannot plant its expression');
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

async function compileError(path: string): Promise<MappingError> {
  const error = await loadMapping(path)
    .then(compileMapping)
    .then(
      () => undefined,
      (err: unknown) => err,
    );
  expect(error).toBeInstanceOf(MappingError);
  return error as MappingError;
}

const record = (fields: Record<string, string>): SourceRecord => ({ site: 's', file: 'f.csv', row: 2, type: 'AE', subject: 'S1', key: 'K1', fields });

function evaluate(expression: string, fields: Record<string, string>, others: SourceRecord[] = []): unknown[] {
  const r = record(fields);
  return compileExpression(expression, new Map()).evaluate(new EvalContext(r, [r, ...others], new Map()));
}

describe('what an expression can reach', () => {
  it('reads neither the environment nor files: there is no such variable or function', () => {
    process.env.TB_SANDBOX_CANARY = 'canary-secret-value';
    // An unknown %name is an empty let or an error; a dotted path is field navigation in the record.
    for (const expression of ['%env', '%env.TB_SANDBOX_CANARY', '%process.env', '%ENV', 'process.env.TB_SANDBOX_CANARY', 'env', '%subject.env']) {
      let outcome: string;
      try {
        outcome = JSON.stringify(evaluate(expression, { AETERM: 'x' }));
        expect(outcome, expression).toBe('[]');
      } catch (err) {
        outcome = (err as Error).message;
        expect(outcome, expression).toMatch(/Undefined variable/);
      }
      expect(outcome).not.toContain('canary-secret-value');
    }
    for (const call of ["require('fs')", "readFile('/etc/passwd')", "import('fs')", 'eval(AETERM)', "exec('id')", "fetch('http://x')", "AETERM.constructor('return process')()"]) {
      expect(() => evaluate(call, { AETERM: 'x' }), call).toThrow(/not allowed|Unexpected|Invalid|Unrecognized/);
    }
  });

  it('refuses, when the mapping compiles, the functions that log, fetch, read the clock or do nothing', async () => {
    for (const fn of ["trace('x')", 'resolve()', 'now()', 'today()', 'timeOfDay()', 'repeat($this)', 'descendants()', 'children()', "split(',')", "encode('base64')"]) {
      const error = await compileError(await siteAWith(`item_text.${fn}`));
      expect(error.issues).toEqual([
        expect.objectContaining({ key: 'resources.adverse-event.let.verbatim.$expr', line: 98, message: expect.stringMatching(new RegExp(`function '${fn.split('(')[0]}\\(\\)' is not allowed`)) }),
      ]);
    }
  });

  it('never calls a URL that a mapping or a record names', async () => {
    const path = await siteAWith(`'${canaryUrl}'.resolve().exists().toString() & item_text`);
    const error = await compileError(path);
    expect(error.message).toMatch(/function 'resolve\(\)' is not allowed/);
    // A record value that is a URL stays a string: reference(), conformsTo() and the like fetch nothing.
    expect(evaluate("AETERM.conformsTo('http://hl7.org/fhir/StructureDefinition/Patient')", { AETERM: canaryUrl })).toEqual([false]);
    expect(evaluate('AETERM.getReferenceKey()', { AETERM: canaryUrl })).toEqual([]);
    expect(canaryHits).toBe(0);
  });

  it('takes only literal regexes, and refuses at load what the linear-time engine cannot run', () => {
    expect(unsafeRegex('^[A-Z]{2}\\d+$')).toBeUndefined();
    expect(unsafeRegex('^\\d+(\\.\\d+)?$')).toBeUndefined();
    // Nested and alternating repetition backtracks on a JavaScript RegExp; the linear-time engine runs it.
    expect(unsafeRegex('(a+)+$')).toBeUndefined();
    expect(unsafeRegex('(a|aa)*b')).toBeUndefined();
    expect(unsafeRegex('(x)\\1')).toMatch(/back-references are not supported/);
    expect(unsafeRegex('a(?=b)')).toMatch(/lookarounds are not supported/);
    expect(unsafeRegex('(?<!a)b')).toMatch(/lookarounds are not supported/);
    expect(unsafeRegex('(a{1000}){1000}')).toMatch(/repetition count over 1000/);
    expect(unsafeRegex('[')).toMatch(/invalid regular expression/);
    expect(() => evaluate('AETERM.matches(OTHER)', { AETERM: 'x' })).toThrow(/takes a literal regular expression/);
    expect(() => evaluate("AETERM.matches('(a)\\\\1')", { AETERM: 'x' })).toThrow(/back-references are not supported/);
    expect(evaluate("AETERM.matches('^N')", { AETERM: 'Nausea' })).toEqual([true]);
    expect(evaluate("AETERM.matches('(a+)+$')", { AETERM: `${'a'.repeat(400)}!` })).toEqual([false]);
    expect(evaluate("AETERM.replaceMatches('(?<d>\\\\d+)-(\\\\d+)', '$2/${d}')", { AETERM: 'x 12-34 y' })).toEqual(['x 34/12 y']);
    // The input is capped too: a long value is refused rather than searched.
    expect(() => evaluate("AETERM.matches('^a*b')", { AETERM: 'a'.repeat(10_000) })).toThrow(/stopped: a regular expression on a value of 10000 characters/);
  });
});

describe('file-name globs', () => {
  it('run on the linear-time engine, and a glob past its program limit is refused naming the pattern', async () => {
    const mapping = await compileMapping(await loadMapping('mappings/site-a.yaml'));
    // `*a*a*…` against a long name backtracks polynomially on a RegExp; here it is a plain automaton.
    const stars = { ...mapping, files: mapping.files.map((f) => ({ ...f, match: `${'*x'.repeat(200)}*` })) };
    await expect(mapExport(stars, ['examples/site-a'], { recorded: RECORDED, validate: false })).rejects.toThrow(/no input file matches/);
    const huge = { ...mapping, files: mapping.files.map((f) => ({ ...f, match: `${'*'.repeat(3000)}x` })) };
    await expect(mapExport(huge, ['examples/site-a'], { recorded: RECORDED, validate: false })).rejects.toThrow(/file name pattern not usable: the regular expression compiles to \d+ instructions \(limit 5000\)/);
  });
});

describe('the evaluation budget', () => {
  it('stops a pathological expression over a whole export: only the records of that rule are rejected, naming row, field and reason', async () => {
    // records^6 steps: past the budget for every subject of the sample.
    const nested = '%subject.all.select(%subject.all.select(%subject.all.select(%subject.all.select(%subject.all.select(%subject.all.count())))))';
    const mapping = await compileMapping(await loadMapping(await siteAWith(nested)));
    const started = performance.now();
    const mapped = await mapExport(mapping, ['examples/site-a'], { recorded: RECORDED, validator });
    const ms = performance.now() - started;
    const stopped = mapped.summary.rejects.filter((r) => /stopped: more than 200000 evaluation steps/.test(r.reason));
    const lines = (await readFile('examples/site-a/export.csv', 'utf8')).split('\n');
    const aeRows = lines.flatMap((l, i) => (l.split(',')[2] === 'AE' ? [i + 1] : []));
    // Every adverse event is stopped, but those of a subject that is missing or not enrolled (never mapped).
    const unmapped = mapped.summary.rejects.filter((r) => aeRows.includes(r.row) && r.field === 'subject_id').length;
    expect(stopped.map((r) => r.row).sort((a, b) => a - b)).toEqual(aeRows.filter((row) => !mapped.summary.rejects.some((r) => r.row === row && r.field === 'subject_id')));
    expect(stopped.length).toBe(aeRows.length - unmapped);
    expect(stopped[0]).toMatchObject({ file: 'export.csv', reason: expect.stringContaining("expression '%subject.all.select(") });
    expect(mapped.summary.subjects).toBe(18);
    expect(mapped.summary.resourcesByType.AdverseEvent ?? 0).toBe(0);
    console.info(`${stopped.length} adverse events stopped by the step budget in ${ms.toFixed(0)} ms (${(ms / stopped.length).toFixed(1)} ms each)`);
    expect(ms / stopped.length).toBeLessThan(1000);
  });

  it('stops on time, on string size and on collection size, on both the general engine and the fast path', () => {
    const others = Array.from({ length: 60 }, (_, i) => record({ AETERM: `t${i}`, AESEQ: String(i) }));
    restoreLimits = ((previous) => () => setEvaluationLimits(previous))(setEvaluationLimits({ maxMillis: 30, maxSteps: 1e12 }));
    expect(() => evaluate('%subject.all.select(%subject.all.select(%subject.all.select(%subject.all.count())))', {}, others)).toThrow(/stopped: took longer than 30 ms/);
    restoreLimits();
    restoreLimits = ((previous) => () => setEvaluationLimits(previous))(setEvaluationLimits({ maxStringLength: 1000 }));
    expect(() => evaluate("%subject.all.AETERM.join('" + 'x'.repeat(40) + "')", {}, others)).toThrow(/stopped: a string of \d+ characters \(limit 1000\)/);
    // `&` and `+` of plain fields are on the fast path.
    expect(() => evaluate('A & A & A', { A: 'y'.repeat(400) })).toThrow(/stopped: a string of 1200 characters/);
    restoreLimits();
    restoreLimits = ((previous) => () => setEvaluationLimits(previous))(setEvaluationLimits({ maxCollection: 1000 }));
    expect(() => evaluate('%subject.all.select(%subject.all)', {}, others)).toThrow(/stopped: a collection of \d+ items \(limit 1000\)/);
    restoreLimits();
    restoreLimits = ((previous) => () => setEvaluationLimits(previous))(setEvaluationLimits({ maxSteps: 500 }));
    // Nested where() runs on the fast path (closures), which ticks the same budget.
    expect(() => evaluate("%subject.all.where(%subject.all.where(AETERM = 't1').exists()).exists()", {}, others)).toThrow(/stopped: more than 500 evaluation steps/);
    expect(evaluate("%subject.all.where(AETERM = 't1').AESEQ", {}, others)).toEqual(['1']);
  });

  it('leaves ordinary expressions alone', () => {
    expect(evaluate("iif(AETOXGR.toInteger() >= 3, 'severe', 'mild')", { AETOXGR: '3' })).toEqual(['severe']);
    expect(evaluate("%subject.all.where(AETERM = 't1').count()", {}, [record({ AETERM: 't1' })])).toEqual([1]);
  });
});

describe('mapping files', () => {
  function billionLaughs(): string {
    const lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (let i = 1; i < 10; i++) lines.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
    return `${lines.join('\n')}\nsite: x\n`;
  }

  it('refuses a YAML alias bomb ("billion laughs") quickly, naming the file', async () => {
    const path = join(dir, 'bomb.yaml');
    await writeFile(path, billionLaughs());
    const started = performance.now();
    const error = await compileError(path);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(error.message).toMatch(/bomb\.yaml: \(top level\): YAML aliases refused: .*\(more than 100 alias expansions\)/);
  });

  it('refuses an alias bomb through merge keys, in a base the site extends', async () => {
    const merges = ['b0: &b0 {x: 1}', ...Array.from({ length: 20 }, (_, i) => `b${i + 1}: &b${i + 1}\n  <<: [*b${i}, *b${i}]\n  y${i}: 1`)].join('\n');
    await writeFile(join(dir, 'merge-base.yaml'), `${merges}\n`);
    await writeFile(join(dir, 'merge-site.yaml'), 'extends: merge-base.yaml\nsite: x\n');
    const error = await compileError(join(dir, 'merge-site.yaml'));
    expect(error.message).toMatch(/merge-base\.yaml: \(top level\): YAML aliases refused/);
  });

  it('refuses duplicate keys and oversized mapping files', async () => {
    await writeFile(join(dir, 'dup.yaml'), 'site: a\nversion: "1"\nsite: b\n');
    expect((await compileError(join(dir, 'dup.yaml'))).message).toMatch(/dup\.yaml:3: \(top level\): YAML syntax: Map keys must be unique/);
    await writeFile(join(dir, 'huge.yaml'), `site: x\nnote: "${'x'.repeat(1024 * 1024)}"\n`);
    expect((await compileError(join(dir, 'huge.yaml'))).message).toMatch(/huge\.yaml: \(top level\): mapping file is \d+ bytes, over the limit of 1048576/);
  });

  it('reads only mapping files it extends and ConceptMaps inside the directory of the file that names them', async () => {
    await writeFile(join(dir, 'passwd.yaml'), 'extends: /etc/passwd\nsite: x\n');
    expect((await compileError(join(dir, 'passwd.yaml'))).message).toMatch(/passwd\.yaml:1: extends: must name a \.yaml or \.yml mapping file/);
    const secret = join(dir, 'secret.json');
    await writeFile(secret, 'password=hunter2-not-json');
    await mkdir(join(dir, 'site'), { recursive: true });
    await copyFile(join(dir, 'ldccrt-hcc-base.yaml'), join(dir, 'site', 'ldccrt-hcc-base.yaml'));
    await cp(join(dir, 'terminology'), join(dir, 'site', 'terminology'), { recursive: true });
    const text = SITE_A.replace(/^conceptMaps:.*$/m, '').concat(`\nconceptMaps:\n  stolen: ../secret.json\n`);
    await writeFile(join(dir, 'site', 'site-a.yaml'), text);
    const error = await compileError(join(dir, 'site', 'site-a.yaml'));
    expect(error.issues).toEqual([expect.objectContaining({ key: 'conceptMaps.stolen', message: expect.stringMatching(/'\.\.\/secret\.json' is outside the directory of the mapping file that names it/) })]);
    expect(error.message).not.toContain('hunter2');
  });
});
