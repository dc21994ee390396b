import type { ErrorRequestHandler, RequestHandler } from 'express';

/** An error answered as JSON `{ error: { code, message } }`. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const notFound: RequestHandler = (req, _res, next) => next(new ApiError(404, 'not_found', `no route ${req.method} ${req.path}`));

/** Maps body-parser, multer and ApiError failures to JSON; anything else is a 500 without details. */
export const errorHandler: ErrorRequestHandler = (err: unknown, _req, res, _next) => {
  const e = err as { status?: number; statusCode?: number; type?: string; code?: string; message?: string; name?: string };
  let status = 500;
  let code = 'internal';
  let message = 'internal error';
  if (err instanceof ApiError) {
    ({ status, code } = err);
    message = err.message;
  } else if (e?.type === 'entity.too.large' || e?.code === 'LIMIT_FILE_SIZE') {
    status = 413;
    code = 'payload_too_large';
    message = 'request body exceeds the limit';
  } else if (e?.name === 'MulterError') {
    status = 400;
    code = 'bad_upload';
    message = `bad multipart upload: ${e.message ?? e.code}`;
  } else if (e?.type === 'entity.parse.failed') {
    status = 400;
    code = 'malformed_json';
    message = 'request body is not valid JSON';
  } else if (typeof (e?.status ?? e?.statusCode) === 'number' && (e.status ?? e.statusCode)! >= 400 && (e.status ?? e.statusCode)! < 500) {
    status = (e.status ?? e.statusCode)!;
    code = 'bad_request';
    message = e.message ?? 'bad request';
  } else {
    // Message only: never headers (keys) or bodies (patient data).
    console.error(`trialbridge api: ${e?.message ?? String(err)}`);
  }
  if (res.headersSent) return;
  res.status(status).json({ error: { code, message } });
};
