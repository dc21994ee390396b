import type { Provenance } from '@medplum/fhirtypes';
import type { CompiledMapping } from '../mapping/compile.ts';
import type { MappedSubject } from '../mapping/engine.ts';
import { fullUrlFor } from '../mapping/identity.ts';

export interface ProvenanceEntry {
  readonly fullUrl: string;
  readonly system: string;
  readonly value: string;
  readonly resource: Provenance;
}

/**
 * One Provenance per subject bundle: every resource of the bundle as target, every source record (file and row)
 * as entity, and the mapping with its version as policy, so any value can be traced back to the export line.
 */
export function subjectProvenance(mapping: CompiledMapping, subject: MappedSubject, recorded: string): ProvenanceEntry {
  const namespace = mapping.spec.trial.namespace;
  const system = `${namespace}:${mapping.site}:provenance`;
  const value = subject.subject;
  const resource: Provenance = {
    resourceType: 'Provenance',
    meta: { tag: [{ system, code: value }] },
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
        who: { display: `trialbridge, mapping ${mapping.site} version ${mapping.version}` },
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
