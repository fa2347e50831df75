/**
 * Scopes that do not trust the token, through real sockets: a policy file's place scopes its
 * rules, the agent registry decides team and tenant, a missing claim never escapes a deny, and a
 * team file cannot open an upstream the organisation never allows.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, form, send, startStripeGateway, STRIPE_TOOLS_YAML } from './policy-support.js';

const FILES = {
  'tools.yaml': STRIPE_TOOLS_YAML,
  'agents.yaml': `agents:
  - { id: r1, team: research }
  - { id: pay-bot, team: payments }
  - { id: acme-bot, tenant: acme }
`,
  'agents/bot1.yaml': `rules:
  - { id: bot1-no-charges-read, upstream: stripe, methods: [GET], paths: [/v1/charges], effect: deny }
  - { id: bot1-charges, upstream: stripe, methods: [POST], paths: [/v1/charges], effect: allow }
`,
  'teams/research.yaml': 'rules: [{ id: research-no-stripe, upstream: stripe, effect: deny, reason: research has no business with payments }]\n',
  'teams/payments.yaml': `rules:
  - { id: payments-transfers, tools: [stripe.create_transfer], effect: allow }
  - { id: payments-github, upstream: github, effect: allow }
`,
  'tenants/acme/teams/ops.yaml': 'rules: [{ id: acme-ops-no-refunds, upstream: stripe, paths: [/v1/refunds/**], effect: deny }]\n',
};

describe('policy file places and the agent registry', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      rules: [{ id: 'org-reads', upstream: 'stripe', methods: ['GET'], effect: 'allow' }],
      files: {
        ...FILES,
        // A second upstream, never named by an organisation-level allow.
        'github.yaml': `upstreams: [{ name: github, origin: "${upstream.origin}", credential: { scheme: bearer, secret: STRIPE_KEY } }]\n`,
      },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('a rule in agents/bot1.yaml applies to bot1 only, deny and allow alike', async () => {
    // Both in team ops, which no team file restricts.
    const bot1 = await gw.token({ agent: 'bot1', team: 'ops' });
    const bot2 = await gw.token({ agent: 'bot2', team: 'ops' });
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/charges', { token: bot1 }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('bot1-no-charges-read');
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: bot2 }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: bot1, method: 'POST' }));
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/charges', { token: bot2, method: 'POST' }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });

  it('a team deny applies to a token with no team claim; a tenant+team deny to one with neither claim', async () => {
    const none = await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'nobody-knows' }) });
    const e = expectRefused(none, 403, 'VALET_ERR_POLICY_DENIED');
    expect(e.rule).toBe('research-no-stripe');
    expect(await audit(gw, none)).toMatchObject({ decision: 'deny', rule: 'research-no-stripe', agent: 'nobody-knows' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'nobody-knows', team: 'ops' }) }));

    const refund = '/stripe/v1/refunds/re_1';
    expect(expectRefused(await send(gw, upstream, refund, { token: await gw.token({ agent: 'o', team: 'ops' }) }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('acme-ops-no-refunds');
    expectForwarded(await send(gw, upstream, refund, { token: await gw.token({ agent: 'o', team: 'ops', tenant: 'globex' }) }));
  });

  it('a token claiming team payments for an agent the registry puts in research is refused', async () => {
    const r = await send(gw, upstream, '/stripe/v1/transfers', { token: await gw.token({ agent: 'r1', team: 'payments' }), method: 'POST', ...form('amount=100&currency=usd') });
    const e = expectRefused(r, 403, 'VALET_ERR_IDENTITY_REFUSED');
    expect(e.message).toMatch(/claims team "payments", but the agent registry puts agent "r1" in another team/);
    expect(await audit(gw, r)).toMatchObject({ agent: 'r1', error_code: 'VALET_ERR_IDENTITY_REFUSED', status: 403 });
    // A claimed tenant the registry does not give the agent is refused too.
    expectRefused(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'acme-bot', tenant: 'globex' }) }), 403, 'VALET_ERR_IDENTITY_REFUSED');
  });

  it('a missing team claim is filled from the registry, so the team’s rules apply', async () => {
    // pay-bot: the payments allow applies, and the research deny does not.
    expectForwarded(await send(gw, upstream, '/stripe/v1/transfers', { token: await gw.token({ agent: 'pay-bot' }), method: 'POST', ...form('amount=100&currency=usd') }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'pay-bot' }) }));
    // r1: the research deny applies by the registry, not merely because the claim is missing.
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'r1' }) }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('research-no-stripe');
    // A filled tenant is what the audit row records.
    const acme = await send(gw, upstream, '/stripe/v1/refunds/re_1', { token: await gw.token({ agent: 'acme-bot', team: 'ops' }) });
    expect(expectRefused(acme, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('acme-ops-no-refunds');
    expect(await audit(gw, acme)).toMatchObject({ tenant: 'acme' });
  });

  it('a teams/payments.yaml allow for an upstream the organisation never mentions does not allow', async () => {
    const r = await send(gw, upstream, '/github/repos/acme/x', { token: await gw.token({ agent: 'pay-bot', team: 'payments' }) });
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });
});

describe('gateway.policy.require_registered_agents', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      gateway: { policy: { require_registered_agents: true } },
      rules: [{ id: 'org-reads', upstream: 'stripe', methods: ['GET'], effect: 'allow' }],
      files: { 'agents.yaml': 'agents: [{ id: known, team: ops }]\n' },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('refuses an agent the registry does not list, and serves one it does', async () => {
    const e = expectRefused(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'stranger', team: 'ops' }) }), 403, 'VALET_ERR_IDENTITY_REFUSED');
    expect(e.message).toMatch(/agent "stranger" is not in the agent registry/);
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'known' }) }));
  });
});

describe('valet policy check and explain name rules that escape their file’s scope', () => {
  const dirs: string[] = [];
  const write = (files: Record<string, string>): string => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-scope-cli-'));
    dirs.push(dir);
    const base = `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams:
  - { name: stripe, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }
  - { name: github, origin: "http://127.0.0.1:2", credential: { scheme: bearer, secret: K } }
rules:
  - { id: org-reads, upstream: stripe, methods: [GET], effect: allow }
`;
    for (const [name, text] of Object.entries({ 'base.yaml': base, ...files })) {
      mkdirSync(dirname(join(dir, name)), { recursive: true });
      writeFileSync(join(dir, name), text);
    }
    return dir;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('check: an explicit scope for another agent is an error naming the file and rule', async () => {
    const dir = write({ 'agents/bot1.yaml': 'rules:\n  - { id: sneaky, scope: { agent: bot2 }, upstream: stripe, effect: allow }\n' });
    const r = await runCli(['policy', 'check', dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/agents\/bot1\.yaml:2:\d+: rules\[0\]\.scope\.agent: agent "bot2" escapes the file's scope/);
  });

  it('check warns about inert scoped allows and scope-only grants in organisation files; --strict fails on them', async () => {
    const dir = write({
      'teams/payments.yaml': 'rules:\n  - { id: payments-github, upstream: github, effect: allow }\n',
      'more.yaml': 'rules:\n  - { id: ops-github, scope: { team: ops }, upstream: github, effect: allow }\n',
    });
    const r = await runCli(['policy', 'check', dir]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/warning: .*more\.yaml:2: rule ops-github allow is scoped only by "scope:" in an organisation-level file; put it in teams\/ops\.yaml/);
    expect(r.stderr).toMatch(/warning: .*teams\/payments\.yaml:2: rule payments-github allow is inert: no organisation-level allow rule names this upstream/);
    expect((await runCli(['policy', 'check', '--strict', dir])).code).toBe(1);

    const x = await runCli(['policy', 'explain', '--config', dir, '--agent', 'p', '--team', 'payments', '--upstream', 'github']);
    expect(x.stdout).toMatch(/payments-github .*\[scope: team payments \(team from the file's place\)\]\s+inert: /);
    expect(x.stdout).toMatch(/decision: deny by default-deny/);
  });
});
