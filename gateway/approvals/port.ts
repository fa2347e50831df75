import type { ApprovalRecord, ApprovalStatus } from './types.js';

/** What must match for an approved async approval to be executed by a re-sent request. */
export interface Binding {
  readonly agent: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly digest: string;
  readonly rule: string;
  readonly group: string;
}

export interface ListFilter {
  readonly status?: ApprovalStatus | undefined;
  readonly tenant?: string | undefined;
  readonly agent?: string | undefined;
  readonly limit: number;
}

export type InsertResult = { ok: true } | { ok: false; scope: 'agent' | 'tenant'; limit: number; retryAfterMs: number };

/** Called with an approval's id when it stops waiting: decided, expired or aborted. */
export type SettledListener = (id: string) => void;

/**
 * The approvals port: where approvals are kept, with no driver in sight. The approvals service,
 * the admin plane and the CLI depend on this; `approvals/backend.ts` chooses the implementation
 * (`approvals/sqlite/`, or `approvals/postgres/` for a fleet). Methods are asynchronous because a networked store is; every state
 * change is one conditional write, so two instances deciding the same approval cannot both win.
 */
export interface ApprovalStore {
  /** Inserts a pending approval unless the agent or its tenant already has `limits` pending (atomically). */
  insert(a: ApprovalRecord, limits: { perAgent: number; perTenant: number }, now: number): Promise<InsertResult>;
  get(id: string): Promise<ApprovalRecord | undefined>;
  /** Newest first. */
  list(f: ListFilter): Promise<ApprovalRecord[]>;
  /** pending → approved/denied, unless expired. An approved async approval gets `now + timeout` to be executed. */
  decide(id: string, to: 'approved' | 'denied', resolver: string, reason: string | null, now: number): Promise<boolean>;
  /** pending/approved → expired, once its deadline has passed. */
  expire(id: string, now: number): Promise<boolean>;
  /** Expires everything past its deadline; returns the ids. */
  expireDue(now: number): Promise<string[]>;
  /** pending/approved → aborted (a held agent left, or the gateway stopped). */
  abort(id: string, reason: string, now: number): Promise<boolean>;
  /** approved → consumed for an async approval, only if the binding matches and it is not expired. */
  consumeAsync(id: string, b: Binding, requestId: string, now: number): Promise<boolean>;
  /** approved → consumed for a held request. */
  consumeHeld(id: string, requestId: string, now: number): Promise<boolean>;
  /** consumed → approved again, by the request that consumed it (a rate limit refused it after all). */
  release(id: string, requestId: string): Promise<boolean>;
  /**
   * At start: held approvals of an earlier process of this instance can never be answered; they
   * are aborted. A shared store aborts only this instance's, never those another instance holds.
   */
  abortHeld(reason: string, now: number): Promise<number>;
  countPending(now: number): Promise<number>;
  /** Records a link token as used; false if it already was. */
  useLink(nonce: string, approvalId: string, action: string, usedBy: string, now: number): Promise<boolean>;
  /**
   * Tells `listener` whenever an approval is decided, expired or aborted through any client of the
   * same store — this process, or (for a shared store) another instance — so a request held here
   * wakes up when an approver answers elsewhere. Returns the unsubscribe function.
   */
  onSettled(listener: SettledListener): () => void;
  /** A shared store: why it cannot serve now (for `/readyz`), undefined when it can. */
  problem?(): string | undefined;
  close(): Promise<void>;
}
