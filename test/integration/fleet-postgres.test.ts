/**
 * Two gateways on one PostgreSQL database (one schema), as a fleet behind a load balancer: an
 * approval decided through one instance's admin API releases the request held on the other; an
 * async approval re-sent to both at once executes once; a secret rotated through one instance is
 * injected by the other. Everything through real sockets.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateMasterKeyText } from '../../gateway/secrets/crypto.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { pgSchemas } from '../helpers/postgres.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, payAndVaultGateway, startReceivers, waitForApproval, type Receivers } from './approvals-support.js';

describe('a fleet of two gateways on PostgreSQL (VALET_POSTGRES_URL)', () => {
  const pgs = pgSchemas();
  let upstream: FakeUpstream;
  let rx: Receivers;
  let a: TestGateway;
  let b: TestGateway;
  let approverA: string;
  let approverB: string;
  const forwardedTo = (path: string): number => upstream.requests.filter((r) => r.url.startsWith(path)).length;

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ executed: true, url: req.url }));
    });
    rx = await startReceivers();
    const { url } = await pgs.fresh();
    // The `vault` upstream's credential comes from the secret store only (not the environment).
    const withVault = payAndVaultGateway(upstream, rx, { VALET_POSTGRES_URL: url, VALET_MASTER_KEY: generateMasterKeyText() });
    a = await startTestGateway(withVault);
    b = await startTestGateway(withVault);
    approverA = await a.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
    approverB = await b.adminToken(['approver'], { subject: 'otto', groups: ['finance'] });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await upstream?.close();
    await rx?.close();
    await pgs.dropAll();
  });

  it('an approval decided through instance A releases the request held on instance B', async () => {
    const token = await b.token({ agent: 'fleet-hold-bot', tenant: 't-fleet-hold' });
    const reply = call(b.url, '/pay/v1/hold/transfers', { token, body: { amount: 70 } });
    // Both instances list it: the store is shared.
    const pending = await waitForApproval(a, approverA, (x) => x.agent === 'fleet-hold-bot' && x.status === 'pending');
    expect(forwardedTo('/v1/hold/transfers')).toBe(0);
    const decided = Date.now();
    expect((await admin(a, approverA, `/api/approvals/${pending.id}/approve`, { reason: 'checked' })).status).toBe(200);
    const r = await reply;
    const delayMs = Date.now() - decided;
    expect(r.status, r.text).toBe(201);
    expect(r.json).toMatchObject({ executed: true, url: '/v1/hold/transfers' });
    expect(forwardedTo('/v1/hold/transfers')).toBe(1);
    expect((await admin(b, approverB, `/api/approvals/${pending.id}`)).json.approval).toMatchObject({ status: 'consumed', resolver: 'fiona' });
    // Reported, not asserted: the wake-up comes by NOTIFY (target: well under 100 ms).
    process.stdout.write(`fleet: held request on B released ${delayMs} ms after A's approval\n`);
  });

  it('a request held on B is refused when A denies it', async () => {
    const token = await b.token({ agent: 'fleet-deny-bot', tenant: 't-fleet-deny' });
    const reply = call(b.url, '/pay/v1/hold/wire', { token, body: { amount: 9 } });
    const pending = await waitForApproval(a, approverA, (x) => x.agent === 'fleet-deny-bot' && x.status === 'pending');
    expect((await admin(a, approverA, `/api/approvals/${pending.id}/deny`, { reason: 'not today' })).status).toBe(200);
    const r = await reply;
    expect(r.status).toBe(403);
    expect(r.json.error.code).toBe('VALET_ERR_APPROVAL_DENIED');
    expect(forwardedTo('/v1/hold/wire')).toBe(0);
  });

  it('an async approval re-sent to both instances at once executes exactly once', async () => {
    for (let round = 0; round < 3; round++) {
      const path = `/pay/v1/async/race-${round}`;
      const token = await a.token({ agent: `fleet-async-${round}`, tenant: `t-fleet-async-${round}` });
      const body = { amount: round };
      const first = await call(a.url, path, { token, body });
      expect(first.status, first.text).toBe(202);
      const id = first.json.approval.id as string;
      expect((await admin(b, approverB, `/api/approvals/${id}/approve`, {})).status).toBe(200);
      const replies = await Promise.all(
        [a, b, a, b].map((gw) => call(gw.url, path, { token, body, headers: { 'valet-approval': id } })),
      );
      expect(replies.map((r) => r.status).sort()).toEqual([201, 409, 409, 409]);
      for (const r of replies.filter((x) => x.status === 409)) expect(r.json.error.code).toBe('VALET_ERR_APPROVAL_USED');
      expect(forwardedTo(`/v1/async/race-${round}`)).toBe(1);
    }
  });

  it('a secret rotated through A\'s admin API is injected by B within about a second', async () => {
    const adminA = await a.adminToken(['admin']);
    const put = async (method: 'POST' | 'PUT', path: string, body: unknown): Promise<number> => {
      const res = await request(`${a.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${adminA}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      await res.body.text();
      return res.statusCode;
    };
    const injectedByB = async (): Promise<string[]> => {
      const t = await b.token({ agent: 'fleet-vault-bot', tenant: 't-vault' });
      const res = await request(`${b.url}/vault/v1/x`, { headers: { authorization: `Bearer ${t}` } });
      await res.body.text();
      return res.statusCode === 201 ? headerValues(upstream.requests.at(-1)!, 'authorization') : [`status ${res.statusCode}`];
    };
    const waitForB = async (want: string): Promise<number> => {
      const started = Date.now();
      for (;;) {
        if ((await injectedByB()).includes(want)) return Date.now() - started;
        if (Date.now() - started > 5_000) throw new Error(`B never injected the new value (last: ${(await injectedByB()).join(',')})`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    expect(await put('POST', '/api/secrets', { name: 'VAULT_TOKEN', value: 'vt-fleet-one-3b9e' })).toBe(201);
    await waitForB('Bearer vt-fleet-one-3b9e');
    expect(await put('PUT', '/api/secrets/VAULT_TOKEN', { value: 'vt-fleet-two-c41d' })).toBe(200);
    const ms = await waitForB('Bearer vt-fleet-two-c41d');
    process.stdout.write(`fleet: B injected the rotated secret ${ms} ms after A's rotation\n`);
    expect(await injectedByB()).toEqual(['Bearer vt-fleet-two-c41d']);
  });
});
