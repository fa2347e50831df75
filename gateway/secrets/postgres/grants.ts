import type pg from 'pg';
import type { MasterKey } from '../crypto.js';
import { grantInfo, openGrant, PENDING_SCOPE, resealGrant, rowKey, sealGrant, type Grant, type GrantFilter, type GrantInfo, type GrantKey, type GrantRow, type GrantStore, type GrantWrite } from '../grants.js';

const WHERE_KEY = 'upstream = $1 AND tenant = $2 AND "user" = $3 AND scope = $4';
const COLUMNS = 'upstream, tenant, "user", scope';

/**
 * The grant side of the PostgreSQL store. Grant writes do not bump the secrets' generation: no
 * instance reloads its snapshot of static secrets because a token was refreshed.
 */
export class PgGrants implements GrantStore {
  constructor(
    private readonly pool: pg.Pool,
    private readonly key: () => MasterKey,
  ) {}

  async read(key: GrantKey): Promise<Grant | undefined> {
    const row = (await this.pool.query<GrantRow>(`SELECT * FROM credential_grants WHERE ${WHERE_KEY} AND version > 0`, rowKey(key))).rows[0];
    return row === undefined ? undefined : openGrant(this.key(), row);
  }

  async write(key: GrantKey, value: GrantWrite, expected: number): Promise<boolean> {
    const now = Date.now();
    const version = expected + 1;
    const s = sealGrant(this.key(), key, version, value.tokens);
    const args = [...rowKey(key), version, s.nonce, s.ciphertext, s.tag, value.expiresAt, now, value.status, value.problem, value.seed, value.tokens.refreshToken !== undefined];
    const set = `version = $5, nonce = $6, ciphertext = $7, tag = $8, expires_at = $9, refreshed_at = $10, status = $11, problem = $12, seed = $13, has_refresh = $14, lease_owner = NULL, lease_until = NULL`;
    if (expected === 0) {
      // Absent, or only a placeholder holding the lease of whoever is asking for the first token.
      const r = await this.pool.query(
        `INSERT INTO credential_grants (${COLUMNS}, version, nonce, ciphertext, tag, expires_at, refreshed_at, status, problem, seed, has_refresh, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $10)
         ON CONFLICT (${COLUMNS}) DO UPDATE SET ${set}, created_at = $10 WHERE credential_grants.version = 0`,
        args,
      );
      return r.rowCount === 1;
    }
    const r = await this.pool.query(`UPDATE credential_grants SET ${set} WHERE ${WHERE_KEY} AND version = $15`, [...args, expected]);
    return r.rowCount === 1;
  }

  async lease(key: GrantKey, expected: number, owner: string, ms: number): Promise<boolean> {
    const now = Date.now();
    const free = `(credential_grants.lease_until IS NULL OR credential_grants.lease_until <= $6 OR credential_grants.lease_owner = $5)`;
    if (expected === 0) {
      // Nothing to lease yet: a placeholder (version 0, which reads as absent) carries the lease.
      const s = sealGrant(this.key(), key, 0, {});
      const r = await this.pool.query(
        `INSERT INTO credential_grants (${COLUMNS}, lease_owner, lease_until, version, nonce, ciphertext, tag, refreshed_at, created_at, status, has_refresh)
         VALUES ($1, $2, $3, $4, $5, $7, 0, $8, $9, $10, $6, $6, 'active', false)
         ON CONFLICT (${COLUMNS}) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until
         WHERE credential_grants.version = 0 AND ${free}`,
        [...rowKey(key), owner, now, now + ms, s.nonce, s.ciphertext, s.tag],
      );
      return r.rowCount === 1;
    }
    const r = await this.pool.query(
      `UPDATE credential_grants SET lease_owner = $5, lease_until = $8 WHERE ${WHERE_KEY} AND version = $7 AND ${free}`,
      [...rowKey(key), owner, now, expected, now + ms],
    );
    return r.rowCount === 1;
  }

  async release(key: GrantKey, owner: string): Promise<void> {
    await this.pool.query(`UPDATE credential_grants SET lease_owner = NULL, lease_until = NULL WHERE ${WHERE_KEY} AND lease_owner = $5`, [...rowKey(key), owner]);
  }

  async remove(key: Omit<GrantKey, 'scope'> & { readonly scope?: string }): Promise<number> {
    const [upstream, tenant, user] = rowKey({ ...key, scope: '' });
    const r =
      key.scope === undefined
        ? await this.pool.query(`DELETE FROM credential_grants WHERE upstream = $1 AND tenant = $2 AND "user" = $3 AND scope NOT LIKE '${PENDING_SCOPE}%'`, [upstream, tenant, user])
        : await this.pool.query(`DELETE FROM credential_grants WHERE ${WHERE_KEY}`, [upstream, tenant, user, key.scope]);
    return r.rowCount ?? 0;
  }

  async list(filter: GrantFilter = {}): Promise<GrantInfo[]> {
    const where = [`scope NOT LIKE '${PENDING_SCOPE}%'`, 'version > 0'];
    const args: string[] = [];
    const add = (column: string, value: string): void => {
      args.push(value);
      where.push(`${column} = $${args.length}`);
    };
    if (filter.upstream !== undefined) add('upstream', filter.upstream);
    if (filter.tenant !== undefined) add('tenant', filter.tenant ?? '');
    if (filter.user !== undefined) add('"user"', filter.user);
    const rows = (await this.pool.query<GrantRow>(`SELECT * FROM credential_grants WHERE ${where.join(' AND ')} ORDER BY ${COLUMNS}`, args)).rows;
    return rows.map(grantInfo);
  }
}

/** Re-seals every grant under `newKey` inside the caller's rekey transaction; returns how many. */
export async function resealPgGrants(c: pg.PoolClient, oldKey: MasterKey, newKey: MasterKey): Promise<number> {
  const rows = (await c.query<GrantRow>('SELECT * FROM credential_grants FOR UPDATE')).rows;
  for (const r of rows) {
    const s = resealGrant(oldKey, newKey, r);
    await c.query(`UPDATE credential_grants SET nonce = $5, ciphertext = $6, tag = $7 WHERE ${WHERE_KEY}`, [r.upstream, r.tenant, r.user, r.scope, s.nonce, s.ciphertext, s.tag]);
  }
  return rows.length;
}
