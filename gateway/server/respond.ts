import type { ServerResponse } from 'node:http';
import { ERRORS, RETRYABLE, ValetError, type ErrorCode } from '../errors.js';
import { REQUEST_ID_HEADER } from '../proxy/headers.js';
import { renderRefusal, type Dialect } from './dialects.js';

const CLOSING: ReadonlySet<ErrorCode> = new Set(['VALET_ERR_SHUTTING_DOWN', 'VALET_ERR_BAD_REQUEST', 'VALET_ERR_BODY_TOO_LARGE', 'VALET_ERR_REQUEST_TIMEOUT']);

/** Turns any failure into a coded error; unknown failures become VALET_ERR_INTERNAL. */
export function toValetError(err: unknown): ValetError {
  return err instanceof ValetError ? err : new ValetError('VALET_ERR_INTERNAL', undefined, { cause: err });
}

/** How a refusal is rendered for the upstream a request was for (generic before one is known). */
export interface RefusalStyle {
  readonly dialect: Dialect;
  /** JSON-RPC (MCP): the id of the request being refused. */
  readonly rpcId?: string | number | null;
  /** MCP: the RFC 9728 metadata URL a 401 points to. */
  readonly resourceMetadata?: string;
  /** Above this many seconds, a `retry-after` is not sent: the SDK is told not to retry instead. */
  readonly maxRetryAfterS: number;
}

const GENERIC_REFUSAL: RefusalStyle = { dialect: 'generic', maxRetryAfterS: 60 };

/**
 * Writes the error body agents receive, in the upstream's dialect (see dialects.ts). The message is
 * the error's detail or the table's text; never a stack trace, a token or a secret. The retry
 * signals SDKs obey are set on every refusal: `x-should-retry` (OpenAI, Anthropic) and, for
 * Stripe, `stripe-should-retry` — true only for {@link RETRYABLE} codes — and `retry-after` on a
 * rate limit or budget, unless it is longer than the cap: an SDK that obeys a 50-minute
 * `retry-after` hangs, so that refusal invites no retry at all.
 */
export function sendError(res: ServerResponse, err: ValetError, requestId: string, style: RefusalStyle = GENERIC_REFUSAL): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const code: ErrorCode = err.code;
  let retry = RETRYABLE.has(code);
  const retryAfter = err.extra?.['retry_after_s'];
  const limitWait = err.status === 429 && typeof retryAfter === 'number' ? retryAfter : undefined;
  if (limitWait !== undefined && limitWait > style.maxRetryAfterS) retry = false;
  const rendered = renderRefusal(style.dialect, { code, status: err.status, message: err.detail ?? ERRORS[code].message, requestId, extra: err.extra, retry, rpcId: style.rpcId });
  const headers: Record<string, string> = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(rendered.body)),
    'cache-control': 'no-store',
    // Valet's own answer: its id under the SDKs' usual name too (valet-request-id is on every response).
    'x-request-id': requestId,
    [REQUEST_ID_HEADER]: requestId,
    ...rendered.headers,
  };
  if (err.status === 401) {
    const metadata = style.resourceMetadata === undefined ? '' : `, resource_metadata="${style.resourceMetadata}"`;
    headers['www-authenticate'] =
      code === 'VALET_ERR_TOKEN_MISSING' ? `Bearer realm="valet"${metadata}` : `Bearer realm="valet", error="invalid_token"${metadata}`;
  }
  if (code === 'VALET_ERR_SHUTTING_DOWN') headers['retry-after'] = '1';
  if (limitWait !== undefined && retry) headers['retry-after'] = String(limitWait);
  headers['x-should-retry'] = String(retry);
  if (style.dialect === 'stripe') headers['stripe-should-retry'] = String(retry);
  // After a malformed request the connection's framing is suspect, after shutdown it is done, and
  // after a body refused part-way the rest of it is not worth reading. (Over HTTP/2 this becomes a
  // reset of the request's stream alone, once the answer is out: server/listener.ts.)
  if (CLOSING.has(code)) headers['connection'] = 'close';
  res.writeHead(rendered.status ?? err.status, headers);
  res.end(rendered.body);
}
