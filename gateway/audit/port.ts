import type { AuditRecord } from '../types.js';

/**
 * The audit log's port: what the request path, the admin plane, the dashboard's API and the CLI
 * need from the log, with no database driver in sight. SQLite (gateway/audit/sqlite/) is the
 * first implementation; gateway/audit/backend.ts chooses one. Reads are asynchronous, so that an
 * implementation over a network (PostgreSQL) fits without changing a consumer.
 *
 * Write side: {@link AuditWriter}, used by the request path. Read side: {@link AuditLog}.
 */

/** One audit row as stored and read back (the wire shape of every reader: admin API, CLI, exports). */
export interface AuditRow {
  id: number;
  ts: number;
  request_id: string;
  agent: string | null;
  tenant: string | null;
  user: string | null;
  upstream: string | null;
  tool: string | null;
  method: string;
  path: string;
  decision: string | null;
  rule: string | null;
  reason: string | null;
  status: number;
  upstream_status: number | null;
  error_code: string | null;
  duration_ms: number;
  bytes_in: number;
  bytes_out: number;
  policy_version: string | null;
  approval_id: string | null;
  approver: string | null;
  approval_reason: string | null;
  approval_at: number | null;
  args: string | null;
  /** The upstream's own request id for the response, beside Valet's `request_id`. */
  upstream_request_id: string | null;
  /** The delegation chain (RFC 8693 `act`) as JSON: `token`, the agent token's actors, outermost first; `exchanged`, those of a token an exchange issued. */
  act: string | null;
  /** An MCP message: `{"method", "id", "session"}` as JSON (the JSON-RPC method, its id, the Mcp-Session-Id). */
  rpc: string | null;
  /** The agent's team (from its token or the agent registry). */
  team: string | null;
  /** An LLM call: the model that answered (or was asked for), its tokens in all and their cost in the price table's currency. */
  model: string | null;
  tokens: number | null;
  cost: number | null;
  /** An LLM call's usage as JSON: tokens by kind, what was reserved, how the figures were known (docs/llm.md). */
  usage: string | null;
  /** What the rules in shadow mode would have decided, as JSON `{effect, rules, reason}` (null: no rule is in shadow mode). */
  shadow: string | null;
  /** What the decision was made on, sealed (`v1.<key id>.<base64url>`, see gateway/audit/facts.ts); null: not recorded. Never exported. */
  facts: string | null;
  /** What response rules did to the answer, as JSON `{action, rules, reason, redacted?}` (null: none applied). */
  response: string | null;
  /** When the writer recorded the row (ms); never decreases as ids grow. */
  logged_at: number;
  /** The row's events in the hash chain (bookkeeping). */
  chain_seq: number | null;
  outcome_seq: number | null;
}

/** Equality filters, time range, cursors and order for reading rows. */
export interface AuditFilter {
  limit: number;
  agent?: string | undefined;
  tenant?: string | undefined;
  user?: string | undefined;
  upstream?: string | undefined;
  tool?: string | undefined;
  /** `allow`, `deny`, `escalate`, or `none` (refused before the policy ran). */
  decision?: string | undefined;
  /** The rule id as recorded (several deciding rules are recorded joined with `,`). */
  rule?: string | undefined;
  requestId?: string | undefined;
  /** The HTTP status sent; 0 selects rows whose outcome is not recorded (in flight, or the gateway stopped). */
  status?: number | undefined;
  /** Recorded at or after / at or before (Unix ms; see `logged_at`). */
  sinceMs?: number | undefined;
  untilMs?: number | undefined;
  /** Keyset cursor: rows with a smaller id (the next page, newest first). */
  before?: number | undefined;
  /** Rows with a larger id (oldest first: exports, shipping). */
  after?: number | undefined;
  /** `desc` (newest first, the default) or `asc`. */
  order?: 'asc' | 'desc' | undefined;
}

/** One page of rows and the cursor to the next. */
export interface AuditPage {
  rows: AuditRow[];
  /** Pass as `before` (newest-first) or `after` (oldest-first) for the next page; null on the last. */
  next: number | null;
}

/** The chain head as hex: what anchors record. */
export interface AuditHead {
  seq: number;
  hash: string;
}

/** Rows older than these (Unix ms, by `ts`) are deleted; null keeps them. */
export interface RetentionCutoffs {
  defaultBefore: number | null;
  tenantBefore: Record<string, number | null>;
}

/** What one prune did. */
export interface PruneResult {
  /** Rows deleted (with `dryRun`: rows that would be). */
  rows: number;
  /** Events removed from the front of the chain (stubs of deleted rows, old prune events). */
  compacted: number;
  /** False while more rows match (call again). */
  done: boolean;
}

/** An anchor: the chain head at some moment, kept outside the database. */
export interface Anchor {
  seq: number;
  hash: string;
  at: number;
  /** Where it came from, for messages (`file:line`). */
  source?: string;
}

/** One thing verification found wrong. */
export interface VerifyProblem {
  /** Chain position the problem is at (for ordering; rows not in the chain sort by their neighbours). */
  position: number;
  seq: number | null;
  rowId: number | null;
  requestId: string | null;
  message: string;
}

/** What `verify` checked and found. */
export interface VerifyResult {
  ok: boolean;
  /** Rows in audit_log, and events in the retained chain. */
  rows: number;
  events: number;
  head: { seq: number; hash: string };
  /** The compaction checkpoint verification started from (seq 0: the genesis). */
  checkpoint: { seq: number; hash: string };
  /** Rows whose decision was recorded but whose outcome never was (the gateway stopped mid-request). */
  incomplete: number;
  /** Events whose rows retention deleted (kept as stubs). */
  pruned: number;
  anchors: { checked: number; beforeCheckpoint: number; latest: Anchor | undefined };
  /** Sorted by position: the first is the first bad row or event. */
  problems: VerifyProblem[];
}

/**
 * The request path's view of the audit log.
 *
 * - `commit(rec)` before a request is forwarded: resolves once its row is durable (SQLite: committed
 *   with `synchronous = FULL`, fsynced). Requests arriving together share one transaction and one
 *   fsync (group commit). Rejects with `VALET_ERR_AUDIT_UNAVAILABLE` when the row cannot be written
 *   (another process holds the write lock past the busy timeout, disk full, read-only file...),
 *   unless the writer runs fail-open: then it resolves, the row is kept and retried, and the
 *   failure is logged at error level.
 * - `record(rec)` when a request is over: completes the committed row with its outcome, or writes
 *   the row whole for a request refused before forwarding. Never waits; written with the next
 *   decision, or within 10 ms (the worker writer; the inline one writes it at the end of the turn).
 */
export interface AuditWriter {
  commit(rec: AuditRecord): Promise<void>;
  record(rec: AuditRecord): void;
  /**
   * Writes everything queued so far. SQLite writes it before returning (blocking the thread);
   * PostgreSQL starts the write at once. Either way the promise resolves once it is committed (or
   * the database refused it: the rows are then held for a retry, see `pending`).
   */
  flush(): Promise<void>;
  /** Rows queued or being written (and, while the database is unwritable, held for retry). */
  readonly pending: number;
  /** The chain head as of the last commit. */
  readonly head: AuditHead;
  /** Transactions committed so far (each one fsync, shared by every row in it). */
  readonly commits: number;
  /**
   * A writer on another thread is committing (a batch posted and not yet answered, the last commit
   * having worked): a probe of the database's write lock that finds it taken is then not a sign of
   * another process holding it. Undefined where no probe can meet the writer's lock.
   */
  readonly busy?: boolean;
  /** Deletes rows older than the cutoffs in small transactions between the request path's batches. */
  prune(cutoffs: RetentionCutoffs): Promise<PruneResult>;
  /** Flushes, closes the database, stops the writer thread. */
  close(): Promise<void>;
}

/** The filters shipping applies (it follows the log: no time range, cursor or order). */
export type CompletedFilter = Omit<AuditFilter, 'limit' | 'order' | 'before' | 'after' | 'sinceMs' | 'untilMs'>;

/** Completed rows after a shipping cursor (see {@link AuditLog.completedAfter}). */
export interface CompletedRows {
  /** Each row with the seq of the event that completed it, in completion order. */
  rows: { seq: number; row: AuditRow }[];
  /** The newest event seq, read before the rows: a cursor may move past events up to it that matched nothing. */
  head: number;
}

/** One agent's activity since a time, for the dashboard. */
export interface AgentActivity {
  agent: string;
  tenant: string | null;
  /** The newest row's `ts` (ms). */
  lastSeen: number;
  requests: number;
  decisions: DecisionCounts;
  /** Rows answered with a 5xx status. */
  errors: number;
}

/** Rows by decision; `none`: refused before the policy ran. */
export interface DecisionCounts {
  allow: number;
  deny: number;
  escalate: number;
  none: number;
}

/** How many rows of one decision fell into one time bucket. */
export interface DecisionBucket {
  /** The bucket's index from `sinceMs` (`floor((ts - sinceMs) / bucketMs)`). */
  bucket: number;
  /** As recorded (`allow`, `deny`, `escalate`), or `none` for no decision. */
  decision: string;
  count: number;
}

/** What metered LLM calls can be added up by: an audit row column. */
export const SPEND_KEYS = ['agent', 'team', 'tenant', 'user', 'model', 'upstream'] as const;
export type SpendKey = (typeof SPEND_KEYS)[number];

/** Rows recorded in [sinceMs, untilMs) whose shadow decision differed from the enforced one (optionally of one tenant). */
export interface ShadowQuery {
  readonly sinceMs: number;
  readonly untilMs?: number | undefined;
  readonly tenant?: string | undefined;
  readonly limit: number;
}

/** Disagreements of one kind: the enforced effect (`none`: refused before the rules ran), the shadow effect and rules, how many, the latest. */
export interface ShadowRow {
  readonly enforced: string;
  readonly shadow: string;
  /** The shadow decision's rules, as JSON (an array of ids). */
  readonly rules: string;
  readonly calls: number;
  readonly lastMs: number;
  /** The request id of one such call, to look it up. */
  readonly example: string;
}

/** Which metered LLM calls (rows with `tokens`) {@link AuditLog.spend} adds up, and how it groups them. */
export interface SpendQuery {
  /** Calls made in [sinceMs, untilMs) by `ts`; without `untilMs`, every call since. */
  sinceMs: number;
  untilMs?: number | undefined;
  /** Only this tenant's calls (a tenant admin's view, a tenant-scoped budget). */
  tenant?: string | undefined;
  /** Only calls with these values (a budget's scope and upstream). */
  team?: string | undefined;
  agent?: string | undefined;
  upstream?: string | undefined;
  /** A row per value of this column (null: calls without one); absent: one row, the total. */
  by?: SpendKey | undefined;
  /** Also per tenant (rows carry it): agent, team and user ids are a tenant's own, as budget counters key them. */
  perTenant?: boolean | undefined;
  /** Also per time bucket of this size, counted from `sinceMs`. */
  bucketMs?: number | undefined;
  /** At most this many rows: the costliest groups (bucketed: the earliest buckets first, costliest first within one). */
  limit: number;
}

/** One group's metered calls: how many, their tokens (in all and by kind) and their cost in the price table's currency. */
export interface SpendRow {
  key: string | null;
  /** With `perTenant`. */
  tenant?: string | null;
  /** With `bucketMs`: the bucket's index from `sinceMs` (`floor((ts - sinceMs) / bucketMs)`). */
  bucket?: number;
  calls: number;
  tokens: number;
  cost: number;
  input: number;
  cached: number;
  cacheWrite: number;
  output: number;
  reasoning: number;
}

/**
 * The read side of the audit log (and retention, which runs outside the request path). Every
 * method reads a consistent view; none blocks a writer for long.
 */
export interface AuditLog {
  /** One page of rows matching the filter, newest first unless `order: 'asc'`, with the cursor for the next (keyset on id). */
  page(filter: AuditFilter): Promise<AuditPage>;
  /**
   * Every row matching the filter, oldest first, read a page at a time so memory stays flat
   * however many rows match. Stops at the newest row that existed when it started.
   */
  iterate(filter: Omit<AuditFilter, 'limit' | 'order' | 'before'>, pageSize?: number): AsyncIterable<AuditRow>;
  /** The newest row with this request id. */
  byRequestId(requestId: string): Promise<AuditRow | undefined>;
  /** The stored row's column names, in storage order (an export's header names them even with no rows). */
  columns(): Promise<string[]>;
  /** The stored texts of these batches of sealed request facts (gateway/audit/facts.ts, `v2`), by id; a deleted one is absent. */
  factsBatches(ids: readonly number[]): Promise<Map<number, string>>;
  /** Checks the whole retained chain and every row against it (and against the anchors given). */
  verify(options?: { anchors?: readonly Anchor[]; maxProblems?: number }): Promise<VerifyResult>;
  /**
   * Deletes rows older than the cutoffs in small transactions, keeping the chain verifiable, until
   * none is left; `dryRun` only counts them. For a process other than the gateway's (the gateway
   * prunes through its writer, {@link AuditWriter.prune}).
   */
  prune(cutoffs: RetentionCutoffs, options?: { dryRun?: boolean; batchRows?: number }): Promise<PruneResult>;
  /** Up to `limit` completed rows whose completing event comes after `cursor` (a chain seq), for shipping. */
  completedAfter(cursor: number, limit: number, filter?: CompletedFilter): Promise<CompletedRows>;
  /** Agents seen since `sinceMs` (optionally of one tenant), most recently seen first, at most `limit`. */
  agents(q: { sinceMs: number; tenant?: string | undefined; limit: number }): Promise<AgentActivity[]>;
  /** Rows recorded in [sinceMs, untilMs) (optionally of one tenant), counted by time bucket and decision; empty buckets are absent. */
  decisionCounts(q: { sinceMs: number; untilMs: number; bucketMs: number; tenant?: string | undefined }): Promise<DecisionBucket[]>;
  /** Metered LLM calls (rows with `tokens`) added up per group, and per time bucket when asked. */
  spend(q: SpendQuery): Promise<SpendRow[]>;
  /** Where the rules in shadow mode (or a candidate set) would have decided otherwise, grouped by enforced effect, shadow effect and rules, most frequent first. */
  shadowDisagreements(q: ShadowQuery): Promise<ShadowRow[]>;
  /** Whether a write could start now without waiting (`ok`), or why not (the driver's error code): the readiness probe. */
  writable(): Promise<string>;
  close(): Promise<void>;
}
