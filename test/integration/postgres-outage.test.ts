import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openAuditBackend } from '../../gateway/audit/backend.js';
import { urlSchema } from '../../gateway/postgres.js';
import { generateMasterKeyText } from '../../gateway/secrets/crypto.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectErrorBody, requestIdOf } from '../helpers/http.js';
import { pgSchemas } from '../helpers/postgres.js';
import { tcpRelay, type TcpRelay } from '../helpers/relay.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, payAndVaultGateway, startReceivers, waitForApproval, type Receivers } from './approvals-support.js';

interface Ready {
  ready: boolean;
  checks: { database: string; approvals: string; secrets: string };
}

/**
 * PostgreSQL going away under one instance and coming back: instance A reaches the server through a
 * TCP relay the test cuts and restores; instance B, beside it, reaches it directly (the rest of the
 * fleet). Audit, approvals and secrets are all on PostgreSQL.
 */
describe('PostgreSQL gone from under an instance, then back', () => {
  const pgs = pgSchemas();
  let upstream: FakeUpstream;
  let rx: Receivers;
  let relay: TcpRelay;
  let direct: string;
  let a: TestGateway;
  let b: TestGateway;

  const readyz = async (gw: TestGateway): Promise<Ready> => (await (await request(`${gw.adminUrl}/readyz`)).body.json()) as Ready;
  /** Polls `/readyz` until every check is 'ok' (`ready`) or none is (each notices on its own). */
  const until = async (gw: TestGateway, ready: boolean, ms = 15_000): Promise<Ready> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await readyz(gw);
      const checks = [r.checks.database, r.checks.approvals, r.checks.secrets];
      if ((ready ? checks.every((c) => c === 'ok') : checks.every((c) => c !== 'ok')) || Date.now() > deadline) return r;
      await new Promise((res) => setTimeout(res, 50));
    }
  };
  const vault = async (gw: TestGateway): Promise<{ status: number; text: string; requestId: string; sent: string[] }> => {
    const before = upstream.requests.length;
    const t = await gw.token({ agent: 'outage-bot', tenant: 'acme' });
    const res = await request(`${gw.url}/vault/v1/x`, { headers: { authorization: `Bearer ${t}` } });
    const text = await res.body.text();
    const sent = upstream.requests.length > before ? headerValues(upstream.requests.at(-1)!, 'authorization') : [];
    return { status: res.statusCode, text, requestId: requestIdOf(res.headers), sent };
  };
  const rotate = async (value: string): Promise<void> => {
    const token = await b.adminToken(['admin']);
    const res = await request(`${b.adminUrl}/api/secrets/VAULT_TOKEN`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ value }) });
    await res.body.text();
    expect(res.statusCode).toBe(200);
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    rx = await startReceivers();
    relay = await tcpRelay(5432);
    const { schema, url } = await pgs.fresh();
    direct = url;
    const relayed = url.replace('@127.0.0.1:5432/', `@127.0.0.1:${relay.port}/`);
    expect(urlSchema(relayed)).toBe(schema);
    const keys = { VALET_MASTER_KEY: generateMasterKeyText(), VALET_APPROVAL_LINK_KEY: 'l'.repeat(43) };
    const fleet = (pgUrl: string) => payAndVaultGateway(upstream, rx, { ...keys, VALET_POSTGRES_URL: pgUrl });
    b = await startTestGateway(fleet(direct));
    const token = await b.adminToken(['admin']);
    const res = await request(`${b.adminUrl}/api/secrets`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'VAULT_TOKEN', value: 'vt-before-1f0a' }) });
    await res.body.text();
    expect(res.statusCode).toBe(201);
    a = await startTestGateway(fleet(relayed));
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await relay?.cut();
    await upstream?.close();
    await rx?.close();
    await pgs.dropAll();
  });

  it('fails closed and says why while the server is gone; recovers by itself; a decision and a rotation made meanwhile reach it', async () => {
    expect(await until(a, true)).toMatchObject({ ready: true, checks: { database: 'ok', approvals: 'ok', secrets: 'ok' } });
    expect(await vault(a)).toMatchObject({ status: 200, sent: ['Bearer vt-before-1f0a'] });

    // A request held on A for a person's decision.
    const token = await a.token({ agent: 'outage-bot', tenant: 'acme' });
    const approver = await b.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
    const held = call(a.url, '/pay/v1/hold/outage', { token, body: { n: 1 } });
    const approval = await waitForApproval(b, approver, (x) => x.path === '/v1/hold/outage' && x.status === 'pending');

    await relay.cut();
    const down = await until(a, false);
    expect(down.ready).toBe(false);
    expect(down.checks.database).not.toBe('ok');
    expect(down.checks.approvals).not.toBe('ok');
    expect(down.checks.secrets).not.toBe('ok');
    for (const c of Object.values(down.checks)) expect(JSON.stringify(c)).not.toContain('postgres://');

    // Nothing is forwarded without its audit row: refused, coded, the upstream untouched.
    const before = upstream.requests.length;
    const refused = await vault(a);
    expect(refused.status).toBe(503);
    expectErrorBody(refused.text, 'VALET_ERR_AUDIT_UNAVAILABLE', refused.requestId);
    expect(upstream.requests.length).toBe(before);

    // Meanwhile the rest of the fleet decides A's held request and rotates the secret.
    expect((await admin(b, approver, `/api/approvals/${approval.id}/approve`, { reason: 'while A was cut off' })).status).toBe(200);
    await rotate('vt-after-77c2');

    await relay.restore();
    expect(await until(a, true)).toMatchObject({ ready: true, checks: { database: 'ok', approvals: 'ok', secrets: 'ok' } });
    // The decision A missed while its notification connection was down still releases the request.
    const answer = await held;
    expect(answer.status, answer.text).toBe(200);
    expect(upstream.requests.filter((r) => r.url === '/v1/hold/outage')).toHaveLength(1);
    // The rotation it missed is picked up on reconnect (or by the 1 s check).
    const deadline = Date.now() + 5_000;
    let after = await vault(a);
    while (!after.sent.includes('Bearer vt-after-77c2') && Date.now() < deadline) after = await vault(a);
    expect(after).toMatchObject({ status: 200, sent: ['Bearer vt-after-77c2'] });

    // One chain over both instances verifies; the refusal's row was written once the server was back.
    await a.gateway.audit.flush();
    const log = await openAuditBackend({ dataDir: a.dataDir, readonly: true, postgres: { url: direct, schema: urlSchema(direct) } });
    try {
      let row = await log!.byRequestId(refused.requestId);
      for (let i = 0; i < 100 && row === undefined; i++) {
        await new Promise((r) => setTimeout(r, 50));
        row = await log!.byRequestId(refused.requestId);
      }
      expect(row).toMatchObject({ status: 503, error_code: 'VALET_ERR_AUDIT_UNAVAILABLE' });
      expect(await log!.byRequestId(after.requestId)).toMatchObject({ status: 200 });
      expect(await log!.verify()).toMatchObject({ ok: true, problems: [] });
    } finally {
      await log?.close();
    }
  }, 60_000);
});
