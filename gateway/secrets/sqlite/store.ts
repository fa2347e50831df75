import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { ValetError } from '../../errors.js';
import { keyMatches, open, seal, type MasterKey, type Sealed } from '../crypto.js';
import type { ImportResult, RekeyResult, SecretInfo, SecretStore, SecretStoreOptions, SnapshotStats, StoreLog } from '../port.js';
import { checkName, checkTenant, checkValue, describeSecret, parseSecretsFile, secretNotFound as notFound } from '../validate.js';
import { reseal, secretInfo, SecretSnapshot, type SecretRow, type VersionRow } from '../snapshot.js';
import { openPrivateDatabase } from '../../sqlite.js';
import { grantTableSql, type GrantStore } from '../grants.js';
import { resealSqliteGrants, SqliteGrants } from './grants.js';

/**
 * The embedded implementation of the {@link SecretStore} port: upstream credentials at rest in
 * SQLite, each version sealed with AES-256-GCM under the master key (see crypto.ts).
 *
 * The store is its own file, `<data>/secrets.db`, not tables in the audit log's `valet.db`:
 * - each file has one owner of `PRAGMA user_version`, so the two migration histories never meet;
 * - the gateway notices another process's writes (`valet secrets rotate`) with
 *   `PRAGMA data_version`, which changes on every commit by another connection — in `valet.db` the
 *   audit writer commits every few milliseconds, here only when secrets change;
 * - they are handled differently: the audit log is large, append-only, exported and read by
 *   auditors; this file is small, mode 0600, and is backed up together with the master key.
 *   Copying the audit log never copies ciphertexts.
 *
 * Names, tenants, versions and timestamps are stored in plain text; only values are encrypted.
 */
export const SECRETS_FILE = 'secrets.db';

/** Ordered schema migrations of secrets.db; `PRAGMA user_version` records how many have run. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE store_meta (
     key   TEXT PRIMARY KEY,
     value BLOB NOT NULL
   );
   CREATE TABLE secrets (
     id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: last-used times are recorded by id
     tenant       TEXT,                -- NULL: shared by every tenant
     name         TEXT    NOT NULL,
     version      INTEGER NOT NULL,    -- the current version
     created_at   INTEGER NOT NULL,
     rotated_at   INTEGER,
     last_used_at INTEGER
   );
   CREATE UNIQUE INDEX secrets_tenant_name ON secrets (ifnull(tenant, ''), name);
   CREATE TABLE secret_versions (
     secret_id  INTEGER NOT NULL REFERENCES secrets (id),
     version    INTEGER NOT NULL,
     nonce      BLOB    NOT NULL,
     ciphertext BLOB    NOT NULL,
     tag        BLOB    NOT NULL,
     created_at INTEGER NOT NULL,
     PRIMARY KEY (secret_id, version)
   ) WITHOUT ROWID;`,
  grantTableSql('BLOB', 'INTEGER', ' WITHOUT ROWID'),
];

/** `store_meta` key of the master key's check value (see crypto.ts); never the key itself. */
const KEY_CHECK = 'key_check';


/** Opens (creating and migrating if needed) `<dataDir>/secrets.db`. Verifies `key` if one is given. */
export function openSqliteSecretStore(dataDir: string, options: SecretStoreOptions = {}): SecretStore {
  const file = join(dataDir, SECRETS_FILE);
  const db = openPrivateDatabase(dataDir, SECRETS_FILE, MIGRATIONS, options.busyTimeoutMs);
  try {
    const store = new SqliteSecretStore(db, file, options);
    if (options.key) store.checkKey(options.key);
    return store;
  } catch (err) {
    db.close();
    throw err;
  }
}

class SqliteSecretStore implements SecretStore {
  readonly label = 'store';
  /** The database file. */
  readonly location: string;
  private readonly db: Database.Database;
  /** Replaced by `rekey`, so a gateway rekeyed through its admin API keeps working. */
  private key: MasterKey | undefined;
  private readonly refreshMs: number;
  private readonly log: StoreLog | undefined;
  private snapshot = SecretSnapshot.EMPTY;
  /** `PRAGMA data_version` when the snapshot was taken; -1 forces a reload. */
  private loadedVersion = -1;
  private nextCheck = 0;
  /** Secret id → last time `get` returned it, since the last flush. */
  private readonly usage = new Map<number, number>();
  private readonly flushTimer: NodeJS.Timeout | undefined;
  private readonly changeListeners = new Set<(stats: SnapshotStats) => void>();
  /** Whether a snapshot was loaded: the first load is no change. */
  private loaded = false;
  private closed = false;
  readonly grants: GrantStore;

  constructor(db: Database.Database, file: string, options: SecretStoreOptions) {
    this.db = db;
    this.grants = new SqliteGrants(db, () => this.requireKey());
    this.location = file;
    this.key = options.key;
    this.refreshMs = options.refreshMs ?? 1_000;
    this.log = options.log;
    if (options.usageFlushMs !== undefined) {
      this.flushTimer = setInterval(() => this.flushUsageNow(), options.usageFlushMs);
      this.flushTimer.unref();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The gateway's side: cached, decrypted current values.

  /**
   * Values are decrypted once into memory; every `refreshMs` a cheap `PRAGMA data_version` (which
   * changes on every commit by another connection) tells whether another process changed the
   * store, and if so the whole snapshot is reloaded and swapped at once: this is how a running
   * gateway picks up `valet secrets rotate` within a second.
   */
  get(name: string, tenant: string | undefined): string | undefined {
    const now = Date.now();
    if (now >= this.nextCheck) {
      this.nextCheck = now + this.refreshMs;
      this.reload();
    }
    const entry = this.snapshot.entry(name, tenant);
    if (entry === undefined) return undefined;
    this.usage.set(entry.id, now);
    if (entry.value === undefined) throw new ValetError('VALET_ERR_CREDENTIAL_CORRUPT');
    return entry.value;
  }

  has(name: string): boolean {
    return this.snapshot.has(name);
  }

  async refresh(): Promise<SnapshotStats> {
    this.nextCheck = Date.now() + this.refreshMs;
    this.reload();
    return this.snapshot.stats();
  }

  onChange(listener: (stats: SnapshotStats) => void): () => void {
    this.changeListeners.add(listener);
    return () => void this.changeListeners.delete(listener);
  }


  /**
   * Reloads the snapshot if the store changed since it was taken. A value that fails its
   * integrity check is logged (name, tenant, version) and refused when asked for. If the store's
   * key check no longer matches (it was rekeyed), the previous snapshot stays in use: values do not
   * change with a rekey, and the gateway must be restarted with the new key to see later changes.
   * A failed read keeps the previous snapshot and is retried at the next check.
   */
  private reload(): void {
    const key = this.requireKey();
    try {
      const version = this.db.pragma('data_version', { simple: true }) as number;
      if (version === this.loadedVersion) return;
      const { check, secrets, versions } = this.db.transaction(() => ({
        check: this.keyCheck(),
        secrets: this.db.prepare('SELECT * FROM secrets').all() as SecretRow[],
        versions: this.db
          .prepare('SELECT v.* FROM secret_versions v JOIN secrets s ON s.id = v.secret_id AND s.version = v.version')
          .all() as VersionRow[],
      }))();
      if (secrets.length > 0 && check !== undefined && !keyMatches(key, check)) {
        this.log?.error(
          { keyId: key.id },
          'the secret store was rekeyed or rewritten with another master key; still using the values loaded before — restart the gateway with the new key',
        );
      } else {
        const replaced = this.loaded;
        this.snapshot = SecretSnapshot.decrypt(key, secrets, versions, this.log);
        this.loaded = true;
        if (replaced && this.changeListeners.size > 0) {
          const stats = this.snapshot.stats();
          for (const l of this.changeListeners) l(stats);
        }
      }
      this.loadedVersion = version;
    } catch (err) {
      this.log?.error({ err }, 'could not reload the secret store; still using the values loaded before');
    }
  }


  async flushUsage(): Promise<void> {
    this.flushUsageNow();
  }

  private flushUsageNow(): void {
    if (this.usage.size === 0 || this.closed) return;
    const used = [...this.usage];
    this.usage.clear();
    try {
      const update = this.db.prepare('UPDATE secrets SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)');
      this.db.transaction(() => {
        for (const [id, at] of used) update.run(at, id, at);
      })();
    } catch (err) {
      // Busy (a CLI write in progress): keep them for the next flush.
      for (const [id, at] of used) if (!this.usage.has(id)) this.usage.set(id, at);
      this.log?.warn({ err }, 'could not record when secrets were last used; will retry');
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.flushTimer) clearInterval(this.flushTimer);
    this.flushUsageNow();
    this.closed = true;
    this.changeListeners.clear();
    this.db.close();
  }

  // ---------------------------------------------------------------------------------------------
  // Operations (CLI, admin API). Each write is one IMMEDIATE transaction: all or nothing.

  async isEmpty(): Promise<boolean> {
    return this.empty();
  }

  private empty(): boolean {
    return this.db.prepare('SELECT 1 FROM secrets LIMIT 1').get() === undefined;
  }

  async verifyKey(key: MasterKey): Promise<void> {
    this.checkKey(key);
  }

  /**
   * Checks that `key` is the key the store's values were written with. A store without values
   * accepts any key (its check value is rewritten by the next write).
   */
  checkKey(key: MasterKey): void {
    const check = this.keyCheck();
    if (check === undefined || keyMatches(key, check) || this.empty()) return;
    throw new ValetError(
      'VALET_ERR_MASTER_KEY',
      `the master key (id ${key.id}) is not the key ${this.location} was written with (id ${check.subarray(0, 8).toString('hex')}); ` +
        'check VALET_MASTER_KEY / VALET_MASTER_KEY_FILE',
    );
  }

  async list(filter: { tenant?: string | null | undefined } = {}): Promise<SecretInfo[]> {
    const where = filter.tenant === undefined ? '' : filter.tenant === null ? 'WHERE tenant IS NULL' : 'WHERE tenant = @tenant';
    const rows = this.db
      .prepare(`SELECT * FROM secrets ${where} ORDER BY name, tenant IS NOT NULL, tenant`)
      .all(...(filter.tenant ? [{ tenant: filter.tenant }] : [])) as SecretRow[];
    return rows.map(secretInfo);
  }

  async set(name: string, tenant: string | null, value: string): Promise<SecretInfo> {
    checkName(name);
    checkTenant(tenant);
    checkValue(value, name);
    return this.write((key) => {
      if (this.find(name, tenant)) {
        throw new ValetError('VALET_ERR_SECRET_EXISTS', `${describeSecret(name, tenant)} already exists; use rotate to give it a new value`);
      }
      return this.insert(key, name, tenant, value, Date.now());
    });
  }

  async rotate(name: string, tenant: string | null, value: string): Promise<SecretInfo> {
    checkName(name);
    checkTenant(tenant);
    checkValue(value, name);
    return this.write((key) => {
      const row = this.find(name, tenant);
      if (!row) throw notFound(name, tenant);
      return this.addVersion(key, row, value, Date.now());
    });
  }

  async remove(name: string, tenant: string | null): Promise<void> {
    checkName(name);
    checkTenant(tenant);
    this.db
      .transaction(() => {
        const row = this.find(name, tenant);
        if (!row) throw notFound(name, tenant);
        this.db.prepare('DELETE FROM secret_versions WHERE secret_id = ?').run(row.id);
        this.db.prepare('DELETE FROM secrets WHERE id = ?').run(row.id);
      })
      .immediate();
    this.invalidate();
    this.nextCheck = 0;
  }

  /** Everything is checked first and written in one transaction. */
  async importText(text: string, tenant: string | null): Promise<ImportResult> {
    checkTenant(tenant);
    const { entries, skipped } = parseSecretsFile(text);
    const result: ImportResult = { created: [], rotated: [], unchanged: [], skipped };
    this.write((key) => {
      const now = Date.now();
      for (const { name, value } of entries) {
        const row = this.find(name, tenant);
        if (!row) {
          this.insert(key, name, tenant, value, now);
          result.created.push(name);
          continue;
        }
        let current: string | undefined;
        try {
          current = open(key, this.sealed(row.id, row.version), { tenant, name, version: row.version });
        } catch {
          current = undefined; // damaged: replace it
        }
        if (current === value) {
          result.unchanged.push(name);
        } else {
          this.addVersion(key, row, value, now);
          result.rotated.push(name);
        }
      }
    });
    return result;
  }

  /** In one transaction, after checking that the store's key opens every version. */
  async rekey(newKey: MasterKey): Promise<RekeyResult> {
    const oldKey = this.requireKey();
    this.checkKey(oldKey);
    if (keyMatches(newKey, oldKey.check)) throw new ValetError('VALET_ERR_MASTER_KEY', 'the new master key is the current one');
    const result = this.db
      .transaction(() => {
        const secrets = new Map((this.db.prepare('SELECT * FROM secrets').all() as SecretRow[]).map((s) => [s.id, s]));
        const versions = this.db.prepare('SELECT * FROM secret_versions').all() as VersionRow[];
        const update = this.db.prepare('UPDATE secret_versions SET nonce = ?, ciphertext = ?, tag = ? WHERE secret_id = ? AND version = ?');
        for (const v of versions) {
          const s = secrets.get(v.secret_id);
          if (!s) continue;
          const sealed = reseal(oldKey, newKey, s, v);
          update.run(sealed.nonce, sealed.ciphertext, sealed.tag, v.secret_id, v.version);
        }
        const grants = resealSqliteGrants(this.db, oldKey, newKey);
        this.setKeyCheck(newKey);
        return { secrets: secrets.size, versions: versions.length, grants, oldKeyId: oldKey.id, newKeyId: newKey.id };
      })
      .immediate();
    this.key = newKey;
    this.invalidate();
    return result;
  }

  // ---------------------------------------------------------------------------------------------

  /** After a write through this object (admin API): the next `get` reloads (data_version only sees other connections' writes). */
  private invalidate(): void {
    this.loadedVersion = -1;
    this.nextCheck = 0;
  }

  private requireKey(): MasterKey {
    if (!this.key) throw new ValetError('VALET_ERR_MASTER_KEY', 'no master key was given to the secret store');
    return this.key;
  }

  /** Runs `fn` in an IMMEDIATE transaction after checking (or first recording) the key check value. */
  private write<T>(fn: (key: MasterKey) => T): T {
    const key = this.requireKey();
    const result = this.db
      .transaction(() => {
        this.checkKey(key);
        const check = this.keyCheck();
        if (check === undefined || !keyMatches(key, check)) this.setKeyCheck(key);
        return fn(key);
      })
      .immediate();
    this.invalidate();
    return result;
  }

  private keyCheck(): Buffer | undefined {
    const row = this.db.prepare('SELECT value FROM store_meta WHERE key = ?').get(KEY_CHECK) as { value: Buffer } | undefined;
    return row?.value;
  }

  private setKeyCheck(key: MasterKey): void {
    this.db.prepare('INSERT INTO store_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(KEY_CHECK, key.check);
  }

  private find(name: string, tenant: string | null): SecretRow | undefined {
    return this.db.prepare("SELECT * FROM secrets WHERE ifnull(tenant, '') = ? AND name = ?").get(tenant ?? '', name) as SecretRow | undefined;
  }

  private sealed(id: number, version: number): Sealed {
    return this.db.prepare('SELECT nonce, ciphertext, tag FROM secret_versions WHERE secret_id = ? AND version = ?').get(id, version) as Sealed;
  }

  private insert(key: MasterKey, name: string, tenant: string | null, value: string, now: number): SecretInfo {
    const { lastInsertRowid } = this.db.prepare('INSERT INTO secrets (tenant, name, version, created_at) VALUES (?, ?, 1, ?)').run(tenant, name, now);
    this.insertVersion(key, Number(lastInsertRowid), { tenant, name, version: 1 }, value, now);
    return { name, tenant, version: 1, createdAt: now, rotatedAt: null, lastUsedAt: null };
  }

  private addVersion(key: MasterKey, row: SecretRow, value: string, now: number): SecretInfo {
    const version = row.version + 1;
    this.insertVersion(key, row.id, { tenant: row.tenant, name: row.name, version }, value, now);
    this.db.prepare('UPDATE secrets SET version = ?, rotated_at = ? WHERE id = ?').run(version, now, row.id);
    return secretInfo({ ...row, version, rotated_at: now });
  }

  private insertVersion(key: MasterKey, id: number, address: { tenant: string | null; name: string; version: number }, value: string, now: number): void {
    const s = seal(key, value, address);
    this.db
      .prepare('INSERT INTO secret_versions (secret_id, version, nonce, ciphertext, tag, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, address.version, s.nonce, s.ciphertext, s.tag, now);
  }
}

