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

/** A business key (identifier system or value) that cannot be put into a search URL safely. */
export class InvalidBusinessKeyError extends Error {
  override readonly name = 'InvalidBusinessKeyError';
}

/**
 * One literal value as a FHIR search value (R4 search §3.1.1.6 "Escaping Search Parameters"): `\`, `,`, `|`
 * and `$` are backslash-escaped so that a server reads none of them as syntax (`,` is OR, `|` separates system
 * from code, `$` composite parts). Not percent-encoded: see {@link searchParamValue}.
 */
export function escapeSearchValue(value: string): string {
  return value.replace(/[\\,|$]/g, '\\$&');
}

/** A search value escaped and percent-encoded for a query string. */
export function searchParamValue(value: string): string {
  return encodeURIComponent(escapeSearchValue(value));
}

/**
 * `system|value` of a token search, both parts escaped and percent-encoded; the separating `|` stays literal.
 * Servers differ in how they read an escaped `|`: HAPI honours `\|`, while @medplum/core's token matcher
 * (fhir-router, the embedded server) unescapes first and then splits on every `|`, and fhir-works-on-aws
 * refuses a third part. Escaping is therefore not enough for `|` inside a key: {@link checkBusinessKey}
 * refuses it before any URL is built.
 */
export function tokenSearchParam(system: string, value: string): string {
  return `${searchParamValue(system)}|${searchParamValue(value)}`;
}

/**
 * Refuses a business identifier system or value that no server can be trusted to search for exactly:
 * control characters (a request line or a log broken in two) and `|` (read as the system separator by
 * servers that ignore its escape, so `Z9|x` would match `Z9`). The message names the resource type and
 * which part, never the value.
 */
export function checkBusinessKey(type: string, system: string, value: string): void {
  for (const [part, text] of [['identifier system', system], ['business key', value]] as const) {
    if (text === '') throw new InvalidBusinessKeyError(`${type}: empty ${part}`);
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u001f\u007f-\u009f]/.test(text)) throw new InvalidBusinessKeyError(`${type}: the ${part} holds a control character`);
    if (text.includes('|')) throw new InvalidBusinessKeyError(`${type}: the ${part} holds '|', which servers read as the system separator even when escaped`);
  }
}

/**
 * The conditional-update URL for a resource keyed on its business identifier: `Type?identifier=system|value`
 * (`_tag` for the types without an identifier search), system and value escaped as FHIR search requires, so
 * that a key holding `,` or `$` cannot match another site's or system's resource. Throws
 * InvalidBusinessKeyError for keys no server can search for exactly.
 */
export function conditionalUrl(type: string, system: string, value: string): string {
  checkBusinessKey(type, system, value);
  const param = KEYED_BY_TAG.has(type) ? '_tag' : 'identifier';
  return `${type}?${param}=${tokenSearchParam(system, value)}`;
}
