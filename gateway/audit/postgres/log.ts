import type pg from 'pg';
import { batchDigest } from '../facts.js';
import { anchorSeqs, ChainWalk, checkAnchors, EVENT, factsRefProblem, parseNote, problemList, pruneCoverage, rowDigest, verifyResult, type ChainEvent } from '../chain.js';
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
import { pruneInTransaction, readCheckpoint } from './prune.js';
import { createPool, DIGEST_COLUMNS, lockKey, migrate, migrated, ROW_COLUMNS, SELECT_ROW, type PgAuditSettings } from './schema.js';

/** How long the readiness probe waits for the chain lock (ms). */
const READY_LOCK_WAIT_MS = 500;

/** Equality filters: the filter's name and its column. */
const FILTERS: readonly [keyof CompletedFilter, string][] = [
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

/** WHERE terms for the equality filters (`decision: none` is `IS NULL`), on table alias `r`. */
function equalities(f: CompletedFilter, params: unknown[]): string[] {
  const where: string[] = [];
  for (const [key, column] of FILTERS) {
    const v = f[key];
    if (v === undefined) continue;
    if (column === 'decision' && v === 'none') where.push('r.decision IS NULL');
    else where.push(`r."${column}" = $${params.push(v)}`);
  }
  return where;
}

/** Events read per round trip while verifying. */
const VERIFY_PAGE = 2_000;

/**
 * The audit log's read side on PostgreSQL (and retention from a process other than a gateway).
 * The same filters, cursors and chain checks as the SQLite log: `logged_at` never decreases as ids
 * grow, so a time range selects the same rows either way.
 */
export class PgAuditLog implements AuditLog {
  constructor(
    readonly pool: pg.Pool,
    private readonly schema: string,
  ) {}

  async page(f: AuditFilter): Promise<AuditPage> {
    const rows = await this.query(f);
    const last = rows[rows.length - 1];
    return { rows, next: rows.length === f.limit && last !== undefined ? last.id : null };
  }

  private async query(f: AuditFilter): Promise<AuditRow[]> {
    const params: unknown[] = [];
    const where = equalities(f, params);
    if (f.after !== undefined) where.push(`r.id > $${params.push(f.after)}`);
    if (f.before !== undefined) where.push(`r.id < $${params.push(f.before)}`);
    if (f.sinceMs !== undefined) where.push(`r.logged_at >= $${params.push(f.sinceMs)}`);
    if (f.untilMs !== undefined) where.push(`r.logged_at <= $${params.push(f.untilMs)}`);
    const order = f.order === 'asc' ? 'ASC' : 'DESC';
    const sql = `SELECT ${ROW_COLUMNS.map((c) => `r."${c}"`).join(', ')} FROM audit_log r ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY r.id ${order} LIMIT $${params.push(f.limit)}`;
    return (await this.pool.query<AuditRow>(sql, params)).rows;
  }

  async *iterate(f: Omit<AuditFilter, 'limit' | 'order' | 'before'>, pageSize = 1000): AsyncGenerator<AuditRow> {
    const newest = (await this.pool.query<{ m: number | null }>('SELECT max(id) AS m FROM audit_log')).rows[0]?.m ?? 0;
    let after = f.after ?? 0;
    for (;;) {
      const rows = await this.query({ ...f, after, order: 'asc', limit: pageSize, before: newest + 1 });
      for (const r of rows) yield r;
      const last = rows[rows.length - 1];
      if (rows.length < pageSize || last === undefined) return;
      after = last.id;
    }
  }

  async byRequestId(requestId: string): Promise<AuditRow | undefined> {
    return (await this.pool.query<AuditRow>(`SELECT ${SELECT_ROW} FROM audit_log WHERE request_id = $1 ORDER BY id DESC LIMIT 1`, [requestId])).rows[0];
  }

  async columns(): Promise<string[]> {
    return [...ROW_COLUMNS];
  }

  async factsBatches(ids: readonly number[]): Promise<Map<number, string>> {
    if (ids.length === 0) return new Map();
    const r = await this.pool.query<{ id: number; sealed: string }>('SELECT id, sealed FROM audit_facts WHERE id = ANY($1::bigint[])', [ids]);
    return new Map(r.rows.map((b) => [b.id, b.sealed]));
  }

  /**
   * The checks of the SQLite verify (gateway/audit/sqlite/chain.ts), in one REPEATABLE READ
   * read-only transaction: a consistent snapshot while the instances keep writing.
   */
  async verify(o: { anchors?: readonly Anchor[]; maxProblems?: number } = {}): Promise<VerifyResult> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        return await verifyInSnapshot(client, o.anchors ?? [], o.maxProblems ?? 50);
      } finally {
        await client.query('COMMIT');
      }
    } finally {
      client.release();
    }
  }

  async prune(cutoffs: RetentionCutoffs, options: { dryRun?: boolean; batchRows?: number } = {}): Promise<PruneResult> {
    if (options.dryRun) return { rows: await this.countPrunable(cutoffs), compacted: 0, done: true };
    const total = { rows: 0, compacted: 0, done: false };
    // Small transactions: the chain lock is held only briefly, so the gateways' commits never wait long.
    while (!total.done) {
      const client = await this.pool.connect();
      try {
        await client.query('BEGIN');
        const r = await pruneInTransaction(client, this.schema, cutoffs, { maxRows: options.batchRows ?? 500 });
        await client.query('COMMIT');
        total.rows += r.rows;
        total.compacted += r.compacted;
        total.done = r.done;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      } finally {
        client.release();
      }
    }
    return total;
  }

  private async countPrunable(cutoffs: RetentionCutoffs): Promise<number> {
    const named = Object.keys(cutoffs.tenantBefore);
    let n = 0;
    if (cutoffs.defaultBefore !== null) {
      const r = await this.pool.query<{ n: number }>('SELECT count(*) AS n FROM audit_log WHERE ts < $1 AND (tenant IS NULL OR NOT (tenant = ANY($2::text[])))', [
        cutoffs.defaultBefore,
        named,
      ]);
      n += r.rows[0]?.n ?? 0;
    }
    for (const [t, before] of Object.entries(cutoffs.tenantBefore)) {
      if (before !== null) n += (await this.pool.query<{ n: number }>('SELECT count(*) AS n FROM audit_log WHERE tenant = $1 AND ts < $2', [t, before])).rows[0]?.n ?? 0;
    }
    return n;
  }

  async completedAfter(cursor: number, limit: number, filter: CompletedFilter = {}): Promise<CompletedRows> {
    // The head first. Seqs are assigned under the chain lock held until commit, so every event up
    // to it is visible to the next statement: rows committed between the two reads are found by the next call.
    const head = (await this.pool.query<{ m: number | null }>('SELECT max(seq) AS m FROM audit_chain')).rows[0]?.m ?? 0;
    const params: unknown[] = [cursor];
    const where = equalities(filter, params);
    const rows = await this.pool.query<AuditRow & { 'valet:seq': number }>(
      `SELECT c.seq AS "valet:seq", ${ROW_COLUMNS.map((c) => `r."${c}"`).join(', ')} FROM audit_chain c JOIN audit_log r ON r.id = c.row_id
        WHERE c.seq > $1 AND c.kind IN (${EVENT.outcome}, ${EVENT.record}) ${where.map((w) => `AND ${w}`).join(' ')}
        ORDER BY c.seq LIMIT $${params.push(limit)}`,
      params,
    );
    return {
      head,
      rows: rows.rows.map((r) => {
        const { 'valet:seq': seq, ...row } = r;
        return { seq, row: row as AuditRow };
      }),
    };
  }

  async agents(q: { sinceMs: number; tenant?: string | undefined; limit: number }): Promise<AgentActivity[]> {
    const params: unknown[] = [q.sinceMs, q.limit];
    const rows = await this.pool.query<{
      agent: string;
      tenant: string | null;
      last_seen: number;
      requests: number;
      allow: number;
      deny: number;
      escalate: number;
      none: number;
      errors: number;
    }>(
      `SELECT agent, tenant, max(ts) AS last_seen, count(*) AS requests,
              count(*) FILTER (WHERE decision = 'allow') AS allow, count(*) FILTER (WHERE decision = 'deny') AS deny,
              count(*) FILTER (WHERE decision = 'escalate') AS escalate, count(*) FILTER (WHERE decision IS NULL) AS none,
              count(*) FILTER (WHERE status >= 500) AS errors
         FROM audit_log
        WHERE agent IS NOT NULL AND ts >= $1 ${q.tenant === undefined ? '' : `AND tenant = $${params.push(q.tenant)}`}
        GROUP BY agent, tenant
        ORDER BY last_seen DESC
        LIMIT $2`,
      params,
    );
    return rows.rows.map((r) => ({
      agent: r.agent,
      tenant: r.tenant,
      lastSeen: r.last_seen,
      requests: r.requests,
      decisions: { allow: r.allow, deny: r.deny, escalate: r.escalate, none: r.none },
      errors: r.errors,
    }));
  }

  async decisionCounts(q: { sinceMs: number; untilMs: number; bucketMs: number; tenant?: string | undefined }): Promise<DecisionBucket[]> {
    const params: unknown[] = [q.sinceMs, q.untilMs, q.bucketMs];
    const r = await this.pool.query<DecisionBucket>(
      `SELECT ((ts - $1) / $3)::bigint AS bucket, coalesce(decision, 'none') AS decision, count(*) AS count
         FROM audit_log
        WHERE ts >= $1 AND ts < $2 ${q.tenant === undefined ? '' : `AND tenant = $${params.push(q.tenant)}`}
        GROUP BY 1, 2`,
      params,
    );
    return r.rows;
  }

  async spend(q: SpendQuery): Promise<SpendRow[]> {
    // A column name goes into the SQL: only the known ones.
    if (q.by !== undefined && !SPEND_KEYS.includes(q.by)) throw new RangeError(`spend: cannot group by ${String(q.by)}`);
    const params: unknown[] = [q.sinceMs];
    const where = ['tokens IS NOT NULL', 'ts >= $1'];
    if (q.untilMs !== undefined) where.push(`ts < $${params.push(q.untilMs)}`);
    for (const column of ['tenant', 'team', 'agent', 'upstream'] as const) {
      if (q[column] !== undefined) where.push(`${column} = $${params.push(q[column])}`);
    }
    const groups = [...(q.by === undefined ? [] : ['key']), ...(q.perTenant ? ['tenant'] : []), ...(q.bucketMs === undefined ? [] : ['bucket'])];
    // Sums as float8: sum() of bigint is numeric, which the driver would hand back as a string.
    const kind = (k: string): string => `coalesce(sum((usage::jsonb->>'${k}')::float8), 0)`;
    const r = await this.pool.query<SpendRow>(
      `SELECT ${q.by === undefined ? 'NULL::text' : `"${q.by}"`} AS key ${q.perTenant ? ', tenant' : ''}
              ${q.bucketMs === undefined ? '' : `, ((ts - $1) / $${params.push(q.bucketMs)})::bigint AS bucket`},
              count(*) AS calls, coalesce(sum(tokens), 0)::float8 AS tokens, coalesce(sum(cost), 0) AS cost,
              ${kind('input')} AS input, ${kind('cached')} AS cached, ${kind('cache_write')} AS "cacheWrite",
              ${kind('output')} AS output, ${kind('reasoning')} AS reasoning
         FROM audit_log
        WHERE ${where.join(' AND ')}
        ${groups.length === 0 ? '' : `GROUP BY ${groups.join(', ')}`}
        ORDER BY ${q.bucketMs === undefined ? '' : 'bucket, '}cost DESC, tokens DESC
        LIMIT $${params.push(q.limit)}`,
      params,
    );
    return r.rows;
  }

  async shadowDisagreements(q: ShadowQuery): Promise<ShadowRow[]> {
    const params: unknown[] = [q.sinceMs];
    const where = ['shadow IS NOT NULL', 'ts >= $1', "(shadow::jsonb->>'effect') IS DISTINCT FROM coalesce(decision, 'none')"];
    if (q.untilMs !== undefined) where.push(`ts < $${params.push(q.untilMs)}`);
    if (q.tenant !== undefined) where.push(`tenant = $${params.push(q.tenant)}`);
    const r = await this.pool.query<ShadowRow>(
      `SELECT coalesce(decision, 'none') AS enforced, shadow::jsonb->>'effect' AS shadow, (shadow::jsonb->'rules')::text AS rules,
              count(*)::float8 AS calls, max(ts)::float8 AS "lastMs", max(request_id) AS example
         FROM audit_log
        WHERE ${where.join(' AND ')}
        GROUP BY 1, 2, 3
        ORDER BY calls DESC, "lastMs" DESC
        LIMIT $${params.push(q.limit)}`,
      params,
    );
    return r.rows;
  }

  /** Whether the server answers and the log's tables are there: the readiness probe. */
  /**
   * Whether a commit could take the chain lock now: it is taken and released in a transaction that
   * waits for it at most {@link READY_LOCK_WAIT_MS} (commits hold it for milliseconds; longer means
   * a writer is stuck). The server's code when not: `55P03` (lock held), `57P01` (server stopping)...
   */
  async writable(): Promise<string> {
    let client: pg.PoolClient | undefined;
    try {
      client = await this.pool.connect();
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = ${READY_LOCK_WAIT_MS}`);
      await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(this.schema, 'chain')]);
      await client.query('SELECT seq FROM audit_head');
      await client.query('ROLLBACK');
      return 'ok';
    } catch (err) {
      await client?.query('ROLLBACK').catch(() => undefined);
      return (err as { code?: string }).code ?? 'error';
    } finally {
      client?.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

/** Checks the chain as the connection sees it (a read-only snapshot, or a transaction still writing it). */
export async function verifyInSnapshot(db: pg.PoolClient, anchors: readonly Anchor[], maxProblems: number): Promise<VerifyResult> {
  const { problems, problem } = problemList();
  const prunes = (await db.query<{ seq: number; note: string | null }>(`SELECT seq, note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq`)).rows.map((p) => ({
    seq: p.seq,
    note: parseNote(p.note),
  }));
  const covered = pruneCoverage(prunes);
  const checkpoint = await readCheckpoint(db);

  const walk = new ChainWalk(checkpoint, DIGEST_COLUMNS, covered, problem);
  const getRows = async (ids: number[]): Promise<Map<number, Record<string, unknown>>> =>
    new Map((await db.query<Record<string, unknown>>(`SELECT ${SELECT_ROW} FROM audit_log WHERE id = ANY($1::bigint[])`, [ids])).rows.map((r) => [r['id'] as number, r]));

  let after = checkpoint.seq;
  pages: for (;;) {
    const page = (
      await db.query<ChainEvent>('SELECT seq, kind, row_id, hash, ts, tenant, digest, note FROM audit_chain WHERE seq > $1 ORDER BY seq LIMIT $2', [after, VERIFY_PAGE])
    ).rows;
    if (page.length === 0) break;
    after = page[page.length - 1]!.seq;
    const rowsById = await getRows([...new Set(page.filter((e) => e.kind !== EVENT.prune).map((e) => e.row_id))]);
    for (const e of page) {
      if (problems.length >= maxProblems) break pages;
      walk.event(e, e.kind === EVENT.prune ? undefined : rowsById.get(e.row_id));
    }
  }

  const { count, pruned, liveRecords, lastSeq, lastHash, awaiting } = walk;
  let incomplete = 0;
  const waitingRows = await getRows([...awaiting.keys()]);
  for (const [rowId, a] of awaiting) {
    const row = waitingRows.get(rowId);
    if (row === undefined) continue;
    if (!rowDigest(row, DIGEST_COLUMNS).equals(a.digest)) {
      problem({ seq: a.seq, rowId, requestId: (row['request_id'] as string) ?? null, message: `row ${rowId} (no outcome recorded) does not match its decision record (edited)` });
    } else {
      incomplete++;
    }
  }

  const rows = (await db.query<{ n: number }>('SELECT count(*) AS n FROM audit_log')).rows[0]?.n ?? 0;
  if (rows !== liveRecords) {
    const strays = (
      await db.query<{ id: number; request_id: string | null; before: number | null }>(
        `SELECT r.id, r.request_id,
                (SELECT b.chain_seq FROM audit_log b WHERE b.id < r.id AND b.chain_seq IS NOT NULL ORDER BY b.id DESC LIMIT 1) AS before
           FROM audit_log r
          WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.seq = r.chain_seq AND c.row_id = r.id AND c.kind IN (${EVENT.decision}, ${EVENT.record}) AND c.seq > $1)
          ORDER BY r.id LIMIT $2`,
        [checkpoint.seq, maxProblems],
      )
    ).rows;
    for (const s of strays) {
      problem({ seq: null, rowId: s.id, requestId: s.request_id, position: (s.before ?? 0) + 0.5, message: `row ${s.id} is not in the chain (inserted)` });
    }
  }

  // Rows whose sealed facts are a batch's: the batch is there, as it was (both read a page at a time;
  // a schema older than the batches has neither).
  const digests = new Map<number, string>();
  const batched = (await db.query<{ t: boolean }>("SELECT to_regclass('audit_facts') IS NOT NULL AS t")).rows[0]?.t === true;
  for (let from = 0; batched; ) {
    const batches = (await db.query<{ id: number; sealed: string }>('SELECT id, sealed FROM audit_facts WHERE id > $1 ORDER BY id LIMIT $2', [from, VERIFY_PAGE])).rows;
    for (const b of batches) digests.set(b.id, batchDigest(b.sealed));
    if (batches.length < VERIFY_PAGE) break;
    from = batches[batches.length - 1]!.id;
  }
  refs: for (let from = 0; batched; ) {
    const rows = (
      await db.query<{ id: number; request_id: string | null; facts: string; seq: number | null }>(
        `SELECT id, request_id, facts, coalesce(outcome_seq, chain_seq) AS seq FROM audit_log WHERE id > $1 AND facts LIKE 'v2.%' ORDER BY id LIMIT $2`,
        [from, VERIFY_PAGE],
      )
    ).rows;
    for (const r of rows) {
      if (problems.length >= maxProblems) break refs;
      const p = factsRefProblem(r, digests);
      if (p !== undefined) problem(p);
    }
    if (rows.length < VERIFY_PAGE) break;
    from = rows[rows.length - 1]!.id;
  }

  const seqs = anchorSeqs(anchors, checkpoint, lastSeq);
  const stored = new Map<number, Buffer>();
  if (seqs.length > 0) {
    for (const r of (await db.query<{ seq: number; hash: Buffer }>('SELECT seq, hash FROM audit_chain WHERE seq = ANY($1::bigint[])', [seqs])).rows) stored.set(r.seq, r.hash);
  }
  const anchorsChecked = checkAnchors(anchors, checkpoint, lastSeq, stored, problem);
  return verifyResult({ problems, rows, events: count, checkpoint, last: { seq: lastSeq, hash: lastHash }, incomplete, pruned, anchors: anchorsChecked });
}

/**
 * Opens the log on PostgreSQL. With `create` (the gateway), the schema is created and migrated;
 * otherwise a database where no gateway has run yet gives undefined.
 */
export async function openPgAuditLog(settings: PgAuditSettings, o: { create?: boolean } = {}): Promise<PgAuditLog | undefined> {
  const pool = createPool(settings, { max: 4, statementTimeoutMs: 60_000 });
  try {
    if (o.create) await migrate(pool, settings.schema ?? 'public');
    else if (!(await migrated(pool))) {
      await pool.end();
      return undefined;
    }
  } catch (err) {
    await pool.end();
    throw err;
  }
  return new PgAuditLog(pool, settings.schema ?? 'public');
}
