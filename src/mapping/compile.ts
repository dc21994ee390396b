import type { ResourceType } from '@medplum/fhirtypes';
import { MappingError, type MappingIssue } from './errors.ts';
import { BUILT_IN_VARIABLES, compileExpression, toTyped, type CompiledExpression } from './expression.ts';
import { letIssues } from './lets.ts';
import { resolveFromLayer, type LoadedMapping } from './load.ts';
import { compileNode, type CompileEnv, type Producer } from './template.ts';
import { conceptMapTranslation, valueMapTranslation, type CodeTranslation } from './terminology.ts';
import type { MappingSpec, SourceFileSpec } from './types.ts';
import type { TypedValue } from '@medplum/core';

export interface CompiledRule {
  readonly id: string;
  readonly type: ResourceType;
  readonly from: ReadonlySet<string>;
  readonly when?: CompiledExpression;
  readonly key?: CompiledExpression;
  readonly groupBy?: CompiledExpression;
  readonly identifierSystem: string;
  readonly lets: readonly (readonly [string, Producer])[];
  readonly template: Producer;
  readonly profiles: readonly string[];
  /** `%names` the rule's expressions use that are neither constants nor built-ins: lets, possibly undefined. */
  readonly variables: readonly string[];
}


/** `%name` tokens in every string of a rule (outside quoted literals). */
function variablesOf(node: unknown, constants: ReadonlyMap<string, unknown>, out = new Set<string>()): Set<string> {
  if (typeof node === 'string') {
    for (const m of node.replace(/'(?:[^'\\]|\\.)*'/g, "''").matchAll(/%([A-Za-z_][A-Za-z0-9_]*)/g)) {
      if (!BUILT_IN_VARIABLES.has(m[1]) && !constants.has(m[1])) out.add(m[1]);
    }
  } else if (Array.isArray(node)) node.forEach((n) => variablesOf(n, constants, out));
  else if (node && typeof node === 'object') Object.values(node).forEach((n) => variablesOf(n, constants, out));
  return out;
}

export interface CompiledSourceFile extends SourceFileSpec {
  readonly keyExpression?: CompiledExpression;
}

export interface CompiledMapping {
  readonly spec: MappingSpec;
  readonly loaded: LoadedMapping;
  readonly site: string;
  readonly version: string;
  /** Names the mapping and its version in Provenance. */
  readonly uri: string;
  readonly files: readonly CompiledSourceFile[];
  readonly dictionary?: string;
  readonly subject: CompiledExpression;
  readonly recordType?: CompiledExpression;
  readonly recordKey?: CompiledExpression;
  readonly enrolment: ReadonlySet<string>;
  readonly rules: readonly CompiledRule[];
  readonly constants: ReadonlyMap<string, TypedValue>;
  /** Record types some rule reads (`from`) or looks up (`%subject.TYPE`); others are rejected, not ignored. */
  readonly consumedTypes: ReadonlySet<string>;
}

/** Record types named as `%subject.TYPE` anywhere in the rules. */
function subjectLookups(node: unknown, out: Set<string>): Set<string> {
  if (typeof node === 'string') for (const m of node.matchAll(/%subject\.([A-Za-z_][A-Za-z0-9_]*)/g)) out.add(m[1]);
  else if (Array.isArray(node)) node.forEach((n) => subjectLookups(n, out));
  else if (node && typeof node === 'object') Object.values(node).forEach((n) => subjectLookups(n, out));
  return out;
}

const asList = (value: string | string[]) => (Array.isArray(value) ? value : [value]);

/** Turns a loaded mapping into closures, reporting every problem at once with its file and line. */
export async function compileMapping(loaded: LoadedMapping): Promise<CompiledMapping> {
  const spec = loaded.spec;
  const issues: MappingIssue[] = [];
  const issue = (path: readonly string[], message: string) => {
    const { file, line } = loaded.locate(path);
    issues.push({ file, line, key: path.join('.'), message });
  };

  const constantValues = new Map<string, unknown>(Object.entries(spec.constants ?? {}));
  constantValues.set('trialId', spec.trial.id);
  const constants = new Map<string, TypedValue>();
  for (const [name, value] of constantValues) constants.set(name, toTyped(value)!);

  const translations = new Map<string, CodeTranslation>();
  for (const [name, map] of Object.entries(spec.valueMaps ?? {})) translations.set(name, valueMapTranslation(name, map));
  for (const [name, file] of Object.entries(spec.conceptMaps ?? {})) {
    if (translations.has(name)) issue(['conceptMaps', name], `'${name}' is also a value map`);
    try {
      translations.set(name, await conceptMapTranslation(name, resolveFromLayer(loaded, ['conceptMaps', name], file)));
    } catch (err) {
      issue(['conceptMaps', name], `cannot load ConceptMap: ${(err as Error).message}`);
    }
  }

  const env: CompileEnv = {
    constants: constantValues,
    translations,
    rules: new Set(Object.keys(spec.resources)),
    dates: { formats: spec.dates?.formats, timezone: spec.dates?.timezone },
    issue,
  };
  const expr = (path: string[], source: string | undefined): CompiledExpression | undefined => {
    if (source === undefined) return undefined;
    try {
      return compileExpression(source, constantValues);
    } catch (err) {
      issue(path, `invalid FHIRPath '${source}': ${(err as Error).message}`);
      return undefined;
    }
  };

  if (spec.dates?.timezone && !Intl.supportedValuesOf('timeZone').includes(spec.dates.timezone) && spec.dates.timezone !== 'UTC') {
    issue(['dates', 'timezone'], `unknown IANA timezone '${spec.dates.timezone}'`);
  }

  const files = spec.source.files.map((file, i) => ({ ...file, keyExpression: expr(['source', 'files', String(i), 'key'], file.key) }));
  const rules: CompiledRule[] = [];
  for (const [id, rule] of Object.entries(spec.resources)) {
    const path = ['resources', id];
    const lets: [string, Producer][] = Object.entries(rule.let ?? {}).map(([name, node]) => [name, compileNode(env, [...path, 'let', name], node)]);
    if ('resourceType' in rule.template && rule.template.resourceType !== rule.type) {
      issue([...path, 'template', 'resourceType'], `differs from the rule type ${rule.type}`);
    }
    const template = { ...rule.template };
    delete template.resourceType;
    rules.push({
      id,
      type: rule.type,
      from: new Set(asList(rule.from)),
      when: expr([...path, 'when'], rule.when),
      key: expr([...path, 'key'], rule.key),
      groupBy: expr([...path, 'groupBy'], rule.groupBy),
      identifierSystem: rule.scope === 'trial' ? `${spec.trial.namespace}:${id}` : `${spec.trial.namespace}:${spec.site}:${id}`,
      lets,
      template: compileNode(env, [...path, 'template'], template),
      profiles: rule.profiles ?? [],
      variables: [...variablesOf([rule.template, rule.let ?? {}, rule.when ?? '', rule.key ?? ''], constantValues)],
    });
  }

  issues.push(...letIssues(loaded, constantValues));
  const subject = expr(['source', 'subject'], spec.source.subject);
  const compiled: CompiledMapping = {
    spec,
    loaded,
    site: spec.site,
    version: spec.version,
    uri: `${spec.trial.namespace}:mapping:${spec.site}|${spec.version}`,
    files,
    dictionary: spec.source.dictionary,
    subject: subject!,
    recordType: expr(['source', 'recordType'], spec.source.recordType),
    recordKey: expr(['source', 'recordKey'], spec.source.recordKey),
    enrolment: new Set(asList(spec.source.enrolment)),
    rules,
    constants,
    consumedTypes: new Set([...rules.flatMap((r) => [...r.from]), ...subjectLookups(spec.resources, new Set()), ...asList(spec.source.enrolment)]),
  };
  if (issues.length > 0) throw new MappingError(issues);
  return compiled;
}
