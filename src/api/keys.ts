/**
 * API keys: only SHA-256 hashes are held, each scoped to one site. Keys come from a JSON or YAML file of
 * `{ site, keyHash, id?, notBefore?, notAfter? }` entries, or from `TRIALBRIDGE_API_KEYS`
 * (`site:hash,site:hash,...`). Neither keys nor hashes are ever logged; error messages name the entry index,
 * key id or site only.
 *
 * Rotation: a site may hold several keys at once. Add the new key's entry, hand the key to the site, then
 * give the old entry a `notAfter` (or remove it); the file is read again on SIGHUP by `serve`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { parseStrictJson, StrictJsonError } from '../source/strict-json.ts';

export interface ApiKeyEntry {
  readonly site: string;
  /** Lower-case hex SHA-256 of the key. */
  readonly keyHash: string;
  /** Names the key in audit logs (default `<site>#<n>`, n counting that site's entries from 1). */
  readonly id?: string;
  /** ISO date-time before which the key is refused. */
  readonly notBefore?: string;
  /** ISO date-time from which the key is refused. */
  readonly notAfter?: string;
}

/** Who a valid key says the caller is. */
export interface ApiKeyIdentity {
  readonly site: string;
  readonly keyId: string;
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

interface StoredKey {
  readonly site: string;
  readonly id: string;
  readonly hash: Buffer;
  readonly notBefore: number;
  readonly notAfter: number;
}

function instant(value: unknown, what: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  const ms = typeof value === 'string' ? Date.parse(value) : value instanceof Date ? value.getTime() : Number.NaN;
  if (Number.isNaN(ms)) throw new Error(`${what} must be an ISO date-time`);
  return ms;
}

function parseEntries(entries: readonly ApiKeyEntry[]): StoredKey[] {
  const perSite = new Map<string, number>();
  const ids = new Set<string>();
  return entries.map((e, i) => {
    if (typeof e?.site !== 'string' || e.site === '') throw new Error(`API key entry ${i}: 'site' must be a non-empty string`);
    const h = typeof e.keyHash === 'string' ? e.keyHash.toLowerCase() : '';
    if (!HASH.test(h)) throw new Error(`API key entry ${i} (site '${e.site}'): 'keyHash' must be a hex SHA-256`);
    const n = (perSite.get(e.site) ?? 0) + 1;
    perSite.set(e.site, n);
    if (e.id !== undefined && (typeof e.id !== 'string' || e.id === '')) throw new Error(`API key entry ${i} (site '${e.site}'): 'id' must be a non-empty string`);
    const id = e.id ?? `${e.site}#${n}`;
    if (ids.has(id)) throw new Error(`API key entry ${i} (site '${e.site}'): key id '${id}' is used twice`);
    ids.add(id);
    const where = `API key entry ${i} (${id})`;
    return {
      site: e.site,
      id,
      hash: Buffer.from(h, 'hex'),
      notBefore: instant(e.notBefore, `${where}: 'notBefore'`) ?? Number.NEGATIVE_INFINITY,
      notAfter: instant(e.notAfter, `${where}: 'notAfter'`) ?? Number.POSITIVE_INFINITY,
    };
  });
}

export class ApiKeyStore {
  #entries: StoredKey[];

  constructor(entries: readonly ApiKeyEntry[]) {
    this.#entries = parseEntries(entries);
  }

  get size(): number {
    return this.#entries.length;
  }

  /**
   * The site and key id of a key valid at `now`, or undefined. The presented key is hashed and compared with
   * every entry in constant time, and the loop does not stop at a match: the time taken says nothing about
   * which entry, if any, matched.
   */
  identify(key: string, now: number = Date.now()): ApiKeyIdentity | undefined {
    const presented = createHash('sha256').update(key, 'utf8').digest();
    let found: StoredKey | undefined;
    for (const e of this.#entries) {
      const match = timingSafeEqual(presented, e.hash);
      if (match && found === undefined && now >= e.notBefore && now < e.notAfter) found = e;
    }
    return found ? { site: found.site, keyId: found.id } : undefined;
  }

  /** The site a key is scoped to, or undefined. */
  siteOf(key: string, now?: number): string | undefined {
    return this.identify(key, now)?.site;
  }

  /** Takes the entries of another store (a reloaded keys file); requests after this see only the new keys. */
  replaceWith(other: ApiKeyStore): void {
    this.#entries = other.#entries;
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

  /** A JSON or YAML file: a list of entries, or `{ keys: [...] }`. */
  static async fromFile(path: string): Promise<ApiKeyStore> {
    const text = await readFile(path, 'utf8');
    let data: unknown;
    try {
      data = path.endsWith('.json') ? parseStrictJson(text, 8) : parseYaml(text, { maxAliasCount: 10 });
    } catch (err) {
      // Parser messages quote the text around the fault: here, a key hash.
      const line = err instanceof StrictJsonError ? err.line : (err as { linePos?: { line: number }[] }).linePos?.[0]?.line;
      throw new Error(`${path}: not a valid ${path.endsWith('.json') ? 'JSON' : 'YAML'} keys file${line ? ` (line ${line})` : ''}`);
    }
    const list = Array.isArray(data) ? data : (data as { keys?: unknown } | null)?.keys;
    if (!Array.isArray(list)) throw new Error(`${path}: expected a list of { site, keyHash } (or { keys: [...] })`);
    return new ApiKeyStore(list as ApiKeyEntry[]);
  }
}
