import type { ResourceType } from '@medplum/fhirtypes';

/** A mapping file as written (after `extends` is resolved). See README "Mapping files". */
export interface MappingSpec {
  extends?: string;
  /** Trial-wide settings, usually in the shared base mapping. */
  trial: TrialSpec;
  site: string;
  version: string;
  description?: string;
  source: SourceSpec;
  dates?: DateSettings;
  constants?: Record<string, string | number | boolean>;
  valueMaps?: Record<string, ValueMapSpec>;
  /** Name → path of a FHIR ConceptMap JSON file (relative to the mapping file that names it). */
  conceptMaps?: Record<string, string>;
  resources: Record<string, ResourceRuleSpec>;
}

export interface TrialSpec {
  id: string;
  /** Prefix of every business identifier system: `<namespace>:<site>:<rule>` (or `<namespace>:<rule>` trial-wide). */
  namespace: string;
  /** Canonical base URL of profiles and code systems of the trial. */
  canonical?: string;
}

export type SourceFormat = 'csv' | 'json' | 'ndjson' | 'redcap' | 'sdtm';

export interface SourceFileSpec {
  /** File name (or `*` glob) matched against the base names of the inputs. */
  match: string;
  /** Record type of every record of this file (e.g. the SDTM domain). */
  type?: string;
  /** Record key for this file (FHIRPath), overriding `source.recordKey`. */
  key?: string;
  /** The file may be absent from an export. */
  optional?: boolean;
}

export interface SourceSpec {
  format: SourceFormat;
  encoding?: string;
  delimiter?: string;
  files: SourceFileSpec[];
  /** REDCap data dictionary file (match against inputs); gives `<field>_label` for coded choices. */
  dictionary?: string;
  /** JSON documents: property holding the records array. */
  recordsAt?: string;
  /** FHIRPath giving the subject key of a record. */
  subject: string;
  /** FHIRPath giving the record type (default: the file's `type`). */
  recordType?: string;
  /** FHIRPath giving the record key (default: `<file>#<row>`). */
  recordKey?: string;
  /** Record types that enrol a subject: records of subjects without one are rejected. */
  enrolment: string | string[];
}

export interface DateSettings {
  /** Luxon formats tried in order after ISO 8601 (e.g. `dd/MM/yyyy`). */
  formats?: string[];
  /** IANA zone for date-times without an offset. */
  timezone?: string;
}

export interface CodingSpec {
  system?: string;
  code: string;
  display?: string;
}

export interface ValueMapSpec {
  /** Default system of the target codes. */
  system?: string;
  /** Compare source values ignoring case and surrounding space. */
  caseInsensitive?: boolean;
  /** What to do with a value the map lacks: error (default, the record is rejected), omit, or a default entry. */
  unmapped?: 'error' | 'omit' | { default: string | CodingSpec };
  map: Record<string, string | CodingSpec>;
}

export interface ResourceRuleSpec {
  type: ResourceType;
  /** Record types the rule applies to. */
  from: string | string[];
  /** FHIRPath condition on the record. */
  when?: string;
  /** FHIRPath business key (default: the record key, or the group key). */
  key?: string;
  /** FHIRPath: records with the same value make one resource (several rows to one). */
  groupBy?: string;
  /** `trial`: one resource for the whole trial (identifier without site), e.g. the ResearchStudy. */
  scope?: 'site' | 'trial';
  /** Named values computed per record, read in templates by `$var` and in FHIRPath as `%name`. */
  let?: Record<string, unknown>;
  /** The resource; `$`-directives compute values. */
  template: Record<string, unknown>;
  /** Profile canonical URLs set in meta.profile. */
  profiles?: string[];
  /** Remove a rule inherited from the base mapping. */
  disabled?: boolean;
}
