import { execFile } from 'node:child_process';

/** What a CLI run left: its exit code (null when killed) and everything it printed. */
export interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Bounds for tests that run the CLI as a child. The kill only ends a frozen child (a backtracking regex, a
 * server that pages forever); the test then fails on its exit code and output, not on a time. Both bounds are
 * generous: a run takes seconds, and on a loaded machine many times that.
 */
export const CHILD_KILL_MS = 120_000;
export const CLI_TEST_MS = 300_000;

/** Runs `trialbridge ARGS` as a user would, without blocking this process (servers answering it may live here). */
export function runCli(args: readonly string[], options: { readonly env?: NodeJS.ProcessEnv; readonly maxBuffer?: number } = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['src/cli/main.ts', ...args],
      { env: options.env ?? process.env, timeout: CHILD_KILL_MS, maxBuffer: options.maxBuffer ?? 64 * 1024 * 1024 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
    );
  });
}
