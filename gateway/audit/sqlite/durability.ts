import { closeSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { AuditDurability } from '../../config/types.js';

/** `crash` and `async`: the longest a committed row stays in the OS's cache before the WAL is fsynced (ms). */
export const CRASH_SYNC_MS = 1_000;

/** How often the checkpointer thread copies committed WAL frames into the database file (ms; writer.ts). */
export const CHECKPOINT_INTERVAL_MS = 200;

/** How commits on the audit connection are made durable (see {@link applyDurability}). */
export interface CommitSync {
  /**
   * `strict` with the sync off the connection: fdatasyncs the WAL in libuv's thread pool; `done`
   * once what was committed before the call is on disk. Undefined where a commit needs nothing
   * more (it fsyncs itself, or the level does not wait for one).
   */
  readonly afterCommit: ((done: (err: Error | null) => void) => void) | undefined;
  /** Stops the timer and fdatasyncs the WAL once more, before the connection closes. */
  stop(): void;
}

/**
 * Sets how the audit connection commits.
 * - `strict`: each commit is on disk before it counts (survives a power loss). On a writer thread,
 *   `synchronous = FULL`: the commit fsyncs the WAL, and the thread waits. With `offThread` (the
 *   writer inline on the request thread, which must not stop for an fsync), `synchronous = NORMAL`
 *   and {@link CommitSync.afterCommit} fdatasyncs the WAL in libuv's thread pool; the writer
 *   reports the commit only then.
 * - `crash` and `async`: `synchronous = NORMAL`, a commit is written to the WAL (in the OS's cache:
 *   it survives a killed Valet, not a power loss) and the WAL is fsynced every
 *   {@link CRASH_SYNC_MS} from a timer, so at most that much is lost with the machine.
 */
export function applyDurability(db: Database.Database, walFile: string, durability: AuditDurability, onError: (err: unknown) => void, o: { offThread?: boolean } = {}): CommitSync {
  if (durability === 'strict' && o.offThread !== true) {
    db.pragma('synchronous = FULL');
    return { afterCommit: undefined, stop: () => undefined };
  }
  db.pragma('synchronous = NORMAL');
  let fd: number | undefined;
  let syncing = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const open = (): number => (fd ??= openSync(walFile, 'r'));
  const openQuietly = (): number | undefined => {
    try {
      return open();
    } catch (err) {
      // No WAL yet (nothing written since a checkpoint reset it): nothing to sync.
      if ((err as { code?: string }).code !== 'ENOENT') onError(err);
      return undefined;
    }
  };
  /** fdatasync in libuv's thread pool: the event loop goes on meanwhile. */
  const syncAsync = (f: number, done: (err: Error | null) => void): void => {
    syncing++;
    fdatasync(f, (err) => {
      syncing--;
      if (stopped && syncing === 0) closeSync(f);
      done(err);
    });
  };
  const stop = (): void => {
    clearInterval(timer);
    if (stopped) return;
    const f = openQuietly();
    if (f === undefined) return;
    try {
      fdatasyncSync(f);
    } catch (err) {
      onError(err);
    }
    stopped = true;
    fd = undefined;
    // A sync still in flight closes the file when it is done.
    if (syncing === 0) closeSync(f);
  };
  if (durability === 'strict') {
    return {
      afterCommit: (done) => {
        let f: number;
        try {
          f = open();
        } catch (err) {
          done(err as Error);
          return;
        }
        syncAsync(f, done);
      },
      stop,
    };
  }
  timer = setInterval(() => {
    const f = syncing > 0 || stopped ? undefined : openQuietly();
    if (f !== undefined) syncAsync(f, (err) => err !== null && !stopped && onError(err));
  }, CRASH_SYNC_MS);
  timer.unref();
  return { afterCommit: undefined, stop };
}
