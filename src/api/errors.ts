import type { IncomingMessage } from 'node:http';
import type { ErrorRequestHandler, Request, RequestHandler, Response } from 'express';
import type { Logger } from '../log.ts';

/** An error answered as JSON `{ error: { code, message, ...details } }`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** Where the problem is (file, line, offset): never a value from the request. */
  readonly details: Readonly<Record<string, string | number>>;
  constructor(status: number, code: string, message: string, details: Record<string, string | number> = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const notFound: RequestHandler = (req, _res, next) => next(new ApiError(404, 'not_found', `no route ${req.method} ${req.path}`));

/** How long a refused upload may go on sending (and be read and discarded) before its connection is cut. */
const REFUSED_BODY_GRACE_MS = 1000;

/**
 * Closes the connection once the response is out, instead of reading the rest of a refused body to its end:
 * a client sending a gigabyte after a 413 would otherwise keep the server reading it. For a short grace the
 * rest is read and discarded, so the client's TCP stack keeps the answer rather than a reset.
 */
export function closeAfterResponse(req: IncomingMessage, res: Response): void {
  if (!res.headersSent) res.setHeader('Connection', 'close');
  const cut = () => {
    const socket = req.socket;
    // Node forgets a request once its response is out: nobody else would tell the body's readers (multer)
    // that it ended, so the request is destroyed with its connection.
    const release = () => {
      if (!req.readableEnded && !req.destroyed) req.destroy();
    };
    if (socket.destroyed) return release();
    const timer = setTimeout(() => socket.destroy(), REFUSED_BODY_GRACE_MS);
    timer.unref();
    socket.once('close', () => {
      clearTimeout(timer);
      release();
    });
    req.resume();
  };
  if (res.writableFinished) cut();
  else res.once('finish', cut);
}

export function sendError(res: Response, error: ApiError): void {
  if (res.headersSent) return;
  res.status(error.status).json({ error: { code: error.code, message: error.message, ...error.details } });
}

export interface ErrorHandlerOptions {
  readonly logger: Logger;
  /** Called for every 4xx answered (the audit log records refusals). */
  readonly onRefused?: (req: Request, res: Response, error: ApiError) => void;
}

/** Maps body-parser, multer and ApiError failures to JSON; anything else is a 500 without details. */
export function createErrorHandler(options: ErrorHandlerOptions): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => {
    const e = err as { status?: number; statusCode?: number; type?: string; code?: string; message?: string; name?: string };
    let error: ApiError;
    if (err instanceof ApiError) {
      error = err;
    } else if (e?.type === 'entity.too.large' || e?.code === 'LIMIT_FILE_SIZE') {
      error = new ApiError(413, 'payload_too_large', 'request body exceeds the limit');
    } else if (e?.name === 'MulterError') {
      // Multer's messages name the limit or the field, never file content.
      error = new ApiError(400, 'bad_upload', `bad multipart upload: ${e.message ?? e.code}`);
    } else if (e?.type === 'entity.parse.failed') {
      error = new ApiError(400, 'malformed_json', 'request body is not valid JSON');
    } else if (e?.type === 'charset.unsupported' || e?.type === 'encoding.unsupported') {
      error = new ApiError(415, 'unsupported_media_type', 'unsupported body charset or encoding');
    } else if (typeof (e?.status ?? e?.statusCode) === 'number' && (e.status ?? e.statusCode)! >= 400 && (e.status ?? e.statusCode)! < 500) {
      // body-parser's messages for these (aborted, bad length) describe the request, not its content.
      error = new ApiError((e.status ?? e.statusCode)!, 'bad_request', e.message ?? 'bad request');
    } else {
      // Message only: never headers (keys) or bodies (patient data).
      options.logger.error({ err, method: req.method, path: req.path }, 'request failed');
      if (!res.headersSent) res.status(500).json({ error: { code: 'internal', message: 'internal error' } });
      return;
    }
    options.onRefused?.(req, res, error);
    if (error.status === 413) closeAfterResponse(req, res);
    sendError(res, error);
  };
}
