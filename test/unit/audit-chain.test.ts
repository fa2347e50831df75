import { createHash, createSecretKey, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { anchorLine, readAnchors } from '../../gateway/audit/anchor.js';
import { EVENT, linkHash, rowDigest } from '../../gateway/audit/chain.js';
import type { Anchor } from '../../gateway/audit/port.js';
import { contentColumns, readHead, verifyChain } from '../../gateway/audit/sqlite/chain.js';
import { AuditCore, pruneAudit } from '../../gateway/audit/sqlite/core.js';
import { FactsOpener, parseBatchRef } from '../../gateway/audit/facts.js';
import { masterKeyFromBytes } from '../../gateway/secrets/crypto.js';
import { FINAL, pack, RECORD_FIELDS } from '../../gateway/audit/protocol.js';
import { openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { auditFixture, record, writeMix, type AuditFixture } from '../helpers/audit.js';

let fx: AuditFixture | undefined;
afterEach(() => {
  fx?.cleanup();
  fx = undefined;
});

const setup = (): AuditFixture => (fx = auditFixture());
const verify = (f: AuditFixture, anchors: Anchor[] = []) => verifyChain(f.raw(), { anchors });
const anchorOf = (f: AuditFixture): Anchor => {
  const h = readHead(f.raw());
  return { seq: h.seq, hash: h.hash.toString('hex'), at: Date.now() };
};
const first = (f: AuditFixture, anchors: Anchor[] = []) => {
  const r = verify(f, anchors);
  expect(r.ok).toBe(false);
  return r.problems[0]!;
};

describe('audit hash chain', () => {
  it('a log of forwarded, refused and in-flight requests verifies', () => {
    const f = setup();
    writeMix(f.core, 20, 5);
    f.core.apply([{ op: 'decision', rec: record() }]); // in flight
    const r = verify(f);
    expect(r).toMatchObject({ ok: true, rows: 26, events: 46, incomplete: 1, pruned: 0, problems: [] });
    expect(r.head.seq).toBe(46);
  });

  it('every event links to the previous one by SHA-256 over the canonical encoding', () => {
    const f = setup();
    writeMix(f.core, 1, 1);
    const db = f.raw();
    const columns = contentColumns(db);
    const events = db.prepare('SELECT * FROM audit_chain ORDER BY seq').all() as { seq: number; kind: number; row_id: number; hash: Buffer; digest: Buffer | null }[];
    expect(events.map((e) => e.kind)).toEqual([EVENT.decision, EVENT.outcome, EVENT.record]);
    let prev: Buffer = Buffer.alloc(32);
    for (const e of events) {
      const row = db.prepare('SELECT * FROM audit_log WHERE id = ?').get(e.row_id) as Record<string, unknown>;
      const digest = e.kind === EVENT.decision ? (e.digest as Buffer) : rowDigest(row, columns);
      expect(linkHash(prev, e.seq, e.kind, e.row_id, row['ts'] as number, row['tenant'] as string, digest).equals(e.hash)).toBe(true);
      prev = e.hash;
    }
    // The chain's bookkeeping columns are not content; the recording time is.
    expect(columns).not.toContain('chain_seq');
    expect(columns).toContain('logged_at');
  });

  it('the writer encodes awkward text exactly as verify does (quotes, escapes, controls, surrogates, non-ASCII)', () => {
    const f = setup();
    const awkward = ['say "hi"', 'back\\slash', 'nul\u0000 tab\t nl\n', 'line\u2028sep', 'lone \ud800 surrogate', 'naïve café 日本 🙂', '~ !#[]{}', ''];
    for (const [i, text] of awkward.entries()) {
      const rec = record({ tenant: text, agent: text, reason: text, path: `/v1/x/${i}`, durationMs: 0.1 + 0.2, bytesIn: -0 });
      f.core.apply([{ op: 'decision', rec }]);
      f.core.apply([{ op: 'final', rec: { ...rec, status: 200, errorCode: text, durationMs: 1e21 } }]);
      f.core.apply([{ op: 'final', rec: record({ user: text, args: JSON.stringify({ q: text }) }) }]);
    }
    expect(verify(f)).toMatchObject({ ok: true, problems: [] });
    // linkHash's hand-written tuple is the JSON text of the documented tuple.
    const prev = Buffer.alloc(32, 7);
    const digest = Buffer.alloc(32, 9);
    for (const tenant of [...awkward, null]) {
      for (const ts of [1_764_700_000_123, null, 0.5]) {
        const reference = createHash('sha256').update(prev).update(JSON.stringify([12, 2, 34, ts, tenant, digest.toString('hex')])).digest();
        expect(linkHash(prev, 12, 2, 34, ts, tenant, digest).equals(reference)).toBe(true);
        expect(linkHash(prev, 12, 2, 34, ts, tenant, digest.toString('hex')).equals(reference)).toBe(true);
      }
    }
  });

  it('a record crosses to the writer thread with every field in RECORD_FIELDS order', () => {
    const rec = record({ user: 'u', tool: 't', upstreamStatus: 201, errorCode: 'E', approvalId: 'a', approver: 'b', approvalReason: 'c', approvalAt: 5, args: '{}' });
    const packed = pack(FINAL, rec);
    expect(packed).toEqual([FINAL, ...RECORD_FIELDS.map((k) => rec[k])]);
    expect(new Set(RECORD_FIELDS)).toEqual(new Set(Object.keys(rec)));
    // Every field a value of its own (its name): any two swapped in pack's literal would show.
    const named = Object.fromEntries(RECORD_FIELDS.map((k) => [k, k])) as unknown as typeof rec;
    expect(pack(FINAL, named)).toEqual([FINAL, ...RECORD_FIELDS]);
    expect(pack(FINAL, named)).toHaveLength(1 + RECORD_FIELDS.length);
  });

  it('names an edited row', () => {
    const f = setup();
    const recs = writeMix(f.core, 10, 2);
    f.raw().prepare("UPDATE audit_log SET agent = 'someone-else' WHERE id = 4").run();
    const p = first(f);
    expect(p).toMatchObject({ rowId: 4, requestId: recs[3]!.requestId });
    expect(p.message).toMatch(/row 4 does not match its hash/);
  });

  it('names a row whose outcome was edited, and a row in flight that was edited', () => {
    const f = setup();
    writeMix(f.core, 5);
    f.core.apply([{ op: 'decision', rec: record() }]);
    const db = f.raw();
    db.prepare('UPDATE audit_log SET status = 201 WHERE id = 2').run();
    db.prepare('UPDATE audit_log SET status = 200 WHERE id = 6').run();
    const r = verify(f);
    expect(r.problems.map((p) => p.rowId)).toEqual([2, 6]);
    expect(r.problems[1]!.message).toMatch(/no outcome recorded\) does not match its decision record/);
  });

  it('names a deleted row', () => {
    const f = setup();
    writeMix(f.core, 10);
    f.raw().prepare('DELETE FROM audit_log WHERE id = 7').run();
    const p = first(f);
    expect(p).toMatchObject({ rowId: 7 });
    expect(p.message).toBe('row 7 is missing (deleted)');
  });

  it('names the gap when a row and its events are deleted', () => {
    const f = setup();
    writeMix(f.core, 10, 3);
    const db = f.raw();
    // Rows 1–10 are events 1–20 (decision, then outcome); row 11 is event 21.
    db.prepare('DELETE FROM audit_chain WHERE row_id = 11 AND kind = 3').run();
    db.prepare('DELETE FROM audit_log WHERE id = 11').run();
    const p = first(f);
    expect(p.message).toMatch(/^event 21 is missing/);
  });

  it('names an inserted row', () => {
    const f = setup();
    const recs = writeMix(f.core, 5, 5);
    const db = f.raw();
    const row = db.prepare('SELECT * FROM audit_log WHERE id = 3').get() as Record<string, unknown>;
    const cols = Object.keys(row).filter((c) => c !== 'id' && c !== 'chain_seq' && c !== 'outcome_seq');
    db.prepare(`INSERT INTO audit_log (id, ${cols.join(', ')}) VALUES (100, ${cols.map(() => '?').join(', ')})`).run(...cols.map((c) => (c === 'request_id' ? 'forged' : row[c])));
    const p = first(f);
    expect(p).toMatchObject({ rowId: 100, requestId: 'forged', seq: null });
    expect(p.message).toBe('row 100 is not in the chain (inserted)');
    expect(recs).toHaveLength(10);
  });

  it('names the first of two reordered rows', () => {
    const f = setup();
    writeMix(f.core, 0, 8);
    const db = f.raw();
    const cols = (db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all('audit_log') as string[]).filter((c) => !['id', 'chain_seq', 'outcome_seq'].includes(c));
    const a = db.prepare('SELECT * FROM audit_log WHERE id = 3').get() as Record<string, unknown>;
    const b = db.prepare('SELECT * FROM audit_log WHERE id = 4').get() as Record<string, unknown>;
    const set = db.prepare(`UPDATE audit_log SET ${cols.map((c) => `${c} = @${c}`).join(', ')} WHERE id = @id`);
    const pick = (r: Record<string, unknown>, id: number) => ({ ...Object.fromEntries(cols.map((c) => [c, r[c]])), id });
    db.transaction(() => {
      set.run(pick(b, 3));
      set.run(pick(a, 4));
    })();
    const r = verify(f);
    expect(r.problems.map((p) => p.rowId)).toEqual([3, 4]);
  });

  it('names reordered events', () => {
    const f = setup();
    writeMix(f.core, 0, 6);
    const db = f.raw();
    db.transaction(() => {
      db.prepare('UPDATE audit_chain SET seq = -1 WHERE seq = 3').run();
      db.prepare('UPDATE audit_chain SET seq = 3 WHERE seq = 4').run();
      db.prepare('UPDATE audit_chain SET seq = 4 WHERE seq = -1').run();
    })();
    const p = first(f);
    expect(p.seq).toBe(3);
  });

  it('truncation of the newest rows passes without an anchor and is caught with one', () => {
    const f = setup();
    writeMix(f.core, 10, 2);
    const anchor = anchorOf(f);
    const db = f.raw();
    db.prepare('DELETE FROM audit_log WHERE id > 10').run();
    db.prepare('DELETE FROM audit_chain WHERE seq > 20').run();
    expect(verify(f).ok).toBe(true); // the remaining chain is intact: exactly why anchors exist
    const p = first(f, [anchor]);
    expect(p.message).toMatch(/the chain ends at event 20, but the anchor .* records event 22: the newest events were removed \(truncated\)/);
  });

  it('a history rewritten with recomputed hashes is caught by an anchor', () => {
    const f = setup();
    writeMix(f.core, 0, 6);
    const anchor = anchorOf(f);
    const db = f.raw();
    db.prepare("UPDATE audit_log SET decision = 'allow', status = 200 WHERE id = 2").run();
    // Recompute every hash from the edited row on, as an attacker who knows the algorithm would.
    const columns = contentColumns(db);
    let prev: Buffer = Buffer.alloc(32);
    for (const e of db.prepare('SELECT * FROM audit_chain ORDER BY seq').all() as { seq: number; kind: number; row_id: number }[]) {
      const row = db.prepare('SELECT * FROM audit_log WHERE id = ?').get(e.row_id) as Record<string, unknown>;
      const h = linkHash(prev, e.seq, e.kind, e.row_id, row['ts'] as number, row['tenant'] as string, rowDigest(row, columns));
      db.prepare('UPDATE audit_chain SET hash = ? WHERE seq = ?').run(h, e.seq);
      prev = h;
    }
    expect(verify(f).ok).toBe(true);
    const p = first(f, [anchor]);
    expect(p.message).toMatch(/event 6 differs from the anchor .*: the chain was rewritten up to that point/);
  });

  it('signed anchors: an edited anchor line fails its HMAC', () => {
    const f = setup();
    writeMix(f.core, 2);
    const a = anchorOf(f);
    const file = join(f.dir, 'anchors.ndjson');
    writeFileSync(file, `${anchorLine(a, 'k'.repeat(32))}\n${anchorLine({ ...a, seq: a.seq - 1 }, 'k'.repeat(32)).replace(/"seq":\d+/, '"seq":2')}\n`);
    const read = readAnchors(file, 'k'.repeat(32));
    expect(read.anchors).toHaveLength(1);
    expect(read.problems).toEqual([expect.stringMatching(/:2: the anchor's signature does not verify/)]);
    expect(readAnchors(file, 'another-key-another-key-another!').problems).toHaveLength(2);
  });
});

describe('audit retention', () => {
  const day = 86_400_000;

  it('pruning keeps the chain verifiable, per tenant, and compacts its front', () => {
    const f = setup();
    const old = Date.now() - 40 * day;
    writeMix(f.core, 5, 5, { ts: old, tenant: 'acme' });
    writeMix(f.core, 5, 0, { ts: old, tenant: 'globex' });
    writeMix(f.core, 3, 3, { ts: old, tenant: null });
    writeMix(f.core, 4, 1, { tenant: 'acme' });
    const now = Date.now();
    // acme keeps 30 days, globex keeps everything, everyone else 90 days: only acme's old rows go.
    let r = f.core.prune({ defaultBefore: now - 90 * day, tenantBefore: { acme: now - 30 * day, globex: null } });
    expect(r).toMatchObject({ rows: 10, done: true });
    expect(r.compacted).toBe(15); // acme's rows were written first: 5 decisions, 5 outcomes, 5 records
    let v = verify(f);
    expect(v).toMatchObject({ ok: true, rows: 16 });
    expect(v.checkpoint.seq).toBe(15);
    // The default shortens to 30 days: the untenanted rows go; they sit behind globex's, so they stay as stubs.
    r = f.core.prune({ defaultBefore: now - 30 * day, tenantBefore: { acme: now - 30 * day, globex: null } });
    expect(r.rows).toBe(6);
    v = verify(f);
    expect(v).toMatchObject({ ok: true, rows: 10, pruned: 9 });
    // Writing continues on the same chain.
    writeMix(f.core, 2, 2);
    expect(verify(f).ok).toBe(true);
  });

  it("a commit's request facts are one sealed batch per tenant: verify checks each, retention deletes one with its last row, a failed commit writes none", () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-audit-facts-'));
    const key = masterKeyFromBytes(randomBytes(32));
    const failed: string[] = [];
    const core = new AuditCore(dir, { facts: { key, failed: (id) => failed.push(id) } });
    try {
      const old = Date.now() - 40 * day;
      const recs = [record({ tenant: 'acme', ts: old }), record({ tenant: 'globex', ts: old }), record({ tenant: 'acme', ts: old }), record({ tenant: 'acme' })];
      recs.forEach((r, i) => (r.factsPlain = `{"n":${i}}`));
      core.applyPacked(recs.map((r) => pack(FINAL, r)));
      const db = new Database(join(dir, 'valet.db'));
      const rows = db.prepare('SELECT request_id, tenant, facts FROM audit_log ORDER BY id').all() as { request_id: string; tenant: string; facts: string }[];
      const refs = rows.map((r) => parseBatchRef(r.facts)!);
      // acme's three rows share one batch (lines 0, 1, 2); globex's row has a batch of its own.
      expect(refs.map((r) => r.line)).toEqual([0, 0, 1, 2]);
      expect(new Set(refs.map((r) => r.batchId)).size).toBe(2);
      expect(refs[0]!.batchId).toBe(refs[2]!.batchId);
      expect(db.prepare('SELECT id, rows FROM audit_facts ORDER BY id').all()).toEqual([
        { id: refs[0]!.batchId, rows: 3 },
        { id: refs[1]!.batchId, rows: 1 },
      ]);
      const opener = new FactsOpener(key, (id) => db.prepare('SELECT sealed FROM audit_facts WHERE id = ?').pluck().get(id) as string | undefined);
      rows.forEach((r, i) => expect(opener.open(r.request_id, r.facts)).toBe(`{"n":${i}}`));
      expect(verifyChain(db)).toMatchObject({ ok: true, rows: 4 });

      // A batch changed behind the writer's back is named; put back, the log verifies again.
      const sealed = db.prepare('SELECT sealed FROM audit_facts WHERE id = ?').pluck().get(refs[1]!.batchId) as string;
      db.prepare('UPDATE audit_facts SET sealed = ? WHERE id = ?').run(`${sealed.slice(0, -2)}AA`, refs[1]!.batchId);
      expect(verifyChain(db).problems.map((p) => p.message)).toEqual([`row 2's sealed request facts do not match: batch ${refs[1]!.batchId} was altered`]);
      db.prepare('UPDATE audit_facts SET sealed = ? WHERE id = ?').run(sealed, refs[1]!.batchId);
      expect(verifyChain(db).ok).toBe(true);

      // acme's old rows go, its new one stays: its batch stays (one row left); globex's goes with its row.
      core.prune({ defaultBefore: Date.now() - 30 * day, tenantBefore: { globex: Date.now() - 30 * day } });
      expect(db.prepare('SELECT id, rows FROM audit_facts ORDER BY id').all()).toEqual([{ id: refs[0]!.batchId, rows: 1 }]);
      expect(verifyChain(db)).toMatchObject({ ok: true, rows: 1 });
      core.prune({ defaultBefore: Date.now() + day, tenantBefore: {} });
      expect(db.prepare('SELECT count(*) FROM audit_facts').pluck().get()).toBe(0);

      // A commit that fails writes no batch, and leaves its ops as they were: the retry seals them again.
      const later = [record({ tenant: 'acme' })];
      later[0]!.factsPlain = '{"n":9}';
      const ops = later.map((r) => pack(FINAL, r));
      db.exec('BEGIN IMMEDIATE');
      expect(() => core.applyPacked(ops)).toThrow();
      db.exec('ROLLBACK');
      expect(db.prepare('SELECT count(*) FROM audit_facts').pluck().get()).toBe(0);
      core.applyPacked(ops);
      const row = db.prepare('SELECT request_id, facts FROM audit_log').get() as { request_id: string; facts: string };
      expect(opener.open(row.request_id, row.facts)).toBe('{"n":9}');
      expect(failed).toEqual([]);
      db.close();
    } finally {
      core.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a batch that cannot be sealed leaves its rows without facts, and says which (never what)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-audit-facts-'));
    const failed: [string, string][] = [];
    const core = new AuditCore(dir, { facts: { key: { id: '0123456789abcdef', facts: createSecretKey(Buffer.alloc(3)) }, failed: (id, err) => failed.push([id, (err as Error).message]) } });
    try {
      const rec = record();
      rec.factsPlain = '{"secret":"cus_private_4242"}';
      core.applyPacked([pack(FINAL, rec)]);
      expect(core.db.prepare('SELECT facts FROM audit_log').pluck().all()).toEqual([null]);
      expect(failed).toHaveLength(1);
      expect(failed[0]![0]).toBe(rec.requestId);
      expect(failed[0]![1]).not.toContain('cus_private_4242');
    } finally {
      core.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a row deleted and dressed up as a pruned stub, with no prune covering it, is named', () => {
    const f = setup();
    writeMix(f.core, 0, 5);
    const db = f.raw();
    const row = db.prepare('SELECT * FROM audit_log WHERE id = 3').get() as Record<string, unknown>;
    db.prepare('UPDATE audit_chain SET ts = ?, tenant = ?, digest = ? WHERE row_id = 3').run(row['ts'], row['tenant'], rowDigest(row, contentColumns(db)));
    db.prepare('DELETE FROM audit_log WHERE id = 3').run();
    const p = first(f);
    expect(p).toMatchObject({ rowId: 3 });
    expect(p.message).toMatch(/was removed, but no later retention prune covers it/);
  });

  it('ids are never reused, even after every row was pruned', () => {
    const f = setup();
    writeMix(f.core, 0, 4, { ts: Date.now() - 10 * day });
    expect(f.core.prune({ defaultBefore: Date.now() - day, tenantBefore: {} }).rows).toBe(4);
    writeMix(f.core, 0, 1);
    expect(f.raw().prepare('SELECT id FROM audit_log').pluck().all()).toEqual([5]);
    expect(verify(f).ok).toBe(true);
  });

  it('a prune from another connection (valet audit prune) and the writer share one chain', () => {
    const f = setup();
    writeMix(f.core, 3, 3, { ts: Date.now() - 10 * day });
    const other = openAuditDatabase(f.dir);
    try {
      expect(pruneAudit(other, { defaultBefore: Date.now() - day, tenantBefore: {} }).rows).toBe(6);
    } finally {
      other.close();
    }
    writeMix(f.core, 2, 2); // reads the head the other connection left
    expect(verify(f).ok).toBe(true);
  });

  it('an in-flight request whose row was pruned is recorded whole when it finishes', () => {
    const f = setup();
    const rec = record({ ts: Date.now() - 10 * day });
    f.core.apply([{ op: 'decision', rec }]);
    f.core.prune({ defaultBefore: Date.now() - day, tenantBefore: {} });
    f.core.apply([{ op: 'final', rec: { ...rec, status: 200 } }]);
    expect(f.raw().prepare('SELECT request_id, status FROM audit_log').all()).toEqual([{ request_id: rec.requestId, status: 200 }]);
    expect(verify(f).ok).toBe(true);
  });
});

describe('audit schema', () => {
  it('rows written before the chain existed are chained when the database is upgraded', () => {
    const f = setup();
    f.core.close();
    const file = join(f.dir, 'valet.db');
    const db = new Database(file);
    // Roll back to the schema of version 2 (before approvals and the chain) with two rows in it.
    db.exec(`DROP TABLE audit_log; DROP TABLE audit_chain; DROP TABLE audit_facts;
      CREATE TABLE audit_log (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, request_id TEXT NOT NULL, agent TEXT, tenant TEXT, user TEXT,
        upstream TEXT, method TEXT NOT NULL, path TEXT NOT NULL, decision TEXT, rule TEXT, reason TEXT, status INTEGER NOT NULL,
        upstream_status INTEGER, error_code TEXT, duration_ms REAL NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, policy_version TEXT);
      CREATE INDEX audit_log_ts ON audit_log (ts); CREATE INDEX audit_log_request_id ON audit_log (request_id);
      ALTER TABLE audit_log ADD COLUMN tool TEXT;
      INSERT INTO audit_log (ts, request_id, method, path, status, duration_ms, bytes_in, bytes_out) VALUES (2000, 'a', 'GET', '/x', 200, 1.5, 0, 10), (1000, 'b', 'GET', '/y', 403, 0.5, 0, 0);
      PRAGMA user_version = 2;`);
    db.close();
    const upgraded = openAuditDatabase(f.dir);
    try {
      expect(upgraded.prepare('SELECT id, logged_at, chain_seq FROM audit_log ORDER BY id').all()).toEqual([
        { id: 1, logged_at: 2000, chain_seq: 1 },
        { id: 2, logged_at: 2000, chain_seq: 2 },
      ]);
      expect(verifyChain(upgraded)).toMatchObject({ ok: true, rows: 2, events: 2 });
    } finally {
      upgraded.close();
    }
  });
});

describe('audit writer start-up', () => {
  it('rows a killed gateway left in flight are completed as VALET_ERR_OUTCOME_UNKNOWN by the next writer', async () => {
    const f = setup();
    const { AuditCore } = await import('../../gateway/audit/sqlite/core.js');
    const rec = record();
    f.core.apply([{ op: 'decision', rec }]);
    // A second writer while the first still runs (two gateways on one directory) leaves it alone.
    const second = new AuditCore(f.dir);
    expect(second.recovered).toBe(0);
    second.close();
    // The first one "dies" (its lock goes with it); the next writer completes the row.
    f.core.close();
    const next = new AuditCore(f.dir);
    try {
      expect(next.recovered).toBe(1);
      const row = f.raw().prepare('SELECT status, error_code, outcome_seq FROM audit_log WHERE request_id = ?').get(rec.requestId);
      expect(row).toEqual({ status: 0, error_code: 'VALET_ERR_OUTCOME_UNKNOWN', outcome_seq: 2 });
      expect(verifyChain(f.raw())).toMatchObject({ ok: true, incomplete: 0 });
    } finally {
      next.close();
    }
  });
});
