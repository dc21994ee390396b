/** One problem in a mapping file, placed where the engineer can fix it. */
export interface MappingIssue {
  readonly file: string;
  readonly line?: number;
  /** Dotted path of the key, e.g. `resources.adverse-event.template.event`. */
  readonly key: string;
  readonly message: string;
}

/** A mapping that cannot be used: nothing is mapped with it. */
export class MappingError extends Error {
  readonly issues: readonly MappingIssue[];
  constructor(issues: MappingIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'MappingError';
    this.issues = issues;
  }
}

export function formatIssue(issue: MappingIssue): string {
  const where = issue.line ? `${issue.file}:${issue.line}` : issue.file;
  return `${where}: ${issue.key || '(top level)'}: ${issue.message}`;
}

/** A value in one record that the mapping cannot turn into FHIR: the record is rejected. */
export class FieldError extends Error {
  readonly field: string;
  readonly value: string | undefined;
  constructor(field: string, value: string | undefined, reason: string) {
    super(reason);
    this.name = 'FieldError';
    this.field = field;
    this.value = value;
  }
}
