import type { Bundle, BundleEntry, Resource } from '@medplum/fhirtypes';
import type { CompiledMapping } from '../mapping/compile.ts';
import type { MappedSubject } from '../mapping/engine.ts';
import { conditionalUrl } from '../mapping/identity.ts';
import { subjectProvenance } from './provenance.ts';

export interface BundleOptions {
  /** Provenance.recorded: fixed by the caller so that mapping the same export twice gives the same bytes. */
  readonly recorded: string;
}

/**
 * One transaction per subject: every entry a conditional update on its business identifier, so re-sending
 * creates nothing new; references inside use the entries' `urn:uuid` fullUrls.
 */
export function subjectBundle(mapping: CompiledMapping, subject: MappedSubject, options: BundleOptions): Bundle {
  const entry: BundleEntry[] = subject.resources.map((r) => ({
    fullUrl: r.fullUrl,
    resource: r.resource,
    request: { method: 'PUT', url: conditionalUrl(r.resource.resourceType, r.identifier.system, r.identifier.value) },
  }));
  const provenance = subjectProvenance(mapping, subject, options.recorded);
  entry.push({
    fullUrl: provenance.fullUrl,
    resource: provenance.resource as Resource,
    request: { method: 'PUT', url: conditionalUrl('Provenance', provenance.system, provenance.value) },
  });
  return { resourceType: 'Bundle', type: 'transaction', entry };
}
