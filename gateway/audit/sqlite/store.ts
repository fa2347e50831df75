import { join } from 'node:path';
import Database from 'better-sqlite3';
import { EVENT, linkHash, rowDigest } from '../chain.js';
import type { AuditFilter, AuditPage, AuditRow } from '../port.js';
import { privateDir, privateFile } from '../../private-files.js';
import { contentColumns, readHead } from './chain.js';

export type AuditDatabase = Database.Database;

/** Ordered schema migrations; `PRAGMA user_version` records how many have run. */
/**
 * The hash chain (gateway/audit/chain.ts), the recording time and the query indexes.
 * - `logged_at`: when the writer recorded the row (ms), never decreasing with `id`, so a time range
 *   becomes an id range (a binary search) and every filtered query walks one index in id order.
 * - `chain_seq` / `outcome_seq`: the row's events in `audit_chain` (bookkeeping, not hashed).
 * - one index per filter column, partial where the column is often NULL (SQLite uses a partial
 *   index `WHERE c IS NOT NULL` for `c = ?`); each ends in the rowid, which serves `ORDER BY id`
 *   and keyset cursors on id without sorting (a later migration adds a column after the id to
 *   two of them, see `COVERS`).
 * Rows written before the chain existed are chained once, here (see {@link chainLegacyRows}).
 */
const CHAIN_MIGRATION = `ALTER TABLE audit_log ADD COLUMN logged_at INTEGER;
   ALTER TABLE audit_log ADD COLUMN chain_seq INTEGER;
   ALTER TABLE audit_log ADD COLUMN outcome_seq INTEGER;
   CREATE TABLE audit_chain (
     seq    INTEGER PRIMARY KEY,
     row_id INTEGER NOT NULL,
     kind   INTEGER NOT NULL,
     hash   BLOB    NOT NULL,
     ts     INTEGER,
     tenant TEXT,
     digest BLOB,
     note   TEXT
   );
   CREATE INDEX audit_chain_prune ON audit_chain (seq) WHERE kind = 4;
   CREATE INDEX audit_log_agent ON audit_log (agent) WHERE agent IS NOT NULL;
   CREATE INDEX audit_log_tenant ON audit_log (tenant) WHERE tenant IS NOT NULL;
   CREATE INDEX audit_log_user ON audit_log (user) WHERE user IS NOT NULL;
   CREATE INDEX audit_log_upstream ON audit_log (upstream) WHERE upstream IS NOT NULL;
   CREATE INDEX audit_log_tool ON audit_log (tool) WHERE tool IS NOT NULL;
   CREATE INDEX audit_log_decision ON audit_log (decision) WHERE decision IS NOT NULL;
   CREATE INDEX audit_log_rule ON audit_log (rule) WHERE rule IS NOT NULL;
   CREATE INDEX audit_log_status ON audit_log (status);`;

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
  // Human approvals: the approval a request was parked under or executed with, who decided, why, when.
  `ALTER TABLE audit_log ADD COLUMN approval_id TEXT;
   ALTER TABLE audit_log ADD COLUMN approver TEXT;
   ALTER TABLE audit_log ADD COLUMN approval_reason TEXT;
   ALTER TABLE audit_log ADD COLUMN approval_at INTEGER;
   CREATE INDEX audit_log_approval_id ON audit_log (approval_id) WHERE approval_id IS NOT NULL;`,
  CHAIN_MIGRATION,
  // The arguments a tool's `audit_args` keep (JSON), see gateway/audit/args.ts.
  `ALTER TABLE audit_log ADD COLUMN args TEXT;`,
  // Decision and status each carry the other after the id (see COVERS below).
  `DROP INDEX audit_log_decision;
   CREATE INDEX audit_log_decision ON audit_log (decision, id, status) WHERE decision IS NOT NULL;
   DROP INDEX audit_log_status;
   CREATE INDEX audit_log_status ON audit_log (status, id, decision);`,
  // The upstream's own request id, beside Valet's (a null column is left out of a row's digest, so
  // rows written before verify as they did).
  `ALTER TABLE audit_log ADD COLUMN upstream_request_id TEXT;`,
  // The RFC 8693 delegation chain, as JSON (null for calls without one, left out of the digest).
  `ALTER TABLE audit_log ADD COLUMN act TEXT;`,
  // An MCP message's JSON-RPC method, id and session, as JSON (null for other calls).
  `ALTER TABLE audit_log ADD COLUMN rpc TEXT;`,
  // The agent's team, and what an LLM call used: its model, tokens, cost and usage by kind (JSON).
  `ALTER TABLE audit_log ADD COLUMN team TEXT;
   ALTER TABLE audit_log ADD COLUMN model TEXT;
   ALTER TABLE audit_log ADD COLUMN tokens INTEGER;
   ALTER TABLE audit_log ADD COLUMN cost REAL;
   ALTER TABLE audit_log ADD COLUMN usage TEXT;`,
  // What the rules in shadow mode would have decided (JSON), beside the enforced decision.
  `ALTER TABLE audit_log ADD COLUMN shadow TEXT;`,
  // What the decision was made on, sealed (gateway/audit/facts.ts), for `valet policy replay`.
  `ALTER TABLE audit_log ADD COLUMN facts TEXT;`,
  // What response rules did to the answer (JSON).
  `ALTER TABLE audit_log ADD COLUMN response TEXT;`,
  // Request facts sealed one batch per commit and tenant (gateway/audit/facts.ts, `v2`), which rows'
  // `facts` refer to; `rows`: how many rows still do, so retention deletes a batch with its last row.
  `CREATE TABLE audit_facts (id INTEGER PRIMARY KEY AUTOINCREMENT, rows INTEGER NOT NULL, sealed TEXT NOT NULL);`,
];

export const AUDIT_FILE = 'valet.db';

/**
 * Opens (creating and migrating if needed) the audit database in WAL mode with
 * `synchronous = FULL`: a commit returns only once the WAL is fsynced, so a committed row survives
 * a crash or power loss, not only a process kill.
 */
export function openAuditDatabase(dataDir: string, options: { readonly?: boolean; busyTimeoutMs?: number } = {}): AuditDatabase {
  if (!options.readonly) {
    privateDir(dataDir);
    privateFile(join(dataDir, AUDIT_FILE));
  }
  const db = new Database(join(dataDir, AUDIT_FILE), { readonly: options.readonly ?? false, fileMustExist: options.readonly ?? false });
  db.pragma(`busy_timeout = ${options.busyTimeoutMs ?? 5000}`);
  if (options.readonly) return db;
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current < MIGRATIONS.length) {
    db.transaction(() => {
      for (let v = current; v < MIGRATIONS.length; v++) {
        db.exec(MIGRATIONS[v] as string);
        if (MIGRATIONS[v] === CHAIN_MIGRATION) chainLegacyRows(db);
      }
      db.pragma(`user_version = ${MIGRATIONS.length}`);
    }).immediate();
  }
  return db;
}

/**
 * Rows written before the hash chain existed get `record` events now, in id order, and a
 * recording time (their `ts`, made non-decreasing). The chain proves nothing about what happened
 * to them before this moment; from now on they are covered like every other row.
 */
function chainLegacyRows(db: AuditDatabase): void {
  const columns = contentColumns(db);
  let head = readHead(db);
  let loggedAt = 0;
  const setRow = db.prepare('UPDATE audit_log SET logged_at = ?, chain_seq = ? WHERE id = ?');
  const addEvent = db.prepare('INSERT INTO audit_chain (seq, row_id, kind, hash) VALUES (?, ?, ?, ?)');
  const page = db.prepare('SELECT * FROM audit_log WHERE id > ? ORDER BY id LIMIT 10000');
  let after = 0;
  for (;;) {
    const rows = page.all(after) as Record<string, unknown>[];
    if (rows.length === 0) return;
    for (const row of rows) {
      const id = row['id'] as number;
      after = id;
      loggedAt = Math.max(loggedAt, row['ts'] as number);
      row['logged_at'] = loggedAt;
      const seq = head.seq + 1;
      const h = linkHash(head.hash, seq, EVENT.record, id, row['ts'] as number, (row['tenant'] as string | null) ?? null, rowDigest(row, columns));
      setRow.run(loggedAt, seq, id);
      addEvent.run(seq, id, EVENT.record, h);
      head = { seq, hash: h };
    }
  }
}

/** Equality filters, by column. Every one is indexed. */
export const FILTER_COLUMNS = ['agent', 'tenant', 'user', 'upstream', 'tool', 'decision', 'rule', 'request_id', 'status'] as const;
export type FilterColumn = (typeof FILTER_COLUMNS)[number];

/** The smallest and largest row id, or undefined when the log is empty. */
function idBounds(db: AuditDatabase): { lo: number; hi: number } | undefined {
  // Two subqueries: SQLite answers min() or max() alone from the primary key, but both together by a scan.
  const b = db.prepare('SELECT (SELECT min(id) FROM audit_log) AS lo, (SELECT max(id) FROM audit_log) AS hi').get() as { lo: number | null; hi: number | null };
  return b.lo === null || b.hi === null ? undefined : { lo: b.lo, hi: b.hi };
}

/**
 * The smallest id recorded at or after `t` (ms), or the largest id + 1 when none was. `logged_at`
 * never decreases as ids grow, so this is a binary search over the primary key (~20 lookups for a
 * million rows) and needs no index of its own.
 */
export function firstIdAtOrAfter(db: AuditDatabase, t: number): number {
  const bounds = idBounds(db);
  if (bounds === undefined) return 1;
  const first = db.prepare('SELECT id, logged_at FROM audit_log WHERE id >= ? ORDER BY id LIMIT 1');
  const rowAt = (x: number): { id: number; logged_at: number | null } | undefined => first.get(x) as { id: number; logged_at: number | null } | undefined;
  // g(x): the first row at or after id x was recorded at or after t (or there is none); monotone in x.
  let lo = bounds.lo;
  let hi = bounds.hi + 1;
  while (lo < hi) {
    const mid = lo + Math.floor((hi - lo) / 2);
    const r = rowAt(mid);
    if (r === undefined || (r.logged_at ?? 0) >= t) hi = mid;
    else lo = r.id + 1;
  }
  return rowAt(lo)?.id ?? bounds.hi + 1;
}

/**
 * Columns an index carries after the id, which a query walking that index tests in the entry
 * itself. Decision and status each take few values and match many rows, so a query on both that
 * matches nothing (`decision = deny` and `status = 200`: 140,000 and 800,000 of 1,000,000 rows)
 * would otherwise seek the other index once per entry walked (~100 ms); read from the entry it is
 * one sequential pass (~14 ms). The price: an outcome, which sets the status, rewrites the row's
 * decision entry too.
 */
const COVERS: Readonly<Record<string, readonly string[]>> = { decision: ['status'], status: ['decision'] };

/** How many index entries {@link drivingFilter} reads, at most, for each filter. */
const ESTIMATE_CAP = 5_000;

/**
 * With several equality filters, the one whose index to walk: the filter matching the fewest rows
 * in the id range. Each filter's newest matches are read from its index, up to
 * {@link ESTIMATE_CAP} entries (index-only, about a millisecond): fewer than that is the exact
 * count; otherwise the id span those entries cover gives the filter's density, and the count
 * over the whole range is estimated from it (a filter that needs a wider span to reach the cap
 * matches fewer rows). SQLite's own statistics hold one average per index, which cannot tell a
 * rare agent from a common tenant, and gathering them (ANALYZE) would hold the write lock for
 * seconds on a large log; reading the values asked for is close to exact.
 */
function drivingFilter(db: AuditDatabase, candidates: readonly string[], params: Record<string, string | number>, range: string, rangeSize: number): string {
  let best = candidates[0] as string;
  let bestEstimate = Infinity;
  for (const column of candidates) {
    const r = db
      .prepare(
        `SELECT count(*) AS n, min(id) AS oldest, max(id) AS newest FROM (SELECT x.id FROM audit_log AS x INDEXED BY audit_log_${column} WHERE x.${column} = @${column} ${range} ORDER BY x.id DESC LIMIT ${ESTIMATE_CAP})`,
      )
      .get(params) as { n: number; oldest: number | null; newest: number | null };
    const estimate = r.n < ESTIMATE_CAP ? r.n : (r.n * rangeSize) / ((r.newest as number) - (r.oldest as number) + 1);
    if (estimate < bestEstimate) {
      best = column;
      bestEstimate = estimate;
    }
  }
  return best;
}

function buildQuery(db: AuditDatabase, f: AuditFilter): { sql: string; params: Record<string, string | number> } {
  const params: Record<string, string | number> = { limit: f.limit };
  const eq: Record<FilterColumn, string | number | undefined> = {
    agent: f.agent,
    tenant: f.tenant,
    user: f.user,
    upstream: f.upstream,
    tool: f.tool,
    decision: f.decision,
    rule: f.rule,
    request_id: f.requestId,
    status: f.status,
  };
  const equal: string[] = [];
  const other: string[] = [];
  for (const [column, value] of Object.entries(eq)) {
    if (value === undefined) continue;
    if (column === 'decision' && value === 'none') {
      other.push('decision IS NULL');
      continue;
    }
    equal.push(column);
    params[column] = value;
  }
  // Time and cursors become one id range, which every index above serves in id order.
  let lo = f.after === undefined ? undefined : f.after + 1;
  let hi = f.before === undefined ? undefined : f.before - 1;
  if (f.sinceMs !== undefined) lo = Math.max(lo ?? 0, firstIdAtOrAfter(db, f.sinceMs));
  if (f.untilMs !== undefined) hi = Math.min(hi ?? Number.MAX_SAFE_INTEGER, firstIdAtOrAfter(db, f.untilMs + 1) - 1);
  const range: string[] = [];
  if (lo !== undefined) {
    range.push('x.id >= @lo');
    params['lo'] = lo;
  }
  if (hi !== undefined) {
    range.push('x.id <= @hi');
    params['hi'] = hi;
  }
  const order = f.order === 'asc' ? 'ASC' : 'DESC';
  if (equal.length <= 1) {
    const where = [...equal.map((c) => `x.${c} = @${c}`), ...other.map((o) => `x.${o}`), ...range];
    return { sql: `SELECT x.* FROM audit_log AS x ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY x.id ${order} LIMIT @limit`, params };
  }
  // Several filters: walk the most selective one's index, and test each candidate against the
  // other filters' indexes (a seek on (value, id) each), so only the rows returned are read from
  // the table. Index-only checks keep "no row matches both" cheap: a table read per candidate is
  // what makes such a query slow.
  const bounds = idBounds(db) ?? { lo: 0, hi: 0 };
  const rangeSize = Math.max(1, Math.min(hi ?? Infinity, bounds.hi) - Math.max(lo ?? 0, bounds.lo) + 1);
  const drive = drivingFilter(db, equal, params, range.map((r) => `AND ${r}`).join(' '), rangeSize);
  const covered = COVERS[drive] ?? [];
  const where = [
    `x.${drive} = @${drive}`,
    ...equal
      .filter((c) => c !== drive)
      .map((c) => (covered.includes(c) ? `x.${c} = @${c}` : `EXISTS (SELECT 1 FROM audit_log AS y INDEXED BY audit_log_${c} WHERE y.${c} = @${c} AND y.id = x.id)`)),
    ...other.map((o) => `x.${o}`),
    ...range,
  ];
  const ids = `SELECT x.id FROM audit_log AS x INDEXED BY audit_log_${drive} WHERE ${where.join(' AND ')} ORDER BY x.id ${order} LIMIT @limit`;
  return { sql: `SELECT * FROM audit_log WHERE id IN (${ids}) ORDER BY id ${order}`, params };
}

/** The rows matching the filter, newest first unless `order: 'asc'`. */
export function queryAudit(db: AuditDatabase, f: AuditFilter): AuditRow[] {
  const { sql, params } = buildQuery(db, f);
  return db.prepare(sql).all(params) as AuditRow[];
}

/** One page of {@link queryAudit}, with the cursor for the next (keyset on id: stable while rows are added). */
export function pageAudit(db: AuditDatabase, f: AuditFilter): AuditPage {
  const rows = queryAudit(db, f);
  const last = rows[rows.length - 1];
  return { rows, next: rows.length === f.limit && last !== undefined ? last.id : null };
}

/**
 * Every row matching the filter, oldest first, read one page at a time (keyset on id), so memory
 * stays flat however many rows match. Stops at the newest row that existed when it started.
 */
export function* iterateAudit(db: AuditDatabase, f: Omit<AuditFilter, 'limit' | 'order' | 'before'>, pageSize = 1000): Generator<AuditRow> {
  const newest = (db.prepare('SELECT max(id) FROM audit_log').pluck().get() as number | null) ?? 0;
  let after = f.after ?? 0;
  for (;;) {
    const rows = queryAudit(db, { ...f, after, order: 'asc', limit: pageSize, untilMs: f.untilMs, before: newest + 1 });
    for (const r of rows) yield r;
    const last = rows[rows.length - 1];
    if (rows.length < pageSize || last === undefined) return;
    after = last.id;
  }
}
