import { readFileSync } from 'node:fs';
import type { Extension, Provenance } from '@medplum/fhirtypes';
import type { CompiledMapping } from '../mapping/compile.ts';
import type { MappedSubject } from '../mapping/engine.ts';
import { fullUrlFor } from '../mapping/identity.ts';

export interface ProvenanceEntry {
  readonly fullUrl: string;
  readonly system: string;
  readonly value: string;
  readonly resource: Provenance;
}

/** The version of trialbridge that assembles the bundles (package.json), named by every Provenance. */
export const TRIALBRIDGE_VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Extension naming one source file and the SHA-256 of its bytes, so a bundle can be tied to the exact export. */
export const SOURCE_FILE_EXTENSION = 'https://trialbridge.dev/fhir/StructureDefinition/source-file';

/**
 * The source files of the subject's records with their digests, sorted by name (stable bytes). Kept as
 * extensions rather than more entities: an entity stands for one source record, so entities and records
 * stay one to one.
 */
function sourceFiles(subject: MappedSubject): Extension[] {
  const digests = new Map<string, string>();
  for (const r of subject.records) if (r.digest) digests.set(r.file, r.digest);
  return [...digests]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([file, digest]) => ({
      url: SOURCE_FILE_EXTENSION,
      extension: [
        { url: 'name', valueString: file },
        { url: 'sha256', valueString: digest },
      ],
    }));
}

/**
 * One Provenance per subject bundle: every resource of the bundle as target, every source record (file and row)
 * as entity, the digest of every source file it read, trialbridge with its version as the assembling agent
 * and the mapping with its version as policy, so any value can be traced back to the export line and bytes.
 */
export function subjectProvenance(mapping: CompiledMapping, subject: MappedSubject, recorded: string): ProvenanceEntry {
  const namespace = mapping.spec.trial.namespace;
  const system = `${namespace}:${mapping.site}:provenance`;
  const value = subject.subject;
  const files = sourceFiles(subject);
  const resource: Provenance = {
    resourceType: 'Provenance',
    meta: { tag: [{ system, code: value }] },
    ...(files.length > 0 ? { extension: files } : {}),
    target: subject.resources.map((r) => ({ reference: r.fullUrl })),
    recorded,
    policy: [mapping.uri],
    activity: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'UPDATE', display: 'revise' }],
    },
    agent: [
      {
        type: {
          coding: [{ system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'assembler', display: 'Assembler' }],
        },
        who: {
          identifier: { system: 'https://trialbridge.dev/fhir/software', value: `trialbridge/${TRIALBRIDGE_VERSION}` },
          display: `trialbridge ${TRIALBRIDGE_VERSION}, mapping ${mapping.site} version ${mapping.version}`,
        },
      },
    ],
    entity: subject.records.map((r) => ({
      role: 'source',
      what: {
        identifier: { system: `${namespace}:${mapping.site}:source`, value: `${r.file}#${r.row}` },
        display: `${r.file} row ${r.row} (${r.type} ${r.key})`,
      },
    })),
  };
  return { fullUrl: fullUrlFor(system, value), system, value, resource };
}
