import type pg from 'pg';
import type { ApprovalStore, InsertResult, SettledListener } from '../port.js';
import { fromRow, type ApprovalRow } from '../rows.js';
import { inTransaction, listenPg, migratePg, openPgPool, pgProblem, type PgListener } from '../../postgres.js';

/** The channel every instance LISTENs on; the payload is the settled approval's id. */
export const APPROVALS_CHANNEL = 'valet_approvals';

/** Ordered schema migrations; `approvals_schema_version` records how many have run. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE approvals (
     id                  text    PRIMARY KEY,
     request_id          text    NOT NULL,
     mode                text    NOT NULL CHECK (mode IN ('hold', 'async')),
     status              text    NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'aborted', 'consumed')),
     agent               text    NOT NULL,
     tenant              text,
     "user"              text,
     upstream            text    NOT NULL,
     tool                text,
     method              text    NOT NULL,
     path                text    NOT NULL,
     args                text    NOT NULL,
     args_note           text,
     rule                text    NOT NULL,
     reason              text    NOT NULL,
     approver_group      text    NOT NULL,
     timeout_ms          bigint  NOT NULL,
     created_at          bigint  NOT NULL,
     expires_at          bigint  NOT NULL,
     digest              text    NOT NULL,
     resolver            text,
     resolution_reason   text,
     resolved_at         bigint,
     consumed_at         bigint,
     consumed_request_id text,
     policy_version      text,
     instance_id         text    NOT NULL  -- the instance holding the agent's connection (hold mode)
   );
   CREATE INDEX approvals_open ON approvals (status, expires_at);
   CREATE INDEX approvals_agent ON approvals (agent, status);
   CREATE INDEX approvals_tenant ON approvals (tenant, status);
   CREATE INDEX approvals_created ON approvals (created_at);
   CREATE INDEX approvals_instance ON approvals (instance_id, mode, status);
   CREATE TABLE approval_links_used (
     nonce       text   PRIMARY KEY,
     approval_id text   NOT NULL,
     action      text   NOT NULL,
     used_by     text   NOT NULL,
     used_at     bigint NOT NULL
   );`,
];

export interface PgApprovalStoreOptions {
  /** `postgres://…`, optionally with `options=-c search_path=<schema>`. */
  readonly url: string;
  /**
   * This instance, stable across its restarts: its held approvals are recorded with it, so a
   * restart aborts only the requests this instance was holding, never another instance's.
   */
  readonly instanceId: string;
  readonly onError: (problem: string) => void;
}

/**
 * How far back, after the LISTEN connection came back, settled held approvals are announced
 * again: wider than any gap between the lost connection and its replacement plus clock skew.
 */
const CATCH_UP_MARGIN_MS = 60_000;

/** Applies the migrations this database has not seen yet (`valet migrate`; the store does it at open too). */
export async function migrateApprovals(url: string): Promise<void> {
  const pool = openPgPool(url, 'valet-approvals-migrate', () => undefined);
  try {
    await migratePg(pool, 'approvals_schema_version', MIGRATIONS);
  } finally {
    await pool.end();
  }
}

/**
 * The fleet implementation of the {@link ApprovalStore} port: every state change is one
 * conditional `UPDATE … RETURNING`, so whichever instance writes first wins and the others see no
 * row; the pending limits are counted and the insert made under a transaction-scoped advisory lock
 * per tenant. A settled approval is announced with `NOTIFY valet_approvals` in the same statement
 * (delivered on commit) and every instance LISTENs, so a request held on one instance wakes when
 * an approver answers through another.
 */
export async function openPgApprovalStore(o: PgApprovalStoreOptions): Promise<ApprovalStore> {
  const pool = openPgPool(o.url, 'valet-approvals', o.onError);
  const listeners = new Set<SettledListener>();
  const announce = (id: string): void => {
    for (const l of listeners) l(id);
  };
  let listener: PgListener | undefined;
  try {
    await migratePg(pool, 'approvals_schema_version', MIGRATIONS);
    listener = await listenPg({
      url: o.url,
      channel: APPROVALS_CHANNEL,
      applicationName: `valet-approvals-listen:${o.instanceId}`.slice(0, 63),
      onNotify: announce,
      onListening: (lostAt) => {
        if (lostAt === undefined) return;
        // Notifications sent while the connection was down are lost: a held request must not hang for them.
        pool
          .query<{ id: string }>(
            `SELECT id FROM approvals WHERE instance_id = $1 AND mode = 'hold' AND status <> 'pending' AND resolved_at >= $2`,
            [o.instanceId, lostAt - CATCH_UP_MARGIN_MS],
          )
          .then((r) => r.rows.forEach((row) => announce(row.id)), (err: unknown) => o.onError(pgProblem(err)));
      },
      onError: o.onError,
    });
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw err;
  }

  const q = async (sql: string, params: unknown[]): Promise<pg.QueryResult> => pool.query(sql, params);
  /**
   * Runs a state change and NOTIFYs the ids it changed, in one statement: the notification is sent
   * on commit, to every listening instance — this one too, through its own LISTEN connection, so
   * each instance hears of each change once, in commit order.
   */
  const settle = async (update: string, params: unknown[]): Promise<string[]> => {
    const r = await q(`WITH changed AS (${update} RETURNING id) SELECT id, pg_notify('${APPROVALS_CHANNEL}', id) FROM changed`, params);
    return (r.rows as { id: string }[]).map((row) => row.id);
  };

  return {
    insert: (a, limits, now) =>
      inTransaction(pool, async (c): Promise<InsertResult> => {
        // One writer per tenant at a time: two instances cannot both take the last free place.
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`valet:approvals:${a.tenant ?? ''}`]);
        const agent = await c.query<{ n: number; next: number | null }>(
          `SELECT count(*)::int AS n, min(expires_at) AS next FROM approvals
            WHERE agent = $1 AND status = 'pending' AND tenant IS NOT DISTINCT FROM $2 AND expires_at > $3`,
          [a.agent, a.tenant, now],
        );
        const ag = agent.rows[0] as { n: number; next: number | null };
        if (ag.n >= limits.perAgent) return { ok: false, scope: 'agent', limit: limits.perAgent, retryAfterMs: (ag.next ?? now) - now };
        const tenant = await c.query<{ n: number; next: number | null }>(
          `SELECT count(*)::int AS n, min(expires_at) AS next FROM approvals WHERE tenant IS NOT DISTINCT FROM $1 AND status = 'pending' AND expires_at > $2`,
          [a.tenant, now],
        );
        const tn = tenant.rows[0] as { n: number; next: number | null };
        if (tn.n >= limits.perTenant) return { ok: false, scope: 'tenant', limit: limits.perTenant, retryAfterMs: (tn.next ?? now) - now };
        await c.query(
          `INSERT INTO approvals
            (id, request_id, mode, status, agent, tenant, "user", upstream, tool, method, path, args, args_note, rule, reason,
             approver_group, timeout_ms, created_at, expires_at, digest, policy_version, instance_id)
           VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)`,
          [
            a.id, a.requestId, a.mode, a.agent, a.tenant, a.user, a.upstream, a.tool, a.method, a.path, JSON.stringify(a.args), a.argsNote,
            a.rule, a.reason, a.group, a.timeoutMs, a.createdAt, a.expiresAt, a.digest, a.policyVersion, o.instanceId,
          ],
        );
        return { ok: true };
      }),
    get: async (id) => {
      const r = await q('SELECT * FROM approvals WHERE id = $1', [id]);
      const row = r.rows[0] as ApprovalRow | undefined;
      return row && fromRow(row);
    },
    list: async (f) => {
      const where: string[] = [];
      const params: unknown[] = [];
      for (const [column, value] of Object.entries({ status: f.status, tenant: f.tenant, agent: f.agent })) {
        if (value === undefined) continue;
        params.push(value);
        where.push(`${column} = $${params.length}`);
      }
      params.push(f.limit);
      const sql = `SELECT * FROM approvals ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id LIMIT $${params.length}`;
      return ((await q(sql, params)).rows as ApprovalRow[]).map(fromRow);
    },
    decide: async (id, to, resolver, reason, now) =>
      (
        await settle(
          `UPDATE approvals SET status = $2, resolver = $3, resolution_reason = $4, resolved_at = $5,
             expires_at = CASE WHEN $2 = 'approved' AND mode = 'async' THEN $5 + timeout_ms ELSE expires_at END
           WHERE id = $1 AND status = 'pending' AND expires_at > $5`,
          [id, to, resolver, reason, now],
        )
      ).length === 1,
    expire: async (id, now) =>
      (
        await settle(
          `UPDATE approvals SET status = 'expired', resolved_at = COALESCE(resolved_at, $2)
           WHERE id = $1 AND status IN ('pending', 'approved') AND expires_at <= $2`,
          [id, now],
        )
      ).length === 1,
    expireDue: (now) =>
      settle(
        `UPDATE approvals SET status = 'expired', resolved_at = COALESCE(resolved_at, $1)
         WHERE status IN ('pending', 'approved') AND expires_at <= $1`,
        [now],
      ),
    abort: async (id, reason, now) =>
      (
        await settle(
          `UPDATE approvals SET status = 'aborted', resolved_at = COALESCE(resolved_at, $3),
             resolution_reason = CASE WHEN resolver IS NULL THEN $2 ELSE resolution_reason END
           WHERE id = $1 AND status IN ('pending', 'approved')`,
          [id, reason, now],
        )
      ).length === 1,
    consumeAsync: async (id, b, requestId, now) =>
      (
        await q(
          `UPDATE approvals SET status = 'consumed', consumed_at = $3, consumed_request_id = $2
           WHERE id = $1 AND mode = 'async' AND status = 'approved' AND expires_at > $3
             AND agent = $4 AND tenant IS NOT DISTINCT FROM $5 AND "user" IS NOT DISTINCT FROM $6 AND digest = $7 AND rule = $8 AND approver_group = $9
           RETURNING id`,
          [id, requestId, now, b.agent, b.tenant, b.user, b.digest, b.rule, b.group],
        )
      ).rowCount === 1,
    consumeHeld: async (id, requestId, now) =>
      (
        await q(
          `UPDATE approvals SET status = 'consumed', consumed_at = $3, consumed_request_id = $2
           WHERE id = $1 AND mode = 'hold' AND status = 'approved' RETURNING id`,
          [id, requestId, now],
        )
      ).rowCount === 1,
    release: async (id, requestId) =>
      (
        await q(
          `UPDATE approvals SET status = 'approved', consumed_at = NULL, consumed_request_id = NULL
           WHERE id = $1 AND status = 'consumed' AND consumed_request_id = $2 RETURNING id`,
          [id, requestId],
        )
      ).rowCount === 1,
    abortHeld: async (reason, now) =>
      (
        await settle(
          `UPDATE approvals SET status = 'aborted', resolved_at = COALESCE(resolved_at, $2),
             resolution_reason = CASE WHEN resolver IS NULL THEN $1 ELSE resolution_reason END
           WHERE instance_id = $3 AND mode = 'hold' AND status IN ('pending', 'approved')`,
          [reason, now, o.instanceId],
        )
      ).length,
    countPending: async (now) => ((await q(`SELECT count(*)::int AS n FROM approvals WHERE status = 'pending' AND expires_at > $1`, [now])).rows[0] as { n: number }).n,
    useLink: async (nonce, approvalId, action, usedBy, now) =>
      (
        await q(
          `INSERT INTO approval_links_used (nonce, approval_id, action, used_by, used_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (nonce) DO NOTHING`,
          [nonce, approvalId, action, usedBy, now],
        )
      ).rowCount === 1,
    onSettled(l) {
      listeners.add(l);
      return () => void listeners.delete(l);
    },
    // Without its LISTEN connection this instance would not hear of decisions made on others.
    problem: () => listener?.problem(),
    close: async () => {
      listeners.clear();
      await listener?.close();
      await pool.end();
    },
  };
}
