import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { EVENT } from '../../gateway/audit/chain.js';
import { verifyChain } from '../../gateway/audit/sqlite/chain.js';
import { JOURNAL_DIR } from '../../gateway/audit/sqlite/journal.js';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

// A decision is journaled before its call is forwarded and the call's row is written once, whole,
// when it ends (gateway/audit/sqlite/journal.ts); a call running longer than a second shows as a
// decision row in flight. The kill -9 side is in audit-durability.test.ts.
describe.each([
  ['strict', 'thread'],
  ['crash', 'thread'],
  ['async', 'thread'],
  ['strict', 'inline'],
  ['crash', 'inline'],
  ['async', 'inline'],
] as const)('audit rows at durability %s, writer %s: one row write per call', (durability, writer) => {
  let gw: TestGateway | undefined;
  let upstream: FakeUpstream | undefined;
  afterEach(async () => {
    await gw?.close();
    await upstream?.close();
    gw = undefined;
    upstream = undefined;
  });

  const start = async (): Promise<TestGateway> => {
    upstream = await startFakeUpstream((req, res) => {
      const wait = req.url?.includes('slow') ? 1_800 : 0;
      setTimeout(() => res.end('{"ok":true}'), wait);
    });
    gw = await startTestGateway({
      gateway: { audit: { durability, writer } },
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'allow-reads', methods: ['GET'], effect: 'allow' }],
      env: { API_KEY: 'sk-journal-secret' },
    });
    return gw;
  };

  const events = (g: TestGateway): { kind: number; row_id: number }[] => {
    const db = new Database(join(g.dataDir, AUDIT_FILE), { readonly: true });
    try {
      return db.prepare('SELECT kind, row_id FROM audit_chain ORDER BY seq').all() as { kind: number; row_id: number }[];
    } finally {
      db.close();
    }
  };

  it('the "valet listening" log line names where the writer runs', async () => {
    const g = await start();
    const line = g.logs.find((l) => l.includes('"msg":"valet listening"'));
    expect(line, 'the listening line').toBeDefined();
    expect(JSON.parse(line as string)).toMatchObject({ auditWriter: writer });
  });

  it('a call that ends within a second is one row and one chain event; its sealed facts hold no plaintext anywhere on disk', async () => {
    const g = await start();
    const token = await g.token();
    const marker = 'plaintext-marker-7f3a9c';
    for (let i = 0; i < 5; i++) {
      const r = await request(`${g.url}/api/v1/items/${marker}-${i}?q=${marker}`, { headers: { authorization: `Bearer ${token}` } });
      expect(r.statusCode).toBe(200);
      await r.body.text();
    }
    const rows = await g.waitForAudit(5);
    expect(rows.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    // One sealed batch per commit (gateway/audit/facts.ts, v2): each row refers to its line.
    for (const r of rows) expect(r.facts).toMatch(/^v2\.[1-9][0-9]*\.[0-9]+\.[A-Za-z0-9_-]{43}$/);
    // Each row was inserted once, complete: a `record` event, no decision then outcome.
    const chain = events(g);
    expect(chain.map((e) => e.kind)).toEqual(rows.map(() => EVENT.record));
    const db = new Database(join(g.dataDir, AUDIT_FILE), { readonly: true });
    expect(verifyChain(db)).toMatchObject({ ok: true, incomplete: 0 });
    db.close();
    // The encoded facts (`{"v":1,"decision":...,"argsRead":...}`) exist only sealed: not in the
    // journal, the database or its WAL.
    const dir = join(g.dataDir, JOURNAL_DIR);
    const onDisk = (): string[] => [
      ...(durability === 'async' ? [] : readdirSync(dir).map((f) => readFileSync(join(dir, f), 'latin1'))),
      ...readdirSync(g.dataDir).filter((f) => f.startsWith(AUDIT_FILE)).map((f) => readFileSync(join(g.dataDir, f), 'latin1')),
    ];
    for (const text of onDisk()) {
      expect(text).not.toContain('"argsRead"');
      expect(text).not.toContain('factsPlain');
    }
    await g.close({ keep: true });
    // Every decision has its row: the journal is gone once the gateway stops.
    if (durability !== 'async') expect(readdirSync(dir)).toEqual([]);
    for (const text of onDisk()) expect(text).not.toContain('"argsRead"');
    const after = new Database(join(g.dataDir, AUDIT_FILE), { readonly: true });
    const facts = after.prepare('SELECT facts FROM audit_log').pluck().all() as string[];
    after.close();
    expect(facts).toHaveLength(5);
    for (const f of facts) expect(f).not.toContain(marker);
    gw = undefined;
  });

  it('a call running past a second shows as a decision row in flight, completed by its outcome', async () => {
    const g = await start();
    const token = await g.token();
    const pending = request(`${g.url}/api/v1/items/slow`, { headers: { authorization: `Bearer ${token}` } });
    // Past the hold (1 s) the decision is written as a row with status 0.
    let inFlight: { status: number; decision: string } | undefined;
    const deadline = Date.now() + 5_000;
    while (inFlight === undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      const db = new Database(join(g.dataDir, AUDIT_FILE), { readonly: true });
      inFlight = db.prepare("SELECT status, decision FROM audit_log WHERE path LIKE '%slow'").get() as typeof inFlight;
      db.close();
    }
    expect(inFlight).toEqual({ status: 0, decision: 'allow' });
    const r = await pending;
    expect(r.statusCode).toBe(200);
    await r.body.text();
    const rows = await g.waitForAudit(1);
    expect(rows[0]).toMatchObject({ status: 200, upstream_status: 200, decision: 'allow' });
    expect(events(g).map((e) => e.kind)).toEqual([EVENT.decision, EVENT.outcome]);
  });
});
