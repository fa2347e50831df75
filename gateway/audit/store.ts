import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { AuditRecord } from '../types.js';

export type AuditDatabase = Database.Database;

/** Ordered schema migrations; `PRAGMA user_version` records how many have run. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE audit_log (
     id              INTEGER PRIMARY KEY,
     ts              INTEGER NOT NULL,
     request_id      TEXT    NOT NULL,
     agent           TEXT,
     tenant          TEXT,
     user            TEXT,
     upstream        TEXT,
     method          TEXT    NOT NULL,
     path            TEXT    NOT NULL,
     decision        TEXT,
     rule            TEXT,
     reason          TEXT,
     status          INTEGER NOT NULL,
     upstream_status INTEGER,
     error_code      TEXT,
     duration_ms     REAL    NOT NULL,
     bytes_in        INTEGER NOT NULL,
     bytes_out       INTEGER NOT NULL,
     policy_version  TEXT
   );
   CREATE INDEX audit_log_ts ON audit_log (ts);
   CREATE INDEX audit_log_request_id ON audit_log (request_id);`,
  `ALTER TABLE audit_log ADD COLUMN tool TEXT;`,
];

export const AUDIT_FILE = 'valet.db';

/** Opens (creating and migrating if needed) the audit database in WAL mode. */
export function openAuditDatabase(dataDir: string, options: { readonly?: boolean } = {}): AuditDatabase {
  if (!options.readonly) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const db = new Database(join(dataDir, AUDIT_FILE), { readonly: options.readonly ?? false, fileMustExist: options.readonly ?? false });
  db.pragma('busy_timeout = 5000');
  if (options.readonly) return db;
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  const current = db.pragma('user_version', { simple: true }) as number;
  db.transaction(() => {
    for (let v = current; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v] as string);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  })();
  return db;
}

export interface AuditRow {
  id: number;
  ts: number;
  request_id: string;
  agent: string | null;
  tenant: string | null;
  user: string | null;
  upstream: string | null;
  tool: string | null;
  method: string;
  path: string;
  decision: string | null;
  rule: string | null;
  reason: string | null;
  status: number;
  upstream_status: number | null;
  error_code: string | null;
  duration_ms: number;
  bytes_in: number;
  bytes_out: number;
  policy_version: string | null;
}

export interface AuditFilter {
  limit: number;
  agent?: string | undefined;
  tenant?: string | undefined;
  upstream?: string | undefined;
  decision?: string | undefined;
  requestId?: string | undefined;
  sinceMs?: number | undefined;
}

/** The most recent rows matching the filter, newest first. */
export function queryAudit(db: AuditDatabase, f: AuditFilter): AuditRow[] {
  const where: string[] = [];
  const params: Record<string, string | number> = { limit: f.limit };
  const eq = { agent: f.agent, tenant: f.tenant, upstream: f.upstream, decision: f.decision, request_id: f.requestId };
  for (const [column, value] of Object.entries(eq)) {
    if (value !== undefined) {
      where.push(`${column} = @${column}`);
      params[column] = value;
    }
  }
  if (f.sinceMs !== undefined) {
    where.push('ts >= @since');
    params['since'] = f.sinceMs;
  }
  const sql = `SELECT * FROM audit_log ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT @limit`;
  return db.prepare(sql).all(params) as AuditRow[];
}

/** Column values for one record, in insert order. */
export function toRow(r: AuditRecord): unknown[] {
  return [
    r.ts, r.requestId, r.agent, r.tenant, r.user, r.upstream, r.tool, r.method, r.path, r.decision, r.rule, r.reason,
    r.status, r.upstreamStatus, r.errorCode, r.durationMs, r.bytesIn, r.bytesOut, r.policyVersion,
  ];
}

export const INSERT_SQL = `INSERT INTO audit_log
  (ts, request_id, agent, tenant, user, upstream, tool, method, path, decision, rule, reason,
   status, upstream_status, error_code, duration_ms, bytes_in, bytes_out, policy_version)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`;
