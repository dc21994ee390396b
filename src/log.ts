/**
 * Structured logs (pino, JSON lines). What may appear: event names, sites, submission ids, record keys, file
 * names, rows, fields, counts, reasons. What may not: record values, names, birth dates, hospital numbers,
 * API keys or their hashes. Code logs only the former; the redaction below is the net under it, for an object
 * logged whole by mistake (a record's `fields`, a bundle, a request's headers).
 */
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger } from 'pino';

/** Paths pino blanks in every log line (top level and one level down). */
export const REDACT_PATHS: readonly string[] = [
  'fields',
  'records',
  'bundle',
  'resource',
  'value',
  'content',
  'apiKey',
  'keyHash',
  'password',
  'token',
  'secret',
  'authorization',
  'birthDate',
].flatMap((key) => [key, `*.${key}`]).concat([
  'headers.authorization',
  'headers["x-api-key"]',
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie',
]);

export interface LoggerOptions {
  /** Component name (`api`, `audit`, `serve`). */
  readonly name?: string;
  /** Default env TRIALBRIDGE_LOG_LEVEL, else info. */
  readonly level?: string;
  /** Where lines go: a stream, a file path, or stderr (default). */
  readonly destination?: DestinationStream | string;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const destination =
    typeof options.destination === 'string'
      ? pino.destination({ dest: options.destination, mkdir: true, sync: false })
      : (options.destination ?? pino.destination({ fd: 2, sync: false }));
  return pino(
    {
      ...(options.name ? { name: options.name } : {}),
      level: options.level ?? process.env.TRIALBRIDGE_LOG_LEVEL ?? 'info',
      redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // An error is logged with its type and message only: a stack names no values but is long, and
      // library errors may carry request objects in other properties.
      serializers: { err: (err: unknown) => (err instanceof Error ? { type: err.name, message: err.message } : { message: String(err) }) },
    },
    destination,
  );
}

/** A logger that writes nothing (tests that do not look at logs). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
