import type { AuditOp, PruneResult, RetentionCutoffs } from './core.js';

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
}

export type ToWriter =
  | { t: 'batch'; id: number; ops: AuditOp[]; urgent: boolean }
  | { t: 'flush'; token: number }
  | { t: 'prune'; id: number; cutoffs: RetentionCutoffs }
  /** The checkpointer stopped: checkpoint on the writer's connection again. */
  | { t: 'autocheckpoint' }
  | { t: 'close' };

export interface Head {
  seq: number;
  hash: string;
}

export type FromWriter =
  | { t: 'ready'; head: Head }
  | { t: 'fatal'; code: string | undefined; message: string }
  /** The batches' ops were committed (ok) or not; `held`: ops kept for a retry. */
  | { t: 'done'; batches: number[]; ok: boolean; code?: string | undefined; message?: string; head: Head; held: number }
  | { t: 'pruned'; id: number; result: PruneResult | undefined; code?: string | undefined; message?: string }
  | { t: 'log'; level: 'error' | 'warn' | 'info'; msg: string; fields: Record<string, unknown> }
  | { t: 'closed'; head: Head };
