import { closeSync, fdatasyncSync, openSync } from 'node:fs';
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
  const sync = (): void => {
    try {
      fd ??= openSync(walFile, 'r');
      fdatasyncSync(fd);
    } catch (err) {
      // No WAL yet (nothing written since a checkpoint reset it): nothing to sync.
      if ((err as { code?: string }).code !== 'ENOENT') onError(err);
    }
  };
  const timer = setInterval(sync, CRASH_SYNC_MS);
  timer.unref();
  return () => {
    clearInterval(timer);
    sync();
    if (fd !== undefined) closeSync(fd);
    fd = undefined;
  };
}
