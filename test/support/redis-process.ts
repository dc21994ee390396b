/**
 * A redis-server of the test's own, as a child process on a free port of 127.0.0.1 with its data in a
 * directory of the test: it can be killed (SIGKILL: a crash), shut down cleanly (SHUTDOWN) and started again
 * on the same port with the same data, which the shared Redis on 6379 must never be.
 *
 * Persistence is `appendonly yes` with `appendfsync everysec` (Redis's default fsync policy) and no RDB
 * snapshots, so what survives a restart is exactly what the append-only file holds.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';

export interface RedisProcessOptions {
  /** Where the append-only files go (kept across restarts). */
  readonly dir: string;
  /** Port (default: a free one, kept across restarts). */
  readonly port?: number;
  readonly appendfsync?: 'always' | 'everysec' | 'no';
  /** How long to wait for "Ready to accept connections" (default 20 s). */
  readonly readyTimeoutMs?: number;
}

/** Whether `redis-server` can be run here (the fault tests need it; .ci/run installs it). */
export function redisServerAvailable(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Servers still running: killed if the test process exits first (a test that timed out, a crash). */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class RedisProcess {
  readonly port: number;
  readonly dir: string;
  readonly #options: RedisProcessOptions;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  /** The server's log lines, every run. */
  readonly log: string[] = [];
  /** Times it was started. */
  starts = 0;

  private constructor(port: number, options: RedisProcessOptions) {
    this.port = port;
    this.dir = options.dir;
    this.#options = options;
  }

  static async start(options: RedisProcessOptions): Promise<RedisProcess> {
    const redis = new RedisProcess(options.port ?? (await freePort()), options);
    await redis.start();
    return redis;
  }

  get connection(): { host: string; port: number } {
    return { host: '127.0.0.1', port: this.port };
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** Starts the server (again: same port, same directory) and resolves once it accepts connections. */
  async start(): Promise<void> {
    if (this.running) throw new Error('redis-server is already running');
    await mkdir(this.dir, { recursive: true });
    const args = [
      '--port', String(this.port),
      '--bind', '127.0.0.1',
      '--dir', this.dir,
      '--appendonly', 'yes',
      '--appendfsync', this.#options.appendfsync ?? 'everysec',
      '--save', '',
      '--daemonize', 'no',
      '--logfile', '',
    ];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    this.starts++;
    live.add(child);
    const exited = once(child, 'exit').then(() => {
      live.delete(child);
    });
    this.#exited = exited;
    const run = this.starts;
    let onReady!: () => void;
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream }).on('line', (line) => {
        this.log.push(`[${run}] ${line}`);
        if (/Ready to accept connections/.test(line)) onReady();
      });
    }
    const timeoutMs = this.#options.readyTimeoutMs ?? 20_000;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ready,
        exited.then(() => Promise.reject(new Error(`redis-server exited at start:\n${this.log.slice(-20).join('\n')}`))),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`redis-server not ready after ${timeoutMs} ms:\n${this.log.slice(-20).join('\n')}`)), timeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** A crash: SIGKILL, no chance to flush anything; resolves once the process is gone. */
  async kill(): Promise<void> {
    if (!this.running) return;
    this.#child!.kill('SIGKILL');
    await this.#exited;
  }

  /** A clean stop: SHUTDOWN (the append-only file is flushed and fsynced first); resolves once the process is gone. */
  async shutdown(): Promise<void> {
    if (!this.running) return;
    const client = new Redis({ ...this.connection, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {});
    try {
      await client.connect();
      // The server closes the connection instead of answering.
      await client.call('SHUTDOWN').catch(() => undefined);
    } finally {
      client.disconnect();
    }
    await this.#exited;
  }

  /** Stops it for good (test teardown). */
  async stop(): Promise<void> {
    await this.kill();
  }
}
