import type { ServerResponse } from 'node:http';
import { ERRORS, ValetError, type ErrorCode } from '../errors.js';
import { REQUEST_ID_HEADER } from '../proxy/headers.js';

const CLOSING: ReadonlySet<ErrorCode> = new Set(['VALET_ERR_SHUTTING_DOWN', 'VALET_ERR_BAD_REQUEST', 'VALET_ERR_BODY_TOO_LARGE', 'VALET_ERR_REQUEST_TIMEOUT']);

/** Turns any failure into a coded error; unknown failures become VALET_ERR_INTERNAL. */
export function toValetError(err: unknown): ValetError {
  return err instanceof ValetError ? err : new ValetError('VALET_ERR_INTERNAL', undefined, { cause: err });
}

/**
 * Writes the JSON error body agents receive. The message is the error's detail or the table's
 * text; never a stack trace, a token or a secret.
 */
export function sendError(res: ServerResponse, err: ValetError, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const code: ErrorCode = err.code;
  const body = JSON.stringify({ error: { code, message: err.detail ?? ERRORS[code].message, request_id: requestId, ...err.extra } });
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    // Valet's own answer: its id under the SDKs' usual name too (valet-request-id is on every response).
    'x-request-id': requestId,
    [REQUEST_ID_HEADER]: requestId,
  };
  if (err.status === 401) {
    headers['www-authenticate'] =
      code === 'VALET_ERR_TOKEN_MISSING' ? 'Bearer realm="valet"' : 'Bearer realm="valet", error="invalid_token"';
  }
  if (code === 'VALET_ERR_SHUTTING_DOWN') headers['retry-after'] = '1';
  const retryAfter = err.extra?.['retry_after_s'];
  if (err.status === 429 && typeof retryAfter === 'number' && !res.hasHeader('retry-after')) headers['retry-after'] = String(retryAfter);
  // After a malformed request the connection's framing is suspect, after shutdown it is done, and
  // after a body refused part-way the rest of it is not worth reading.
  if (CLOSING.has(code)) headers['connection'] = 'close';
  res.writeHead(err.status, headers);
  res.end(body);
}
