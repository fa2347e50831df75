/**
 * `valet migrate`: the schema step of a fleet's deploy. Against real PostgreSQL, two runs at once
 * (as two instances starting together would) both succeed and migrate once; nothing prints the URL.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { stringify } from 'yaml';
import { generateMasterKeyText } from '../../gateway/secrets/crypto.js';
import { runCli } from '../helpers/cli.js';
import { devIssuer, startTestGateway, type TestGatewayOptions } from '../helpers/gateway.js';
import { pgSchemas, type PgSchemas } from '../helpers/postgres.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, payAndVaultGateway, startReceivers, type Receivers } from './approvals-support.js';

describe('valet migrate', () => {
  let root: string;
  let configDir: string;
  let schemas: PgSchemas;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-migrate-'));
    configDir = join(root, 'config');
    mkdirSync(configDir);
    writeFileSync(join(configDir, 'gateway.yaml'), stringify({ issuers: [devIssuer] }));
    writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'api', origin: 'http://127.0.0.1:9', credential: { scheme: 'bearer', secret: 'API_KEY' } }] }));
    schemas = pgSchemas();
  });
  afterAll(async () => {
    await schemas.dropAll();
    rmSync(root, { recursive: true, force: true });
  });

  it('creates the audit, approvals and secrets schemas in the URL’s search_path; concurrent runs migrate once', async () => {
    const { schema, url } = await schemas.fresh();
    const env = { VALET_CONFIG: configDir, VALET_POSTGRES_URL: url };
    const runs = await Promise.all([runCli(['migrate'], { env }), runCli(['migrate'], { env })]);
    for (const r of runs) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(`migrated: audit log (schema ${schema})\nmigrated: approvals (schema ${schema})\nmigrated: secrets (schema ${schema})\n`);
      expect(`${r.stdout}${r.stderr}`).not.toContain('postgres://');
    }
    for (const table of ['audit_schema_version', 'approvals_schema_version', 'secrets_schema_version']) {
      const rows = (await schemas.query<{ version: number }>(schema, `SELECT version FROM ${table}`)).rows;
      expect(rows, table).toHaveLength(1);
      expect(rows[0]?.version, table).toBeGreaterThan(0);
    }
    // The tables themselves are there, in that schema and nowhere else.
    const tables = (await schemas.query<{ table_name: string }>(schema, `SELECT table_name FROM information_schema.tables WHERE table_schema = $1`, [schema])).rows.map((r) => r.table_name);
    expect(tables).toEqual(expect.arrayContaining(['audit_log', 'audit_head', 'approvals', 'secrets']));
  });

  it('says there is nothing to migrate when every backend is in the data directory', async () => {
    const r = await runCli(['migrate'], { env: { VALET_CONFIG: configDir } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('nothing to migrate');
  });
});

describe('valet migrate --from sqlite: an embedded installation moves to PostgreSQL', () => {
  const pgs = pgSchemas();
  let upstream: FakeUpstream;
  let rx: Receivers;
  afterAll(async () => {
    await upstream?.close();
    await rx?.close();
    await pgs.dropAll();
  });

  it('copies the audit chain (anchors still verify), open approvals and secrets; refuses a running gateway, a wrong key and a non-empty target', async () => {
    upstream = await startFakeUpstream();
    rx = await startReceivers();
    const key = generateMasterKeyText();
    const withVault = (env: Record<string, string>, root?: string): TestGatewayOptions =>
      payAndVaultGateway(upstream, rx, { VALET_MASTER_KEY: key, VALET_APPROVAL_LINK_KEY: 'm'.repeat(43), ...env }, root);

    // An embedded gateway with some history.
    const embedded = await startTestGateway(withVault({}));
    const adminToken = await embedded.adminToken(['admin']);
    const res = await request(`${embedded.adminUrl}/api/secrets`, { method: 'POST', headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'VAULT_TOKEN', value: 'vt-migrated-5e1c' }) });
    expect(res.statusCode).toBe(201);
    await res.body.text();
    const token = await embedded.token({ agent: 'mover', tenant: 'acme' });
    const before = await call(embedded.url, '/vault/v1/before', { token });
    expect(before.status).toBe(200);
    const pending = await call(embedded.url, '/pay/v1/async/later', { token, body: { n: 1 } });
    expect(pending.status).toBe(202);
    const oldRows = await embedded.waitForAudit(2);

    const { schema, url } = await pgs.fresh();
    const env = { VALET_CONFIG: embedded.configDir, VALET_POSTGRES_URL: url, VALET_MASTER_KEY: key };
    const migrate = (extra: Record<string, string> = {}) => runCli(['migrate', '--from', 'sqlite', '--data', embedded.dataDir], { env: { ...env, ...extra } });
    const running = await migrate();
    expect(running.code).not.toBe(0);
    expect(running.stderr).toContain('a gateway is running on');
    await embedded.close({ keep: true });

    const wrongKey = await migrate({ VALET_MASTER_KEY: generateMasterKeyText() });
    expect(wrongKey.code).not.toBe(0);
    expect(wrongKey.stderr).toContain('VALET_ERR_MASTER_KEY');
    expect((await pgs.query(schema, 'SELECT count(*)::int AS n FROM audit_log')).rows[0]).toEqual({ n: 0 });

    const moved = await migrate();
    expect(moved.code, moved.stderr).toBe(0);
    expect(moved.stdout).toMatch(/^copied: audit log: \d+ row\(s\), \d+ chain event\(s\); head [0-9a-f]{16}… at event \d+; verified\n/);
    expect(moved.stdout).toContain('copied: approvals: 1 approval(s) (1 async still open, 0 held one(s) aborted)');
    expect(moved.stdout).toContain('copied: secrets: 1 secret(s), 1 version(s)');
    expect(`${moved.stdout}${moved.stderr}`).not.toContain('postgres://');
    expect(`${moved.stdout}${moved.stderr}`).not.toContain(key);
    const again = await migrate();
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain('already holds');

    // The batches of sealed request facts the rows refer to came along, under their ids.
    const sqlite = new Database(join(embedded.dataDir, AUDIT_FILE), { readonly: true });
    const batches = sqlite.prepare('SELECT id, rows, sealed FROM audit_facts ORDER BY id').all();
    sqlite.close();
    expect(batches.length).toBeGreaterThan(0);
    expect((await pgs.query(schema, 'SELECT id::int AS id, rows, sealed FROM audit_facts ORDER BY id')).rows).toEqual(batches);
    expect(oldRows.filter((r) => r.facts !== null).map((r) => r.facts)).toEqual(expect.arrayContaining([expect.stringMatching(/^v2\./)]));

    // The chain on PostgreSQL is the same chain: the anchor the embedded gateway wrote at shutdown checks it.
    const verify = await runCli(['audit', 'verify', '--anchor', join(embedded.dataDir, 'audit-anchors.ndjson')], { env });
    expect(verify.code, verify.stdout).toBe(0);
    expect(verify.stdout).toMatch(/^ok: /);
    expect(verify.stdout).toMatch(/1 anchor\(s\) checked/);

    // The same installation, now on PostgreSQL: history, the open approval and the secret carried over.
    const fleet = await startTestGateway(withVault({ VALET_POSTGRES_URL: url }, embedded.root));
    try {
      const rows = await fleet.auditRows();
      for (const r of oldRows) expect(rows.some((x) => x.request_id === r.request_id)).toBe(true);
      const approver = await fleet.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
      const approvalId = pending.json.approval.id as string;
      expect((await admin(fleet, approver, `/api/approvals/${approvalId}/approve`, { reason: 'after the move' })).status).toBe(200);
      const t2 = await fleet.token({ agent: 'mover', tenant: 'acme' });
      const used = await call(fleet.url, '/pay/v1/async/later', { token: t2, body: { n: 1 }, headers: { 'valet-approval': approvalId } });
      expect(used.status, used.text).toBe(200);
      const vault = await call(fleet.url, '/vault/v1/after', { token: t2 });
      expect(vault.status).toBe(200);
      expect(headerValues(upstream.requests.at(-1)!, 'authorization')).toEqual(['Bearer vt-migrated-5e1c']);
      await fleet.gateway.audit.flush();
      expect((await fleet.gateway.auditLog.verify()).ok).toBe(true);
    } finally {
      await fleet.close();
    }
  }, 60_000);
});
