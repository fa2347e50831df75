import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { ValetError } from '../../errors.js';
import type { AuditHead, AuditWriter, PruneResult } from '../port.js';
import { DECISION, FINAL, pack, type FromWriter, type PackedOp, type ToWriter, type WriterInit } from '../protocol.js';
import { AUDIT_FILE } from './store.js';
import { CHECKPOINT_INTERVAL_MS, CRASH_SYNC_MS } from './durability.js';
import { startWriterService } from './service.js';
import { DecisionJournal } from './journal.js';
import type { AuditDurability } from '../../config/types.js';
import type { AuditRecord } from '../../types.js';
import type { FactsKey } from '../facts.js';

const RESOLVED = Promise.resolve();

export interface AuditWriterOptions {
  dataDir: string;
  logger: Logger;
  /** `gateway.audit.fail_open`: forward even when the decision record could not be written. */
  failOpen?: boolean;
  /** How long a commit waits for another process's write lock before failing (ms). */
  busyTimeoutMs?: number;
  /** `worker` (default): a writer thread; `inline`: the same writer service on the calling thread (see {@link writerMode}). */
  mode?: 'worker' | 'inline' | undefined;
  /** `gateway.audit.durability` (default `strict`). */
  durability?: AuditDurability | undefined;
  /** The size past which the writer thread checkpoints the WAL itself (see worker.ts); tests set it small. */
  walLimitBytes?: number;
  /** Called after each committed transaction with the seconds it took (inserts and fsync). */
  onCommit?: ((seconds: number) => void) | undefined;
  /** Seals each commit's request facts, one batch per tenant (on the writer thread when it has one, off the request thread); none: rows have no facts. */
  factsKey?: FactsKey | undefined;
}

/** The default {@link AuditWriterOptions.walLimitBytes}. */
const WAL_LIMIT_BYTES = 64 * 1024 * 1024;

const COMPLETION_DELAY_MS = 10;
const BUSY_COMPLETION_DELAY_MS = 50;
const BUSY_ROWS_PER_S = 3_000;
const BUSY_UTILIZATION = 0.8;

/**
 * How long completed requests' rows may gather before they go to the writer (ms), when nothing
 * else sends them sooner: {@link COMPLETION_DELAY_MS} at light load, {@link BUSY_COMPLETION_DELAY_MS}
 * once rows arrive at {@link BUSY_ROWS_PER_S} or more, or once the request thread's event loop was
 * busy {@link BUSY_UTILIZATION} of the time or more while the last batch gathered (a CPU too slow
 * to reach that rate is saturated below it). Each commit has a cost of its own beside its rows'
 * (the transaction, the WAL frames of every index's last page, the answer): under full load on one
 * CPU, 50 ms batches gave 1–8 % more throughput than 10 ms ones (docs/performance.md), while at
 * light load a commit of a few rows is quick and short batches keep rows visible sooner. Nobody
 * waits for these rows: the decisions they complete are in the journal already, or were committed
 * before their calls went on.
 */
export function completionDelayMs(rowsPerSecond: number, utilization = 0): number {
  return rowsPerSecond >= BUSY_ROWS_PER_S || utilization >= BUSY_UTILIZATION ? BUSY_COMPLETION_DELAY_MS : COMPLETION_DELAY_MS;
}

/** Batches posted to the writer thread and not yet answered, beyond which records gather here (see `send`). */
const MAX_POSTED = 2;

/**
 * Rows gathered or posted and not yet committed, beyond which a new decision waits for the writer
 * thread to catch up before its call goes on. Journaled decisions do not wait for a commit, so
 * without this bound a request thread that outruns the writer would pile rows up in memory and
 * grow each commit (and the WAL) without limit; with it, the calls absorb the delay instead.
 */
export const MAX_UNWRITTEN = 16_384;

const unavailable = (code: string | undefined): ValetError =>
  new ValetError('VALET_ERR_AUDIT_UNAVAILABLE', `The audit log could not be written${code ? ` (${code})` : ''}; nothing was forwarded.`);

/**
 * Where `gateway.audit.writer` puts the writer. `auto`: inline when the process can use one CPU
 * only (gateway/cpus.ts `usableCpus`) and commits are not fsynced one by one (`crash`, `async`); on
 * a thread otherwise. A thread on one CPU cannot run beside the requests; it adds a structured
 * clone of every batch, a wake-up of the thread for each and the switches between the two. At
 * `strict` inline, the fsync that makes each commit durable runs in libuv's thread pool, and in
 * the benchmark it delayed the decision journal's own fdatasyncs, which calls wait for: 5%–8% more
 * throughput, but a worse p99 at 1,000 req/s (docs/performance.md), so `strict` keeps the thread.
 */
export function writerMode(setting: 'auto' | 'thread' | 'inline', durability: AuditDurability, cpus: number): 'worker' | 'inline' {
  if (setting === 'inline') return 'inline';
  if (setting === 'thread') return 'worker';
  return cpus < 2 && durability !== 'strict' ? 'inline' : 'worker';
}

/** Starts the writer and waits until it has opened the database. */
export async function startAuditWriter(o: AuditWriterOptions): Promise<AuditWriter> {
  return queuedWriter(o);
}

/**
 * How long a decision is held on the request thread for its outcome, so that the request's row is
 * written once, whole (ms). A call still running after this gets its decision row written (it
 * shows as in flight), then completed when it ends.
 */
const HOLD_MS = 1_000;

interface Batch {
  id: number;
  ops: PackedOp[];
  urgent: boolean;
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
  /** Journal segments of the decisions this batch records: settled once it is committed. */
  settles: number[];
  /** When its first row arrived (performance.now()). */
  since: number;
  /** The event loop's utilisation counters then. */
  loop: EventLoopUtilization;
}

/** A decision held on the request thread (see {@link HOLD_MS}); `segment`: its journal segment, or -1. */
interface Held {
  readonly op: PackedOp;
  readonly at: number;
  readonly segment: number;
}

/** What the request thread needs of the writer service: the writer thread, or {@link inlineWriterService}. */
interface WriterPort {
  postMessage(m: ToWriter): void;
  on(event: 'message', listener: (m: FromWriter) => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
  on(event: 'exit', listener: () => void): void;
  terminate(): Promise<unknown>;
}

function queuedWriter(o: AuditWriterOptions): Promise<AuditWriter> {
  const failOpen = o.failOpen ?? false;
  const flushSignal = new SharedArrayBuffer(4);
  const signal = new Int32Array(flushSignal);
  const durability = o.durability ?? 'strict';
  const init: WriterInit = { dataDir: o.dataDir, busyTimeoutMs: o.busyTimeoutMs ?? 1000, failOpen, flushSignal, checkpointer: true, walLimitBytes: o.walLimitBytes ?? WAL_LIMIT_BYTES, durability, factsKey: o.factsKey, inline: o.mode === 'inline' };
  const worker: WriterPort = o.mode === 'inline' ? inlineWriterService(init) : spawnWriterThread(init);
  let checkpointer: Checkpointer | undefined;
  let head: AuditHead = { seq: 0, hash: '' };
  let commits = 0;
  let current: Batch | undefined;
  const inFlight = new Map<number, Batch>();
  let inFlightOps = 0;
  /** Ops the writer thread keeps for a retry while the database cannot be written. */
  let heldByWriter = 0;
  let nextBatch = 1;
  let journalSync: NodeJS.Timeout | undefined;
  /** The code of the last commit's failure, until a commit succeeds again. */
  let unwritable: string | undefined;
  let dead: Error | undefined;
  /** Rows gathered here, posted, or kept by the writer for a retry: handed over and not yet committed. */
  const unwritten = (): number => (current?.ops.length ?? 0) + inFlightOps + heldByWriter;
  /** Decisions waiting for rows to be written (see {@link MAX_UNWRITTEN}). */
  let waitingForRoom: (() => void)[] = [];
  const full = (): boolean => unwritable === undefined && unwritten() >= MAX_UNWRITTEN;
  /** Lets the waiting decisions try again: each checks the bound and the writer's state afresh. */
  const openRoom = (): void => {
    if (waitingForRoom.length === 0 || (full() && dead === undefined)) return;
    const waiting = waitingForRoom;
    waitingForRoom = [];
    for (const go of waiting) go();
  };
  let flushToken = 0;
  let closed: (() => void) | undefined;
  const prunes = new Map<number, { resolve: (r: PruneResult) => void; reject: (e: Error) => void }>();

  const post = (m: ToWriter): void => worker.postMessage(m);
  let immediate: NodeJS.Immediate | undefined;
  let timer: NodeJS.Timeout | undefined;
  /** How long the next batch of completed rows may gather: set by the rate the last one gathered at (see {@link completionDelayMs}). */
  let delayMs = completionDelayMs(0);
  /**
   * Posts the batch being gathered. While {@link MAX_POSTED} batches are unanswered (one
   * committing, one queued behind it), what arrives keeps gathering here and goes as one batch
   * when the first is answered: the writer never waits for this thread, and under load there is
   * one message per commit instead of one per event-loop turn. `force`: now regardless (flush, close).
   */
  const send = (force = false): void => {
    if (immediate !== undefined) clearImmediate(immediate);
    if (timer !== undefined) clearTimeout(timer);
    immediate = undefined;
    timer = undefined;
    const b = current;
    if (b === undefined) return;
    if (dead === undefined && !force && inFlight.size >= MAX_POSTED) return;
    current = undefined;
    if (dead !== undefined) {
      fail(b, undefined);
      return;
    }
    inFlight.set(b.id, b);
    inFlightOps += b.ops.length;
    delayMs = completionDelayMs((b.ops.length * 1000) / Math.max(1, performance.now() - b.since), performance.eventLoopUtilization(b.loop).utilization);
    post({ t: 'batch', id: b.id, ops: b.ops, urgent: b.urgent });
  };
  /**
   * When the batch being gathered goes: with a decision, at the end of this event-loop turn (its
   * request waits for it); with only completions and refusals, which nobody waits for, along with
   * the next decision or after {@link completionDelayMs}. Under load that is one message to the
   * writer per turn instead of two, and each message costs a wake-up of the writer thread (a syscall).
   */
  const schedule = (): void => {
    if (current === undefined) return;
    if (current.urgent) immediate ??= setImmediate(send);
    else if (immediate === undefined) timer ??= setTimeout(send, delayMs);
  };
  const batch = (op: PackedOp, urgent = op[0] === DECISION): Batch => {
    current ??= { id: nextBatch++, ops: [], urgent: false, waiters: [], settles: [], since: performance.now(), loop: performance.eventLoopUtilization() };
    current.ops.push(op);
    if (urgent) current.urgent = true;
    schedule();
    return current;
  };

  /**
   * When this writer holds the writer lock, a decision is not sent to the writer thread: it is held
   * here until its outcome arrives and the row goes once, whole (one message, one row write per
   * request). Before the call is forwarded, `strict` and `crash` append it to the decision journal
   * (journal.ts), which is what makes it survive a killed Valet; `strict` also waits until the
   * journal is fdatasynced. Without the lock (another gateway writes this data directory and would
   * not recover this one's journal), decisions are committed as rows before forwarding.
   */
  let holding = false;
  let journal: DecisionJournal | undefined;
  const held = new Map<string, Held>();
  let sweeper: NodeJS.Timeout | undefined;
  /** Decisions held longer than {@link HOLD_MS} (or all: flush, close) go to the writer as decision rows. */
  const release = (olderThan: number): void => {
    for (const [id, h] of held) {
      if (h.at > olderThan) break; // held in arrival order
      held.delete(id);
      const b = batch(h.op, false);
      if (h.segment >= 0) b.settles.push(h.segment);
    }
    if (held.size === 0 && sweeper !== undefined) {
      clearInterval(sweeper);
      sweeper = undefined;
    }
  };
  const hold = (rec: AuditRecord): Promise<void> => {
    const op = pack(DECISION, rec);
    let segment = -1;
    if (journal !== undefined) {
      try {
        segment = journal.append(op);
      } catch (err) {
        o.logger.error({ message: (err as Error).message, failOpen }, 'audit journal not writable');
        if (!failOpen) return Promise.reject(unavailable(undefined));
      }
    }
    held.set(rec.requestId, { op, at: Date.now(), segment });
    sweeper ??= setInterval(() => release(Date.now() - HOLD_MS), HOLD_MS / 4).unref();
    if (journal === undefined) return RESOLVED;
    return (durability === 'strict' ? journal.durable() : journal.written()).catch((err: NodeJS.ErrnoException) => {
      o.logger.error({ code: err.code, message: err.message, failOpen }, 'audit journal could not be written');
      if (!failOpen) throw unavailable(err.code);
    });
  };
  const fail = (b: Batch, code: string | undefined): void => {
    for (const w of b.waiters) {
      if (failOpen) w.resolve();
      else w.reject(unavailable(code));
    }
  };

  return new Promise<AuditWriter>((resolveStart, rejectStart) => {
    let started = false;
    worker.on('message', (m: FromWriter) => {
      switch (m.t) {
        case 'ready':
          started = true;
          head = m.head;
          // Only the lock holder recovers a journal at start-up, so only it may keep one.
          holding = m.lockHeld;
          if (holding && durability !== 'async') {
            journal = new DecisionJournal(o.dataDir, (err) => o.logger.error({ message: (err as Error).message }, 'audit journal could not be synced'));
            if (durability === 'crash') journalSync = setInterval(() => journal?.sync(), CRASH_SYNC_MS).unref();
          }
          checkpointer = startCheckpointer(o.dataDir, (err) => {
            o.logger.error({ message: err.message }, 'audit checkpointer stopped; the writer checkpoints the WAL itself');
            if (dead === undefined) post({ t: 'autocheckpoint' });
          });
          resolveStart(writer);
          break;
        case 'fatal':
          if (!started) rejectStart(Object.assign(new Error(`audit database: ${m.message}`), { code: m.code }));
          break;
        case 'done':
          head = m.head;
          heldByWriter = m.held;
          unwritable = m.ok ? undefined : (m.code ?? 'WRITE_FAILED');
          if (m.ok) {
            commits++;
            if (m.seconds !== undefined) o.onCommit?.(m.seconds);
          }
          if (!m.ok) {
            o.logger.error(
              { code: m.code, message: m.message, held: m.held, failOpen },
              failOpen
                ? 'AUDIT LOG NOT WRITABLE: fail_open is set, so requests are forwarded without a durable record'
                : 'audit log not writable: requests that would be forwarded are refused (503)',
            );
          }
          for (const id of m.batches) {
            const b = inFlight.get(id);
            if (b === undefined) continue;
            inFlight.delete(id);
            inFlightOps -= b.ops.length;
            if (m.ok) {
              for (const w of b.waiters) w.resolve();
              for (const seg of b.settles) journal?.settle(seg);
            } else fail(b, m.code);
          }
          // What gathered while two batches were unanswered (see send).
          schedule();
          openRoom();
          break;
        case 'pruned': {
          const p = prunes.get(m.id);
          prunes.delete(m.id);
          if (m.code !== undefined || m.result === undefined) p?.reject(Object.assign(new Error(`audit prune failed: ${m.message ?? ''}`), { code: m.code }));
          else p?.resolve(m.result);
          break;
        }
        case 'log':
          o.logger[m.level](m.fields, m.msg);
          break;
        case 'closed':
          head = m.head;
          closed?.();
          break;
      }
    });
    worker.on('error', (err) => {
      dead = err;
      if (!started) {
        rejectStart(err);
        return;
      }
      o.logger.error({ err }, 'audit writer thread failed: requests that would be forwarded are refused (503)');
      for (const b of inFlight.values()) fail(b, 'WRITER_FAILED');
      inFlight.clear();
      inFlightOps = 0;
      for (const p of prunes.values()) p.reject(err);
      prunes.clear();
      openRoom();
    });
    worker.on('exit', () => {
      dead ??= new Error('the audit writer thread exited');
      openRoom();
      closed?.();
    });

    const writer: AuditWriter = {
      commit(rec) {
        if (dead !== undefined) return failOpen ? Promise.resolve() : Promise.reject(unavailable('WRITER_FAILED'));
        // The decision would be safe in the journal, but rows would pile up unwritten: once the
        // database is known not to take them, each decision is committed as a row first again (the
        // writer tries at once, backing off or not), so nothing is forwarded until it takes rows.
        if (holding && (unwritable === undefined || durability === 'async' || failOpen)) {
          if (!full()) return hold(rec);
          return new Promise<void>((go) => waitingForRoom.push(go)).then(() => writer.commit(rec));
        }
        const b = batch(pack(DECISION, rec));
        // async: the call goes on at once; a row that cannot be written is logged as lost.
        if (durability === 'async') return Promise.resolve();
        return new Promise<void>((resolve, reject) => b.waiters.push({ resolve, reject }));
      },
      record(rec) {
        if (dead !== undefined) {
          o.logger.error({ reqId: rec.requestId }, 'audit row lost: the writer thread is not running');
          return;
        }
        const b = batch(pack(FINAL, rec));
        // The decision it completes, if held: its row is this one, and its journal line is settled with it.
        const h = held.size === 0 ? undefined : held.get(rec.requestId);
        if (h === undefined) return;
        held.delete(rec.requestId);
        if (h.segment >= 0) b.settles.push(h.segment);
      },
      async flush() {
        release(Number.POSITIVE_INFINITY);
        send(true);
        if (dead !== undefined) return;
        const token = ++flushToken;
        post({ t: 'flush', token });
        // The writer may first wait for another process's lock (the busy timeout), then commit.
        const deadline = Date.now() + 30_000;
        for (;;) {
          const seen = Atomics.load(signal, 0);
          if (seen === token || Date.now() > deadline) break;
          Atomics.wait(signal, 0, seen, 1_000);
        }
      },
      get pending() {
        return unwritten() + held.size;
      },
      get head() {
        return head;
      },
      get commits() {
        return commits;
      },
      get busy() {
        // A batch is posted and unanswered while the last commit worked: the writer holds, or is about to take, the lock.
        return inFlight.size > 0 && unwritable === undefined;
      },
      prune(cutoffs) {
        if (dead !== undefined) return Promise.reject(dead);
        const id = nextBatch++;
        return new Promise<PruneResult>((resolve, reject) => {
          prunes.set(id, { resolve, reject });
          post({ t: 'prune', id, cutoffs });
        });
      },
      async close() {
        release(Number.POSITIVE_INFINITY);
        send(true);
        clearInterval(journalSync);
        if (dead !== undefined) {
          journal?.close();
          return;
        }
        const done = new Promise<void>((r) => (closed = r));
        post({ t: 'close' });
        await done;
        // Segments whose decisions have no committed row yet stay on disk for the next start.
        journal?.close();
        await worker.terminate();
        await checkpointer?.stop();
      },
    };
  });
}

/**
 * The checkpointer: a second small thread with its own connection that copies committed WAL frames
 * back into the database file every {@link CHECKPOINT_INTERVAL_MS} (`PRAGMA wal_checkpoint(PASSIVE)`:
 * never blocks the writer, gives up when busy). The writer's own connection has automatic checkpoints off, so its
 * commits only ever append to the WAL and fsync it; the checkpoint's copying and its fsync of the
 * database file happen here, in parallel. Plain JavaScript, so it needs no TypeScript loader.
 */
function startCheckpointer(dataDir: string, onFailure: (err: Error) => void): Checkpointer {
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    try { require('node:fs').writeFileSync('/proc/thread-self/comm', 'valet-ckpt'); } catch {}
    const Database = require(workerData.driver);
    const db = new Database(workerData.file, { fileMustExist: true, timeout: 0 });
    const timer = setInterval(() => {
      try { db.pragma('wal_checkpoint(PASSIVE)'); } catch (err) { if (err.code !== 'SQLITE_BUSY' && err.code !== 'SQLITE_LOCKED') throw err; }
    }, workerData.intervalMs);
    parentPort.on('message', () => { clearInterval(timer); db.close(); parentPort.close(); });
  `;
  const driver = createRequire(import.meta.url).resolve('better-sqlite3');
  const t = new Worker(code, { eval: true, workerData: { driver, file: join(dataDir, AUDIT_FILE), intervalMs: CHECKPOINT_INTERVAL_MS } });
  let stopping = false;
  const exited = new Promise<void>((r) => t.once('exit', () => r()));
  t.on('error', (err) => onFailure(err));
  t.on('exit', (code) => {
    if (!stopping && code !== 0) onFailure(new Error(`exited with code ${code}`));
  });
  t.unref();
  return {
    async stop() {
      stopping = true;
      // Referenced again while it finishes: otherwise a process with nothing else to do would exit
      // here, before the rest of the shutdown ran.
      t.ref();
      t.postMessage('stop');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5_000)))]);
      clearTimeout(timer);
      await t.terminate();
    },
  };
}

interface Checkpointer {
  stop(): Promise<void>;
}

/**
 * The writer thread runs gateway/audit/sqlite/worker.js next to this file. Running from source (tsx,
 * vitest) there is only worker.ts: the thread first registers tsx's loader, then imports it.
 */
function spawnWriterThread(init: WriterInit): Worker {
  const js = new URL('./worker.js', import.meta.url);
  if (import.meta.url.endsWith('.js') && existsSync(fileURLToPath(js))) return new Worker(js, { workerData: init });
  const ts = new URL('./worker.ts', import.meta.url).href;
  // require.resolve finds the CommonJS entry; the thread imports the ES module beside it.
  const api = createRequire(import.meta.url).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs');
  const tsx = pathToFileURL(api).href;
  const boot = `import(${JSON.stringify(tsx)}).then(async (m) => { (m.register ?? m.default.register)(); await import(${JSON.stringify(ts)}); });`;
  return new Worker(boot, { eval: true, workerData: init });
}

/**
 * The writer service on the calling thread, behind the same message protocol as the writer thread:
 * messages to it are handled at once (a batch is committed from `setImmediate`, a flush before
 * `postMessage` returns), its replies arrive as microtasks. A failure in it is reported as the
 * thread's `error` would be, and the writer fails closed.
 */
function inlineWriterService(init: WriterInit): WriterPort {
  const events = new EventEmitter();
  const flushed = new Int32Array(init.flushSignal);
  let handle: ((m: ToWriter) => void) | undefined;
  let exited = false;
  const exit = (): void => {
    handle = undefined;
    if (exited) return;
    exited = true;
    queueMicrotask(() => events.emit('exit', 0));
  };
  const fail = (err: unknown): void => {
    if (exited) return;
    events.emit('error', err);
    exit();
  };
  // Started once the caller's listeners are on: the service posts `ready` (or `fatal`) at once.
  queueMicrotask(() => {
    try {
      handle = startWriterService(init, (m: FromWriter) => queueMicrotask(() => events.emit('message', m)), exit);
    } catch (err) {
      fail(err);
    }
  });
  return {
    postMessage(m) {
      if (handle === undefined) {
        // Gone: a flush waiting on the signal must not wait out its deadline on the event loop.
        if (m.t === 'flush') Atomics.store(flushed, 0, m.token);
        return;
      }
      try {
        handle(m);
      } catch (err) {
        fail(err);
      }
    },
    on(event, listener) {
      events.on(event, listener);
    },
    async terminate() {
      exit();
    },
  };
}
