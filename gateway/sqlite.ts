import { join } from 'node:path';
import Database from 'better-sqlite3';
import { ValetError } from './errors.js';
import { privateDir, privateFile } from './private-files.js';

/**
 * Opens `<dataDir>/<name>` — created 0600 in a 0700 directory — in WAL mode with
 * `synchronous = NORMAL` (a process crash loses nothing committed; a power cut may lose the last
 * commits), and runs the migrations it has not seen yet in one transaction. `PRAGMA user_version`
 * counts the migrations applied; a file from a newer Valet is refused, never downgraded.
 */
export function openPrivateDatabase(dataDir: string, name: string, migrations: readonly string[], busyTimeoutMs = 5_000): Database.Database {
  privateDir(dataDir);
  const file = join(dataDir, name);
  privateFile(file);
  const db = new Database(file);
  try {
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    const current = db.pragma('user_version', { simple: true }) as number;
    if (current > migrations.length) {
      throw new ValetError('VALET_ERR_CONFIG', `${file} was written by a newer Valet (schema ${current}); upgrade Valet`);
    }
    if (current < migrations.length) {
      db.transaction(() => {
        for (let v = current; v < migrations.length; v++) db.exec(migrations[v] as string);
        db.pragma(`user_version = ${migrations.length}`);
      }).immediate();
    }
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

