/**
 * `trialbridge serve`: the HTTP API (src/api) in front of the queue pipeline. It only submits: run
 * `trialbridge worker` beside it to map and deliver. A thin command over createApp and startServer.
 *
 * Logs are JSON lines on stderr (pino); the audit trail (which key submitted what, replays, refusals) goes to
 * `--audit-log FILE` when given, else with the logs. SIGHUP reloads the API keys file (key rotation without a
 * restart); SIGTERM/SIGINT stop taking requests and exit once the open ones are answered.
 */
import type { Command } from 'commander';
import { createApp, DEFAULT_SERVER_LIMITS, startServer } from '../api/app.ts';
import { ApiKeyStore } from '../api/keys.ts';
import { createLogger } from '../log.ts';
import { DEFAULT_PREFIX } from '../queue/names.ts';
import { DEAD_LETTER_DAYS_OPTION, DEFAULT_MAPPINGS, parseDays, pipelineFromCli, positiveInt } from './worker.ts';

interface ServeOptions {
  readonly destinations: string;
  readonly mapping?: string[];
  readonly prefix: string;
  readonly port: string;
  readonly host: string;
  readonly apiKeys?: string;
  readonly bodyLimit?: string;
  readonly uploadDir?: string;
  readonly auditLog?: string;
  readonly queueAdmin?: boolean;
  readonly headersTimeout: number;
  readonly requestTimeout: number;
  readonly keepAliveTimeout: number;
  readonly maxConnections: number;
  readonly deadLetterDays?: number;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve the HTTP API that takes site exports into the queue (REDIS_URL names the Redis server; run `worker` beside it)')
    .requiredOption('-d, --destinations <file>', 'destinations config (YAML)')
    .option('-m, --mapping <file...>', `site mappings to load (default ${DEFAULT_MAPPINGS.join(' ')})`)
    .option('--prefix <prefix>', 'Redis key prefix of the queues', DEFAULT_PREFIX)
    .option('-p, --port <port>', 'port (0: any free port)', '8080')
    .option('--host <host>', 'interface to listen on', '127.0.0.1')
    .option('--api-keys <file>', 'API keys file (JSON/YAML list of { site, keyHash, id?, notBefore?, notAfter? }; reloaded on SIGHUP); default env TRIALBRIDGE_API_KEYS')
    .option('--body-limit <size>', "request body limit, e.g. '20mb'")
    .option('--upload-dir <dir>', 'where uploads wait until they are submitted')
    .option('--audit-log <file>', 'append the audit trail (JSON lines) to this file instead of the logs')
    .option('--queue-admin', 'allow Bull Board actions (retry, remove, clean, pause, add, edit jobs) for the admin key, each audited; default read-only')
    .option('--headers-timeout <ms>', 'the headers of a request must arrive within this', positiveInt('--headers-timeout'), DEFAULT_SERVER_LIMITS.headersTimeoutMs)
    .option('--request-timeout <ms>', 'the whole request, body included, must arrive within this (slower clients get 408 and are cut off)', positiveInt('--request-timeout'), DEFAULT_SERVER_LIMITS.requestTimeoutMs)
    .option('--keep-alive-timeout <ms>', 'idle keep-alive connections are closed after this', positiveInt('--keep-alive-timeout'), DEFAULT_SERVER_LIMITS.keepAliveTimeoutMs)
    .option('--max-connections <n>', 'connections open at once; more are closed at once', positiveInt('--max-connections'), DEFAULT_SERVER_LIMITS.maxConnections)
    .option(...DEAD_LETTER_DAYS_OPTION, parseDays)
    .action(async (options: ServeOptions) => {
      const port = Number(options.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be a port number (got '${options.port}')`);
      const logger = createLogger({ name: 'serve' });
      const audit = options.auditLog ? createLogger({ name: 'audit', destination: options.auditLog }) : logger.child({ channel: 'audit' });
      const apiKeys = options.apiKeys ? await ApiKeyStore.fromFile(options.apiKeys) : ApiKeyStore.fromEnv();
      const { pipeline } = await pipelineFromCli(options, true);
      const app = createApp({
        pipeline,
        apiKeys,
        logger,
        audit,
        ...(options.bodyLimit ? { bodyLimit: options.bodyLimit } : {}),
        ...(options.uploadDir ? { uploadDir: options.uploadDir } : {}),
        queueAdmin: options.queueAdmin ?? false,
      });
      const server = await startServer(app, port, options.host, {
        headersTimeoutMs: options.headersTimeout,
        requestTimeoutMs: options.requestTimeout,
        keepAliveTimeoutMs: options.keepAliveTimeout,
        maxConnections: options.maxConnections,
      });
      const address = server.address();
      logger.info({ event: 'listening', host: options.host, port: typeof address === 'object' && address ? address.port : port, apiKeys: apiKeys.size }, 'listening');
      const reload = async () => {
        if (!options.apiKeys) return logger.warn({ event: 'keys-not-reloaded' }, 'SIGHUP: keys come from TRIALBRIDGE_API_KEYS, nothing to reload');
        try {
          apiKeys.replaceWith(await ApiKeyStore.fromFile(options.apiKeys));
          audit.info({ event: 'keys.reloaded', apiKeys: apiKeys.size }, 'API keys reloaded');
        } catch (err) {
          // The keys in force stay: a broken file must not lock every site out.
          logger.error({ err, event: 'keys-reload-failed' }, 'API keys not reloaded');
        }
      };
      const onHup = () => void reload();
      process.on('SIGHUP', onHup);
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      process.off('SIGHUP', onHup);
      logger.info({ event: 'stopping', signal }, 'stopping');
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await app.close();
      await pipeline.close();
      logger.info({ event: 'stopped', signal }, 'stopped');
      logger.flush();
      audit.flush();
    });
}
