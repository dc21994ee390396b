/**
 * Several subjects' bundles in one transaction, where a destination allows it (`subjectsPerTransaction`):
 * bundles handed in by delivery jobs running at the same time are gathered for a moment and sent together,
 * within the destination's `maxEntries`. Each job still gets its own answer:
 * - the transaction is applied: every bundle in it is delivered;
 * - it is rejected as a whole (a 4xx with an OperationOutcome: an atomic server): each bundle is sent again on
 *   its own, so that only the subjects the server refuses are rejected, each with the server's own message;
 * - the server answered entry by entry (a non-atomic server: some entries applied, others refused): each
 *   subject is judged by its own entries' answers, delivered only when all of them are 2xx;
 * - the answer is unusable (a redirect, not FHIR, entries missing, too large): every subject is rejected with
 *   that reason (sending each alone would only ask the same broken destination again);
 * - it fails in a way worth retrying (network, timeout, 5xx, 429 after in-request retries): every job fails
 *   this attempt, and the queue retries each (every entry is a conditional update: sending again is safe).
 * Entries the bundles share (the ResearchStudy every subject refers to) are sent once.
 */
import { deliverBundle, rollBack, withRollBack, type DeliverOptions, type DeliveryRejection, type DeliveryResult, type EntryFailure } from './deliver.ts';
import type { FhirClient } from './client.ts';
import { entryBytes, joinEntries, parseBundle, type SerializedBundle, type SerializedEntry } from './serialized-bundle.ts';

export interface BatchLimits {
  /** Most subjects per transaction (1: no batching). */
  readonly subjects: number;
  /** Most entries per transaction. */
  readonly entries: number;
  /**
   * How long the first bundle waits for others (default 10 ms, little beside a server's round trip): jobs that
   * run together arrive within it. A full batch goes at once.
   */
  readonly lingerMs?: number;
}

interface Pending {
  readonly bundle: SerializedBundle;
  readonly resolve: (result: DeliveryResult) => void;
  readonly reject: (error: unknown) => void;
}

export class TransactionBatcher {
  readonly #client: FhirClient;
  readonly #limits: BatchLimits;
  readonly #options: () => DeliverOptions;
  #pending: Pending[] = [];
  #entries = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Transactions shared by several subjects, the subjects in them, and those refused (sent again one by one). */
  readonly stats = { batches: 0, batchedSubjects: 0, fallbacks: 0 };

  constructor(client: FhirClient, limits: BatchLimits, options: () => DeliverOptions) {
    this.#client = client;
    this.#limits = limits;
    this.#options = options;
  }

  /** Delivers one subject's bundle, alone or with others; resolves or rejects as deliverBundle would for it. */
  deliver(bundle: SerializedBundle): Promise<DeliveryResult> {
    const entries = bundle.entries.length;
    if (this.#limits.subjects <= 1 || entries >= this.#limits.entries) return deliverBundle(this.#client, bundle, this.#options());
    return new Promise<DeliveryResult>((resolve, reject) => {
      if (this.#entries + entries > this.#limits.entries) this.#flush();
      this.#pending.push({ bundle, resolve, reject });
      this.#entries += entries;
      if (this.#pending.length >= this.#limits.subjects) this.#flush();
      else this.#timer ??= setTimeout(() => this.#flush(), this.#limits.lingerMs ?? 10);
    });
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#pending;
    this.#pending = [];
    this.#entries = 0;
    if (batch.length > 0) void this.#send(batch);
  }

  /**
   * Removes what the shared transaction created for the subjects it refused (a non-atomic server applied their
   * other entries), so that the server holds only delivered subjects; an entry another, delivered subject
   * shares stays.
   */
  async #undo(batch: readonly Pending[], results: DeliveryResult[], created: Readonly<Record<string, string>>): Promise<void> {
    const delivered = new Set(batch.flatMap((p, i) => (results[i].outcome === 'delivered' ? p.bundle.entries.map((e) => e.fullUrl) : [])));
    for (const [i, p] of batch.entries()) {
      const result = results[i];
      if (result.outcome !== 'rejected' || !result.rejection) continue;
      const mine = new Map(p.bundle.entries.flatMap((e) => (e.fullUrl && created[e.fullUrl] && !delivered.has(e.fullUrl) ? [[e.fullUrl, created[e.fullUrl]] as const] : [])));
      if (mine.size === 0) continue;
      results[i] = { ...result, rejection: withRollBack(result.rejection, await rollBack(this.#client, mine, parseBundle(p.bundle).entry ?? [], this.#options())) };
    }
  }

  async #send(pending: Pending[]): Promise<void> {
    let batch = pending;
    const alone = (p: Pending) => deliverBundle(this.#client, p.bundle, this.#options()).then(p.resolve, p.reject);
    const first = combine(batch.map((p) => p.bundle));
    const solo = first.conflicting.map((i) => alone(batch[i]));
    batch = batch.filter((_p, i) => !first.conflicting.includes(i));
    if (batch.length <= 1) {
      await Promise.all([...solo, ...batch.map(alone)]);
      return;
    }
    // Again without the conflicting bundles, so that each entry's placement is known.
    const { combined, placements } = first.conflicting.length > 0 ? combine(batch.map((p) => p.bundle)) : first;
    let result: DeliveryResult;
    try {
      // What a refused subject had created is removed per subject below, not for the whole transaction.
      result = await deliverBundle(this.#client, combined, { ...this.#options(), rollBackCreated: false });
    } catch (error) {
      for (const p of batch) p.reject(error);
      await Promise.all(solo);
      return;
    }
    this.stats.batches++;
    this.stats.batchedSubjects += batch.length;
    const rejection = result.rejection;
    if (result.outcome === 'delivered' || rejection?.kind === 'answer' || rejection?.entries) {
      const results = batch.map((p, i) => subjectResult(result, placements, i, p.bundle.entries.length));
      if (result.created) await this.#undo(batch, results, result.created);
      batch.forEach((p, i) => p.resolve(results[i]));
      await Promise.all(solo);
      return;
    }
    // Refused as a whole: which subject's data the server refused is known only by sending each on its own.
    this.stats.fallbacks++;
    await Promise.all([...solo, ...batch.map(alone)]);
  }
}

/**
 * One subject's result out of a shared transaction's: delivered when the transaction was, rejected with the
 * whole answer's reason when it was unusable, and otherwise by its own entries' answers (their indexes made
 * its own bundle's again).
 */
function subjectResult(result: DeliveryResult, placements: readonly (readonly Placement[])[], subject: number, entries: number): DeliveryResult {
  const base = { attempts: result.attempts, requests: result.requests };
  const rejection = result.rejection;
  if (!rejection) {
    // The answers of a shared transaction are not told apart per subject: each subject's entries count as updated.
    return { outcome: 'delivered', ...base, entries: { created: 0, updated: entries }, statusClasses: { '2xx': entries } };
  }
  if (!rejection.entries) return { outcome: 'rejected', ...base, entries: { created: 0, updated: 0 }, statusClasses: result.statusClasses, rejection };
  const own: EntryFailure[] = [];
  for (const f of rejection.entries) {
    const at = placements[f.index]?.find((p) => p.bundle === subject);
    if (!at) continue;
    const dependsOn = f.dependsOn === undefined ? undefined : placements[f.dependsOn]?.find((p) => p.bundle === subject)?.entry;
    own.push({ ...f, index: at.entry, ...(dependsOn !== undefined ? { dependsOn } : {}) });
  }
  const failed = new Set(own.map((f) => f.index));
  const statusClasses = { '2xx': entries - failed.size, ...(failed.size > 0 ? { '4xx': failed.size } : {}) };
  if (own.length === 0) return { outcome: 'delivered', ...base, entries: { created: 0, updated: entries }, statusClasses: { '2xx': entries } };
  const first = own.find((f) => f.dependsOn === undefined) ?? own[0];
  const issues = own.flatMap((f) => f.outcome?.issue ?? []);
  const message = `${own.length} of ${entries} entries not delivered in a transaction shared with other subjects: ${own
    .slice(0, 5)
    .map((f) => `${f.resourceType}${f.identifierSystem ? ` ${f.identifierSystem}` : ''} (entry ${f.index}) ${f.dependsOn !== undefined ? `refers to refused entry ${f.dependsOn}` : `HTTP ${f.status}`}`)
    .join('; ')}`;
  const mine: DeliveryRejection = {
    status: first.status,
    outcome: { resourceType: 'OperationOutcome', issue: issues.length > 0 ? issues : [{ severity: 'error', code: 'processing', diagnostics: message }] },
    message,
    kind: own.every((f) => f.kind === 'answer') ? 'answer' : 'invalid',
    entries: own,
  };
  return { outcome: 'rejected', ...base, entries: { created: 0, updated: 0 }, statusClasses, rejection: mine };
}

/** Where an entry of a shared transaction came from: bundle (subject) index, entry index in that bundle. */
interface Placement {
  readonly bundle: number;
  readonly entry: number;
}

/**
 * One transaction of several subjects' bundles. An entry whose fullUrl is already in it (the ResearchStudy
 * every subject refers to) is sent once when it is the same; the same fullUrl twice would break the bundle's
 * uniqueness rule and make a server write one resource twice in one transaction. A bundle holding another
 * version of such an entry (two sites describing the study differently) is left out: `conflicting` lists
 * their indexes, to be sent on their own.
 */
export function combine(bundles: readonly SerializedBundle[]): { combined: SerializedBundle; conflicting: number[]; placements: Placement[][] } {
  const seen = new Map<string, Buffer>();
  const at = new Map<string, number>();
  const parts: { bundle: SerializedBundle; entry: SerializedEntry }[] = [];
  const placements: Placement[][] = [];
  const conflicting: number[] = [];
  bundles.forEach((bundle, i) => {
    const shared = (e: SerializedEntry) => (e.fullUrl === undefined ? undefined : seen.get(e.fullUrl));
    if (bundle.entries.some((e) => !(shared(e)?.equals(entryBytes(bundle, e)) ?? true))) {
      conflicting.push(i);
      return;
    }
    bundle.entries.forEach((entry, j) => {
      if (shared(entry) !== undefined) {
        placements[at.get(entry.fullUrl!)!].push({ bundle: i, entry: j });
        return;
      }
      if (entry.fullUrl !== undefined) {
        seen.set(entry.fullUrl, entryBytes(bundle, entry));
        at.set(entry.fullUrl, parts.length);
      }
      placements.push([{ bundle: i, entry: j }]);
      parts.push({ bundle, entry });
    });
  });
  return { combined: joinEntries(parts), conflicting, placements };
}
