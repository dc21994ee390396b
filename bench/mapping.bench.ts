/**
 * `npm run bench [-- --quick] [-- --rounds N] [-- --sample DIR]`: speed of the mapping engine on site-c (SDTM), against a hand-written
 * TypeScript mapper and the same mapping in JSONata, all producing the same FHIR bundles.
 *
 * 1. Equivalence: on the unscaled sample, the three mappers' bundles (JSON text) must be identical; else exit 1.
 * 2. Scale: the sample minus the rows the engine rejects, replicated with new USUBJIDs (`<id>-R0001`, ...) until
 *    there are ≥ 100,000 AE rows (10,000 with --quick), written as CSV to a temp dir and read ONCE. JSONata maps the
 *    first copies only, ~1,000 AE rows (~20x slower, it would take minutes per run; records/s barely depends on scale).
 * 3. Timing: per round, engine → hand-written → JSONata (interleaved); 1 warm-up round (on the JSONata subset) then
 *    3 timed rounds (`--rounds N`): the sample has 291 EX rows for 40 AE rows, so 100,000 AE rows are 1.28 M records
 *    and a full-scale round takes ~45 s on 2 cores; 5 rounds would not fit the ~3 minute budget;
 *    each run = mapping + one transaction bundle per subject + JSON.stringify of every bundle, called on batches of
 *    140 subjects (the same batches for all; one call over ~1.2 M records exhausts the default heap). Medians reported.
 * Results: table on stdout and bench/results/mapping.json.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import type { Bundle } from '@medplum/fhirtypes';
import { compileMapping, type CompiledMapping } from '../src/mapping/compile.ts';
import { mapRecords } from '../src/mapping/engine.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { readSourceRecords } from '../src/mapping/records.ts';
import type { SourceRecord } from '../src/source/record.ts';
import { subjectBundle } from '../src/bundle/transaction.ts';
import { loadMeddraMap, mapSiteC } from './handwritten-site-c.ts';
import { jsonataMapper } from './jsonata-site-c.ts';

const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const sampleArg = args.indexOf('--sample');
const ROOT = new URL('..', import.meta.url).pathname;
const SAMPLE = sampleArg >= 0 ? args[sampleArg + 1] : join(ROOT, 'examples/site-c');
const MAPPING = join(ROOT, 'mappings/site-c.yaml');
const TARGET_AE_ROWS = QUICK ? 10_000 : 100_000;
const roundsArg = args.indexOf('--rounds');
/** Median of 3 by default: one full-scale round of the three mappers takes ~45 s on 2 cores (see the header). */
const TIMED_ROUNDS = roundsArg >= 0 ? Number(args[roundsArg + 1]) : 3;
/** JSONata maps only the first copies, about this many AE rows (it is ~20x slower than the engine). */
const JSONATA_AE_ROWS = QUICK ? 250 : 1_000;
/** Subjects mapped per call (see batchesOf). */
const BATCH_SUBJECTS = 140;
const RECORDED = '2025-01-01T00:00:00Z';
const FILES = ['dm.csv', 'ex.csv', 'pr.csv', 'ae.csv', 'rs.csv', 'ds.csv'];

type Mapper = (records: readonly SourceRecord[]) => Bundle[] | Promise<Bundle[]>;

function engineMapper(mapping: CompiledMapping): Mapper {
  return (records) => mapRecords(mapping, records).subjects.map((s) => subjectBundle(mapping, s, { recorded: RECORDED }));
}

// ---- CSV files -------------------------------------------------------------------------------------------

interface CsvFile {
  readonly name: string;
  readonly header: string[];
  /** Rows with their line number as readCsv numbers them. */
  readonly rows: { line: number; values: Record<string, string> }[];
}

async function readCsvFile(dir: string, name: string): Promise<CsvFile> {
  let text = await readFile(join(dir, name), 'utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const parsed = parse(text, { columns: (h: string[]) => h.map((c) => c.trim()), info: true, skip_empty_lines: true, relax_quotes: true }) as {
    record: Record<string, string>;
    info: { lines: number };
  }[];
  const header = (parse(text, { to_line: 1 }) as string[][])[0].map((c) => c.trim());
  return { name, header, rows: parsed.map((p) => ({ line: p.info.lines, values: p.record })) };
}

async function writeCsvFiles(dir: string, files: readonly CsvFile[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const f of files) {
    await writeFile(join(dir, f.name), stringify(f.rows.map((r) => f.header.map((h) => r.values[h] ?? '')), { header: true, columns: f.header }));
  }
}

// ---- equivalence -----------------------------------------------------------------------------------------

function firstDifference(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const from = Math.max(0, i - 160);
  return `at char ${i}:\n      engine: …${a.slice(from, i + 160)}…\n      other:  …${b.slice(from, i + 160)}…`;
}

async function checkEquivalence(label: string, records: readonly SourceRecord[], mappers: Record<string, Mapper>): Promise<boolean> {
  const outputs: Record<string, string[]> = {};
  for (const [name, mapper] of Object.entries(mappers)) outputs[name] = (await mapper(records)).map((b) => JSON.stringify(b));
  const reference = outputs.engine;
  let ok = true;
  for (const [name, bundles] of Object.entries(outputs)) {
    if (name === 'engine') continue;
    if (bundles.length !== reference.length) {
      console.log(`  ${label}: ${name} made ${bundles.length} bundles, the engine ${reference.length}`);
      ok = false;
    }
    for (let i = 0; i < Math.min(bundles.length, reference.length); i++) {
      if (bundles[i] !== reference[i]) {
        console.log(`  ${label}: ${name} differs from the engine in bundle ${i + 1} ${firstDifference(reference[i], bundles[i])}`);
        ok = false;
        break;
      }
    }
  }
  const resources = reference.reduce((n, b) => n + (JSON.parse(b) as Bundle).entry!.length, 0);
  console.log(`  ${label}: ${records.length} records → ${reference.length} bundles, ${resources} entries; ${ok ? 'identical' : 'DIFFERENT'}`);
  return ok;
}

// ---- timing ----------------------------------------------------------------------------------------------

/**
 * Splits records into batches of whole subjects (export order kept). Every mapper maps subjects independently,
 * so mapping batch by batch is the same work as one call, without holding a million records' bundles at once
 * (one call over the full scale runs out of the default heap, and the GC of a multi-GB live heap would dominate).
 */
function batchesOf(records: readonly SourceRecord[], subjectsPerBatch: number): SourceRecord[][] {
  const batchOf = new Map<string, number>();
  const batches: SourceRecord[][] = [];
  for (const r of records) {
    let b = batchOf.get(r.subject);
    if (b === undefined) {
      b = Math.floor(batchOf.size / subjectsPerBatch);
      batchOf.set(r.subject, b);
    }
    (batches[b] ??= []).push(r);
  }
  return batches;
}

// A full collection before each run, so that no mapper pays for the garbage of the one before.
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

async function timeRun(mapper: Mapper, batches: readonly (readonly SourceRecord[])[]): Promise<{ ms: number; cpuMs: number; bytes: number; bundles: number }> {
  collect();
  const cpu = process.cpuUsage();
  const start = performance.now();
  let bytes = 0;
  let count = 0;
  for (const batch of batches) {
    const bundles = await mapper(batch);
    for (const b of bundles) bytes += JSON.stringify(b).length;
    count += bundles.length;
  }
  const used = process.cpuUsage(cpu);
  return { ms: performance.now() - start, cpuMs: (used.user + used.system) / 1000, bytes, bundles: count };
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// ---- main ------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const started = performance.now();
  const mapping = await compileMapping(await loadMapping(MAPPING));
  const meddra = loadMeddraMap();
  const jsonataSiteC = await jsonataMapper(meddra);
  const mappers: Record<string, Mapper> = {
    engine: engineMapper(mapping),
    'hand-written': (records) => mapSiteC(records, RECORDED, meddra),
    jsonata: (records) => jsonataSiteC.map(records, RECORDED),
  };

  // 1. Equivalence on the sample as it is (with its planted bad rows), then without the rows the engine rejects.
  console.log(`site-c sample: ${SAMPLE}`);
  const sample = (await readSourceRecords(mapping, [SAMPLE])).records;
  let identical = await checkEquivalence('sample', sample, mappers);

  const work = await mkdtemp(join(tmpdir(), 'trialbridge-bench-'));
  try {
    let files = await Promise.all(FILES.map((f) => readCsvFile(SAMPLE, f)));
    let clean = sample;
    for (let pass = 1; pass <= 5; pass++) {
      const problems = mapRecords(mapping, clean).problems;
      if (problems.length === 0) break;
      const bad = new Set(problems.map((p) => `${p.file}#${p.row}`));
      console.log(`  dropping ${bad.size} rows the engine rejects (pass ${pass})`);
      files = files.map((f) => ({ ...f, rows: f.rows.filter((r) => !bad.has(`${f.name}#${r.line}`)) }));
      const dir = join(work, `clean-${pass}`);
      await writeCsvFiles(dir, files);
      files = await Promise.all(FILES.map((f) => readCsvFile(dir, f)));
      clean = (await readSourceRecords(mapping, [dir])).records;
    }
    if (mapRecords(mapping, clean).problems.length > 0) throw new Error('the cleaned sample still has rejected rows');
    if (clean !== sample) identical = (await checkEquivalence('sample without rejected rows', clean, mappers)) && identical;
    console.log(`outputs identical: ${identical ? 'yes' : 'NO'}`);
    if (!identical) return 1;

    // 2. Scale up.
    const aeRows = files.find((f) => f.name === 'ae.csv')!.rows.length;
    const copies = Math.ceil(TARGET_AE_ROWS / aeRows);
    const scaled = files.map((f) => ({
      ...f,
      rows: Array.from({ length: copies }, (_, c) => {
        const suffix = `-R${String(c + 1).padStart(4, '0')}`;
        return f.rows.map((r) => ({ line: 0, values: { ...r.values, USUBJID: `${r.values.USUBJID}${suffix}` } }));
      }).flat(),
    }));
    const scaledDir = join(work, 'scaled');
    await writeCsvFiles(scaledDir, scaled);
    const read0 = performance.now();
    const records = (await readSourceRecords(mapping, [scaledDir])).records;
    const readMs = performance.now() - read0;
    const scaledAe = records.filter((r) => r.type === 'AE').length;
    const subjects = new Set(records.map((r) => r.subject)).size;
    console.log(`scaled: ${copies} copies of ${subjects / copies} subjects → ${subjects} subjects, ${scaledAe} AE rows, ${records.length} records (read in ${(readMs / 1000).toFixed(1)} s, not timed)`);

    // JSONata is ~15-20x slower than the engine: it runs on the first copies only (records/s hardly depends on scale),
    // so that the whole bench stays within a few minutes on 2 cores.
    const jsonataCopies = Math.max(1, Math.round(JSONATA_AE_ROWS / aeRows));
    const jsonataSubjects = new Set(records.filter((r) => r.type === 'DM' && Number(/-R(\d{4})$/.exec(r.subject)?.[1]) <= jsonataCopies).map((r) => r.subject));
    const jsonataRecords = records.filter((r) => jsonataSubjects.has(r.subject));
    const inputs: Record<string, readonly SourceRecord[]> = { engine: records, 'hand-written': records, jsonata: jsonataRecords };
    const allBatches = batchesOf(records, BATCH_SUBJECTS);
    const jsonataBatches = batchesOf(jsonataRecords, BATCH_SUBJECTS);
    const batches: Record<string, SourceRecord[][]> = { engine: allBatches, 'hand-written': allBatches, jsonata: jsonataBatches };
    console.log(`each run maps ${BATCH_SUBJECTS} subjects at a time (${allBatches.length} batches; the same batches for every mapper)`);
    console.log(`JSONata runs on the first ${jsonataCopies} copies: ${jsonataSubjects.size} subjects, ${jsonataRecords.filter((r) => r.type === 'AE').length} AE rows, ${jsonataRecords.length} records`);

    // 3. Interleaved timing. Round 0 warms up (JIT) every mapper on the JSONata subset: a full-scale warm-up round
    // would cost as much as a timed one.
    const names = Object.keys(mappers);
    const times: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    const cpuTimes: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    const sizes: Record<string, { bytes: number; bundles: number }> = {};
    for (let round = 0; round <= TIMED_ROUNDS; round++) {
      const line: string[] = [];
      for (const name of names) {
        const run = await timeRun(mappers[name], round === 0 ? jsonataBatches : batches[name]);
        if (round > 0) {
          times[name].push(run.ms);
          cpuTimes[name].push(run.cpuMs);
        }
        sizes[name] = { bytes: run.bytes, bundles: run.bundles };
        line.push(`${name} ${(run.ms / 1000).toFixed(2)} s (cpu ${(run.cpuMs / 1000).toFixed(2)} s)`);
      }
      console.log(`  ${round === 0 ? 'warm-up' : `round ${round}`}: ${line.join(', ')}`);
    }
    // Cheap cross-check at scale: same number of bundles and bytes of JSON as the engine on the same input.
    const engineOnSubset = await timeRun(mappers.engine, jsonataBatches);
    const sameOutput =
      sizes['hand-written'].bytes === sizes.engine.bytes &&
      sizes['hand-written'].bundles === sizes.engine.bundles &&
      sizes.jsonata.bytes === engineOnSubset.bytes &&
      sizes.jsonata.bundles === engineOnSubset.bundles;
    console.log(`  scaled outputs: ${sameOutput ? 'same bundle count and JSON size as the engine' : `DIFFER in size: ${JSON.stringify({ ...sizes, engineOnJsonataSubset: engineOnSubset })}`}`);

    // 4. Report.
    const rows = names.map((name) => {
      const ms = median(times[name]);
      const input = inputs[name];
      const aeRows = input === records ? scaledAe : input.filter((r) => r.type === 'AE').length;
      const cpuMs = median(cpuTimes[name]);
      return {
        mapper: name, aeRows, records: input.length, medianMs: ms, recordsPerSecond: input.length / (ms / 1000), runsMs: times[name],
        medianCpuMs: cpuMs, recordsPerCpuSecond: input.length / (cpuMs / 1000), runsCpuMs: cpuTimes[name],
      };
    });
    const hand = rows.find((r) => r.mapper === 'hand-written')!;
    const engine = rows.find((r) => r.mapper === 'engine')!;
    const jsonataRow = rows.find((r) => r.mapper === 'jsonata')!;
    const header = ['mapper', 'AE rows', 'total records', 'median ms', 'records/s', 'vs hand-written', 'median cpu ms', 'records/cpu-s', 'vs hand-written (cpu)'];
    const table = rows.map((r) => [
      r.mapper,
      r.aeRows.toLocaleString('en'),
      r.records.toLocaleString('en'),
      r.medianMs.toFixed(0),
      Math.round(r.recordsPerSecond).toLocaleString('en'),
      (r.recordsPerSecond / hand.recordsPerSecond).toFixed(3),
      r.medianCpuMs.toFixed(0),
      Math.round(r.recordsPerCpuSecond).toLocaleString('en'),
      (r.recordsPerCpuSecond / hand.recordsPerCpuSecond).toFixed(3),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
    const fmt = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
    console.log();
    console.log(fmt(header));
    for (const t of table) console.log(fmt(t));
    const vsHand = engine.recordsPerSecond / hand.recordsPerSecond;
    const vsJsonata = engine.recordsPerSecond / jsonataRow.recordsPerSecond;
    console.log();
    console.log(`engine / hand-written = ${vsHand.toFixed(3)} (goal ≥ 0.5)`);
    console.log(`engine / JSONata = ${vsJsonata.toFixed(2)} (goal ≥ 10)`);
    const cpuVsHand = engine.recordsPerCpuSecond / hand.recordsPerCpuSecond;
    const cpuVsJsonata = engine.recordsPerCpuSecond / jsonataRow.recordsPerCpuSecond;
    console.log(`by CPU time (less sensitive to other load on the machine; includes V8's GC threads): engine / hand-written = ${cpuVsHand.toFixed(3)}, engine / JSONata = ${cpuVsJsonata.toFixed(2)}`);

    const result = {
      date: new Date().toISOString(),
      quick: QUICK,
      node: process.version,
      cpus: availableParallelism(),
      cpu: cpus()[0]?.model,
      sample: { records: sample.length, cleanRecords: clean.length },
      scale: { copies, subjects, aeRows: scaledAe, records: records.length, readMs: Math.round(readMs), jsonataCopies },
      rounds: { warmup: 1, warmupOn: 'jsonata subset', timed: TIMED_ROUNDS, interleaved: names },
      batchSubjects: BATCH_SUBJECTS,
      outputsIdentical: identical,
      scaledOutputSameSize: sameOutput,
      mappers: rows.map((r) => ({
        ...r,
        medianMs: Math.round(r.medianMs), recordsPerSecond: Math.round(r.recordsPerSecond), runsMs: r.runsMs.map(Math.round),
        ratioVsHandwritten: Number((r.recordsPerSecond / hand.recordsPerSecond).toFixed(3)),
        medianCpuMs: Math.round(r.medianCpuMs), recordsPerCpuSecond: Math.round(r.recordsPerCpuSecond), runsCpuMs: r.runsCpuMs.map(Math.round),
      })),
      ratios: { engineVsHandwritten: Number(vsHand.toFixed(3)), engineVsJsonata: Number(vsJsonata.toFixed(2)) },
      cpuRatios: { engineVsHandwritten: Number(cpuVsHand.toFixed(3)), engineVsJsonata: Number(cpuVsJsonata.toFixed(2)) },
      goals: { engineVsHandwritten: 0.5, engineVsJsonata: 10 },
      totalSeconds: Math.round((performance.now() - started) / 1000),
    };
    const out = join(ROOT, 'bench/results', QUICK ? 'mapping.quick.json' : 'mapping.json');
    await mkdir(join(ROOT, 'bench/results'), { recursive: true });
    await writeFile(out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`written to ${out} (${result.totalSeconds} s in all)`);
    return 0;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

process.exitCode = await main();
