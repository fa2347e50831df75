import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { ValetError } from '../errors.js';
import type { LinkAction, LinkClaims, LinkSigner } from './links.js';
import type { Notifier } from './notify.js';
import type { ApprovalStore, Binding, ListFilter } from './port.js';
import type { ApprovalMode, ApprovalRecord } from './types.js';

/** `apr_` + 144 random bits in base64url. */
export const APPROVAL_ID = /^apr_[A-Za-z0-9_-]{24}$/;
export const newApprovalId = (): string => `apr_${randomBytes(18).toString('base64url')}`;

/** What the pipeline knows of an escalated request when it parks it; the store adds the rest. */
export type ParkInput = Omit<
  ApprovalRecord,
  'id' | 'status' | 'createdAt' | 'expiresAt' | 'resolver' | 'resolutionReason' | 'resolvedAt' | 'consumedAt' | 'consumedRequestId'
>;

/** Says when the agent hung up (the request path's `HangUp`, or any emitter of `abort`). */
export interface HangUpSignal {
  readonly aborted: boolean;
  once(event: 'abort', listener: () => void): unknown;
  off(event: 'abort', listener: () => void): unknown;
}

export interface ApprovalLimits {
  readonly perAgent: number;
  readonly perTenant: number;
}

export interface ApprovalServiceOptions {
  readonly store: ApprovalStore;
  readonly notifier: Notifier;
  readonly limits: ApprovalLimits;
  readonly logger: Logger;
  /** Signs approve/deny links for notifications; undefined: notifications carry no links. */
  readonly links?: LinkSigner | undefined;
  /** Where links point: the admin plane as approvers reach it (read when a notice is sent). */
  readonly linkBase?: (() => string | undefined) | undefined;
  readonly now?: () => number;
  /** How often due approvals are expired in the background (ms). */
  readonly sweepMs?: number;
}

export interface ApprovalService {
  /** Records a pending approval and notifies approvers. Rejects with 429 VALET_ERR_APPROVAL_LIMIT past a cap. */
  park(input: ParkInput): Promise<ApprovalRecord>;
  /**
   * Hold mode: resolves once the approval is no longer pending — approved, denied, expired, or
   * aborted (the agent hung up, which this marks, or the gateway is stopping). A decision made
   * through another client of the store reaches it through the store's `onSettled`.
   */
  waitForDecision(id: string, signal: HangUpSignal): Promise<ApprovalRecord>;
  /** Hold mode: approved → consumed; false if it is not (any more) approved. */
  take(id: string, requestId: string): Promise<boolean>;
  /** Async mode: executes an approval once for the request it was granted for; rejects with a coded refusal otherwise. */
  redeem(id: string, binding: Binding, requestId: string): Promise<ApprovalRecord>;
  /** Undoes `take`/`redeem` when the request is refused after all (a rate limit): async can be re-sent, hold is aborted. */
  release(a: ApprovalRecord, requestId: string, why: string): Promise<void>;
  /** An approver's decision. Rejects with VALET_ERR_APPROVAL_NOT_FOUND or VALET_ERR_APPROVAL_RESOLVED. */
  decide(id: string, action: LinkAction, resolver: string, reason: string | null): Promise<ApprovalRecord>;
  get(id: string): Promise<ApprovalRecord | undefined>;
  list(f: ListFilter): Promise<ApprovalRecord[]>;
  /** A link token's claims (without using it). */
  link(token: string): LinkClaims;
  /** Marks a link token used; rejects with VALET_ERR_APPROVAL_LINK_INVALID if it already was. */
  useLink(claims: LinkClaims, usedBy: string): Promise<void>;
  /** Expires what is due now (also runs in the background). */
  sweep(): Promise<void>;
  /** Approvals waiting for a decision. */
  pending(): Promise<number>;
  /** Held requests this process is waiting on. */
  readonly holding: number;
  /** Marks held approvals of an earlier process aborted and starts the background sweep. */
  start(): Promise<void>;
  /** Shutdown: every held request is aborted and answered; the sweep stops. */
  close(): Promise<void>;
}

export function createApprovalService(o: ApprovalServiceOptions): ApprovalService {
  const { store, logger } = o;
  const now = o.now ?? Date.now;
  const waiters = new Map<string, () => void>();
  let sweeper: NodeJS.Timeout | undefined;
  let closing = false;

  // Every settled approval, whoever settled it, wakes the request held for it here (if any).
  const unsubscribe = store.onSettled((id) => waiters.get(id)?.());

  const linkFor = (a: ApprovalRecord): { approve: string; deny: string } | undefined => {
    const base = o.linkBase?.();
    if (o.links === undefined || base === undefined) return undefined;
    const url = (action: LinkAction): string => `${base.replace(/\/+$/, '')}/approvals/link/${(o.links as LinkSigner).sign(a.id, action, a.expiresAt)}`;
    return { approve: url('approve'), deny: url('deny') };
  };

  const sweep = async (): Promise<void> => {
    for (const id of await store.expireDue(now())) logger.info({ approvalId: id }, 'approval expired');
  };
  const sweepInBackground = (): void => {
    sweep().catch((err: unknown) => logger.error({ err }, 'could not expire due approvals; will retry'));
  };

  return {
    async park(input) {
      if (closing) throw new ValetError('VALET_ERR_SHUTTING_DOWN');
      const t = now();
      const a: ApprovalRecord = Object.freeze({
        ...input,
        id: newApprovalId(),
        status: 'pending',
        createdAt: t,
        expiresAt: t + input.timeoutMs,
        resolver: null,
        resolutionReason: null,
        resolvedAt: null,
        consumedAt: null,
        consumedRequestId: null,
      });
      const r = await store.insert(a, o.limits, t);
      if (!r.ok) {
        const retryAfter = Math.max(1, Math.ceil(r.retryAfterMs / 1000));
        throw new ValetError(
          'VALET_ERR_APPROVAL_LIMIT',
          `Too many approvals are waiting for ${r.scope === 'agent' ? 'this agent' : 'this tenant'} (at most ${r.limit}); nothing was forwarded.`,
          { extra: { rule: a.rule, reason: a.reason, retry_after_s: retryAfter } },
        );
      }
      logger.info({ approvalId: a.id, reqId: a.requestId, agent: a.agent, tenant: a.tenant, rule: a.rule, group: a.group, mode: a.mode }, 'approval requested');
      o.notifier.notify({ event: 'approval.requested', approval: a, links: linkFor(a) });
      return a;
    },

    waitForDecision(id, signal) {
      return new Promise<ApprovalRecord>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        let done = false;
        const finish = (): void => {
          if (done) return;
          done = true;
          if (timer !== undefined) clearTimeout(timer);
          signal.off('abort', onAbort);
          waiters.delete(id);
          store.get(id).then((a) => resolve(a as ApprovalRecord), reject);
        };
        const fail = (err: unknown): void => {
          logger.error({ err, approvalId: id }, 'the approval store failed while a request was held');
          finish();
        };
        const onAbort = (): void => {
          store.abort(id, 'the agent disconnected while waiting', now()).then((aborted) => {
            if (aborted) logger.info({ approvalId: id }, 'approval aborted: the agent disconnected');
            finish();
          }, fail);
        };
        const arm = (): void => {
          store.get(id).then((a) => {
            if (done) return;
            if (a === undefined || a.status !== 'pending') return finish();
            timer = setTimeout(() => {
              timer = undefined;
              store.expire(id, now()).then((expired) => {
                if (expired) logger.info({ approvalId: id }, 'approval expired');
                arm();
              }, fail);
            }, Math.max(1, a.expiresAt - now() + 1));
          }, fail);
        };
        waiters.set(id, finish);
        signal.once('abort', onAbort);
        if (signal.aborted) return onAbort();
        arm();
      });
    },

    take: (id, requestId) => store.consumeHeld(id, requestId, now()),

    async redeem(id, b, requestId) {
      const t = now();
      if (APPROVAL_ID.test(id) && (await store.consumeAsync(id, b, requestId, t))) return (await store.get(id)) as ApprovalRecord;
      const a = APPROVAL_ID.test(id) ? await store.get(id) : undefined;
      // Unknown, another agent's (or another tenant's, or for another user): one answer, no oracle.
      if (a === undefined || a.agent !== b.agent || a.tenant !== b.tenant || a.user !== b.user) {
        throw new ValetError('VALET_ERR_APPROVAL_MISMATCH', 'The Valet-Approval id does not name an approval of this agent.');
      }
      if (a.mode !== 'async') throw new ValetError('VALET_ERR_APPROVAL_MISMATCH', 'The Valet-Approval id names a held request; only async approvals are executed by re-sending.');
      if (a.digest !== b.digest) {
        throw new ValetError('VALET_ERR_APPROVAL_MISMATCH', 'This request differs from the one that was approved (method, path, query, headers or body); nothing was forwarded.', {
          extra: { approval: { id: a.id } },
        });
      }
      if (a.rule !== b.rule || a.group !== b.group) {
        throw new ValetError('VALET_ERR_APPROVAL_MISMATCH', 'The policy changed since this approval was asked for: a different rule or approver group now applies. Send the request without Valet-Approval to ask again.', {
          extra: { approval: { id: a.id } },
        });
      }
      if ((a.status === 'pending' || a.status === 'approved') && a.expiresAt <= t) {
        await store.expire(a.id, t);
        throw refusalFor({ ...a, status: 'expired' });
      }
      throw refusalFor(a);
    },

    async release(a, requestId, why) {
      if (a.mode === 'async') await store.release(a.id, requestId);
      else await store.abort(a.id, why, now());
    },

    async decide(id, action, resolver, reason) {
      const t = now();
      const done = APPROVAL_ID.test(id) && (await store.decide(id, action === 'approve' ? 'approved' : 'denied', resolver, reason, t));
      const a = APPROVAL_ID.test(id) ? await store.get(id) : undefined;
      if (a === undefined) throw new ValetError('VALET_ERR_APPROVAL_NOT_FOUND');
      if (!done) {
        let status = a.status;
        if (status === 'pending' && a.expiresAt <= t) {
          await store.expire(id, t);
          status = 'expired';
        }
        throw new ValetError('VALET_ERR_APPROVAL_RESOLVED', `Approval ${id} is already ${status}; it cannot be ${action === 'approve' ? 'approved' : 'denied'}.`, {
          extra: { approval: { id, status } },
        });
      }
      logger.info({ approvalId: id, action, resolver }, action === 'approve' ? 'approval granted' : 'approval denied');
      return a;
    },

    get: async (id) => (APPROVAL_ID.test(id) ? store.get(id) : undefined),
    list: (f) => store.list(f),

    link(token) {
      if (o.links === undefined) throw new ValetError('VALET_ERR_APPROVAL_LINK_INVALID', 'Approval links are not enabled on this gateway.');
      return o.links.verify(token, now());
    },
    async useLink(claims, usedBy) {
      if (!(await store.useLink(claims.nonce, claims.approvalId, claims.action, usedBy, now()))) {
        throw new ValetError('VALET_ERR_APPROVAL_LINK_INVALID', 'This approval link has already been used.');
      }
    },

    sweep,
    pending: () => store.countPending(now()),
    get holding() {
      return waiters.size;
    },

    async start() {
      const n = await store.abortHeld('the gateway restarted while the request was held', now());
      if (n > 0) logger.warn({ count: n }, 'held approvals from before the restart were aborted; they will never be executed');
      await sweep();
      sweeper = setInterval(sweepInBackground, o.sweepMs ?? 1_000);
      sweeper.unref();
    },

    async close() {
      closing = true;
      if (sweeper !== undefined) clearInterval(sweeper);
      await Promise.all(
        [...waiters].map(async ([id, finish]) => {
          try {
            await store.abort(id, 'the gateway is shutting down', now());
          } catch (err) {
            // The store is unreachable: the approval stays pending until this instance starts
            // again and aborts what it was holding (abortHeld); the request is answered regardless.
            logger.error({ approvalId: id, message: (err as Error).message }, 'could not mark a held approval aborted at shutdown');
          } finally {
            finish();
          }
        }),
      );
      unsubscribe();
    },
  };
}

/** The coded refusal for a request whose approval is not (or no longer) approved. */
export function refusalFor(a: ApprovalRecord): ValetError {
  const approval = { id: a.id, status: a.status };
  switch (a.status) {
    case 'pending':
    case 'approved':
      return new ValetError('VALET_ERR_APPROVAL_PENDING', undefined, { extra: { approval: { ...approval, status_url: statusUrl(a.id), expires_at: iso(a.expiresAt) } } });
    case 'denied':
      return new ValetError('VALET_ERR_APPROVAL_DENIED', `Approval ${a.id} was denied${a.resolutionReason ? `: ${a.resolutionReason}` : '.'}`, {
        extra: { rule: a.rule, reason: a.reason, approval: { ...approval, resolution_reason: a.resolutionReason } },
      });
    case 'consumed':
      return new ValetError('VALET_ERR_APPROVAL_USED', `Approval ${a.id} has already been used; an approval executes one request once.`, { extra: { approval } });
    default:
      return new ValetError('VALET_ERR_APPROVAL_EXPIRED', undefined, { extra: { rule: a.rule, reason: a.reason, approval: { ...approval, status: 'expired' } } });
  }
}

export const statusUrl = (id: string): string => `/_valet/approvals/${id}`;
const iso = (t: number): string => new Date(t).toISOString();
