import Database from 'better-sqlite3';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { lockKey } from '../../gateway/audit/postgres/schema.js';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { urlSchema } from '../../gateway/postgres.js';
import { SHARED_BACKENDS } from '../helpers/backends.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

interface Json {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown> & { error?: { code: string; message: string } };
}

describe('admin API', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  const admin = async (path: string, o: { token?: string; method?: 'GET' | 'POST' | 'PUT' | 'DELETE'; headers?: Record<string, string>; body?: string } = {}): Promise<Json> => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.token !== undefined) headers['authorization'] = `Bearer ${o.token}`;
    const res = await request(`${gw.adminUrl}${path}`, { method: o.method ?? 'GET', headers, body: o.body ?? null });
    return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Json['body'] };
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'all', effect: 'allow', upstream: 'api' }],
      env: { API_KEY: 'sk-admin-test' },
    });
    // Rows from two tenants.
    for (const tenant of ['acme', 'acme', 'globex']) {
      const t = await gw.token({ agent: `bot-${tenant}`, tenant });
      const r = await request(`${gw.url}/api/v1/x`, { headers: { authorization: `Bearer ${t}` } });
      await r.body.text();
    }
    await gw.waitForAudit(3);
  });

  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('listens on loopback, apart from the data plane', () => {
    expect(gw.adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(gw.adminUrl).not.toBe(gw.url);
  });

  it('/healthz and /readyz answer without a token and reveal no configuration', async () => {
    const health = await admin('/healthz');
    expect(health.status).toBe(200);
    expect(health.body).toEqual({ status: 'ok' });
    const ready = await admin('/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ ready: true, checks: { database: 'ok', policy: { last_reload_error: null } } });
  });

  it('/readyz is 503 while another process holds the audit database write lock', async () => {
    // SQLite: the database file's write lock. PostgreSQL: the chain lock every commit takes.
    let release: () => Promise<void>;
    if (SHARED_BACKENDS) {
      const url = gw.backendEnv['VALET_POSTGRES_URL'] as string;
      const other = new pg.Client({ connectionString: url });
      await other.connect();
      await other.query('SELECT pg_advisory_lock($1::bigint)', [lockKey(urlSchema(url) as string, 'chain')]);
      release = () => other.end();
    } else {
      const other = new Database(join(gw.dataDir, AUDIT_FILE));
      other.exec('BEGIN IMMEDIATE');
      release = async () => {
        other.exec('ROLLBACK');
        other.close();
      };
    }
    try {
      const ready = await admin('/readyz');
      expect(ready.status).toBe(503);
      expect(ready.body).toMatchObject({ ready: false, checks: { database: SHARED_BACKENDS ? '55P03' : 'SQLITE_BUSY' } });
    } finally {
      await release();
    }
    expect((await admin('/readyz')).status).toBe(200);
  });

  it('/metrics is Prometheus text: requests by upstream, decision and status; unknown upstreams collapsed', async () => {
    for (const name of ['nope-1', 'nope-2']) await (await request(`${gw.url}/${name}/x`)).body.text();
    const res = await request(`${gw.adminUrl}/metrics`);
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.body.text();
    expect(text).toContain('valet_requests_total{upstream="api",decision="allow",status="200",code=""} 3');
    expect(text).toContain('valet_requests_total{upstream="(unknown)",decision="none",status="404",code="VALET_ERR_UNKNOWN_UPSTREAM"} 2');
    expect(text).not.toMatch(/nope-1|bot-acme|sk-admin-test/);
    expect(text).toMatch(/^valet_request_duration_seconds_bucket\{le="0\.001",upstream="api",decision="allow"\} \d+$/m);
    expect(text).toMatch(/^valet_policy_evaluation_seconds_count \d+$/m);
    expect(text).toMatch(/^valet_audit_queue_depth \d+$/m);
    // Each of the three forwarded requests waited once for its durable decision row; they were
    // committed in at least one transaction, and a transaction holds at least one decision,
    // completion or refusal (at most two per audit row).
    expect(text).toContain('valet_audit_durable_wait_seconds_count 3');
    const commits = Number(/^valet_audit_commit_seconds_count (\d+)$/m.exec(text)?.[1]);
    expect(commits).toBeGreaterThanOrEqual(1);
    expect(commits).toBeLessThanOrEqual(2 * (await gw.auditRows()).length);
    // Every sample line is `name{labels} value` or `name value`, as the exposition format says.
    for (const line of text.split('\n').filter((l) => l !== '' && !l.startsWith('#'))) {
      expect(line).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEInfNa]+$/);
    }
  });

  it('refuses /api without a token, with an agent token, or with a forged one (401)', async () => {
    const none = await admin('/api/whoami');
    expect(none.status).toBe(401);
    expect(none.body.error?.code).toBe('VALET_ERR_ADMIN_UNAUTHENTICATED');
    expect(none.headers['www-authenticate']).toBe('Bearer realm="valet-admin"');

    const agentToken = await gw.token({ roles: ['admin'] });
    const agent = await admin('/api/whoami', { token: agentToken });
    expect(agent.status).toBe(401);
    expect(agent.body.error?.message).toMatch(/admin token is invalid: "aud" claim check failed/);

    const good = await gw.adminToken(['admin']);
    const [h, p] = good.split('.');
    const forged = await admin('/api/whoami', { token: `${h}.${p}.${'A'.repeat(43)}` });
    expect(forged.status).toBe(401);
  });

  it('an admin token is not an agent token on the data plane', async () => {
    const t = await gw.adminToken(['admin']);
    const r = await request(`${gw.url}/api/v1/x`, { headers: { authorization: `Bearer ${t}` } });
    expect(r.statusCode).toBe(401);
    expect(((await r.body.json()) as Json['body']).error?.code).toBe('VALET_ERR_TOKEN_INVALID');
  });

  it('whoami reports the roles and permissions a token carries; unknown roles grant nothing', async () => {
    const t = await gw.adminToken(['auditor', 'superuser'], { subject: 'alice' });
    const r = await admin('/api/whoami', { token: t });
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      subject: 'alice',
      tenant: null,
      roles: ['auditor'],
      permissions: ['audit.read', 'approvals.read', 'policy.read', 'secrets.read'],
    });
  });

  it('checks the permission of each route (403 with the permission named)', async () => {
    const approver = await gw.adminToken(['approver']);
    const r = await admin('/api/audit', { token: approver });
    expect(r.status).toBe(403);
    expect(r.body.error).toMatchObject({ code: 'VALET_ERR_ADMIN_FORBIDDEN', message: expect.stringContaining('"audit.read"') });
    const none = await gw.adminToken([]);
    expect((await admin('/api/policy', { token: none })).status).toBe(403);
  });

  it('refuses a body past 64 KiB: 400 when its length says so, the connection cut when it streams past it', async () => {
    const approver = await gw.adminToken(['approver']);
    const headers = { authorization: `Bearer ${approver}`, 'content-type': 'application/json' };
    const big = JSON.stringify({ reason: 'x'.repeat(70_000) });
    const declared = await request(`${gw.adminUrl}/api/approvals/a1/approve`, { method: 'POST', headers, body: big });
    expect(declared.statusCode).toBe(400);
    expect(((await declared.body.json()) as Json['body']).error).toMatchObject({ code: 'VALET_ERR_ADMIN_BAD_REQUEST', message: 'The body exceeds 65536 bytes.' });
    // No content-length: chunked, refused once the bytes read pass the limit.
    const streamed = await request(`${gw.adminUrl}/api/approvals/a1/approve`, {
      method: 'POST',
      headers,
      body: Readable.from(Array.from({ length: 8 }, () => Buffer.alloc(10_000, 0x20))),
    }).catch((err: unknown) => err as Error);
    // Reading stops at the limit and the connection is cut: the route never sees the body (within
    // the limit, this one would answer 404 for the unknown approval).
    expect(streamed).toBeInstanceOf(Error);
    expect(String(streamed)).toMatch(/closed|reset/i);
  });

  it('an organisation auditor sees every tenant; a tenant admin only its own', async () => {
    const auditor = await gw.adminToken(['auditor']);
    const all = await admin('/api/audit?decision=allow', { token: auditor });
    expect(all.status).toBe(200);
    expect((all.body['rows'] as { tenant: string }[]).map((r) => r.tenant).sort()).toEqual(['acme', 'acme', 'globex']);
    const globexOnly = await admin('/api/audit?tenant=globex', { token: auditor });
    expect((globexOnly.body['rows'] as { tenant: string }[]).map((r) => r.tenant)).toEqual(['globex']);

    const acmeAdmin = await gw.adminToken(['admin'], { tenant: 'acme' });
    const own = await admin('/api/audit?decision=allow', { token: acmeAdmin });
    expect((own.body['rows'] as { tenant: string }[]).map((r) => r.tenant)).toEqual(['acme', 'acme']);
    const other = await admin('/api/audit?tenant=globex', { token: acmeAdmin });
    expect(other.status).toBe(403);
    expect(other.body.error?.code).toBe('VALET_ERR_ADMIN_FORBIDDEN');
  });

  it('filters and bounds audit queries', async () => {
    const t = await gw.adminToken(['auditor']);
    const byAgent = await admin('/api/audit?agent=bot-globex&limit=5', { token: t });
    expect((byAgent.body['rows'] as { agent: string }[]).map((r) => r.agent)).toEqual(['bot-globex']);
    const bad = await admin('/api/audit?limit=100000', { token: t });
    expect(bad.status).toBe(400);
    expect(bad.body.error?.code).toBe('VALET_ERR_ADMIN_BAD_REQUEST');
  });

  it('refuses requests a browser marks as cross-site, even with a valid token', async () => {
    const t = await gw.adminToken(['admin']);
    const site = await admin('/api/whoami', { token: t, headers: { 'sec-fetch-site': 'cross-site' } });
    expect(site.status).toBe(403);
    expect(site.body.error?.code).toBe('VALET_ERR_ADMIN_CROSS_SITE');
    const origin = await admin('/api/whoami', { token: t, headers: { origin: 'https://evil.example' } });
    expect(origin.status).toBe(403);
    const nullOrigin = await admin('/api/whoami', { token: t, headers: { origin: 'null' } });
    expect(nullOrigin.status).toBe(403);
    const same = await admin('/api/whoami', { token: t, headers: { origin: gw.adminUrl, 'sec-fetch-site': 'same-origin' } });
    expect(same.status).toBe(200);
  });

  it('sends no-store and anti-framing headers; unknown paths are 404 and wrong methods 405', async () => {
    const t = await gw.adminToken(['admin']);
    const r = await admin('/api/policy', { token: t });
    expect(r.headers['cache-control']).toBe('no-store');
    expect(r.headers['x-frame-options']).toBe('DENY');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.body).toMatchObject({ version: expect.any(String), last_reload_error: null });
    expect((await admin('/api/nothing', { token: t })).status).toBe(404);
    expect((await admin('/api/policy', { token: t, method: 'DELETE' })).status).toBe(405);
  });
});

// Its own describe: the load leaves rows and counts the tests above do not expect.
describe('/readyz under load', () => {
  let upstream: FakeUpstream | undefined;
  let gw: TestGateway | undefined;
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('/readyz stays 200 while the gateway\'s own audit writer commits under load', async () => {
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'all', effect: 'allow', upstream: 'api' }],
      env: { API_KEY: 'sk-admin-test' },
    });
    const token = await gw!.token({ agent: 'busy-bot', tenant: 'acme' });
    let stop = false;
    const load = async (): Promise<void> => {
      while (!stop) {
        const r = await request(`${gw!.url}/api/v1/load`, { headers: { authorization: `Bearer ${token}` } });
        await r.body.text();
      }
    };
    const loaders = Array.from({ length: 16 }, () => load());
    const probes: unknown[] = [];
    try {
      for (let i = 0; i < 60; i++) {
        const res = await request(`${gw!.adminUrl}/readyz`);
        const ready = { status: res.statusCode, body: await res.body.json() };
        if (ready.status !== 200) probes.push(ready.body);
        await new Promise((r) => setTimeout(r, 5));
      }
    } finally {
      stop = true;
      await Promise.all(loaders);
    }
    expect(probes, 'probes that found the gateway unready').toEqual([]);
  });
});
