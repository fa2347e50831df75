import type pg from 'pg';
import { ValetError } from '../../errors.js';
import { inTransaction, listenPg, migratePg, openPgPool, pgProblem, type PgListener } from '../../postgres.js';
import { keyMatches, open, seal, type MasterKey, type Sealed, type SecretAddress } from '../crypto.js';
import type { ImportResult, RekeyResult, SecretInfo, SecretStore, SecretStoreOptions, SnapshotStats, StoreLog } from '../port.js';
import { checkName, checkTenant, checkValue, describeSecret, parseSecretsFile, secretNotFound as notFound } from '../validate.js';
import { reseal, secretInfo, SecretSnapshot, type SecretRow, type VersionRow } from '../snapshot.js';
import { grantTableSql, type GrantStore } from '../grants.js';
import { PgGrants, resealPgGrants } from './grants.js';

/** The channel every instance LISTENs on; the payload is the store's new generation. */
export const SECRETS_CHANNEL = 'valet_secrets';

/**
 * Ordered schema migrations; `secrets_schema_version` records how many have run. The same layout
 * as secrets.db, plus `secrets_state.generation`, bumped by every write: one cheap read tells an
 * instance whether its snapshot is current (PostgreSQL has no `PRAGMA data_version`).
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE secrets_meta (
     key   text  PRIMARY KEY,
     value bytea NOT NULL
   );
   CREATE TABLE secrets_state (
     one        boolean PRIMARY KEY DEFAULT true CHECK (one),
     generation bigint  NOT NULL
   );
   INSERT INTO secrets_state (one, generation) VALUES (true, 0);
   CREATE TABLE secrets (
     id           bigserial PRIMARY KEY,  -- never reused: last-used times are recorded by id
     tenant       text,                   -- NULL: shared by every tenant
     name         text    NOT NULL,
     version      integer NOT NULL,       -- the current version
     created_at   bigint  NOT NULL,
     rotated_at   bigint,
     last_used_at bigint
   );
   CREATE UNIQUE INDEX secrets_tenant_name ON secrets (coalesce(tenant, ''), name);
   CREATE TABLE secret_versions (
     secret_id  bigint  NOT NULL REFERENCES secrets (id),
     version    integer NOT NULL,
     nonce      bytea   NOT NULL,
     ciphertext bytea   NOT NULL,
     tag        bytea   NOT NULL,
     created_at bigint  NOT NULL,
     PRIMARY KEY (secret_id, version)
   );`,
  grantTableSql('bytea', 'bigint'),
];

/** `secrets_meta` key of the master key's check value (see crypto.ts); never the key itself. */
const KEY_CHECK = 'key_check';


/** Where the store is, for messages: host, port and database, never a user or password. */
function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `postgresql://${u.host}${u.pathname}`;
  } catch {
    return 'postgresql';
  }
}

/** Applies the migrations this database has not seen yet (`valet migrate`; the store does it at open too). */
export async function migrateSecrets(url: string): Promise<void> {
  const pool = openPgPool(url, 'valet-secrets-migrate', () => undefined);
  try {
    await migratePg(pool, 'secrets_schema_version', MIGRATIONS);
  } finally {
    await pool.end();
  }
}

/**
 * Opens (creating and migrating if needed) the secret store in PostgreSQL: the fleet
 * implementation of the {@link SecretStore} port. Verifies `key` if one is given.
 */
export async function openPgSecretStore(url: string, options: SecretStoreOptions = {}): Promise<SecretStore> {
  const pool = openPgPool(url, 'valet-secrets', (problem) => options.log?.error({ problem }, 'secret store: PostgreSQL connection problem'));
  try {
    await migratePg(pool, 'secrets_schema_version', MIGRATIONS);
    const store = new PgSecretStore(pool, url, options);
    if (options.key) {
      await store.verifyKey(options.key);
      // `get` answers from memory only: a store opened with its key has its values from the start.
      await store.load();
    }
    return store;
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }
}

/**
 * Ciphertexts (sealed exactly as in secrets.db, bound to tenant, name and version) in PostgreSQL;
 * the master key stays with each instance, only its check value is stored. Each write is one
 * transaction that locks `secrets_state`, bumps its generation and sends `NOTIFY valet_secrets`
 * on commit; every instance that serves requests LISTENs and reloads its decrypted snapshot, and
 * also reads the generation every `refreshMs` in case a notification was missed.
 */
class PgSecretStore implements SecretStore {
  readonly label = 'store';
  readonly location: string;
  private readonly pool: pg.Pool;
  private readonly url: string;
  private key: MasterKey | undefined;
  private readonly refreshMs: number;
  private readonly log: StoreLog | undefined;
  private snapshot = SecretSnapshot.EMPTY;
  /** The generation the snapshot was read at; -1: none yet. */
  private loadedGeneration = -1;
  private loaded = false;
  private reloading: Promise<void> | undefined;
  private reloadAgain = false;
  private listener: PgListener | undefined;
  /** Why the last reload failed; undefined once one succeeds. */
  private reloadProblem: string | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private readonly usage = new Map<number, number>();
  private readonly flushTimer: NodeJS.Timeout | undefined;
  private readonly changeListeners = new Set<(stats: SnapshotStats) => void>();
  private closed = false;
  readonly grants: GrantStore;

  constructor(pool: pg.Pool, url: string, options: SecretStoreOptions) {
    this.pool = pool;
    this.grants = new PgGrants(pool, () => this.requireKey());
    this.url = url;
    this.location = describeUrl(url);
    this.key = options.key;
    this.refreshMs = options.refreshMs ?? 1_000;
    this.log = options.log;
    if (options.usageFlushMs !== undefined) {
      this.flushTimer = setInterval(() => void this.flushUsage(), options.usageFlushMs);
      this.flushTimer.unref();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The gateway's side: cached, decrypted current values, never a query on the request path.

  get(name: string, tenant: string | undefined): string | undefined {
    const entry = this.snapshot.entry(name, tenant);
    if (entry === undefined) return undefined;
    this.usage.set(entry.id, Date.now());
    if (entry.value === undefined) throw new ValetError('VALET_ERR_CREDENTIAL_CORRUPT');
    return entry.value;
  }

  has(name: string): boolean {
    return this.snapshot.has(name);
  }

  /** Reads the snapshot once (a store opened with its key). */
  async load(): Promise<void> {
    await this.reload(true);
  }

  /** Loads the snapshot, and from then on keeps it current: LISTEN, plus a generation check every `refreshMs`. */
  async refresh(): Promise<SnapshotStats> {
    this.requireKey();
    await this.reload(true);
    await this.watch();
    return this.snapshot.stats();
  }

  onChange(listener: (stats: SnapshotStats) => void): () => void {
    this.changeListeners.add(listener);
    return () => void this.changeListeners.delete(listener);
  }

  private async watch(): Promise<void> {
    if (this.listener !== undefined || this.closed) return;
    this.listener = await listenPg({
      url: this.url,
      channel: SECRETS_CHANNEL,
      applicationName: 'valet-secrets-listen',
      onNotify: () => this.reloadInBackground(),
      // Back after a lost connection: a rotation announced meanwhile was missed.
      onListening: (lostAt) => {
        if (lostAt !== undefined) this.reloadInBackground();
      },
      onError: (problem) => this.log?.error({ problem }, 'secret store: the PostgreSQL notification connection failed; reconnecting'),
    });
    this.watchTimer = setInterval(() => this.reloadInBackground(), this.refreshMs);
    this.watchTimer.unref();
  }

  private reloadInBackground(): void {
    if (this.closed) return;
    this.reload(false).catch((err: unknown) => this.log?.error({ problem: pgProblem(err) }, 'could not reload the secret store; still using the values loaded before'));
  }

  /** One reload at a time; a request for another while one runs makes it run once more after. */
  private async reload(rethrow: boolean): Promise<void> {
    if (this.reloading !== undefined) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      try {
        do {
          this.reloadAgain = false;
          await this.reloadOnce(rethrow);
        } while (this.reloadAgain && !this.closed);
      } finally {
        this.reloading = undefined;
      }
    })();
    return this.reloading;
  }

  /**
   * Reloads the snapshot if the generation moved, reading it consistently (one REPEATABLE READ
   * transaction). As with secrets.db: a value that fails its integrity check is logged and refused
   * when asked for, and a store rekeyed under another master key keeps the previous snapshot.
   */
  private async reloadOnce(rethrow: boolean): Promise<void> {
    const key = this.requireKey();
    try {
      const g = await this.pool.query<{ generation: number }>('SELECT generation FROM secrets_state');
      if (g.rows[0]?.generation === this.loadedGeneration) {
        this.reloadProblem = undefined;
        return;
      }
      const read = await inTransaction(this.pool, async (c) => {
        await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY');
        const generation = ((await c.query<{ generation: number }>('SELECT generation FROM secrets_state')).rows[0] as { generation: number }).generation;
        const check = await keyCheck(c);
        const secrets = (await c.query<SecretRow>('SELECT * FROM secrets')).rows;
        const versions = (
          await c.query<VersionRow>('SELECT v.secret_id, v.version, v.nonce, v.ciphertext, v.tag FROM secret_versions v JOIN secrets s ON s.id = v.secret_id AND s.version = v.version')
        ).rows;
        return { generation, check, secrets, versions };
      });
      if (this.closed) return;
      if (read.secrets.length > 0 && read.check !== undefined && !keyMatches(key, read.check)) {
        this.log?.error(
          { keyId: key.id },
          'the secret store was rekeyed or rewritten with another master key; still using the values loaded before — restart the gateway with the new key',
        );
      } else {
        const replaced = this.loaded;
        this.snapshot = SecretSnapshot.decrypt(key, read.secrets, read.versions, this.log);
        this.loaded = true;
        if (replaced && this.changeListeners.size > 0) {
          const stats = this.snapshot.stats();
          for (const l of this.changeListeners) l(stats);
        }
      }
      this.loadedGeneration = read.generation;
      this.reloadProblem = undefined;
    } catch (err) {
      if (rethrow) throw err;
      this.reloadProblem = pgProblem(err);
      this.log?.error({ problem: this.reloadProblem }, 'could not reload the secret store; still using the values loaded before');
    }
  }



  async flushUsage(): Promise<void> {
    if (this.usage.size === 0 || this.closed) return;
    const used = [...this.usage];
    this.usage.clear();
    try {
      // Not a change of the store: the generation stays, so no instance reloads for it.
      await this.pool.query(
        `UPDATE secrets s SET last_used_at = u.at FROM unnest($1::bigint[], $2::bigint[]) AS u(id, at)
          WHERE s.id = u.id AND (s.last_used_at IS NULL OR s.last_used_at < u.at)`,
        [used.map(([id]) => id), used.map(([, at]) => at)],
      );
    } catch (err) {
      for (const [id, at] of used) if (!this.usage.has(id)) this.usage.set(id, at);
      this.log?.warn({ problem: pgProblem(err) }, 'could not record when secrets were last used; will retry');
    }
  }

  /** The notification connection is down, or the last reload failed: rotations would not reach this instance. */
  problem(): string | undefined {
    return this.listener?.problem() ?? this.reloadProblem;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.flushTimer) clearInterval(this.flushTimer);
    if (this.watchTimer) clearInterval(this.watchTimer);
    await this.flushUsage();
    this.closed = true;
    this.changeListeners.clear();
    await this.listener?.close();
    await this.reloading?.catch(() => undefined);
    await this.pool.end();
  }

  // ---------------------------------------------------------------------------------------------
  // Operations (CLI, admin API): each write one transaction, all or nothing.

  async isEmpty(): Promise<boolean> {
    return (await this.pool.query('SELECT 1 FROM secrets LIMIT 1')).rowCount === 0;
  }

  async verifyKey(key: MasterKey): Promise<void> {
    const c = await this.pool.connect();
    try {
      await checkKey(c, key, this.location);
    } finally {
      c.release();
    }
  }

  async list(filter: { tenant?: string | null | undefined } = {}): Promise<SecretInfo[]> {
    const where = filter.tenant === undefined ? '' : filter.tenant === null ? 'WHERE tenant IS NULL' : 'WHERE tenant = $1';
    const r = await this.pool.query<SecretRow>(`SELECT * FROM secrets ${where} ORDER BY name, tenant IS NOT NULL, tenant`, filter.tenant ? [filter.tenant] : []);
    return r.rows.map(secretInfo);
  }

  async set(name: string, tenant: string | null, value: string): Promise<SecretInfo> {
    checkName(name);
    checkTenant(tenant);
    checkValue(value, name);
    return this.write(async (c, key) => {
      if (await find(c, name, tenant)) {
        throw new ValetError('VALET_ERR_SECRET_EXISTS', `${describeSecret(name, tenant)} already exists; use rotate to give it a new value`);
      }
      return insert(c, key, name, tenant, value, Date.now());
    });
  }

  async rotate(name: string, tenant: string | null, value: string): Promise<SecretInfo> {
    checkName(name);
    checkTenant(tenant);
    checkValue(value, name);
    return this.write(async (c, key) => {
      const row = await find(c, name, tenant);
      if (!row) throw notFound(name, tenant);
      return addVersion(c, key, row, value, Date.now());
    });
  }

  async remove(name: string, tenant: string | null): Promise<void> {
    checkName(name);
    checkTenant(tenant);
    await this.writeWith(undefined, async (c) => {
      const row = await find(c, name, tenant);
      if (!row) throw notFound(name, tenant);
      await c.query('DELETE FROM secret_versions WHERE secret_id = $1', [row.id]);
      await c.query('DELETE FROM secrets WHERE id = $1', [row.id]);
    });
  }

  async importText(text: string, tenant: string | null): Promise<ImportResult> {
    checkTenant(tenant);
    const { entries, skipped } = parseSecretsFile(text);
    const result: ImportResult = { created: [], rotated: [], unchanged: [], skipped };
    await this.write(async (c, key) => {
      const now = Date.now();
      for (const { name, value } of entries) {
        const row = await find(c, name, tenant);
        if (!row) {
          await insert(c, key, name, tenant, value, now);
          result.created.push(name);
          continue;
        }
        let current: string | undefined;
        try {
          current = open(key, await sealedOf(c, row.id, row.version), { tenant, name, version: row.version });
        } catch {
          current = undefined; // damaged: replace it
        }
        if (current === value) {
          result.unchanged.push(name);
        } else {
          await addVersion(c, key, row, value, now);
          result.rotated.push(name);
        }
      }
    });
    return result;
  }

  async rekey(newKey: MasterKey): Promise<RekeyResult> {
    const oldKey = this.requireKey();
    if (keyMatches(newKey, oldKey.check)) throw new ValetError('VALET_ERR_MASTER_KEY', 'the new master key is the current one');
    const result = await this.writeWithoutReload(oldKey, async (c) => {
      const secrets = new Map((await c.query<SecretRow>('SELECT * FROM secrets')).rows.map((s) => [s.id, s]));
      const versions = (await c.query<VersionRow>('SELECT secret_id, version, nonce, ciphertext, tag FROM secret_versions')).rows;
      for (const v of versions) {
        const s = secrets.get(v.secret_id);
        if (!s) continue;
        const sealed = reseal(oldKey, newKey, s, v);
        await c.query('UPDATE secret_versions SET nonce = $1, ciphertext = $2, tag = $3 WHERE secret_id = $4 AND version = $5', [
          sealed.nonce,
          sealed.ciphertext,
          sealed.tag,
          v.secret_id,
          v.version,
        ]);
      }
      const grants = await resealPgGrants(c, oldKey, newKey);
      await setKeyCheck(c, newKey);
      return { secrets: secrets.size, versions: versions.length, grants, oldKeyId: oldKey.id, newKeyId: newKey.id };
    });
    this.key = newKey;
    await this.afterWrite();
    return result;
  }

  // ---------------------------------------------------------------------------------------------

  private requireKey(): MasterKey {
    if (!this.key) throw new ValetError('VALET_ERR_MASTER_KEY', 'no master key was given to the secret store');
    return this.key;
  }

  /** A write with the store's key: checked (or first recorded) inside the transaction. */
  private write<T>(fn: (c: pg.PoolClient, key: MasterKey) => Promise<T>): Promise<T> {
    const key = this.requireKey();
    return this.writeWith(key, async (c) => {
      const check = await keyCheck(c);
      if (check === undefined || !keyMatches(key, check)) await setKeyCheck(c, key);
      return fn(c, key);
    });
  }

  /**
   * Runs `fn` in a transaction that first locks `secrets_state` (writers queue, as SQLite's
   * IMMEDIATE transactions do), checks `key` if given, and finally bumps the generation and
   * notifies every instance.
   */
  private async writeWithoutReload<T>(key: MasterKey | undefined, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const result = await inTransaction(this.pool, async (c) => {
      await c.query('SELECT generation FROM secrets_state FOR UPDATE');
      if (key !== undefined) await checkKey(c, key, this.location);
      const r = await fn(c);
      // Delivered on commit, to every instance, this one included.
      await c.query(
        `WITH g AS (UPDATE secrets_state SET generation = generation + 1 RETURNING generation) SELECT pg_notify('${SECRETS_CHANNEL}', generation::text) FROM g`,
      );
      return r;
    });
    return result;
  }

  /** {@link writeWithoutReload}, then the snapshot (if loaded) takes the write in. */
  private async writeWith<T>(key: MasterKey | undefined, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const result = await this.writeWithoutReload(key, fn);
    await this.afterWrite();
    return result;
  }

  /** The snapshot takes this object's write in before the write's promise resolves. */
  private async afterWrite(): Promise<void> {
    if (this.key !== undefined) await this.reload(false);
  }
}

async function keyCheck(c: pg.PoolClient): Promise<Buffer | undefined> {
  const r = await c.query<{ value: Buffer }>('SELECT value FROM secrets_meta WHERE key = $1', [KEY_CHECK]);
  return r.rows[0]?.value;
}

async function setKeyCheck(c: pg.PoolClient, key: MasterKey): Promise<void> {
  await c.query('INSERT INTO secrets_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [KEY_CHECK, key.check]);
}

/** Rejects unless `key` wrote the store's values; a store without values accepts any key. */
async function checkKey(c: pg.PoolClient, key: MasterKey, location: string): Promise<void> {
  const check = await keyCheck(c);
  if (check === undefined || keyMatches(key, check)) return;
  if ((await c.query('SELECT 1 FROM secrets LIMIT 1')).rowCount === 0) return;
  throw new ValetError(
    'VALET_ERR_MASTER_KEY',
    `the master key (id ${key.id}) is not the key ${location} was written with (id ${check.subarray(0, 8).toString('hex')}); ` +
      'check VALET_MASTER_KEY / VALET_MASTER_KEY_FILE',
  );
}

async function find(c: pg.PoolClient, name: string, tenant: string | null): Promise<SecretRow | undefined> {
  return (await c.query<SecretRow>(`SELECT * FROM secrets WHERE coalesce(tenant, '') = $1 AND name = $2`, [tenant ?? '', name])).rows[0];
}

async function sealedOf(c: pg.PoolClient, id: number, version: number): Promise<Sealed> {
  return (await c.query<Sealed>('SELECT nonce, ciphertext, tag FROM secret_versions WHERE secret_id = $1 AND version = $2', [id, version])).rows[0] as Sealed;
}

async function insert(c: pg.PoolClient, key: MasterKey, name: string, tenant: string | null, value: string, now: number): Promise<SecretInfo> {
  const r = await c.query<{ id: number }>('INSERT INTO secrets (tenant, name, version, created_at) VALUES ($1, $2, 1, $3) RETURNING id', [tenant, name, now]);
  await insertVersion(c, key, (r.rows[0] as { id: number }).id, { tenant, name, version: 1 }, value, now);
  return { name, tenant, version: 1, createdAt: now, rotatedAt: null, lastUsedAt: null };
}

async function addVersion(c: pg.PoolClient, key: MasterKey, row: SecretRow, value: string, now: number): Promise<SecretInfo> {
  const version = row.version + 1;
  await insertVersion(c, key, row.id, { tenant: row.tenant, name: row.name, version }, value, now);
  await c.query('UPDATE secrets SET version = $1, rotated_at = $2 WHERE id = $3', [version, now, row.id]);
  return secretInfo({ ...row, version, rotated_at: now });
}

async function insertVersion(c: pg.PoolClient, key: MasterKey, id: number, address: SecretAddress, value: string, now: number): Promise<void> {
  const s = seal(key, value, address);
  await c.query('INSERT INTO secret_versions (secret_id, version, nonce, ciphertext, tag, created_at) VALUES ($1, $2, $3, $4, $5, $6)', [
    id,
    address.version,
    s.nonce,
    s.ciphertext,
    s.tag,
    now,
  ]);
}

