import type { ErrorCode } from '../errors.js';

/**
 * The error shapes of the APIs behind Valet. A refusal Valet sends itself is rendered in the
 * upstream's shape, so the agent's SDK raises its usual typed error with Valet's message, code and
 * request id, instead of an "unknown error" holding a JSON string.
 */
export const DIALECTS = ['generic', 'openai', 'anthropic', 'github', 'stripe', 'google', 'twilio', 'slack', 'notion', 'graphql', 'aws-xml', 'aws-json', 'jsonrpc'] as const;
export type Dialect = (typeof DIALECTS)[number];

/** What a refusal says, whatever its shape. */
export interface Refusal {
  readonly code: ErrorCode;
  readonly status: number;
  readonly message: string;
  readonly requestId: string;
  /** Secret-free details (the denying rule, the approval...). */
  readonly extra: Readonly<Record<string, unknown>> | undefined;
  /** Whether the agent's SDK is invited to retry (after `retry-after`, for a limit). */
  readonly retry: boolean;
  /** JSON-RPC: the id of the request refused (null when it is not known). */
  readonly rpcId?: string | number | null | undefined;
}

/** The body and the headers a dialect adds (the request id under the name its SDK reads). */
export interface Rendered {
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
  /** The HTTP status the dialect answers with, when it is not the error's own (Slack). */
  readonly status?: number;
}

/** Anthropic's and OpenAI's error `type` for a status (both SDKs map status to the error class). */
function errorType(status: number): string {
  if (status === 400 || status === 413 || status === 431) return 'invalid_request_error';
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 404) return 'not_found_error';
  if (status === 409) return 'conflict_error';
  if (status === 429) return 'rate_limit_error';
  if (status === 408 || status === 504) return 'timeout_error';
  return 'api_error';
}

/** Stripe's `error.type`: its SDK picks the error class from it and the status. */
function stripeType(status: number): string {
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'api_error';
  return 'invalid_request_error';
}

/** Notion's error code for a status (its SDK recognises only its own). */
function notionCode(status: number): string {
  if (status === 401) return 'unauthorized';
  if (status === 403) return 'restricted_resource';
  if (status === 404) return 'object_not_found';
  if (status === 409) return 'conflict_error';
  if (status === 429) return 'rate_limited';
  if (status === 504 || status === 408) return 'gateway_timeout';
  if (status === 503) return 'service_unavailable';
  if (status >= 500) return 'internal_server_error';
  return 'validation_error';
}

/** google.rpc.Code names for a status (the `status` of a Google API error). */
function googleStatus(status: number): string {
  switch (status) {
    case 400:
    case 413:
    case 431:
      return 'INVALID_ARGUMENT';
    case 401:
      return 'UNAUTHENTICATED';
    case 403:
      return 'PERMISSION_DENIED';
    case 404:
      return 'NOT_FOUND';
    case 408:
    case 504:
      return 'DEADLINE_EXCEEDED';
    case 409:
      return 'ABORTED';
    case 429:
      return 'RESOURCE_EXHAUSTED';
    case 503:
      return 'UNAVAILABLE';
    default:
      return 'INTERNAL';
  }
}

/**
 * The AWS error code for a status: the SDKs name the exception after it (S3's and the query
 * protocols' `Code`, the JSON protocols' `__type`), and retry the throttling ones.
 */
function awsCode(status: number, json: boolean): string {
  const [xml, exception] = ((): [string, string] => {
    if (status === 401) return ['InvalidToken', 'UnrecognizedClientException'];
    if (status === 403) return ['AccessDenied', 'AccessDeniedException'];
    if (status === 404) return ['NotFound', 'ResourceNotFoundException'];
    if (status === 408) return ['RequestTimeout', 'RequestTimeoutException'];
    if (status === 409) return ['Conflict', 'ConflictException'];
    if (status === 413) return ['EntityTooLarge', 'ValidationException'];
    if (status === 429) return ['SlowDown', 'ThrottlingException'];
    if (status === 503) return ['ServiceUnavailable', 'ServiceUnavailableException'];
    if (status >= 500) return ['InternalError', 'InternalServerException'];
    return ['InvalidRequest', 'ValidationException'];
  })();
  return json ? exception : xml;
}

const XML_ESCAPES: Readonly<Record<string, string>> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
const xmlText = (v: unknown): string => String(v).replace(/[&<>"']/g, (c) => XML_ESCAPES[c] as string);

/** Renders a refusal in `dialect`. Every shape keeps Valet's code and request id. */
export function renderRefusal(dialect: Dialect, r: Refusal): Rendered {
  const valet = { code: r.code, request_id: r.requestId, ...r.extra };
  switch (dialect) {
    case 'openai':
      // The SDK reads error.message, .code, .type and .param, and the id from x-request-id.
      return { body: JSON.stringify({ error: { message: r.message, type: errorType(r.status), param: null, code: r.code, request_id: r.requestId, valet } }), headers: {} };
    case 'anthropic':
      // The SDK reads error.message and error.type, and the id from request-id.
      return {
        body: JSON.stringify({ type: 'error', error: { type: errorType(r.status), message: r.message, details: { error_code: r.code } }, request_id: r.requestId, valet }),
        headers: { 'request-id': r.requestId },
      };
    case 'github':
      // Octokit's RequestError shows `message`; `status` is a string in GitHub's bodies.
      return { body: JSON.stringify({ message: r.message, status: String(r.status), valet }), headers: {} };
    case 'stripe':
      // stripe-node builds its error from error.type, .code and .message, and the id from request-id.
      return { body: JSON.stringify({ error: { type: stripeType(r.status), code: r.code, message: r.message, request_id: r.requestId, valet } }), headers: { 'request-id': r.requestId } };
    case 'google':
      return {
        body: JSON.stringify({
          error: {
            code: r.status,
            message: r.message,
            status: googleStatus(r.status),
            details: [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: r.code, domain: 'valet', metadata: { request_id: r.requestId } }],
          },
        }),
        headers: {},
      };
    case 'twilio':
      // The SDK's RestException reads code, message, more_info and details; its `status` is the HTTP status.
      return { body: JSON.stringify({ code: r.code, message: r.message, more_info: null, status: r.status, details: { request_id: r.requestId, ...r.extra } }), headers: {} };
    case 'notion':
      // The SDK only raises its APIResponseError for one of Notion's own codes.
      return { body: JSON.stringify({ object: 'error', status: r.status, code: notionCode(r.status), message: r.message, request_id: r.requestId, valet }), headers: {} };
    case 'graphql':
      // A GraphQL response: clients show errors[0].message and read extensions.
      return { body: JSON.stringify({ data: null, errors: [{ message: r.message, extensions: { code: r.code, request_id: r.requestId, ...r.extra } }] }), headers: {} };
    case 'slack':
      // Slack's Web API answers errors with 200 and ok: false; its SDK retries every other status
      // but 429, which it waits out per retry-after: so a limit it may retry stays a 429.
      if (r.status === 429 && r.retry) return { body: JSON.stringify({ ok: false, error: 'ratelimited', valet }), headers: {} };
      return {
        body: JSON.stringify({ ok: false, error: r.code.toLowerCase(), response_metadata: { messages: [r.message] }, valet }),
        headers: {},
        status: 200,
      };
    case 'aws-xml': {
      // S3 (restXml) and the query protocols (STS, SQS, IAM...) both read Error.Code and Error.Message.
      const fields = Object.entries({ valet_code: r.code, ...r.extra }).filter(([k, v]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && v !== undefined && v !== null && typeof v !== 'object');
      const body = `<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>${r.status < 500 ? 'Sender' : 'Receiver'}</Type><Code>${awsCode(r.status, false)}</Code><Message>${xmlText(r.message)}</Message>${fields.map(([k, v]) => `<${k}>${xmlText(v)}</${k}>`).join('')}</Error><RequestId>${xmlText(r.requestId)}</RequestId></ErrorResponse>`;
      return { body, headers: { 'content-type': 'application/xml', 'x-amz-request-id': r.requestId } };
    }
    case 'jsonrpc':
      return jsonRpcRefusal(r);
    case 'aws-json': {
      // The JSON protocols (Bedrock, DynamoDB, Lambda...) read the exception name from x-amzn-errortype or __type.
      const type = awsCode(r.status, true);
      return {
        body: JSON.stringify({ __type: type, message: r.message, valet }),
        headers: { 'content-type': 'application/json', 'x-amzn-errortype': type, 'x-amzn-requestid': r.requestId },
      };
    }
    default:
      return { body: JSON.stringify({ error: { code: r.code, message: r.message, request_id: r.requestId, ...r.extra } }), headers: {} };
  }
}

/**
 * JSON-RPC 2.0 (MCP): the refusal is an error response to the request's id, with HTTP 200 so MCP
 * clients hand it to the caller as an error of that call rather than a transport failure; only an
 * agent that must authenticate again gets 401 (with its WWW-Authenticate). Standard codes where one
 * fits (RFC: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid
 * params), -32000 for Valet's other refusals; `data` carries Valet's code, request id and details.
 */
function jsonRpcRefusal(r: Refusal): Rendered {
  const rpc =
    r.code === 'VALET_ERR_MCP_PARSE' ? -32700 : r.code === 'VALET_ERR_MCP_INVALID' ? -32600 : r.code === 'VALET_ERR_MCP_METHOD' ? -32601 : r.code === 'VALET_ERR_MCP_UNKNOWN_TOOL' ? -32602 : -32000;
  const body = { jsonrpc: '2.0', id: r.rpcId ?? null, error: { code: rpc, message: r.message, data: { code: r.code, request_id: r.requestId, ...r.extra } } };
  return { body: JSON.stringify(body), headers: {}, ...(r.status !== 401 && { status: 200 }) };
}
