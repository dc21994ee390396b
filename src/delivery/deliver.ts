import { setTimeout as delay } from 'node:timers/promises';
import type { Bundle, BundleEntry, CapabilityStatement, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { FhirHttpError, JsonText, outcomeText, type FhirClient, type FhirResponse, type HttpMethod } from './client.ts';
import { isSerialized, parseBundle, type SerializedBundle } from './serialized-bundle.ts';
import { parseRetryAfter, retryPolicy, type RetryPolicy, type RetryPolicyOptions } from './retry.ts';
import { conditionalReference, rewriteReferences, splitTransaction, toConditionalUpdates } from './split.ts';

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
}

export interface DeliveryRejection {
  readonly status: number;
  /** The server's OperationOutcome (one built from the response when the server sent none). */
  readonly outcome: OperationOutcome;
  /** The server's message. */
  readonly message: string;
}

export interface DeliveryResult {
  readonly outcome: 'delivered' | 'rejected';
  /** HTTP attempts made for the bundle's writes, retries included. */
  readonly attempts: number;
  /** Write requests that completed (transactions, or individual updates), the rejected one included. */
  readonly requests: number;
  /** What the server reported for the entries it applied. */
  readonly entries: { created: number; updated: number };
  readonly rejection?: DeliveryRejection;
}

/** A failure worth retrying later (the server is down, overloaded or slow): the queue should retry the job. */
export class DeliveryRetryableError extends Error {
  override readonly name = 'DeliveryRetryableError';
  /** Attempts made for the failing request. */
  readonly attempts: number;
  /** HTTP status of the last attempt, when there was a response. */
  readonly status: number | undefined;
  /** How long the server asked to wait (Retry-After), in ms. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, init: { attempts: number; status?: number; retryAfterMs?: number; cause: unknown }) {
    super(message, { cause: init.cause });
    this.attempts = init.attempts;
    this.status = init.status;
    this.retryAfterMs = init.retryAfterMs;
  }
}

interface Run {
  readonly policy: RetryPolicy;
  readonly sleep: (ms: number) => Promise<void>;
  readonly now: () => number;
  attempts: number;
}

const defaultSleep = (ms: number): Promise<void> => delay(ms);

/** Runs one request under the retry policy; counts attempts on `run`. */
async function withRetry<T>(run: Run, what: string, send: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    run.attempts++;
    try {
      return await send();
    } catch (error) {
      if (run.policy.classify(error) !== 'retry') throw error;
      const status = error instanceof FhirHttpError ? error.status : undefined;
      const retryAfter = error instanceof FhirHttpError ? error.retryAfter : undefined;
      const asked = parseRetryAfter(retryAfter, run.now());
      const reason = error instanceof Error ? error.message : String(error);
      if (!run.policy.canRetry(attempt)) {
        throw new DeliveryRetryableError(`${what}: gave up after ${attempt} attempts: ${reason}`, { attempts: attempt, status, retryAfterMs: asked, cause: error });
      }
      if (asked !== undefined && asked > run.policy.maxRetryAfterMs) {
        throw new DeliveryRetryableError(`${what}: the server asks to retry in ${Math.round(asked / 1000)} s: ${reason}`, {
          attempts: attempt,
          status,
          retryAfterMs: asked,
          cause: error,
        });
      }
      await run.sleep(run.policy.delayFor(attempt, retryAfter, run.now()));
    }
  }
}

const capabilities = new WeakMap<FhirClient, Promise<boolean>>();

/**
 * Whether the server takes transactions: its CapabilityStatement lists the `transaction` interaction. Asked
 * once per client; a server without a readable CapabilityStatement (a 4xx) is taken not to. A failure worth
 * retrying is not remembered.
 */
export function supportsTransactions(client: FhirClient, options: Pick<DeliverOptions, 'retry' | 'sleep' | 'now'> = {}): Promise<boolean> {
  let known = capabilities.get(client);
  if (!known) {
    const run: Run = { policy: retryPolicy(options.retry), sleep: options.sleep ?? defaultSleep, now: options.now ?? Date.now, attempts: 0 };
    known = withRetry(run, `GET ${client.url('metadata')}`, () => client.get<CapabilityStatement>('metadata')).then(
      (response) => (response.body?.rest ?? []).some((rest) => (rest.interaction ?? []).some((i) => i.code === 'transaction')),
      (error: unknown) => {
        if (error instanceof FhirHttpError && !error.retryable && error.status !== 401 && error.status !== 403) return false;
        capabilities.delete(client);
        throw error;
      },
    );
    capabilities.set(client, known);
  }
  return known;
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

function rejectionOf(error: FhirHttpError): DeliveryRejection {
  const outcome: OperationOutcome = error.outcome ?? {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: 'processing', diagnostics: error.message }],
  };
  return { status: error.status, outcome, message: outcomeText(error.outcome) || error.message };
}

/** A rejection of the data, as opposed to a problem with the destination's credentials or permissions. */
function isRejection(error: unknown): error is FhirHttpError {
  return error instanceof FhirHttpError && !error.retryable && error.status !== 401 && error.status !== 403 && error.status !== 407;
}

/**
 * Delivers one subject's transaction bundle to a destination: as one transaction, as several (maxEntries),
 * or as individual conditional updates (a server without transactions), each request retried under the
 * policy. Every entry is a conditional update, so sending a request again is safe even when an earlier
 * attempt may have been applied.
 *
 * Resolves `delivered`, or `rejected` when the server refuses the data (a 4xx other than 401/403: not worth
 * retrying) with its OperationOutcome; requests before the rejected one stay applied. Rejects with
 * DeliveryRetryableError when a retryable failure outlasts the policy, and with the FhirHttpError of a
 * credentials problem (401 after a refresh, 403).
 */
export async function deliverBundle(client: FhirClient, given: Bundle | SerializedBundle, options: DeliverOptions = {}): Promise<DeliveryResult> {
  const run: Run = { policy: retryPolicy(options.retry), sleep: options.sleep ?? defaultSleep, now: options.now ?? Date.now, attempts: 0 };
  const mode = options.transactions ?? 'detect';
  const transactions = mode === 'detect' ? await supportsTransactions(client, options) : mode;
  if (isSerialized(given) && transactions && (!options.maxEntries || given.entries.length <= options.maxEntries)) {
    return deliverText(client, given, run);
  }
  const bundle = isSerialized(given) ? parseBundle(given) : given;
  const literal = new Map<string, string>();
  const useLiteral = options.literalReferences !== false;
  const resolve = <T>(value: T): T => (useLiteral && literal.size > 0 ? rewriteReferences(value, (ref) => literal.get(ref)) : value);
  const learn = (entry: BundleEntry, resource: Resource | undefined, location: string | null | undefined): void => {
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
    ...(rejection ? { rejection } : {}),
  });

  try {
    if (transactions) {
      const parts = options.maxEntries ? splitTransaction(bundle, options.maxEntries) : [bundle];
      for (const [i, part] of parts.entries()) {
        const body = resolve(part);
        const what = `transaction ${i + 1}/${parts.length} to ${client.baseUrl}`;
        let response: FhirResponse<Bundle>;
        try {
          response = await withRetry(run, what, () => client.post<Bundle>('', body));
        } finally {
          requests++;
        }
        const answers = response.body?.entry ?? [];
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
        let response: FhirResponse<Resource>;
        try {
          response = await withRetry(run, `${method} ${url}`, () => client.request<Resource>(method, url, body));
        } finally {
          requests++;
        }
        if (response.status === 201) created++;
        else updated++;
        learn(entry, response.body, response.headers.get('location') ?? response.headers.get('content-location'));
      }
    }
  } catch (error) {
    if (isRejection(error)) return result(rejectionOf(error));
    throw error;
  }
  return result();
}

/** One transaction sent as the text it already is; the answer's entries say what was created or updated. */
async function deliverText(client: FhirClient, bundle: SerializedBundle, run: Run): Promise<DeliveryResult> {
  let response: FhirResponse<Bundle>;
  try {
    response = await withRetry(run, `transaction 1/1 to ${client.baseUrl}`, () => client.post<Bundle>('', new JsonText(bundle.bytes)));
  } catch (error) {
    if (!isRejection(error)) throw error;
    return { outcome: 'rejected', attempts: run.attempts, requests: 1, entries: { created: 0, updated: 0 }, rejection: rejectionOf(error) };
  }
  const created = (response.body?.entry ?? []).filter((answer) => isCreated(answer.response?.status)).length;
  return { outcome: 'delivered', attempts: run.attempts, requests: 1, entries: { created, updated: bundle.entries.length - created } };
}
