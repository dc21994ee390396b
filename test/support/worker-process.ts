/**
 * `trialbridge worker` as a real child process (node src/cli/main.ts worker ...), its JSON lines collected, for
 * tests that kill, restart and watch workers. Every wait has a deadline.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

export type WorkerLine = Record<string, unknown> & { readonly event?: string };

export interface WorkerProcessOptions {
  readonly destinations: string;
  readonly prefix: string;
  readonly redisUrl: string;
  readonly mappings?: readonly string[];
  /** Extra command-line arguments (--lock-duration, --stalled-interval, --max-stalled-count, --concurrency). */
  readonly args?: readonly string[];
  /** A name for messages. */
  readonly name?: string;
}

/** Resolves `promise`, or rejects after `ms` with `what` in the message. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Re-evaluates `condition` every `everyMs` until it holds (resolves its value) or `ms` pass (rejects with `what`
 * and the last value). For conditions nothing signals (a count in Redis, a state of a FHIR server).
 */
export async function until<T>(ms: number, what: string, condition: () => Promise<T | undefined | false> | T | undefined | false, everyMs = 100): Promise<T> {
  const deadline = Date.now() + ms;
  for (let round = 0; ; round++) {
    const value = await condition();
    if (value !== undefined && value !== false) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms (${round + 1} checks): ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** Children still running: killed if the test process exits first (a test that timed out, a crash). */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class WorkerProcess {
  readonly child: ChildProcess;
  readonly name: string;
  readonly lines: WorkerLine[] = [];
  readonly output: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #waiters: { predicate: (line: WorkerLine) => boolean; resolve: (line: WorkerLine) => void }[] = [];

  constructor(options: WorkerProcessOptions) {
    this.name = options.name ?? 'worker';
    const mappings = options.mappings ?? [];
    this.child = spawn(
      process.execPath,
      [
        'src/cli/main.ts',
        'worker',
        '--destinations',
        options.destinations,
        '--prefix',
        options.prefix,
        ...(mappings.length > 0 ? ['--mapping', ...mappings] : []),
        ...(options.args ?? []),
      ],
      { env: { ...process.env, REDIS_URL: options.redisUrl }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    live.add(this.child);
    this.exited = once(this.child, 'exit').then(([code, signal]) => {
      live.delete(this.child);
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
    createInterface({ input: this.child.stdout! }).on('line', (text) => {
      this.output.push(text);
      let line: WorkerLine;
      try {
        line = JSON.parse(text) as WorkerLine;
      } catch {
        return;
      }
      this.lines.push(line);
      for (const w of this.#waiters.splice(0)) {
        if (w.predicate(line)) w.resolve(line);
        else this.#waiters.push(w);
      }
    });
    createInterface({ input: this.child.stderr! }).on('line', (text) => this.output.push(`stderr: ${text}`));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  count(event: string): number {
    return this.lines.filter((l) => l.event === event).length;
  }

  /** The first line (seen or to come) that matches, within `ms`; rejects if the process exits first. */
  waitFor(predicate: (line: WorkerLine) => boolean, ms: number, what: string): Promise<WorkerLine> {
    const seen = this.lines.find(predicate);
    if (seen) return Promise.resolve(seen);
    return within(
      ms,
      `${this.name}: ${what}\n${this.output.slice(-30).join('\n')}`,
      Promise.race([
        new Promise<WorkerLine>((resolve) => this.#waiters.push({ predicate, resolve })),
        this.exited.then((e) => Promise.reject(new Error(`${this.name} exited (${e.code ?? e.signal}) before: ${what}\n${this.output.slice(-30).join('\n')}`))),
      ]),
    );
  }

  ready(ms = 60_000): Promise<WorkerLine> {
    return this.waitFor((l) => l.event === 'ready', ms, 'ready');
  }

  /** SIGKILL: no chance to finish anything; resolves once it is gone. */
  async kill(): Promise<void> {
    if (this.alive) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM and wait for a clean exit (jobs in flight finish). */
  async stop(ms = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.alive) this.child.kill('SIGTERM');
    return within(ms, `${this.name} stopping`, this.exited);
  }
}
