import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { verifyChain } from '../../gateway/audit/sqlite/chain.js';
import { AuditCore } from '../../gateway/audit/sqlite/core.js';
import { JOURNAL_DIR } from '../../gateway/audit/sqlite/journal.js';
import { AUDIT_FILE, openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { loadConfig } from '../../gateway/config/load.js';
import { listeningPort, spawnCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, devIssuer, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const SECRET = 'sk-durability-secret';
const RULES = [
  { id: 'allow-reads', methods: ['GET'], effect: 'allow' },
  { id: 'no-writes', methods: ['POST'], effect: 'deny', reason: 'read only' },
];

describe('audit durability: kill -9 under load', () => {
  let upstream: FakeUpstream | undefined;
  let root: string | undefined;
  afterEach(async () => {
    await upstream?.close();
    if (root) rmSync(root, { recursive: true, force: true });
    upstream = undefined;
    root = undefined;
  });

  // Both append each decision to the journal before forwarding (strict: and fdatasync it; crash: in
  // the OS's cache, which a killed process cannot lose either) and write the row once at the end,
  // whether the writer runs on its own thread or inline (the default for crash on one CPU).
  it.each([
    ['strict', 'thread'],
    ['crash', 'thread'],
    ['crash', 'inline'],
    ['strict', 'inline'],
  ] as const)('%s, writer %s: every call the upstream saw has its audit row; the next writer marks unfinished ones and the chain verifies', async (durability, writer) => {
    upstream = await startFakeUpstream((_req, res) => {
      setTimeout(() => res.end('{"ok":true}'), Math.floor(Math.random() * 15));
    });
    root = mkdtempSync(join(tmpdir(), 'valet-kill-'));
    const configDir = join(root, 'config');
    const dataDir = join(root, 'data');
    mkdirSync(configDir);
    writeFileSync(join(configDir, 'gateway.yaml'), stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } }, audit: { durability, writer } }, issuers: [devIssuer] }));
    writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'api', origin: upstream.origin, connections: 64, credential: { scheme: 'bearer', secret: 'API_KEY' } }] }));
    writeFileSync(join(configDir, 'rules.yaml'), stringify({ rules: RULES }));
    const issuer = loadConfig(configDir).issuers[0]!;
    const token = await mintAgentToken(issuer, new TextEncoder().encode(DEV_SIGNING_KEY), { agent: 'loader', tenant: 'acme', ttlSeconds: 300 });

    const child = spawnCli(['start'], { env: { VALET_CONFIG: configDir, VALET_DATA: dataDir, VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, API_KEY: SECRET } });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const port = await listeningPort(child);
    child.stderr?.resume();

    const dispatcher = new Agent({ connections: 64 });
    let stop = false;
    const answered: { id: string; status: number }[] = [];
    const loop = async (i: number): Promise<void> => {
      for (let n = 0; !stop; n++) {
        try {
          const method = n % 5 === 4 ? 'POST' : 'GET';
          const r = await request(`http://127.0.0.1:${port}/api/v1/items/${i}-${n}`, { method, headers: { authorization: `Bearer ${token}` }, dispatcher });
          await r.body.text();
          answered.push({ id: r.headers['valet-request-id'] as string, status: r.statusCode });
        } catch {
          return; // the gateway is gone
        }
      }
    };
    const loops = Array.from({ length: 48 }, (_, i) => loop(i));
    const deadline = Date.now() + 15_000;
    while (upstream.requests.length < 400 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGKILL');
    stop = true;
    await exited;
    await Promise.all(loops);
    await dispatcher.destroy();
    const seen = upstream.requests.map((r) => headerValues(r, 'x-request-id')[0] as string);
    expect(seen.length).toBeGreaterThanOrEqual(400);

    // A decision is journaled before the call leaves (strict: and fdatasynced), and its row written
    // once, whole, when the call ends; the journal of the calls in flight is what the next writer
    // turns into rows.
    expect(readdirSync(join(dataDir, JOURNAL_DIR)).length, 'journal segments left by the killed gateway').toBeGreaterThan(0);
    const next = new AuditCore(dataDir);
    expect(next.recovered, 'calls in flight when the gateway was killed').toBeGreaterThan(0);
    next.close();
    expect(readdirSync(join(dataDir, JOURNAL_DIR))).toEqual([]);
    // A read-write connection runs WAL recovery for the crashed writer; nothing is changed otherwise.
    const db = openAuditDatabase(dataDir);
    const rows = new Map((db.prepare('SELECT request_id, status, decision, error_code FROM audit_log').all() as { request_id: string; status: number; decision: string; error_code: string | null }[]).map((r) => [r.request_id, r]));
    const missing = seen.filter((id) => !rows.has(id));
    expect(missing, 'forwarded calls without an audit row').toEqual([]);
    for (const id of seen) expect(rows.get(id)!.decision).toBe('allow');
    // Answered after forwarding: durable before the call left. (A refusal's row is written with the
    // next batch without the request waiting for it, so the last few may be lost to a kill -9.)
    expect(answered.filter((a) => a.status === 200 && !rows.has(a.id)), 'forwarded and answered without a row').toEqual([]);
    expect(answered.filter((a) => a.status === 403).length).toBeGreaterThan(0);
    const unfinished = [...rows.values()].filter((r) => r.status === 0).length;
    expect(unfinished, 'requests in flight when the gateway was killed').toBeGreaterThan(0);
    expect([...rows.values()].filter((r) => r.status === 0 && r.error_code !== 'VALET_ERR_OUTCOME_UNKNOWN')).toEqual([]);
    expect(verifyChain(db)).toMatchObject({ ok: true, incomplete: 0 });
    db.close();
  }, 60_000);
});

describe('audit durability: the database cannot be written', () => {
  let upstream: FakeUpstream | undefined;
  let gw: TestGateway | undefined;
  let other: Database.Database | undefined;
  afterEach(async () => {
    if (other?.inTransaction) other.exec('ROLLBACK');
    other?.close();
    await gw?.close();
    await upstream?.close();
    other = gw = upstream = undefined;
  });

  const start = async (audit: Record<string, unknown>): Promise<TestGateway> => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      gateway: { audit },
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: RULES,
      env: { API_KEY: SECRET },
    });
    return gw;
  };

  it.each(['thread', 'inline'])('another process holding the write lock: forwarded calls fail closed with 503, nothing reaches the upstream; refusals are audited once it lets go (writer: %s)', async (writer) => {
    const g = await start({ busy_timeout_ms: 100, writer });
    const token = await g.token();
    other = new Database(join(g.dataDir, AUDIT_FILE));
    other.exec('BEGIN IMMEDIATE');
    // The writer, on its thread or inline, journals each decision (durable on its own) and writes
    // rows afterwards: a call goes through until a row fails to be written; from then on, until the
    // database takes rows again, nothing is forwarded.
    const first = await request(`${g.url}/api/v1/items/first`, { headers: { authorization: `Bearer ${token}` } });
    expect(first.statusCode).toBe(200);
    await first.body.text();
    const before = 1;
    const deadline = Date.now() + 5_000;
    while (!g.logs.some((l) => l.includes('audit log not writable')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));

    const results = await Promise.all(
      Array.from({ length: 6 }, async (_, i) => {
        const r = await request(`${g.url}/api/v1/items/${i}`, { headers: { authorization: `Bearer ${token}` } });
        return { status: r.statusCode, id: r.headers['valet-request-id'] as string, body: (await r.body.json()) as { error: { code: string; message: string; request_id: string } } };
      }),
    );
    for (const r of results) {
      expect(r.status).toBe(503);
      expect(r.body.error).toMatchObject({ code: 'VALET_ERR_AUDIT_UNAVAILABLE', request_id: r.id });
      expect(r.body.error.message).toContain('SQLITE_BUSY');
    }
    expect(upstream!.requests).toHaveLength(before);
    // A request refused by policy does not wait for the database.
    const denied = await request(`${g.url}/api/v1/items`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: '{}' });
    expect(denied.statusCode).toBe(403);
    await denied.body.text();
    expect(g.logs.some((l) => l.includes('audit log not writable'))).toBe(true);

    other.exec('ROLLBACK');
    const rows = await g.waitForAudit(7 + before);
    for (const r of results) expect(rows.find((x) => x.request_id === r.id)).toMatchObject({ status: 503, error_code: 'VALET_ERR_AUDIT_UNAVAILABLE', decision: 'allow' });
    expect(rows.filter((r) => r.status === 403)).toHaveLength(1);
    expect(rows.filter((r) => r.status === 200)).toHaveLength(before);

    const ok = await request(`${g.url}/api/v1/items/after`, { headers: { authorization: `Bearer ${token}` } });
    expect(ok.statusCode).toBe(200);
    await ok.body.text();
    expect(upstream!.requests).toHaveLength(1 + before);
    await g.waitForAudit(8 + before);
    const db = new Database(join(g.dataDir, AUDIT_FILE), { readonly: true });
    expect(verifyChain(db).ok).toBe(true);
    db.close();
  });

  it('an agent that hangs up mid-upload while its decision waits for the database leaves the gateway unharmed', async () => {
    const g = await start({ busy_timeout_ms: 400 });
    const token = await g.token();
    other = new Database(join(g.dataDir, AUDIT_FILE));
    other.exec('BEGIN IMMEDIATE'); // the decision's commit now waits
    const socket = connect(g.gateway.port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.on('error', () => undefined);
    socket.write(`GET /api/v1/items/upload HTTP/1.1\r\nHost: valet\r\nAuthorization: Bearer ${token}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    await new Promise((r) => setTimeout(r, 100));
    socket.destroy(); // gone before the body ended, while the commit waits
    await new Promise((r) => setTimeout(r, 500));
    other.exec('ROLLBACK');
    const ok = await request(`${g.url}/api/v1/items/after`, { headers: { authorization: `Bearer ${token}` } });
    expect(ok.statusCode).toBe(200);
    await ok.body.text();
    expect(upstream!.requests.map((r) => r.url)).toEqual(['/v1/items/after']);
  });

  it('durability async: calls go on without waiting for their rows, which are written once the database lets go', async () => {
    const g = await start({ busy_timeout_ms: 100, durability: 'async' });
    const token = await g.token();
    other = new Database(join(g.dataDir, AUDIT_FILE));
    other.exec('BEGIN IMMEDIATE');
    const statuses = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const r = await request(`${g.url}/api/v1/items/${i}`, { headers: { authorization: `Bearer ${token}` } });
        await r.body.text();
        return r.statusCode;
      }),
    );
    expect(statuses).toEqual([200, 200, 200, 200, 200]);
    expect(upstream!.requests).toHaveLength(5);
    other.exec('ROLLBACK');
    const rows = await g.waitForAudit(5);
    expect(rows.filter((r) => r.decision === 'allow' && r.status === 200)).toHaveLength(5);
  });

  it('fail_open: true forwards anyway, logs loudly, and writes the row once it can', async () => {
    const g = await start({ busy_timeout_ms: 100, fail_open: true });
    expect(g.logs.some((l) => l.includes('fail_open is set'))).toBe(true);
    const token = await g.token();
    other = new Database(join(g.dataDir, AUDIT_FILE));
    other.exec('BEGIN IMMEDIATE');
    const r = await request(`${g.url}/api/v1/items/1`, { headers: { authorization: `Bearer ${token}` } });
    expect(r.statusCode).toBe(200);
    const id = r.headers['valet-request-id'] as string;
    await r.body.text();
    expect(upstream!.requests).toHaveLength(1);
    // The row cannot be written: said loudly as soon as the writer finds out.
    const deadline = Date.now() + 5_000;
    while (!g.logs.some((l) => l.includes('AUDIT LOG NOT WRITABLE')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(g.logs.some((l) => l.includes('AUDIT LOG NOT WRITABLE'))).toBe(true);
    const second = await request(`${g.url}/api/v1/items/2`, { headers: { authorization: `Bearer ${token}` } });
    expect(second.statusCode).toBe(200);
    await second.body.text();
    other.exec('ROLLBACK');
    const rows = await g.waitForAudit(1);
    expect(rows.find((x) => x.request_id === id)).toMatchObject({ status: 200, decision: 'allow', upstream_status: 200 });
  });
});
