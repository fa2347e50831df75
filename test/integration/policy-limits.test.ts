import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import {
  audit,
  expectForwarded,
  expectRefused,
  header,
  json,
  send,
  STRIPE_TOOLS_YAML,
  type Sent,
  startStripeGateway,
} from './policy-support.js';

const LIMITS_YAML = `rate_limits:
  - id: per-agent-hourly
    upstream: stripe
    paths: [/v1/balance]
    limit: 5
    window: 1h
    key: agent
  - id: per-tenant-hourly
    upstream: stripe
    paths: [/v1/charges]
    limit: 3
    window: 1h
    key: tenant
budgets:
  - id: daily-transfer-budget
    tools: [stripe.create_transfer]
    sum: args.amount
    limit: 1000
    window: 1d
    key: agent
`;

function expectLimited(r: Sent, code: 'VALET_ERR_RATE_LIMITED' | 'VALET_ERR_BUDGET_EXCEEDED', rule: string, windowS: number): number {
  const e = expectRefused(r, 429, code);
  expect(e.rule).toBe(rule);
  const retry = Number(header(r.headers, 'retry-after'));
  expect(Number.isInteger(retry)).toBe(true);
  expect(retry).toBeGreaterThan(0);
  expect(retry).toBeLessThanOrEqual(windowS);
  expect(e['retry_after_s']).toBe(retry);
  return retry;
}

describe('rate limits and budgets', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML, 'limits.yaml': LIMITS_YAML },
      rules: [
        { id: 'balance', upstream: 'stripe', methods: ['GET'], paths: ['/v1/balance'], effect: 'allow' },
        { id: 'charges', upstream: 'stripe', methods: ['GET'], paths: ['/v1/charges'], effect: 'allow' },
        { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
      ],
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('limit 5/h per agent: 4 sequential calls pass, then of 50 parallel calls exactly one passes', async () => {
    const token = await gw.token({ agent: 'racer' });
    for (let i = 0; i < 4; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token }));

    const forwardedBefore = upstream.requests.length;
    const results = await Promise.all(Array.from({ length: 50 }, () => send(gw, upstream, '/stripe/v1/balance', { token })));
    const passed = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status !== 200);
    expect(passed).toHaveLength(1);
    expect(limited).toHaveLength(49);
    expect(upstream.requests.length - forwardedBefore).toBe(1);
    for (const r of limited) {
      expect(r.status).toBe(429);
      expect(JSON.parse(r.text).error.code).toBe('VALET_ERR_RATE_LIMITED');
      const retry = Number(header(r.headers, 'retry-after'));
      expect(retry).toBeGreaterThan(0);
      expect(retry).toBeLessThanOrEqual(3600);
    }
    const row = await audit(gw, limited[0] as Sent);
    expect(row).toMatchObject({ decision: 'deny', rule: 'per-agent-hourly', status: 429, error_code: 'VALET_ERR_RATE_LIMITED', agent: 'racer' });
    expect(row.reason).toMatch(/per-agent-hourly \(5 per 1h\) is exhausted/);

    // Still exhausted afterwards, with the documented body.
    const again = await send(gw, upstream, '/stripe/v1/balance', { token });
    expectLimited(again, 'VALET_ERR_RATE_LIMITED', 'per-agent-hourly', 3600);
  });

  it('another agent has its own counter', async () => {
    const token = await gw.token({ agent: 'bystander' });
    for (let i = 0; i < 5; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token }));
    expectLimited(await send(gw, upstream, '/stripe/v1/balance', { token }), 'VALET_ERR_RATE_LIMITED', 'per-agent-hourly', 3600);
  });

  it('key: tenant is shared by all agents of a tenant, and only of that tenant', async () => {
    const a = await gw.token({ agent: 'acme-a', tenant: 'acme' });
    const b = await gw.token({ agent: 'acme-b', tenant: 'acme' });
    const c = await gw.token({ agent: 'acme-c', tenant: 'acme' });
    const g = await gw.token({ agent: 'acme-a', tenant: 'globex' }); // same agent id, other tenant
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: a }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: a }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: b }));
    const r = await send(gw, upstream, '/stripe/v1/charges', { token: c });
    expectLimited(r, 'VALET_ERR_RATE_LIMITED', 'per-tenant-hourly', 3600);
    expect(await audit(gw, r)).toMatchObject({ agent: 'acme-c', tenant: 'acme', rule: 'per-tenant-hourly' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: g }));
  });

  it('a rate limit on one route does not touch another route', async () => {
    const token = await gw.token({ agent: 'racer' }); // exhausted on /v1/balance above
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token }));
  });

  describe('budget: sum args.amount, 1000 per day per agent', () => {
    const transfer = (token: string, amount: unknown) =>
      send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...json({ amount, currency: 'usd' }) });

    it('400 and 400 pass, 300 is refused (429 VALET_ERR_BUDGET_EXCEEDED), then 200 (exactly 1000) passes, then 1 does not', async () => {
      const token = await gw.token({ agent: 'spender' });
      expectForwarded(await transfer(token, 400));
      expectForwarded(await transfer(token, 400));
      const r = await transfer(token, 300);
      expectLimited(r, 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
      const row = await audit(gw, r);
      expect(row).toMatchObject({ decision: 'deny', rule: 'daily-transfer-budget', status: 429, error_code: 'VALET_ERR_BUDGET_EXCEEDED' });
      expect(row.reason).toMatch(/daily-transfer-budget \(1000 per 1d\) is exhausted/);
      // The refused 300 was not charged.
      expectForwarded(await transfer(token, 200));
      expectLimited(await transfer(token, 1), 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
      // A zero amount still fits.
      expectForwarded(await transfer(token, 0));
    });

    it('another agent has its own budget', async () => {
      const token = await gw.token({ agent: 'frugal' });
      expectForwarded(await transfer(token, 1000));
      expectLimited(await transfer(token, 1), 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
    });

    it('a single transfer larger than the whole budget is refused outright', async () => {
      const token = await gw.token({ agent: 'whale' });
      expectLimited(await transfer(token, 1001), 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
      expectForwarded(await transfer(token, 1000));
    });

    it('a negative amount cannot refill the budget: refused, not forwarded', async () => {
      const token = await gw.token({ agent: 'refiller' });
      expectForwarded(await transfer(token, 1000));
      const r = await transfer(token, -500);
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('daily-transfer-budget');
      expect(e.reason).toMatch(/could not be applied/);
      expectLimited(await transfer(token, 100), 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
    });

    it('an amount that cannot be read (string for a declared int) is refused, not charged as zero', async () => {
      const token = await gw.token({ agent: 'sneaky' });
      const r = await transfer(token, '999999');
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('daily-transfer-budget');
      expect(e.reason).toMatch(/argument "amount" must be an integer/);
      expectForwarded(await transfer(token, 1000));
    });

    it('parallel transfers cannot overspend the budget', async () => {
      const token = await gw.token({ agent: 'parallel-spender' });
      const results = await Promise.all(Array.from({ length: 20 }, () => transfer(token, 100)));
      expect(results.filter((r) => r.status === 200)).toHaveLength(10);
      expect(results.filter((r) => r.status === 429)).toHaveLength(10);
    });
  });
});
