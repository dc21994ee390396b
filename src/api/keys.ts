/**
 * API keys: only SHA-256 hashes are held, each scoped to one site. Keys come from a JSON or YAML file of
 * `{ site, keyHash }` entries, or from `TRIALBRIDGE_API_KEYS` (`site:hash,site:hash,...`). Neither keys nor
 * hashes are ever logged; error messages name the entry index or site only.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';

export interface ApiKeyEntry {
  readonly site: string;
  /** Lower-case hex SHA-256 of the key. */
  readonly keyHash: string;
}

const HASH = /^[0-9a-f]{64}$/;

/** Lower-case hex SHA-256 of a key (what the store holds). */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** Constant-time comparison of a presented key with one hash. */
export function keyMatchesHash(key: string, keyHash: string): boolean {
  const a = createHash('sha256').update(key, 'utf8').digest();
  const b = Buffer.from(keyHash, 'hex');
  return b.length === a.length && timingSafeEqual(a, b);
}

export class ApiKeyStore {
  readonly #entries: { site: string; hash: Buffer }[];

  constructor(entries: readonly ApiKeyEntry[]) {
    this.#entries = entries.map((e, i) => {
      if (typeof e?.site !== 'string' || e.site === '') throw new Error(`API key entry ${i}: 'site' must be a non-empty string`);
      const h = typeof e.keyHash === 'string' ? e.keyHash.toLowerCase() : '';
      if (!HASH.test(h)) throw new Error(`API key entry ${i} (site '${e.site}'): 'keyHash' must be a hex SHA-256`);
      return { site: e.site, hash: Buffer.from(h, 'hex') };
    });
  }

  get size(): number {
    return this.#entries.length;
  }

  /** The site a key is scoped to, or undefined. Compares against every entry in constant time per entry. */
  siteOf(key: string): string | undefined {
    const presented = createHash('sha256').update(key, 'utf8').digest();
    let site: string | undefined;
    for (const e of this.#entries) if (timingSafeEqual(presented, e.hash) && site === undefined) site = e.site;
    return site;
  }

  /** `site:hash,site:hash` (whitespace around entries ignored; empty → no keys). */
  static fromEnvValue(value: string | undefined): ApiKeyStore {
    const entries: ApiKeyEntry[] = [];
    for (const [i, part] of (value ?? '').split(',').map((p) => p.trim()).filter(Boolean).entries()) {
      const at = part.lastIndexOf(':');
      if (at <= 0) throw new Error(`TRIALBRIDGE_API_KEYS entry ${i}: expected 'site:sha256hex'`);
      entries.push({ site: part.slice(0, at), keyHash: part.slice(at + 1) });
    }
    return new ApiKeyStore(entries);
  }

  static fromEnv(env: NodeJS.ProcessEnv = process.env): ApiKeyStore {
    return ApiKeyStore.fromEnvValue(env.TRIALBRIDGE_API_KEYS);
  }

  /** A JSON or YAML file: a list of `{ site, keyHash }`, or `{ keys: [...] }`. */
  static async fromFile(path: string): Promise<ApiKeyStore> {
    const text = await readFile(path, 'utf8');
    const data = (path.endsWith('.json') ? JSON.parse(text) : parseYaml(text)) as unknown;
    const list = Array.isArray(data) ? data : (data as { keys?: unknown } | null)?.keys;
    if (!Array.isArray(list)) throw new Error(`${path}: expected a list of { site, keyHash } (or { keys: [...] })`);
    return new ApiKeyStore(list as ApiKeyEntry[]);
  }
}
