/**
 * Validation benchmark: resources/s of trialbridge's compiled validator and of @medplum/core validateResource on
 * the same resources in one run (rounds interleaved so machine noise hits both), medians of the rounds.
 * Resources: the three sample sites' output (valid) plus the planted-defect corpus (invalid). Findings are
 * compared first: every error @medplum/core reports must be among ours, or the figures mean nothing.
 *
 * Two comparisons: against the trial profiles named in meta.profile (what the pipeline does), and against
 * base R4 only (no profile), since @medplum/core re-parses a profile StructureDefinition on every call.
 */
import { readdirSync, readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { getDataType, OperationOutcomeError, validateResource } from '@medplum/core';
import type { OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { mapExport } from '../src/bundle/map-export.ts';
import { compileMapping } from '../src/mapping/compile.ts';
import { loadMapping } from '../src/mapping/load.ts';
import { ValidatorCompiler } from '../src/validation/compiled.ts';
import { ResourceValidator } from '../src/validation/validator.ts';

const quick = process.argv.includes('--quick');
const ROUNDS = quick ? 3 : 7;
const WARMUP = quick ? 1 : 2;

const profiles = new Map<string, StructureDefinition>();
for (const name of readdirSync('profiles')) {
  if (!name.startsWith('StructureDefinition-')) continue;
  const sd = JSON.parse(readFileSync(`profiles/${name}`, 'utf8')) as StructureDefinition;
  profiles.set(sd.url!, sd);
}

const resources: Resource[] = [];
for (const site of ['site-a', 'site-b', 'site-c']) {
  const mapping = await compileMapping(await loadMapping(`mappings/${site}.yaml`));
  const mapped = await mapExport(mapping, [`examples/${site}`], { recorded: '2019-01-01T00:00:00Z', validate: false });
  for (const { bundle } of mapped.bundles) for (const entry of bundle.entry ?? []) resources.push(entry.resource!);
}
const corpus = (JSON.parse(readFileSync('test/validation-corpus/corpus.json', 'utf8')) as { resource: Resource }[]).map((c) => c.resource);
const all = [...resources, ...corpus];

const validator = await ResourceValidator.load();
const baseCompiled = new ValidatorCompiler();
const errorsOnly = (issues: OperationOutcomeIssue[]) => issues.filter((i) => i.severity === 'error');
function medplum(resource: Resource, withProfile: boolean): OperationOutcomeIssue[] {
  const profile = withProfile && resource.meta?.profile?.[0] ? profiles.get(resource.meta.profile[0]) : undefined;
  try {
    return errorsOnly(validateResource(resource, profile ? { profile } : undefined));
  } catch (err) {
    if (err instanceof OperationOutcomeError) return errorsOnly(err.outcome.issue ?? []);
    throw err;
  }
}
const ours = (resource: Resource) => errorsOnly(validator.validate(resource));
const oursBase = (resource: Resource) => errorsOnly(baseCompiled.validate(resource, getDataType(resource.resourceType)));

// Findings first.
const key = (i: OperationOutcomeIssue) => `${i.expression?.[0]}|${i.details?.text}`;
let medplumFindings = 0;
let oursFindings = 0;
let missed = 0;
for (const [mine, theirs] of [
  [ours, (r: Resource) => medplum(r, true)],
  [oursBase, (r: Resource) => medplum(r, false)],
] as const) {
  for (const r of all) {
    const a = theirs(r);
    const found = mine(r);
    const b = new Set(found.map(key));
    medplumFindings += a.length;
    oursFindings += b.size;
    // As test/validation-corpus.test.ts counts: the same finding, or one at an enclosing location (@medplum/core
    // reports `"event": "Diarrhoea"` once per character); a finding without a location counts for the resource.
    const covered = (i: OperationOutcomeIssue) =>
      b.has(key(i)) || (i.expression?.[0] === undefined ? found.length > 0 : found.some((o) => i.expression![0].startsWith(`${o.expression?.[0]}.`)));
    missed += a.filter((i) => !covered(i)).length;
  }
}
console.log(`findings on ${all.length} resources (${corpus.length} with a planted defect), both modes: @medplum/core ${medplumFindings}, trialbridge ${oursFindings}, reported by @medplum/core but not by trialbridge: ${missed}`);
if (missed > 0) process.exitCode = 1;

function rate(fn: (r: Resource) => unknown, list: Resource[]): number {
  const start = performance.now();
  for (const r of list) fn(r);
  return list.length / ((performance.now() - start) / 1000);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const series: Record<string, number[]> = { 'trialbridge (profiles)': [], '@medplum/core (profiles)': [], 'trialbridge (base R4)': [], '@medplum/core (base R4)': [] };
for (let round = 0; round < WARMUP + ROUNDS; round++) {
  const figures = {
    'trialbridge (profiles)': rate(ours, all),
    '@medplum/core (profiles)': rate((r) => medplum(r, true), all),
    'trialbridge (base R4)': rate(oursBase, all),
    '@medplum/core (base R4)': rate((r) => medplum(r, false), all),
  };
  if (round >= WARMUP) for (const [name, value] of Object.entries(figures)) series[name].push(value);
}
const medians = Object.fromEntries(Object.entries(series).map(([name, xs]) => [name, Math.round(median(xs))]));
console.log(`\nvalidated resources/s, median of ${ROUNDS} rounds over ${all.length} resources (after ${WARMUP} warm-up rounds):`);
for (const [name, value] of Object.entries(medians)) console.log(`  ${name.padEnd(28)} ${String(value).padStart(8)}`);
const profileRatio = medians['trialbridge (profiles)'] / medians['@medplum/core (profiles)'];
const baseRatio = medians['trialbridge (base R4)'] / medians['@medplum/core (base R4)'];
console.log(`\ntrialbridge / @medplum/core, with the trial profiles: ${profileRatio.toFixed(1)}x (goal >= 10x)`);
console.log(`trialbridge / @medplum/core, base R4 only:            ${baseRatio.toFixed(1)}x`);
mkdirSync('bench/results', { recursive: true });
writeFileSync(
  `bench/results/validation${quick ? '.quick' : ''}.json`,
  JSON.stringify({ date: new Date().toISOString(), node: process.version, resources: all.length, rounds: ROUNDS, warmup: WARMUP, medians, series, ratios: { profiles: profileRatio, base: baseRatio }, findings: { medplum: medplumFindings, trialbridge: oursFindings, missed } }, null, 2) + '\n',
);
