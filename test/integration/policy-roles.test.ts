import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, json, send, STRIPE_TOOLS_YAML, startStripeGateway } from './policy-support.js';

describe('roles and delegation', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        { id: 'finance-transfers', tools: ['stripe.create_transfer'], roles: ['finance'], effect: 'allow' },
        { id: 'support-customers', tools: ['stripe.get_customer'], roles: ['support'], effect: 'allow' },
        { id: 'suspended-nothing', upstream: 'stripe', roles: ['suspended'], effect: 'deny', reason: 'suspended principals may do nothing' },
      ],
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const transfer = (token: string) => send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...json({ amount: 10, currency: 'usd' }) });
  const customer = (token: string) => send(gw, upstream, '/stripe/v1/customers/cus_1', { token });

  describe('roles', () => {
    it('finance may create transfers but not read customers', async () => {
      const token = await gw.token({ agent: 'fin-bot', roles: ['finance'] });
      const t = await transfer(token);
      expectForwarded(t);
      expect(await audit(gw, t)).toMatchObject({ decision: 'allow', rule: 'finance-transfers' });
      expect(expectRefused(await customer(token), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    });

    it('support may read customers but not create transfers', async () => {
      const token = await gw.token({ agent: 'help-bot', roles: ['support'] });
      expectForwarded(await customer(token));
      expect(expectRefused(await transfer(token), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    });

    it('an agent with both roles gets both', async () => {
      const token = await gw.token({ agent: 'both-bot', roles: ['support', 'finance'] });
      expectForwarded(await transfer(token));
      expectForwarded(await customer(token));
    });

    it('an agent with no roles, or an unrelated role, gets neither', async () => {
      for (const roles of [[], ['finances'], ['Finance']]) {
        const token = await gw.token({ agent: 'nobody', roles });
        expectRefused(await transfer(token), 403, 'VALET_ERR_POLICY_DENIED');
        expectRefused(await customer(token), 403, 'VALET_ERR_POLICY_DENIED');
      }
    });
  });

  describe('delegation (RFC 8693 act): the agent gets at most what both it and the user may do', () => {
    it('agent finance acting for a support user: denied, and the reason says whom it acts for', async () => {
      const token = await gw.token({ agent: 'fin-bot', roles: ['finance'], user: 'alice', userRoles: ['support'] });
      const r = await transfer(token);
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('default-deny');
      expect(e.reason).toMatch(/acting for user alice/);
      expect(await audit(gw, r)).toMatchObject({ decision: 'deny', agent: 'fin-bot', user: 'alice' });
    });

    it('agent finance acting for a finance user: allowed', async () => {
      const token = await gw.token({ agent: 'fin-bot', roles: ['finance'], user: 'bob', userRoles: ['finance'] });
      const r = await transfer(token);
      expectForwarded(r);
      expect(await audit(gw, r)).toMatchObject({ decision: 'allow', rule: 'finance-transfers', agent: 'fin-bot', user: 'bob' });
    });

    it('agent support acting for a finance user: denied (the user cannot lend the agent a role)', async () => {
      const token = await gw.token({ agent: 'help-bot', roles: ['support'], user: 'bob', userRoles: ['finance'] });
      const e = expectRefused(await transfer(token), 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('default-deny');
      expect(e.reason).not.toMatch(/acting for user/);
    });

    it('a delegating user without roles grants nothing', async () => {
      const token = await gw.token({ agent: 'fin-bot', roles: ['finance'], user: 'carol' });
      expect(expectRefused(await transfer(token), 403, 'VALET_ERR_POLICY_DENIED').reason).toMatch(/acting for user carol/);
    });

    it("a deny matching only the user's roles still denies the agent", async () => {
      const token = await gw.token({ agent: 'fin-bot', roles: ['finance'], user: 'mallory', userRoles: ['finance', 'suspended'] });
      const e = expectRefused(await transfer(token), 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('suspended-nothing');
      expect(e.reason).toBe('acting for user mallory: suspended principals may do nothing');
    });
  });
});
