/**
 * `trialbridge serve`: the HTTP API (src/api) in front of the queue pipeline. It only submits: run
 * `trialbridge worker` beside it to map and deliver. A thin command over createApp and startServer.
 */
import type { Command } from 'commander';
import { createApp, startServer } from '../api/app.ts';
import { ApiKeyStore } from '../api/keys.ts';
import { DEFAULT_PREFIX } from '../queue/names.ts';
import { DEFAULT_MAPPINGS, logJson, pipelineFromCli } from './worker.ts';

interface ServeOptions {
  readonly destinations: string;
  readonly mapping?: string[];
  readonly prefix: string;
  readonly port: string;
  readonly host: string;
  readonly apiKeys?: string;
  readonly bodyLimit?: string;
  readonly uploadDir?: string;
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
    .option('--api-keys <file>', 'API keys file (JSON/YAML list of { site, keyHash }); default env TRIALBRIDGE_API_KEYS')
    .option('--body-limit <size>', "request body limit, e.g. '20mb'")
    .option('--upload-dir <dir>', 'where uploads wait until they are submitted')
    .action(async (options: ServeOptions) => {
      const port = Number(options.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be a port number (got '${options.port}')`);
      const apiKeys = options.apiKeys ? await ApiKeyStore.fromFile(options.apiKeys) : ApiKeyStore.fromEnv();
      const { pipeline } = await pipelineFromCli(options, true);
      const app = createApp({
        pipeline,
        apiKeys,
        ...(options.bodyLimit ? { bodyLimit: options.bodyLimit } : {}),
        ...(options.uploadDir ? { uploadDir: options.uploadDir } : {}),
      });
      const server = await startServer(app, port, options.host);
      const address = server.address();
      logJson('listening', { host: options.host, port: typeof address === 'object' && address ? address.port : port, apiKeys: apiKeys.size });
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      logJson('stopping', { signal });
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await app.close();
      await pipeline.close();
      logJson('stopped', { signal });
    });
}
