/**
 * Reads uploaded exports off the API's event loop. Reading a 38 MB export (parsing, grouping by subject,
 * hashing, queueing) is seconds of synchronous work: done on the request path it stalled `/healthz` and every
 * other request 7–16 s. A worker thread does it here, with its own QueuePipeline (same Redis, prefix, mappings
 * and dead-letter retention, no workers, no destinations: submitting needs none) and answers with the
 * SubmitResult; the API's loop only waits for the message.
 *
 * The thread compiles the mappings from their files (`loaded.path`) itself; a file changed on disk since the
 * API loaded it (another version) is refused by the thread, and the API then submits on its own loop, as it
 * does for mappings that were not loaded from a file.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { CompiledMapping } from '../mapping/compile.ts';
import type { QueueConnection, QueuePipeline, SubmitOptions, SubmitResult } from '../queue/pipeline.ts';
import { SourceFileError } from '../source/raw.ts';

interface ThreadInit {
  readonly tbSubmitThread: true;
  readonly connection: QueueConnection;
  readonly prefix: string;
  readonly deadLetterSeconds: number;
  readonly mappings: readonly { readonly path: string; readonly site: string; readonly version: string }[];
}

interface SubmitRequest {
  readonly id: number;
  readonly site: string;
  readonly inputs: readonly string[];
  readonly options: SubmitOptions;
}

/** An error as it crosses the thread boundary. */
type ThreadError =
  | { readonly kind: 'source'; readonly file: string; readonly reason: string; readonly line?: number; readonly offset?: number; readonly tooLarge: boolean }
  | { readonly kind: 'version'; readonly message: string }
  | { readonly kind: 'other'; readonly message: string };

type SubmitReply = { readonly id: number; readonly result: SubmitResult } | { readonly id: number; readonly error: ThreadError };

/** The mapping files changed since the API loaded them: the thread would queue jobs of another version. */
class MappingVersionError extends Error {}

/** Redis connection options of an ioredis client, as plain data. */
function connectionOf(pipeline: QueuePipeline): QueueConnection {
  const o = pipeline.redis.options;
  return {
    ...(o.host ? { host: o.host } : {}),
    ...(o.port ? { port: o.port } : {}),
    ...(o.username ? { username: o.username } : {}),
    ...(o.password ? { password: o.password } : {}),
    ...(o.db ? { db: o.db } : {}),
    ...(o.tls ? { tls: { ...o.tls } as Record<string, unknown> } : {}),
  };
}

export class SubmitThread {
  readonly #init: ThreadInit;
  readonly #fallback: QueuePipeline;
  readonly #pending = new Map<number, { resolve: (r: SubmitResult) => void; reject: (e: unknown) => void }>();
  #worker: Worker | undefined;
  #next = 0;
  #closed = false;

  /** A thread for the pipeline's mappings; undefined when one of them was not loaded from a file. */
  static for(pipeline: QueuePipeline): SubmitThread | undefined {
    const mappings = pipeline.context.config.mappings;
    if (mappings.some((m: CompiledMapping) => typeof m.loaded?.path !== 'string')) return undefined;
    return new SubmitThread(pipeline, {
      tbSubmitThread: true,
      connection: connectionOf(pipeline),
      prefix: pipeline.names.prefix,
      deadLetterSeconds: pipeline.deadLetters.ttlSeconds,
      mappings: mappings.map((m) => ({ path: m.loaded.path, site: m.site, version: m.version })),
    });
  }

  private constructor(fallback: QueuePipeline, init: ThreadInit) {
    this.#fallback = fallback;
    this.#init = init;
  }

  #start(): Worker {
    const worker = new Worker(new URL(import.meta.url), { workerData: this.#init });
    worker.on('message', (reply: SubmitReply) => {
      const waiting = this.#pending.get(reply.id);
      if (!waiting) return;
      this.#pending.delete(reply.id);
      if ('result' in reply) waiting.resolve(reply.result);
      else waiting.reject(fromThreadError(reply.error));
    });
    const gone = (error: unknown) => {
      if (this.#worker === worker) this.#worker = undefined;
      for (const [id, waiting] of this.#pending) {
        this.#pending.delete(id);
        waiting.reject(error instanceof Error ? error : new Error(`the submission thread stopped (${String(error)})`));
      }
    };
    worker.on('error', gone);
    worker.on('exit', (code) => gone(new Error(`the submission thread exited with code ${code}`)));
    // Idle, it keeps no process alive.
    worker.unref();
    return worker;
  }

  /** Reads the export and queues its subjects in the thread (or on this loop, when the thread cannot). */
  async submit(site: string, inputs: readonly string[], options: SubmitOptions): Promise<SubmitResult> {
    if (this.#closed) throw new Error('the API is closing');
    this.#worker ??= this.#start();
    const id = this.#next++;
    const worker = this.#worker;
    try {
      return await new Promise<SubmitResult>((resolve, reject) => {
        this.#pending.set(id, { resolve, reject });
        worker.ref();
        worker.postMessage({ id, site, inputs, options } satisfies SubmitRequest);
      });
    } catch (error) {
      if (error instanceof MappingVersionError) return this.#fallback.submitExport(site, inputs, options);
      throw error;
    } finally {
      if (this.#pending.size === 0) worker.unref();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = undefined;
    if (worker) await worker.terminate();
  }
}

function toThreadError(error: unknown): ThreadError {
  if (error instanceof SourceFileError) {
    return { kind: 'source', file: error.file, reason: error.reason, tooLarge: error.tooLarge, ...(error.line !== undefined ? { line: error.line } : {}), ...(error.offset !== undefined ? { offset: error.offset } : {}) };
  }
  const message = error instanceof Error ? error.message : String(error);
  return error instanceof MappingVersionError ? { kind: 'version', message } : { kind: 'other', message };
}

function fromThreadError(error: ThreadError): Error {
  if (error.kind === 'source') {
    return new SourceFileError(error.file, error.reason, { tooLarge: error.tooLarge, ...(error.line !== undefined ? { line: error.line } : {}), ...(error.offset !== undefined ? { offset: error.offset } : {}) });
  }
  return error.kind === 'version' ? new MappingVersionError(error.message) : new Error(error.message);
}

/** The thread's side: one QueuePipeline, made on the first request, for every submission. */
async function serveThread(init: ThreadInit): Promise<void> {
  const [{ compileMapping }, { loadMapping }, { QueuePipeline }] = await Promise.all([
    import('../mapping/compile.ts'),
    import('../mapping/load.ts'),
    import('../queue/pipeline.ts'),
  ]);
  let ready: Promise<QueuePipeline> | undefined;
  const pipeline = () =>
    (ready ??= (async () => {
      const mappings: CompiledMapping[] = [];
      for (const m of init.mappings) {
        const compiled = await compileMapping(await loadMapping(m.path));
        if (compiled.site !== m.site || compiled.version !== m.version) {
          throw new MappingVersionError(`mapping ${m.site} changed on disk since the API loaded it (${m.version} → ${compiled.version})`);
        }
        mappings.push(compiled);
      }
      return new QueuePipeline({ connection: init.connection, prefix: init.prefix, mappings, destinations: [], validator: null, retention: { deadLetterSeconds: init.deadLetterSeconds } });
    })());
  parentPort!.on('message', (request: SubmitRequest) => {
    void (async () => {
      let reply: SubmitReply;
      try {
        reply = { id: request.id, result: await (await pipeline()).submitExport(request.site, request.inputs, request.options) };
      } catch (error) {
        reply = { id: request.id, error: toThreadError(error) };
      }
      parentPort!.postMessage(reply);
    })();
  });
}

if (!isMainThread && (workerData as Partial<ThreadInit> | undefined)?.tbSubmitThread === true) await serveThread(workerData as ThreadInit);
