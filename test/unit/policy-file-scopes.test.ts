/**
 * Scopes do not rest on what a token says: a policy file's place scopes its rules, the agent
 * registry decides tenant and team, a missing claim never escapes a deny, and a scoped file cannot
 * open an upstream the organisation never allows.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import type { Config, PolicyTestConfig } from '../../gateway/config/types.js';
import { ConfigError, ValetError } from '../../gateway/errors.js';
import { compilePolicy, type Policy } from '../../gateway/policy/compile.js';
import { memoryCounterStore, memoryHistoryStore } from '../../gateway/policy/counters.js';
import { findScopeProblems } from '../../gateway/policy/lint.js';
import { explainScenario, runPolicyTests, scenarioInput } from '../../gateway/policy/testing.js';
import { agent } from '../helpers/fixtures.js';

const BASE = `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams:
  - { name: stripe, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }
  - { name: github, origin: "http://127.0.0.1:2", credential: { scheme: bearer, secret: K } }
tools:
  - { name: stripe.create_transfer, upstream: stripe, method: POST, path: /v1/transfers }
`;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function load(files: Record<string, string>): Config {
  const dir = mkdtempSync(join(tmpdir(), 'valet-scopes-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'base.yaml'), BASE);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return loadConfig(dir);
}

function problemsOf(files: Record<string, string>): string[] {
  try {
    load(files);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.file.split('/').slice(-2).join('/')}: ${p.path}: ${p.message}`);
    throw err;
  }
  throw new Error('the configuration loaded');
}

type Identity = PolicyTestConfig['identity'];
type Request = PolicyTestConfig['request'];

function decide(config: Config, identity: Identity, request: Request): { effect: string; rule: string } {
  const policy = compilePolicy(config, { counters: memoryCounterStore(), history: memoryHistoryStore() });
  const d = policy.evaluate({ ...scenarioInput(policy, config, { identity, request }), context: {} });
  return { effect: d.effect, rule: d.rules.join(',') };
}

const GET_CHARGES: Request = { upstream: 'stripe', method: 'GET', path: '/v1/charges' };
const ORG_OPENS_STRIPE = 'rules:\n  - { id: org-balance, upstream: stripe, methods: [GET], paths: [/v1/balance], effect: allow }\n';

describe('a policy file’s place scopes its rules', () => {
  it('agents/, teams/ and nested tenants/…/teams/ add their scope to every rule, rate limit and budget', () => {
    const config = load({
      'agents/bot1.yaml': 'rules: [{ id: a, upstream: stripe, effect: deny }]\nrate_limits: [{ id: l, limit: 1, window: 1m }]\n',
      'agents/bot2/more/deep.yaml': 'budgets: [{ id: b, sum: "1", limit: 5, window: 1d }]\n',
      'teams/payments.yaml': 'rules: [{ id: t, scope: { agent: pay-bot }, upstream: stripe, effect: deny }]\n',
      'tenants/acme/teams/payments.yaml': 'rules: [{ id: n, upstream: stripe, effect: deny }]\n',
      'tenants/globex.yml': 'rules: [{ id: g, upstream: stripe, effect: deny }]\n',
      'rules.yaml': 'rules: [{ id: o, scope: { team: ops }, upstream: stripe, effect: deny }]\n',
    });
    const scopeOf = (id: string) => [...config.rules, ...config.rateLimits, ...config.budgets].find((r) => r.id === id);
    expect(scopeOf('a')).toMatchObject({ scope: { agent: 'bot1' }, fileScope: { agent: 'bot1' } });
    expect(scopeOf('l')).toMatchObject({ scope: { agent: 'bot1' } });
    expect(scopeOf('b')).toMatchObject({ scope: { agent: 'bot2' } });
    // An explicit scope that narrows the file's is kept.
    expect(scopeOf('t')).toMatchObject({ scope: { team: 'payments', agent: 'pay-bot' } });
    expect(scopeOf('n')).toMatchObject({ scope: { tenant: 'acme', team: 'payments' } });
    expect(scopeOf('g')).toMatchObject({ scope: { tenant: 'globex' } });
    // Elsewhere: the explicit scope only, as before.
    expect(scopeOf('o')?.scope).toEqual({ team: 'ops' });
    expect(scopeOf('o')?.fileScope).toBeUndefined();
  });

  it('a rule in agents/bot1.yaml does not apply to bot2; nor does a rate limit', () => {
    const config = load({
      'rules.yaml': 'rules: [{ id: org-reads, upstream: stripe, methods: [GET], effect: allow }]\n',
      'agents/bot1.yaml': 'rules: [{ id: bot1-no-charges, upstream: stripe, paths: [/v1/charges], effect: deny }]\n',
    });
    expect(decide(config, { agent: 'bot1' }, GET_CHARGES)).toEqual({ effect: 'deny', rule: 'bot1-no-charges' });
    expect(decide(config, { agent: 'bot2' }, GET_CHARGES)).toEqual({ effect: 'allow', rule: 'org-reads' });
  });

  it('an explicit scope that contradicts the file’s place is a configuration error, for each kind of scope', () => {
    expect(
      problemsOf({
        'agents/bot1.yaml': 'rules: [{ id: x, scope: { agent: bot2 }, upstream: stripe, effect: allow }]\n',
        'teams/payments.yaml': 'rate_limits: [{ id: y, scope: { team: research }, limit: 1, window: 1m }]\n',
        'tenants/acme/rules.yaml': 'budgets: [{ id: z, scope: { tenant: globex }, sum: "1", limit: 1, window: 1m }]\n',
      }),
    ).toEqual([
      expect.stringMatching(/^agents\/bot1\.yaml: rules\[0\]\.scope\.agent: agent "bot2" escapes the file's scope: every rule in .* applies to agent "bot1" only$/),
      expect.stringMatching(/^teams\/payments\.yaml: rate_limits\[0\]\.scope\.team: team "research" escapes the file's scope/),
      expect.stringMatching(/^acme\/rules\.yaml: budgets\[0\]\.scope\.tenant: tenant "globex" escapes the file's scope/),
    ]);
  });

  it('a scope directory that would not scope (out of order, below an ordinary directory) is an error', () => {
    expect(problemsOf({ 'agents/bot1/teams/x.yaml': 'rules: []\n' })[0]).toMatch(/"teams\/" may not be nested below "agents\/"/);
    expect(problemsOf({ 'misc/teams/payments.yaml': 'rules: []\n' })[0]).toMatch(/"teams\/" is a scope directory only at the top/);
  });
});

describe('a missing claim never weakens a deny', () => {
  const config = (): Config =>
    load({
      'rules.yaml': 'rules: [{ id: org-reads, upstream: stripe, methods: [GET], effect: allow }]\n',
      'teams/research.yaml': 'rules: [{ id: research-no-stripe, upstream: stripe, effect: deny }]\n',
      'tenants/acme.yaml': `rules:
  - { id: acme-charges-escalate, upstream: stripe, paths: [/v1/charges], effect: escalate, approval: { group: g } }
  - { id: acme-transfers, tools: [stripe.create_transfer], effect: allow }
rate_limits: [{ id: acme-one-call, limit: 1, window: 1h }]
`,
    });

  it('a team deny and a tenant escalation apply to a token without that claim; an allow does not', () => {
    const c = config();
    expect(decide(c, { agent: 'x' }, { upstream: 'stripe', method: 'GET', path: '/v1/balance' })).toEqual({ effect: 'deny', rule: 'research-no-stripe' });
    expect(decide(c, { agent: 'x', team: 'ops' }, { upstream: 'stripe', method: 'GET', path: '/v1/balance' })).toEqual({ effect: 'allow', rule: 'org-reads' });
    expect(decide(c, { agent: 'x', team: 'ops' }, GET_CHARGES)).toEqual({ effect: 'escalate', rule: 'acme-charges-escalate' });
    expect(decide(c, { agent: 'x', team: 'ops', tenant: 'globex' }, GET_CHARGES)).toEqual({ effect: 'allow', rule: 'org-reads' });
    // The tenant's allow needs the tenant claim (the indexed tool path).
    const transfer: Request = { upstream: 'stripe', method: 'POST', path: '/v1/transfers' };
    expect(decide(c, { agent: 'x', team: 'ops' }, transfer)).toEqual({ effect: 'deny', rule: 'default-deny' });
    expect(decide(c, { agent: 'x', team: 'ops', tenant: 'acme' }, transfer)).toEqual({ effect: 'allow', rule: 'acme-transfers' });
  });

  it('explain agrees, and shows each rule’s effective scope', async () => {
    const c = config();
    const policy = compilePolicy(c, { counters: memoryCounterStore(), history: memoryHistoryStore() });
    const r = await explainScenario(policy, c, { identity: { agent: 'x' }, request: { upstream: 'stripe', method: 'GET', path: '/v1/balance' } });
    expect(r.decision.rules).toEqual(['research-no-stripe']);
    expect(r.trace.find((t) => t.id === 'research-no-stripe')).toMatchObject({ matched: true, scope: "team research (team from the file's place)" });
    expect(r.trace.find((t) => t.id === 'org-reads')).toMatchObject({ matched: true, scope: 'organisation' });
    const t = await explainScenario(policy, c, { identity: { agent: 'x', team: 'ops' }, request: { upstream: 'stripe', method: 'POST', path: '/v1/transfers' } });
    expect(t.trace.find((x) => x.id === 'acme-transfers')).toMatchObject({ matched: false, why: 'scope: tenant is not acme' });
  });

  it('a tenant rate limit counts a token without a tenant claim', () => {
    const c = config();
    const policy = compilePolicy(c, { counters: memoryCounterStore(), history: memoryHistoryStore() });
    const input = { ...scenarioInput(policy, c, { identity: { agent: 'x', team: 'ops' }, request: { upstream: 'stripe', method: 'GET', path: '/v1/balance' } }), context: {} };
    expect(policy.charge(input)).toBeUndefined();
    expect(policy.charge(input)).toMatchObject({ kind: 'rate_limit', id: 'acme-one-call' });
  });
});

describe('the agent registry decides tenant and team', () => {
  const registry = `agents:
  - { id: r1, team: research }
  - { id: shared, tenant: acme, team: ops }
  - { id: shared, tenant: globex }
  - { id: loose }
`;
  const compile = (gateway = ''): Policy => {
    const c = load({ 'agents.yaml': registry + gateway });
    return compilePolicy(c, { counters: memoryCounterStore(), history: memoryHistoryStore() });
  };
  const refusal = (p: Policy, claims: Partial<typeof agent>): string => {
    try {
      p.resolveIdentity({ ...agent, ...claims });
    } catch (err) {
      expect(err).toBeInstanceOf(ValetError);
      expect((err as ValetError).code).toBe('VALET_ERR_IDENTITY_REFUSED');
      return (err as ValetError).message;
    }
    throw new Error('not refused');
  };

  it('fills a missing claim, refuses a disagreeing one, and resolves each token once', () => {
    const p = compile();
    const id = { ...agent, agent: 'r1' };
    const resolved = p.resolveIdentity(id);
    expect(resolved).toMatchObject({ agent: 'r1', team: 'research', tenant: undefined });
    expect(p.resolveIdentity(id)).toBe(resolved);
    expect(refusal(p, { agent: 'r1', team: 'payments' })).toMatch(/claims team "payments", but the agent registry puts agent "r1" in another team/);
    expect(p.resolveIdentity({ ...agent, agent: 'shared', tenant: 'acme' })).toMatchObject({ team: 'ops' });
    expect(refusal(p, { agent: 'shared', tenant: 'initech' })).toMatch(/claims tenant "initech"/);
    expect(refusal(p, { agent: 'shared' })).toMatch(/more than one tenant/);
    // Registered without tenant or team: the registry says nothing, the claims stand.
    expect(p.resolveIdentity({ ...agent, agent: 'loose', team: 'x', tenant: 'y' })).toMatchObject({ team: 'x', tenant: 'y' });
    // Unregistered agents pass unless the gateway requires registration.
    const other = { ...agent, agent: 'stranger' };
    expect(p.resolveIdentity(other)).toBe(other);
    expect(refusal(compile('gateway: { policy: { require_registered_agents: true } }\n'), { agent: 'stranger' })).toMatch(/not in the agent registry/);
  });

  it('is validated: unique ids per tenant, no id both with and without a tenant, not in a scoped file', () => {
    expect(
      problemsOf({
        'agents.yaml': `agents:
  - { id: a, tenant: acme }
  - { id: a, tenant: acme }
  - { id: b }
  - { id: b, tenant: acme }
`,
        'teams/ops.yaml': 'agents: [{ id: c, team: ops }]\n',
      }),
    ).toEqual([
      expect.stringMatching(/agents\[1\]\.id: agent "a" is already registered in tenant "acme"/),
      expect.stringMatching(/agents\[3\]\.id: agent "b" is registered both with and without a tenant/),
      expect.stringMatching(/teams\/ops\.yaml: agents\[0\]: the agent registry belongs in an organisation-level file/),
    ]);
  });

  it('policy tests see the registry: a refused identity is a deny by VALET_ERR_IDENTITY_REFUSED', async () => {
    const c = load({
      'agents.yaml': registry,
      'tests.yaml': `tests:
  - name: r1 claims payments
    identity: { agent: r1, team: payments }
    request: { upstream: stripe, method: GET, path: /v1/balance }
    expect: { effect: deny, rule: VALET_ERR_IDENTITY_REFUSED }
`,
    });
    expect((await runPolicyTests(c)).map((r) => r.passed)).toEqual([true]);
  });
});

describe('lower scopes cannot grant what the organisation never mentioned', () => {
  it('a scoped allow on an upstream no organisation-level allow names is inert; one it names works', () => {
    const c = load({
      'rules.yaml': ORG_OPENS_STRIPE + '  - { id: team-scoped-in-org-file, scope: { team: payments }, upstream: github, effect: allow }\n',
      'teams/payments.yaml': `rules:
  - { id: payments-github, upstream: github, effect: allow }
  - { id: payments-anything, effect: allow, paths: [/v1/refunds] }
  - { id: payments-transfers, tools: [stripe.create_transfer], effect: allow }
`,
      'agents/bot1.yaml': 'rules: [{ id: bot1-github-escalate, upstream: github, effect: escalate, approval: { group: g } }]\n',
    });
    const payments = { agent: 'p', team: 'payments' };
    // The org-level file's explicit scope keeps today's meaning (and does not open github).
    expect(decide(c, payments, { upstream: 'github', method: 'GET', path: '/x' })).toEqual({ effect: 'allow', rule: 'team-scoped-in-org-file' });
    expect(decide(c, { agent: 'bot1' }, { upstream: 'github', method: 'GET', path: '/x' })).toEqual({ effect: 'deny', rule: 'default-deny' });
    expect(decide(c, payments, { upstream: 'stripe', method: 'POST', path: '/v1/transfers' })).toEqual({ effect: 'allow', rule: 'payments-transfers' });
    // An any-upstream allow in a scoped file applies only where the organisation opened the upstream.
    expect(decide(c, payments, { upstream: 'stripe', method: 'GET', path: '/v1/refunds' })).toEqual({ effect: 'allow', rule: 'payments-anything' });
    expect(decide(c, { agent: 'p', team: 'ops' }, { upstream: 'github', method: 'GET', path: '/v1/refunds' })).toEqual({ effect: 'deny', rule: 'default-deny' });

    // In file order: agents/bot1.yaml, rules.yaml, teams/payments.yaml.
    expect(findScopeProblems(c).map((p) => `${p.id}: ${p.problem}`)).toEqual([
      expect.stringMatching(/^bot1-github-escalate: escalate is inert/),
      expect.stringMatching(/^team-scoped-in-org-file: allow is scoped only by "scope:" in an organisation-level file; put it in teams\/payments\.yaml/),
      expect.stringMatching(/^payments-github: allow is inert: no organisation-level allow rule names this upstream/),
    ]);
  });

  it('explain lists an inert rule as such', async () => {
    const c = load({ 'rules.yaml': ORG_OPENS_STRIPE, 'teams/payments.yaml': 'rules: [{ id: payments-github, upstream: github, effect: allow }]\n' });
    const policy = compilePolicy(c, { counters: memoryCounterStore(), history: memoryHistoryStore() });
    const r = await explainScenario(policy, c, { identity: { agent: 'p', team: 'payments' }, request: { upstream: 'github', method: 'GET', path: '/x' } });
    expect(r.decision.rules).toEqual(['default-deny']);
    expect(r.trace).toEqual([expect.objectContaining({ id: 'payments-github', matched: false, why: expect.stringMatching(/^inert: /) })]);
  });

  it('an organisation allow for every upstream opens them all', () => {
    const c = load({ 'rules.yaml': 'rules: [{ id: org-all-get, methods: [GET], effect: allow }]\n', 'teams/payments.yaml': 'rules: [{ id: payments-github, upstream: github, effect: allow }]\n' });
    expect(decide(c, { agent: 'p', team: 'payments' }, { upstream: 'github', method: 'POST', path: '/x' })).toEqual({ effect: 'allow', rule: 'payments-github' });
    expect(findScopeProblems(c)).toEqual([]);
  });

  it('lint: a rule for an agent the registry places in another team can never apply', () => {
    const c = load({
      'rules.yaml': ORG_OPENS_STRIPE,
      'agents.yaml': 'agents: [{ id: r1, team: research }]\n',
      'teams/payments.yaml': 'rules: [{ id: payments-r1, scope: { agent: r1 }, upstream: stripe, effect: deny }]\n',
    });
    expect(findScopeProblems(c)).toEqual([expect.objectContaining({ id: 'payments-r1', problem: expect.stringMatching(/can never apply: the agent registry puts agent r1/) })]);
  });
});
