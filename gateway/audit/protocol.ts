import type { AuditRecord } from '../types.js';
import type { AuditDurability } from '../config/types.js';
import type { AuditHead, PruneResult, RetentionCutoffs } from './port.js';
import type { FactsKey } from './facts.js';

/**
 * What the writer is handed for one request, positionally: `[kind, ...RECORD_FIELDS values]`.
 * An array of primitives is far cheaper to pass between threads than an object (no property
 * names to write, read and rebuild into hidden classes), and the writer reads it by index.
 * - `DECISION`: a request about to be forwarded; its commit is waited for.
 * - `FINAL`: a request is over: completes its decision's row, or is written whole.
 */
export type PackedOp = readonly unknown[];
export const DECISION = 1;
export const FINAL = 2;

/** The order of an AuditRecord's fields in a {@link PackedOp} (after the kind). */
export const RECORD_FIELDS = [
  'ts',
  'requestId',
  'agent',
  'tenant',
  'user',
  'upstream',
  'tool',
  'method',
  'path',
  'decision',
  'rule',
  'reason',
  'status',
  'upstreamStatus',
  'errorCode',
  'durationMs',
  'bytesIn',
  'bytesOut',
  'policyVersion',
  'approvalId',
  'approver',
  'approvalReason',
  'approvalAt',
  'args',
  'upstreamRequestId',
  'act',
  'rpc',
  'team',
  'model',
  'tokens',
  'cost',
  'usage',
  'shadow',
  'facts',
  'factsPlain',
  'response',
] as const satisfies readonly (keyof AuditRecord)[];

// Every field of AuditRecord is listed (a compile error names any that is not).
const everyField: Record<Exclude<keyof AuditRecord, (typeof RECORD_FIELDS)[number]>, never> = {};
void everyField;

export const REQUEST_ID_AT = 1 + RECORD_FIELDS.indexOf('requestId');
export const STATUS_AT = 1 + RECORD_FIELDS.indexOf('status');
export const ERROR_CODE_AT = 1 + RECORD_FIELDS.indexOf('errorCode');
export const FACTS_PLAIN_AT = 1 + RECORD_FIELDS.indexOf('factsPlain');

/**
 * A record as a {@link PackedOp}, in {@link RECORD_FIELDS} order (a unit test holds the two to the
 * same order). Written out field by field, as an array literal: each property read is then
 * monomorphic, where a loop over the names was a megamorphic keyed load per field, and the array
 * is packed, where `new Array(n)` made it holey, which sends both the structured clone to the
 * writer thread and the journal's JSON.stringify down their slow, per-element paths.
 */
export function pack(kind: typeof DECISION | typeof FINAL, r: AuditRecord): PackedOp {
  return [
    kind,
    r.ts,
    r.requestId,
    r.agent,
    r.tenant,
    r.user,
    r.upstream,
    r.tool,
    r.method,
    r.path,
    r.decision,
    r.rule,
    r.reason,
    r.status,
    r.upstreamStatus,
    r.errorCode,
    r.durationMs,
    r.bytesIn,
    r.bytesOut,
    r.policyVersion,
    r.approvalId,
    r.approver,
    r.approvalReason,
    r.approvalAt,
    r.args,
    r.upstreamRequestId,
    r.act,
    r.rpc,
    r.team,
    r.model,
    r.tokens,
    r.cost,
    r.usage,
    r.shadow,
    r.facts,
    r.factsPlain,
    r.response,
  ];
}

/** What the writer thread is started with (`workerData`). */
export interface WriterInit {
  readonly dataDir: string;
  readonly busyTimeoutMs: number;
  /** Keep decisions that failed to write and retry them (`gateway.audit.fail_open`). */
  readonly failOpen: boolean;
  /** Int32 slot the writer bumps after a synchronous flush (Atomics.notify). */
  readonly flushSignal: SharedArrayBuffer;
  /** A checkpointer thread copies the WAL into the database; the writer's connection does not. */
  readonly checkpointer: boolean;
  /** Past this size the writer checkpoints the WAL itself, so that it starts over (worker.ts). */
  readonly walLimitBytes: number;
  /** The service runs on the request thread (writer.ts `inline`): at `strict`, the WAL is fdatasynced off it. */
  readonly inline: boolean;
  /** `gateway.audit.durability`: how a commit syncs (sqlite/durability.ts). */
  readonly durability: AuditDurability;
  /** Seals each commit's `factsPlain` one batch per tenant, each row's `facts` referring to its line (gateway/audit/facts.ts); none: rows have no facts. */
  readonly factsKey: FactsKey | undefined;
}

export type ToWriter =
  | { t: 'batch'; id: number; ops: PackedOp[]; urgent: boolean }
  | { t: 'flush'; token: number }
  | { t: 'prune'; id: number; cutoffs: RetentionCutoffs }
  /** The checkpointer stopped: checkpoint on the writer's connection again. */
  | { t: 'autocheckpoint' }
  | { t: 'close' };

export type FromWriter =
  /** `lockHeld`: this writer holds the writer lock (recovered what a killed one left; a decision journal may be kept). */
  | { t: 'ready'; head: AuditHead; lockHeld: boolean }
  | { t: 'fatal'; code: string | undefined; message: string }
  /** The batches' ops were committed (ok, in `seconds`) or not; `held`: ops kept for a retry. */
  | { t: 'done'; batches: number[]; ok: boolean; seconds?: number; code?: string | undefined; message?: string; head: AuditHead; held: number }
  | { t: 'pruned'; id: number; result: PruneResult | undefined; code?: string | undefined; message?: string }
  | { t: 'log'; level: 'error' | 'warn' | 'info'; msg: string; fields: Record<string, unknown> }
  | { t: 'closed'; head: AuditHead };
