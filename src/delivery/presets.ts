/**
 * What is known of each kind of FHIR server on write (../shared/fhir-servers.md, cited by its source keys):
 * a destination's `server:` picks one of these, and each value can be overridden by the destination's own key
 * of the same name. README's "Destination presets" table is this file in prose.
 *
 * Two rules shape the values:
 * - A CapabilityStatement never decides atomicity. Medplum declares `transaction` and still runs a transaction
 *   as a batch unless the project has the `transaction-bundles` feature [MP1][MP2][MP7], so presets either
 *   state atomicity from the server's documentation or say `detect`: judged from each answer (a
 *   transaction-response with some entries applied and others failed was not atomic), never from metadata.
 * - Every entry trialbridge sends is a conditional update (keyed on a business identifier), so a server's cap
 *   on conditional entries is the cap that applies: `maxEntries` resolves to the smaller of the two.
 */

import { DEFAULT_MAX_RESPONSE_BYTES } from './http-transport.ts';

export { DEFAULT_MAX_RESPONSE_BYTES };

export const SERVER_PRESETS = ['generic', 'hapi', 'azure', 'healthlake', 'google', 'medplum', 'firely', 'aidbox'] as const;
export type ServerPreset = (typeof SERVER_PRESETS)[number];

/**
 * Where a server writes how long to wait before trying again, in the order they are preferred:
 * `x-ms-retry-after-ms` (Azure, ms), `retry-after` (seconds or an HTTP date), `ratelimit` (Medplum's
 * `RateLimit: "…";r=…;t=<seconds>`), `outcome` (Medplum's `_msBeforeNext` in the 429's OperationOutcome).
 */
export const RETRY_AFTER_SOURCES = ['x-ms-retry-after-ms', 'retry-after', 'ratelimit', 'outcome'] as const;
export type RetryAfterSource = (typeof RETRY_AFTER_SOURCES)[number];

/**
 * Which search parameters a server takes in a conditional update URL. trialbridge keys AdverseEvent and
 * Provenance on `_tag` (R4 gives them no `identifier` search), so `identifier-only` (Google's v1 API [GC2])
 * cannot take those two types: a destination that would receive them is refused when the file is loaded,
 * naming the way out (the v1beta1 endpoint, or `resourceTypes` without them).
 */
export type ConditionalSearch = 'any' | 'identifier-only';


/** The limits a preset sets; a destination's key of the same name wins. */
export interface ServerLimits {
  /** Entries per transaction (a larger bundle is split unless `atomic`). */
  readonly maxEntries: number;
  /** Entries per transaction when any entry is conditional (all of trialbridge's are); none: `maxEntries`. */
  readonly maxConditionalEntries?: number;
  /** Whether to send transactions (true), one conditional update at a time (false), or ask the server (`detect`). */
  readonly transactions: boolean | 'detect';
  /** Whether the server applies a transaction all-or-nothing; `detect`: judged from each answer, never from metadata. */
  readonly atomicTransactions: boolean | 'detect';
  /** Where the server's wait is read, preferred first. */
  readonly retryAfterFrom: readonly RetryAfterSource[];
  readonly conditionalSearch: ConditionalSearch;
  /** Largest answer read before the delivery fails (enforced by the FHIR client). */
  readonly maxResponseBytes: number;
  /** Requests in flight at once; the pacer starts there and backs off under 429s and conflicts. */
  readonly concurrency: number;
  /** At most `max` requests per `perMs` ms. */
  readonly rateLimit?: { readonly max: number; readonly perMs: number };
}

export type LimitKey = keyof ServerLimits;

export interface PresetEntry {
  /** Human name of the server, for README and messages. */
  readonly label: string;
  readonly limits: ServerLimits;
  /** Source keys of ../shared/fhir-servers.md (or `measured`, `trialbridge`) behind each value. */
  readonly sources: Partial<Record<LimitKey, string>>;
  /** What the table cannot say in a cell. */
  readonly notes: string;
}

const ALL_WAITS: readonly RetryAfterSource[] = RETRY_AFTER_SOURCES;
const BASE = { maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES, conditionalSearch: 'any', concurrency: 4 } as const;

export const PRESETS: Readonly<Record<ServerPreset, PresetEntry>> = {
  generic: {
    label: 'any other FHIR R4 server',
    // Nothing known: every place a wait may be written is read, and atomicity is judged per answer.
    limits: { ...BASE, maxEntries: 50, transactions: 'detect', atomicTransactions: 'detect', retryAfterFrom: ALL_WAITS },
    sources: { maxEntries: 'trialbridge', transactions: 'trialbridge', atomicTransactions: 'trialbridge' },
    notes: 'the defaults trialbridge had before presets',
  },
  hapi: {
    label: 'HAPI FHIR JPA server',
    // No cap by default; 200 keeps one request's work and answer moderate. Set it to the server's
    // maximumTransactionBundleSize when it has one (beyond it: 413 HAPI-0528).
    limits: { ...BASE, maxEntries: 200, transactions: true, atomicTransactions: true, retryAfterFrom: ['retry-after'] },
    sources: { maxEntries: 'HB1', transactions: 'HB1', atomicTransactions: 'HB1', conditionalSearch: 'HB2' },
    notes: 'no cap by default (`maximumTransactionBundleSize`); no throttling built in; 409 on version conflicts',
  },
  azure: {
    label: 'Azure Health Data Services FHIR',
    // 500 is the server's EntryLimit; smaller bundles are advised for conditional operations, without a figure.
    limits: { ...BASE, maxEntries: 500, maxConditionalEntries: 100, transactions: true, atomicTransactions: true, retryAfterFrom: ['x-ms-retry-after-ms', 'retry-after'] },
    sources: { maxEntries: 'AZ1 AZ4', maxConditionalEntries: 'AZ3', transactions: 'AZ1', atomicTransactions: 'AZ1', retryAfterFrom: 'AZ4', concurrency: 'AZ3 AZ6', conditionalSearch: 'AZ4' },
    notes: 'the older Azure API for FHIR is not atomic: set `atomicTransactions: false`; a throttled entry marks all the rest 429',
  },
  healthlake: {
    label: 'AWS HealthLake',
    limits: { ...BASE, maxEntries: 160, transactions: true, atomicTransactions: true, retryAfterFrom: ['retry-after'], rateLimit: { max: 10, perMs: 1000 } },
    sources: { maxEntries: 'AW2', transactions: 'AW1', atomicTransactions: 'AW1', retryAfterFrom: 'AW7', rateLimit: 'AW2', conditionalSearch: 'AW8' },
    notes: '10 bundle requests/s per data store (1 for stores made before 2023-08-21: set `rateLimit`); conditional update is not documented [AW6]; no wait header documented (exponential backoff)',
  },
  google: {
    label: 'Google Cloud Healthcare API',
    // The 4,500-entry figure is unverified [GC7]; 500 stays well inside it and inside the 50 MB request limit.
    limits: { ...BASE, maxEntries: 500, transactions: true, atomicTransactions: true, retryAfterFrom: ['retry-after'], conditionalSearch: 'identifier-only' },
    sources: { maxEntries: 'GC3 GC7', transactions: 'GC6', atomicTransactions: 'GC6', retryAfterFrom: 'GC8', conditionalSearch: 'GC2', concurrency: 'GC3' },
    notes: 'v1 searches conditional updates by identifier only: AdverseEvent and Provenance need the v1beta1 endpoint (a baseUrl with /v1beta1/ sets `conditionalSearch: any`) or are left out with `resourceTypes`; per-minute quotas, no wait header documented',
  },
  medplum: {
    label: 'Medplum',
    // Measured on 5.0.10: concurrent conditional updates end in 409 serialization failures above 1, and with
    // 8 entries at concurrency 1 every subject arrived exactly once.
    limits: { ...BASE, maxEntries: 50, maxConditionalEntries: 8, transactions: true, atomicTransactions: 'detect', retryAfterFrom: ['outcome', 'ratelimit', 'retry-after'], concurrency: 1 },
    sources: { maxEntries: 'MP1', maxConditionalEntries: 'MP1 MP7', transactions: 'MP2', atomicTransactions: 'MP1 MP2 MP7', retryAfterFrom: 'MP3', concurrency: 'measured MP4' },
    notes: 'a transaction runs as a batch unless the project has the `transaction-bundles` feature (HTTP 200, failed entries inside); quota 429s carry the wait in the OperationOutcome (`_msBeforeNext`) and the `RateLimit` header, no Retry-After',
  },
  firely: {
    label: 'Firely Server',
    limits: { ...BASE, maxEntries: 150, transactions: true, atomicTransactions: true, retryAfterFrom: ['retry-after'] },
    sources: { maxEntries: 'FS2', transactions: 'FS3', atomicTransactions: 'FS3', conditionalSearch: 'FS1' },
    notes: 'on MongoDB standalone a transaction is accepted but not atomic: set `atomicTransactions: false`; `MaxBatchSize` 5 MiB per request',
  },
  aidbox: {
    label: 'Aidbox',
    limits: { ...BASE, maxEntries: 50, transactions: true, atomicTransactions: true, retryAfterFrom: ['retry-after'] },
    sources: { transactions: 'AB1 AB5', atomicTransactions: 'AB1 AB5', conditionalSearch: 'AB2' },
    notes: 'no documented entry cap; SERIALIZABLE by default, so concurrent writes can be refused with 412 (retried, and the pacer backs off)',
  },
};

/** The limits of a preset with the destination's own keys on top (`undefined` keys do not override). */
export function resolveLimits(server: ServerPreset, own: Partial<ServerLimits>, baseUrl?: string): ServerLimits {
  const preset = PRESETS[server].limits;
  const fromUrl: Partial<ServerLimits> = server === 'google' && baseUrl !== undefined && /\/v1beta1\//.test(baseUrl) ? { conditionalSearch: 'any' } : {};
  const defined = Object.fromEntries(Object.entries(own).filter(([, v]) => v !== undefined)) as Partial<ServerLimits>;
  return { ...preset, ...fromUrl, ...defined };
}

/** Entries per transaction as trialbridge sends them: every entry is conditional, so the smaller cap applies. */
export function entriesPerTransaction(limits: Pick<ServerLimits, 'maxEntries' | 'maxConditionalEntries'>): number {
  return Math.min(limits.maxEntries, limits.maxConditionalEntries ?? limits.maxEntries);
}

/** Resource types trialbridge updates conditionally by `_tag` (mapping/identity.ts): refused by identifier-only servers. */
export const KEYED_BY_TAG: readonly string[] = ['AdverseEvent', 'Provenance'];

const COLUMNS: readonly { readonly key: LimitKey; readonly title: string }[] = [
  { key: 'maxEntries', title: '`maxEntries`' },
  { key: 'maxConditionalEntries', title: '`maxConditionalEntries`' },
  { key: 'transactions', title: '`transactions`' },
  { key: 'atomicTransactions', title: '`atomicTransactions`' },
  { key: 'retryAfterFrom', title: '`retryAfterFrom`' },
  { key: 'conditionalSearch', title: '`conditionalSearch`' },
  { key: 'concurrency', title: '`concurrency`' },
  { key: 'rateLimit', title: '`rateLimit`' },
  { key: 'maxResponseBytes', title: '`maxResponseBytes`' },
];

function cell(value: ServerLimits[LimitKey]): string {
  if (value === undefined) return '–';
  if (Array.isArray(value)) return value.join(', ');
  if (typeof value === 'object') return `${(value as { max: number }).max}/${(value as { perMs: number }).perMs} ms`;
  if (value === DEFAULT_MAX_RESPONSE_BYTES) return '32 MiB';
  return String(value);
}

/** README's presets table (Markdown): one row per preset, each value with its source key. */
export function presetTable(): string {
  const header = `| \`server\` | ${COLUMNS.map((c) => c.title).join(' | ')} | notes |`;
  const rule = `|${' --- |'.repeat(COLUMNS.length + 2)}`;
  const rows = SERVER_PRESETS.map((name) => {
    const { label, limits, sources, notes } = PRESETS[name];
    const cells = COLUMNS.map(({ key }) => {
      const source = sources[key];
      return source ? `${cell(limits[key])} [${source}]` : cell(limits[key]);
    });
    return `| \`${name}\` (${label}) | ${cells.join(' | ')} | ${notes} |`;
  });
  return [header, rule, ...rows].join('\n');
}
