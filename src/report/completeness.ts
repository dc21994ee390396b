/**
 * Signs that the data a report is computed from is incomplete on the server: a delivery that was counted but
 * not stored, resources deleted since, a server that refused some resource types. A report computed from such
 * data is wrong without looking wrong (a subject without its Patient silently drops out of every figure), so
 * each sign becomes a warning at the top of the report, in its JSON and on the terminal. Counts only: no
 * identifier of a subject or resource.
 */
import type { Resource } from '@medplum/fhirtypes';
import { referenceKey, type StudySource } from './fhir-source.ts';

/**
 * Resource types read completely for the study's subjects (fhir-source.ts): a reference to one of them that is
 * not among what was read dangles. Observations and AdverseEvents are read only in part (one code, one study),
 * so a reference to one of them cannot be judged.
 */
const READ_IN_FULL: ReadonlySet<string> = new Set(['Patient', 'ResearchStudy', 'ResearchSubject', 'Condition', 'Procedure', 'MedicationAdministration']);

/** What a subject's treatment shows as on the server. */
const TREATMENT_TYPES: ReadonlySet<string> = new Set(['MedicationAdministration', 'Procedure']);

/** Every literal reference (`Type/id`) in a resource, with the top-level element holding it. */
function references(resource: Resource): { element: string; target: string }[] {
  const out: { element: string; target: string }[] = [];
  const walk = (node: unknown, element: string): void => {
    if (Array.isArray(node)) {
      for (const item of node) walk(item, element);
    } else if (node !== null && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if (key === 'reference' && typeof value === 'string' && !value.startsWith('#') && !value.includes('?')) {
          const target = referenceKey(value);
          if (target) out.push({ element, target });
        } else {
          walk(value, element);
        }
      }
    }
  };
  for (const [key, value] of Object.entries(resource)) if (key !== 'meta' && key !== 'contained') walk(value, key);
  return out;
}

function counted(counts: ReadonlyMap<string, number>): string {
  return [...counts]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([what, n]) => (n > 1 ? `${what} ×${n}` : what))
    .join(', ');
}

/**
 * The warnings of a study read from a server: subjects without their Patient or without any treatment,
 * references to resources the server does not hold, no adverse event in the study or at a site.
 * `siteOf` names the site of a subject (by index in `source.subjects`).
 */
export function completenessWarnings(source: StudySource, siteOf: (index: number) => string): string[] {
  const warnings: string[] = [];
  const n = source.subjects.length;
  if (n === 0) return ['the server holds no ResearchSubject of this study: nothing to report'];

  const withoutPatient = source.subjects.filter((s) => s.patient === undefined).length;
  if (withoutPatient > 0) {
    warnings.push(`${withoutPatient} of ${n} subjects have no Patient on the server (their ResearchSubject refers to one it does not hold): they are left out of every figure`);
  }
  const untreated = source.subjects.filter((s) => s.patient !== undefined && !s.resources.some((r) => TREATMENT_TYPES.has(r.resourceType))).length;
  if (untreated > 0) warnings.push(`${untreated} of ${n} subjects have no treatment on the server (no MedicationAdministration or Procedure)`);

  const held = new Set<string>([`ResearchStudy/${source.study.id}`]);
  for (const s of source.subjects) for (const r of s.resources) held.add(`${r.resourceType}/${r.id}`);
  const dangling = new Map<string, number>();
  const seen = new Set<string>();
  for (const s of source.subjects) {
    for (const r of s.resources) {
      if (seen.has(`${r.resourceType}/${r.id}`)) continue;
      seen.add(`${r.resourceType}/${r.id}`);
      for (const { element, target } of references(r)) {
        const type = target.split('/')[0];
        if (!READ_IN_FULL.has(type) || held.has(target)) continue;
        const what = `${r.resourceType}.${element} → ${type}`;
        dangling.set(what, (dangling.get(what) ?? 0) + 1);
      }
    }
  }
  const total = [...dangling.values()].reduce((a, b) => a + b, 0);
  if (total > 0) warnings.push(`${total} reference${total === 1 ? '' : 's'} point to resources the server does not hold: ${counted(dangling)}`);

  const events = (indexes: readonly number[]) => indexes.reduce((sum, i) => sum + source.subjects[i].resources.filter((r) => r.resourceType === 'AdverseEvent').length, 0);
  const all = source.subjects.map((_s, i) => i);
  if (events(all) === 0) {
    warnings.push('the server holds no AdverseEvent of this study: adverse-event figures are empty');
  } else {
    const bySite = new Map<string, number[]>();
    for (const i of all) bySite.set(siteOf(i), [...(bySite.get(siteOf(i)) ?? []), i]);
    for (const [site, indexes] of [...bySite].sort(([a], [b]) => a.localeCompare(b))) {
      if (events(indexes) === 0) warnings.push(`site ${site}: the server holds no AdverseEvent for its ${indexes.length} subjects`);
    }
  }
  return warnings;
}
