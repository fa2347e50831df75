import { closeSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { AuditDurability } from '../../config/types.js';

/** `crash` and `async`: the longest a committed row stays in the OS's cache before the WAL is fsynced (ms). */
export const CRASH_SYNC_MS = 1_000;

/**
 * Sets how the audit connection commits. `strict`: `synchronous = FULL`, each commit fsyncs the
 * WAL (survives a power loss). `crash` and `async`: `synchronous = NORMAL`, a commit is written to
 * the WAL (in the OS's cache: it survives a killed Valet, not a power loss) and the WAL is fsynced
 * every {@link CRASH_SYNC_MS} from a timer, so at most that much is lost with the machine. Returns
 * what stops the timer.
 */
export function applyDurability(db: Database.Database, walFile: string, durability: AuditDurability, onError: (err: unknown) => void): () => void {
  if (durability === 'strict') {
    db.pragma('synchronous = FULL');
    return () => undefined;
  }
  db.pragma('synchronous = NORMAL');
  let fd: number | undefined;
  let syncing = false;
  let stopped = false;
  const open = (): number | undefined => {
    try {
      fd ??= openSync(walFile, 'r');
      return fd;
    } catch (err) {
      // No WAL yet (nothing written since a checkpoint reset it): nothing to sync.
      if ((err as { code?: string }).code !== 'ENOENT') onError(err);
      return undefined;
    }
  };
  // In libuv's thread pool: on an inline writer, the gateway's event loop goes on meanwhile.
  const timer = setInterval(() => {
    const f = syncing ? undefined : open();
    if (f === undefined) return;
    syncing = true;
    fdatasync(f, (err) => {
      syncing = false;
      if (err !== null && !stopped) onError(err);
      if (stopped) closeSync(f);
    });
  }, CRASH_SYNC_MS);
  timer.unref();
  return () => {
    clearInterval(timer);
    if (stopped) return;
    const f = open();
    if (f === undefined) return;
    try {
      fdatasyncSync(f);
    } catch (err) {
      onError(err);
    }
    stopped = true;
    fd = undefined;
    // A sync still in flight closes the file when it is done.
    if (!syncing) closeSync(f);
  };
}
