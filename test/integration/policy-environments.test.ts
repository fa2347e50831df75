import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, send, startStripeGateway } from './policy-support.js';

const RULES = [
  { id: 'reads', upstream: 'stripe', methods: ['GET'], effect: 'allow' },
  { id: 'dev-deletes', upstream: 'stripe', methods: ['DELETE'], environments: ['development'], effect: 'allow' },
  {
    id: 'no-prod-deletes',
    upstream: 'stripe',
    methods: ['DELETE'],
    environments: ['production'],
    effect: 'deny',
    reason: 'no deletes in production',
  },
];

describe('environments', () => {
  let upstream: FakeUpstream;
  const gateways: TestGateway[] = [];
  let dev: TestGateway;
  let prod: TestGateway;
  /** Production gateway with only the development allow: nothing but the environment stands in the way. */
  let prodAllowOnly: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const start = async (environment: string | undefined, rules: unknown[]) => {
      const gw = await startStripeGateway(upstream, {
        rules,
        // Credentials come from the environment only: production refuses the secret store without a master key.
        ...(environment !== undefined && { gateway: { environment, secrets: { sources: ['env'] } } }),
      });
      gateways.push(gw);
      return gw;
    };
    dev = await start(undefined, RULES);
    prod = await start('production', RULES);
    prodAllowOnly = await start('production', RULES.filter((r) => r.id !== 'no-prod-deletes'));
  });
  afterAll(async () => {
    for (const gw of gateways) await gw.close();
    await upstream?.close();
  });

  const del = (gw: TestGateway, token: string) => send(gw, upstream, '/stripe/v1/customers/cus_1', { token, method: 'DELETE' });

  it('the gateways run in the environments configured', () => {
    expect(dev.gateway.config.gateway.environment).toBe('development');
    expect(prod.gateway.config.gateway.environment).toBe('production');
  });

  it('development gateway, token without env: the development allow applies', async () => {
    const r = await del(dev, await dev.token({ agent: 'cleanup-bot' }));
    expect(expectForwarded(r).method).toBe('DELETE');
    expect(await audit(dev, r)).toMatchObject({ decision: 'allow', rule: 'dev-deletes' });
  });

  it('development gateway, token claiming development: allowed', async () => {
    expectForwarded(await del(dev, await dev.token({ agent: 'cleanup-bot', environment: 'development' })));
  });

  it('development gateway, token claiming production: the production deny applies (a restrictive rule matches either)', async () => {
    const r = await del(dev, await dev.token({ agent: 'cleanup-bot', environment: 'production' }));
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('no-prod-deletes');
  });

  it('production gateway, token without env: denied by the production rule', async () => {
    const r = await del(prod, await prod.token({ agent: 'cleanup-bot' }));
    const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
    expect(e.rule).toBe('no-prod-deletes');
    expect(e.reason).toBe('no deletes in production');
    expect(await audit(prod, r)).toMatchObject({ decision: 'deny', rule: 'no-prod-deletes' });
  });

  it('production gateway, token claiming development: cannot get the development allow', async () => {
    const r = await del(prod, await prod.token({ agent: 'cleanup-bot', environment: 'development' }));
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('no-prod-deletes');

    // Even with no deny rule at all, the token's claim does not widen what the production gateway allows.
    const r2 = await del(prodAllowOnly, await prodAllowOnly.token({ agent: 'cleanup-bot', environment: 'development' }));
    expect(expectRefused(r2, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });

  it('rules without environments apply everywhere (control)', async () => {
    for (const gw of [dev, prod, prodAllowOnly]) {
      expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: await gw.token({ agent: 'reader', environment: 'development' }) }));
    }
  });
});
