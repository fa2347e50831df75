import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { EVENT } from '../chain.js';
import type {
  AgentActivity,
  Anchor,
  AuditFilter,
  AuditLog,
  AuditPage,
  AuditRow,
  CompletedFilter,
  CompletedRows,
  DecisionBucket,
  PruneResult,
  RetentionCutoffs,
  ShadowQuery,
  ShadowRow,
  SpendQuery,
  SpendRow,
  VerifyResult,
} from '../port.js';
import { SPEND_KEYS } from '../port.js';
import { hasFactsBatches, verifyChain } from './chain.js';
import { pruneAudit } from './core.js';
import { AUDIT_FILE, iterateAudit, openAuditDatabase, pageAudit, type AuditDatabase } from './store.js';

/** Shipping's equality filters: the option's name, and its column. */
const COMPLETED_FILTERS: readonly [keyof CompletedFilter, string][] = [
  ['agent', 'agent'],
  ['tenant', 'tenant'],
  ['user', 'user'],
  ['upstream', 'upstream'],
  ['tool', 'tool'],
  ['decision', 'decision'],
  ['rule', 'rule'],
  ['requestId', 'request_id'],
  ['status', 'status'],
];

/**
 * The audit log's read side over the SQLite database in the data directory: one connection of its
 * own (read-only for the CLI's queries), separate from the writer thread's. better-sqlite3 is
 * synchronous, so each read runs to completion on the calling thread; the promises only meet the port.
 */
export class SqliteAuditLog implements AuditLog {
  constructor(
    /** The connection (tests and benchmarks read it directly). */
    readonly db: AuditDatabase,
    private readonly dataDir: string,
  ) {}

  async page(filter: AuditFilter): Promise<AuditPage> {
    return pageAudit(this.db, filter);
  }

  async *iterate(filter: Omit<AuditFilter, 'limit' | 'order' | 'before'>, pageSize?: number): AsyncGenerator<AuditRow> {
    yield* iterateAudit(this.db, filter, pageSize);
  }

  async byRequestId(requestId: string): Promise<AuditRow | undefined> {
    return this.db.prepare('SELECT * FROM audit_log WHERE request_id = ? ORDER BY id DESC LIMIT 1').get(requestId) as AuditRow | undefined;
  }

  async columns(): Promise<string[]> {
    return this.db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all('audit_log') as string[];
  }

  async factsBatches(ids: readonly number[]): Promise<Map<number, string>> {
    const found = new Map<number, string>();
    if (ids.length === 0 || !hasFactsBatches(this.db)) return found;
    const get = this.db.prepare('SELECT sealed FROM audit_facts WHERE id = ?').pluck();
    for (const id of ids) {
      const sealed = get.get(id) as string | undefined;
      if (sealed !== undefined) found.set(id, sealed);
    }
    return found;
  }

  async verify(options: { anchors?: readonly Anchor[]; maxProblems?: number } = {}): Promise<VerifyResult> {
    return verifyChain(this.db, options);
  }

  async prune(cutoffs: RetentionCutoffs, options: { dryRun?: boolean; batchRows?: number } = {}): Promise<PruneResult> {
    if (options.dryRun) return { rows: this.countPrunable(cutoffs), compacted: 0, done: true };
    const total = { rows: 0, compacted: 0, done: false };
    // Small transactions, so a running gateway's writes never wait long for the lock.
    while (!total.done) {
      const r = pruneAudit(this.db, cutoffs, undefined, { maxRows: options.batchRows ?? 500 });
      total.rows += r.rows;
      total.compacted += r.compacted;
      total.done = r.done;
    }
    return total;
  }

  /** The rows {@link prune} would delete now: the same selection as pruneAudit's. */
  private countPrunable(cutoffs: RetentionCutoffs): number {
    const named = Object.keys(cutoffs.tenantBefore);
    let n = 0;
    if (cutoffs.defaultBefore !== null) {
      n += this.db
        .prepare(`SELECT count(*) FROM audit_log WHERE ts < ? ${named.length ? `AND (tenant IS NULL OR tenant NOT IN (${named.map(() => '?').join(', ')}))` : ''}`)
        .pluck()
        .get(cutoffs.defaultBefore, ...named) as number;
    }
    for (const [t, before] of Object.entries(cutoffs.tenantBefore)) {
      if (before !== null) n += this.db.prepare('SELECT count(*) FROM audit_log WHERE tenant = ? AND ts < ?').pluck().get(t, before) as number;
    }
    return n;
  }

  async completedAfter(cursor: number, limit: number, filter: CompletedFilter = {}): Promise<CompletedRows> {
    // The head first: rows committed between the two reads are found by the next call, never skipped.
    const head = (this.db.prepare('SELECT max(seq) FROM audit_chain').pluck().get() as number | null) ?? 0;
    const where: string[] = [];
    const params: Record<string, unknown> = { cursor, limit };
    for (const [key, column] of COMPLETED_FILTERS) {
      const v = filter[key];
      if (v === undefined) continue;
      if (column === 'decision' && v === 'none') where.push('r.decision IS NULL');
      else {
        where.push(`r.${column} = @${column}`);
        params[column] = v;
      }
    }
    const rows = this.db
      .prepare(
        `SELECT c.seq AS "valet:seq", r.* FROM audit_chain c JOIN audit_log r ON r.id = c.row_id
          WHERE c.seq > @cursor AND c.kind IN (${EVENT.outcome}, ${EVENT.record}) ${where.map((w) => `AND ${w}`).join(' ')}
          ORDER BY c.seq LIMIT @limit`,
      )
      .all(params) as (AuditRow & { 'valet:seq': number })[];
    return {
      head,
      rows: rows.map((r) => {
        const { 'valet:seq': seq, ...row } = r;
        return { seq, row: row as AuditRow };
      }),
    };
  }

  async agents(q: { sinceMs: number; tenant?: string | undefined; limit: number }): Promise<AgentActivity[]> {
    const rows = this.db
      .prepare(
        `SELECT agent, tenant, MAX(ts) AS last_seen, COUNT(*) AS requests,
                SUM(decision = 'allow') AS allow, SUM(decision = 'deny') AS deny,
                SUM(decision = 'escalate') AS escalate, SUM(decision IS NULL) AS none,
                SUM(status >= 500) AS errors
           FROM audit_log
          WHERE agent IS NOT NULL AND ts >= @since ${q.tenant === undefined ? '' : 'AND tenant = @tenant'}
          GROUP BY agent, tenant
          ORDER BY last_seen DESC
          LIMIT @limit`,
      )
      .all({ since: q.sinceMs, limit: q.limit, ...(q.tenant !== undefined && { tenant: q.tenant }) }) as {
      agent: string;
      tenant: string | null;
      last_seen: number;
      requests: number;
      allow: number;
      deny: number;
      escalate: number;
      none: number;
      errors: number;
    }[];
    return rows.map((r) => ({
      agent: r.agent,
      tenant: r.tenant,
      lastSeen: r.last_seen,
      requests: r.requests,
      decisions: { allow: r.allow, deny: r.deny, escalate: r.escalate, none: r.none },
      errors: r.errors,
    }));
  }

  async decisionCounts(q: { sinceMs: number; untilMs: number; bucketMs: number; tenant?: string | undefined }): Promise<DecisionBucket[]> {
    return this.db
      .prepare(
        `SELECT CAST((ts - @since) / @bucket AS INTEGER) AS bucket, COALESCE(decision, 'none') AS decision, COUNT(*) AS count
           FROM audit_log
          WHERE ts >= @since AND ts < @until ${q.tenant === undefined ? '' : 'AND tenant = @tenant'}
          GROUP BY bucket, decision`,
      )
      .all({ since: q.sinceMs, until: q.untilMs, bucket: q.bucketMs, ...(q.tenant !== undefined && { tenant: q.tenant }) }) as DecisionBucket[];
  }

  async spend(q: SpendQuery): Promise<SpendRow[]> {
    // A column name goes into the SQL: only the known ones.
    if (q.by !== undefined && !SPEND_KEYS.includes(q.by)) throw new RangeError(`spend: cannot group by ${String(q.by)}`);
    const where = ['tokens IS NOT NULL', 'ts >= @since'];
    const params: Record<string, unknown> = { since: q.sinceMs, limit: q.limit };
    if (q.untilMs !== undefined) {
      where.push('ts < @until');
      params['until'] = q.untilMs;
    }
    if (q.bucketMs !== undefined) params['bucket'] = q.bucketMs;
    for (const column of ['tenant', 'team', 'agent', 'upstream'] as const) {
      if (q[column] === undefined) continue;
      where.push(`${column} = @${column}`);
      params[column] = q[column];
    }
    const groups = [...(q.by === undefined ? [] : ['key']), ...(q.perTenant ? ['tenant'] : []), ...(q.bucketMs === undefined ? [] : ['bucket'])];
    // The token kinds are in the usage JSON; tokens and cost have columns of their own.
    return this.db
      .prepare(
        `SELECT ${q.by === undefined ? 'NULL' : `"${q.by}"`} AS key ${q.perTenant ? ', tenant' : ''}
                ${q.bucketMs === undefined ? '' : ', CAST((ts - @since) / @bucket AS INTEGER) AS bucket'},
                COUNT(*) AS calls, COALESCE(SUM(tokens), 0) AS tokens, COALESCE(SUM(cost), 0) AS cost,
                COALESCE(SUM(json_extract(usage, '$.input')), 0) AS input, COALESCE(SUM(json_extract(usage, '$.cached')), 0) AS cached,
                COALESCE(SUM(json_extract(usage, '$.cache_write')), 0) AS cacheWrite, COALESCE(SUM(json_extract(usage, '$.output')), 0) AS output,
                COALESCE(SUM(json_extract(usage, '$.reasoning')), 0) AS reasoning
           FROM audit_log
          WHERE ${where.join(' AND ')}
          ${groups.length === 0 ? '' : `GROUP BY ${groups.join(', ')}`}
          ORDER BY ${q.bucketMs === undefined ? '' : 'bucket, '}cost DESC, tokens DESC
          LIMIT @limit`,
      )
      .all(params) as SpendRow[];
  }

  async shadowDisagreements(q: ShadowQuery): Promise<ShadowRow[]> {
    const where = ['shadow IS NOT NULL', 'ts >= @since', "json_extract(shadow, '$.effect') IS NOT COALESCE(decision, 'none')"];
    const params: Record<string, unknown> = { since: q.sinceMs, limit: q.limit };
    if (q.untilMs !== undefined) {
      where.push('ts < @until');
      params['until'] = q.untilMs;
    }
    if (q.tenant !== undefined) {
      where.push('tenant = @tenant');
      params['tenant'] = q.tenant;
    }
    return this.db
      .prepare(
        `SELECT COALESCE(decision, 'none') AS enforced, json_extract(shadow, '$.effect') AS shadow, json_extract(shadow, '$.rules') AS rules,
                COUNT(*) AS calls, MAX(ts) AS lastMs, MAX(request_id) AS example
           FROM audit_log
          WHERE ${where.join(' AND ')}
          GROUP BY 1, 2, 3
          ORDER BY calls DESC, lastMs DESC
          LIMIT @limit`,
      )
      .all(params) as ShadowRow[];
  }

  /** Takes and releases the write lock on a separate connection that never waits for it. */
  async writable(): Promise<string> {
    let db: AuditDatabase | undefined;
    try {
      db = new Database(join(this.dataDir, AUDIT_FILE), { fileMustExist: true, timeout: 0 });
      db.exec('BEGIN IMMEDIATE; ROLLBACK;');
      return 'ok';
    } catch (err) {
      return (err as { code?: string }).code ?? 'error';
    } finally {
      db?.close();
    }
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

/**
 * Opens the audit log in `dataDir`, migrating it unless `readonly`. With `create`, a missing
 * database is created; without, undefined is returned for it (the gateway has not run there).
 */
export function openSqliteAuditLog(dataDir: string, options: { readonly?: boolean; create?: boolean; busyTimeoutMs?: number } = {}): SqliteAuditLog | undefined {
  if (!options.create && !existsSync(join(dataDir, AUDIT_FILE))) return undefined;
  const db = openAuditDatabase(dataDir, { ...(options.readonly !== undefined && { readonly: options.readonly }), ...(options.busyTimeoutMs !== undefined && { busyTimeoutMs: options.busyTimeoutMs }) });
  return new SqliteAuditLog(db, dataDir);
}
