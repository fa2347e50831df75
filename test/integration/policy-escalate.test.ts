import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, json, send, STRIPE_SECRET, STRIPE_TOOLS_YAML, stripeUpstream } from './policy-support.js';

describe('escalate: human approval required', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [stripeUpstream(upstream.origin)],
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
      env: { STRIPE_KEY: STRIPE_SECRET },
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

  it('escalate beats allow: 403 VALET_ERR_APPROVAL_REQUIRED with the approval request, nothing forwarded', async () => {
    const r = await transfer(1001);
    const e = expectRefused(r, 403, 'VALET_ERR_APPROVAL_REQUIRED');
    expect(e.rule).toBe('large-transfers');
    expect(e.reason).toBe('large transfers need finance approval');
    expect(e.message).toContain('large-transfers');
    expect(e['approval']).toEqual({ group: 'finance', timeout_s: 300, mode: 'async' });
    expect(await audit(gw, r)).toMatchObject({
      decision: 'escalate',
      rule: 'large-transfers',
      reason: 'large transfers need finance approval',
      status: 403,
      error_code: 'VALET_ERR_APPROVAL_REQUIRED',
      tool: 'stripe.create_transfer',
      upstream_status: null,
    });
  });

  it('two escalations: the strictest approval (shortest timeout, hold wins) is asked for', async () => {
    const r = await transfer(60_000);
    const e = expectRefused(r, 403, 'VALET_ERR_APPROVAL_REQUIRED');
    expect(e.rule).toBe('large-transfers, very-large-transfers');
    expect(e['approval']).toMatchObject({ timeout_s: 60, mode: 'hold' });
    expect(await audit(gw, r)).toMatchObject({ decision: 'escalate', rule: 'large-transfers,very-large-transfers' });
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
    const e = expectRefused(r, 403, 'VALET_ERR_APPROVAL_REQUIRED');
    expect(e.rule).toBe('customer-lookups');
    expect(e['approval']).toEqual({ group: 'privacy', timeout_s: 900, mode: 'async' });
    expect(await audit(gw, r)).toMatchObject({ decision: 'escalate', rule: 'customer-lookups' });
  });
});
