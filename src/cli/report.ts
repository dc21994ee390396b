/**
 * `trialbridge report`: the sponsor's view of a study, computed from a FHIR server alone (src/report/).
 * The server and its credentials come from a destinations file (`--destination`, same auth and TLS options as
 * delivery) or from `--fhir` with a bearer token read from the environment or a file: never from the command
 * line itself, where it would show in the shell history and the process list.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { createAuth, type AuthConfig } from '../delivery/auth/index.ts';
import { FhirClient } from '../delivery/client.ts';
import { DestinationConfigError, isLoopback, loadDestinations, Secret } from '../delivery/destinations.ts';
import { destinationClient } from '../delivery/destination-client.ts';
import { StudySourceError } from '../report/fhir-source.ts';
import { runStudyReport } from '../report/run.ts';
import { ResponseTooLargeError } from '../delivery/http-transport.ts';
import { terminalSafe, terminalSafeLines } from '../terminal.ts';

export interface ReportCommandOptions {
  study: string;
  fhir?: string;
  destination?: string;
  config: string;
  bearerEnv?: string;
  bearerFile?: string;
  out: string;
  pageSize: string;
  timeout?: string;
}

const DEFAULT_TIMEOUT_MS = 30_000;
/** Longest failure reason printed: a server's error text may be a megabyte long. */
const MAX_REASON = 500;

/** A usage or configuration problem: printed as is, exit code 1. */
class ReportUsageError extends Error {
  override readonly name = 'ReportUsageError';
}

function positiveInt(value: string, option: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ReportUsageError(`${option} must be a positive whole number`);
  return n;
}

async function bearerToken(options: ReportCommandOptions): Promise<Secret | undefined> {
  if (options.bearerEnv !== undefined) {
    const value = process.env[options.bearerEnv];
    if (value === undefined || value.trim() === '') throw new ReportUsageError(`environment variable ${options.bearerEnv} is not set`);
    return new Secret(value.trim(), `env ${options.bearerEnv}`);
  }
  if (options.bearerFile !== undefined) {
    let value: string;
    try {
      value = await readFile(options.bearerFile, 'utf8');
    } catch (err) {
      throw new ReportUsageError(`cannot read token file ${options.bearerFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    if (value.trim() === '') throw new ReportUsageError(`token file ${options.bearerFile} is empty`);
    return new Secret(value.trim(), `file ${options.bearerFile}`);
  }
  return undefined;
}

/** The client for the server named by the options. */
export async function reportClient(options: ReportCommandOptions): Promise<FhirClient> {
  const timeoutMs = options.timeout === undefined ? undefined : positiveInt(options.timeout, '--timeout');
  if (options.destination !== undefined) {
    if (options.fhir !== undefined) throw new ReportUsageError('give either --fhir or --destination, not both (the destination names its server)');
    if (options.bearerEnv !== undefined || options.bearerFile !== undefined) throw new ReportUsageError('--bearer-env and --bearer-file go with --fhir: a destination has its own auth');
    const destination = loadDestinations(options.config).find((d) => d.name === options.destination);
    if (!destination) throw new ReportUsageError(`no destination named '${options.destination}' in ${options.config}`);
    return destinationClient(destination, timeoutMs === undefined ? {} : { timeoutMs });
  }
  if (options.fhir === undefined) throw new ReportUsageError('give the server: --fhir URL, or --destination NAME (with --config FILE)');
  if (options.bearerEnv !== undefined && options.bearerFile !== undefined) throw new ReportUsageError('give --bearer-env or --bearer-file, not both');
  let url: URL;
  try {
    url = new URL(options.fhir);
  } catch {
    throw new ReportUsageError('--fhir must be an http(s) URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ReportUsageError('--fhir must be an http(s) URL');
  if (url.username || url.password) throw new ReportUsageError('--fhir must not contain credentials (use --bearer-env or --bearer-file, or a destination)');
  const token = await bearerToken(options);
  if (token && url.protocol === 'http:' && !isLoopback(url.hostname)) throw new ReportUsageError('a bearer token is only sent over https (http is allowed to localhost)');
  const auth: AuthConfig = token ? { type: 'bearer', token } : { type: 'none' };
  return new FhirClient({ baseUrl: options.fhir, timeoutMs: timeoutMs ?? DEFAULT_TIMEOUT_MS, auth: createAuth(auth) });
}

/**
 * The reason a report failed, in one line. Bad options, a server unreachable, refusing, too slow or answering
 * too much are expected; anything else is named by its message alone. Never a stack trace: a hostile or broken
 * server must not be able to fill the terminal, and its text is shown with control characters escaped.
 */
export function failureReason(err: unknown): string {
  if (err instanceof ReportUsageError || err instanceof DestinationConfigError || err instanceof StudySourceError) return err.message;
  if (err instanceof ResponseTooLargeError) return `the server's answer is too large (${err.message})`;
  const name = (err as { name?: unknown } | null)?.name;
  if (name === 'TimeoutError' || name === 'AbortError') return 'the server did not answer in time (--timeout)';
  if (err instanceof TypeError && err.message === 'fetch failed') {
    const cause = err.cause as { code?: string; message?: string } | undefined;
    return `cannot reach the server (${cause?.code ?? cause?.message ?? 'network error'})`;
  }
  const code = (err as { code?: unknown } | null)?.code;
  const path = (err as { path?: unknown } | null)?.path;
  // Network failures come as StudySourceErrors (fhir-source.ts); a file error here is the output directory's.
  if (typeof code === 'string' && typeof path === 'string') return `cannot write ${path} (${code})`;
  if (typeof code === 'string') return `${code}: ${(err as Error).message}`;
  return `unexpected error: ${err instanceof Error ? err.message : String(err)}`;
}

export function registerReport(program: Command): void {
  program
    .command('report')
    .description("the sponsor's study report from a FHIR server: per site and pooled response, conversion, adverse events, dose, Kaplan-Meier survival (JSON + HTML)")
    .requiredOption('-s, --study <identifier>', 'ResearchStudy identifier: value or system|value')
    .option('--fhir <url>', 'FHIR R4 base URL of the server to read')
    .option('--bearer-env <var>', 'with --fhir: environment variable holding a bearer token')
    .option('--bearer-file <path>', 'with --fhir: file holding a bearer token')
    .option('-d, --destination <name>', 'read from this destination of the destinations file (its base URL, auth and TLS)')
    .option('-c, --config <file>', 'destinations file for --destination', 'destinations.yaml')
    .option('-o, --out <dir>', 'output directory for report.json and report.html', 'out/report')
    .option('--page-size <n>', 'entries per search page (_count)', '200')
    .option('--timeout <ms>', `timeout of one request in ms (default: the destination's, or ${DEFAULT_TIMEOUT_MS})`)
    .action(async (options: ReportCommandOptions) => {
      try {
        const client = await reportClient(options);
        const run = await runStudyReport({ client, study: options.study, outDir: options.out, pageSize: positiveInt(options.pageSize, '--page-size') });
        // The summary quotes the server (study title, terms): shown, not obeyed.
        console.log(terminalSafeLines(run.summary));
        console.log(`\nReport: ${run.htmlPath}\nJSON:   ${run.jsonPath}`);
      } catch (err) {
        const reason = terminalSafe(failureReason(err));
        console.error(`report: ${reason.length > MAX_REASON ? `${reason.slice(0, MAX_REASON)}...` : reason}`);
        process.exitCode = 1;
      }
    });
}
