import type { Bundle } from '@medplum/fhirtypes';
import type { CompiledMapping } from '../mapping/compile.ts';
import { mapRecords, type ResourceCheck } from '../mapping/engine.ts';
import { readSourceRecords } from '../mapping/records.ts';
import type { RecordProblem } from '../source/record.ts';
import { describeIssue } from '../validation/base.ts';
import { ResourceValidator } from '../validation/validator.ts';
import { subjectBundle } from './transaction.ts';

export interface ExportSummary {
  readonly site: string;
  readonly mapping: string;
  readonly files: { file: string; rows: number }[];
  readonly recordsRead: number;
  readonly recordsRejected: number;
  readonly subjects: number;
  readonly resourcesByType: Record<string, number>;
  readonly rejects: RecordProblem[];
}

export interface MappedExport {
  readonly bundles: { subject: string; bundle: Bundle }[];
  readonly summary: ExportSummary;
}

export interface MapExportOptions {
  readonly recorded: string;
  /** Validate every resource before it goes into a bundle (default true). */
  readonly validate?: boolean;
  /** The validator to use (default: the trial's profiles); loading one is the slow part, so callers share it. */
  readonly validator?: ResourceValidator;
  /** Profiles every resource must also meet (a destination's). */
  readonly requiredProfiles?: readonly string[];
  /** Called after each subject, for progress display. */
  readonly onSubject?: (done: number, total: number) => void;
}

let sharedValidator: Promise<ResourceValidator> | undefined;

/** The validator of the trial's profiles, loaded once per process. */
export function defaultValidator(): Promise<ResourceValidator> {
  sharedValidator ??= ResourceValidator.load();
  return sharedValidator;
}

/** Errors of the validator as record problems: the FHIRPath location is the field. */
export function validationCheck(validator: ResourceValidator, requiredProfiles: readonly string[] = []): ResourceCheck {
  return (resource) =>
    validator
      .validate(resource, requiredProfiles)
      .filter((i) => i.severity === 'error' || i.severity === 'fatal')
      .map(describeIssue);
}

/** Reads, maps, validates and bundles one site export. */
export async function mapExport(mapping: CompiledMapping, inputs: readonly string[], options: MapExportOptions): Promise<MappedExport> {
  const source = await readSourceRecords(mapping, inputs);
  const check = options.validate === false ? undefined : validationCheck(options.validator ?? (await defaultValidator()), options.requiredProfiles);
  const result = mapRecords(mapping, source.records, check);
  const resourcesByType: Record<string, number> = {};
  const counted = new Set<string>();
  const bundles = result.subjects.map((subject, i) => {
    const bundle = subjectBundle(mapping, subject, { recorded: options.recorded });
    for (const entry of bundle.entry ?? []) {
      const type = entry.resource!.resourceType;
      // The trial-wide ResearchStudy rides in every bundle but is one resource.
      if (counted.has(entry.fullUrl!)) continue;
      counted.add(entry.fullUrl!);
      resourcesByType[type] = (resourcesByType[type] ?? 0) + 1;
    }
    options.onSubject?.(i + 1, result.subjects.length);
    return { subject: subject.subject, bundle };
  });
  const rejectedRecords = new Set(result.problems.map((p) => `${p.file}#${p.row}`));
  return {
    bundles,
    summary: {
      site: mapping.site,
      mapping: mapping.uri,
      files: source.files,
      recordsRead: result.recordsRead,
      recordsRejected: rejectedRecords.size,
      subjects: bundles.length,
      resourcesByType: Object.fromEntries(Object.entries(resourcesByType).sort()),
      rejects: result.problems,
    },
  };
}
