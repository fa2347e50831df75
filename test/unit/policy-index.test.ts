/**
 * What `evaluate`'s rule index (by upstream, method, tool and leading path segments), its role
 * bitmasks and its per-decision CEL activation must never change: the decision the rules make.
 */
import { describe, expect, it } from 'vitest';
import type { Config, MatchConfig, RateLimitConfig, ResponseRuleConfig, RuleConfig, Scope, ToolConfig } from '../../gateway/config/types.js';
import { ConfigError } from '../../gateway/errors.js';
import { candidatesFor, compilePaths, compilePolicy as compileConfig, DEFAULT_DENY_RULE, splitByScope } from '../../gateway/policy/compile.js';
import { memoryCounterStore, memoryHistoryStore, type CounterStore, type HistoryStore } from '../../gateway/policy/counters.js';
import type { SessionStore } from '../../gateway/policy/sessions.js';
import type { AgentIdentity, RequestFacts } from '../../gateway/types.js';
import { agent, rule } from '../helpers/fixtures.js';

// compilePolicy reads only the time zone of the gateway settings.
const GATEWAY = { timezone: 'UTC' } as Config['gateway'];

function compilePolicy(rules: RuleConfig[], tools: ToolConfig[] = []) {
  const p = compileConfig(
    { version: 'v', gateway: GATEWAY, tools, rules, rateLimits: [], budgets: [], contexts: [] },
    { counters: memoryCounterStore(), history: memoryHistoryStore() },
  );
  const input = (identity: AgentIdentity, facts: RequestFacts) => ({ identity, facts, environment: 'development' as const, now: Date.now(), context: {} });
  return {
    evaluate: (identity: AgentIdentity, f: RequestFacts) => p.evaluate(input(identity, f)),
    explain: (identity: AgentIdentity, f: RequestFacts) => p.explain(input(identity, f)),
  };
}

function tool(name: string, method: string, path: string): ToolConfig {
  return { name, description: undefined, upstream: 'api', method, path, args: {}, at: { file: 'tools.yaml', line: 1, column: 1, path: 'tools[0]' } };
}

function facts(method: string, path: string, more: Partial<RequestFacts> = {}): RequestFacts {
  return { upstream: 'api', method, path, forwardPath: path, rawQuery: '', query: {}, tool: undefined, args: {}, argsError: undefined, ...more };
}

describe('roles as bitmasks', () => {
  for (const count of [31, 32, 33, 70]) {
    it(`${count} roles: each rule matches exactly the principals with one of its roles`, () => {
      const roles = Array.from({ length: count }, (_, i) => `role-${i}`);
      // One rule per role, plus one naming the last two roles, so masks span words past 32 roles.
      const p = compilePolicy([
        ...roles.map((role, i) => rule({ id: `r${i}`, roles: [role], paths: [`/r/${i}`], effect: 'allow' })),
        rule({ id: 'pair', roles: roles.slice(-2), paths: ['/pair'], effect: 'allow' }),
      ]);
      for (const [i, role] of roles.entries()) {
        const holder = { ...agent, roles: [role, 'unknown-role'] };
        expect(p.evaluate(holder, facts('GET', `/r/${i}`))).toMatchObject({ effect: 'allow', rules: [`r${i}`] });
        expect(p.evaluate(holder, facts('GET', `/r/${(i + 1) % count}`)).effect).toBe('deny');
        expect(p.evaluate(holder, facts('GET', '/pair')).effect).toBe(i >= count - 2 ? 'allow' : 'deny');
      }
      expect(p.evaluate({ ...agent, roles: ['unknown-role'] }, facts('GET', '/r/0')).effect).toBe('deny');
      expect(p.evaluate({ ...agent, roles: roles }, facts('GET', `/r/${count - 1}`)).effect).toBe('allow');
    });
  }

  it('past 32 roles, delegation still needs the role on both sides', () => {
    const roles = Array.from({ length: 40 }, (_, i) => `role-${i}`);
    const p = compilePolicy(roles.map((role, i) => rule({ id: `r${i}`, roles: [role], paths: [`/r/${i}`], effect: 'allow' })));
    const delegated = { ...agent, roles: ['role-35'], user: 'u1', userRoles: ['role-35'] };
    expect(p.evaluate(delegated, facts('GET', '/r/35'))).toMatchObject({ effect: 'allow', rules: ['r35'] });
    const d = p.evaluate({ ...delegated, userRoles: ['role-3'] }, facts('GET', '/r/35'));
    expect(d).toMatchObject({ effect: 'deny', rules: [DEFAULT_DENY_RULE] });
    expect(d.reason).toMatch(/^acting for user u1: /);
  });

  it('a rule with an empty role list matches nobody', () => {
    const p = compilePolicy([rule({ id: 'none', roles: [], effect: 'allow' }), rule({ id: 'admin', roles: ['admin'], paths: ['/x'], effect: 'allow' })]);
    expect(p.evaluate({ ...agent, roles: ['admin'] }, facts('GET', '/y')).effect).toBe('deny');
  });
});

describe('path index', () => {
  // Wildcards first, middle and last; case; trailing and empty segments; regex characters; σ ς Σ,
  // which a case-insensitive regex folds together; and the Kelvin sign, which lower-cases to k.
  const patterns = ['/a/b', '/a/*', '/a/*/c', '/*/b', '/*', '/a/**', '/**', '/a/b/**', '/A/B', '/', '/a//b', '/v1.2/*'];
  patterns.push('/σ/*', '/ς/x', '/Σ/**', '/\u212a/*');
  const paths = ['/', '/a', '/A', '/a/', '/a/b', '/A/B', '/a/B', '/a/b/', '/a/b/c', '/a/x/c', '/x/b', '/x', '/a//b', '/b/a'];
  paths.push('/v1.2/x', '/v1x2/x', '/σ/x', '/ς/x', '/Σ/X', '/σ', '/k/x', '/K/x', '/\u212a/x');

  it.each(['allow', 'deny'] as const)('finds a %s rule wherever its pattern matches (same as compilePaths)', (effect) => {
    for (const pattern of patterns) {
      // A rule without paths makes the other outcome, so both sides of every pattern are decisions.
      const other = effect === 'allow' ? [] : [rule({ id: 'all', effect: 'allow' })];
      const p = compilePolicy([...other, rule({ id: 'r', paths: [pattern], effect })]);
      const matches = compilePaths([pattern], effect !== 'allow');
      for (const path of paths) {
        const d = p.evaluate(agent, facts('GET', path));
        expect({ pattern, path, matched: d.rules.includes('r') }).toEqual({ pattern, path, matched: matches(path) });
      }
    }
  });

  it('deny patterns ignore case through the index; allow patterns do not', () => {
    const p = compilePolicy([
      rule({ id: 'models', paths: ['/V1/Models/*'], effect: 'allow' }),
      rule({ id: 'no-admin', paths: ['/Admin/**'], effect: 'deny' }),
      rule({ id: 'all-admin', paths: ['/admin/**'], effect: 'allow' }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/V1/Models/gpt'))).toMatchObject({ effect: 'allow', rules: ['models'] });
    expect(p.evaluate(agent, facts('GET', '/v1/models/gpt')).rules).toEqual([DEFAULT_DENY_RULE]);
    expect(p.evaluate(agent, facts('GET', '/V1/models/gpt')).rules).toEqual([DEFAULT_DENY_RULE]);
    for (const path of ['/admin', '/ADMIN/users', '/aDmIn/x/y/', '/Admin']) {
      expect(p.evaluate(agent, facts('GET', path))).toMatchObject({ effect: 'deny', rules: ['no-admin'] });
    }
  });

  it('rules with the same patterns share a matcher only when they read case alike', () => {
    // The deny's matcher (case ignored) is made first; the allows with the same patterns must not get it.
    const p = compilePolicy([
      rule({ id: 'never', paths: ['/Data/*', '/Exact'], effect: 'deny', when: 'false' }),
      rule({ id: 'data', paths: ['/Data/*', '/Exact'], effect: 'allow' }),
      rule({ id: 'data-too', paths: ['/Data/*', '/Exact'], effect: 'allow', reason: 'a second allow, same patterns' }),
      rule({ id: 'no-exact', paths: ['/Exact'], effect: 'deny' }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/Data/x'))).toMatchObject({ effect: 'allow', rules: ['data', 'data-too'] });
    for (const path of ['/data/x', '/DATA/x', '/exact/']) expect(p.evaluate(agent, facts('GET', path)).rules).toEqual(path === '/exact/' ? ['no-exact'] : [DEFAULT_DENY_RULE]);
    expect(p.evaluate(agent, facts('GET', '/EXACT'))).toMatchObject({ effect: 'deny', rules: ['no-exact'] });
  });

  it('keeps rule order across index nodes, the residual list and tool rules', () => {
    const tools = [tool('get_b', 'GET', '/a/b')];
    const rules = [
      rule({ id: 'deep', upstream: 'api', paths: ['/a/b'], effect: 'deny', reason: 'deep first' }),
      rule({ id: 'tool', tools: ['get_b'], effect: 'deny', reason: 'tool' }),
      rule({ id: 'wild', upstream: 'api', paths: ['/*/b'], effect: 'deny', reason: 'wild' }),
      rule({ id: 'prefix', upstream: 'api', paths: ['/a/**'], effect: 'deny', reason: 'prefix' }),
      rule({ id: 'any', effect: 'deny', reason: 'for every upstream, so last' }),
    ];
    const p = compilePolicy(rules, tools);
    expect(p.evaluate(agent, facts('GET', '/a/b', { tool: 'get_b' }))).toEqual({
      effect: 'deny',
      rules: ['deep', 'tool', 'wild', 'prefix', 'any'],
      reason: 'deep first',
    });
    const reversed = compilePolicy([...rules].reverse(), tools);
    expect(reversed.evaluate(agent, facts('GET', '/a/b', { tool: 'get_b' }))).toEqual({
      effect: 'deny',
      rules: ['prefix', 'wild', 'tool', 'deep', 'any'],
      reason: 'prefix',
    });
    expect(p.evaluate(agent, facts('GET', '/a/c'))).toMatchObject({ rules: ['prefix', 'any'] });
    expect(p.evaluate(agent, facts('GET', '/x/b'))).toMatchObject({ rules: ['wild', 'any'] });
  });

  it('upstream-specific rules come before rules for every upstream, whatever the file order', () => {
    const p = compilePolicy([
      rule({ id: 'global', paths: ['/a'], effect: 'deny', reason: 'global' }),
      rule({ id: 'api', upstream: 'api', paths: ['/a'], effect: 'deny', reason: 'api' }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/a'))).toEqual({ effect: 'deny', rules: ['api', 'global'], reason: 'api' });
  });

  it('the first condition that fails decides, in rule order across tool and path rules', () => {
    const tools = [tool('get_b', 'GET', '/a/b')];
    const broken = (id: string, r: Partial<RuleConfig>) => rule({ id, upstream: 'api', effect: 'allow', when: 'args.missing == 1', ...r });
    const a = compilePolicy([broken('path', { paths: ['/a/b'] }), broken('tool', { tools: ['get_b'] })], tools);
    expect(a.evaluate(agent, facts('GET', '/a/b', { tool: 'get_b' }))).toMatchObject({ effect: 'deny', rules: ['path'] });
    const b = compilePolicy([broken('tool', { tools: ['get_b'] }), broken('path', { paths: ['/a/b'] })], tools);
    expect(b.evaluate(agent, facts('GET', '/a/b', { tool: 'get_b' }))).toMatchObject({ effect: 'deny', rules: ['tool'] });
  });

  it('methods no rule names get the rules without a method constraint; other tools get no tool rules', () => {
    const tools = [tool('get_b', 'GET', '/a/b')];
    const p = compilePolicy([
      rule({ id: 'get', methods: ['GET'], effect: 'allow' }),
      rule({ id: 'anything', paths: ['/a/**'], effect: 'escalate' }),
      rule({ id: 'tool', tools: ['get_b'], effect: 'deny' }),
    ], tools);
    expect(p.evaluate(agent, facts('PATCH', '/a/b'))).toMatchObject({ effect: 'escalate', rules: ['anything'] });
    expect(p.evaluate(agent, facts('GET', '/a/b', { tool: 'other' }))).toMatchObject({ effect: 'escalate', rules: ['anything'] });
    expect(p.evaluate(agent, facts('GET', '/a/b', { tool: 'get_b' }))).toMatchObject({ effect: 'deny', rules: ['tool'] });
    expect(p.evaluate(agent, facts('GET', '/b', { upstream: 'elsewhere' }))).toMatchObject({ effect: 'allow', rules: ['get'] });
  });

  it('explain still lists every rule of the upstream in order, and agrees with evaluate', () => {
    const p = compilePolicy([
      rule({ id: 'x', paths: ['/x/**'], effect: 'allow' }),
      rule({ id: 'y', paths: ['/y'], methods: ['POST'], effect: 'allow' }),
      rule({ id: 'deny-x', paths: ['/X/secret'], effect: 'deny' }),
    ]);
    for (const path of ['/x/secret', '/x/public', '/y']) {
      const e = p.explain(agent, facts('GET', path));
      expect(e.trace.map((t) => t.id)).toEqual(['x', 'y', 'deny-x']);
      expect(e.decision).toEqual(p.evaluate(agent, facts('GET', path)));
    }
  });
});

describe('scoped rules', () => {
  // Tenants, teams and agents, each rule scoped on some of them or none (the organisation's), on a
  // tool and on paths, allowing, denying and escalating: evaluate reads only the part of a list an
  // identity can meet, explain every rule; they must agree for every identity, claims missing included.
  const tenants = [undefined, 't1', 't2', 't3'];
  const teams = [undefined, 'red', 'blue'];
  const agents = ['a1', 'a2', 'a3'];
  const effects = ['allow', 'deny', 'escalate'] as const;
  const scopes = tenants.flatMap((tenant) => teams.flatMap((team) => [undefined, 'a1', 'a2'].map((a) => ({ tenant, team, agent: a }))));
  const rules = scopes.flatMap((scope, i) => {
    const s = scope.tenant === undefined && scope.team === undefined && scope.agent === undefined ? undefined : Object.fromEntries(Object.entries(scope).filter(([, v]) => v !== undefined));
    const effect = effects[i % 3] as (typeof effects)[number];
    return [
      rule({ id: `tool-${i}`, scope: s, tools: ['get_doc'], effect, roles: i % 4 === 0 ? ['admin'] : undefined }),
      rule({ id: `path-${i}`, scope: s, paths: [i % 2 === 0 ? '/docs/*' : '/docs/**'], effect }),
    ];
  });

  it('decide as explain does, for every identity', () => {
    const p = compilePolicy(rules, [tool('get_doc', 'GET', '/docs/{id}')]);
    let checked = 0;
    for (const tenant of [...tenants, 't9']) {
      for (const team of [...teams, 'green']) {
        for (const a of agents) {
          for (const roles of [[], ['admin']]) {
            const id = { ...agent, agent: a, tenant, team, roles };
            for (const f of [facts('GET', '/docs/7', { tool: 'get_doc' }), facts('GET', '/docs/7/x'), facts('POST', '/docs/7')]) {
              expect(p.evaluate(id, f)).toEqual(p.explain(id, f).decision);
              checked++;
            }
          }
        }
      }
    }
    expect(checked).toBe(5 * 4 * 3 * 2 * 3);
  });

  it('a deny scoped to a tenant still binds an identity without a tenant claim; its allow does not', () => {
    const p = compilePolicy([
      rule({ id: 'org', paths: ['/x'], effect: 'allow' }),
      rule({ id: 't1-deny', scope: { tenant: 't1' }, paths: ['/x'], effect: 'deny' }),
      rule({ id: 't2-allow', scope: { tenant: 't2' }, paths: ['/y'], effect: 'allow' }),
      ...Array.from({ length: 50 }, (_, i) => rule({ id: `t${i + 10}`, scope: { tenant: `t${i + 10}` }, paths: ['/y'], effect: 'allow' })),
    ]);
    expect(p.evaluate({ ...agent, tenant: undefined }, facts('GET', '/x'))).toMatchObject({ effect: 'deny', rules: ['t1-deny'] });
    expect(p.evaluate({ ...agent, tenant: 't2' }, facts('GET', '/x'))).toMatchObject({ effect: 'allow', rules: ['org'] });
    expect(p.evaluate({ ...agent, tenant: undefined }, facts('GET', '/y')).effect).toBe('deny');
    expect(p.evaluate({ ...agent, tenant: 't2' }, facts('GET', '/y'))).toMatchObject({ effect: 'allow', rules: ['t2-allow'] });
    expect(p.evaluate({ ...agent, tenant: 't30' }, facts('GET', '/y'))).toMatchObject({ effect: 'allow', rules: ['t30'] });
  });

  describe('the split of one candidate list', () => {
    interface Item {
      readonly id: string;
      readonly restrictive: boolean;
      readonly scope: { readonly tenant?: string; readonly team?: string; readonly agent?: string };
    }
    const item = (id: string, scope: Item['scope'], restrictive = false): Item => ({ id, restrictive, scope });
    const scopeOf = (x: Item, claim: 'tenant' | 'team' | 'agent') => x.scope[claim];
    const list = [
      item('org', {}),
      item('t1-allow', { tenant: 't1' }),
      item('t2-deny', { tenant: 't2' }, true),
      item('org-deny', {}, true),
      item('t1-a1', { tenant: 't1', agent: 'a1' }),
      item('t2-allow', { tenant: 't2' }),
      item('a2', { agent: 'a2' }),
    ];
    const ids = (tenant: string | undefined, agentId: string) => candidatesFor(splitByScope(list, scopeOf), { tenant, team: undefined, agent: agentId }).map((r) => r.id);

    it('gives an identity its tenant\'s rules and the unscoped ones, in rule order, then only its own agent\'s', () => {
      expect(ids('t1', 'a1')).toEqual(['org', 't1-allow', 'org-deny', 't1-a1']);
      expect(ids('t1', 'a2')).toEqual(['org', 't1-allow', 'org-deny', 'a2']);
      expect(ids('t2', 'a9')).toEqual(['org', 't2-deny', 'org-deny', 't2-allow']);
      expect(ids('t7', 'a2')).toEqual(['org', 'org-deny', 'a2']);
    });

    it('gives an identity without a tenant claim the restrictive rules of every tenant, and no tenant\'s allows', () => {
      expect(ids(undefined, 'a1')).toEqual(['org', 't2-deny', 'org-deny']);
    });

    it('leaves a list whole when its parts would hold more than eight times its entries', () => {
      const wide = [...Array.from({ length: 40 }, (_, i) => item(`org-${i}`, {})), ...Array.from({ length: 60 }, (_, i) => item(`t-${i}`, { tenant: `t${i}` }))];
      expect(splitByScope(wide, scopeOf)).toBe(wide);
      const narrower = wide.slice(0, 45);
      expect(splitByScope(narrower, scopeOf)).not.toBe(narrower);
    });
  });

  it('rate limits and response rules: a request meets exactly those its identity can, as explainLimits lists them', () => {
    const scopes: (Scope | undefined)[] = [undefined];
    for (const t of ['t1', 't2', 't3', undefined]) for (const team of ['red', 'blue', undefined]) for (const a of ['a1', 'a2', undefined]) {
      const sc = { ...(t !== undefined && { tenant: t }), ...(team !== undefined && { team }), ...(a !== undefined && { agent: a }) };
      if (Object.keys(sc).length > 0) scopes.push(sc);
    }
    const match = (id: string, scope: Scope | undefined): MatchConfig => ({ id, description: undefined, scope, upstream: 'api', tools: undefined, methods: undefined, paths: ['/v1/**'], roles: undefined, environments: undefined, when: undefined, at: { file: 'x.yaml', line: 1, column: 1, path: id }, lines: {} });
    const rateLimits: RateLimitConfig[] = scopes.map((sc, i) => ({ ...match(`limit-${i}`, sc), limit: 1e9, windowMs: 60_000, key: 'agent' }));
    const responseRules: ResponseRuleConfig[] = scopes.map((sc, i) => ({ ...match(`resp-${i}`, sc), effect: 'block', status: undefined, redact: undefined, reason: undefined, approval: undefined }));
    const charged: string[] = [];
    const counters: CounterStore = {
      tryConsume(charges) {
        charged.push(...charges.map((c) => (JSON.parse(c.key) as string[])[1] as string));
        return { ok: true };
      },
      settle: () => [],
    };
    const p = compileConfig({ version: 'v', gateway: GATEWAY, tools: [], rules: [], rateLimits, budgets: [], contexts: [], responseRules }, { counters, history: memoryHistoryStore() });
    // A limit and a response rule are restrictive: a claim the token leaves out does not escape them; an agent scope needs the agent.
    const meets = (sc: Scope | undefined, id: AgentIdentity): boolean =>
      sc === undefined || ((sc.tenant === undefined || id.tenant === undefined || sc.tenant === id.tenant) && (sc.team === undefined || id.team === undefined || sc.team === id.team) && (sc.agent === undefined || sc.agent === id.agent));
    for (const tenant of ['t1', 't3', 't9', undefined]) {
      for (const team of ['red', 'green', undefined]) {
        for (const a of ['a1', 'a2', 'a9']) {
          const id = { ...agent, agent: a, tenant, team };
          const input = { identity: id, facts: facts('GET', '/v1/x'), environment: 'development' as const, now: 0, context: {} };
          const expected = scopes.flatMap((sc, i) => (meets(sc, id) ? [i] : []));
          charged.length = 0;
          expect(p.charge(input, undefined)).toBeUndefined();
          expect(charged).toEqual(expected.map((i) => `limit-${i}`));
          const traces = p.explainLimits(input, undefined).traces;
          expect(traces.map((t) => t.id)).toEqual(rateLimits.map((l) => l.id));
          expect(traces.filter((t) => t.applies).map((t) => t.id)).toEqual(charged);
          expect(p.responsePlan(input)?.rules).toEqual(expected.map((i) => `resp-${i}`));
        }
      }
    }
  });

  it('history and session marks are recorded and read only for the rules an identity can meet', () => {
    const recorded: string[] = [];
    const history: HistoryStore = {
      shared: true,
      record: (key) => void recorded.push(key),
      summary: () => ({ calls_last_hour: 0n, calls_last_day: 0n, first_use: true }),
    };
    const read: string[] = [];
    const sessions: SessionStore = {
      read: (_session, names, now) => {
        read.push(...names);
        return { set: {}, now };
      },
      mark: () => undefined,
    };
    const tools = ['pay', 'login_t1', 'login_t2', 'wipe_t3'].map((t) => tool(t, 'POST', `/${t}`));
    const p = compileConfig(
      {
        version: 'v',
        gateway: GATEWAY,
        tools,
        rules: [
          rule({ id: 't1-pay', scope: { tenant: 't1' }, tools: ['pay'], effect: 'allow', requires: [{ tool: 'login_t1' }], when: 'history.calls_last_hour < 5' }),
          rule({ id: 't2-pay', scope: { tenant: 't2' }, tools: ['pay'], effect: 'allow', requires: [{ tool: 'login_t2' }] }),
          rule({ id: 't3-no-pay', scope: { tenant: 't3' }, tools: ['pay'], effect: 'deny', blockedBy: [{ tool: 'wipe_t3' }] }),
        ],
        rateLimits: [],
        budgets: [],
        contexts: [],
      },
      { counters: memoryCounterStore(), history, sessions },
    );
    const seen = (tenant: string | undefined) => {
      recorded.length = 0;
      read.length = 0;
      const input = { identity: { ...agent, tenant, session: 's1' }, facts: facts('POST', '/pay', { tool: 'pay' }), environment: 'development' as const, now: 0, context: {} };
      p.recordCall(input);
      p.resolveSession(input);
      return { recorded: recorded.length, read: [...read] };
    };
    expect(seen('t1')).toEqual({ recorded: 1, read: ['ok login_t1'] });
    expect(seen('t2')).toEqual({ recorded: 0, read: ['ok login_t2'] });
    expect(seen('t3')).toEqual({ recorded: 0, read: ['called wipe_t3'] });
    // Without a tenant claim only the restrictive rule applies: its marks are read, no allow's.
    expect(seen(undefined)).toEqual({ recorded: 0, read: ['called wipe_t3'] });
    expect(seen('t9')).toEqual({ recorded: 0, read: [] });
  });

  it('many organisation rules beside many tenants: the list is not split past its bound, and decides the same', () => {
    const org = Array.from({ length: 40 }, (_, i) => rule({ id: `org-${i}`, paths: ['/z'], effect: 'allow', roles: [`r${i}`] }));
    const scoped = Array.from({ length: 60 }, (_, i) => rule({ id: `ten-${i}`, scope: { tenant: `t${i}` }, paths: ['/z'], effect: i % 2 === 0 ? 'deny' : 'allow' }));
    const p = compilePolicy([...org, ...scoped]);
    for (const tenant of [undefined, 't0', 't1', 't59', 'none']) {
      for (const roles of [[], ['r3'], ['r39']]) {
        const id = { ...agent, tenant, roles };
        expect(p.evaluate(id, facts('GET', '/z'))).toEqual(p.explain(id, facts('GET', '/z')).decision);
      }
    }
  });
});

describe('the CEL activation', () => {
  it('gives the user pass of a delegated decision the user as principal', () => {
    const p = compilePolicy([rule({ id: 'admins', when: '"admin" in principal.roles && args.n == 1', effect: 'allow' })]);
    const both = { ...agent, roles: ['admin'], user: 'u1', userRoles: ['admin'] };
    expect(p.evaluate(both, facts('GET', '/', { args: { n: 1n } }))).toMatchObject({ effect: 'allow', rules: ['admins'] });
    const d = p.evaluate({ ...both, userRoles: ['viewer'] }, facts('GET', '/', { args: { n: 1n } }));
    expect(d).toMatchObject({ effect: 'deny', rules: [DEFAULT_DENY_RULE] });
    expect(d.reason).toMatch(/^acting for user u1: /);
  });

  it('gives every condition of a decision the variables it reads, whatever the others read', () => {
    const p = compilePolicy([
      rule({ id: 'args', when: 'args.n == 1', effect: 'allow' }),
      rule({ id: 'request', when: 'request.path == "/a" && request.method == "GET" && !has(request.tool)', effect: 'allow' }),
      rule({ id: 'agent', when: 'agent.id == "agent-1" && !has(agent.tenant) && env == "development"', effect: 'allow' }),
      rule({ id: 'user', when: 'user == {} && principal.kind == "agent"', effect: 'allow' }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/a', { args: { n: 1n } }))).toMatchObject({ rules: ['args', 'request', 'agent', 'user'] });
    expect(p.evaluate(agent, facts('GET', '/b', { args: { n: 2n } }))).toMatchObject({ rules: ['agent', 'user'] });
  });

  it('does not carry one request into the next for the same identity', () => {
    const p = compilePolicy([rule({ id: 'a', when: 'request.path == "/a" && args.n == 1', effect: 'allow' })]);
    expect(p.evaluate(agent, facts('GET', '/a', { args: { n: 1n } })).effect).toBe('allow');
    expect(p.evaluate(agent, facts('GET', '/b', { args: { n: 1n } })).effect).toBe('deny');
    expect(p.evaluate(agent, facts('GET', '/a', { args: { n: 2n } })).effect).toBe('deny');
    expect(p.evaluate({ ...agent, agent: 'agent-2' }, facts('GET', '/a', { args: { n: 1n } })).effect).toBe('allow');
  });
});

describe('conditions written more than once', () => {
  it('are compiled once and still decide for each rule on its own request', () => {
    const when = 'args.n <= 10 && request.path.startsWith("/a")';
    const p = compilePolicy([
      rule({ id: 'one', upstream: 'api', paths: ['/a/1'], when, effect: 'allow' }),
      rule({ id: 'two', upstream: 'api', paths: ['/a/2'], when, effect: 'allow' }),
      rule({ id: 'deny-two', upstream: 'api', paths: ['/a/2'], when: 'args.n == 7', effect: 'deny' }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/a/1', { args: { n: 7n } }))).toMatchObject({ effect: 'allow', rules: ['one'] });
    expect(p.evaluate(agent, facts('GET', '/a/2', { args: { n: 7n } }))).toMatchObject({ effect: 'deny', rules: ['deny-two'] });
    expect(p.evaluate(agent, facts('GET', '/a/2', { args: { n: 3n } }))).toMatchObject({ effect: 'allow', rules: ['two'] });
    expect(p.evaluate(agent, facts('GET', '/a/1', { args: { n: 11n } })).effect).toBe('deny');
  });

  it('that do not compile are reported at every rule that has them', () => {
    const bad = (id: string, line: number): RuleConfig => ({ ...rule({ id, when: 'args.n +', effect: 'allow' }), at: { file: 'p.yaml', line, column: 1, path: `rules[${line}]` } });
    let problems: { line: number; path: string }[] = [];
    try {
      compilePolicy([bad('a', 3), rule({ id: 'ok', when: 'args.n == 1', effect: 'allow' }), bad('b', 9)]);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      problems = (err as ConfigError).problems.map((x) => ({ line: x.line, path: x.path }));
    }
    expect(problems).toEqual([
      { line: 3, path: 'rules[3].when' },
      { line: 9, path: 'rules[9].when' },
    ]);
  });
});

describe('decisions', () => {
  it('a decision one rule makes alone is shared and cannot be changed', () => {
    const p = compilePolicy([rule({ id: 'r', effect: 'escalate', approval: { group: 'ops', timeoutMs: 5000, mode: 'hold' } })]);
    const d = p.evaluate(agent, facts('GET', '/'));
    expect(d).toEqual({ effect: 'escalate', rules: ['r'], reason: 'rule r', approval: { group: 'ops', timeoutMs: 5000, mode: 'hold' } });
    expect(() => (d.rules as string[]).push('x')).toThrow();
    expect(() => Object.assign(d, { effect: 'allow' })).toThrow();
    expect(p.evaluate(agent, facts('GET', '/'))).toEqual(d);
  });

  it('several escalations: the first rule names the group, the shortest timeout wins, hold if any holds', () => {
    const p = compilePolicy([
      rule({ id: 'a', effect: 'escalate', approval: { group: 'ops', timeoutMs: 5000, mode: 'async' } }),
      rule({ id: 'b', effect: 'escalate' }),
      rule({ id: 'c', effect: 'escalate', approval: { group: 'sec', timeoutMs: 1000, mode: 'hold' } }),
    ]);
    expect(p.evaluate(agent, facts('GET', '/'))).toEqual({
      effect: 'escalate',
      rules: ['a', 'b', 'c'],
      reason: 'rule a',
      approval: { group: 'ops', timeoutMs: 1000, mode: 'hold' },
    });
  });
});
