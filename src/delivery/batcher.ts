/**
 * Several subjects' bundles in one transaction, where a destination allows it (`subjectsPerTransaction`):
 * bundles handed in by delivery jobs running at the same time are gathered for a moment and sent together,
 * within the destination's `maxEntries`. Each job still gets its own answer:
 * - the transaction is applied: every bundle in it is delivered;
 * - it is rejected (a 4xx with an OperationOutcome): each bundle is sent again on its own, so that only the
 *   subjects the server refuses are rejected, each with the server's own message about its data;
 * - it fails in a way worth retrying (network, timeout, 5xx, 429 after in-request retries): every job fails
 *   this attempt, and the queue retries each (every entry is a conditional update: sending again is safe).
 * Entries the bundles share (the ResearchStudy every subject refers to) are sent once.
 */
import { deliverBundle, type DeliverOptions, type DeliveryResult } from './deliver.ts';
import type { FhirClient } from './client.ts';
import { entryBytes, joinEntries, type SerializedBundle, type SerializedEntry } from './serialized-bundle.ts';

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

  async #send(pending: Pending[]): Promise<void> {
    let batch = pending;
    const alone = (p: Pending) => deliverBundle(this.#client, p.bundle, this.#options()).then(p.resolve, p.reject);
    const { combined, conflicting } = combine(batch.map((p) => p.bundle));
    const solo = conflicting.map((i) => alone(batch[i]));
    batch = batch.filter((_p, i) => !conflicting.includes(i));
    if (batch.length <= 1) {
      await Promise.all([...solo, ...batch.map(alone)]);
      return;
    }
    let result: DeliveryResult;
    try {
      result = await deliverBundle(this.#client, combined, this.#options());
    } catch (error) {
      for (const p of batch) p.reject(error);
      await Promise.all(solo);
      return;
    }
    this.stats.batches++;
    this.stats.batchedSubjects += batch.length;
    if (result.outcome === 'delivered') {
      // The answers of a shared transaction are not told apart per subject: each subject's entries count as updated.
      for (const p of batch) p.resolve({ outcome: 'delivered', attempts: result.attempts, requests: result.requests, entries: { created: 0, updated: p.bundle.entries.length } });
      await Promise.all(solo);
      return;
    }
    // Which subject's data the server refused is known only by sending each on its own.
    this.stats.fallbacks++;
    await Promise.all([...solo, ...batch.map(alone)]);
  }
}

/**
 * One transaction of several subjects' bundles. An entry whose fullUrl is already in it (the ResearchStudy
 * every subject refers to) is sent once when it is the same; the same fullUrl twice would break the bundle's
 * uniqueness rule and make a server write one resource twice in one transaction. A bundle holding another
 * version of such an entry (two sites describing the study differently) is left out: `conflicting` lists
 * their indexes, to be sent on their own.
 */
export function combine(bundles: readonly SerializedBundle[]): { combined: SerializedBundle; conflicting: number[] } {
  const seen = new Map<string, Buffer>();
  const parts: { bundle: SerializedBundle; entry: SerializedEntry }[] = [];
  const conflicting: number[] = [];
  bundles.forEach((bundle, i) => {
    const shared = (e: SerializedEntry) => (e.fullUrl === undefined ? undefined : seen.get(e.fullUrl));
    if (bundle.entries.some((e) => !(shared(e)?.equals(entryBytes(bundle, e)) ?? true))) {
      conflicting.push(i);
      return;
    }
    for (const entry of bundle.entries) {
      if (shared(entry) !== undefined) continue;
      if (entry.fullUrl !== undefined) seen.set(entry.fullUrl, entryBytes(bundle, entry));
      parts.push({ bundle, entry });
    }
  });
  return { combined: joinEntries(parts), conflicting };
}
