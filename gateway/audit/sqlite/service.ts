/**
 * The audit writer's service: the one write connection to the audit database and what it does with
 * the messages of gateway/audit/protocol.ts. It runs in the writer thread (worker.ts), where
 * inserts, hashing and the fsync of every commit never stall the gateway's event loop, or inline,
 * on the gateway's own thread (writer.ts), where a process that has one CPU saves the thread's
 * hand-offs. Either way the request thread posts the records gathered in one tick as one batch,
 * and everything that has arrived since the last commit is committed as one transaction (group
 * commit: while one fsync runs, the next batches queue up behind it and share the next one).
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { AuditCore } from './core.js';
import { AUDIT_FILE } from './store.js';
import { applyDurability, CHECKPOINT_INTERVAL_MS } from './durability.js';
import type { AuditHead } from '../port.js';
import { SEAL_FAILED } from '../facts.js';
import { DECISION, type FromWriter, type PackedOp, type ToWriter, type WriterInit } from '../protocol.js';

/** Ops kept for retry while the database cannot be written; beyond this the oldest are dropped (and logged). */
const MAX_HELD = 200_000;
const MAX_BACKOFF_MS = 5_000;
/**
 * Rows a retention prune deletes per transaction: on a thread, 500; inline, where each chunk holds
 * the event loop (deleting a row rewrites its index entries and its events: ~60 µs), 50.
 */
const PRUNE_CHUNK = { thread: 500, inline: 50 } as const;
/** See `deferCheckpoint`: a little over the checkpointer thread's interval. */
const CHECKPOINT_WAIT_MS = CHECKPOINT_INTERVAL_MS + 50;

const errCode = (err: unknown): string | undefined => (err as { code?: string }).code;
const errMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/**
 * Opens the database and returns what handles each {@link ToWriter} message; replies go to `post`
 * (`ready` once open, or `fatal` and undefined when it cannot be opened). `done` is called once it
 * has closed.
 */
export function startWriterService(init: WriterInit, post: (m: FromWriter) => void, done: () => void): ((m: ToWriter) => void) | undefined {
  const signal = new Int32Array(init.flushSignal);
  let core: AuditCore;
  try {
    core = new AuditCore(init.dataDir, {
      busyTimeoutMs: init.busyTimeoutMs,
      autoCheckpoint: !init.checkpointer,
      facts: init.factsKey === undefined ? undefined : { key: init.factsKey, failed: (reqId, err) => post({ t: 'log', level: 'error', msg: SEAL_FAILED, fields: { reqId, message: errMessage(err) } }) },
    });
  } catch (err) {
    post({ t: 'fatal', code: errCode(err), message: errMessage(err) });
    done();
    return undefined;
  }
  /**
   * Keeps the WAL bounded. SQLite starts the WAL over from its beginning only when a write begins
   * after a checkpoint has copied every frame in it; under sustained load the checkpointer thread
   * never quite catches up with a writer that commits continuously, so the WAL would grow without
   * limit (hundreds of MB a minute), and commits slow down as it grows. Once the file passes
   * `walLimitBytes`, the writer runs one checkpoint itself between two commits: it copies only what
   * the checkpointer has not yet, the next commit starts the WAL over, and `journal_size_limit`
   * truncates the file back to the limit.
   */
  core.db.pragma(`journal_size_limit = ${init.walLimitBytes}`);
  const walFile = join(init.dataDir, `${AUDIT_FILE}-wal`);
  const sync = applyDurability(core.db, walFile, init.durability, (err) => post({ t: 'log', level: 'error', msg: 'audit WAL could not be fsynced', fields: { message: errMessage(err) } }), { offThread: init.inline });

  /**
   * Inline, with a checkpointer thread: once the WAL passes its limit, commits wait up to
   * {@link CHECKPOINT_WAIT_MS} (unless a decision waits for one) while the checkpointer copies the
   * WAL, so that the checkpoint run here before the next commit finds little left to copy instead
   * of stopping the event loop for all of it (3–40 ms). Journaled decisions do not wait for rows,
   * and the rows that gather meanwhile stay within the writer's bound.
   */
  const deferCheckpoint = init.inline && init.checkpointer;
  let walFullAt: number | undefined;
  const walOverLimit = (): boolean => {
    try {
      return statSync(walFile).size > init.walLimitBytes;
    } catch {
      return false; // no WAL yet
    }
  };
  const checkpoint = (): void => {
    try {
      core.db.pragma('wal_checkpoint(PASSIVE)');
    } catch {
      // busy: next commit
    }
  };
  const boundWal = (): void => {
    if (walFullAt !== undefined || !walOverLimit()) return;
    if (deferCheckpoint) walFullAt = performance.now();
    else checkpoint();
  };
  /** Whether this commit waits for the checkpointer (then it is scheduled again); runs the checkpoint once it may go. */
  const waitForCheckpointer = (urgent: boolean): boolean => {
    if (walFullAt === undefined) return false;
    const waited = performance.now() - walFullAt;
    if (!urgent && !closing && waited < CHECKPOINT_WAIT_MS) {
      scheduled = setTimeout(commit, CHECKPOINT_WAIT_MS - waited);
      return true;
    }
    walFullAt = undefined;
    checkpoint();
    return false;
  };

  const headOf = (): AuditHead => ({ seq: core.head.seq, hash: core.head.hash.toString('hex') });

  let queue: PackedOp[] = [];
  let unanswered: number[] = [];
  let scheduled: NodeJS.Immediate | NodeJS.Timeout | undefined;
  let backoff = 0;
  let closing = false;
  /** A batch gathered since the last commit holds a decision that waits for its row. */
  let urgent = false;
  /**
   * `strict` inline ({@link CommitSync.afterCommit}): batches committed and not yet reported, the
   * WAL not yet fdatasynced past them; those whose fdatasync is in flight; the seconds their
   * commits took.
   */
  let unsynced: number[] = [];
  let syncingBatches: number[] = [];
  let unsyncedSeconds = 0;

  const reportSynced = (): void => {
    const afterCommit = sync.afterCommit;
    if (afterCommit === undefined || syncingBatches.length > 0 || unsynced.length === 0 || closing) return;
    const batches = (syncingBatches = unsynced);
    const committing = unsyncedSeconds;
    unsynced = [];
    unsyncedSeconds = 0;
    const started = performance.now();
    afterCommit((err) => {
      if (closing) return; // reported at close, after its own fdatasync
      syncingBatches = [];
      if (err === null) post({ t: 'done', batches, ok: true, seconds: committing + (performance.now() - started) / 1000, head: headOf(), held: 0 });
      else post({ t: 'done', batches, ok: false, code: errCode(err), message: `the audit WAL could not be fsynced: ${errMessage(err)}`, head: headOf(), held: queue.length });
      reportSynced();
    });
  };

  const unschedule = (): void => {
    if (scheduled === undefined) return;
    clearTimeout(scheduled as NodeJS.Timeout);
    clearImmediate(scheduled as NodeJS.Immediate);
    scheduled = undefined;
  };
  const schedule = (delayMs: number): void => {
    if (scheduled !== undefined) return;
    scheduled = delayMs === 0 ? setImmediate(commit) : setTimeout(commit, delayMs);
  };

  /** `now`: regardless of the checkpointer (flush, close, a prune's turn). */
  function commit(now = false): void {
    unschedule();
    if (queue.length === 0 && unanswered.length === 0) return;
    if (waitForCheckpointer(urgent || now)) return;
    urgent = false;
    const ops = queue;
    const batches = unanswered;
    queue = [];
    unanswered = [];
    try {
      core.applyPacked(ops);
      backoff = 0;
      if (sync.afterCommit === undefined) post({ t: 'done', batches, ok: true, seconds: core.lastCommitSeconds, head: headOf(), held: 0 });
      else {
        // Reported once the WAL is on disk past this commit: until then its decisions' journal stays.
        for (const b of batches) unsynced.push(b);
        unsyncedSeconds += core.lastCommitSeconds;
        reportSynced();
      }
      boundWal();
    } catch (err) {
      // Nothing of this transaction was written. Decisions nobody waits for (fail_open; durability
      // crash and async, whose requests do not wait) are kept for a retry; the others were refused.
      const kept = init.failOpen || init.durability !== 'strict' ? ops : ops.filter((op) => op[0] !== DECISION);
      queue = kept.concat(queue);
      if (queue.length > MAX_HELD) {
        const dropped = queue.length - MAX_HELD;
        queue = queue.slice(dropped);
        post({ t: 'log', level: 'error', msg: 'audit rows dropped: the database has not been writable for too long', fields: { dropped } });
      }
      post({ t: 'done', batches, ok: false, code: errCode(err), message: errMessage(err), head: headOf(), held: queue.length });
      backoff = Math.min(MAX_BACKOFF_MS, Math.max(50, backoff * 2));
      if (!closing) schedule(backoff);
    }
  }

  const prune = async (id: number, cutoffs: Parameters<AuditCore['prune']>[0]): Promise<void> => {
    const total = { rows: 0, compacted: 0, done: false };
    try {
      while (!total.done && !closing) {
        // Small chunks, with the request path's batches committed in between: a prune never holds
        // the write lock for long.
        if (queue.length > 0) commit(true);
        const r = core.prune(cutoffs, { maxRows: init.inline ? PRUNE_CHUNK.inline : PRUNE_CHUNK.thread });
        total.rows += r.rows;
        total.compacted += r.compacted;
        total.done = r.done;
        await new Promise((r2) => setImmediate(r2));
      }
      post({ t: 'pruned', id, result: total });
    } catch (err) {
      post({ t: 'pruned', id, result: total, code: errCode(err), message: errMessage(err) });
    }
  };

  // Keep the query planner's statistics current on a long-running gateway (cheap: SQLite limits
  // the rows `optimize` analyses).
  const optimizer = setInterval(() => {
    try {
      core.db.pragma('optimize');
    } catch {
      // busy: next time
    }
  }, 3_600_000).unref();

  post({ t: 'ready', head: headOf(), lockHeld: core.holdsLock });

  return (m) => {
    switch (m.t) {
      case 'batch':
        for (const op of m.ops) queue.push(op);
        unanswered.push(m.id);
        if (m.urgent) urgent = true;
        // A decision holds a request until it is durable: try now even while backing off.
        if (m.urgent || backoff === 0) {
          if (backoff !== 0 || m.urgent) unschedule();
          schedule(0);
        } else schedule(backoff);
        break;
      case 'flush':
        commit(true);
        Atomics.store(signal, 0, m.token);
        Atomics.notify(signal, 0);
        break;
      case 'prune':
        void prune(m.id, m.cutoffs);
        break;
      case 'autocheckpoint':
        core.db.pragma('wal_autocheckpoint = 1000');
        break;
      case 'close':
        commit(true);
        closing = true;
        unschedule();
        clearInterval(optimizer);
        if (queue.length > 0) post({ t: 'log', level: 'error', msg: 'audit rows not written at shutdown: the database is not writable', fields: { rows: queue.length } });
        sync.stop();
        // What was committed is on disk now (stop's own fdatasync).
        if (syncingBatches.length > 0 || unsynced.length > 0) post({ t: 'done', batches: [...syncingBatches, ...unsynced], ok: true, head: headOf(), held: queue.length });
        core.close();
        post({ t: 'closed', head: headOf() });
        done();
        break;
    }
  };
}
