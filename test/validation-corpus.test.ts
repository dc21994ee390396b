import { readdirSync, readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { OperationOutcomeError, validateResource } from '@medplum/core';
import type { OperationOutcomeIssue, Resource, StructureDefinition } from '@medplum/fhirtypes';
import { loadBaseDefinitions } from '../src/validation/base.ts';
import { ResourceValidator } from '../src/validation/validator.ts';

interface CorpusCase {
  id: string;
  defect: string;
  expression: string;
  resource: Resource;
}

const corpus = JSON.parse(readFileSync('test/validation-corpus/corpus.json', 'utf8')) as CorpusCase[];
const profiles = new Map<string, StructureDefinition>();
for (const name of readdirSync('profiles')) {
  if (!name.startsWith('StructureDefinition-')) continue;
  const sd = JSON.parse(readFileSync(`profiles/${name}`, 'utf8')) as StructureDefinition;
  profiles.set(sd.url!, sd);
}
let validator: ResourceValidator;

/** @medplum/core's findings for a resource against the profile it claims (or its base type). */
function medplumErrors(resource: Resource): OperationOutcomeIssue[] {
  const profile = resource.meta?.profile?.[0] ? profiles.get(resource.meta.profile[0]) : undefined;
  try {
    return validateResource(resource, profile ? { profile } : undefined).filter((i) => i.severity === 'error');
  } catch (err) {
    if (err instanceof OperationOutcomeError) return (err.outcome.issue ?? []).filter((i) => i.severity === 'error');
    throw err;
  }
}

const key = (i: OperationOutcomeIssue) => `${i.expression?.[0]} | ${i.details?.text}`;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

beforeAll(async () => {
  loadBaseDefinitions();
  validator = await ResourceValidator.load();
});

describe('validation corpus: one planted defect per resource', () => {
  it('holds at least 100 cases over every profiled resource type, as the build script makes them today', async () => {
    expect(corpus.length).toBeGreaterThanOrEqual(100);
    expect(new Set(corpus.map((c) => c.resource.resourceType))).toEqual(
      new Set(['AdverseEvent', 'Procedure', 'MedicationAdministration', 'Observation', 'ResearchSubject', 'Patient', 'Condition', 'ResearchStudy']),
    );
    const { buildCorpus } = await import('../scripts/build-validation-corpus.ts');
    expect(JSON.stringify(await buildCorpus())).toBe(JSON.stringify(corpus));
  });

  it.each(corpus.map((c) => [c.id, c] as const))('%s: found at its location', (_id, c) => {
    const errors = validator.validate(c.resource).filter((i) => i.severity === 'error');
    expect(errors.map(key), c.defect).toContainEqual(expect.stringMatching(new RegExp(`^${escape(c.expression)} \\|`)));
  });

  it('reports everything @medplum/core validateResource reports, on every case', () => {
    const missed: string[] = [];
    let medplumFindings = 0;
    for (const c of corpus) {
      const ours = new Set(validator.validate(c.resource).map(key));
      for (const issue of medplumErrors(c.resource)) {
        medplumFindings++;
        if (!ours.has(key(issue))) missed.push(`${c.id}: ${key(issue)}`);
      }
    }
    expect(missed).toEqual([]);
    expect(medplumFindings).toBeGreaterThan(50);
  });
});
