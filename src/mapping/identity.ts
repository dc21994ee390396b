import { createHash } from 'node:crypto';
import type { ResourceType } from '@medplum/fhirtypes';

/** Namespace of trialbridge's name-based UUIDs (RFC 9562 v5), fixed so a record always gets the same fullUrl. */
const NAMESPACE = Buffer.from('4f1c2c6e8a3b5d7e9f0a1b2c3d4e5f60', 'hex');

/** Deterministic UUID v5 of a name: the same business identifier always yields the same `urn:uuid`. */
export function uuidV5(name: string): string {
  const hash = createHash('sha1').update(NAMESPACE).update(name, 'utf8').digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.toString('hex', 0, 16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

export function fullUrlFor(system: string, value: string): string {
  return `urn:uuid:${uuidV5(`${system}|${value}`)}`;
}

/** How a resource type carries its business identifier in R4. */
export type IdentifierShape = 'list' | 'single' | 'none';

const SINGLE: ReadonlySet<string> = new Set(['AdverseEvent', 'Bundle', 'QuestionnaireResponse', 'Composition']);
const NONE: ReadonlySet<string> = new Set(['Provenance', 'Binary', 'Parameters', 'OperationOutcome', 'Linkage', 'Subscription']);

export function identifierShape(type: ResourceType | string): IdentifierShape {
  if (NONE.has(type)) return 'none';
  if (SINGLE.has(type)) return 'single';
  return 'list';
}

/**
 * R4 has no `identifier` search parameter for these: a conditional update keys them on the `meta.tag` that
 * carries the business key instead (real servers refuse `PUT AdverseEvent?identifier=`).
 */
const KEYED_BY_TAG: ReadonlySet<string> = new Set(['AdverseEvent', 'Provenance']);

/** The conditional-update URL for a resource keyed on its business identifier. */
export function conditionalUrl(type: string, system: string, value: string): string {
  const param = KEYED_BY_TAG.has(type) ? '_tag' : 'identifier';
  return `${type}?${param}=${encodeURIComponent(system)}|${encodeURIComponent(value)}`;
}
