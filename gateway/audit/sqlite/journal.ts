import { closeSync, fdatasync, fdatasyncSync, openSync, readdirSync, readFileSync, unlink, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { privateDir, PRIVATE_FILE_MODE } from '../../private-files.js';
import type { PackedOp } from '../protocol.js';

/** Under the data directory: the decision journal's segments (`<n>.ndjson`). */
export const JOURNAL_DIR = 'audit-journal';

/** A segment is closed and a new one started past this size. */
const SEGMENT_BYTES = 8 * 1024 * 1024;

interface Segment {
  readonly id: number;
  readonly path: string;
  fd: number | undefined;
  bytes: number;
  /** Decisions appended here whose rows are not yet committed to the audit database. */
  open: number;
  /** fdatasyncs of this segment in flight: its file is closed only after the last (see {@link DecisionJournal.drop}). */
  syncing: number;
  /** Done with: close and delete it once no sync is in flight. */
  dropped: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * The decision journal: how every forwarded call's decision is on disk before the call is
 * forwarded without its audit row being written twice (a decision row before the call, then an
 * update with the outcome).
 *
 * Before a call is forwarded, its decision (the audit record as far as it is known) is appended to
 * a segment file with one `write(2)` on the request thread: in the OS's cache from then on, so a
 * killed Valet cannot lose it. `strict` then waits for an fdatasync of it ({@link DecisionJournal.durable},
 * shared by the decisions of one event-loop turn); `crash` does not, and the segment is
 * fdatasynced every second (`CRASH_SYNC_MS`), so a power loss loses at most that much. The audit
 * row itself is written once, whole, when the call is over.
 * A segment is deleted once every decision in it has its row committed. At start-up the writer
 * that holds the writer lock reads what a killed Valet left ({@link recoverJournal}): a decision
 * without a row becomes a row completed as `VALET_ERR_OUTCOME_UNKNOWN`, as an unfinished decision
 * row does.
 *
 * The lines hold what the decision row would hold, never the request facts (encoded only once the
 * call is over), in files 0600 in a 0700 directory. Not thread-safe: the request thread owns it.
 */
export class DecisionJournal {
  private readonly dir: string;
  private current: Segment;
  private readonly segments = new Map<number, Segment>();
  private next: number;
  private readonly onError: (err: unknown) => void;

  constructor(dataDir: string, onError: (err: unknown) => void) {
    this.dir = join(dataDir, JOURNAL_DIR);
    this.onError = onError;
    privateDir(this.dir);
    this.next = 1 + Math.max(0, ...segmentIds(this.dir));
    this.current = this.start();
  }

  /**
   * Appends a decision; returns its segment, to {@link settle} once its row is committed. The line
   * is written with the others of this event-loop turn: wait for {@link written} or
   * {@link durable} before forwarding the call. Throws when the journal is closed.
   */
  append(op: PackedOp): number {
    const s = this.current;
    if (s.fd === undefined) throw new Error('the audit journal is closed');
    this.lines += `${JSON.stringify(op)}\n`;
    s.open++;
    return s.id;
  }

  /** `crash`: resolves once what was appended so far is written (one `write(2)` for the decisions of a turn). */
  written(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.writeWaiters.push({ resolve, reject });
      this.schedule();
    });
  }

  /**
   * `strict`: resolves once what was appended so far is written and on disk (fdatasync, in libuv's
   * thread pool). Group commit: the decisions of one event-loop turn share one write and one
   * fdatasync, and those appended while an fdatasync runs share the next. Rejects with the file
   * system's error.
   */
  durable(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.syncWaiters.push({ resolve, reject });
      this.schedule();
    });
  }

  /** Lines appended and not yet written. */
  private lines = '';
  private writeWaiters: Waiter[] = [];
  private syncWaiters: Waiter[] = [];
  private scheduled = false;
  /** Waiting for the next fdatasync, and the segments it must sync. */
  private syncQueue: Waiter[] = [];
  private readonly dirty = new Set<Segment>();
  private syncing = false;

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.writeLines());
  }

  private writeLines(): void {
    this.scheduled = false;
    const s = this.current;
    const text = this.lines;
    const written = this.writeWaiters;
    const durable = this.syncWaiters;
    this.lines = '';
    this.writeWaiters = [];
    this.syncWaiters = [];
    let err: Error | null = null;
    try {
      if (s.fd === undefined) throw new Error('the audit journal is closed');
      const buf = Buffer.from(text, 'utf8');
      for (let off = 0; off < buf.length; ) off += writeSync(s.fd, buf, off);
      s.bytes += buf.length;
    } catch (e) {
      err = e as Error;
    }
    for (const w of written) {
      if (err === null) w.resolve();
      else w.reject(err);
    }
    if (err !== null) {
      for (const w of durable) w.reject(err);
    } else if (durable.length > 0) {
      for (const w of durable) this.syncQueue.push(w);
      this.dirty.add(s);
      if (!this.syncing) this.syncAll();
    }
    if (s.bytes >= SEGMENT_BYTES) this.rotate();
  }

  private syncAll(): void {
    this.syncing = true;
    const waiters = this.syncQueue;
    const segments = [...this.dirty];
    this.syncQueue = [];
    this.dirty.clear();
    const done = (err: Error | null): void => {
      for (const w of waiters) {
        if (err === null) w.resolve();
        else w.reject(err);
      }
      if (this.syncQueue.length > 0) this.syncAll();
      else this.syncing = false;
    };
    const next = (err: Error | null): void => {
      const seg = segments.pop();
      if (err !== null || seg === undefined) done(err);
      else this.fdatasync(seg, next);
    };
    next(null);
  }

  /** A decision of `segment` has its row committed; a closed segment with none left open is deleted. */
  settle(segment: number): void {
    const s = this.segments.get(segment);
    if (s === undefined) return;
    s.open--;
    if (s.open <= 0 && s !== this.current) this.drop(s);
  }

  /** Decisions appended and not yet settled. */
  get unsettled(): number {
    let n = 0;
    for (const s of this.segments.values()) n += s.open;
    return n;
  }

  /** fdatasync of the segment being written (the one-second timer of `crash`), off the event loop. */
  sync(): void {
    if (this.current.bytes > 0) this.fdatasync(this.current, (err) => err && this.onError(err));
  }

  private fdatasync(s: Segment, cb: (err: NodeJS.ErrnoException | null) => void): void {
    if (s.fd === undefined) {
      cb(s.dropped ? null : new Error('the audit journal is closed'));
      return;
    }
    s.syncing++;
    fdatasync(s.fd, (err) => {
      s.syncing--;
      if (s.dropped && s.syncing === 0) this.release(s);
      cb(err);
    });
  }

  /** Syncs and closes every segment; those with decisions still unsettled stay on disk for the next start. */
  close(): void {
    if (this.lines !== '') this.writeLines();
    for (const w of this.syncQueue) w.reject(new Error('the audit journal is closed'));
    this.syncQueue = [];
    for (const s of this.segments.values()) {
      if (s.fd === undefined) continue;
      try {
        if (s.open > 0) fdatasyncSyncQuietly(s.fd);
        closeSync(s.fd);
      } catch (err) {
        this.onError(err);
      }
      s.fd = undefined;
      if (s.open <= 0) unlinkQuietly(s.path);
    }
    this.segments.clear();
  }

  private start(): Segment {
    const id = this.next++;
    const path = join(this.dir, `${id}.ndjson`);
    const s: Segment = { id, path, fd: openSync(path, 'a', PRIVATE_FILE_MODE), bytes: 0, open: 0, syncing: 0, dropped: false };
    this.segments.set(id, s);
    return s;
  }

  private rotate(): void {
    const old = this.current;
    this.current = this.start();
    if (old.open <= 0) this.drop(old);
    // Synced when it is left: what it holds is as safe as what the timer syncs.
    else this.fdatasync(old, (err) => err && this.onError(err));
  }

  /** Closes and deletes a segment every decision of which has its row, once no fdatasync of it is in flight. */
  private drop(s: Segment): void {
    this.segments.delete(s.id);
    s.dropped = true;
    if (s.syncing === 0) this.release(s);
  }

  private release(s: Segment): void {
    const fd = s.fd;
    s.fd = undefined;
    if (fd === undefined) return;
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    unlink(s.path, (err) => err && err.code !== 'ENOENT' && this.onError(err));
  }
}

function fdatasyncSyncQuietly(fd: number): void {
  try {
    fdatasyncSync(fd);
  } catch {
    // best effort at close
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // gone already
  }
}

function segmentIds(dir: string): number[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.map((n) => /^(\d+)\.ndjson$/.exec(n)?.[1]).filter((n): n is string => n !== undefined).map(Number);
}

/**
 * What a previous Valet left in the journal: its decisions, oldest first, and the segment files
 * (to delete once what they hold is recorded). A torn last line (a power loss mid-write) is skipped.
 */
export function readJournal(dataDir: string): { ops: PackedOp[]; files: string[] } {
  const dir = join(dataDir, JOURNAL_DIR);
  const ids = segmentIds(dir).sort((a, b) => a - b);
  const ops: PackedOp[] = [];
  const files: string[] = [];
  for (const id of ids) {
    const path = join(dir, `${id}.ndjson`);
    files.push(path);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        const op = JSON.parse(line) as unknown;
        if (Array.isArray(op)) ops.push(op);
      } catch {
        // torn
      }
    }
  }
  return { ops, files };
}
