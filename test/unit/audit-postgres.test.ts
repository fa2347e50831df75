import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AuditFilter, AuditRow, AuditWriter } from '../../gateway/audit/port.js';
import { openPgAuditLog, type PgAuditLog } from '../../gateway/audit/postgres/log.js';
import { createPool } from '../../gateway/audit/postgres/schema.js';
import { startPgAuditWriter } from '../../gateway/audit/postgres/writer.js';
import { SqliteAuditLog } from '../../gateway/audit/sqlite/log.js';
import type { AuditRecord } from '../../gateway/types.js';
import { auditFixture, record } from '../helpers/audit.js';
import { dropSchema, freshSchema, PG_URL, sql } from '../helpers/postgres.js';
import { tcpRelay, type TcpRelay } from '../helpers/relay.js';

const logger = pino({ level: 'silent' });
const schemas: string[] = [];
const closers: (() => Promise<void>)[] = [];

/** A fresh schema with a writer (instance `name`) and a reader on it. */
async function fixture(o: { schema?: string; instance?: string; url?: string; failOpen?: boolean } = {}): Promise<{ schema: string; writer: AuditWriter & { recovered: number }; log: PgAuditLog }> {
  const schema = o.schema ?? freshSchema();
  if (!schemas.includes(schema)) schemas.push(schema);
  const settings = { url: o.url ?? PG_URL, schema };
  const writer = await startPgAuditWriter({ settings, instance: o.instance ?? 'i1', logger, failOpen: o.failOpen ?? false, statementTimeoutMs: 2_000 });
  const log = (await openPgAuditLog({ url: PG_URL, schema }))!;
  closers.push(() => writer.close(), () => log.close());
  return { schema, writer, log };
}

/** A forwarded request: decision committed, then its outcome. */
async function forward(w: AuditWriter, o: Partial<AuditRecord> = {}): Promise<AuditRecord> {
  const rec = record(o);
  await w.commit(rec);
  const done = { ...rec, status: 200, upstreamStatus: 200, durationMs: 12.5, bytesOut: 321 };
  w.record(done);
  return done;
}

async function settle(w: AuditWriter, log: PgAuditLog, rows: number): Promise<void> {
  w.flush();
  for (let i = 0; i < 250; i++) {
    const r = await log.pool.query<{ n: number }>('SELECT count(*) AS n FROM audit_log WHERE status != 0');
    if ((r.rows[0]?.n ?? 0) >= rows && w.pending === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('audit rows did not arrive');
}

afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
});
afterAll(async () => {
  for (const s of schemas) await dropSchema(s);
});

describe('audit log on PostgreSQL', () => {
  it('group commit: decisions arriving together share one transaction, and the chain verifies', async () => {
    const { writer, log } = await fixture();
    const before = writer.commits;
    await Promise.all(Array.from({ length: 40 }, () => writer.commit(record())));
    expect(writer.commits - before).toBe(1);
    const v = await log.verify();
    expect(v.ok).toBe(true);
    expect(v.rows).toBe(40);
    expect(v.incomplete).toBe(40);
  });

  it('decisions arriving while a commit is in flight go together in the next transaction', async () => {
    const { writer } = await fixture();
    const before = writer.commits;
    const first = writer.commit(record());
    await new Promise((r) => setImmediate(r)); // the first transaction has started
    const rest = Array.from({ length: 20 }, () => writer.commit(record()));
    await Promise.all([first, ...rest]);
    expect(writer.commits - before).toBe(2);
  });

  it('a backlog larger than one transaction takes drains in several; completions of rows written earlier are one statement each', async () => {
    const { writer, log } = await fixture();
    // 1,500 decisions committed together, then their 1,500 outcomes and 700 refusals queued at once.
    const recs = Array.from({ length: 1_500 }, () => record());
    const before = writer.commits;
    await Promise.all(recs.map((r) => writer.commit(r)));
    expect(writer.commits - before).toBe(2); // 1,000 + 500
    for (const r of recs) writer.record({ ...r, status: 200, upstreamStatus: 200, durationMs: 3, bytesOut: 9 });
    for (let i = 0; i < 700; i++) writer.record(record({ decision: 'deny', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED' }));
    await writer.flush();
    expect(writer.pending).toBe(0);
    const v = await log.verify();
    expect(v).toMatchObject({ ok: true, rows: 2_200, incomplete: 0, problems: [] });
    const done = await log.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_log WHERE status = 200 AND outcome_seq IS NOT NULL');
    expect(done.rows[0]?.n).toBe(1_500);
  });

  it('a decision completed in its own transaction, a row pruned while its request ran, and values PostgreSQL stores otherwise all verify', async () => {
    const schema = freshSchema();
    schemas.push(schema);
    // `async`: a commit does not wait, so a decision and its outcome queued together share one transaction.
    const writer = await startPgAuditWriter({ settings: { url: PG_URL, schema }, instance: 'i1', logger, durability: 'async', statementTimeoutMs: 2_000 });
    const log = (await openPgAuditLog({ url: PG_URL, schema }))!;
    closers.push(() => writer.close(), () => log.close());
    const odd: Partial<AuditRecord> = {
      agent: 'nul\u0000in-the-middle',
      tenant: 'lone \ud800 surrogate',
      user: 'ünïcødé "quoted" \\ back\nslash',
      reason: '',
      args: JSON.stringify({ n: 1e21, s: 'x'.repeat(300) }),
      durationMs: 0.1 + 0.2,
      bytesIn: '42' as unknown as number,
      approvalAt: 1.5e12 + 0.4,
      cost: 1e-7,
      tokens: 12,
    };
    const before = writer.commits;
    const together = record(odd);
    await writer.commit(together);
    writer.record({ ...together, status: 201, upstreamStatus: 201, durationMs: 7.25, bytesOut: 5, reason: 'done' });
    await writer.flush();
    expect(writer.commits - before).toBe(1);
    const [row] = (await log.page({ limit: 1 })).rows;
    expect(row).toMatchObject({ status: 201, agent: 'nul\uFFFDin-the-middle', tenant: 'lone \uFFFD surrogate', user: odd.user, reason: 'done', bytes_in: 42, approval_at: 1500000000000, cost: 1e-7, duration_ms: 7.25 });

    // A decision whose row retention deletes before its outcome arrives: the outcome is written whole.
    const old = record({ ts: Date.now() - 10 * 86_400_000, tenant: 'gone' });
    await writer.commit(old);
    await writer.flush();
    expect((await writer.prune({ defaultBefore: null, tenantBefore: { gone: Date.now() - 86_400_000 } })).rows).toBe(1);
    writer.record({ ...old, status: 200, upstreamStatus: 200, durationMs: 1, bytesOut: 1 });
    await writer.flush();
    const rows = (await log.page({ limit: 10, order: 'asc' })).rows;
    expect(rows.map((r) => [r.request_id, r.status])).toEqual([
      [together.requestId, 201],
      [old.requestId, 200],
    ]);
    const v = await log.verify();
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ ok: true, rows: 2, incomplete: 0 });
    // A change to any of those values is found.
    await sql(schema, `UPDATE audit_log SET "user" = "user" || ' ' WHERE request_id = '${together.requestId}'`);
    expect((await log.verify()).ok).toBe(false);
  });

  it("the log's sessions commit durably in its schema and plan each statement afresh, whatever the URL's options say", async () => {
    const schema = freshSchema();
    const url = new URL(PG_URL);
    url.searchParams.set('options', '-c synchronous_commit=off -c search_path=public -c plan_cache_mode=force_generic_plan -c work_mem=8MB');
    const pool = createPool({ url: url.toString(), schema });
    try {
      const show = async (name: string): Promise<string> => ((await pool.query<Record<string, string>>(`SHOW ${name}`)).rows[0] as Record<string, string>)[name] as string;
      expect(await show('synchronous_commit')).toBe('on');
      expect(await show('plan_cache_mode')).toBe('force_custom_plan');
      expect(await show('search_path')).toBe(`"${schema}"`);
      // The URL's other settings still apply.
      expect(await show('work_mem')).toBe('8MB');
    } finally {
      await pool.end();
    }
  });

  it('two instances writing at once make one chain that verifies', async () => {
    const a = await fixture({ instance: 'a' });
    const b = await fixture({ schema: a.schema, instance: 'b' });
    await Promise.all(Array.from({ length: 30 }, (_, i) => forward(i % 2 ? a.writer : b.writer, { agent: i % 2 ? 'via-a' : 'via-b' })));
    await Promise.all([settle(a.writer, a.log, 0), settle(b.writer, b.log, 0)]);
    await a.writer.close();
    await b.writer.close();
    const v = await a.log.verify();
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ ok: true, rows: 30, incomplete: 0, events: 60 });
    const ids = (await a.log.page({ limit: 100, order: 'asc' })).rows.map((r) => r.id);
    expect(ids).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
  });

  it('a write the server refuses leaves nothing behind (the COMMIT sent behind it rolls back), and the next commit goes through', async () => {
    const { schema, writer, log } = await fixture();
    for (let i = 0; i < 2; i++) await forward(writer);
    await settle(writer, log, 2);
    // Events past seq 4 are refused: the next transaction's write fails after its head was read under the lock.
    await sql(schema, 'ALTER TABLE audit_chain ADD CONSTRAINT zz_stop CHECK (seq <= 4)');
    await expect(writer.commit(record())).rejects.toMatchObject({ code: 'VALET_ERR_AUDIT_UNAVAILABLE' });
    const head = await sql(schema, 'SELECT seq::int AS seq FROM audit_head');
    expect(head.rows[0]).toMatchObject({ seq: 4 });
    expect((await sql(schema, 'SELECT count(*)::int AS n FROM audit_log')).rows[0]).toMatchObject({ n: 2 });
    await sql(schema, 'ALTER TABLE audit_chain DROP CONSTRAINT zz_stop');
    await new Promise((r) => setTimeout(r, 100)); // the writer's back-off after the failure
    await forward(writer);
    await settle(writer, log, 3);
    const v = await log.verify();
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ ok: true, rows: 3, incomplete: 0 });
  });

  it('an integer beyond what its column stores (an upstream reporting 1e20 tokens, a status past 2^31) is written clamped, and never stops the log', async () => {
    const { writer, log } = await fixture();
    const huge = record();
    await writer.commit(huge);
    writer.record({ ...huge, status: 200, upstreamStatus: 2 ** 40, tokens: 1e20, bytesOut: 2 ** 70 });
    await writer.flush();
    const after = record({ agent: 'after' });
    await writer.commit(after);
    await writer.flush();
    const rows = (await log.page({ limit: 10, order: 'asc' })).rows;
    expect(rows.map((r) => [r.request_id, r.tokens, r.bytes_out, r.upstream_status])).toEqual([
      [huge.requestId, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, 2 ** 31 - 1],
      [after.requestId, null, 0, null],
    ]);
    expect((await log.verify()).problems).toEqual([]);
  });

  it('three instances each committing in many small transactions at once never fork the chain: each reads the head only once it holds the lock', async () => {
    const a = await fixture({ instance: 'a' });
    const b = await fixture({ schema: a.schema, instance: 'b' });
    const c = await fixture({ schema: a.schema, instance: 'c' });
    // Each writer commits one decision at a time, so every writer is in nearly every moment contending for the lock.
    const run = async (w: AuditWriter, n: number): Promise<void> => {
      for (let i = 0; i < n; i++) await forward(w, { agent: `agent-${i % 3}` });
    };
    await Promise.all([run(a.writer, 60), run(b.writer, 60), run(c.writer, 60)]);
    for (const f of [a, b, c]) await f.writer.close();
    const v = await a.log.verify();
    expect(v.problems).toEqual([]);
    expect(v).toMatchObject({ ok: true, rows: 180, incomplete: 0, events: 360 });
  });

  it('verify names an edited row, a deleted row, an inserted row and a rewritten event', async () => {
    const { schema, writer, log } = await fixture();
    for (let i = 0; i < 6; i++) await forward(writer);
    await settle(writer, log, 6);
    await writer.close();
    expect((await log.verify()).ok).toBe(true);
    await sql(schema, "UPDATE audit_log SET reason = 'nothing to see' WHERE id = 2");
    await sql(schema, 'DELETE FROM audit_log WHERE id = 4');
    await sql(schema, "INSERT INTO audit_log (id, ts, request_id, method, path, status, duration_ms, bytes_in, bytes_out, logged_at) VALUES (99, 1, 'forged', 'GET', '/', 200, 1, 0, 0, 1)");
    await sql(schema, "UPDATE audit_chain SET hash = '\\x00' WHERE seq = 11");
    const v = await log.verify();
    expect(v.ok).toBe(false);
    const messages = v.problems.map((p) => p.message).join('\n');
    expect(messages).toMatch(/row 2 does not match its hash/);
    expect(messages).toMatch(/row 4 is missing/);
    expect(messages).toMatch(/row 99 is not in the chain/);
    expect(v.problems.some((p) => p.seq === 12)).toBe(true); // the link after the rewritten hash
  });

  it('prune deletes old rows per tenant, keeps the chain verifiable, and ids are never reused', async () => {
    const { schema, writer, log } = await fixture();
    const day = 86_400_000;
    for (let i = 0; i < 4; i++) await forward(writer, { tenant: 'old', ts: Date.now() - 10 * day });
    for (let i = 0; i < 3; i++) await forward(writer, { tenant: 'kept', ts: Date.now() - 10 * day });
    await forward(writer, { tenant: 'old' });
    await settle(writer, log, 8);
    const r = await writer.prune({ defaultBefore: null, tenantBefore: { old: Date.now() - day } });
    expect(r.rows).toBe(4);
    expect(r.compacted).toBeGreaterThan(0);
    const v = await log.verify();
    expect(v.problems).toEqual([]);
    expect(v.rows).toBe(4);
    // A prune by another process (valet audit prune) shares the chain too.
    expect((await log.prune({ defaultBefore: Date.now() - day, tenantBefore: { old: null } })).rows).toBe(3);
    expect((await log.verify()).ok).toBe(true);
    await forward(writer);
    await settle(writer, log, 2);
    expect((await log.page({ limit: 1 })).rows[0]?.id).toBe(9);
    // A stub whose row was deleted without a prune covering it is named.
    await sql(schema, "UPDATE audit_chain SET ts = 1, tenant = 'x', digest = coalesce(digest, '\\x00') WHERE row_id = 9");
    await sql(schema, 'DELETE FROM audit_log WHERE id = 9');
    expect((await log.verify()).problems.map((p) => p.message).join('\n')).toMatch(/no later retention prune covers it/);
  });

  it('pages, iteration and filters return what SQLite returns for the same records', async () => {
    const { writer, log } = await fixture();
    const fx = auditFixture();
    try {
      const recs: AuditRecord[] = [];
      const t0 = Date.now() - 100_000;
      for (let i = 0; i < 24; i++) {
        recs.push(
          record({
            ts: t0 + i * 1000,
            agent: `a${i % 3}`,
            tenant: i % 2 ? 't1' : 't2',
            user: i % 4 ? null : 'u1',
            tool: i % 5 ? null : 'github.issues',
            decision: i % 7 === 0 ? null : i % 3 ? 'allow' : 'deny',
            rule: i % 3 ? 'r1' : 'r2',
            reason: i === 5 ? 'quote " backslash \\ tab \t and ü' : 'fine',
          }),
        );
      }
      for (const [i, rec] of recs.entries()) {
        const done = { ...rec, status: i % 3 ? 200 : 403, durationMs: 1.25 * i, bytesOut: i };
        if (i % 6 === 5) {
          // Refused before forwarding: written whole.
          writer.record(done);
          await settle(writer, log, 0);
          fx.core.apply([{ op: 'final', rec: done }]);
          continue;
        }
        await writer.commit(rec);
        fx.core.apply([{ op: 'decision', rec }]);
        if (i !== 23) {
          writer.record(done);
          fx.core.apply([{ op: 'final', rec: done }]);
        }
        await settle(writer, log, 0);
      }
      const sqlite = new SqliteAuditLog(fx.raw(), fx.dir);
      const strip = (rows: AuditRow[]): Partial<AuditRow>[] => rows.map(({ logged_at: _l, ...r }) => r);
      const filters: Omit<AuditFilter, 'limit'>[] = [
        {},
        { agent: 'a1' },
        { tenant: 't1', decision: 'allow' },
        { user: 'u1' },
        { tool: 'github.issues' },
        { decision: 'none' },
        { rule: 'r2', status: 403 },
        { status: 0 },
        { requestId: recs[7]!.requestId },
        { order: 'asc', after: 5 },
        { before: 10 },
      ];
      for (const f of filters) {
        const [p, s] = [await log.page({ limit: 5, ...f }), await sqlite.page({ limit: 5, ...f })];
        expect(strip(p.rows), JSON.stringify(f)).toEqual(strip(s.rows));
        expect(p.next).toBe(s.next);
      }
      const all = async (l: { iterate: SqliteAuditLog['iterate'] }): Promise<AuditRow[]> => {
        const out: AuditRow[] = [];
        for await (const r of l.iterate({ tenant: 't2' }, 3)) out.push(r);
        return out;
      };
      expect(strip(await all(log))).toEqual(strip(await all(sqlite)));
      expect(await log.columns()).toEqual(await sqlite.columns());
      const since = t0 - 1;
      expect(await log.agents({ sinceMs: since, limit: 10 })).toEqual(await sqlite.agents({ sinceMs: since, limit: 10 }));
      const counts = (b: { bucket: number; decision: string; count: number }[]): string[] => b.map((x) => `${x.bucket}/${x.decision}/${x.count}`).sort();
      const q = { sinceMs: t0, untilMs: t0 + 30_000, bucketMs: 5_000 };
      expect(counts(await log.decisionCounts(q))).toEqual(counts(await sqlite.decisionCounts(q)));
      const shipped = await log.completedAfter(0, 100, { tenant: 't1' });
      expect(shipped.rows.map((r) => r.row.id)).toEqual((await sqlite.completedAfter(0, 100, { tenant: 't1' })).rows.map((r) => r.row.id));
      expect((await log.verify()).ok).toBe(true);
    } finally {
      fx.cleanup();
    }
  });

  it('at start an instance completes its own unfinished rows as VALET_ERR_OUTCOME_UNKNOWN, never another instance’s', async () => {
    const a = await fixture({ instance: 'a' });
    const b = await fixture({ schema: a.schema, instance: 'b' });
    const ra = record();
    const rb = record();
    await a.writer.commit(ra);
    await b.writer.commit(rb);
    await a.writer.close(); // "crashed" with its request in flight
    const again = await fixture({ schema: a.schema, instance: 'a' });
    expect(again.writer.recovered).toBe(1);
    expect(await again.log.byRequestId(ra.requestId)).toMatchObject({ status: 0, error_code: 'VALET_ERR_OUTCOME_UNKNOWN' });
    expect(await again.log.byRequestId(rb.requestId)).toMatchObject({ status: 0, error_code: null });
    // b's request finishes normally afterwards.
    b.writer.record({ ...rb, status: 200 });
    await settle(b.writer, b.log, 1);
    expect(await again.log.byRequestId(rb.requestId)).toMatchObject({ status: 200 });
    const v = await again.log.verify();
    expect(v.problems).toEqual([]);
    expect(v.incomplete).toBe(0);
  });
});

describe('PostgreSQL unreachable at commit', () => {
  let relay: TcpRelay;
  beforeAll(async () => {
    relay = await tcpRelay(5432);
  });
  afterAll(() => relay.cut());

  it('a commit is refused with VALET_ERR_AUDIT_UNAVAILABLE; with fail_open it resolves', async () => {
    const url = PG_URL.replace(':5432', `:${relay.port}`);
    const closed = await fixture({ url, instance: 'x' });
    const open = await fixture({ url, instance: 'y', failOpen: true });
    await closed.writer.commit(record());
    await relay.cut();
    await expect(closed.writer.commit(record())).rejects.toMatchObject({ code: 'VALET_ERR_AUDIT_UNAVAILABLE' });
    await expect(open.writer.commit(record())).resolves.toBeUndefined();
    expect(open.writer.pending).toBeGreaterThan(0); // kept for a retry
  });
});
