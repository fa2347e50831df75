import { randomUUID } from 'node:crypto';
import { createClient } from '@redis/client';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { tcpRelay, type TcpRelay } from '../helpers/relay.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { expectForwarded, expectRefused, json, send, STRIPE_TOOLS_YAML, startStripeGateway, type Sent } from './policy-support.js';

// A real Redis on 127.0.0.1:6379; every key under a prefix of this run, deleted afterwards.
const REDIS = 'redis://127.0.0.1:6379';
const run = `valet-test:${randomUUID()}:`;
const redis = createClient({ url: REDIS });

const LIMITS_YAML = `rate_limits:
  - id: balance-per-minute
    upstream: stripe
    paths: [/v1/balance]
    limit: 5
    window: 1m
    key: agent
  - id: payouts-fail-open
    upstream: stripe
    paths: [/v1/payouts]
    limit: 2
    window: 1m
    key: agent
    fail_open: true
budgets:
  - id: daily-transfer-budget
    tools: [stripe.create_transfer]
    sum: args.amount
    limit: 1000
    window: 1d
    key: agent
`;

const RULES = [
  { id: 'balance', upstream: 'stripe', methods: ['GET'], paths: ['/v1/balance'], effect: 'allow' },
  { id: 'payouts', upstream: 'stripe', methods: ['GET'], paths: ['/v1/payouts'], effect: 'allow' },
  { id: 'customers', upstream: 'stripe', methods: ['GET'], paths: ['/v1/customers'], effect: 'allow' },
  { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
  { id: 'three-an-hour', upstream: 'stripe', methods: ['GET'], paths: ['/v1/charges'], when: 'history.calls_last_hour < 3', effect: 'allow' },
];

const fleetOf = (prefix: string, url = REDIS): Record<string, unknown> => ({ counters: { backend: 'redis', redis: { url, prefix } } });

async function readyz(gw: TestGateway): Promise<{ status: number; body: { ready: boolean; checks: { counters: string } } }> {
  const res = await request(`${gw.adminUrl}/readyz`);
  return { status: res.statusCode, body: (await res.body.json()) as { ready: boolean; checks: { counters: string } } };
}

/** Polls (up to 5 s) until `/readyz` says `ready`. */
async function untilReady(gw: TestGateway, ready: boolean): Promise<{ ready: boolean; checks: { counters: string } }> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const r = await readyz(gw);
    if (r.body.ready === ready || Date.now() > deadline) return r.body;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

beforeAll(async () => {
  await redis.connect();
});
afterAll(async () => {
  for await (const keys of redis.scanIterator({ MATCH: `${run}*`, COUNT: 1000 })) if (keys.length > 0) await redis.del(keys);
  redis.destroy();
});

describe('a fleet of three gateways sharing counters in Redis', () => {
  let upstream: FakeUpstream;
  const fleet: TestGateway[] = [];

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const prefix = `${run}fleet:`;
    for (let i = 0; i < 3; i++) {
      fleet.push(await startStripeGateway(upstream, { gateway: fleetOf(prefix), rules: RULES, files: { 'tools.yaml': STRIPE_TOOLS_YAML, 'limits.yaml': LIMITS_YAML } }));
    }
  });
  afterAll(async () => {
    for (const gw of fleet) await gw.close();
    await upstream?.close();
  });

  /** `n` requests at once, spread round robin over the fleet. */
  async function burst(n: number, path: string, token: string, body?: { body: string; contentType: string }): Promise<Sent[]> {
    return Promise.all(
      Array.from({ length: n }, (_, i) => send(fleet[i % fleet.length] as TestGateway, upstream, path, { token, ...(body && { method: 'POST', ...body }) })),
    );
  }

  it('a burst of 30 requests over three instances against 5 a minute lets exactly 5 through', async () => {
    const token = await (fleet[0] as TestGateway).token({ agent: 'burst-agent', tenant: 'acme' });
    const before = upstream.requests.length;
    const sent = await burst(30, '/stripe/v1/balance', token);
    expect(sent.filter((r) => r.status === 200)).toHaveLength(5);
    const refused = sent.filter((r) => r.status !== 200);
    expect(refused).toHaveLength(25);
    for (const r of refused) expect(r.text).toContain('VALET_ERR_RATE_LIMITED');
    expect(upstream.requests.slice(before).filter((q) => q.url === '/v1/balance')).toHaveLength(5);
  });

  it('a budget of 1000 a day: ten concurrent transfers of 300 over three instances spend exactly 900', async () => {
    const token = await (fleet[0] as TestGateway).token({ agent: 'budget-agent', tenant: 'acme' });
    const before = upstream.requests.length;
    const sent = await burst(10, '/stripe/v1/transfers', token, json({ amount: 300, currency: 'eur' }));
    expect(sent.filter((r) => r.status === 200)).toHaveLength(3);
    for (const r of sent.filter((x) => x.status !== 200)) expect(r.text).toContain('VALET_ERR_BUDGET_EXCEEDED');
    expect(upstream.requests.slice(before).filter((q) => q.url === '/v1/transfers')).toHaveLength(3);
  });

  it('history is shared: a condition counting calls sees those made through every instance', async () => {
    const token = await (fleet[0] as TestGateway).token({ agent: 'history-agent', tenant: 'acme' });
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send(fleet[i % 3] as TestGateway, upstream, '/stripe/v1/charges', { token })).status);
    expect(statuses).toEqual([200, 200, 200, 403, 403, 403]);
  });

  it('keeps tenants apart: the same agent id in another tenant has its own 5', async () => {
    const token = await (fleet[1] as TestGateway).token({ agent: 'burst-agent', tenant: 'globex' });
    const sent = await burst(9, '/stripe/v1/balance', token);
    expect(sent.filter((r) => r.status === 200)).toHaveLength(5);
  });

  it('/readyz reports the counters ready while Redis answers', async () => {
    // Polled: the audit database's lock check may meet a write in progress after the bursts above.
    const r = await untilReady(fleet[2] as TestGateway, true);
    expect(r.ready).toBe(true);
    expect(r.checks.counters).toBe('ok');
  });
});

describe('Redis unreachable (VALET_REDIS_URL at a closed port)', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    // The configuration names no backend: the variable alone selects Redis.
    gw = await startStripeGateway(upstream, {
      rules: RULES,
      files: { 'tools.yaml': STRIPE_TOOLS_YAML, 'limits.yaml': LIMITS_YAML },
      env: { VALET_REDIS_URL: 'redis://127.0.0.1:1' },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('refuses a limited request with a coded 503 and forwards nothing (rate limit, budget, history)', async () => {
    const token = await gw.token({ agent: 'down-agent', tenant: 'acme' });
    for (const [path, body] of [['/stripe/v1/balance', undefined], ['/stripe/v1/transfers', json({ amount: 1, currency: 'eur' })], ['/stripe/v1/charges', undefined]] as const) {
      const r = await send(gw, upstream, path, { token, ...(body && { method: 'POST', ...body }) });
      const e = expectRefused(r, 503, 'VALET_ERR_COUNTERS_UNAVAILABLE');
      expect(r.text, path).toContain('Redis is unreachable');
      expect(r.text).not.toContain('127.0.0.1:1');
      expect(e).toBeDefined();
    }
  });

  it('a limit with fail_open counts on the instance alone instead', async () => {
    const token = await gw.token({ agent: 'open-agent', tenant: 'acme' });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await send(gw, upstream, '/stripe/v1/payouts', { token })).status);
    expect(statuses).toEqual([200, 200, 429]);
  });

  it('a request no limit or history condition applies to is forwarded', async () => {
    const token = await gw.token({ agent: 'free-agent', tenant: 'acme' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers', { token }));
  });

  it('/readyz is not ready and says why', async () => {
    const r = await readyz(gw);
    expect(r.status).toBe(503);
    expect(r.body.ready).toBe(false);
    expect(r.body.checks.counters).toMatch(/Redis is unreachable|connecting/);
  });
});

describe('Redis going away and coming back', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let relay: TcpRelay;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    relay = await tcpRelay(6379);
    gw = await startStripeGateway(upstream, {
      gateway: fleetOf(`${run}flap:`, `redis://127.0.0.1:${relay.port}`),
      rules: RULES,
      files: { 'tools.yaml': STRIPE_TOOLS_YAML, 'limits.yaml': LIMITS_YAML },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await relay?.cut();
    await upstream?.close();
  });

  it('fails closed while Redis is gone and reconnects by itself, keeping the count', async () => {
    const token = await gw.token({ agent: 'flap-agent', tenant: 'acme' });
    expect((await untilReady(gw, true)).checks.counters).toBe('ok');
    for (let i = 0; i < 3; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token }));
    await relay.cut();
    expect((await untilReady(gw, false)).checks.counters).toBe('Redis is unreachable');
    expectRefused(await send(gw, upstream, '/stripe/v1/balance', { token }), 503, 'VALET_ERR_COUNTERS_UNAVAILABLE');
    await relay.restore();
    expect((await untilReady(gw, true)).checks.counters).toBe('ok');
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await send(gw, upstream, '/stripe/v1/balance', { token })).status);
    expect(statuses).toEqual([200, 200, 429]);
  });
});

describe('gateway.counters is checked at start', () => {
  it.each([
    ['redis without a URL', { counters: { backend: 'redis' } }, 'gateway.counters.redis.url'],
    ['a prefix with a hash-tag brace', { counters: { backend: 'redis', redis: { url: REDIS, prefix: 'a{b}' } } }, 'prefix'],
    ['a URL of another scheme', { counters: { redis: { url: 'http://127.0.0.1:6379' } } }, 'url'],
    ['an unknown backend', { counters: { backend: 'memcached' } }, 'backend'],
  ])('%s is a configuration error', async (_name, gateway, names) => {
    const upstream = await startFakeUpstream();
    try {
      await expect(startStripeGateway(upstream, { gateway, rules: RULES, files: { 'tools.yaml': STRIPE_TOOLS_YAML } })).rejects.toMatchObject({ code: 'VALET_ERR_CONFIG', message: expect.stringContaining(names) });
    } finally {
      await upstream.close();
    }
  });
});
