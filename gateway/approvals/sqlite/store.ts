import type { ApprovalRecord } from '../types.js';
import type { ApprovalStore, InsertResult, SettledListener } from '../port.js';
import { fromRow, type ApprovalRow } from '../rows.js';
import { openPrivateDatabase } from '../../sqlite.js';

/**
 * Approvals live in their own SQLite file, `<data>/approvals.db`, beside the audit log (`valet.db`)
 * and the secret store (`secrets.db`). Each file has one owner of `PRAGMA user_version`, so this
 * module's migrations never meet the audit log's; the approvals module stays a leaf that knows no
 * other module's schema; and the per-request audit writer's batches never wait behind an approver's
 * write (or the reverse). The audit row of a request refers to its approval by `approval_id`.
 */
export const APPROVALS_FILE = 'approvals.db';

/** Ordered schema migrations of approvals.db; `PRAGMA user_version` records how many have run. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE approvals (
     id                  TEXT    PRIMARY KEY,
     request_id          TEXT    NOT NULL,
     mode                TEXT    NOT NULL CHECK (mode IN ('hold', 'async')),
     status              TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'aborted', 'consumed')),
     agent               TEXT    NOT NULL,
     tenant              TEXT,
     user                TEXT,
     upstream            TEXT    NOT NULL,
     tool                TEXT,
     method              TEXT    NOT NULL,
     path                TEXT    NOT NULL,
     args                TEXT    NOT NULL,
     args_note           TEXT,
     rule                TEXT    NOT NULL,
     reason              TEXT    NOT NULL,
     approver_group      TEXT    NOT NULL,
     timeout_ms          INTEGER NOT NULL,
     created_at          INTEGER NOT NULL,
     expires_at          INTEGER NOT NULL,
     digest              TEXT    NOT NULL,
     resolver            TEXT,
     resolution_reason   TEXT,
     resolved_at         INTEGER,
     consumed_at         INTEGER,
     consumed_request_id TEXT,
     policy_version      TEXT
   );
   CREATE INDEX approvals_open ON approvals (status, expires_at);
   CREATE INDEX approvals_agent ON approvals (agent, status);
   CREATE INDEX approvals_tenant ON approvals (tenant, status);
   CREATE INDEX approvals_created ON approvals (created_at);
   CREATE TABLE approval_links_used (
     nonce       TEXT    PRIMARY KEY,
     approval_id TEXT    NOT NULL,
     action      TEXT    NOT NULL,
     used_by     TEXT    NOT NULL,
     used_at     INTEGER NOT NULL
   );`,
];

/**
 * Opens (creating and migrating if needed) `<dataDir>/approvals.db` in WAL mode: the embedded
 * implementation of the {@link ApprovalStore} port. SQLite answers synchronously; the port's
 * promises are already settled when returned. Settled approvals are announced in-process only:
 * one gateway owns its data directory, and its admin plane decides through this same store.
 */
export function openSqliteApprovalStore(dataDir: string): ApprovalStore {
  const db = openPrivateDatabase(dataDir, APPROVALS_FILE, MIGRATIONS);
  const listeners = new Set<SettledListener>();
  const settled = (id: string, changed: boolean): boolean => {
    if (changed) for (const l of listeners) l(id);
    return changed;
  };

  const s = {
    insert: db.prepare(`INSERT INTO approvals
      (id, request_id, mode, status, agent, tenant, user, upstream, tool, method, path, args, args_note, rule, reason,
       approver_group, timeout_ms, created_at, expires_at, digest, policy_version)
      VALUES (@id, @requestId, @mode, 'pending', @agent, @tenant, @user, @upstream, @tool, @method, @path, @args, @argsNote, @rule, @reason,
       @group, @timeoutMs, @createdAt, @expiresAt, @digest, @policyVersion)`),
    pendingOfAgent: db.prepare(
      `SELECT count(*) AS n, min(expires_at) AS next FROM approvals WHERE agent = @agent AND status = 'pending' AND tenant IS @tenant AND expires_at > @now`,
    ),
    pendingOfTenant: db.prepare(`SELECT count(*) AS n, min(expires_at) AS next FROM approvals WHERE tenant IS @tenant AND status = 'pending' AND expires_at > @now`),
    get: db.prepare('SELECT * FROM approvals WHERE id = ?'),
    decide: db.prepare(`UPDATE approvals SET status = @to, resolver = @resolver, resolution_reason = @reason, resolved_at = @now,
        expires_at = CASE WHEN @to = 'approved' AND mode = 'async' THEN @now + timeout_ms ELSE expires_at END
      WHERE id = @id AND status = 'pending' AND expires_at > @now`),
    expire: db.prepare(`UPDATE approvals SET status = 'expired', resolved_at = COALESCE(resolved_at, @now)
      WHERE id = @id AND status IN ('pending', 'approved') AND expires_at <= @now`),
    expireDue: db.prepare(`UPDATE approvals SET status = 'expired', resolved_at = COALESCE(resolved_at, @now)
      WHERE status IN ('pending', 'approved') AND expires_at <= @now RETURNING id`),
    abort: db.prepare(`UPDATE approvals SET status = 'aborted', resolved_at = COALESCE(resolved_at, @now),
        resolution_reason = CASE WHEN resolver IS NULL THEN @reason ELSE resolution_reason END
      WHERE id = @id AND status IN ('pending', 'approved')`),
    consumeAsync: db.prepare(`UPDATE approvals SET status = 'consumed', consumed_at = @now, consumed_request_id = @requestId
      WHERE id = @id AND mode = 'async' AND status = 'approved' AND expires_at > @now
        AND agent = @agent AND tenant IS @tenant AND user IS @user AND digest = @digest AND rule = @rule AND approver_group = @group`),
    consumeHeld: db.prepare(`UPDATE approvals SET status = 'consumed', consumed_at = @now, consumed_request_id = @requestId
      WHERE id = @id AND mode = 'hold' AND status = 'approved'`),
    release: db.prepare(`UPDATE approvals SET status = 'approved', consumed_at = NULL, consumed_request_id = NULL
      WHERE id = @id AND status = 'consumed' AND consumed_request_id = @requestId`),
    abortHeld: db.prepare(`UPDATE approvals SET status = 'aborted', resolved_at = COALESCE(resolved_at, @now),
        resolution_reason = CASE WHEN resolver IS NULL THEN @reason ELSE resolution_reason END
      WHERE mode = 'hold' AND status IN ('pending', 'approved')`),
    countPending: db.prepare(`SELECT count(*) AS n FROM approvals WHERE status = 'pending' AND expires_at > ?`),
    useLink: db.prepare(`INSERT INTO approval_links_used (nonce, approval_id, action, used_by, used_at)
      VALUES (@nonce, @approvalId, @action, @usedBy, @now) ON CONFLICT (nonce) DO NOTHING`),
  };

  const insert = db.transaction((a: ApprovalRecord, limits: { perAgent: number; perTenant: number }, now: number): InsertResult => {
    const agent = s.pendingOfAgent.get({ agent: a.agent, tenant: a.tenant, now }) as { n: number; next: number | null };
    if (agent.n >= limits.perAgent) return { ok: false, scope: 'agent', limit: limits.perAgent, retryAfterMs: (agent.next ?? now) - now };
    const tenant = s.pendingOfTenant.get({ tenant: a.tenant, now }) as { n: number; next: number | null };
    if (tenant.n >= limits.perTenant) return { ok: false, scope: 'tenant', limit: limits.perTenant, retryAfterMs: (tenant.next ?? now) - now };
    s.insert.run({
      id: a.id,
      requestId: a.requestId,
      mode: a.mode,
      agent: a.agent,
      tenant: a.tenant,
      user: a.user,
      upstream: a.upstream,
      tool: a.tool,
      method: a.method,
      path: a.path,
      args: JSON.stringify(a.args),
      argsNote: a.argsNote,
      rule: a.rule,
      reason: a.reason,
      group: a.group,
      timeoutMs: a.timeoutMs,
      createdAt: a.createdAt,
      expiresAt: a.expiresAt,
      digest: a.digest,
      policyVersion: a.policyVersion,
    });
    return { ok: true };
  });

  return {
    insert: async (a, limits, now) => insert.immediate(a, limits, now),
    get: async (id) => {
      const r = s.get.get(id) as ApprovalRow | undefined;
      return r && fromRow(r);
    },
    list: async (f) => {
      const where: string[] = [];
      const params: Record<string, string | number> = { limit: f.limit };
      for (const [column, value] of Object.entries({ status: f.status, tenant: f.tenant, agent: f.agent })) {
        if (value === undefined) continue;
        where.push(`${column} = @${column}`);
        params[column] = value;
      }
      const sql = `SELECT * FROM approvals ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id LIMIT @limit`;
      return (db.prepare(sql).all(params) as ApprovalRow[]).map(fromRow);
    },
    decide: async (id, to, resolver, reason, now) => settled(id, s.decide.run({ id, to, resolver, reason, now }).changes === 1),
    expire: async (id, now) => settled(id, s.expire.run({ id, now }).changes === 1),
    expireDue: async (now) => {
      const ids = (s.expireDue.all({ now }) as { id: string }[]).map((r) => r.id);
      for (const id of ids) settled(id, true);
      return ids;
    },
    abort: async (id, reason, now) => settled(id, s.abort.run({ id, reason, now }).changes === 1),
    consumeAsync: async (id, b, requestId, now) => s.consumeAsync.run({ id, requestId, now, ...b }).changes === 1,
    consumeHeld: async (id, requestId, now) => s.consumeHeld.run({ id, requestId, now }).changes === 1,
    release: async (id, requestId) => s.release.run({ id, requestId }).changes === 1,
    abortHeld: async (reason, now) => s.abortHeld.run({ reason, now }).changes,
    countPending: async (now) => (s.countPending.get(now) as { n: number }).n,
    useLink: async (nonce, approvalId, action, usedBy, now) => s.useLink.run({ nonce, approvalId, action, usedBy, now }).changes === 1,
    onSettled(listener) {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    close: async () => {
      listeners.clear();
      db.close();
    },
  };
}
