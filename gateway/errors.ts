/**
 * The one table of error codes. Every error an agent, an operator or a script can see has a code
 * here, an HTTP status and a fixed, secret-free message. `docs/errors.md` documents each code and a
 * test fails when the two disagree.
 */
export const ERRORS = {
  VALET_ERR_BAD_REQUEST: { status: 400, message: 'The request is malformed or ambiguous.' },
  VALET_ERR_HEADERS_TOO_LARGE: { status: 431, message: 'The request headers are too large.' },
  VALET_ERR_BAD_PATH: { status: 400, message: 'The request path is not canonical or is ambiguous.' },
  VALET_ERR_TOKEN_MISSING: { status: 401, message: 'No agent token was presented.' },
  VALET_ERR_TOKEN_INVALID: { status: 401, message: 'The agent token is invalid.' },
  VALET_ERR_TOKEN_EXPIRED: { status: 401, message: 'The agent token has expired.' },
  VALET_ERR_AUTH_UNAVAILABLE: {
    status: 503,
    message: 'The token issuer\'s keys could not be fetched; the token was not accepted.',
  },
  VALET_ERR_POLICY_DENIED: { status: 403, message: 'Policy denied this request.' },
  VALET_ERR_IDENTITY_REFUSED: {
    status: 403,
    message: 'The token\'s tenant or team disagrees with the agent registry, or the agent is not registered; nothing was forwarded.',
  },
  VALET_ERR_RESPONSE_BLOCKED: {
    status: 403,
    message: 'A response rule withheld the upstream\'s answer: the call was made, its answer is not shown.',
  },
  VALET_ERR_APPROVAL_DENIED: { status: 403, message: 'An approver denied this request; it was not forwarded.' },
  VALET_ERR_APPROVAL_EXPIRED: { status: 403, message: 'No approver decided in time; the request was not forwarded.' },
  VALET_ERR_APPROVAL_MISMATCH: { status: 403, message: 'The Valet-Approval id does not cover this request; nothing was forwarded.' },
  VALET_ERR_APPROVAL_PENDING: { status: 409, message: 'The approval is still waiting for a decision; nothing was forwarded.' },
  VALET_ERR_APPROVAL_USED: { status: 409, message: 'The approval has already been used; nothing was forwarded.' },
  VALET_ERR_APPROVAL_LIMIT: { status: 429, message: 'Too many approvals are waiting; nothing was forwarded.' },
  VALET_ERR_APPROVAL_NOT_FOUND: { status: 404, message: 'No such approval.' },
  VALET_ERR_APPROVAL_RESOLVED: { status: 409, message: 'The approval has already been decided.' },
  VALET_ERR_APPROVAL_LINK_INVALID: { status: 403, message: 'This approval link is not valid.' },
  VALET_ERR_UNKNOWN_UPSTREAM: { status: 404, message: 'No upstream is configured under this name.' },
  VALET_ERR_BODY_TOO_LARGE: { status: 413, message: 'The request body is larger than the gateway reads.' },
  VALET_ERR_REQUEST_TIMEOUT: {
    status: 408,
    message: 'The request did not arrive in time; it was not forwarded (an upstream request under way was aborted).',
  },
  VALET_ERR_RATE_LIMITED: { status: 429, message: 'A rate limit refused this request; retry after the time given.' },
  VALET_ERR_BUDGET_EXCEEDED: { status: 429, message: 'A budget refused this request; retry after the time given.' },
  VALET_ERR_BUDGET_TOO_SMALL: { status: 403, message: 'This call may spend more than the whole budget holds; waiting will not help.' },
  VALET_ERR_LLM_UNKNOWN_MODEL: { status: 403, message: 'No price is known for this model, and gateway.llm.unknown_model refuses such calls.' },
  VALET_ERR_LLM_UNMETERABLE: { status: 400, message: 'This LLM call cannot be metered, so no budget could hold it; nothing was forwarded.' },
  VALET_ERR_CREDENTIAL_UNAVAILABLE: {
    status: 503,
    message: 'The credential for this upstream is not available; nothing was forwarded.',
  },
  VALET_ERR_CREDENTIAL_CORRUPT: {
    status: 503,
    message: 'The stored credential for this upstream failed its integrity check; nothing was forwarded.',
  },
  VALET_ERR_TOKEN_ENDPOINT: {
    status: 503,
    message: 'The upstream\'s credential could not be obtained from its token endpoint; nothing was forwarded.',
  },
  VALET_ERR_CREDENTIAL_BROKEN: {
    status: 503,
    message: 'The upstream\'s credential was rejected by its authorization server and must be reconnected or replaced; nothing was forwarded.',
  },
  VALET_ERR_CREDENTIAL_NOT_CONNECTED: {
    status: 403,
    message: 'The user this agent acts for has not connected an account for this upstream; nothing was forwarded.',
  },
  VALET_ERR_CONNECT_INVALID: { status: 400, message: 'This account connection is not valid: it expired, was used already, or was started by someone else.' },
  VALET_ERR_MCP_PARSE: { status: 400, message: 'The body is not JSON: a JSON-RPC parse error; nothing was forwarded.' },
  VALET_ERR_MCP_INVALID: { status: 400, message: 'The message is not a valid JSON-RPC 2.0 request, notification or response; nothing was forwarded.' },
  VALET_ERR_MCP_METHOD: { status: 400, message: 'The method is not an MCP method Valet forwards (names are exact and case-sensitive); nothing was forwarded.' },
  VALET_ERR_MCP_UNKNOWN_TOOL: { status: 400, message: 'The tool is not one the MCP server lists; nothing was forwarded.' },
  VALET_ERR_SHUTTING_DOWN: { status: 503, message: 'The gateway is shutting down.' },
  VALET_ERR_AUDIT_UNAVAILABLE: {
    status: 503,
    message: 'The audit log could not be written, so the request was not forwarded.',
  },
  VALET_ERR_COUNTERS_UNAVAILABLE: {
    status: 503,
    message: 'The shared rate-limit and budget counters could not be reached, so the request was not forwarded.',
  },
  VALET_ERR_UPSTREAM_UNREACHABLE: { status: 502, message: 'The upstream could not be reached.' },
  VALET_ERR_UPSTREAM_ENCODING: {
    status: 502,
    message: 'The upstream\'s response uses a content encoding Valet cannot scrub for credentials; nothing was forwarded.',
  },
  VALET_ERR_UPSTREAM_TIMEOUT: { status: 504, message: 'The upstream did not answer in time.' },
  VALET_ERR_CLIENT_CLOSED: { status: 499, message: 'The agent closed the connection before the response was complete.' },
  VALET_ERR_OUTCOME_UNKNOWN: { status: 502, message: 'The gateway stopped after forwarding this request and before recording its outcome.' },
  VALET_ERR_INTERNAL: { status: 500, message: 'Internal gateway error.' },
  VALET_ERR_CONFIG: { status: 500, message: 'The configuration is invalid.' },
  VALET_ERR_MASTER_KEY: {
    status: 500,
    message: 'The secret store\'s master key is missing, malformed, or not the key the store was written with.',
  },
  VALET_ERR_AUDIT_FACTS_UNREADABLE: {
    status: 500,
    message: 'The sealed request facts of an audit row could not be opened: another master key sealed them, or they were altered.',
  },
  VALET_ERR_SECRET_INVALID: { status: 400, message: 'The secret name, tenant or value is not acceptable; nothing was written.' },
  VALET_ERR_SECRET_NOT_FOUND: { status: 404, message: 'No secret by that name exists for that tenant.' },
  VALET_ERR_SECRET_EXISTS: { status: 409, message: 'A secret by that name already exists for that tenant; rotate it instead.' },
  VALET_ERR_ADMIN_UNAUTHENTICATED: { status: 401, message: 'The admin API needs a valid admin token (Authorization: Bearer).' },
  VALET_ERR_ADMIN_FORBIDDEN: { status: 403, message: 'Your admin roles do not allow this action.' },
  VALET_ERR_ADMIN_CROSS_SITE: { status: 403, message: 'Cross-site requests to the admin API are refused.' },
  VALET_ERR_ADMIN_NOT_FOUND: { status: 404, message: 'No such admin resource.' },
  VALET_ERR_ADMIN_METHOD: { status: 405, message: 'This method is not allowed on this admin resource.' },
  VALET_ERR_ADMIN_MEDIA_TYPE: { status: 415, message: 'Admin API writes must be application/json.' },
  VALET_ERR_ADMIN_BAD_REQUEST: { status: 400, message: 'The admin request is malformed.' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * The refusals a retry of the same request may get past: something transient (the gateway, the
 * audit log, the counters, the issuer's keys or the upstream), or a limit that frees up after
 * `retry-after`. Every other refusal tells the agent's SDK not to retry (`x-should-retry: false`).
 */
export const RETRYABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'VALET_ERR_AUTH_UNAVAILABLE',
  'VALET_ERR_TOKEN_ENDPOINT',
  'VALET_ERR_REQUEST_TIMEOUT',
  'VALET_ERR_RATE_LIMITED',
  'VALET_ERR_BUDGET_EXCEEDED',
  'VALET_ERR_APPROVAL_LIMIT',
  'VALET_ERR_SHUTTING_DOWN',
  'VALET_ERR_AUDIT_UNAVAILABLE',
  'VALET_ERR_COUNTERS_UNAVAILABLE',
  'VALET_ERR_UPSTREAM_UNREACHABLE',
  'VALET_ERR_UPSTREAM_TIMEOUT',
  'VALET_ERR_INTERNAL',
]);

/** A failure with a code from {@link ERRORS}. `detail` must never contain a secret or a token. */
export class ValetError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: string | undefined;
  /** Further secret-free fields for the JSON body (e.g. the denying rule). */
  readonly extra: Readonly<Record<string, unknown>> | undefined;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown; extra?: Record<string, unknown> }) {
    super(detail ?? ERRORS[code].message, options);
    this.name = 'ValetError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.detail = detail;
    this.extra = options?.extra;
  }
}

/** One problem found in configuration, located in its file. */
export interface ConfigProblem {
  file: string;
  line: number;
  column: number;
  path: string;
  message: string;
}

/** Raised when a configuration directory cannot be loaded; carries every problem found. */
export class ConfigError extends ValetError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[]) {
    super('VALET_ERR_CONFIG', formatProblems(problems));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function formatProblems(problems: readonly ConfigProblem[]): string {
  return problems
    .map((p) => `${p.file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ''}${p.message}`)
    .join('\n');
}
