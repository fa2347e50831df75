import { afterEach, describe, expect, it, vi } from 'vitest';
import type { AuditFilter } from '../../gateway/audit/port.js';
import { firstIdAtOrAfter, iterateAudit, pageAudit, queryAudit } from '../../gateway/audit/sqlite/store.js';
import { auditFixture, record, writeMix, type AuditFixture } from '../helpers/audit.js';

let fx: AuditFixture | undefined;
afterEach(() => {
  vi.useRealTimers();
  fx?.cleanup();
  fx = undefined;
});

describe('audit queries', () => {
  it('filter on every indexed column; decision "none" and status 0 select refused-early and unfinished rows', () => {
    const f = (fx = auditFixture());
    writeMix(f.core, 3, 0, { agent: 'a1', tenant: 't1', user: 'u1', upstream: 'github', tool: 'github.issues', rule: 'r1' });
    writeMix(f.core, 0, 2, { agent: 'a2', tenant: 't2', upstream: 'stripe', rule: 'no-refunds' });
    f.core.apply([{ op: 'final', rec: record({ agent: null, tenant: null, decision: null, rule: null, status: 401, errorCode: 'VALET_ERR_TOKEN_MISSING' }) }]);
    const inflight = record({ agent: 'a3' });
    f.core.apply([{ op: 'decision', rec: inflight }]);
    const db = f.raw();
    const count = (q: Omit<AuditFilter, 'limit'>): number => queryAudit(db, { limit: 100, ...q }).length;
    expect(count({})).toBe(7);
    expect(count({ agent: 'a1' })).toBe(3);
    expect(count({ tenant: 't2' })).toBe(2);
    expect(count({ user: 'u1' })).toBe(3);
    expect(count({ upstream: 'stripe' })).toBe(4); // t2's two, the 401 and the one in flight
    expect(count({ tool: 'github.issues' })).toBe(3);
    expect(count({ decision: 'deny' })).toBe(2);
    expect(count({ decision: 'none' })).toBe(1);
    expect(count({ rule: 'no-refunds' })).toBe(2);
    expect(count({ status: 403 })).toBe(2);
    expect(count({ status: 0 })).toBe(1);
    expect(count({ requestId: inflight.requestId })).toBe(1);
    expect(count({ tenant: 't1', agent: 'a2' })).toBe(0);
    expect(queryAudit(db, { limit: 2 }).map((r) => r.id)).toEqual([7, 6]);
    expect(queryAudit(db, { limit: 2, order: 'asc' }).map((r) => r.id)).toEqual([1, 2]);
  });

  it('keyset pages cover every row exactly once, even while rows are added between pages', () => {
    const f = (fx = auditFixture());
    writeMix(f.core, 0, 10);
    const db = f.raw();
    const seen: number[] = [];
    let cursor: number | undefined;
    for (;;) {
      const page = pageAudit(db, { limit: 3, before: cursor });
      seen.push(...page.rows.map((r) => r.id));
      writeMix(f.core, 0, 1); // newer rows never shift an older page
      if (page.next === null) break;
      cursor = page.next;
    }
    expect(seen).toEqual([10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    // The export iterator stops at the newest row that existed when it began.
    expect([...iterateAudit(db, {}, 4)].length).toBe(14);
  });

  it('time ranges are id ranges found by binary search over the recording time', () => {
    const f = (fx = auditFixture());
    vi.useFakeTimers({ toFake: ['Date'] });
    const t0 = Date.UTC(2026, 0, 1);
    for (let h = 0; h < 5; h++) {
      vi.setSystemTime(t0 + h * 3_600_000);
      writeMix(f.core, 1, 1); // hour h: rows 3h+1, 3h+2 (decision then refusal), completed in the same hour
    }
    const db = f.raw();
    db.prepare('DELETE FROM audit_log WHERE id IN (4, 5)').run(); // gaps must not confuse the search
    expect(firstIdAtOrAfter(db, t0)).toBe(1);
    expect(firstIdAtOrAfter(db, t0 + 3_600_000)).toBe(3);
    expect(firstIdAtOrAfter(db, t0 + 2 * 3_600_000)).toBe(6);
    expect(firstIdAtOrAfter(db, t0 + 10 * 3_600_000)).toBe(11);
    const ids = (q: Omit<AuditFilter, 'limit'>): number[] => queryAudit(db, { limit: 100, order: 'asc', ...q }).map((r) => r.id);
    expect(ids({ sinceMs: t0 + 2 * 3_600_000, untilMs: t0 + 3 * 3_600_000 })).toEqual([6, 7, 8]);
    expect(ids({ untilMs: t0 + 3_600_000 - 1 })).toEqual([1, 2]);
    expect(ids({ sinceMs: t0 + 4 * 3_600_000, decision: 'deny' })).toEqual([10]);
  });

  it('every filter is answered from an index in id order: no table scan, no sort', () => {
    const f = (fx = auditFixture());
    writeMix(f.core, 1, 1);
    const db = f.raw();
    for (const column of ['agent', 'tenant', 'user', 'upstream', 'tool', 'decision', 'rule', 'request_id', 'status']) {
      const plan = (db.prepare(`EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE ${column} = ? AND id >= ? AND id <= ? ORDER BY id DESC LIMIT 100`).all('x', 1, 9) as { detail: string }[])
        .map((r) => r.detail)
        .join('; ');
      expect(plan, column).toMatch(/^SEARCH audit_log USING INDEX audit_log_\w+ \(\w+=\? AND (rowid|id)>\? AND (rowid|id)<\?\)$/);
    }
  });

  it('decision and status together are tested in one index walk, and agree with a scan for every pair', () => {
    const f = (fx = auditFixture());
    writeMix(f.core, 6, 4); // allowed rows complete with 200, refused ones are denied with 403
    f.core.apply([{ op: 'final', rec: record({ decision: 'allow', status: 502, errorCode: 'VALET_ERR_UPSTREAM_UNREACHABLE' }) }]);
    f.core.apply([{ op: 'final', rec: record({ decision: null, rule: null, status: 401, errorCode: 'VALET_ERR_TOKEN_MISSING' }) }]);
    f.core.apply([{ op: 'decision', rec: record({ decision: 'escalate' }) }]); // in flight: status 0
    const db = f.raw();
    const all = db.prepare('SELECT id, decision, status FROM audit_log').all() as { id: number; decision: string | null; status: number }[];
    for (const decision of ['allow', 'deny', 'escalate', 'none'] as const) {
      for (const status of [0, 200, 401, 403, 502]) {
        const got = queryAudit(db, { limit: 100, order: 'asc', decision, status }).map((r) => r.id);
        const want = all.filter((r) => (decision === 'none' ? r.decision === null : r.decision === decision) && r.status === status).map((r) => r.id);
        expect(got, `${decision} + ${status}`).toEqual(want);
      }
    }
    // The statement walks one index and reads the other column from its entries: no per-entry seek.
    const prepared: string[] = [];
    const spy = new Proxy(db, { get: (t, k) => (k === 'prepare' ? (sql: string) => (prepared.push(sql), t.prepare(sql)) : Reflect.get(t, k)) });
    queryAudit(spy, { limit: 100, decision: 'deny', status: 200 });
    const sql = prepared.at(-1) as string;
    expect(sql).not.toMatch(/EXISTS/);
    const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all({ decision: 'deny', status: 200, limit: 100 }) as { detail: string }[]).map((r) => r.detail).join('; ');
    expect(plan).toMatch(/USING COVERING INDEX audit_log_(decision|status)/);
  });

  it('with several filters it walks the index of the one matching fewer rows, also when both match thousands', () => {
    const f = (fx = auditFixture());
    // Interleaved as on a gateway: two allowed requests (status 200) for every denied one (403).
    f.core.apply(
      Array.from({ length: 18_000 }, (_, i) => ({
        op: 'final' as const,
        rec: i % 3 === 2 ? record({ decision: 'deny', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED' }) : record({ status: 200, upstreamStatus: 200 }),
      })),
    );
    const db = f.raw();
    const walked = (q: Omit<AuditFilter, 'limit'>): string => {
      const prepared: string[] = [];
      const spy = new Proxy(db, { get: (t, k) => (k === 'prepare' ? (sql: string) => (prepared.push(sql), t.prepare(sql)) : Reflect.get(t, k)) });
      expect(queryAudit(spy, { limit: 100, ...q })).toEqual([]);
      return /FROM audit_log AS x INDEXED BY (audit_log_\w+)/.exec(prepared.at(-1) as string)?.[1] ?? '';
    };
    expect(walked({ decision: 'allow', status: 403 })).toBe('audit_log_status');
    expect(walked({ decision: 'deny', status: 200 })).toBe('audit_log_decision');
  });
});
