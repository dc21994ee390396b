import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { inspect } from 'node:util';
import { Ajv, type ErrorObject } from 'ajv';
import addFormats from 'ajv-formats';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { AuthConfig } from './auth/index.ts';
import { parsePrivateKey } from './auth/smart-backend-services.ts';
import { describeSchemaError } from '../schema-errors.ts';
import type { VerifyMode } from './verify.ts';
import { conditionalUrl } from '../mapping/identity.ts';
import { DEFAULT_PACING, type PacingSettings } from './pacing.ts';
import {
  entriesPerTransaction,
  PRESETS,
  resolveLimits,
  RETRY_AFTER_SOURCES,
  SERVER_PRESETS,
  type ConditionalSearch,
  type RetryAfterSource,
  type ServerLimits,
  type ServerPreset,
} from './presets.ts';

/**
 * A resolved secret. It prints as `[secret]` in logs, JSON and util.inspect; only `reveal()` gives the value,
 * and only the auth strategies and the pseudonymiser call it.
 */
export class Secret {
  readonly #value: string;
  /** Where it came from (`env TB_TOKEN`, `file secrets/token`): safe to log. */
  readonly source: string;

  constructor(value: string, source: string) {
    this.#value = value;
    this.source = source;
  }

  reveal(): string {
    return this.#value;
  }

  toString(): string {
    return '[secret]';
  }

  toJSON(): string {
    return '[secret]';
  }

  [inspect.custom](): string {
    return `Secret(${this.source})`;
  }
}

export type DestinationKind = 'hospital' | 'registry' | 'sponsor';

export interface Destination {
  /** Unique id, used in logs, queues and state. */
  readonly name: string;
  readonly kind: DestinationKind;
  /** FHIR base URL (no trailing slash). */
  readonly baseUrl: string;
  /** Sites whose subjects it receives. */
  readonly sites: '*' | readonly string[];
  /** Resource types it receives (allow-list). */
  readonly resourceTypes: '*' | readonly string[];
  /** Profiles every resource sent to it must also meet (validated before delivery). */
  readonly profiles: readonly string[];
  /** The kind of server (presets.ts): where the limits below come from unless the file sets them. */
  readonly server: ServerPreset;
  /**
   * Entries per transaction as sent (a larger bundle is split unless `atomic`): the smaller of the file's (or
   * preset's) `maxEntries` and `maxConditionalEntries`, since every entry trialbridge sends is conditional.
   */
  readonly maxEntries: number;
  /** The server's cap on entries when any is conditional, when it has one of its own. */
  readonly maxConditionalEntries?: number;
  /** Whether the server applies a transaction all-or-nothing; `detect`: judged from each answer. */
  readonly atomicTransactions: boolean | 'detect';
  /** Where the server's requested wait is read (headers, OperationOutcome), preferred first. */
  readonly retryAfterFrom: readonly RetryAfterSource[];
  /** Search parameters its conditional updates take (`identifier-only`: no `_tag`, see presets.ts). */
  readonly conditionalSearch: ConditionalSearch;
  /** Largest answer read; a longer one fails the delivery with a reason. */
  readonly maxResponseBytes: number;
  /** A subject's bundle goes in one transaction or not at all: never split. */
  readonly atomic: boolean;
  /**
   * Subjects whose bundles may share one transaction (1: one subject per transaction), within `maxEntries`:
   * bundles of delivery jobs running at the same time are sent together (see delivery/batcher.ts).
   */
  readonly subjectsPerTransaction: number;
  /** Whether the server takes transaction bundles: `detect` asks its CapabilityStatement. */
  readonly transactions: boolean | 'detect';
  /**
   * Requests in flight at once, across all workers: where the pacer starts and what it grows back to after
   * backing off (delivery/pacing.ts).
   */
  readonly concurrency: number;
  /** How the pacer backs off under 429s and conflicts and recovers (delivery/pacing.ts). */
  readonly pacing: PacingSettings;
  /** At most `max` requests per `perMs` milliseconds. */
  readonly rateLimit?: { readonly max: number; readonly perMs: number };
  /** Timeout of one request. */
  readonly timeoutMs: number;
  /**
   * `attempts`: tries of a bundle's delivery in the queue, the first included (each one a job attempt, with
   * backoff from `baseMs` up to `maxMs`, or the server's Retry-After). `requestAttempts`: tries of one HTTP
   * request inside a delivery attempt, for blips (a reset connection, one 503), with short waits from `baseMs`
   * capped at 4 × `baseMs`. A dead server therefore costs `attempts` × `requestAttempts` requests per bundle
   * at most, and far fewer once the circuit breaker opens.
   */
  readonly retry: { readonly attempts: number; readonly requestAttempts: number; readonly baseMs: number; readonly maxMs: number };
  /** TLS: a CA bundle (PEM) trusted for this destination besides the system's, e.g. a hospital's private CA. */
  readonly tls?: { readonly caFile: string; readonly ca: string };
  /** Stop sending for `openMs` after `failures` consecutive failures. */
  readonly circuitBreaker: { readonly failures: number; readonly openMs: number };
  /**
   * Read-back after delivery (delivery/verify.ts): `off` (default), `sample` (a fixed one subject in 10) or
   * `all`; a subject whose resources are not all found is not delivered (retried, then dead-lettered).
   */
  readonly verify: VerifyMode;
  /** Bundles are pseudonymised (pseudonymise.ts) before they leave; default true for sponsors. */
  readonly pseudonymise: boolean;
  /** HMAC key of the pseudonyms; present exactly when `pseudonymise`. */
  readonly pseudonymisationKey?: Secret;
  readonly auth: AuthConfig;
  /** Where it is defined, for messages. */
  readonly source: { readonly file: string; readonly line?: number };
}

/** One problem in a destinations file. */
export interface DestinationIssue {
  readonly file: string;
  readonly line?: number;
  /** Dotted key path, e.g. `destinations.2.auth.clientSecret`. */
  readonly key: string;
  /** The destination's name when known. */
  readonly destination?: string;
  readonly message: string;
}

export class DestinationConfigError extends Error {
  readonly issues: readonly DestinationIssue[];
  constructor(issues: DestinationIssue[]) {
    super(issues.map(formatDestinationIssue).join('\n'));
    this.name = 'DestinationConfigError';
    this.issues = issues;
  }
}

export function formatDestinationIssue(issue: DestinationIssue): string {
  const where = issue.line ? `${issue.file}:${issue.line}` : issue.file;
  const who = issue.destination ? ` (destination '${issue.destination}')` : '';
  return `${where}: ${issue.key || '(top level)'}${who}: ${issue.message}`;
}

/** Defaults of the keys no preset sets; the preset-dependent ones are those of `server: generic`. */
export const DEFAULTS = {
  server: 'generic',
  maxEntries: PRESETS.generic.limits.maxEntries,
  atomic: false,
  subjectsPerTransaction: 1,
  transactions: PRESETS.generic.limits.transactions,
  concurrency: PRESETS.generic.limits.concurrency,
  timeoutMs: 30_000,
  retry: { attempts: 5, requestAttempts: 3, baseMs: 500, maxMs: 30_000 },
  circuitBreaker: { failures: 5, openMs: 60_000 },
  verify: 'off',
} as const;

const SECRET_REF = { $ref: '#/$defs/secret' };
const positiveInt = { type: 'integer', minimum: 1 };
const httpUrl = { type: 'string', format: 'uri', pattern: '^https?://' };

/** JSON Schema of a destinations file. */
export const destinationsSchema = {
  $id: 'https://trialbridge.dev/schema/destinations.json',
  type: 'object',
  required: ['destinations'],
  additionalProperties: false,
  properties: {
    destinations: { type: 'array', minItems: 1, items: { $ref: '#/$defs/destination' } },
  },
  $defs: {
    secret: {
      description: 'A secret is never written in the file: { env: NAME } or { file: path } (relative to this file)',
      type: 'object',
      minProperties: 1,
      maxProperties: 1,
      additionalProperties: false,
      properties: {
        env: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
        file: { type: 'string', minLength: 1 },
      },
    },
    destination: {
      type: 'object',
      required: ['name', 'kind', 'baseUrl', 'sites', 'auth'],
      additionalProperties: false,
      properties: {
        name: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]*$', maxLength: 64 },
        kind: { enum: ['hospital', 'registry', 'sponsor'] },
        baseUrl: httpUrl,
        allowHttp: { type: 'boolean' },
        sites: {
          anyOf: [
            { const: '*' },
            { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', pattern: '^([a-z0-9][a-z0-9-]*|\\*)$' } },
          ],
        },
        resourceTypes: {
          anyOf: [
            { const: '*' },
            { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', pattern: '^[A-Z][A-Za-z]+$' } },
          ],
        },
        profiles: { type: 'array', uniqueItems: true, items: { type: 'string', format: 'uri' } },
        server: { enum: SERVER_PRESETS },
        maxEntries: positiveInt,
        maxConditionalEntries: positiveInt,
        subjectsPerTransaction: positiveInt,
        atomic: { type: 'boolean' },
        transactions: { enum: [true, false, 'detect'] },
        atomicTransactions: { enum: [true, false, 'detect'] },
        retryAfterFrom: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: RETRY_AFTER_SOURCES } },
        conditionalSearch: { enum: ['any', 'identifier-only'] },
        maxResponseBytes: { type: 'integer', minimum: 1024 },
        concurrency: { type: 'integer', minimum: 1, maximum: 64 },
        pacing: {
          type: 'object',
          additionalProperties: false,
          properties: {
            decrease: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 },
            incidentMs: { type: 'integer', minimum: 0 },
            recoverAfter: positiveInt,
            leaseMs: { type: 'integer', minimum: 1000 },
          },
        },
        rateLimit: {
          type: 'object',
          required: ['max', 'perMs'],
          additionalProperties: false,
          properties: { max: positiveInt, perMs: positiveInt },
        },
        timeoutMs: { type: 'integer', minimum: 100 },
        retry: {
          type: 'object',
          additionalProperties: false,
          properties: {
            attempts: positiveInt,
            requestAttempts: positiveInt,
            baseMs: { type: 'integer', minimum: 0 },
            maxMs: { type: 'integer', minimum: 0 },
          },
        },
        tls: {
          type: 'object',
          required: ['caFile'],
          additionalProperties: false,
          properties: { caFile: { type: 'string', minLength: 1 } },
        },
        circuitBreaker: {
          type: 'object',
          additionalProperties: false,
          properties: { failures: positiveInt, openMs: positiveInt },
        },
        verify: { enum: ['off', 'sample', 'all'] },
        pseudonymise: { type: 'boolean' },
        pseudonymisationKey: SECRET_REF,
        auth: {
          type: 'object',
          required: ['type'],
          discriminator: { propertyName: 'type' },
          oneOf: [
            { properties: { type: { const: 'none' } }, additionalProperties: false },
            {
              required: ['token'],
              additionalProperties: false,
              properties: { type: { const: 'bearer' }, token: SECRET_REF },
            },
            {
              required: ['username', 'password'],
              additionalProperties: false,
              properties: {
                type: { const: 'basic' },
                username: { type: 'string', minLength: 1, pattern: '^[^:]*$' },
                password: SECRET_REF,
              },
            },
            {
              required: ['tokenUrl', 'clientId', 'clientSecret'],
              additionalProperties: false,
              properties: {
                type: { const: 'oauth2-client-credentials' },
                tokenUrl: httpUrl,
                clientId: { type: 'string', minLength: 1 },
                clientSecret: SECRET_REF,
                scope: { type: 'string', minLength: 1 },
                clientAuth: { enum: ['basic', 'body'] },
              },
            },
            {
              required: ['tokenUrl', 'clientId', 'privateKey', 'alg', 'scope'],
              additionalProperties: false,
              properties: {
                type: { const: 'smart-backend-services' },
                tokenUrl: httpUrl,
                clientId: { type: 'string', minLength: 1 },
                privateKey: SECRET_REF,
                alg: { enum: ['RS384', 'ES384'] },
                kid: { type: 'string', minLength: 1 },
                jku: httpUrl,
                scope: { type: 'string', minLength: 1 },
              },
            },
          ],
        },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, strict: false, discriminator: true });
// ajv-formats is CommonJS: its default import is module.exports, whose `default` is the plugin.
addFormats.default(ajv, ['uri']);
const validateFile = ajv.compile(destinationsSchema);

const SECRET_MESSAGE = 'a secret must be { env: NAME } or { file: path }; secrets are never written in the config';

function displayPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

/** Line of the key (or its nearest existing parent) at a path of the document. */
function lineOf(doc: Document, lines: LineCounter, path: readonly (string | number)[]): number | undefined {
  for (let depth = path.length; depth >= 1; depth--) {
    const parent = depth === 1 ? doc.contents : doc.getIn(path.slice(0, depth - 1), true);
    const last = path[depth - 1];
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isScalar(p.key) && String(p.key.value) === String(last));
      if (pair && isScalar(pair.key) && pair.key.range) return lines.linePos(pair.key.range[0]).line;
    } else if (isSeq(parent)) {
      const item = parent.items[Number(last)] as { range?: [number, number, number] } | undefined;
      if (item?.range) return lines.linePos(item.range[0]).line;
    }
  }
  const range = (doc.contents as { range?: [number, number, number] } | null)?.range;
  return range ? lines.linePos(range[0]).line : undefined;
}

interface RawDestination extends Record<string, unknown> {
  name: string;
  kind: DestinationKind;
  baseUrl: string;
  auth: Record<string, unknown> & { type: AuthConfig['type'] };
}

const SECRET_FIELDS: Record<string, readonly string[]> = {
  none: [],
  bearer: ['token'],
  basic: ['password'],
  'oauth2-client-credentials': ['clientSecret'],
  'smart-backend-services': ['privateKey'],
};

/** Whether a host name is this machine's loopback (where clear-text http is acceptable). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Problems with a URL that the schema cannot see: credentials in it, clear text to a remote host. */
const HTTP_PROBLEM = 'must use https (http is only allowed to localhost, or with allowHttp: true on a private network)';

function urlProblem(value: string): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'is not a valid URL';
  }
  if (url.username || url.password) return 'must not contain credentials (use auth with { env } or { file })';
  if (url.protocol === 'http:' && !isLoopback(url.hostname)) return HTTP_PROBLEM;
  if (url.hash) return 'must not have a #fragment';
  return undefined;
}

/**
 * Loads a destinations file (YAML or JSON), validates it and resolves every secret from the environment or
 * from files (relative to the config file). Throws DestinationConfigError naming file, line and key; no
 * message ever contains a secret's value.
 */
export function loadDestinations(path: string, env: NodeJS.ProcessEnv = process.env): Destination[] {
  const absolute = resolve(path);
  const file = displayPath(absolute);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (err) {
    throw new DestinationConfigError([{ file, key: '', message: `cannot read destinations file (${(err as NodeJS.ErrnoException).code})` }]);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true });
  if (doc.errors.length > 0) {
    // Only the first line of the parser's message: the rest quotes the source, which may hold a pasted secret.
    throw new DestinationConfigError(
      doc.errors.map((e) => ({ file, line: e.linePos?.[0]?.line, key: '', message: `syntax: ${e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '')}` })),
    );
  }
  const data: unknown = doc.toJS();
  const where = (keyPath: readonly (string | number)[]) => lineOf(doc, lines, keyPath);
  const nameAt = (index: unknown) => {
    const list = (data as { destinations?: unknown })?.destinations;
    const item = Array.isArray(list) ? (list[Number(index)] as { name?: unknown } | undefined) : undefined;
    return typeof item?.name === 'string' ? item.name : undefined;
  };

  if (!validateFile(data)) {
    const issues = new Map<string, DestinationIssue>();
    for (const error of validateFile.errors ?? []) {
      const issue = schemaIssue(error, file, where, nameAt);
      issues.set(`${issue.key}|${issue.message}`, issue);
    }
    throw new DestinationConfigError([...issues.values()]);
  }

  const raw = (data as { destinations: RawDestination[] }).destinations;
  const issues: DestinationIssue[] = [];
  const issue = (index: number, keyPath: (string | number)[], message: string) => {
    const full = ['destinations', index, ...keyPath];
    issues.push({ file, line: where(full), key: full.join('.'), destination: raw[index].name, message });
  };
  const baseDir = dirname(absolute);
  const seen = new Map<string, number>();
  const destinations: Destination[] = [];

  raw.forEach((d, index) => {
    if (seen.has(d.name)) issue(index, ['name'], `duplicate name (also destination ${seen.get(d.name)! + 1})`);
    seen.set(d.name, index);
    for (const key of ['baseUrl', 'auth.tokenUrl', 'auth.jku']) {
      const keyPath = key.split('.');
      const value = keyPath.reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], d);
      if (typeof value !== 'string') continue;
      const problem = urlProblem(value);
      // allowHttp: a FHIR server on a private network without TLS (docker compose); never for token URLs.
      const allowed = key === 'baseUrl' && d.allowHttp === true && problem === HTTP_PROBLEM;
      if (problem && !allowed) issue(index, keyPath, problem);
    }

    const resolveSecret = (keyPath: string[], ref: unknown): Secret | undefined => {
      const { env: name, file: secretFile } = ref as { env?: string; file?: string };
      if (name !== undefined) {
        const value = env[name];
        if (value === undefined || value.trim() === '') {
          issue(index, keyPath, `environment variable ${name} is not set`);
          return undefined;
        }
        return new Secret(value.trim(), `env ${name}`);
      }
      const target = resolve(baseDir, secretFile!);
      let value: string;
      try {
        value = readFileSync(target, 'utf8');
      } catch (err) {
        issue(index, keyPath, `cannot read secret file ${displayPath(target)} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
        return undefined;
      }
      if (value.trim() === '') {
        issue(index, keyPath, `secret file ${displayPath(target)} is empty`);
        return undefined;
      }
      return new Secret(value.trim(), `file ${displayPath(target)}`);
    };

    const auth: Record<string, unknown> = { ...d.auth };
    for (const field of SECRET_FIELDS[d.auth.type]) auth[field] = resolveSecret(['auth', field], d.auth[field]);
    if (auth.type === 'oauth2-client-credentials') auth.clientAuth ??= 'basic';
    if (auth.type === 'smart-backend-services' && auth.privateKey instanceof Secret) {
      try {
        const parsed = parsePrivateKey(auth.privateKey.reveal(), auth.alg as 'RS384' | 'ES384');
        if (!auth.kid && !parsed.kid) issue(index, ['auth'], "missing 'kid' (needed unless the key is a JWK with a kid)");
      } catch (err) {
        issue(index, ['auth', 'privateKey'], `the key from ${auth.privateKey.source} ${(err as Error).message}`);
      }
    }

    const pseudonymise = (d.pseudonymise as boolean | undefined) ?? d.kind === 'sponsor';
    let pseudonymisationKey: Secret | undefined;
    if (pseudonymise) {
      if (d.pseudonymisationKey === undefined) {
        issue(index, ['pseudonymise'], 'pseudonymised destinations need pseudonymisationKey: { env: NAME } or { file: path }');
      } else {
        pseudonymisationKey = resolveSecret(['pseudonymisationKey'], d.pseudonymisationKey);
        if (pseudonymisationKey && Buffer.byteLength(pseudonymisationKey.reveal(), 'utf8') < 32) {
          issue(index, ['pseudonymisationKey'], `the key from ${pseudonymisationKey.source} is too short (at least 32 bytes, e.g. openssl rand -base64 32)`);
        }
      }
    } else if (d.pseudonymisationKey !== undefined) {
      issue(index, ['pseudonymisationKey'], 'given but pseudonymise is false');
    }

    const sites = d.sites as '*' | string[];
    const resourceTypes = (d.resourceTypes as '*' | string[] | undefined) ?? '*';
    const retry = { ...DEFAULTS.retry, ...(d.retry as object | undefined) };
    if (retry.maxMs < retry.baseMs) issue(index, ['retry', 'maxMs'], 'must be at least retry.baseMs');
    const server = (d.server as ServerPreset | undefined) ?? DEFAULTS.server;
    const limits = resolveLimits(server, pickLimits(d), d.baseUrl);
    if (d.atomic === true && limits.atomicTransactions === false) {
      issue(index, ['atomic'], `asks for each subject in one all-or-nothing transaction, but this server does not apply transactions atomically (atomicTransactions: false${d.atomicTransactions === undefined ? `, from server: ${server}` : ''})`);
    }
    const tagged = tagKeyedTypes(resourceTypes);
    if (limits.conditionalSearch === 'identifier-only' && tagged.length > 0) {
      issue(
        index,
        [d.conditionalSearch !== undefined ? 'conditionalSearch' : 'server'],
        `this server searches conditional updates by identifier only, and ${tagged.join(' and ')} are updated by _tag: ` +
          (server === 'google' ? 'use the v1beta1 endpoint (a baseUrl with /v1beta1/), or ' : '') +
          `leave ${tagged.join(' and ')} out with resourceTypes`,
      );
    }
    let tls: Destination['tls'];
    const caFile = (d.tls as { caFile?: string } | undefined)?.caFile;
    if (caFile !== undefined) {
      const target = resolve(baseDir, caFile);
      try {
        const ca = readFileSync(target, 'utf8');
        if (!ca.includes('-----BEGIN CERTIFICATE-----')) issue(index, ['tls', 'caFile'], `${displayPath(target)} holds no PEM certificate`);
        else tls = { caFile: target, ca };
      } catch (err) {
        issue(index, ['tls', 'caFile'], `cannot read CA bundle ${displayPath(target)} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
    }

    destinations.push({
      name: d.name,
      kind: d.kind,
      baseUrl: d.baseUrl.replace(/\/+$/, ''),
      sites: sites === '*' || sites.includes('*') ? '*' : sites,
      resourceTypes: resourceTypes === '*' ? '*' : resourceTypes,
      profiles: (d.profiles as string[] | undefined) ?? [],
      ...limitFields(server, limits),
      atomic: (d.atomic as boolean | undefined) ?? DEFAULTS.atomic,
      subjectsPerTransaction: (d.subjectsPerTransaction as number | undefined) ?? DEFAULTS.subjectsPerTransaction,
      pacing: { ...DEFAULT_PACING, ...(d.pacing as Partial<PacingSettings> | undefined) },
      timeoutMs: (d.timeoutMs as number | undefined) ?? DEFAULTS.timeoutMs,
      retry,
      ...(tls ? { tls } : {}),
      circuitBreaker: { ...DEFAULTS.circuitBreaker, ...(d.circuitBreaker as object | undefined) },
      verify: (d.verify as VerifyMode | undefined) ?? DEFAULTS.verify,
      pseudonymise,
      pseudonymisationKey,
      auth: auth as unknown as AuthConfig,
      source: { file, line: where(['destinations', index]) },
    });
  });
  if (issues.length > 0) throw new DestinationConfigError(issues);
  return destinations;
}

const LIMIT_KEYS = [
  'maxEntries',
  'maxConditionalEntries',
  'transactions',
  'atomicTransactions',
  'retryAfterFrom',
  'conditionalSearch',
  'maxResponseBytes',
  'concurrency',
  'rateLimit',
] as const satisfies readonly (keyof ServerLimits)[];

/** The preset keys a destination sets itself. */
function pickLimits(d: Record<string, unknown>): Partial<ServerLimits> {
  return Object.fromEntries(LIMIT_KEYS.filter((k) => d[k] !== undefined).map((k) => [k, d[k]])) as Partial<ServerLimits>;
}

/** A destination's fields that come from its preset and limits. */
function limitFields(server: ServerPreset, limits: ServerLimits): Pick<Destination, 'server' | 'maxEntries' | 'maxConditionalEntries' | 'transactions' | 'atomicTransactions' | 'retryAfterFrom' | 'conditionalSearch' | 'maxResponseBytes' | 'concurrency' | 'rateLimit'> {
  return {
    server,
    maxEntries: entriesPerTransaction(limits),
    ...(limits.maxConditionalEntries !== undefined ? { maxConditionalEntries: limits.maxConditionalEntries } : {}),
    transactions: limits.transactions,
    atomicTransactions: limits.atomicTransactions,
    retryAfterFrom: limits.retryAfterFrom,
    conditionalSearch: limits.conditionalSearch,
    maxResponseBytes: limits.maxResponseBytes,
    concurrency: limits.concurrency,
    ...(limits.rateLimit ? { rateLimit: limits.rateLimit } : {}),
  };
}

/** The types a destination receives that trialbridge updates by `_tag` (whatever identity.ts keys that way). */
function tagKeyedTypes(resourceTypes: '*' | readonly string[]): string[] {
  const candidates = resourceTypes === '*' ? ['AdverseEvent', 'Provenance'] : resourceTypes;
  return candidates.filter((type) => conditionalUrl(type, 's', 'v').startsWith(`${type}?_tag=`));
}

function schemaIssue(
  error: ErrorObject,
  file: string,
  where: (path: readonly (string | number)[]) => number | undefined,
  nameAt: (index: unknown) => string | undefined,
): DestinationIssue {
  const described = describeSchemaError(error);
  const path: (string | number)[] = described.path;
  let message = described.message;
  if (error.schemaPath.startsWith('#/$defs/secret')) {
    // A secret is named as a whole, whatever key inside it is wrong.
    if (error.keyword === 'additionalProperties') path.pop();
    message = error.keyword === 'pattern' ? 'env must name a variable (letters, digits, _)' : SECRET_MESSAGE;
  } else if (error.keyword === 'discriminator') {
    message = 'auth.type must be one of none, bearer, basic, oauth2-client-credentials, smart-backend-services';
  } else if ((path[2] === 'sites' || path[2] === 'resourceTypes') && path.length === 3 && ['const', 'type', 'anyOf'].includes(error.keyword)) {
    message = path[2] === 'sites' ? 'must be "*" or a list of site ids' : 'must be "*" or a list of resource types';
  } else if (error.keyword === 'pattern' && path[path.length - 1] === 'baseUrl') {
    message = 'must be an http(s) URL';
  }
  const destination = path[0] === 'destinations' ? nameAt(path[1]) : undefined;
  return { file, line: where(path), key: path.join('.'), destination, message };
}

/**
 * A destination made in code (the demo, benchmarks) rather than loaded from a file: every site and resource
 * type, no auth, the documented defaults for the rest.
 */
export function destinationWithDefaults(init: Pick<Destination, 'name' | 'kind' | 'baseUrl'> & Partial<Destination>): Destination {
  return {
    sites: '*',
    resourceTypes: '*',
    profiles: [],
    ...limitFields(init.server ?? DEFAULTS.server, resolveLimits(init.server ?? DEFAULTS.server, {})),
    atomic: DEFAULTS.atomic,
    subjectsPerTransaction: DEFAULTS.subjectsPerTransaction,
    pacing: DEFAULT_PACING,
    timeoutMs: DEFAULTS.timeoutMs,
    retry: DEFAULTS.retry,
    circuitBreaker: DEFAULTS.circuitBreaker,
    verify: DEFAULTS.verify,
    pseudonymise: init.pseudonymisationKey !== undefined,
    auth: { type: 'none' },
    source: { file: '(code)' },
    ...init,
  };
}

/** Whether a destination receives a site's subjects. */
export function acceptsSite(destination: Destination, site: string): boolean {
  return destination.sites === '*' || destination.sites.includes(site);
}

/** Whether a destination receives a resource type. */
export function acceptsResourceType(destination: Destination, resourceType: string): boolean {
  return destination.resourceTypes === '*' || destination.resourceTypes.includes(resourceType);
}

/** One line about a destination for logs: never a secret (secret sources are named, not their values). */
export function describe(destination: Destination): string {
  const url = new URL(destination.baseUrl);
  url.username = '';
  url.password = '';
  url.search = '';
  const auth = destination.auth;
  const authText = 'tokenUrl' in auth ? `${auth.type} via ${new URL(auth.tokenUrl).origin}` : auth.type;
  const sites = destination.sites === '*' ? 'all sites' : `sites ${destination.sites.join(',')}`;
  const types = destination.resourceTypes === '*' ? 'all types' : `types ${destination.resourceTypes.join(',')}`;
  return [
    `${destination.kind} '${destination.name}'${destination.server === 'generic' ? '' : ` (${destination.server})`} ${url.toString().replace(/\/$/, '')}`,
    sites,
    types,
    `auth ${authText}`,
    destination.pseudonymise ? 'pseudonymised' : 'identifiable',
    `${destination.maxEntries} entries/transaction${destination.atomic ? ' (atomic)' : ''}${destination.subjectsPerTransaction > 1 ? `, up to ${destination.subjectsPerTransaction} subjects each` : ''}`,
    `transactions ${destination.transactions}`,
    `concurrency ${destination.concurrency}`,
  ].join(', ');
}
