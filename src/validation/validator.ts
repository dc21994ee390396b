import { getDataType, isResourceType, parseStructureDefinition, type InternalTypeSchema } from '@medplum/core';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { loadBaseDefinitions } from './base.ts';
import { ValidatorCompiler } from './compiled.ts';
import { ConformanceRegistry } from './registry.ts';

export const PROFILES_DIR = new URL('../../profiles/', import.meta.url).pathname;

/**
 * Validates resources against base FHIR R4 and the profiles they claim in meta.profile (plus any a
 * destination requires), with validators compiled once per profile.
 */
export class ResourceValidator {
  private readonly registry: ConformanceRegistry;
  private readonly compiler: ValidatorCompiler;
  private readonly schemas = new Map<string, InternalTypeSchema>();

  constructor(registry: ConformanceRegistry) {
    loadBaseDefinitions();
    this.registry = registry;
    this.compiler = new ValidatorCompiler(
      (url) => registry.expand(url),
      (url) => this.schemaFor(url),
    );
  }

  /** The trial's profiles from profiles/ and FHIR R4's terminology. */
  static async load(dir = PROFILES_DIR): Promise<ResourceValidator> {
    const registry = new ConformanceRegistry().addBaseTerminology();
    await registry.addDirectory(dir);
    return new ResourceValidator(registry);
  }

  knowsProfile(url: string): boolean {
    return this.registry.profiles.has(url.split('|')[0]);
  }

  private schemaFor(url: string): InternalTypeSchema | undefined {
    const key = url.split('|')[0];
    let schema = this.schemas.get(key);
    if (!schema) {
      const sd = this.registry.profiles.get(key);
      if (!sd) return undefined;
      schema = parseStructureDefinition(sd);
      this.schemas.set(key, schema);
    }
    return schema;
  }

  /** Issues of one resource: errors make it unfit to deliver; warnings are kept for the record. */
  validate(resource: Resource, requiredProfiles: readonly string[] = []): OperationOutcomeIssue[] {
    // A malformed meta.profile is reported by the structure checks; only well-formed claims select profiles.
    const metaProfile: unknown = resource.meta?.profile;
    const claimedProfiles = Array.isArray(metaProfile) ? metaProfile.filter((p): p is string => typeof p === 'string') : [];
    const profiles = [...new Set([...claimedProfiles, ...requiredProfiles])];
    const issues: OperationOutcomeIssue[] = [];
    const seen = new Set<string>();
    const add = (list: OperationOutcomeIssue[]) => {
      for (const issue of list) {
        const key = `${issue.severity}|${issue.expression?.[0]}|${issue.details?.text}`;
        if (!seen.has(key)) {
          seen.add(key);
          issues.push(issue);
        }
      }
    };
    const claimed = new Set(claimedProfiles);
    for (const url of profiles) {
      const schema = this.schemaFor(url);
      if (!schema) {
        add([{ severity: 'error', code: 'not-supported', details: { text: `Unknown profile ${url}` }, expression: [resource.resourceType] }]);
        continue;
      }
      // A destination's profiles apply to the resources of their type; a resource's own claim must fit it.
      if (schema.type !== resource.resourceType && !claimed.has(url)) continue;
      if (schema.type !== resource.resourceType) {
        add([{ severity: 'error', code: 'structure', details: { text: `Profile ${url} is for ${schema.type}, not ${resource.resourceType}` }, expression: [resource.resourceType] }]);
        continue;
      }
      add(this.compiler.validate(resource, schema));
    }
    // FHIR R4 holds under every profile: a profile that loosened a base rule (scripts/build-profiles.ts reports
    // such profiles) still cannot make a resource pass that base R4 refuses.
    const base = typeof resource.resourceType === 'string' && isResourceType(resource.resourceType) ? getDataType(resource.resourceType) : undefined;
    if (!base) {
      add([{ severity: 'error', code: 'structure', details: { text: `Unknown resourceType ${JSON.stringify(resource.resourceType)}` }, expression: [String(resource.resourceType ?? '(resource)')] }]);
      return issues;
    }
    add(this.compiler.validate(resource, base));
    return issues;
  }
}
