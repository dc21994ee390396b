import type { OperationOutcome } from '@medplum/fhirtypes';

/** One record of a site export, as every reader yields it, whatever the file shape. */
export interface SourceRecord {
  /** Site the export came from (the mapping's `site`). */
  readonly site: string;
  /** File name as given to the reader (base name, so outputs do not depend on where the export sits). */
  readonly file: string;
  /** Line number in a CSV file (header = 1) or 1-based index in a JSON array. */
  readonly row: number;
  /** What the record is (a record-type column, a REDCap instrument, an SDTM domain). */
  readonly type: string;
  /** Subject key, empty when the export lacks one (the record is then rejected). */
  readonly subject: string;
  /** Stable key of the record within the site (a row id, `USUBJID/AESEQ`, ...). */
  readonly key: string;
  /** Field values; empty source values are absent, never empty strings. */
  readonly fields: Readonly<Record<string, string>>;
  /** Lower-case hex SHA-256 of the source file's bytes (Provenance names it). */
  readonly digest?: string;
  /** The reader found the row malformed: the record is rejected with this, before any mapping. */
  readonly problem?: { readonly field: string; readonly reason: string };
}

/** Where a problem was found, in terms an integration engineer can open in an editor. */
export interface RecordLocation {
  readonly file: string;
  readonly row: number;
  readonly key: string;
}

/** A problem with one record: it is rejected (and kept in the rejects), the others go on. */
export interface RecordProblem extends RecordLocation {
  readonly field: string;
  /** The mapping rule whose resource the record fed (absent for problems found before any rule ran). */
  readonly rule?: string;
  readonly value?: string;
  readonly reason: string;
  readonly subject?: string;
  /** For validation failures: the OperationOutcome of the resource the record fed. */
  readonly outcome?: OperationOutcome;
}

export function describeProblem(p: RecordProblem): string {
  return `${p.file} row ${p.row} (${p.key}) field ${p.field}: ${p.reason}`;
}
