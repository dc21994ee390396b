import { setTimeout as delay } from 'node:timers/promises';
import type { Bundle, BundleEntry, CapabilityStatement, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { FhirHttpError, JsonText, outcomeText, type FhirClient, type FhirResponse, type HttpMethod } from './client.ts';
import { ResponseTooLargeError } from './http-transport.ts';
import { isSerialized, parseBundle, type SerializedBundle } from './serialized-bundle.ts';
import { failureKind, retryPolicy, waitAskedMs, type FailureKind, type RetryPolicy, type RetryPolicyOptions } from './retry.ts';
import { conditionalReference, dependencyOrder, referencesOf, rewriteReferences, splitTransaction, toConditionalUpdates } from './split.ts';

export interface DeliverOptions {
  /** Most entries the destination takes in one transaction; larger bundles are split (see splitTransaction). */
  readonly maxEntries?: number;
  /**
   * Send transactions (true), individual conditional updates (false), or ask the server's CapabilityStatement
   * once per client ('detect', the default).
   */
  readonly transactions?: boolean | 'detect';
  /** The retry policy, or its options. */
  readonly retry?: RetryPolicy | RetryPolicyOptions;
  /** How to wait between attempts (default a timer); injectable for tests. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** The clock, for Retry-After dates (default Date.now). */
  readonly now?: () => number;
  /**
   * Once an earlier request has told the server id of a resource, refer to it as `Type/id` instead of by a
   * conditional reference in the requests that follow (default true): every server resolves those, while
   * conditional references outside a transaction are not R4 (and not every server resolves them inside one).
   */
  readonly literalReferences?: boolean;
  /**
   * When the data is refused, delete again the resources this delivery created before the refusal (default
   * true): a server that applies a transaction entry by entry, a split transaction, or individual updates would
   * otherwise keep part of a subject that is reported dead-lettered. Only entries the server answered 201 are
   * removed (resources held before the delivery stay); dependants first.
   */
  readonly rollBackCreated?: boolean;
  /**
   * Told of each throttle (429) or conflict (409, serialization 412) that this delivery retries itself, before
   * it waits: the destination's pacer must back off while the delivery is still going, not only when it ends
   * (a delivery whose retry then succeeds would otherwise never slow the destination down).
   */
  readonly onPressure?: (signal: PressureSignal) => void;
}

/** A throttle or conflict met inside one delivery (see DeliverOptions.onPressure). */
export interface PressureSignal {
  readonly kind: 'throttle' | 'conflict';
  readonly status?: number;
  readonly retryAfterMs?: number;
}

/** Per-entry outcomes by HTTP status class; `missing`: a request entry the answer had no entry for. */
export type StatusClass = '2xx' | '3xx' | '4xx' | '5xx' | 'missing';
export type StatusClasses = Partial<Record<StatusClass, number>>;

/**
 * Why a delivery failed: the FailureKind of a status (throttle 429, conflict 409 / 412 serialization,
 * unavailable 5xx / 408 / network, invalid: the data refused), or `answer`: the destination answered
 * something that is no valid answer (a redirect, a body that is not FHIR JSON of the expected kind, missing or
 * extra entries, more than maxResponseBytes). `answer` is permanent: such a destination is misconfigured or
 * broken, and nothing it said can be counted delivered.
 */
export type DeliveryFailureKind = FailureKind | 'answer';

/** One entry of the subject's bundle the server did not apply (or applied pointing at one it refused). */
export interface EntryFailure {
  /** Position of the entry in the request that carried it. */
  readonly index: number;
  readonly resourceType: string;
  /** The business identifier's system (which key the entry has; never its value). */
  readonly identifierSystem?: string;
  /** The entry's HTTP status (0 when the answer had no entry for it). */
  readonly status: number;
  readonly outcome?: OperationOutcome;
  readonly kind: DeliveryFailureKind;
  /** Set when the entry's own status was fine but it refers to an entry that failed (a Provenance of a refused AdverseEvent): the index of that entry. */
  readonly dependsOn?: number;
}

export interface DeliveryRejection {
  /** HTTP status of the answer, or of the first refused entry. */
  readonly status: number;
  /** The server's OperationOutcome (one built from the response when the server sent none). */
  readonly outcome: OperationOutcome;
  /** The server's message, with the refused entries named by resource type and identifier system. */
  readonly message: string;
  /** `invalid`: the data was refused; `answer`: the answer itself was unusable (see DeliveryFailureKind). */
  readonly kind: 'invalid' | 'answer';
  /** The refused entries, when the server answered per entry. */
  readonly entries?: readonly EntryFailure[];
}

export interface DeliveryResult {
  readonly outcome: 'delivered' | 'rejected';
  /** HTTP attempts made for the bundle's writes, retries included. */
  readonly attempts: number;
  /** Write requests that completed (transactions, or individual updates), the rejected one included. */
  readonly requests: number;
  /** What the server reported for the entries it applied. */
  readonly entries: { created: number; updated: number };
  /** Per-entry outcomes of every answer received for this delivery, retried ones included. */
  readonly statusClasses: StatusClasses;
  /** `Type/id` the server gave each delivered entry, by fullUrl, where its answer told (location or resource). */
  readonly located?: Readonly<Record<string, string>>;
  /** A rejected delivery with rollBackCreated false: `Type/id` of the entries it created (201), by fullUrl, for the caller to remove. */
  readonly created?: Readonly<Record<string, string>>;
  readonly rejection?: DeliveryRejection;
}

/** A failure worth retrying later (the server is down, overloaded or slow): the queue should retry the job. */
export class DeliveryRetryableError extends Error {
  override readonly name = 'DeliveryRetryableError';
  /** Attempts made for the failing request. */
  readonly attempts: number;
  /** HTTP status of the last attempt (or of its worst failing entry), when there was a response. */
  readonly status: number | undefined;
  /**
   * How long the server asked to wait, in ms: x-ms-retry-after-ms, Retry-After, RateLimit `t`, or
   * `_msBeforeNext` in an OperationOutcome (of the answer or of a throttled entry inside a 200).
   */
  readonly retryAfterMs: number | undefined;
  /** `shared-pending`: another worker is writing the trial-wide entries this bundle refers to. */
  readonly kind: 'throttle' | 'conflict' | 'unavailable' | 'shared-pending';
  /** The server throttled (429): pacing should slow down. */
  readonly throttled: boolean;
  /** A write conflict (409, 412 serialization): pacing should lower concurrency. */
  readonly conflict: boolean;
  /** Per-entry outcomes of the answers received, when the failure was inside a 2xx answer. */
  readonly statusClasses: StatusClasses | undefined;
  readonly entries: readonly EntryFailure[] | undefined;
  /**
   * `Type/id` of the entries this delivery created (201) before giving up, by fullUrl: a caller that gives the
   * subject up for good removes them (undoAfterGivingUp), like a refused delivery's.
   */
  readonly created: Readonly<Record<string, string>> | undefined;

  constructor(
    message: string,
    init: {
      attempts: number;
      status?: number;
      retryAfterMs?: number;
      kind?: DeliveryRetryableError['kind'];
      statusClasses?: StatusClasses;
      entries?: readonly EntryFailure[];
      created?: Readonly<Record<string, string>>;
      cause: unknown;
    },
  ) {
    super(message, { cause: init.cause });
    this.attempts = init.attempts;
    this.status = init.status;
    this.retryAfterMs = init.retryAfterMs;
    this.kind = init.kind ?? 'unavailable';
    this.throttled = this.kind === 'throttle';
    this.conflict = this.kind === 'conflict';
    this.statusClasses = init.statusClasses;
    this.entries = init.entries;
    this.created = init.created;
  }
}

/** A 2xx answer whose entries failed in ways worth retrying: the request is sent again. */
class EntriesRetryable extends Error {
  readonly retryable = true;
  readonly status: number;
  readonly kind: 'throttle' | 'conflict' | 'unavailable';
  readonly retryAfterMs: number | undefined;
  readonly failures: readonly EntryFailure[];
  constructor(message: string, failures: readonly EntryFailure[], retryAfterMs: number | undefined) {
    super(message);
    this.failures = failures;
    // Throttling first: it is what pacing must react to; then conflicts.
    const worst = failures.find((f) => f.kind === 'throttle') ?? failures.find((f) => f.kind === 'conflict') ?? failures[0];
    this.status = worst.status;
    this.kind = worst.kind as EntriesRetryable['kind'];
    this.retryAfterMs = retryAfterMs;
  }
}

/** An answer that is not a valid answer to the request: permanent (see DeliveryFailureKind `answer`). */
export class DeliveryAnswerError extends Error {
  override readonly name = 'DeliveryAnswerError';
  readonly retryable = false;
  readonly status: number;
  constructor(message: string, status: number) {
    super(message);
    this.status = status;
  }
}

interface Run {
  readonly policy: RetryPolicy;
  readonly sleep: (ms: number) => Promise<void>;
  readonly now: () => number;
  readonly onPressure: ((signal: PressureSignal) => void) | undefined;
  attempts: number;
  readonly classes: Record<string, number>;
  /** Entries the server answered 201 in any attempt of this delivery: fullUrl → `Type/id`. */
  readonly createdNow: Map<string, string>;
}

const defaultSleep = (ms: number): Promise<void> => delay(ms);

function newRun(options: Pick<DeliverOptions, 'retry' | 'sleep' | 'now' | 'onPressure'>): Run {
  return { policy: retryPolicy(options.retry), sleep: options.sleep ?? defaultSleep, now: options.now ?? Date.now, onPressure: options.onPressure, attempts: 0, classes: {}, createdNow: new Map() };
}

function retryKind(error: unknown): DeliveryRetryableError['kind'] {
  if (error instanceof EntriesRetryable) return error.kind;
  if (error instanceof FhirHttpError && (error.kind === 'throttle' || error.kind === 'conflict')) return error.kind;
  return 'unavailable';
}

/** Runs one request under the retry policy; counts attempts on `run`. */
async function withRetry<T>(run: Run, what: string, send: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    run.attempts++;
    try {
      return await send();
    } catch (error) {
      if (run.policy.classify(error) !== 'retry') throw error;
      const status = error instanceof FhirHttpError || error instanceof EntriesRetryable ? error.status : undefined;
      const asked = error instanceof FhirHttpError ? error.waitMs(run.now()) : error instanceof EntriesRetryable ? error.retryAfterMs : undefined;
      const reason = error instanceof Error ? error.message : String(error);
      const init = {
        attempts: attempt,
        status,
        retryAfterMs: asked,
        kind: retryKind(error),
        statusClasses: { ...run.classes },
        ...(error instanceof EntriesRetryable ? { entries: error.failures } : {}),
        ...(run.createdNow.size > 0 ? { created: Object.fromEntries(run.createdNow) } : {}),
        cause: error,
      };
      if (!run.policy.canRetry(attempt)) throw new DeliveryRetryableError(`${what}: gave up after ${attempt} attempts: ${reason}`, init);
      if (asked !== undefined && asked > run.policy.maxRetryAfterMs) {
        throw new DeliveryRetryableError(`${what}: the server asks to retry in ${Math.round(asked / 1000)} s: ${reason}`, init);
      }
      // Given up above, the caller reads the error itself: only a retry made here is told as pressure.
      if (init.kind === 'throttle' || init.kind === 'conflict') {
        run.onPressure?.({ kind: init.kind, ...(status !== undefined ? { status } : {}), ...(asked !== undefined ? { retryAfterMs: asked } : {}) });
      }
      await run.sleep(run.policy.delayFor(attempt, asked, run.now()));
    }
  }
}

const capabilities = new WeakMap<FhirClient, Promise<boolean>>();
const nonAtomic = new WeakSet<FhirClient>();

/**
 * Whether a destination has shown that it applies a `transaction` entry by entry: it answered a transaction
 * with some entries applied and others refused (Medplum without `transaction-bundles` does so while its
 * CapabilityStatement declares transactions). Learnt per client from the answers themselves.
 */
export function isNonAtomic(client: FhirClient): boolean {
  return nonAtomic.has(client);
}

/**
 * Whether the server takes transactions: its CapabilityStatement lists the `transaction` interaction. Asked
 * once per client; a server without a readable CapabilityStatement (a 4xx) is taken not to. A failure worth
 * retrying is not remembered, nor is a redirect (the destination is misconfigured: the delivery says so).
 * That the server declares transactions does not make them atomic: see isNonAtomic.
 */
export function supportsTransactions(client: FhirClient, options: Pick<DeliverOptions, 'retry' | 'sleep' | 'now'> = {}): Promise<boolean> {
  let known = capabilities.get(client);
  if (!known) {
    const run = newRun(options);
    known = withRetry(run, `GET ${client.url('metadata')}`, () => client.get<CapabilityStatement>('metadata')).then(
      (response) => (response.body?.rest ?? []).some((rest) => (rest.interaction ?? []).some((i) => i.code === 'transaction')),
      (error: unknown) => {
        if (error instanceof FhirHttpError && !error.retryable && error.kind !== 'redirect' && error.status !== 401 && error.status !== 403) return false;
        capabilities.delete(client);
        throw error;
      },
    );
    capabilities.set(client, known);
  }
  return known;
}

function statusClass(status: number): StatusClass {
  if (status >= 200 && status < 300) return '2xx';
  if (status >= 300 && status < 400) return '3xx';
  if (status >= 400 && status < 500) return '4xx';
  return '5xx';
}

function countClass(run: Run, cls: StatusClass, n = 1): void {
  run.classes[cls] = (run.classes[cls] ?? 0) + n;
}

/** What is known of a request entry to name it in a failure: its type and identifier system, never values. */
interface EntryName {
  readonly resourceType: string;
  readonly identifierSystem?: string;
  readonly fullUrl?: string;
  /** fullUrls the entry refers to. */
  readonly references: readonly string[];
}

function entryName(entry: BundleEntry): EntryName {
  const resource = entry.resource;
  const tag = resource?.meta?.tag?.[0];
  const raw = (resource as { identifier?: unknown } | undefined)?.identifier;
  const identifier = (Array.isArray(raw) ? raw[0] : raw) as { system?: string } | undefined;
  const system = tag?.system ?? identifier?.system;
  return {
    resourceType: resource?.resourceType ?? entry.request?.url?.split('?')[0] ?? 'entry',
    ...(system ? { identifierSystem: system } : {}),
    ...(entry.fullUrl ? { fullUrl: entry.fullUrl } : {}),
    references: resource ? referencesOf(resource) : [],
  };
}

function describeFailure(f: EntryFailure, names: readonly EntryName[]): string {
  const key = f.identifierSystem ? ` ${f.identifierSystem}` : '';
  if (f.dependsOn !== undefined) {
    const target = names[f.dependsOn];
    return `${f.resourceType}${key} (entry ${f.index}) refers to the refused ${target?.resourceType ?? 'entry'} (entry ${f.dependsOn})`;
  }
  const status = f.status === 0 ? 'no answer entry' : `HTTP ${f.status}`;
  const text = outcomeText(f.outcome);
  return `${f.resourceType}${key} (entry ${f.index}): ${status}${text ? `: ${text}` : ''}`;
}

/** Entries that refer, directly or through others, to a failed entry, though their own status was fine. */
function dependents(names: readonly EntryName[], failures: readonly EntryFailure[]): EntryFailure[] {
  const failedUrls = new Map<string, number>();
  for (const f of failures) {
    const url = names[f.index]?.fullUrl;
    if (url) failedUrls.set(url, f.index);
  }
  const out: EntryFailure[] = [];
  const failed = new Set(failures.map((f) => f.index));
  for (let changed = true; changed; ) {
    changed = false;
    names.forEach((name, index) => {
      if (failed.has(index)) return;
      const target = name.references.map((r) => failedUrls.get(r)).find((i) => i !== undefined);
      if (target === undefined) return;
      failed.add(index);
      if (name.fullUrl) failedUrls.set(name.fullUrl, index);
      out.push({ index, resourceType: name.resourceType, ...(name.identifierSystem ? { identifierSystem: name.identifierSystem } : {}), status: 0, kind: 'invalid', dependsOn: target });
      changed = true;
    });
  }
  return out;
}

/** The checked answer to one transaction (or batch): which entries were applied, which failed and how. */
interface CheckedAnswer {
  readonly answers: BundleEntry[];
  readonly failures: EntryFailure[];
}

const EXPECTED_TYPE: Record<string, string> = { transaction: 'transaction-response', batch: 'batch-response' };

/**
 * Checks a transaction's answer: a Bundle of the expected type with one entry per request entry, each with a
 * status. Throws DeliveryAnswerError when it is none of that; returns the entries that failed (with the
 * names from `names()`, asked only when something failed: a serialised bundle is parsed only then).
 */
function checkAnswer(run: Run, response: FhirResponse<Bundle>, requestType: string, fullUrls: readonly (string | undefined)[], names: () => readonly EntryName[]): CheckedAnswer {
  const count = fullUrls.length;
  const body = response.body as Bundle | undefined;
  const expected = EXPECTED_TYPE[requestType] ?? `${requestType}-response`;
  if (body === undefined || typeof body !== 'object' || body === null || Array.isArray(body) || body.resourceType !== 'Bundle') {
    const type = response.headers.get('content-type') ?? 'no content type';
    const what = response.empty ? 'an empty body' : body === undefined ? `a body that is not JSON (${type.split(';')[0]})` : `JSON that is not a FHIR Bundle (${String((body as { resourceType?: unknown }).resourceType ?? 'no resourceType')})`;
    throw new DeliveryAnswerError(`the answer (HTTP ${response.status}) to a ${requestType} of ${count} entries is ${what}, not a ${expected}: nothing counted delivered`, response.status);
  }
  if (body.type !== expected) {
    throw new DeliveryAnswerError(`the answer (HTTP ${response.status}) to a ${requestType} is a Bundle of type ${String(body.type)}, not a ${expected}: nothing counted delivered`, response.status);
  }
  const answers = body.entry ?? [];
  if (answers.length !== count) {
    if (answers.length < count) countClass(run, 'missing', count - answers.length);
    throw new DeliveryAnswerError(
      `the ${expected} (HTTP ${response.status}) has ${answers.length} entries for the ${count} sent: ${answers.length < count ? 'entries missing' : 'extra entries'}, nothing counted delivered`,
      response.status,
    );
  }
  const failures: EntryFailure[] = [];
  answers.forEach((answer, index) => {
    const status = Number.parseInt(String(answer?.response?.status ?? '').trim(), 10);
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      countClass(run, 'missing');
      failures.push({ index, resourceType: '', status: 0, kind: 'answer' });
      return;
    }
    countClass(run, statusClass(status));
    if (status === 201) {
      const where = literalOf(answer.resource, answer.response?.location);
      if (where && fullUrls[index]) run.createdNow.set(fullUrls[index], where);
    }
    if (status >= 200 && status < 300) return;
    const outcome = answer.response?.outcome?.resourceType === 'OperationOutcome' ? (answer.response.outcome as OperationOutcome) : undefined;
    const kind: DeliveryFailureKind = status < 400 ? 'answer' : (failureKind(status, outcome) ?? 'invalid');
    failures.push({ index, resourceType: '', status, ...(outcome ? { outcome } : {}), kind });
  });
  if (failures.length === 0) return { answers, failures };
  const named = names();
  for (const [i, f] of failures.entries()) {
    const name = named[f.index];
    failures[i] = { ...f, resourceType: name?.resourceType ?? 'entry', ...(name?.identifierSystem ? { identifierSystem: name.identifierSystem } : {}) };
  }
  return { answers, failures };
}

/**
 * Judges the failed entries of a checked answer: nothing failed permanently but something transiently →
 * EntriesRetryable (the request is sent again: every entry is a conditional update, so the entries already
 * applied are simply written again); something failed permanently → the rejection, the entries that depend on
 * a refused one included.
 */
function judge(client: FhirClient, response: FhirResponse<Bundle>, checked: CheckedAnswer, names: () => readonly EntryName[], now: number): DeliveryRejection | undefined {
  const { failures, answers } = checked;
  if (failures.length === 0) return undefined;
  if (failures.length < answers.length) nonAtomic.add(client);
  const permanent = failures.filter((f) => f.kind === 'invalid' || f.kind === 'answer');
  const named = names();
  if (permanent.length === 0) {
    // A throttled entry inside a 200 (Medplum, Azure batches) carries the wait in its own outcome; the answer's headers may say it too.
    const waits = failures.map((f) => waitAskedMs(f.kind === 'throttle' ? response.headers : undefined, f.outcome, now, client.waitSources)).filter((w): w is number => w !== undefined);
    const asked = waitAskedMs(response.headers, undefined, now, client.waitSources) ?? (waits.length > 0 ? Math.max(...waits) : undefined);
    const summary = summarise(failures);
    throw new EntriesRetryable(`${failures.length} of ${answers.length} entries failed (${summary}): ${failures.slice(0, 3).map((f) => describeFailure(f, named)).join('; ')}`, failures, asked);
  }
  const all = [...failures, ...dependents(named, failures)];
  const first = permanent[0];
  const applied = failures.length < answers.length ? ` (the destination applies a transaction entry by entry: the other ${answers.length - failures.length} were applied)` : '';
  const message = `${all.length} of ${answers.length} entries not delivered (${summarise(all)})${applied}: ${all.slice(0, 5).map((f) => describeFailure(f, named)).join('; ')}${all.length > 5 ? `; and ${all.length - 5} more` : ''}`;
  const issues = all.flatMap((f) => f.outcome?.issue ?? []);
  return {
    status: first.status,
    outcome: { resourceType: 'OperationOutcome', issue: issues.length > 0 ? issues : [{ severity: 'error', code: 'processing', diagnostics: message }] },
    message,
    kind: permanent.every((f) => f.kind === 'answer') ? 'answer' : 'invalid',
    entries: all,
  };
}

function summarise(failures: readonly EntryFailure[]): string {
  const counts = new Map<string, number>();
  for (const f of failures) {
    const key = f.dependsOn !== undefined ? 'dependent' : f.status === 0 ? 'no status' : String(f.status);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([k, n]) => `${n}× ${k}`).join(', ');
}

/** `Type/id` of a location (`Type/id`, `Type/id/_history/n`, absolute or relative), or undefined. */
function literalFromLocation(location: string | null | undefined): string | undefined {
  if (!location) return undefined;
  const match = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]*)?\/?$/.exec(location.split('?')[0]);
  return match ? `${match[1]}/${match[2]}` : undefined;
}

function literalOf(resource: Resource | undefined, location: string | null | undefined): string | undefined {
  if (resource?.resourceType && resource.id) return `${resource.resourceType}/${resource.id}`;
  return literalFromLocation(location);
}

function isCreated(status: string | number | undefined): boolean {
  return String(status ?? '').trim().startsWith('201');
}

function rejectionOf(error: FhirHttpError | DeliveryAnswerError | ResponseTooLargeError): DeliveryRejection {
  if (!(error instanceof FhirHttpError)) {
    return {
      status: error.status ?? 0,
      outcome: { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'processing', diagnostics: error.message }] },
      message: error.message,
      kind: 'answer',
    };
  }
  const outcome: OperationOutcome = error.outcome ?? {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: 'processing', diagnostics: error.message }],
  };
  return { status: error.status, outcome, message: outcomeText(error.outcome) || error.message, kind: error.kind === 'redirect' ? 'answer' : 'invalid' };
}

/**
 * A failure that is an answer about this delivery, to be dead-lettered as it is: the data refused (a 4xx other
 * than 401/403/407), a redirect, an unusable answer (DeliveryAnswerError, ResponseTooLargeError); as opposed
 * to a problem with the destination's credentials or permissions, or one worth retrying.
 */
function isRejection(error: unknown): error is FhirHttpError | DeliveryAnswerError | ResponseTooLargeError {
  if (error instanceof DeliveryAnswerError || error instanceof ResponseTooLargeError) return true;
  return error instanceof FhirHttpError && !error.retryable && error.status !== 401 && error.status !== 403 && error.status !== 407;
}

/**
 * The answer to one individual conditional update, checked: a 2xx whose body is a resource of the entry's
 * type, or an empty body (servers asked for, or defaulting to, `Prefer: return=minimal`) whose Location or
 * Content-Location names a resource of that type. Anything else (an HTML page, another resource type, an
 * OperationOutcome, an empty body with nothing saying what was written) is not proof the resource is held.
 */
function checkUpdateAnswer(response: FhirResponse<Resource>, type: string, what: string): void {
  const body = response.body as unknown;
  if (response.empty) {
    const location = response.headers.get('location') ?? response.headers.get('content-location');
    if (literalFromLocation(location)?.startsWith(`${type}/`)) return;
    throw new DeliveryAnswerError(`${what}: HTTP ${response.status} with an empty body and no Location of a ${type}: nothing proves it was written`, response.status);
  }
  if (body === undefined || typeof body !== 'object' || body === null || Array.isArray(body)) {
    const contentType = (response.headers.get('content-type') ?? 'no content type').split(';')[0];
    throw new DeliveryAnswerError(`${what}: HTTP ${response.status} with a body that is not FHIR JSON (${contentType}): nothing counted delivered`, response.status);
  }
  const resourceType = (body as { resourceType?: unknown }).resourceType;
  if (resourceType !== type) {
    throw new DeliveryAnswerError(`${what}: HTTP ${response.status} answered with ${typeof resourceType === 'string' ? `a ${resourceType}` : 'JSON that is no resource'}, not the ${type} written`, response.status);
  }
}

/**
 * Delivers one subject's transaction bundle to a destination: as one transaction, as several (maxEntries),
 * or as individual conditional updates (a server without transactions), each request retried under the
 * policy. Every entry is a conditional update, so sending a request again is safe even when an earlier
 * attempt may have been applied.
 *
 * Every answer is checked (checkAnswer, checkUpdateAnswer): `delivered` only when each entry of each request
 * came back 2xx. A 2xx answer holding failed entries is judged entry by entry like a whole answer: when the
 * failures are all transient (429, 409, 412 serialization, 408, 5xx) the whole request is sent again after the
 * wait the server asks for. Re-sending the whole request (the subject's transaction, or the failing part of a
 * split one) rather than only its failed entries is deliberate: the entries of a subject refer to each other
 * by `urn:uuid`, so a failed entry's dependants would have to travel with it anyway (conditional references
 * are not resolved everywhere), and a server that throttles fails every remaining entry (Medplum, Azure), so
 * the failed part is most of the request; the cost is re-writing the applied entries, which changes no
 * resource's content (conditional updates of the same data).
 *
 * Resolves `rejected` when the server refuses the data (a 4xx other than 401/403, or a refused entry) with
 * its OperationOutcome and the refused entries (and those referring to them) named, or when the answer is
 * unusable (a redirect, not FHIR, missing entries, too large); requests before it stay applied. Rejects
 * with DeliveryRetryableError when a retryable failure outlasts the policy, and with the FhirHttpError of a
 * credentials problem (401 after a refresh, 403).
 */
export async function deliverBundle(client: FhirClient, given: Bundle | SerializedBundle, options: DeliverOptions = {}): Promise<DeliveryResult> {
  const run = newRun(options);
  const mode = options.transactions ?? 'detect';
  let transactions: boolean;
  try {
    transactions = mode === 'detect' ? await supportsTransactions(client, options) : mode;
  } catch (error) {
    // A CapabilityStatement answered with a redirect: the destination is misconfigured, like any redirect.
    if (error instanceof FhirHttpError && error.kind === 'redirect') return { outcome: 'rejected', attempts: 1, requests: 0, entries: { created: 0, updated: 0 }, statusClasses: {}, rejection: rejectionOf(error) };
    throw error;
  }
  if (isSerialized(given) && transactions && (!options.maxEntries || given.entries.length <= options.maxEntries)) {
    return deliverText(client, given, run, options);
  }
  const bundle = isSerialized(given) ? parseBundle(given) : given;
  const literal = new Map<string, string>();
  const useLiteral = options.literalReferences !== false;
  const resolve = <T>(value: T): T => (useLiteral && literal.size > 0 ? rewriteReferences(value, (ref) => literal.get(ref)) : value);
  const located: Record<string, string> = {};
  const learn = (entry: BundleEntry, resource: Resource | undefined, location: string | null | undefined): void => {
    const where = entry.fullUrl ? literalOf(resource, location) : undefined;
    if (where) located[entry.fullUrl!] = where;
    const key = useLiteral ? conditionalReference(entry) : undefined;
    const target = key && literalOf(resource, location);
    if (key && target) literal.set(key, target);
  };
  let requests = 0;
  let created = 0;
  let updated = 0;
  const result = (rejection?: DeliveryRejection): DeliveryResult => ({
    outcome: rejection ? 'rejected' : 'delivered',
    attempts: run.attempts,
    requests,
    entries: { created, updated },
    statusClasses: { ...run.classes },
    ...(rejection ? { rejection } : { located }),
  });
  const rejected = async (rejection: DeliveryRejection): Promise<DeliveryResult> => {
    const undone = await undoCreated(client, run, rejection, bundle.entry ?? [], options);
    return { ...result(undone.rejection), ...(undone.created ? { created: undone.created } : {}) };
  };

  try {
    if (transactions) {
      const parts = options.maxEntries ? splitTransaction(bundle, options.maxEntries) : [bundle];
      for (const [i, part] of parts.entries()) {
        const body = resolve(part);
        const what = `transaction ${i + 1}/${parts.length} to ${client.baseUrl}`;
        const names = (): EntryName[] => (part.entry ?? []).map(entryName);
        let rejection: DeliveryRejection | undefined;
        let answers: BundleEntry[];
        try {
          ({ answers, rejection } = await withRetry(run, what, async () => {
            const response = await client.post<Bundle>('', body);
            const checked = checkAnswer(run, response, 'transaction', (part.entry ?? []).map((e) => e.fullUrl), names);
            return { answers: checked.answers, rejection: judge(client, response, checked, names, run.now()) };
          }));
        } finally {
          requests++;
        }
        if (rejection) return await rejected(rejection);
        (part.entry ?? []).forEach((entry, j) => {
          const answer = answers[j];
          if (isCreated(answer?.response?.status)) created++;
          else updated++;
          learn(entry, answer?.resource, answer?.response?.location);
        });
      }
    } else {
      for (const entry of toConditionalUpdates(bundle)) {
        const method = (entry.request?.method ?? 'PUT') as HttpMethod;
        const url = entry.request?.url;
        if (!url) throw new Error(`entry ${entry.fullUrl ?? '?'} has no request URL`);
        const body = entry.resource === undefined ? undefined : resolve(entry.resource);
        const type = entry.resource?.resourceType ?? url.split('?')[0];
        const what = `${method} ${type}${entryName(entry).identifierSystem ? ` ${entryName(entry).identifierSystem}` : ''}`;
        let response: FhirResponse<Resource>;
        try {
          response = await withRetry(run, what, async () => {
            try {
              const answer = await client.request<Resource>(method, url, body);
              countClass(run, statusClass(answer.status));
              checkUpdateAnswer(answer, type, what);
              return answer;
            } catch (error) {
              if (error instanceof FhirHttpError) countClass(run, statusClass(error.status));
              throw error;
            }
          });
        } finally {
          requests++;
        }
        const location = response.headers.get('location') ?? response.headers.get('content-location');
        if (response.status === 201) {
          created++;
          const where = literalOf(response.body, location);
          if (where && entry.fullUrl) run.createdNow.set(entry.fullUrl, where);
        } else updated++;
        learn(entry, response.body, location);
      }
    }
  } catch (error) {
    if (isRejection(error)) return await rejected(rejectionOf(error));
    throw error;
  }
  return result();
}

/**
 * After a refusal: the resources this delivery created are deleted again (rollBackCreated, the default), the
 * rejection's message saying so; or, with rollBackCreated false (the batcher, which undoes per subject), handed
 * back as `created`.
 */
async function undoCreated(
  client: FhirClient,
  run: Run,
  rejection: DeliveryRejection,
  entries: readonly BundleEntry[],
  options: DeliverOptions,
): Promise<{ rejection: DeliveryRejection; created?: Record<string, string> }> {
  if (run.createdNow.size === 0) return { rejection };
  if (options.rollBackCreated === false) return { rejection, created: Object.fromEntries(run.createdNow) };
  return { rejection: withRollBack(rejection, await rollBack(client, run.createdNow, entries, options)) };
}

/**
 * A delivery given up for good after retryable failures (its last attempt): what it created is removed again,
 * as for a refused one, so that the dead-lettered subject is not half on the server. Returns the note for the
 * dead letter's reason ('' when nothing was created).
 */
export async function undoAfterGivingUp(client: FhirClient, bundle: SerializedBundle, error: unknown, options: DeliverOptions = {}): Promise<string> {
  if (!(error instanceof DeliveryRetryableError) || !error.created) return '';
  const done = await rollBack(client, new Map(Object.entries(error.created)), parseBundle(bundle).entry ?? [], options);
  return rollBackNote(done);
}

/** The rejection, its message saying what was removed again. */
export function withRollBack(rejection: DeliveryRejection, done: { removed: number; failed: number }): DeliveryRejection {
  return { ...rejection, message: rejection.message + rollBackNote(done) };
}

function rollBackNote({ removed, failed }: { removed: number; failed: number }): string {
  return ` (${removed} resource${removed === 1 ? '' : 's'} this delivery had created removed again${failed > 0 ? `; ${failed} could not be removed` : ''})`;
}

/**
 * Deletes the resources a refused delivery created (`created`: fullUrl → `Type/id`), entries referring to
 * others first (servers with referential integrity refuse deleting what is referred to), each under the retry
 * policy. A resource already gone counts as removed; a failure is counted, never thrown: the delivery is
 * dead-lettered either way, and its replay writes the subject again.
 */
export async function rollBack(
  client: FhirClient,
  created: ReadonlyMap<string, string>,
  entries: readonly BundleEntry[],
  options: Pick<DeliverOptions, 'retry' | 'sleep' | 'now'> = {},
): Promise<{ removed: number; failed: number }> {
  const run = newRun(options);
  const ordered = dependencyOrder(entries)
    .map((e) => e.fullUrl)
    .filter((u): u is string => u !== undefined && created.has(u))
    .reverse();
  const rest = [...created.keys()].filter((u) => !ordered.includes(u));
  let removed = 0;
  let failed = 0;
  for (const fullUrl of [...ordered, ...rest]) {
    const reference = created.get(fullUrl)!;
    try {
      await withRetry(run, `DELETE ${reference.split('/')[0]}`, () => client.request('DELETE', reference));
      removed++;
    } catch (error) {
      if (error instanceof FhirHttpError && (error.status === 404 || error.status === 410)) removed++;
      else failed++;
    }
  }
  return { removed, failed };
}

/** One transaction sent as the text it already is; the answer's entries say what was created or updated. */
async function deliverText(client: FhirClient, bundle: SerializedBundle, run: Run, options: DeliverOptions): Promise<DeliveryResult> {
  const names = (): EntryName[] => (parseBundle(bundle).entry ?? []).map(entryName);
  let answers: BundleEntry[];
  let rejection: DeliveryRejection | undefined;
  try {
    ({ answers, rejection } = await withRetry(run, `transaction 1/1 to ${client.baseUrl}`, async () => {
      const response = await client.post<Bundle>('', new JsonText(bundle.bytes));
      const checked = checkAnswer(run, response, 'transaction', bundle.entries.map((e) => e.fullUrl), names);
      return { answers: checked.answers, rejection: judge(client, response, checked, names, run.now()) };
    }));
  } catch (error) {
    if (!isRejection(error)) throw error;
    rejection = rejectionOf(error);
    answers = [];
  }
  const base = { attempts: run.attempts, requests: 1, statusClasses: { ...run.classes } };
  if (rejection) {
    const undone = await undoCreated(client, run, rejection, run.createdNow.size > 0 ? (parseBundle(bundle).entry ?? []) : [], options);
    return { outcome: 'rejected', ...base, entries: { created: 0, updated: 0 }, rejection: undone.rejection, ...(undone.created ? { created: undone.created } : {}) };
  }
  const created = answers.filter((answer) => isCreated(answer.response?.status)).length;
  const located: Record<string, string> = {};
  bundle.entries.forEach((entry, j) => {
    const where = entry.fullUrl ? literalOf(answers[j]?.resource, answers[j]?.response?.location) : undefined;
    if (where) located[entry.fullUrl!] = where;
  });
  return { outcome: 'delivered', ...base, entries: { created, updated: bundle.entries.length - created }, located };
}
