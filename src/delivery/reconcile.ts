/**
 * Reconciliation: what a server holds against what trialbridge delivered to it, per subject and per business
 * identifier (verify.ts searches for them, all subjects' identifiers of one type batched together). A difference
 * is an identifier the server does not hold (deleted, lost, or never written although answered as written) or
 * holds more than once (two resources claim one business identifier: a conditional create raced).
 */
import type { FhirClient } from './client.ts';
import { findOnServer, identifierKey, type DeliveredIdentifier } from './verify.ts';

/** A delivered subject as reconcile needs it (queue/delivered.ts keeps these). */
export interface DeliveredSubject {
  readonly site: string;
  readonly subject: string;
  readonly identifiers: readonly DeliveredIdentifier[];
}

export interface SubjectDifference {
  readonly site: string;
  readonly subject: string;
  readonly missing: DeliveredIdentifier[];
  readonly duplicated: DeliveredIdentifier[];
}

export interface ReconcileResult {
  readonly subjects: number;
  /** Distinct business identifiers looked for. */
  readonly identifiers: number;
  /** Subjects with at least one difference, in the order given. */
  readonly differences: SubjectDifference[];
  /** Search requests sent. */
  readonly requests: number;
}

/** Compares the server with what was delivered to it. */
export async function reconcile(client: FhirClient, delivered: readonly DeliveredSubject[]): Promise<ReconcileResult> {
  // A trial-wide resource (the ResearchStudy) is in every subject's bundle: looked for once.
  const unique = new Map<string, DeliveredIdentifier>();
  for (const s of delivered) for (const id of s.identifiers) unique.set(identifierKey(id), id);
  const found = await findOnServer(client, [...unique.values()]);
  const missing = new Set(found.missing.map(identifierKey));
  const duplicated = new Set(found.duplicated.map(identifierKey));
  const differences: SubjectDifference[] = [];
  for (const s of delivered) {
    const difference = {
      site: s.site,
      subject: s.subject,
      missing: s.identifiers.filter((id) => missing.has(identifierKey(id))),
      duplicated: s.identifiers.filter((id) => duplicated.has(identifierKey(id))),
    };
    if (difference.missing.length + difference.duplicated.length > 0) differences.push(difference);
  }
  return { subjects: delivered.length, identifiers: unique.size, differences, requests: found.requests };
}

/**
 * The differences as rows for the engineer's terminal: kind, site, subject key, resource type and business
 * identifier (system|key); never a resource's content.
 */
export function differenceRows(differences: readonly SubjectDifference[]): string[][] {
  const rows: string[][] = [];
  for (const d of differences) {
    for (const [kind, ids] of [['missing', d.missing], ['duplicated', d.duplicated]] as const) {
      for (const id of ids) rows.push([kind, d.site, d.subject, id.type, `${id.system}|${id.value}`]);
    }
  }
  return rows;
}
