/**
 * The HTTP API over a QueuePipeline: submissions per site (multipart or JSON), their counters and rejects,
 * dead letters and replay, health, readiness, metrics, Bull Board and the OpenAPI document.
 *
 * Every /v1 route needs an API key (`Authorization: Bearer <key>` or `X-API-Key`) scoped to one site; a key
 * sees only its site's submissions and dead letters (403 otherwise). Nothing here logs keys, hashes, file
 * contents or field values; rejects are returned with location and reason only. The audit log says which key
 * submitted which files (names, sizes, SHA-256) as which submission, and every refusal.
 *
 * Hostile bodies: a declared length over the limit is refused before a byte is read; an upload is streamed
 * to disk while its bytes are counted, and is cut off (413, connection closed) as soon as it passes the limit;
 * JSON bodies are parsed refusing duplicate keys, deep nesting and keys other than the documented ones.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Transform, type Writable } from 'node:stream';
import { createBullBoard } from '@bull-board/api';
import { ExpressAdapter } from '@bull-board/express';
import express, { type Express, type Request, type RequestHandler, type Response } from 'express';
import multer from 'multer';
import { createLogger, type Logger } from '../log.ts';
import { publicDeadLetter } from '../queue/dead-letters.ts';
import { RETENTION_SECONDS } from '../queue/names.ts';
import type { QueuePipeline, SubmitResult } from '../queue/pipeline.ts';
import type { DeadLetter } from '../queue/stages.ts';
import { SourceFileError } from '../source/raw.ts';
import { parseStrictJson, StrictJsonError } from '../source/strict-json.ts';
import { ApiError, closeAfterResponse, createErrorHandler, notFound, sendError } from './errors.ts';
import { ApiKeyStore, keyMatchesHash } from './keys.ts';
import { createMetrics, type ApiMetrics } from './metrics.ts';
import { boardAdapter } from './board.ts';
import { openApiDocument } from './openapi.ts';
import { pathIdCandidates, submissionSubjects } from './subjects.ts';
import { SubmitThread } from './submit-thread.ts';

export interface CreateAppOptions {
  readonly pipeline: QueuePipeline;
  readonly apiKeys: ApiKeyStore;
  /** Request body limit (JSON body, and each uploaded file / whole multipart body), e.g. '20mb'. Default '50mb'. */
  readonly bodyLimit?: string | number;
  /** Where uploads are written before submission (a per-submission directory under it, removed after). */
  readonly uploadDir?: string;
  /** SHA-256 hex of the admin key that opens /admin/queues (default env TRIALBRIDGE_ADMIN_KEY_HASH); none: 404. */
  readonly adminKeyHash?: string;
  /** Whether /readyz asks each destination's /metadata (default true). */
  readonly checkDestinations?: boolean;
  /** Timeout of each readiness probe, ms (default 2000). */
  readonly readinessTimeoutMs?: number;
  /** How long a readiness answer is reused, ms (default 5000): probes run at most that often, whoever asks. */
  readonly readinessCacheMs?: number;
  /**
   * Bull Board actions (retry, remove, promote, clean, pause, add, edit jobs) for the admin key, each audited;
   * default false: the board only shows queues and jobs.
   */
  readonly queueAdmin?: boolean;
  /** Read uploads in a worker thread, off the request loop (default true; on the loop when mappings were not loaded from files). */
  readonly readOffThread?: boolean;
  /** Called after each accepted submission (embedding, tests: e.g. pipeline.waitForSubmission). */
  readonly onSubmission?: (result: SubmitResult) => void;
  /** Operational log (errors, refusals of the server's own making); default: JSON lines on stderr. */
  readonly logger?: Logger;
  /** Audit trail: which key submitted what, replays, refusals; default: the operational log. */
  readonly audit?: Logger;
}

export type ApiApp = Express & {
  readonly metrics: ApiMetrics;
  /** Stops the metrics event listeners (the pipeline is the caller's to close). */
  close(): Promise<void>;
};

const MAX_FILES = 200;
/** Nesting of a JSON submission body: `{ files: [{ name, content }] }` needs 3. */
const MAX_BODY_DEPTH = 8;

/** A file of a submission as the audit log names it. */
interface UploadedFile {
  readonly name: string;
  readonly bytes: number;
  readonly sha256: string;
}

type Locals = { site: string; keyId: string; uploadDir?: string; uploaded?: UploadedFile[]; refused?: ApiError };

export function createApp(options: CreateAppOptions): ApiApp {
  const { pipeline, apiKeys } = options;
  const bodyLimit = options.bodyLimit ?? '50mb';
  const limitBytes = parseBytes(bodyLimit);
  const uploadRoot = options.uploadDir ?? join(tmpdir(), 'trialbridge-uploads');
  const adminKeyHash = options.adminKeyHash ?? process.env.TRIALBRIDGE_ADMIN_KEY_HASH;
  const logger = options.logger ?? createLogger({ name: 'api' });
  const audit = options.audit ?? logger.child({ channel: 'audit' });
  const metrics = createMetrics(pipeline, logger);
  const siteKey = (id: string) => `${pipeline.names.prefix}:tb-api:submission-site:${encodeURIComponent(id)}`;
  const submitThread = options.readOffThread === false ? undefined : SubmitThread.for(pipeline);

  const app = express() as unknown as ApiApp;
  app.disable('x-powered-by');
  app.set('query parser', 'simple');

  // Latency of every request, labelled by the route pattern (not the URL: ids would explode the labels).
  app.use((req, res, next) => {
    const end = metrics.requestDuration.startTimer();
    res.on('finish', () => {
      const route = req.route?.path ? String(req.route.path) : req.baseUrl || 'unmatched';
      end({ method: req.method, route, status: String(res.statusCode) });
    });
    next();
  });

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  // Destinations are probed at most every readinessCacheMs whoever asks: an anonymous caller cannot make the API
  // call every destination per request. Redis, local and cheap, is asked each time (an outage shows at once).
  // Anonymous callers learn ready or not; the checks (destination names, errors) only the admin key sees.
  const timeout = options.readinessTimeoutMs ?? 2000;
  const destinationChecks = cached(options.readinessCacheMs ?? 5000, async () => {
    const checks: Record<string, { ok: boolean; message?: string }> = {};
    if (options.checkDestinations ?? true) {
      await Promise.all(
        pipeline.context.config.destinations.map(async (d) => {
          checks[`destination:${d.name}`] = await probe(async () => {
            const r = await fetch(`${d.baseUrl}/metadata`, { headers: { accept: 'application/fhir+json' }, signal: AbortSignal.timeout(timeout) });
            await r.body?.cancel();
            if (!r.ok) throw new Error(`/metadata answered ${r.status}`);
          });
        }),
      );
    }
    return checks;
  });

  app.get('/readyz', async (req, res) => {
    const [redis, destinations] = await Promise.all([
      probe(async () => {
        const pong = await withTimeout(pipeline.redis.ping(), timeout);
        if (pong !== 'PONG') throw new Error(`unexpected answer ${pong}`);
      }),
      destinationChecks(),
    ]);
    const checks = { redis, ...destinations };
    const ready = Object.values(checks).every((c) => c.ok);
    const key = presentedKey(req);
    const admin = adminKeyHash !== undefined && key !== undefined && keyMatchesHash(key, adminKeyHash);
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not ready', ...(admin ? { checks } : {}) });
  });

  app.get('/metrics', async (_req, res) => {
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  app.get('/openapi.json', (_req, res) => {
    res.json(openApiDocument());
  });

  // Bull Board, behind the admin key.
  const board = new ExpressAdapter();
  board.setBasePath('/admin/queues');
  createBullBoard({
    queues: [pipeline.mappingQueue, ...pipeline.context.config.destinations.map((d) => pipeline.deliveryQueue(d.name))].map((q) => boardAdapter(q, options.queueAdmin ?? false)),
    // @bull-board/express may carry its own copy of @bull-board/api: same interface, distinct declarations.
    serverAdapter: board as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
  });
  app.use(
    '/admin/queues',
    (req, res, next) => {
      const key = presentedKey(req);
      if (!adminKeyHash) return next(new ApiError(404, 'not_found', 'the admin UI is not configured'));
      if (key === undefined || !keyMatchesHash(key, adminKeyHash)) return next(new ApiError(401, 'unauthorized', 'a valid admin key is required'));
      // The board's API writes with PUT/POST/PATCH/DELETE: refused here when read-only (whatever the board itself
      // would check), else each action leaves an audit line.
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        if (!options.queueAdmin) return next(new ApiError(405, 'read_only', 'the queue board is read-only (serve --queue-admin allows its actions)'));
        res.on('finish', () => audit.info({ event: 'queue-admin.action', method: req.method, path: req.path, status: res.statusCode }, 'queue admin action'));
      }
      next();
    },
    board.getRouter() as RequestHandler,
  );

  // --- /v1: API key required ---
  app.use('/v1', (req, res, next) => {
    const key = presentedKey(req);
    const who = key === undefined ? undefined : apiKeys.identify(key);
    if (who === undefined) {
      res.setHeader('WWW-Authenticate', 'Bearer');
      return next(new ApiError(401, 'unauthorized', key === undefined ? 'an API key is required (Authorization: Bearer or X-API-Key)' : 'unknown or expired API key'));
    }
    (res.locals as Locals).site = who.site;
    (res.locals as Locals).keyId = who.keyId;
    next();
  });

  const requireSite = (req: Request, res: Response, site: string): void => {
    if ((res.locals as Locals).site !== site) throw new ApiError(403, 'forbidden', `this API key is not scoped to site '${site}'`);
  };

  const tooLarge = () => new ApiError(413, 'payload_too_large', `request body exceeds the limit of ${limitBytes} bytes`);
  const uploadOptions: multer.Options & { streamHandler: (req: Request, busboy: Writable) => void } = {
    storage: hashingDiskStorage(),
    // Files only: a submission carries nothing else (no URL, no destination, no option).
    limits: { fileSize: limitBytes, files: MAX_FILES, fields: 0, parts: MAX_FILES },
    // Counts the raw bytes on their way to the multipart parser and cuts the request off at the limit
    // (multer itself would read a refused body to its end before answering, however long it is).
    streamHandler: (req, busboy) => {
      let seen = 0;
      let refused = false;
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          seen += chunk.length;
          if (refused) return callback();
          if (seen > limitBytes) {
            // Answer now and stop feeding the parser; the connection is cut after a short grace, and its
            // close makes multer abort and the upload directory go.
            refused = true;
            const error = tooLarge();
            (req.res!.locals as Locals).refused = error;
            sendError(req.res!, error);
            closeAfterResponse(req, req.res!);
            return callback();
          }
          callback(null, chunk);
        },
      });
      req.pipe(counter).pipe(busboy);
    },
  };
  const upload = multer(uploadOptions);
  const jsonBody = express.text({ type: 'application/json', limit: bodyLimit });

  app.post(
    '/v1/sites/:site/submissions',
    (req, res, next) => {
      const site = String(req.params.site);
      requireSite(req, res, site);
      if (!pipeline.context.config.mappings.some((m) => m.site === site)) throw new ApiError(404, 'unknown_site', `no mapping for site '${site}'`);
      const length = Number(req.headers['content-length']);
      if (Number.isFinite(length) && length > limitBytes) throw tooLarge();
      next();
    },
    async (req, res, next) => {
      await mkdir(uploadRoot, { recursive: true });
      (res.locals as Locals).uploadDir = await mkdtemp(join(uploadRoot, 'sub-'));
      (res.locals as Locals).uploaded = [];
      next();
    },
    (req, res, next) => {
      const dir = (res.locals as Locals).uploadDir!;
      const cleanupOnError = (error: unknown) => {
        // After a cut-off upload multer reports the aborted request; the refusal is what happened.
        const reported = (res.locals as Locals).refused ?? error;
        void rm(dir, { recursive: true, force: true }).finally(() => next(reported));
      };
      if (req.is('multipart/form-data')) {
        upload.array('files', MAX_FILES)(req, res, (error?: unknown) => (error ? cleanupOnError(multipartError(error)) : next()));
      } else if (req.is('application/json')) {
        jsonBody(req, res, (error?: unknown) => (error ? cleanupOnError(error) : next()));
      } else {
        cleanupOnError(new ApiError(415, 'unsupported_media_type', 'send multipart/form-data (field "files") or application/json'));
      }
    },
    async (req, res) => {
      const site = String(req.params.site);
      const locals = res.locals as Locals;
      const dir = locals.uploadDir!;
      let accepted: Record<string, unknown>;
      let location: string;
      try {
        if (req.is('application/json')) locals.uploaded = await writeJsonFiles(dir, req.body);
        else if (!Array.isArray(req.files) || req.files.length === 0) throw new ApiError(400, 'no_files', 'no files in field "files"');
        const id = randomUUID();
        await pipeline.redis.set(siteKey(id), site, 'EX', RETENTION_SECONDS);
        let result: SubmitResult;
        try {
          result = submitThread ? await submitThread.submit(site, [dir], { submissionId: id }) : await pipeline.submitExport(site, [dir], { submissionId: id });
        } catch (error) {
          await pipeline.redis.del(siteKey(id));
          if (error instanceof SourceFileError) {
            throw new ApiError(error.tooLarge ? 413 : 422, error.tooLarge ? 'payload_too_large' : 'unreadable_export', `the export could not be read: ${error.message}`, {
              file: error.file,
              ...(error.line !== undefined ? { line: error.line } : {}),
              ...(error.offset !== undefined ? { offset: error.offset } : {}),
            });
          }
          throw error;
        }
        options.onSubmission?.(result);
        audit.info(
          {
            event: 'submission.accepted',
            keyId: locals.keyId,
            site,
            submission: id,
            files: locals.uploaded,
            subjects: result.subjects,
            queued: result.queued,
            duplicates: result.duplicates,
            recordsRejected: result.recordsRejected,
          },
          'submission accepted',
        );
        location = `/v1/submissions/${encodeURIComponent(id)}`;
        accepted = { id, site, subjects: result.subjects, queued: result.queued, duplicates: result.duplicates, recordsRejected: result.recordsRejected, location };
      } finally {
        // The records are in the mapping jobs now: the files are not kept.
        await rm(dir, { recursive: true, force: true });
      }
      res.status(202).location(location).json(accepted);
    },
  );

  /** The site of a submission made through the API; 404 unknown or another site's (the answer says no more). */
  const submissionSite = async (res: Response, id: string): Promise<string> => {
    const site = await pipeline.redis.get(siteKey(id));
    if (site === null || site !== (res.locals as Locals).site) throw new ApiError(404, 'unknown_submission', `no submission '${id}'`);
    return site;
  };

  app.get('/v1/submissions/:id', async (req, res) => {
    const id = String(req.params.id);
    const site = await submissionSite(res, id);
    const [c, letters] = await Promise.all([pipeline.submission(id), pipeline.deadLetters.list(id)]);
    const destinations: Record<string, { queued: number; duplicates: number; delivered: number; deadLettered: number; replayed: number; pending: number }> = {};
    for (const [name, d] of Object.entries(c.destinations)) {
      destinations[name] = {
        queued: d.deliveryQueued,
        duplicates: d.deliveryDuplicates,
        delivered: d.delivered,
        deadLettered: d.deadLettered,
        replayed: d.replayed,
        pending: Math.max(0, d.deliveryQueued - d.delivered - d.deadLettered),
      };
    }
    const mappingPending = Math.max(0, c.queued - c.mapped - c.subjectsRejected - c.mappingFailed);
    const deliveryPending = Object.values(destinations).reduce((n, d) => n + d.pending, 0);
    res.json({
      id,
      site,
      status: mappingPending + deliveryPending === 0 ? 'finished' : 'in-progress',
      counts: {
        subjects: c.subjects,
        queued: c.queued,
        duplicates: c.duplicates,
        mapped: c.mapped,
        rejected: { subjects: c.subjectsRejected, records: c.recordsRejected },
        mappingFailed: c.mappingFailed,
        delivered: Object.values(destinations).reduce((n, d) => n + d.delivered, 0),
        deadLettered: letters.length,
        replayed: c.replayed,
      },
      destinations,
      rejects: letters.filter((l) => l.stage !== 'deliver').map(rejectView),
    });
  });

  app.post('/v1/submissions/:id/replay', async (req, res) => {
    const id = String(req.params.id);
    const site = await submissionSite(res, id);
    const result = await pipeline.replayAll(id);
    audit.info({ event: 'submission.replayed', keyId: (res.locals as Locals).keyId, site, submission: id, replayed: result.replayed.length, skipped: result.skipped.length }, 'submission replayed');
    res.status(202).json(result);
  });

  app.get('/v1/dead-letters', async (req, res) => {
    const id = typeof req.query.submission === 'string' ? req.query.submission : '';
    if (id === '') throw new ApiError(400, 'missing_parameter', 'query parameter "submission" is required');
    await submissionSite(res, id);
    const letters = (await pipeline.deadLetters.list(id)).filter((l) => l.site === (res.locals as Locals).site);
    res.json({ submission: id, deadLetters: letters.map(deadLetterSummary) });
  });

  /** The dead letter a path names: its id as returned (raw), or percent-encoded once more. */
  const siteDeadLetter = async (req: Request, res: Response): Promise<DeadLetter> => {
    const candidates = pathIdCandidates(req, 'id');
    for (const id of candidates) {
      const letter = await pipeline.deadLetters.show(id);
      if (letter && letter.site === (res.locals as Locals).site) return letter;
    }
    throw new ApiError(404, 'unknown_dead_letter', `no dead letter '${candidates[0]}'`);
  };

  app.get('/v1/submissions/:id/subjects', async (req, res) => {
    const id = String(req.params.id);
    res.json(await submissionSubjects(pipeline, id, await submissionSite(res, id)));
  });

  app.get('/v1/dead-letters/:id', async (req, res) => {
    const letter = await siteDeadLetter(req, res);
    res.json({ ...deadLetterSummary(letter), submissionId: letter.submissionId, site: letter.site });
  });

  app.post('/v1/dead-letters/:id/replay', async (req, res) => {
    const letter = await siteDeadLetter(req, res);
    const id = letter.id;
    const result = await pipeline.replay(id);
    audit.info(
      { event: 'dead-letter.replayed', keyId: (res.locals as Locals).keyId, site: letter.site, submission: letter.submissionId, deadLetter: id, replayed: result.replayed.length },
      'dead letter replayed',
    );
    res.status(202).json(result);
  });

  app.use(notFound);
  app.use(
    createErrorHandler({
      logger,
      onRefused: (req, res, error) => {
        if (!req.path.startsWith('/v1')) return;
        const locals = res.locals as Partial<Locals>;
        audit.info(
          {
            event: 'request.refused',
            status: error.status,
            code: error.code,
            method: req.method,
            path: req.path,
            ...(locals.keyId ? { keyId: locals.keyId, site: locals.site } : {}),
            ...(locals.uploaded?.length ? { files: locals.uploaded } : {}),
          },
          'request refused',
        );
      },
    }),
  );

  return Object.assign(app, {
    metrics,
    close: async () => {
      await submitThread?.close();
      await metrics.close();
    },
  });
}

/** Limits of the HTTP server on slow and many clients. */
export interface ServerLimits {
  /** The headers of a request must arrive within this, ms (default 30 000). */
  readonly headersTimeoutMs?: number;
  /**
   * The whole request (headers and body) must arrive within this, ms (default 120 000: a 50 MB upload at
   * 4 Mbit/s). A client trickling its body slower is answered 408 and cut off.
   */
  readonly requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this, ms (default 5 000). */
  readonly keepAliveTimeoutMs?: number;
  /** Connections open at once (default 256); more are refused (closed) at once. */
  readonly maxConnections?: number;
}

export const DEFAULT_SERVER_LIMITS: Required<ServerLimits> = { headersTimeoutMs: 30_000, requestTimeoutMs: 120_000, keepAliveTimeoutMs: 5_000, maxConnections: 256 };

/** Listens on `port` (0: any free port) on `host` (default 127.0.0.1); resolves once listening. */
export function startServer(app: Express, port: number, host = '127.0.0.1', limits: ServerLimits = {}): Promise<Server> {
  const l = { ...DEFAULT_SERVER_LIMITS, ...limits };
  // A body trickled in slowly holds a connection and an upload slot: cut off past these. Node requires
  // headersTimeout <= requestTimeout, and checks both only every connectionsCheckingInterval (default 30 s).
  const headersTimeout = Math.min(l.headersTimeoutMs, l.requestTimeoutMs);
  const server = createServer(
    { requestTimeout: l.requestTimeoutMs, headersTimeout, keepAliveTimeout: l.keepAliveTimeoutMs, connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 2))) },
    app,
  );
  server.maxConnections = l.maxConnections;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * Multer storage that writes each file into the submission's directory while hashing and counting it, so
 * the audit log can name exactly what was submitted. Names are checked first (no paths, no dot files) and a
 * name given twice is refused rather than overwritten.
 */
function hashingDiskStorage(): multer.StorageEngine {
  return {
    _handleFile(req, file, callback) {
      const locals = req.res!.locals as Locals;
      let name: string;
      try {
        name = safeFileName(file.originalname);
      } catch (error) {
        file.stream.resume();
        return callback(error);
      }
      const path = join(locals.uploadDir!, name);
      const hash = createHash('sha256');
      let bytes = 0;
      let settled = false;
      const settle = (error: unknown, info?: Partial<Express.Multer.File>) => {
        if (settled) return;
        settled = true;
        callback(error, info);
      };
      const out = createWriteStream(path, { flags: 'wx' });
      file.stream.on('error', (error: Error) => {
        out.destroy();
        settle(error);
      });
      out.on('error', (error: NodeJS.ErrnoException) => {
        file.stream.resume();
        settle(error.code === 'EEXIST' ? new ApiError(400, 'bad_file_name', `file name '${name}' is given twice`) : error);
      });
      file.stream.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      out.on('finish', () => {
        locals.uploaded!.push({ name, bytes, sha256: hash.digest('hex') });
        settle(null, { path, size: bytes, filename: name, destination: locals.uploadDir });
      });
      file.stream.pipe(out);
    },
    _removeFile(_req, file, callback) {
      rm(file.path, { force: true }).then(() => callback(null), callback);
    },
  };
}

function presentedKey(req: Request): string | undefined {
  const auth = req.headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  const header = req.headers['x-api-key'];
  return typeof header === 'string' && header !== '' ? header : undefined;
}

/** What the multipart parser (busboy) says of a malformed body: its messages name the problem, never content. */
const MALFORMED_MULTIPART = /^(Malformed part header|Malformed content type|Unexpected end of (form|file)|Multipart: Boundary not found)$/;

/** A multipart parser's refusal as a 400 naming it (a NUL in a part's headers, e.g. its file name, is one). */
function multipartError(error: unknown): unknown {
  if (!(error instanceof Error) || error instanceof ApiError || !MALFORMED_MULTIPART.test(error.message)) return error;
  const hint = error.message === 'Malformed part header' ? ' (control characters such as NUL in a file name, or a header line cut short)' : '';
  return new ApiError(400, 'bad_upload', `bad multipart upload: ${error.message.toLowerCase()}${hint}`);
}

/** Control characters (C0, DEL, C1: NUL, ESC, newline, CSI/OSC starters) and bidi controls. */
const CONTROL_IN_NAME = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/**
 * A plain file name: no directories, no dot files, nothing a path could escape with, and no control or
 * escape character (a name reaches the audit log, dead letters and terminals).
 */
function safeFileName(name: unknown): string {
  const n = typeof name === 'string' ? name : '';
  if (CONTROL_IN_NAME.test(n)) throw new ApiError(400, 'bad_file_name', 'file names must not contain control characters (NUL, ESC, newline, ...)');
  if (n === '' || n !== basename(n) || n.startsWith('.') || n.includes('\\') || n.length > 200) {
    throw new ApiError(400, 'bad_file_name', 'file names must be plain names (no directories, not starting with a dot)');
  }
  return n;
}

/**
 * Writes the files of a JSON submission (`{ "files": [{ "name", "content" }] }`) and says what they were.
 * The body is parsed here, not by express.json: JSON.parse would keep the last of two equal keys without a
 * word, and keys other than these are refused so that nothing else (a URL, an option) rides along.
 */
async function writeJsonFiles(dir: string, raw: unknown): Promise<UploadedFile[]> {
  if (typeof raw !== 'string') throw new ApiError(400, 'malformed_body', 'expected a JSON body');
  let body: unknown;
  try {
    body = parseStrictJson(raw, MAX_BODY_DEPTH);
  } catch (error) {
    if (error instanceof StrictJsonError) throw new ApiError(400, 'malformed_json', `request body: ${error.message}`);
    throw error;
  }
  const shape = 'expected { "files": [{ "name", "content" }, ...] }';
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new ApiError(400, 'malformed_body', shape);
  const extra = Object.keys(body).find((k) => k !== 'files');
  if (extra !== undefined) throw new ApiError(400, 'malformed_body', `unknown key '${extra.slice(0, 40)}': ${shape}`);
  const files = (body as { files?: unknown }).files;
  if (!Array.isArray(files) || files.length === 0) throw new ApiError(400, 'malformed_body', shape);
  if (files.length > MAX_FILES) throw new ApiError(400, 'too_many_files', `at most ${MAX_FILES} files`);
  const seen = new Set<string>();
  const written: UploadedFile[] = [];
  for (const [i, f] of files.entries()) {
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw new ApiError(400, 'malformed_body', `files[${i}] must be an object { "name", "content" }`);
    const unknown = Object.keys(f).find((k) => k !== 'name' && k !== 'content');
    if (unknown !== undefined) throw new ApiError(400, 'malformed_body', `files[${i}]: unknown key '${unknown.slice(0, 40)}'`);
    const { name, content } = f as { name?: unknown; content?: unknown };
    if (typeof content !== 'string') throw new ApiError(400, 'malformed_body', `files[${i}].content must be a string`);
    const safe = safeFileName(name);
    if (seen.has(safe)) throw new ApiError(400, 'malformed_body', `files[${i}]: duplicate name`);
    seen.add(safe);
    const bytes = Buffer.from(content, 'utf8');
    await writeFile(join(dir, safe), bytes, { flag: 'wx' });
    written.push({ name: safe, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
  }
  return written;
}

/** A reject as the submission shows it: where and why (a reason code, a reason without values), never the value. */
function rejectView(l: DeadLetter) {
  const shown = publicDeadLetter(l);
  return {
    id: l.id,
    stage: l.stage,
    ...(l.location ? { file: l.location.file, row: l.location.row, recordKey: l.location.key, field: l.location.field, ...(l.location.rule ? { rule: l.location.rule } : {}) } : {}),
    code: shown.code,
    reason: shown.reason,
    replayable: l.replayable,
  };
}

/** A dead letter as listed and shown: no server or source text (publicDeadLetter), no subject. */
function deadLetterSummary(l: DeadLetter) {
  const shown = publicDeadLetter(l);
  return {
    id: l.id,
    stage: l.stage,
    ...(l.location ? { location: l.location } : {}),
    ...(l.destination ? { destination: l.destination } : {}),
    ...(l.status !== undefined ? { status: l.status } : {}),
    code: shown.code,
    reason: shown.reason,
    ...(shown.issues ? { issues: shown.issues } : {}),
    replayable: l.replayable,
    createdAt: l.createdAt,
  };
}

/** `compute`'s answer, computed at most once per `ttlMs` (callers in between share it, or its computation). */
function cached<T>(ttlMs: number, compute: () => Promise<T>): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ttlMs) last = { at: now, value: compute() };
    return last.value;
  };
}

async function probe(check: () => Promise<void>): Promise<{ ok: boolean; message?: string }> {
  try {
    await check();
    return { ok: true };
  } catch (error) {
    return { ok: false, message: error instanceof Error ? error.message : String(error) };
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)))]).finally(() => clearTimeout(timer));
}

/** '20mb', '512kb', 1024 → bytes (the units body-parser takes). */
export function parseBytes(limit: string | number): number {
  if (typeof limit === 'number') return limit;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(limit);
  if (!m) throw new Error(`bad size '${limit}'`);
  const unit = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }[(m[2] ?? 'b').toLowerCase() as 'b'];
  return Math.floor(Number(m[1]) * unit);
}

