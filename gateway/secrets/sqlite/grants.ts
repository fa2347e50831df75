import type Database from 'better-sqlite3';
import type { MasterKey } from '../crypto.js';
import { grantInfo, openGrant, PENDING_SCOPE, resealGrant, rowKey, sealGrant, type Grant, type GrantFilter, type GrantInfo, type GrantKey, type GrantRow, type GrantStore, type GrantWrite } from '../grants.js';

const WHERE_KEY = 'upstream = ? AND tenant = ? AND "user" = ? AND scope = ?';

/** The grant side of secrets.db: each operation one statement or one IMMEDIATE transaction. */
export class SqliteGrants implements GrantStore {
  constructor(
    private readonly db: Database.Database,
    private readonly key: () => MasterKey,
  ) {}

  async read(key: GrantKey): Promise<Grant | undefined> {
    const row = this.db.prepare(`SELECT * FROM credential_grants WHERE ${WHERE_KEY} AND version > 0`).get(...rowKey(key)) as GrantRow | undefined;
    return row === undefined ? undefined : openGrant(this.key(), row);
  }

  async write(key: GrantKey, value: GrantWrite, expected: number): Promise<boolean> {
    const masterKey = this.key();
    const now = Date.now();
    const version = expected + 1;
    const s = sealGrant(masterKey, key, version, value.tokens);
    const args = [version, s.nonce, s.ciphertext, s.tag, value.expiresAt, now, value.status, value.problem, value.seed, value.tokens.refreshToken !== undefined ? 1 : 0];
    if (expected === 0) {
      // Absent, or only a placeholder holding the lease of whoever is asking for the first token.
      const r = this.db
        .prepare(
          `INSERT INTO credential_grants (version, nonce, ciphertext, tag, expires_at, refreshed_at, status, problem, seed, has_refresh, upstream, tenant, "user", scope, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (upstream, tenant, "user", scope) DO UPDATE SET version = excluded.version, nonce = excluded.nonce, ciphertext = excluded.ciphertext, tag = excluded.tag,
             expires_at = excluded.expires_at, refreshed_at = excluded.refreshed_at, status = excluded.status, problem = excluded.problem,
             seed = excluded.seed, has_refresh = excluded.has_refresh, created_at = excluded.created_at, lease_owner = NULL, lease_until = NULL
           WHERE credential_grants.version = 0`,
        )
        .run(...args, ...rowKey(key), now);
      return r.changes === 1;
    }
    const r = this.db
      .prepare(
        `UPDATE credential_grants SET version = ?, nonce = ?, ciphertext = ?, tag = ?, expires_at = ?, refreshed_at = ?, status = ?, problem = ?, seed = ?, has_refresh = ?,
           lease_owner = NULL, lease_until = NULL WHERE ${WHERE_KEY} AND version = ?`,
      )
      .run(...args, ...rowKey(key), expected);
    return r.changes === 1;
  }

  async lease(key: GrantKey, expected: number, owner: string, ms: number): Promise<boolean> {
    const now = Date.now();
    if (expected === 0) {
      // Nothing to lease yet: a placeholder (version 0, which reads as absent) carries the lease.
      const s = sealGrant(this.key(), key, 0, {});
      const r = this.db
        .prepare(
          `INSERT INTO credential_grants (upstream, tenant, "user", scope, version, nonce, ciphertext, tag, refreshed_at, created_at, status, has_refresh, lease_owner, lease_until)
           VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, 'active', 0, ?, ?)
           ON CONFLICT (upstream, tenant, "user", scope) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until
           WHERE credential_grants.version = 0 AND (credential_grants.lease_until IS NULL OR credential_grants.lease_until <= ? OR credential_grants.lease_owner = ?)`,
        )
        .run(...rowKey(key), s.nonce, s.ciphertext, s.tag, now, now, owner, now + ms, now, owner);
      return r.changes === 1;
    }
    const r = this.db
      .prepare(`UPDATE credential_grants SET lease_owner = ?, lease_until = ? WHERE ${WHERE_KEY} AND version = ? AND (lease_until IS NULL OR lease_until <= ? OR lease_owner = ?)`)
      .run(owner, now + ms, ...rowKey(key), expected, now, owner);
    return r.changes === 1;
  }

  async release(key: GrantKey, owner: string): Promise<void> {
    this.db.prepare(`UPDATE credential_grants SET lease_owner = NULL, lease_until = NULL WHERE ${WHERE_KEY} AND lease_owner = ?`).run(...rowKey(key), owner);
  }

  async remove(key: Omit<GrantKey, 'scope'> & { readonly scope?: string }): Promise<number> {
    const [upstream, tenant, user] = rowKey({ ...key, scope: '' });
    if (key.scope === undefined) {
      return this.db.prepare(`DELETE FROM credential_grants WHERE upstream = ? AND tenant = ? AND "user" = ? AND scope NOT LIKE '${PENDING_SCOPE}%'`).run(upstream, tenant, user).changes;
    }
    return this.db.prepare(`DELETE FROM credential_grants WHERE ${WHERE_KEY}`).run(upstream, tenant, user, key.scope).changes;
  }

  async list(filter: GrantFilter = {}): Promise<GrantInfo[]> {
    const where = [`scope NOT LIKE '${PENDING_SCOPE}%'`, 'version > 0'];
    const args: string[] = [];
    if (filter.upstream !== undefined) (where.push('upstream = ?'), args.push(filter.upstream));
    if (filter.tenant !== undefined) (where.push('tenant = ?'), args.push(filter.tenant ?? ''));
    if (filter.user !== undefined) (where.push('"user" = ?'), args.push(filter.user));
    const rows = this.db.prepare(`SELECT * FROM credential_grants WHERE ${where.join(' AND ')} ORDER BY upstream, tenant, "user", scope`).all(...args) as GrantRow[];
    return rows.map(grantInfo);
  }
}

/** Re-seals every grant under `newKey` (inside the caller's rekey transaction); returns how many. */
export function resealSqliteGrants(db: Database.Database, oldKey: MasterKey, newKey: MasterKey): number {
  const rows = db.prepare('SELECT * FROM credential_grants').all() as GrantRow[];
  const update = db.prepare(`UPDATE credential_grants SET nonce = ?, ciphertext = ?, tag = ? WHERE ${WHERE_KEY}`);
  for (const r of rows) {
    const s = resealGrant(oldKey, newKey, r);
    update.run(s.nonce, s.ciphertext, s.tag, r.upstream, r.tenant, r.user, r.scope);
  }
  return rows.length;
}
