import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { loadMapping } from './load.ts';
import { closestName, ruleContract } from './lets.ts';

const names = (cell: string) => (cell.trim() === '—' ? [] : cell.split(',').map((n) => n.trim().replace(/`/g, '')));

describe("the base's contract", () => {
  it('mappings/README.md lists, per base rule, exactly the lets its template reads, required or not', async () => {
    const loaded = await loadMapping('mappings/site-a.yaml');
    const base = loaded.layers.at(-1)!.data as { resources: Record<string, { template: Record<string, unknown> }>; constants: Record<string, unknown> };
    const constants = new Map<string, unknown>([...Object.entries(base.constants), ['trialId', '']]);
    const readme = await readFile('mappings/README.md', 'utf8');
    const documented = new Map(
      [...readme.matchAll(/^\| `([a-z-]+)` \| [A-Za-z]+ \| [^|]+ \| ([^|]+) \| ([^|]+) \|$/gm)].map((m) => [m[1], { required: names(m[2]), optional: names(m[3]) }]),
    );
    expect([...documented.keys()]).toEqual(Object.keys(base.resources));
    for (const [id, rule] of Object.entries(base.resources)) {
      const contract = ruleContract(rule, constants);
      expect({ id, ...documented.get(id) }).toEqual({ id, required: contract.required, optional: contract.reads.filter((r) => !contract.required.includes(r)) });
    }
  });

  it('suggests a close name only when it is close', () => {
    expect(closestName('gendr', ['gender', 'birthDate'])).toBe('gender');
    expect(closestName('portalVienInvasion', ['portalVeinInvasion', 'diagnosisDate'])).toBe('portalVeinInvasion');
    expect(closestName('weight', ['gender', 'birthDate'])).toBeUndefined();
  });
});
