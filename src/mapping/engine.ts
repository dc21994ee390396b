import type { Identifier, Meta, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import type { RecordProblem, SourceRecord } from '../source/record.ts';
import type { CompiledMapping, CompiledRule } from './compile.ts';
import { FieldError } from './errors.ts';
import { EvalContext, isTrue } from './expression.ts';
import { checkBusinessKey, fullUrlFor, identifierShape } from './identity.ts';

/** One resource the mapping made, with where it came from. */
export interface MappedResource {
  readonly rule: string;
  readonly key: string;
  readonly identifier: { readonly system: string; readonly value: string };
  readonly fullUrl: string;
  readonly resource: Resource;
  readonly records: readonly SourceRecord[];
}

export interface MappedSubject {
  readonly subject: string;
  readonly resources: MappedResource[];
  /** The subject's records that were not rejected (for Provenance: each is accounted for). */
  readonly records: SourceRecord[];
}

/** Checks a finished resource (profile validation); problems reject the records behind it. */
export type ResourceCheck = (resource: Resource) => { field: string; reason: string; issue?: OperationOutcomeIssue }[];

export interface MappingResult {
  readonly subjects: MappedSubject[];
  readonly problems: RecordProblem[];
  readonly recordsRead: number;
}

interface Instance {
  readonly rule: CompiledRule;
  readonly key: string;
  readonly records: readonly SourceRecord[];
  readonly identifier: { system: string; value: string };
  readonly fullUrl: string;
  resource?: Resource;
  /** fullUrls the resource refers to (made on the first reference). */
  refs: Set<string> | undefined;
  failed: boolean;
}

function problemFor(record: SourceRecord, field: string, reason: string, value?: string, rule?: string): RecordProblem {
  return { file: record.file, row: record.row, key: record.key, subject: record.subject || undefined, field, ...(rule ? { rule } : {}), reason, ...(value !== undefined ? { value } : {}) };
}

function text(value: unknown): string | undefined {
  return value === undefined || value === null || value === '' ? undefined : String(value);
}

class SubjectMapper {
  private readonly instances: Instance[] = [];
  private readonly byRule = new Map<string, Instance[]>();
  private readonly rejected = new Map<SourceRecord, RecordProblem>();
  private readonly mapping: CompiledMapping;
  private readonly records: readonly SourceRecord[];

  private readonly check: ResourceCheck | undefined;

  constructor(mapping: CompiledMapping, records: readonly SourceRecord[], check: ResourceCheck | undefined) {
    this.mapping = mapping;
    this.records = records;
    this.check = check;
  }

  private reject(rule: string, record: SourceRecord, field: string, reason: string, value?: string, issues?: OperationOutcomeIssue[]): void {
    if (this.rejected.has(record)) return;
    const problem = problemFor(record, field, reason, value, rule);
    this.rejected.set(record, issues?.length ? { ...problem, outcome: { resourceType: 'OperationOutcome', issue: issues } } : problem);
  }

  private context(record: SourceRecord, group?: readonly SourceRecord[]): EvalContext {
    return new EvalContext(record, this.records, this.mapping.constants, group);
  }

  /** Phase 1: which resources exist (rule, key, identity), before any template runs, so references resolve. */
  private plan(): void {
    for (const rule of this.mapping.rules) {
      // Without groupBy each record is its own group (two rows with one key must clash, not merge).
      const groups = new Map<string | SourceRecord, SourceRecord[]>();
      for (const record of this.records) {
        if (!rule.from.has(record.type) || this.rejected.has(record)) continue;
        try {
          const ctx = rule.when || rule.groupBy ? this.context(record) : undefined;
          if (rule.when && !isTrue(rule.when.evaluate(ctx!))) continue;
          const groupKey = rule.groupBy ? text(rule.groupBy.evaluate(ctx!)[0]) : record;
          if (groupKey === undefined) throw new FieldError(rule.groupBy!.field, undefined, `no value to group ${rule.id} by`);
          const members = groups.get(groupKey);
          if (members) members.push(record);
          else groups.set(groupKey, [record]);
        } catch (err) {
          this.fail(rule.id, record, err);
        }
      }
      for (const [groupKey, members] of groups) {
        let key = typeof groupKey === 'string' ? groupKey : groupKey.key;
        try {
          if (rule.key) {
            const value = text(rule.key.evaluate(this.context(members[0], rule.groupBy ? members : undefined))[0]);
            if (value === undefined) throw new FieldError(rule.key.field, undefined, `no key for ${rule.id}`);
            key = value;
          }
        } catch (err) {
          for (const m of members) this.fail(rule.id, m, err);
          continue;
        }
        const list = this.byRule.get(rule.id) ?? [];
        const clash = list.find((i) => i.key === key);
        if (clash) {
          // One business identifier, two source records: a silent overwrite would lose one of them.
          for (const m of members) this.reject(rule.id, m, rule.key?.field ?? 'key', `another record (${clash.records[0].file} row ${clash.records[0].row}) already makes this ${rule.id}`, key);
          continue;
        }
        try {
          // A key no server can be searched for exactly (control characters, '|') would match another resource.
          checkBusinessKey(rule.type, rule.identifierSystem, key);
        } catch (err) {
          for (const m of members) this.reject(rule.id, m, rule.key?.field ?? 'key', (err as Error).message, key);
          continue;
        }
        const identifier = { system: rule.identifierSystem, value: key };
        const instance: Instance = { rule, key, records: members, identifier, fullUrl: fullUrlFor(identifier.system, key), refs: undefined, failed: false };
        list.push(instance);
        this.byRule.set(rule.id, list);
        this.instances.push(instance);
      }
    }
  }

  private fail(rule: string, record: SourceRecord, err: unknown): void {
    if (err instanceof FieldError) this.reject(rule, record, err.field, err.message, err.value);
    else this.reject(rule, record, '(expression)', (err as Error).message);
  }

  private resolve(from: Instance, rule: string, key: string | undefined): { fullUrl: string } | { rejected: string } | undefined {
    const candidates = this.byRule.get(rule)?.filter((i) => key === undefined || i.key === key) ?? [];
    const target = candidates.find((i) => !i.failed);
    if (target) {
      (from.refs ??= new Set()).add(target.fullUrl);
      return { fullUrl: target.fullUrl };
    }
    return candidates.length > 0 ? { rejected: `the ${rule} resource` } : undefined;
  }

  /** Phase 2: run templates; a failing record takes down every resource it feeds and every reference to those. */
  private build(instance: Instance): void {
    instance.refs?.clear();
    const group = instance.rule.groupBy ? instance.records : undefined;
    const ctx = this.context(instance.records[0], group);
    ctx.declared = instance.rule.variables;
    ctx.resolver = (rule, key) => this.resolve(instance, rule, key);
    try {
      for (const [name, produce] of instance.rule.lets) ctx.setLet(name, produce(ctx));
      const body = (instance.rule.template(ctx) ?? {}) as Record<string, unknown>;
      instance.resource = this.assemble(instance, body);
      const findings = this.check?.(instance.resource) ?? [];
      if (findings.length > 0) {
        instance.failed = true;
        const issues = findings.flatMap((f) => (f.issue ? [f.issue] : []));
        for (const record of instance.records) this.reject(instance.rule.id, record, findings[0].field, `${instance.rule.type} fails validation: ${findings.map((f) => f.reason).join('; ')}`, undefined, issues);
      }
    } catch (err) {
      instance.failed = true;
      for (const record of instance.records) this.fail(instance.rule.id, record, err);
    }
  }

  private assemble(instance: Instance, body: Record<string, unknown>): Resource {
    const { rule, identifier } = instance;
    const meta: Meta = {};
    if (rule.profiles.length > 0) meta.profile = [...rule.profiles];
    meta.tag = [{ system: identifier.system, code: identifier.value }];
    const resource: Record<string, unknown> = { resourceType: rule.type, meta };
    const shape = identifierShape(rule.type);
    const own = body.identifier;
    delete body.identifier;
    const business: Identifier = { use: 'official', system: identifier.system, value: identifier.value };
    if (shape === 'list') resource.identifier = [business, ...(Array.isArray(own) ? own : own ? [own] : [])];
    else if (shape === 'single') resource.identifier = business;
    Object.assign(resource, body);
    return resource as unknown as Resource;
  }

  run(): MappedSubject | undefined {
    this.plan();
    for (const instance of this.instances) this.build(instance);
    // Settle: drop resources of rejected records and resources that refer to dropped ones, until nothing changes.
    let changed = this.rejected.size > 0;
    while (changed) {
      changed = false;
      const dropped = new Set<string>();
      for (const instance of this.instances) {
        if (!instance.failed && instance.records.some((r) => this.rejected.has(r))) {
          instance.failed = true;
          changed = true;
        }
        if (instance.failed) dropped.add(instance.fullUrl);
      }
      for (const instance of this.instances) {
        const refersToDropped = () => [...(instance.refs ?? [])].some((url) => dropped.has(url));
        if (instance.failed || !refersToDropped()) continue;
        this.build(instance);
        if (!instance.failed && refersToDropped()) instance.failed = true;
        if (instance.failed) {
          changed = true;
          const target = this.instances.find((i) => dropped.has(i.fullUrl) && instance.refs?.has(i.fullUrl));
          for (const record of instance.records) {
            this.reject(instance.rule.id, record, '(reference)', `depends on ${target ? `the ${target.rule.id} resource` : 'a resource'}, which was rejected`);
          }
        }
      }
    }
    const resources: MappedResource[] = [];
    for (const instance of this.instances) {
      if (instance.failed || !instance.resource) continue;
      resources.push({ rule: instance.rule.id, key: instance.key, identifier: instance.identifier, fullUrl: instance.fullUrl, resource: instance.resource, records: instance.records });
    }
    if (resources.length === 0) return undefined;
    // Every accepted record of the subject fed its data set, also those read only through %subject (a death row).
    return { subject: this.records[0].subject, resources, records: this.records.filter((r) => !this.rejected.has(r)) };
  }

  get problems(): RecordProblem[] {
    return [...this.rejected.values()];
  }
}

/**
 * Maps the records of an export: grouped by subject, each subject mapped on its own so a bad record never
 * touches another subject. Records nobody maps (types no rule reads) are neither resources nor problems.
 */
export function mapRecords(mapping: CompiledMapping, records: readonly SourceRecord[], check?: ResourceCheck): MappingResult {
  const problems: RecordProblem[] = [];
  const bySubject = new Map<string, SourceRecord[]>();
  const subjectField = mapping.subject.field;
  const typeField = mapping.recordType?.field ?? '(record type)';
  for (const record of records) {
    if (record.problem) {
      problems.push(problemFor(record, record.problem.field, record.problem.reason));
      continue;
    }
    if (!mapping.consumedTypes.has(record.type)) {
      // The type is the record's own value: the rejects file keeps it, the reason does not quote it.
      problems.push(problemFor(record, typeField, 'no rule of the mapping reads records of this type', record.type));
      continue;
    }
    if (!record.subject) {
      problems.push(problemFor(record, subjectField, 'missing subject id'));
      continue;
    }
    const list = bySubject.get(record.subject);
    if (list) list.push(record);
    else bySubject.set(record.subject, [record]);
  }
  const subjects: MappedSubject[] = [];
  for (const [subject, subjectRecords] of bySubject) {
    if (!subjectRecords.some((r) => mapping.enrolment.has(r.type))) {
      for (const r of subjectRecords) {
        problems.push(problemFor(r, subjectField, `subject is not enrolled: no record of type ${[...mapping.enrolment].join(' or ')}`, subject));
      }
      continue;
    }
    const mapper = new SubjectMapper(mapping, subjectRecords, check);
    const mapped = mapper.run();
    problems.push(...mapper.problems);
    if (mapped) subjects.push(mapped);
  }
  problems.sort((a, b) => (a.file === b.file ? a.row - b.row : a.file < b.file ? -1 : 1));
  return { subjects, problems, recordsRead: records.length };
}
