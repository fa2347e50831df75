import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deploymentDump, SHARED_BACKENDS } from '../helpers/backends.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, UUID } from '../helpers/http.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, PAY_SECRET, payGateway, startReceivers, verifyWebhook, waitForApproval, waitUntil, type Receivers } from './approvals-support.js';

describe('approvals: async and hold, end to end', () => {
  let upstream: FakeUpstream;
  let rx: Receivers;
  let gw: TestGateway;
  let approver: string;
  const tokens = new Map<string, string>();

  /** An agent token for a fresh agent in its own tenant (so caps never interfere between tests). */
  const agent = async (name: string, o: { tenant?: string; user?: string } = {}): Promise<string> => {
    const t = await gw.token({ agent: name, tenant: o.tenant ?? `t-${name}`, ...(o.user && { user: o.user }) });
    tokens.set(name, t);
    return t;
  };
  const forwardedTo = (path: string): number => upstream.requests.filter((r) => r.url.startsWith(path)).length;

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      res.writeHead(201, { 'content-type': 'application/json', 'x-upstream': 'yes' });
      let amount: unknown = null;
      try {
        amount = (JSON.parse(req.body.toString()) as { amount?: unknown }).amount ?? null;
      } catch {
        // not JSON
      }
      res.end(JSON.stringify({ executed: true, url: req.url, amount }));
    });
    rx = await startReceivers();
    gw = await startTestGateway(payGateway(upstream, rx));
    approver = await gw.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
    await rx?.close();
  });

  it('async: 202 with an id and status URL; approved; the identical re-send executes exactly once', async () => {
    const token = await agent('async-bot');
    const body = { amount: 5000, currency: 'usd', card: { number: '4242424242424242', exp: '12/30' } };
    const first = await call(gw.url, '/pay/v1/async/transfers', { token, body });
    expect(first.status, first.text).toBe(202);
    const a = first.json.approval;
    expect(a.id).toMatch(/^apr_[A-Za-z0-9_-]{24}$/);
    expect(a).toMatchObject({ status: 'pending', status_url: `/_valet/approvals/${a.id}`, mode: 'async', group: 'finance', rule: 'async-transfers' });
    expect(Date.parse(a.expires_at) - Date.now()).toBeGreaterThan(25_000);
    expect(first.headers['location']).toBe(a.status_url);
    expect(first.json.request_id).toMatch(UUID);
    expect(forwardedTo('/v1/async/transfers')).toBe(0);

    // The agent polls its status on the data plane.
    const pending = await call(gw.url, a.status_url, { token });
    expect(pending.status).toBe(200);
    expect(pending.json.approval).toMatchObject({ id: a.id, status: 'pending' });

    // The admin API shows the call, with the rule's redactions applied.
    const shown = await admin(gw, approver, `/api/approvals/${a.id}`);
    expect(shown.status, shown.text).toBe(200);
    expect(shown.json.approval).toMatchObject({
      agent: 'async-bot',
      tenant: 't-async-bot',
      upstream: 'pay',
      tool: 'pay.transfer',
      method: 'POST',
      path: '/v1/async/transfers',
      args: { amount: 5000, currency: 'usd', card: { number: '[redacted]', exp: '12/30' } },
      rule: 'async-transfers',
      reason: 'async transfers need a person',
      group: 'finance',
      mode: 'async',
      status: 'pending',
      request_digest: expect.stringMatching(/^[0-9a-f]{64}$/),
    });

    const ok = await admin(gw, approver, `/api/approvals/${a.id}/approve`, { reason: 'invoice 42 checked' });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json.approval).toMatchObject({ status: 'approved', resolver: 'fiona', resolution_reason: 'invoice 42 checked' });
    expect((await call(gw.url, a.status_url, { token })).json.approval.status).toBe('approved');

    const again = await call(gw.url, '/pay/v1/async/transfers', { token, body, headers: { 'valet-approval': a.id } });
    expect(again.status, again.text).toBe(201);
    expect(again.json).toMatchObject({ executed: true, amount: 5000 });
    expect(forwardedTo('/v1/async/transfers')).toBe(1);
    const got = upstream.requests.find((r) => r.url === '/v1/async/transfers');
    expect(got?.headers['authorization']).toBe(`Bearer ${PAY_SECRET}`);
    expect(got?.headers['valet-approval']).toBeUndefined();
    expect(JSON.parse(got?.body.toString() ?? '{}')).toEqual(body);

    // The executing request's audit row names the approval, the approver, the reason and the time.
    const row = await auditRowFor(gw, again.headers['valet-request-id'] as string);
    expect(row).toMatchObject({ decision: 'escalate', rule: 'async-transfers', status: 201, upstream_status: 201, approval_id: a.id, approver: 'fiona', approval_reason: 'invoice 42 checked' });
    expect(row.approval_at).toBeGreaterThan(0);
    const parked = await auditRowFor(gw, first.json.request_id);
    expect(parked).toMatchObject({ decision: 'escalate', status: 202, approval_id: a.id, approver: null });

    // Used: a second re-send is refused and nothing more is forwarded.
    const reuse = await call(gw.url, '/pay/v1/async/transfers', { token, body, headers: { 'valet-approval': a.id } });
    expect(reuse.status).toBe(409);
    expect(reuse.json.error.code).toBe('VALET_ERR_APPROVAL_USED');
    expect(forwardedTo('/v1/async/transfers')).toBe(1);
    expect((await call(gw.url, a.status_url, { token })).json.approval.status).toBe('consumed');
  });

  it('async: a changed body, query or header after approval is refused; the approved request still runs once', async () => {
    const token = await agent('tamper-bot');
    const body = { amount: 100, currency: 'usd' };
    const first = await call(gw.url, '/pay/v1/async/refunds', { token, body });
    const id = first.json.approval.id as string;
    expect((await admin(gw, approver, `/api/approvals/${id}/approve`, {})).status).toBe(200);

    const variants = [
      { path: '/pay/v1/async/refunds', body: { amount: 100000, currency: 'usd' } },
      { path: '/pay/v1/async/refunds', body: '{"amount":100, "currency":"usd"}' },
      { path: '/pay/v1/async/refunds?expand=all', body },
      { path: '/pay/v1/async/refunds', body, headers: { 'stripe-account': 'acct_other' } },
      { path: '/pay/v1/async/refunds/', body },
      { path: '/pay/v1/async/refunds', body, method: 'PUT' },
      { path: '/pay/v1/async/refunds', body: 'amount=100&currency=usd', headers: { 'content-type': 'application/x-www-form-urlencoded' } },
    ];
    for (const v of variants) {
      const r = await call(gw.url, v.path, { token, body: v.body, headers: { 'valet-approval': id, ...v.headers }, ...(v.method && { method: v.method }) });
      expect(r.status, `${JSON.stringify(v)} → ${r.text}`).toBe(403);
      expect(r.json.error.code).toBe('VALET_ERR_APPROVAL_MISMATCH');
    }
    expect(forwardedTo('/v1/async/refunds')).toBe(0);
    // Tracing and retry headers an SDK changes per attempt, and a new User-Agent, do not matter.
    const ok = await call(gw.url, '/pay/v1/async/refunds', { token, body, headers: { 'valet-approval': id, traceparent: '00-abc-def-01', 'x-stainless-retry-count': '1', 'user-agent': 'agent-sdk/2.0 (retry from another host)' } });
    expect(ok.status, ok.text).toBe(201);
    expect(forwardedTo('/v1/async/refunds')).toBe(1);
  });

  it('async: unknown, malformed, pending and other agents\' ids are refused; status URLs are private', async () => {
    const owner = await agent('owner-bot');
    const other = await agent('other-bot', { tenant: 't-owner-bot' });
    const body = { amount: 7 };
    const first = await call(gw.url, '/pay/v1/async/payouts', { token: owner, body });
    const id = first.json.approval.id as string;

    const pending = await call(gw.url, '/pay/v1/async/payouts', { token: owner, body, headers: { 'valet-approval': id } });
    expect(pending.status).toBe(409);
    expect(pending.json.error).toMatchObject({ code: 'VALET_ERR_APPROVAL_PENDING', approval: { id, status: 'pending', status_url: `/_valet/approvals/${id}` } });

    for (const bogus of [`apr_${randomBytes(18).toString('base64url')}`, 'apr_short', '../../etc', id.toUpperCase(), `${id},${id}`]) {
      const r = await call(gw.url, '/pay/v1/async/payouts', { token: owner, body, headers: { 'valet-approval': bogus } });
      expect(r.status, bogus).toBe(403);
      expect(r.json.error.code).toBe('VALET_ERR_APPROVAL_MISMATCH');
    }

    expect((await admin(gw, approver, `/api/approvals/${id}/approve`, {})).status).toBe(200);
    // Another agent, even in the same tenant and with the identical request, cannot use it.
    const stolen = await call(gw.url, '/pay/v1/async/payouts', { token: other, body, headers: { 'valet-approval': id } });
    expect(stolen.status).toBe(403);
    expect(stolen.json.error.code).toBe('VALET_ERR_APPROVAL_MISMATCH');
    // The same agent acting for a user is another principal.
    const delegated = await agent('owner-bot', { tenant: 't-owner-bot', user: 'mallory' });
    expect((await call(gw.url, '/pay/v1/async/payouts', { token: delegated, body, headers: { 'valet-approval': id } })).status).toBe(403);
    expect((await call(gw.url, `/_valet/approvals/${id}`, { token: other })).status).toBe(404);
    expect((await call(gw.url, `/_valet/approvals/${id}`)).status).toBe(401);
    expect((await call(gw.url, `/_valet/approvals/${id}`, { token: await gw.adminToken(['admin']) })).status).toBe(401);
    expect((await call(gw.url, '/_valet/whatever', { token: owner })).status).toBe(404);
    expect(forwardedTo('/v1/async/payouts')).toBe(0);

    // The owner still can.
    expect((await call(gw.url, '/pay/v1/async/payouts', { token: owner, body, headers: { 'valet-approval': id } })).status).toBe(201);
  });

  it('async: denied and expired approvals refuse the re-send; deciding a decided approval is 409', async () => {
    const token = await agent('deny-bot');
    const body = { amount: 1 };
    const a = (await call(gw.url, '/pay/v1/async/denied', { token, body })).json.approval;
    const denyNoReason = await admin(gw, approver, `/api/approvals/${a.id}/deny`, {});
    expect(denyNoReason.status).toBe(400);
    const denied = await admin(gw, approver, `/api/approvals/${a.id}/deny`, { reason: 'not budgeted' });
    expect(denied.json.approval).toMatchObject({ status: 'denied', resolver: 'fiona', resolution_reason: 'not budgeted' });
    const r = await call(gw.url, '/pay/v1/async/denied', { token, body, headers: { 'valet-approval': a.id } });
    expect(r.status).toBe(403);
    expect(r.json.error).toMatchObject({ code: 'VALET_ERR_APPROVAL_DENIED', approval: { id: a.id, status: 'denied', resolution_reason: 'not budgeted' } });
    expect((await call(gw.url, a.status_url, { token })).json.approval).toMatchObject({ status: 'denied', resolution_reason: 'not budgeted' });
    const late = await admin(gw, approver, `/api/approvals/${a.id}/approve`, {});
    expect(late.status).toBe(409);
    expect(late.json.error).toMatchObject({ code: 'VALET_ERR_APPROVAL_RESOLVED', message: expect.stringContaining('already denied') });

    const b = (await call(gw.url, '/pay/v1/async-short/x', { token, body })).json.approval;
    await new Promise((r2) => setTimeout(r2, 1_150));
    expect((await call(gw.url, b.status_url, { token })).json.approval.status).toBe('expired');
    const tooLate = await admin(gw, approver, `/api/approvals/${b.id}/approve`, {});
    expect(tooLate.status).toBe(409);
    const expired = await call(gw.url, '/pay/v1/async-short/x', { token, body, headers: { 'valet-approval': b.id } });
    expect(expired.status).toBe(403);
    expect(expired.json.error.code).toBe('VALET_ERR_APPROVAL_EXPIRED');
    expect(forwardedTo('/v1/async/denied') + forwardedTo('/v1/async-short')).toBe(0);
  });

  it('hold: the agent waits and gets the upstream\'s real response once approved', async () => {
    const token = await agent('hold-bot');
    const body = { amount: 250, card: { number: '5555444433331111' } };
    const before = forwardedTo('/v1/hold/');
    const started = Date.now();
    const reply = call(gw.url, '/pay/v1/hold/transfers', { token, body });
    const a = await waitForApproval(gw, approver, (x) => x.agent === 'hold-bot' && x.status === 'pending');
    expect(a).toMatchObject({ mode: 'hold', rule: 'hold-transfers', args: { amount: 250, card: { number: '[redacted]' } } });
    await new Promise((r) => setTimeout(r, 150));
    expect(forwardedTo('/v1/hold/')).toBe(before);
    expect((await admin(gw, approver, `/api/approvals/${a.id}/approve`, { reason: 'ok by phone' })).status).toBe(200);
    const r = await reply;
    expect(r.status, r.text).toBe(201);
    expect(r.headers['x-upstream']).toBe('yes');
    expect(r.json).toMatchObject({ executed: true, amount: 250 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    expect(forwardedTo('/v1/hold/')).toBe(before + 1);
    const row = await auditRowFor(gw, r.headers['valet-request-id'] as string);
    expect(row).toMatchObject({ decision: 'escalate', status: 201, approval_id: a.id, approver: 'fiona', approval_reason: 'ok by phone' });
    expect((await admin(gw, approver, `/api/approvals/${a.id}`)).json.approval.status).toBe('consumed');
    // A held approval's id cannot be re-sent.
    const resend = await call(gw.url, '/pay/v1/hold/transfers', { token, body, headers: { 'valet-approval': a.id } });
    expect(resend.status).toBe(403);
    expect(resend.json.error.code).toBe('VALET_ERR_APPROVAL_MISMATCH');
  });

  it('hold: denied → 403 with the reason; expired → 403; nothing forwarded', async () => {
    const token = await agent('hold-deny-bot');
    const before = forwardedTo('/v1/hold');
    const reply = call(gw.url, '/pay/v1/hold/wire', { token, body: { amount: 9 } });
    const a = await waitForApproval(gw, approver, (x) => x.agent === 'hold-deny-bot' && x.status === 'pending');
    expect((await admin(gw, approver, `/api/approvals/${a.id}/deny`, { reason: 'wrong account' })).status).toBe(200);
    const r = await reply;
    expect(r.status).toBe(403);
    expect(r.json.error).toMatchObject({ code: 'VALET_ERR_APPROVAL_DENIED', rule: 'hold-transfers', approval: { id: a.id, status: 'denied', resolution_reason: 'wrong account' } });
    expect(r.text).not.toContain('fiona');
    const row = await auditRowFor(gw, r.headers['valet-request-id'] as string);
    expect(row).toMatchObject({ status: 403, error_code: 'VALET_ERR_APPROVAL_DENIED', approval_id: a.id, approver: 'fiona', approval_reason: 'wrong account' });

    const started = Date.now();
    const timedOut = await call(gw.url, '/pay/v1/hold-short/wire', { token, body: { amount: 9 } });
    expect(timedOut.status).toBe(403);
    expect(timedOut.json.error.code).toBe('VALET_ERR_APPROVAL_EXPIRED');
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(forwardedTo('/v1/hold')).toBe(before);
  });

  it('hold: an agent that hangs up while waiting leaves its approval aborted, never executed', async () => {
    const token = await agent('hangup-bot');
    const before = forwardedTo('/v1/hold');
    const ac = new AbortController();
    const reply = call(gw.url, '/pay/v1/hold/hangup', { token, body: { amount: 3 }, signal: ac.signal }).catch((e: unknown) => e);
    const a = await waitForApproval(gw, approver, (x) => x.agent === 'hangup-bot' && x.status === 'pending');
    ac.abort();
    await reply;
    const aborted = await waitForApproval(gw, approver, (x) => x.id === a.id && x.status === 'aborted');
    expect(aborted.resolution_reason).toMatch(/disconnected/);
    const late = await admin(gw, approver, `/api/approvals/${a.id}/approve`, {});
    expect(late.status).toBe(409);
    await new Promise((r) => setTimeout(r, 100));
    expect(forwardedTo('/v1/hold')).toBe(before);
    const rows = await gw.waitForAudit(1);
    const row = rows.find((x) => x.approval_id === a.id);
    expect(row).toMatchObject({ error_code: 'VALET_ERR_CLIENT_CLOSED', status: 499 });
  });

  it('concurrent approve, deny and expire resolve to exactly one outcome', async () => {
    for (let round = 0; round < 8; round++) {
      const token = await agent(`race-bot-${round}`);
      const a = (await call(gw.url, '/pay/v1/async/race', { token, body: { round } })).json.approval;
      const other = await gw.adminToken(['admin'], { subject: 'otto' });
      const results = await Promise.all([
        admin(gw, approver, `/api/approvals/${a.id}/approve`, { reason: 'a' }),
        admin(gw, other, `/api/approvals/${a.id}/deny`, { reason: 'd' }),
        admin(gw, approver, `/api/approvals/${a.id}/deny`, { reason: 'd2' }),
        admin(gw, other, `/api/approvals/${a.id}/approve`, { reason: 'a2' }),
      ]);
      const won = results.filter((r) => r.status === 200);
      expect(won, `round ${round}`).toHaveLength(1);
      expect(results.filter((r) => r.status === 409)).toHaveLength(3);
      const final = (await admin(gw, approver, `/api/approvals/${a.id}`)).json.approval;
      expect(final.status).toBe(won[0]?.json.approval.status);
      expect(final.resolver).toBe(won[0]?.json.approval.resolver);
    }
    // Approve racing expiry: whichever happens first, the outcome is one and the same everywhere.
    const token = await agent('race-expiry-bot');
    const b = (await call(gw.url, '/pay/v1/async-short/race', { token, body: {} })).json.approval;
    await new Promise((r) => setTimeout(r, Date.parse(b.expires_at) - Date.now()));
    const [approve, status] = await Promise.all([admin(gw, approver, `/api/approvals/${b.id}/approve`, {}), call(gw.url, b.status_url, { token })]);
    const final = (await admin(gw, approver, `/api/approvals/${b.id}`)).json.approval.status;
    expect(approve.status === 200 ? 'approved' : 'expired').toBe(final);
    expect(['pending', final]).toContain(status.json.approval.status);
  });

  it('two concurrent re-sends of an approved request execute it once', async () => {
    const token = await agent('double-bot');
    const body = { amount: 42 };
    const a = (await call(gw.url, '/pay/v1/async/double', { token, body })).json.approval;
    await admin(gw, approver, `/api/approvals/${a.id}/approve`, {});
    const sends = await Promise.all(Array.from({ length: 6 }, () => call(gw.url, '/pay/v1/async/double', { token, body, headers: { 'valet-approval': a.id } })));
    expect(sends.filter((r) => r.status === 201)).toHaveLength(1);
    expect(sends.filter((r) => r.status === 409 && r.json.error.code === 'VALET_ERR_APPROVAL_USED')).toHaveLength(5);
    expect(forwardedTo('/v1/async/double')).toBe(1);
  });

  it('an approved request refused by a rate limit gives its approval back (async: re-send later)', async () => {
    const token = await agent('limited-bot');
    const run = async (n: number): Promise<{ id: string; status: number; code: string | undefined }> => {
      const id = (await call(gw.url, '/pay/v1/async/limited/x', { token, body: { n } })).json.approval.id as string;
      await admin(gw, approver, `/api/approvals/${id}/approve`, {});
      const r = await call(gw.url, '/pay/v1/async/limited/x', { token, body: { n }, headers: { 'valet-approval': id } });
      return { id, status: r.status, code: r.json?.error?.code };
    };
    expect((await run(1)).status).toBe(201);
    const second = await run(2);
    expect(second).toMatchObject({ status: 429, code: 'VALET_ERR_RATE_LIMITED' });
    expect((await admin(gw, approver, `/api/approvals/${second.id}`)).json.approval).toMatchObject({ status: 'approved', consumed_at: null });
    expect(forwardedTo('/v1/async/limited')).toBe(1);
  });

  it('any body is bound byte for byte (also one policy cannot read), and bounded by max_body_bytes', async () => {
    const token = await agent('bytes-bot');
    const bytes = randomBytes(4096);
    const headers = { 'content-type': 'application/octet-stream' };
    const first = await call(gw.url, '/pay/v1/async/upload', { token, body: bytes, headers });
    expect(first.status, first.text).toBe(202);
    const a = (await admin(gw, approver, `/api/approvals/${first.json.approval.id}`)).json.approval;
    expect(a.args_note).toMatch(/could not be read: the body is neither JSON nor form-encoded/);
    await admin(gw, approver, `/api/approvals/${a.id}/approve`, {});
    const flipped = Buffer.from(bytes);
    flipped[4095] = (flipped[4095] as number) ^ 1;
    const wrong = await call(gw.url, '/pay/v1/async/upload', { token, body: flipped, headers: { ...headers, 'valet-approval': a.id } });
    expect(wrong.json.error.code).toBe('VALET_ERR_APPROVAL_MISMATCH');
    const right = await call(gw.url, '/pay/v1/async/upload', { token, body: bytes, headers: { ...headers, 'valet-approval': a.id } });
    expect(right.status, right.text).toBe(201);
    expect(upstream.requests.find((r) => r.url === '/v1/async/upload')?.body.equals(bytes)).toBe(true);

    const before = (await admin(gw, approver, '/api/approvals?agent=bytes-bot')).json.approvals.length;
    const big = await call(gw.url, '/pay/v1/hold/big', { token, body: 'x'.repeat(1_048_577), headers });
    expect(big.status).toBe(413);
    expect(big.json.error.code).toBe('VALET_ERR_BODY_TOO_LARGE');
    expect((await admin(gw, approver, '/api/approvals?agent=bytes-bot')).json.approvals.length).toBe(before);
  });

  it('caps pending approvals per agent and per tenant (429, Retry-After), and frees them on decision', async () => {
    const token = await agent('flood-bot', { tenant: 'flood-co' });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await call(gw.url, '/pay/v1/async/flood', { token, body: { i } });
      expect(r.status).toBe(202);
      ids.push(r.json.approval.id);
    }
    const over = await call(gw.url, '/pay/v1/async/flood', { token, body: { i: 3 } });
    expect(over.status).toBe(429);
    expect(over.json.error.code).toBe('VALET_ERR_APPROVAL_LIMIT');
    expect(over.json.error.message).toMatch(/this agent \(at most 3\)/);
    expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect((await auditRowFor(gw, over.headers['valet-request-id'] as string)).error_code).toBe('VALET_ERR_APPROVAL_LIMIT');

    // The tenant cap (5) counts every agent of the tenant.
    const second = await agent('flood-bot-2', { tenant: 'flood-co' });
    expect((await call(gw.url, '/pay/v1/async/flood', { token: second, body: { j: 1 } })).status).toBe(202);
    expect((await call(gw.url, '/pay/v1/async/flood', { token: second, body: { j: 2 } })).status).toBe(202);
    const tenantOver = await call(gw.url, '/pay/v1/async/flood', { token: second, body: { j: 3 } });
    expect(tenantOver.status).toBe(429);
    expect(tenantOver.json.error.message).toMatch(/this tenant \(at most 5\)/);

    // A decision frees a slot.
    await admin(gw, approver, `/api/approvals/${ids[0]}/deny`, { reason: 'flood' });
    expect((await call(gw.url, '/pay/v1/async/flood', { token, body: { i: 4 } })).status).toBe(202);
    expect(forwardedTo('/v1/async/flood')).toBe(0);
  });

  it('approvers: group membership, tenant scope and four eyes', async () => {
    const token = await agent('scope-bot', { tenant: 'acme', user: 'alice' });
    const a = (await call(gw.url, '/pay/v1/async/scoped', { token, body: { n: 1 } })).json.approval;
    const cases: [string, string[], { subject?: string; tenant?: string; groups?: string[] }, number, string?][] = [
      ['approver without groups', ['approver'], { subject: 'pat' }, 403, 'VALET_ERR_ADMIN_FORBIDDEN'],
      ['approver of another group', ['approver'], { subject: 'pat', groups: ['privacy'] }, 403, 'VALET_ERR_ADMIN_FORBIDDEN'],
      ['auditor', ['auditor'], { subject: 'pat', groups: ['finance'] }, 403, 'VALET_ERR_ADMIN_FORBIDDEN'],
      ['tenant admin of another tenant', ['admin'], { subject: 'pat', tenant: 'globex' }, 404, 'VALET_ERR_APPROVAL_NOT_FOUND'],
      ['the delegating user herself', ['approver'], { subject: 'alice', groups: ['finance'] }, 403, 'VALET_ERR_ADMIN_FORBIDDEN'],
    ];
    for (const [what, roles, o, status, code] of cases) {
      const t = await gw.adminToken(roles, o);
      const r = await admin(gw, t, `/api/approvals/${a.id}/approve`, { reason: 'x' });
      expect(r.status, what).toBe(status);
      expect(r.json.error.code, what).toBe(code);
    }
    const otherTenant = await gw.adminToken(['admin'], { subject: 'pat', tenant: 'globex' });
    expect((await admin(gw, otherTenant, `/api/approvals/${a.id}`)).status).toBe(404);
    const list = await admin(gw, otherTenant, '/api/approvals?status=pending');
    expect(list.json.approvals.map((x: { id: string }) => x.id)).not.toContain(a.id);
    // A tenant approver of the right tenant and group may.
    const acme = await gw.adminToken(['approver'], { subject: 'carol', tenant: 'acme', groups: ['finance'] });
    expect((await admin(gw, acme, '/api/approvals?status=pending')).json.approvals.map((x: { id: string }) => x.id)).toContain(a.id);
    const ok = await admin(gw, acme, `/api/approvals/${a.id}/approve`, { reason: 'fine' });
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json.approval.user).toBe('alice');
    expect((await admin(gw, acme, '/api/approvals?status=bogus')).status).toBe(400);
  });

  it('webhook: signed JSON (HMAC-SHA256 over t.body), retried with backoff after failures', async () => {
    const token = await agent('hook-bot');
    const before = rx.webhook.requests.length;
    rx.failNext(2);
    const a = (await call(gw.url, '/pay/v1/async/hooked', { token, body: { amount: 3, memo: 'a private memo' } })).json.approval;
    await waitUntil(() => rx.webhook.requests.length >= before + 3);
    const deliveries = rx.webhook.requests.slice(before).filter((r) => r.body.toString().includes(a.id));
    expect(deliveries).toHaveLength(3);
    const bodies = deliveries.map((d) => verifyWebhook(d));
    expect(new Set(deliveries.map((d) => d.headers['valet-event-id'])).size).toBe(1);
    expect(bodies[2]).toMatchObject({
      type: 'approval.requested',
      approval: { id: a.id, agent: 'hook-bot', tenant: 't-hook-bot', method: 'POST', path: '/v1/async/hooked', rule: 'async-transfers', group: 'finance', args: { amount: 3, memo: '[redacted]' } },
      links: { approve: expect.stringContaining('/approvals/link/'), deny: expect.stringContaining('/approvals/link/') },
    });
    expect(deliveries[0]?.url).toBe('/hooks/valet');
    // A wrong secret does not verify.
    expect(() => verifyWebhook(deliveries[2] as never, 'another-secret')).toThrow();
  });

  it('slack: a message with the call summary and approve/deny links; only for its groups', async () => {
    const token = await agent('slack-bot', { user: 'bob' });
    const before = rx.slack.requests.length;
    const a = (await call(gw.url, '/pay/v1/async/cards/card_9876543210', { token })).json.approval;
    await waitUntil(() => rx.slack.requests.length > before);
    const msg = JSON.parse((rx.slack.requests[before]?.body ?? Buffer.from('{}')).toString());
    expect(rx.slack.requests[before]?.url).toBe('/services/T000/B000/slack-url-secret');
    const text: string = msg.blocks[0].text.text;
    for (const part of ['slack-bot', 't-slack-bot', 'bob', 'pay', 'GET', 'pay.card', 'async-transfers', 'finance', a.id]) expect(text).toContain(part);
    expect(text).toContain('/v1/async/cards/[redacted]');
    expect(text).not.toContain('card_9876543210');
    expect(text).toMatch(/<http:\/\/127\.0\.0\.1:\d+\/approvals\/link\/v1\.[^|>]+\|Approve…>/);
    expect(text).toMatch(/\|Deny…>/);
    expect(msg.text).toContain('Approval needed');

    // The privacy group has no Slack channel.
    const slackBefore = rx.slack.requests.length;
    const hookBefore = rx.webhook.requests.length;
    await call(gw.url, '/pay/v1/privacy/export', { token, body: { who: 'x' } });
    await waitUntil(() => rx.webhook.requests.length > hookBefore);
    await new Promise((r) => setTimeout(r, 100));
    expect(rx.slack.requests.length).toBe(slackBefore);
  });

  it('slack: text the agent controls cannot forge links or mentions', async () => {
    const token = await agent('inject-bot');
    const before = rx.slack.requests.length;
    await call(gw.url, '/pay/v1/async/x', { token, body: { note: '<https://evil.example|Approve> <!channel> & `code`' } });
    await waitUntil(() => rx.slack.requests.length > before);
    const text: string = JSON.parse((rx.slack.requests[before]?.body ?? Buffer.from('{}')).toString()).blocks[0].text.text;
    expect(text).not.toContain('<https://evil.example');
    expect(text).not.toContain('<!channel>');
    expect(text).toContain('&lt;https://evil.example|Approve&gt; &lt;!channel&gt; &amp;');
  });

  it('links: the page shows the call; confirming needs an admin token; a link works once', async () => {
    const token = await agent('link-bot');
    const before = rx.slack.requests.length;
    const a = (await call(gw.url, '/pay/v1/async/linked', { token, body: { amount: 11 } })).json.approval;
    await waitUntil(() => rx.slack.requests.length > before);
    const text: string = JSON.parse((rx.slack.requests[before]?.body ?? Buffer.from('{}')).toString()).blocks[0].text.text;
    const approveUrl = /<(http[^|>]+)\|Approve…>/.exec(text)?.[1] as string;
    const denyUrl = /<(http[^|>]+)\|Deny…>/.exec(text)?.[1] as string;
    expect(approveUrl.startsWith(gw.adminUrl)).toBe(true);
    const linkToken = approveUrl.split('/approvals/link/')[1] as string;

    const page = await call(approveUrl, '');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.headers['content-security-policy']).toContain("default-src 'self'");
    expect(page.text).toContain(a.id);
    expect(page.text).toContain('link-bot');
    expect(page.text).toContain('/api/approval-links/');
    expect(page.text).toContain('<script src="/approvals/link.js"></script>');
    expect(page.text).not.toMatch(/<script>|\son\w+=/);
    const script = await call(gw.adminUrl, '/approvals/link.js');
    expect(script.status).toBe(200);
    expect(script.headers['content-type']).toMatch(/javascript/);
    // Opening the page decided nothing.
    expect((await admin(gw, approver, `/api/approvals/${a.id}`)).json.approval.status).toBe('pending');

    const confirm = (t: string | undefined, body: unknown = { reason: 'via slack' }, lt = linkToken): Promise<Awaited<ReturnType<typeof call>>> =>
      call(gw.adminUrl, `/api/approval-links/${lt}`, { ...(t !== undefined && { token: t }), body, method: 'POST' });
    expect((await confirm(undefined)).status).toBe(401);
    const tampered = `${linkToken.slice(0, -2)}${linkToken.endsWith('AA') ? 'BB' : 'AA'}`;
    expect((await confirm(approver, {}, tampered)).json.error.code).toBe('VALET_ERR_APPROVAL_LINK_INVALID');
    expect((await call(`${gw.adminUrl}/approvals/link/${tampered}`, '')).status).toBe(403);
    const wrongGroup = await gw.adminToken(['approver'], { subject: 'pat', groups: ['privacy'] });
    expect((await confirm(wrongGroup)).status).toBe(403);

    const ok = await confirm(approver);
    expect(ok.status, ok.text).toBe(200);
    expect(ok.json.approval).toMatchObject({ id: a.id, status: 'approved', resolver: 'fiona', resolution_reason: 'via slack' });
    const reused = await confirm(approver);
    expect(reused.status).toBe(403);
    expect(reused.json.error.code).toBe('VALET_ERR_APPROVAL_LINK_INVALID');
    // The deny link of a decided approval can no longer change it.
    const deny = await call(gw.adminUrl, `/api/approval-links/${denyUrl.split('/approvals/link/')[1]}`, { token: approver, body: { reason: 'no' }, method: 'POST' });
    expect(deny.status).toBe(409);
    const after = await call(approveUrl, '');
    expect(after.text).toContain('This approval is approved');
    expect(after.text).not.toContain('<form');
  });

  it('stores, notifies and logs no agent token and no upstream secret', async () => {
    const token = await agent('leak-bot');
    // The token sneaking into the body is refused before anything is parked (docs/security.md).
    const sneaky = await call(gw.url, '/pay/v1/async/leak', { token, body: { amount: 1, note: `my key is ${token}` }, headers: { 'x-note': 'hello' } });
    expect(sneaky.status).toBe(400);
    expect(sneaky.json.error.code).toBe('VALET_ERR_BAD_REQUEST');
    const r = await call(gw.url, '/pay/v1/async/leak', { token, body: { amount: 1, note: 'my key is elsewhere' }, headers: { 'x-note': 'hello' } });
    expect(r.status).toBe(202);
    await admin(gw, approver, `/api/approvals/${r.json.approval.id}/approve`, {});
    await call(gw.url, '/pay/v1/async/leak', { token, body: { amount: 1, note: 'my key is elsewhere' }, headers: { 'x-note': 'hello', 'valet-approval': r.json.approval.id } });
    await gw.waitForAudit(1);
    await gw.gateway.audit.flush();

    const { readFileSync, readdirSync } = await import('node:fs');
    const { join } = await import('node:path');
    const secrets = [PAY_SECRET, 'whsec_approvals_suite', 'slack-url-secret', ...tokens.values()];
    // What approvals stored: the SQLite files' bytes, or every row of the deployment's PostgreSQL tables.
    const stored: [string, string][] = SHARED_BACKENDS
      ? Object.entries(await deploymentDump(gw.dataDir))
      : readdirSync(gw.dataDir)
          .filter((f) => f.startsWith('approvals.db'))
          .map((f): [string, string] => [f, readFileSync(join(gw.dataDir, f)).toString('latin1')]);
    expect(stored.length).toBeGreaterThan(0);
    expect(stored.some(([, text]) => text.includes('my key is elsewhere'))).toBe(true);
    const haystacks: [string, string][] = [
      ...stored,
      ['logs', gw.logs.join('\n')],
      ['webhook', rx.webhook.requests.map((q) => q.body.toString()).join('\n')],
      ['slack', rx.slack.requests.map((q) => q.body.toString()).join('\n')],
    ];
    for (const [where, text] of haystacks) {
      for (const s of secrets) expect(text.includes(s), `${where} contains a secret or token`).toBe(false);
    }
    // Every agent token's signature part, too (a token could be cut differently).
    for (const t of tokens.values()) for (const [where, text] of haystacks) expect(text.includes(t.split('.')[2] as string), where).toBe(false);
  });
});
