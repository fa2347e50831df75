import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, send, startStripeGateway } from './policy-support.js';

describe('scopes: organisation, tenant, team and agent', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      rules: [
        // Organisation level (no scope).
        { id: 'org-reads', upstream: 'stripe', methods: ['GET'], effect: 'allow' },
        { id: 'org-no-deletes', upstream: 'stripe', methods: ['DELETE'], effect: 'deny', reason: 'nobody deletes' },
        // Narrower allows that try to override it.
        { id: 'ops-team-deletes', scope: { team: 'ops' }, upstream: 'stripe', methods: ['DELETE'], effect: 'allow' },
        { id: 'janitor-deletes', scope: { agent: 'janitor' }, upstream: 'stripe', methods: ['DELETE'], effect: 'allow' },
        {
          id: 'acme-janitor-deletes',
          scope: { tenant: 'acme', team: 'ops', agent: 'janitor' },
          upstream: 'stripe',
          methods: ['DELETE'],
          effect: 'allow',
        },
        // A team-scoped deny.
        { id: 'support-no-refunds', scope: { team: 'support' }, upstream: 'stripe', paths: ['/v1/refunds/**'], effect: 'deny' },
        // Tenant-scoped allows.
        { id: 'acme-charges', scope: { tenant: 'acme' }, upstream: 'stripe', methods: ['POST'], paths: ['/v1/charges'], effect: 'allow' },
        { id: 'globex-payouts', scope: { tenant: 'globex' }, upstream: 'stripe', methods: ['POST'], paths: ['/v1/payouts'], effect: 'allow' },
        // Tenant + team: the same team name in another tenant is another team.
        { id: 'acme-ops-invoices', scope: { tenant: 'acme', team: 'ops' }, upstream: 'stripe', methods: ['POST'], paths: ['/v1/invoices'], effect: 'allow' },
      ],
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('an organisation-level deny of DELETE cannot be overridden by a team-, agent- or fully-scoped allow', async () => {
    for (const claims of [
      { agent: 'someone', team: 'ops' },
      { agent: 'janitor' },
      { agent: 'janitor', tenant: 'acme', team: 'ops' },
    ]) {
      const r = await send(gw, upstream, '/stripe/v1/customers/cus_1', { token: await gw.token(claims), method: 'DELETE' });
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule, JSON.stringify(claims)).toBe('org-no-deletes');
      expect(e.reason).toBe('nobody deletes');
    }
  });

  it('a team-scoped deny restricts only that team', async () => {
    const path = '/stripe/v1/refunds/re_1';
    const support = await send(gw, upstream, path, { token: await gw.token({ agent: 'helper', team: 'support' }) });
    expect(expectRefused(support, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('support-no-refunds');
    expect(await audit(gw, support)).toMatchObject({ decision: 'deny', rule: 'support-no-refunds', agent: 'helper' });

    // Same agent id in another team: the org-level read allow applies.
    expectForwarded(await send(gw, upstream, path, { token: await gw.token({ agent: 'helper', team: 'ops' }) }));
    // No team claim at all: leaving the claim out does not escape the team's deny.
    expect(expectRefused(await send(gw, upstream, path, { token: await gw.token({ agent: 'helper' }) }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('support-no-refunds');
    // Outside the denied paths, support may read.
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: await gw.token({ agent: 'helper', team: 'support' }) }));
  });

  it('a team-scoped deny also binds a teammate with an agent-scoped allow', async () => {
    const r = await send(gw, upstream, '/stripe/v1/refunds/re_1', { token: await gw.token({ agent: 'janitor', team: 'support' }) });
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('support-no-refunds');
  });

  it('tenant isolation: an acme rule never matches a globex token with the same agent id, and vice versa', async () => {
    const acme = await gw.token({ agent: 'shared-bot', tenant: 'acme' });
    const globex = await gw.token({ agent: 'shared-bot', tenant: 'globex' });
    const none = await gw.token({ agent: 'shared-bot' });
    const post = (token: string, path: string) => send(gw, upstream, `/stripe${path}`, { token, method: 'POST' });

    const a1 = await post(acme, '/v1/charges');
    expectForwarded(a1);
    expect(await audit(gw, a1)).toMatchObject({ decision: 'allow', rule: 'acme-charges', tenant: 'acme' });
    expect(expectRefused(await post(globex, '/v1/charges'), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');

    const g1 = await post(globex, '/v1/payouts');
    expectForwarded(g1);
    expect(await audit(gw, g1)).toMatchObject({ decision: 'allow', rule: 'globex-payouts', tenant: 'globex' });
    expect(expectRefused(await post(acme, '/v1/payouts'), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');

    // No tenant claim matches no tenant-scoped rule.
    for (const path of ['/v1/charges', '/v1/payouts']) {
      expect(expectRefused(await post(none, path), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    }
  });

  it('tenant + team scope: team "ops" of globex is not team "ops" of acme', async () => {
    const post = async (claims: Record<string, string>) =>
      send(gw, upstream, '/stripe/v1/invoices', { token: await gw.token({ agent: 'billing', ...claims }), method: 'POST' });
    expectForwarded(await post({ tenant: 'acme', team: 'ops' }));
    expect(expectRefused(await post({ tenant: 'globex', team: 'ops' }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expect(expectRefused(await post({ team: 'ops' }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expect(expectRefused(await post({ tenant: 'acme' }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });
});
