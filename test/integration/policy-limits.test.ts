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
  - id: per-tool-hourly
    tools: [stripe.get_customer]
    limit: 2
    window: 1h
    key: tool
  - id: everyone-hourly
    upstream: stripe
    paths: [/v1/payouts]
    limit: 3
    window: 1h
    key: global
budgets:
  - id: daily-transfer-budget
    tools: [stripe.create_transfer]
    sum: args.amount
    limit: 1000
    window: 1d
    key: agent
`;

/**
 * Up to gateway.max_retry_after_s (60 s by default) the SDK is invited to retry after the time
 * given; beyond it, no retry-after is sent and x-should-retry says no (an SDK would hang for it).
 */
function expectRetrySignals(r: Sent, retryAfterS: number): void {
  if (retryAfterS <= 60) {
    expect(header(r.headers, 'retry-after')).toBe(String(retryAfterS));
    expect(header(r.headers, 'x-should-retry')).toBe('true');
  } else {
    expect(header(r.headers, 'retry-after')).toBeUndefined();
    expect(header(r.headers, 'x-should-retry')).toBe('false');
  }
}

function expectLimited(r: Sent, code: 'VALET_ERR_RATE_LIMITED' | 'VALET_ERR_BUDGET_EXCEEDED', rule: string, windowS: number): number {
  const e = expectRefused(r, 429, code);
  expect(e.rule).toBe(rule);
  const retry = e['retry_after_s'] as number;
  expect(Number.isInteger(retry)).toBe(true);
  expect(retry).toBeGreaterThan(0);
  // A call counts for a whole window, both ends included: a retry may be due one second after it.
  expect(retry).toBeLessThanOrEqual(windowS + 1);
  expectRetrySignals(r, retry);
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
        { id: 'customers', tools: ['stripe.get_customer'], effect: 'allow' },
        { id: 'payouts', upstream: 'stripe', methods: ['GET'], paths: ['/v1/payouts'], effect: 'allow' },
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
      const retry = JSON.parse(r.text).error.retry_after_s as number;
      expect(retry).toBeGreaterThan(0);
      expect(retry).toBeLessThanOrEqual(3601);
      expectRetrySignals(r, retry);
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

  it('key: agent is per tenant: the same agent id in tenant B does not spend tenant A\'s quota', async () => {
    const inAcme = await gw.token({ agent: 'twin', tenant: 'acme' });
    const inGlobex = await gw.token({ agent: 'twin', tenant: 'globex' });
    const untenanted = await gw.token({ agent: 'twin' });
    for (let i = 0; i < 5; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: inAcme }));
    expectLimited(await send(gw, upstream, '/stripe/v1/balance', { token: inAcme }), 'VALET_ERR_RATE_LIMITED', 'per-agent-hourly', 3600);
    for (let i = 0; i < 5; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: inGlobex }));
    const r = await send(gw, upstream, '/stripe/v1/balance', { token: inGlobex });
    expectLimited(r, 'VALET_ERR_RATE_LIMITED', 'per-agent-hourly', 3600);
    expect(await audit(gw, r)).toMatchObject({ agent: 'twin', tenant: 'globex' });
    // An agent with no tenant is not any tenant's agent either.
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: untenanted }));
  });

  it('key: tool is per tenant; key: global is one counter for every tenant', async () => {
    const [a, b, g] = await Promise.all([
      gw.token({ agent: 'tool-a', tenant: 'acme' }),
      gw.token({ agent: 'tool-b', tenant: 'acme' }),
      gw.token({ agent: 'tool-a', tenant: 'globex' }),
    ]);
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: a }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_2', { token: b }));
    expectLimited(await send(gw, upstream, '/stripe/v1/customers/cus_3', { token: a }), 'VALET_ERR_RATE_LIMITED', 'per-tool-hourly', 3600);
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: g }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: g }));
    expectLimited(await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: g }), 'VALET_ERR_RATE_LIMITED', 'per-tool-hourly', 3600);

    expectForwarded(await send(gw, upstream, '/stripe/v1/payouts', { token: a }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/payouts', { token: b }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/payouts', { token: g }));
    expectLimited(await send(gw, upstream, '/stripe/v1/payouts', { token: g }), 'VALET_ERR_RATE_LIMITED', 'everyone-hourly', 3600);
    expectLimited(await send(gw, upstream, '/stripe/v1/payouts', { token: a }), 'VALET_ERR_RATE_LIMITED', 'everyone-hourly', 3600);
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

    it('a single transfer larger than the whole budget is refused outright, with no invitation to retry', async () => {
      const token = await gw.token({ agent: 'whale' });
      const r = await transfer(token, 1001);
      const e = expectRefused(r, 403, 'VALET_ERR_BUDGET_TOO_SMALL');
      expect(e.rule).toBe('daily-transfer-budget');
      expect(e.reason).toMatch(/more than the whole budget daily-transfer-budget/);
      expect(r.headers['retry-after']).toBeUndefined();
      expect(r.headers['x-should-retry']).toBe('false');
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

describe('counters and history survive a restart on the same data directory', () => {
  const RESTART_LIMITS = `budgets:
  - id: daily-transfer-budget
    tools: [stripe.create_transfer]
    sum: args.amount
    limit: 1000
    window: 1d
    key: agent
`;
  let upstream: FakeUpstream;
  let gw: TestGateway | undefined;

  const start = (root?: string): Promise<TestGateway> =>
    startStripeGateway(upstream, {
      ...(root !== undefined && { root }),
      files: { 'tools.yaml': STRIPE_TOOLS_YAML, 'limits.yaml': RESTART_LIMITS },
      rules: [
        { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
        { id: 'twice-an-hour', upstream: 'stripe', methods: ['GET'], paths: ['/v1/charges'], when: 'history.calls_last_hour < 2', effect: 'allow' },
      ],
    });

  beforeAll(async () => {
    upstream = await startFakeUpstream();
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('a daily budget used before the restart stays used; history.calls_last_hour stays counted, per tenant', async () => {
    const first = await start();
    gw = first;
    const transfer = (g: TestGateway, token: string, amount: number) =>
      send(g, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...json({ amount, currency: 'usd' }) });
    const acme = await first.token({ agent: 'bot', tenant: 'acme' });
    expectForwarded(await transfer(first, acme, 800));
    expectForwarded(await send(first, upstream, '/stripe/v1/charges', { token: acme }));
    expectForwarded(await send(first, upstream, '/stripe/v1/charges', { token: acme }));
    await first.close({ keep: true });

    const second = await start(first.root);
    gw = second;
    const acmeAgain = await second.token({ agent: 'bot', tenant: 'acme' });
    const globex = await second.token({ agent: 'bot', tenant: 'globex' });
    expectLimited(await transfer(second, acmeAgain, 300), 'VALET_ERR_BUDGET_EXCEEDED', 'daily-transfer-budget', 86_400);
    expectForwarded(await transfer(second, acmeAgain, 200));
    // The other tenant's "bot" has its own budget and its own history.
    expectForwarded(await transfer(second, globex, 1000));
    const r = await send(second, upstream, '/stripe/v1/charges', { token: acmeAgain });
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expectForwarded(await send(second, upstream, '/stripe/v1/charges', { token: globex }));
  });
});
