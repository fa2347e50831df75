import { ValetError } from '../errors.js';
import type { AgentIdentity, AuditRecord, Decision, RequestFacts } from '../types.js';
import { requestDigest } from './digest.js';
import { redactArgs } from './redact.js';
import { APPROVAL_ID, refusalFor, statusUrl, type ApprovalService, type HangUpSignal } from './service.js';
import type { ApprovalRecord } from './types.js';

/** The header an agent re-sends an approved async request with. */
export const APPROVAL_HEADER = 'valet-approval';
/** Data-plane paths that belong to Valet itself; `_valet` can never be an upstream name. */
export const VALET_PREFIX = '/_valet/';

/** An escalated request as the pipeline has described it. */
export interface EscalationInput {
  readonly requestId: string;
  readonly identity: AgentIdentity;
  readonly facts: RequestFacts;
  readonly decision: Decision;
  /** The headers Valet would forward (agent credentials stripped, before the real credential is added). */
  readonly headers: readonly (readonly [string, string])[];
  /** The whole body (buffered, bounded by `gateway.max_body_bytes`). */
  readonly body: Buffer;
  /** Arguments for approvers to see, read from the body even when no condition reads them. */
  readonly args: Readonly<Record<string, unknown>>;
  readonly argsError: string | undefined;
  readonly pathParams: Readonly<Record<string, string>>;
  /** The agent token: never stored; any argument containing it is redacted. */
  readonly token: string;
  /** The `Valet-Approval` header, when the agent re-sends an approved request. */
  readonly presented: string | undefined;
  /**
   * A client that cannot add a header to a call (an MCP client, driven by a model) re-sends the
   * same call instead: an approved, not yet used approval of exactly this call (same digest, rule,
   * agent, tenant and user) is then executed as if presented.
   */
  readonly redeemByDigest?: boolean;
  readonly signal: HangUpSignal;
  readonly policyVersion: string | null;
}

/** The audit fields an approval fills. */
export type AuditApproval = Pick<AuditRecord, 'approvalId' | 'approver' | 'approvalReason' | 'approvalAt'>;

export type Escalation =
  /** Async: answer 202 with this body; nothing is forwarded now. */
  | { readonly kind: 'accepted'; readonly body: string; readonly location: string }
  /** Approved and taken (exactly once): forward it. `release` undoes the take if the request is refused after all. */
  | { readonly kind: 'approved'; readonly release: (why: string) => Promise<void> };

/**
 * Step 5 of the request path, for an `escalate` decision: either executes an approved async
 * approval the request presents (`Valet-Approval`), or parks the request — async: 202 with the
 * approval's id and status URL; hold: waits for the decision and then goes on (approved) or throws
 * the coded refusal (denied, expired). Fills the audit record's approval fields on every outcome.
 */
export async function escalate(service: ApprovalService, e: EscalationInput, rec: AuditApproval): Promise<Escalation> {
  const approval = e.decision.approval;
  if (approval === undefined) throw new ValetError('VALET_ERR_INTERNAL', undefined, { cause: new Error('escalate decision without approval settings') });
  const rule = e.decision.rules.join(',');
  const digest = requestDigest({
    upstream: e.facts.upstream,
    method: e.facts.method,
    path: e.facts.forwardPath,
    query: e.facts.rawQuery,
    headers: e.headers,
    body: e.body,
  });

  if (e.presented !== undefined) {
    const id = e.presented.trim();
    if (APPROVAL_ID.test(id)) rec.approvalId = id;
    const binding = { agent: e.identity.agent, tenant: e.identity.tenant ?? null, user: e.identity.user ?? null, digest, rule, group: approval.group };
    let a: ApprovalRecord;
    try {
      a = await service.redeem(id, binding, e.requestId);
    } catch (err) {
      const known = APPROVAL_ID.test(id) ? await service.get(id) : undefined;
      if (known !== undefined && known.agent === binding.agent && known.tenant === binding.tenant) fill(rec, known);
      throw err;
    }
    fill(rec, a);
    return { kind: 'approved', release: (why) => service.release(a, e.requestId, why) };
  }

  if (e.redeemByDigest === true && approval.mode === 'async') {
    const mine = await service.list({ status: 'approved', agent: e.identity.agent, tenant: e.identity.tenant, limit: 100 });
    const match = mine.find((a) => a.digest === digest && a.rule === rule && a.user === (e.identity.user ?? null) && a.tenant === (e.identity.tenant ?? null));
    if (match !== undefined) {
      const binding = { agent: e.identity.agent, tenant: e.identity.tenant ?? null, user: e.identity.user ?? null, digest, rule, group: approval.group };
      const a = await service.redeem(match.id, binding, e.requestId).catch(() => undefined);
      if (a !== undefined) {
        fill(rec, a);
        return { kind: 'approved', release: (why) => service.release(a, e.requestId, why) };
      }
    }
  }

  const redacted = redactArgs({ args: e.args, paths: approval.redact ?? [], path: e.facts.path, pathParams: e.pathParams, never: [e.token] });
  const notes = [e.argsError !== undefined ? `the arguments could not be read: ${e.argsError}` : undefined, redacted.note].filter((n) => n !== undefined);
  const parked = await service.park({
    requestId: e.requestId,
    mode: approval.mode,
    agent: e.identity.agent,
    tenant: e.identity.tenant ?? null,
    user: e.identity.user ?? null,
    upstream: e.facts.upstream,
    tool: e.facts.tool ?? null,
    method: e.facts.method,
    path: redacted.path,
    args: redacted.args,
    argsNote: notes.length > 0 ? notes.join('; ') : null,
    rule,
    reason: e.decision.reason,
    group: approval.group,
    timeoutMs: approval.timeoutMs,
    digest,
    policyVersion: e.policyVersion,
  });
  rec.approvalId = parked.id;

  if (approval.mode === 'async') {
    const body = JSON.stringify({
      approval: {
        id: parked.id,
        status: parked.status,
        status_url: statusUrl(parked.id),
        expires_at: new Date(parked.expiresAt).toISOString(),
        mode: parked.mode,
        group: parked.group,
        rule,
        reason: parked.reason,
      },
      request_id: e.requestId,
    });
    return { kind: 'accepted', body, location: statusUrl(parked.id) };
  }

  const decided = await service.waitForDecision(parked.id, e.signal);
  fill(rec, decided);
  if (decided.status === 'approved' && (await service.take(parked.id, e.requestId))) {
    return { kind: 'approved', release: (why) => service.release(decided, e.requestId, why) };
  }
  if (e.signal.aborted) throw new ValetError('VALET_ERR_CLIENT_CLOSED');
  const final = (await service.get(parked.id)) ?? decided;
  fill(rec, final);
  if (final.status === 'aborted') throw new ValetError('VALET_ERR_SHUTTING_DOWN');
  throw refusalFor(final);
}

function fill(rec: AuditApproval, a: ApprovalRecord): void {
  rec.approvalId = a.id;
  rec.approver = a.resolver;
  rec.approvalReason = a.resolutionReason;
  rec.approvalAt = a.resolvedAt;
}

/**
 * `GET /_valet/approvals/<id>` on the data plane: the approval's status, for the agent that asked
 * (same agent, tenant and user; the token from `Authorization: Bearer`). Any other caller gets 404,
 * as for an id that does not exist.
 */
export async function approvalStatus(
  service: ApprovalService,
  path: string,
  method: string,
  token: string | undefined,
  verify: (token: string) => Promise<AgentIdentity>,
  rec: Pick<AuditRecord, 'agent' | 'tenant' | 'user'> & AuditApproval,
): Promise<string> {
  const m = /^\/_valet\/approvals\/([^/]+)$/.exec(path);
  if (m === null) throw new ValetError('VALET_ERR_UNKNOWN_UPSTREAM', 'No such Valet resource (only /_valet/approvals/<id>).');
  if (method !== 'GET' && method !== 'HEAD') throw new ValetError('VALET_ERR_BAD_REQUEST', 'Approval status is read with GET.');
  if (token === undefined) throw new ValetError('VALET_ERR_TOKEN_MISSING');
  const identity = await verify(token);
  rec.agent = identity.agent;
  rec.tenant = identity.tenant ?? null;
  rec.user = identity.user ?? null;
  const id = m[1] as string;
  let a = await service.get(id);
  if (a === undefined || a.agent !== identity.agent || a.tenant !== (identity.tenant ?? null) || a.user !== (identity.user ?? null)) {
    throw new ValetError('VALET_ERR_APPROVAL_NOT_FOUND');
  }
  rec.approvalId = a.id;
  if ((a.status === 'pending' || a.status === 'approved') && a.expiresAt <= Date.now()) {
    await service.sweep();
    a = (await service.get(id)) ?? a;
  }
  return JSON.stringify({
    approval: {
      id: a.id,
      status: a.status,
      mode: a.mode,
      rule: a.rule,
      reason: a.reason,
      group: a.group,
      created_at: new Date(a.createdAt).toISOString(),
      expires_at: new Date(a.expiresAt).toISOString(),
      resolved_at: a.resolvedAt === null ? null : new Date(a.resolvedAt).toISOString(),
      resolution_reason: a.status === 'denied' ? a.resolutionReason : null,
      status_url: statusUrl(a.id),
    },
  });
}
