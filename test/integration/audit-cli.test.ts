import { createSocket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { anchorLine } from '../../gateway/audit/anchor.js';
import { openAuditBackend } from '../../gateway/audit/backend.js';
import type { AuditLog } from '../../gateway/audit/port.js';
import { readCursor, ship } from '../../gateway/audit/ship.js';
import { urlSchema } from '../../gateway/postgres.js';
import { auditDeployment, type AuditDeployment } from '../helpers/audit.js';
import { backendEnv } from '../helpers/backends.js';
import { runCli } from '../helpers/cli.js';

const DAY = 86_400_000;

/** The log a CLI command given `VALET_DATA: dir` reads, opened in this process. */
async function openLog(dir: string): Promise<AuditLog> {
  const url = backendEnv(dir)['VALET_POSTGRES_URL'];
  const log = await openAuditBackend({ dataDir: dir, readonly: true, postgres: url === undefined ? undefined : { url, schema: urlSchema(url) } });
  if (log === undefined) throw new Error('no audit log');
  return log;
}

/** A syslog collector on TCP that reads RFC 6587 octet-counted frames. */
async function tcpCollector(o: { dropFirst?: boolean } = {}): Promise<{ port: number; messages: string[]; connections: number; close(): Promise<void> }> {
  const messages: string[] = [];
  const sockets = new Set<Socket>();
  let connections = 0;
  const server: Server = createServer((s) => {
    sockets.add(s);
    connections++;
    const mine = connections;
    let buf = Buffer.alloc(0);
    s.on('data', (chunk: Buffer) => {
      if (o.dropFirst && mine === 1) {
        s.destroy(); // the collector restarts mid-batch
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        const sp = buf.indexOf(0x20);
        if (sp < 0) break;
        const len = Number(buf.subarray(0, sp).toString('ascii'));
        expect(buf.subarray(0, sp).toString('ascii')).toMatch(/^[1-9]\d*$/); // MSG-LEN = NONZERO-DIGIT *DIGIT
        if (buf.length < sp + 1 + len) break;
        messages.push(buf.subarray(sp + 1, sp + 1 + len).toString('utf8'));
        buf = buf.subarray(sp + 1 + len);
      }
    });
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    messages,
    get connections() {
      return connections;
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const RFC5424 = /^<\d{1,3}>1 \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z \S+ valet - audit (-|\[.+\])( .*)?$/s;

describe('valet audit (CLI)', () => {
  let fx: AuditDeployment;
  const env = (): Record<string, string> => ({ VALET_DATA: fx.dir });

  beforeAll(async () => {
    fx = await auditDeployment();
    await fx.writeMix(6, 2, { tenant: 'acme', ts: Date.now() - 40 * DAY });
    await fx.writeMix(3, 1, { tenant: 'globex' });
  });
  afterAll(() => fx.cleanup());

  it('lists rows with filters and a cursor; table, JSON and CSV', async () => {
    const table = await runCli(['audit', '--tenant', 'globex', '--limit', '2'], { env: env() });
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^TIME\s+REQUEST\s+AGENT\s+TENANT/);
    expect(lines).toHaveLength(3);
    expect(table.stderr).toMatch(/^\(more: --cursor (\d+)\)$/m);
    const cursor = /--cursor (\d+)/.exec(table.stderr)![1]!;
    const next = await runCli(['audit', '--tenant', 'globex', '--cursor', cursor, '--format', 'json'], { env: env() });
    const rows = JSON.parse(next.stdout) as { tenant: string; id: number }[];
    expect(rows.map((r) => r.tenant)).toEqual(['globex', 'globex']);
    expect(rows.every((r) => r.id < Number(cursor))).toBe(true);
    const csv = await runCli(['audit', '--decision', 'deny', '--format', 'csv'], { env: env() });
    expect((parse(csv.stdout, { columns: true }) as { decision: string }[]).map((r) => r.decision)).toEqual(['deny', 'deny', 'deny']);
    const bad = await runCli(['audit', '--since', 'yesterday'], { env: env() });
    expect(bad.code).toBe(2);
  });

  it('export streams every matching row, oldest first', async () => {
    const out = join(fx.dir, 'export.csv');
    const r = await runCli(['audit', 'export', '--format', 'csv', '--tenant', 'acme', '--output', out], { env: env() });
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(`8 row(s) written to ${out}\n`);
    // --since/--until select by recording time (logged_at): every row here was recorded just now.
    const nd = await runCli(['audit', 'export', '--format', 'ndjson', '--since', '1h', '--decision', 'deny'], { env: env() });
    expect(nd.stdout.trimEnd().split('\n').map((l) => (JSON.parse(l) as { tenant: string }).tenant)).toEqual(['acme', 'acme', 'globex']);
    const old = await runCli(['audit', 'export', '--format', 'ndjson', '--until', '1d'], { env: env() });
    expect(old.stdout).toBe('');
    const none = await runCli(['audit', 'export'], { env: env() });
    expect(none.code).toBe(2);
  });

  it('verify passes, then names the first edited row and exits 1; an anchor catches truncation', async () => {
    const ok = await runCli(['audit', 'verify'], { env: env() });
    expect(ok.stdout).toMatch(/^ok: 12 row\(s\), events 1–21, head [0-9a-f]{16}…; 0 without an outcome .* no anchor file/);
    expect(ok.code).toBe(0);

    const h = await fx.head();
    const anchors = join(fx.dir, 'anchors.ndjson');
    writeFileSync(anchors, `${anchorLine({ seq: h.seq, hash: h.hash, at: Date.now() }, 'k'.repeat(40))}\n`);
    const signed = await runCli(['audit', 'verify', '--anchor', anchors], { env: { ...env(), VALET_AUDIT_ANCHOR_KEY: 'k'.repeat(40) } });
    expect(signed.stdout).toMatch(/1 anchor\(s\) checked from .* \(signatures verified\)/);
    const wrongKey = await runCli(['audit', 'verify', '--anchor', anchors], { env: { ...env(), VALET_AUDIT_ANCHOR_KEY: 'x'.repeat(40) } });
    expect(wrongKey.code).toBe(1);
    expect(wrongKey.stdout).toMatch(/signature does not verify/);

    const requestId = (await fx.exec('SELECT request_id FROM audit_log WHERE id = 5'))[0]?.['request_id'] as string;
    await fx.exec("UPDATE audit_log SET decision = 'deny' WHERE id = 5");
    await fx.exec('UPDATE audit_log SET bytes_out = 0 WHERE id = 9');
    // Row 5's content is covered by its outcome event: rows 1–6 are decisions 1–6 and outcomes 7–12.
    const edited = await runCli(['audit', 'verify'], { env: env() });
    expect(edited.code).toBe(1);
    expect(edited.stdout).toContain(`FAILED: 2 problem(s); the first:\n  event 11: row 5 does not match its hash`);
    expect(edited.stdout).toContain(`(request ${requestId})`);
    await fx.exec("UPDATE audit_log SET decision = 'allow' WHERE id = 5");
    await fx.exec('UPDATE audit_log SET bytes_out = 321 WHERE id = 9');

    await fx.exec('DELETE FROM audit_log WHERE id = 12');
    await fx.exec('DELETE FROM audit_chain WHERE seq = 21');
    expect((await runCli(['audit', 'verify'], { env: env() })).code).toBe(0);
    const truncated = await runCli(['audit', 'verify', '--anchor', anchors], { env: env() });
    expect(truncated.code).toBe(1);
    expect(truncated.stdout).toMatch(/the chain ends at event 20, but the anchor of .* records event 21: the newest events were removed \(truncated\)/);
  });
});

describe('valet audit prune (CLI)', () => {
  let fx: AuditDeployment | undefined;
  afterEach(() => fx?.cleanup());

  it('deletes rows past retention per tenant; the chain still verifies', async () => {
    const f = (fx = await auditDeployment());
    await f.writeMix(4, 2, { tenant: 'acme', ts: Date.now() - 40 * DAY });
    await f.writeMix(4, 2, { tenant: 'globex', ts: Date.now() - 40 * DAY });
    await f.writeMix(2, 0, { tenant: 'acme' });
    await f.stop();
    const dry = await runCli(['audit', 'prune', '--days', '30', '--tenant-days', 'globex=keep', '--dry-run'], { env: { VALET_DATA: f.dir } });
    expect(dry.stdout).toBe('would delete 6 row(s)\n');
    const r = await runCli(['audit', 'prune', '--days', '30', '--tenant-days', 'globex=keep'], { env: { VALET_DATA: f.dir } });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('deleted 6 row(s); 10 chain event(s) compacted\n');
    const v = await runCli(['audit', 'verify'], { env: { VALET_DATA: f.dir } });
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^ok: 8 row\(s\), events 11–/);
  });
});

describe('valet audit ship', () => {
  let fx: AuditDeployment;
  beforeAll(async () => {
    fx = await auditDeployment();
    await fx.writeMix(3, 2);
  });
  afterAll(() => fx.cleanup());

  it('ships RFC 5424 over TCP with octet counting, resuming from the cursor file (CLI)', async () => {
    const c = await tcpCollector();
    const cursor = join(fx.dir, 'ship.cursor');
    try {
      const first = await runCli(['audit', 'ship', '--to', `tcp://127.0.0.1:${c.port}`, '--cursor-file', cursor, '--once', '--hostname', 'gw-1'], { env: { VALET_DATA: fx.dir } });
      expect(first.stderr).toContain('5 row(s) shipped; cursor at event 8');
      expect(first.code).toBe(0);
      expect(c.messages).toHaveLength(5);
      for (const m of c.messages) expect(m).toMatch(RFC5424);
      expect(c.messages[0]).toMatch(/^<110>1 \S+ gw-1 valet - audit \[valet@32473 id="1" request_id="[0-9a-f-]{36}" agent="agent-1" tenant="acme"/);
      expect(readCursor(cursor)).toBe(8);

      await fx.writeMix(1, 1); // a forwarded request still in flight is shipped when it completes
      const again = await runCli(['audit', 'ship', '--to', `tcp://127.0.0.1:${c.port}`, '--cursor-file', cursor, '--once', '--format', 'cef'], { env: { VALET_DATA: fx.dir } });
      expect(again.stderr).toContain('2 row(s) shipped; cursor at event 11');
      expect(c.messages).toHaveLength(7);
      expect(c.messages[5]).toMatch(/^<110>1 \S+ \S+ valet - audit - CEF:0\|Valet\|Valet Gateway\|0\.1\.0\|valet:request:allow\|/);
    } finally {
      await c.close();
    }
  });

  it('reconnects with backoff when the collector drops the connection, and sends the batch again', async () => {
    const c = await tcpCollector({ dropFirst: true });
    const log = await openLog(fx.dir);
    try {
      const logs: string[] = [];
      const r = await ship(log, { to: new URL(`tcp://127.0.0.1:${c.port}`), format: 'syslog', once: true, confirmMs: 300, log: (m) => logs.push(m) });
      expect(r.shipped).toBe(7);
      expect(c.connections).toBe(2);
      expect(c.messages.length).toBe(7); // everything arrived on the second connection
      expect(logs).toContain('7 row(s) sent on a connection that broke are sent again');
    } finally {
      await log.close();
      await c.close();
    }
  });

  it('ships one RFC 5424 message per UDP datagram', async () => {
    const socket = createSocket('udp4');
    const got: string[] = [];
    socket.on('message', (m) => got.push(m.toString('utf8')));
    await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
    const log = await openLog(fx.dir);
    try {
      const r = await ship(log, { to: new URL(`udp://127.0.0.1:${socket.address().port}`), format: 'syslog', once: true, filter: { decision: 'deny' } });
      expect(r.shipped).toBe(3);
      const deadline = Date.now() + 2000;
      while (got.length < 3 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 10));
      expect(got).toHaveLength(3);
      for (const m of got) expect(m).toMatch(RFC5424);
      for (const m of got) expect(m).toContain(' decision="deny" ');
    } finally {
      await log.close();
      socket.close();
    }
  });

  it('rows of the database are untouched by shipping', async () => {
    expect(Number((await fx.exec('SELECT count(*) AS n FROM audit_log'))[0]?.['n'])).toBe(7);
  });
});
