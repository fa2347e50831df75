/** How an escalated request waits: the agent's connection is held open, or it gets 202 and re-sends. */
export type ApprovalMode = 'hold' | 'async';

/**
 * `pending` → `approved` | `denied` | `expired` | `aborted`; `approved` → `consumed` (executed once),
 * `expired` (an async approval not used in time) or `aborted` (a held agent left). Every move is one
 * conditional UPDATE, so concurrent approve, deny, expire and consume end in exactly one outcome.
 */
export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired' | 'aborted' | 'consumed';

/** One escalated request, as stored. Never holds a token, a secret, headers or the raw body. */
export interface ApprovalRecord {
  /** `apr_` + 144 random bits, base64url. */
  readonly id: string;
  /** The request that asked (its audit row). */
  readonly requestId: string;
  readonly mode: ApprovalMode;
  readonly status: ApprovalStatus;
  readonly agent: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly upstream: string;
  readonly tool: string | null;
  readonly method: string;
  /** The canonical path, with any redacted path parameter replaced by `[redacted]`. */
  readonly path: string;
  /** The request's arguments after redaction (what approvers see). */
  readonly args: Readonly<Record<string, unknown>>;
  /** Why arguments are missing or incomplete (unreadable body, truncated), if they are. */
  readonly argsNote: string | null;
  readonly rule: string;
  readonly reason: string;
  /** The approver group the rule names. */
  readonly group: string;
  readonly timeoutMs: number;
  readonly createdAt: number;
  /** Pending: the decision deadline. Approved (async): the deadline to execute it. */
  readonly expiresAt: number;
  /** SHA-256 (hex) of the exact request: see `digest.ts`. */
  readonly digest: string;
  readonly resolver: string | null;
  readonly resolutionReason: string | null;
  readonly resolvedAt: number | null;
  readonly consumedAt: number | null;
  readonly consumedRequestId: string | null;
  readonly policyVersion: string | null;
}

/** The JSON shape of an approval on the admin API and in notifications (snake_case, ISO times). */
export function approvalJson(a: ApprovalRecord): Record<string, unknown> {
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  return {
    id: a.id,
    status: a.status,
    mode: a.mode,
    agent: a.agent,
    tenant: a.tenant,
    user: a.user,
    upstream: a.upstream,
    tool: a.tool,
    method: a.method,
    path: a.path,
    args: a.args,
    args_note: a.argsNote,
    rule: a.rule,
    reason: a.reason,
    group: a.group,
    timeout_s: a.timeoutMs / 1000,
    created_at: iso(a.createdAt),
    expires_at: iso(a.expiresAt),
    request_id: a.requestId,
    request_digest: a.digest,
    resolver: a.resolver,
    resolution_reason: a.resolutionReason,
    resolved_at: iso(a.resolvedAt),
    consumed_at: iso(a.consumedAt),
    consumed_request_id: a.consumedRequestId,
    policy_version: a.policyVersion,
  };
}
