import type { ApprovalMode, ApprovalRecord, ApprovalStatus } from './types.js';

/** An approval as both stores keep it: one column per field, `args` as JSON text. */
export interface ApprovalRow {
  id: string;
  request_id: string;
  mode: ApprovalMode;
  status: ApprovalStatus;
  agent: string;
  tenant: string | null;
  user: string | null;
  upstream: string;
  tool: string | null;
  method: string;
  path: string;
  args: string;
  args_note: string | null;
  rule: string;
  reason: string;
  approver_group: string;
  timeout_ms: number;
  created_at: number;
  expires_at: number;
  digest: string;
  resolver: string | null;
  resolution_reason: string | null;
  resolved_at: number | null;
  consumed_at: number | null;
  consumed_request_id: string | null;
  policy_version: string | null;
}

/** The record a stored row describes (frozen: it is shared). */
export const fromRow = (r: ApprovalRow): ApprovalRecord =>
  Object.freeze({
    id: r.id,
    requestId: r.request_id,
    mode: r.mode,
    status: r.status,
    agent: r.agent,
    tenant: r.tenant,
    user: r.user,
    upstream: r.upstream,
    tool: r.tool,
    method: r.method,
    path: r.path,
    args: JSON.parse(r.args) as Record<string, unknown>,
    argsNote: r.args_note,
    rule: r.rule,
    reason: r.reason,
    group: r.approver_group,
    timeoutMs: r.timeout_ms,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    digest: r.digest,
    resolver: r.resolver,
    resolutionReason: r.resolution_reason,
    resolvedAt: r.resolved_at,
    consumedAt: r.consumed_at,
    consumedRequestId: r.consumed_request_id,
    policyVersion: r.policy_version,
  });
