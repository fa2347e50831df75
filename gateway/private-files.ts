import { chmodSync, closeSync, lstatSync, mkdirSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Everything Valet keeps under its data directory (audit log, secret store, keys, anchors) is for
 * the gateway's user only: directories 0700, files 0600, whatever the process umask.
 */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

/** Creates `dir` (and its parents) if needed and makes it 0700. */
export function privateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  chmodQuietly(dir, PRIVATE_DIR_MODE);
}

/**
 * Creates `file` empty if absent, mode 0600, before SQLite opens it: SQLite gives the database's
 * -wal and -shm files the database file's mode, so they are private from their first byte.
 */
export function privateFile(file: string): void {
  closeSync(openSync(file, 'a', PRIVATE_FILE_MODE));
  chmodQuietly(file, PRIVATE_FILE_MODE);
}

/**
 * Brings an existing data directory to 0700 / 0600, recursively: files an older version or a
 * wider umask created stay readable by others otherwise. Symbolic links are left alone.
 */
export function tightenDataDir(dir: string): void {
  chmodQuietly(dir, PRIVATE_DIR_MODE);
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st === undefined || st.isSymbolicLink()) continue;
    if (st.isDirectory()) tightenDataDir(path);
    else if (st.isFile() && (st.mode & 0o077) !== 0) chmodQuietly(path, PRIVATE_FILE_MODE);
  }
}

function chmodQuietly(path: string, mode: number): void {
  try {
    chmodSync(path, mode);
  } catch {
    // Not ours to change (a file mounted read-only or owned by another user); the open still works.
  }
}
