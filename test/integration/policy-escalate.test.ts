import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, json, send, STRIPE_TOOLS_YAML, startStripeGateway } from './policy-support.js';

describe('escalate: human approval required (policy semantics; the workflow: approvals.test.ts)', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
        {
          id: 'large-transfers',
          tools: ['stripe.create_transfer'],
          when: 'args.amount > 1000',
          effect: 'escalate',
          reason: 'large transfers need finance approval',
          approval: { group: 'finance', timeout: '5m', mode: 'async' },
        },
        {
          id: 'very-large-transfers',
          tools: ['stripe.create_transfer'],
          when: 'args.amount > 50000',
          effect: 'escalate',
          reason: 'very large transfers need a finance lead on the line',
          approval: { group: 'finance-leads', timeout: '1m', mode: 'hold' },
        },
        {
          id: 'no-huge-transfers',
          tools: ['stripe.create_transfer'],
          when: 'args.amount > 100000',
          effect: 'deny',
          reason: 'transfers above 100000 are never made by agents',
        },
        // Escalation alone (no allow rule on this route) still asks for approval rather than denying.
        {
          id: 'customer-lookups',
          tools: ['stripe.get_customer'],
          effect: 'escalate',
          approval: { group: 'privacy', mode: 'async' },
        },
      ],
    });
    token = await gw.token({ agent: 'treasury-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const transfer = (amount: number) => send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...json({ amount, currency: 'usd' }) });

  it('below the threshold only the allow matches: forwarded (control)', async () => {
    const r = await transfer(1000);
    expectForwarded(r);
    expect(await audit(gw, r)).toMatchObject({ decision: 'allow', rule: 'transfers' });
  });

  /** The pending approval behind a 202, as the admin API shows it. */
  const approvalOf = async (id: string): Promise<Record<string, unknown>> => {
    const res = await request(`${gw.adminUrl}/api/approvals/${id}`, { headers: { authorization: `Bearer ${await gw.adminToken(['admin'])}` } });
    return ((await res.body.json()) as { approval: Record<string, unknown> }).approval;
  };

  it('escalate beats allow: 202 with the approval it waits for, nothing forwarded', async () => {
    const r = await transfer(1001);
    expect(r.status, r.text).toBe(202);
    expect(r.forwarded).toHaveLength(0);
    const a = (JSON.parse(r.text) as { approval: Record<string, string> }).approval;
    expect(a).toMatchObject({ status: 'pending', rule: 'large-transfers', reason: 'large transfers need finance approval', group: 'finance', mode: 'async' });
    expect(Date.parse(a['expires_at'] as string) - Date.now()).toBeGreaterThan(290_000);
    expect(await approvalOf(a['id'] as string)).toMatchObject({ timeout_s: 300, tool: 'stripe.create_transfer', args: { amount: 1001, currency: 'usd' } });
    expect(await audit(gw, r)).toMatchObject({
      decision: 'escalate',
      rule: 'large-transfers',
      reason: 'large transfers need finance approval',
      status: 202,
      error_code: null,
      tool: 'stripe.create_transfer',
      upstream_status: null,
      approval_id: a['id'],
    });
  });

  it('two escalations: the strictest approval (shortest timeout, hold wins) is asked for', async () => {
    const pending = transfer(60_000);
    const admin = await gw.adminToken(['admin']);
    let found: { id: string; timeout_s: number; mode: string; rule: string } | undefined;
    for (let i = 0; i < 250 && found === undefined; i++) {
      const res = await request(`${gw.adminUrl}/api/approvals?status=pending`, { headers: { authorization: `Bearer ${admin}` } });
      const list = ((await res.body.json()) as { approvals: { id: string; timeout_s: number; mode: string; rule: string }[] }).approvals;
      found = list.find((x) => x.rule === 'large-transfers,very-large-transfers');
      if (found === undefined) await new Promise((res2) => setTimeout(res2, 20));
    }
    expect(found).toMatchObject({ timeout_s: 60, mode: 'hold' });
    const deny = await request(`${gw.adminUrl}/api/approvals/${found?.id}/deny`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'not today' }),
    });
    expect(deny.statusCode).toBe(200);
    const r = await pending;
    const e = expectRefused(r, 403, 'VALET_ERR_APPROVAL_DENIED');
    expect(e.rule).toBe('large-transfers,very-large-transfers');
    expect(await audit(gw, r)).toMatchObject({ decision: 'escalate', rule: 'large-transfers,very-large-transfers', approval_reason: 'not today' });
  });

  it('deny beats escalate: 403 VALET_ERR_POLICY_DENIED without an approval offer', async () => {
    const r = await transfer(200_000);
    const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
    expect(e.rule).toBe('no-huge-transfers');
    expect(e.reason).toBe('transfers above 100000 are never made by agents');
    expect(e).not.toHaveProperty('approval');
    expect(await audit(gw, r)).toMatchObject({ decision: 'deny', rule: 'no-huge-transfers', error_code: 'VALET_ERR_POLICY_DENIED' });
  });

  it('an escalate rule with no allow beside it escalates (default timeout for async: 15m)', async () => {
    const r = await send(gw, upstream, '/stripe/v1/customers/cus_1', { token });
    expect(r.status, r.text).toBe(202);
    expect(r.forwarded).toHaveLength(0);
    const a = (JSON.parse(r.text) as { approval: Record<string, string> }).approval;
    expect(a).toMatchObject({ rule: 'customer-lookups', group: 'privacy', mode: 'async' });
    expect(await approvalOf(a['id'] as string)).toMatchObject({ timeout_s: 900, args: { customer_id: 'cus_1' } });
    expect(await audit(gw, r)).toMatchObject({ decision: 'escalate', rule: 'customer-lookups' });
  });
});
