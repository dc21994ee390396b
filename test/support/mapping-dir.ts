import { cp, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A fresh directory holding the reference trial's base mapping and its ConceptMaps, where a test writes a site
 * mapping that says `extends: ldccrt-hcc-base.yaml`: `extends` may not leave the site mapping's directory, so a
 * test mapping in a temporary directory cannot name the repository's base by absolute path.
 */
export async function baseMappingDir(prefix = 'tb-mapping-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await cp('mappings/ldccrt-hcc-base.yaml', join(dir, 'ldccrt-hcc-base.yaml'));
  await cp('mappings/terminology', join(dir, 'terminology'), { recursive: true });
  return dir;
}
