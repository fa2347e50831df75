import { describe, expect, it } from 'vitest';
import type { RuleConfig } from '../../gateway/config/types.js';
import { compilePolicy as compileConfig, DEFAULT_DENY_RULE } from '../../gateway/policy/compile.js';
import { memoryCounterStore, memoryHistoryStore } from '../../gateway/policy/counters.js';
import type { AgentIdentity, RequestFacts } from '../../gateway/types.js';
import { agent, rule } from '../helpers/fixtures.js';

const GATEWAY = {
  environment: 'development',
  listen: { host: '127.0.0.1', port: 0 },
  shutdownGraceMs: 1,
  maxRetryAfterS: 60,
  maxHeaderBytes: 16384,
  maxBodyBytes: 1024,
  timezone: 'UTC',
  admin: { listen: { host: '127.0.0.1', port: 0 }, audience: 'valet-admin' },
} as const;

/** Rules only, evaluated with the identity and facts given. */
function compilePolicy(rules: RuleConfig[]) {
  const p = compileConfig(
    { version: 'v', gateway: GATEWAY, tools: [], rules, rateLimits: [], budgets: [], contexts: [] },
    { counters: memoryCounterStore(), history: memoryHistoryStore() },
  );
  const input = (identity: AgentIdentity, facts: RequestFacts) => ({ identity, facts, environment: 'development' as const, now: Date.now(), context: {} });
  return {
    evaluate: (identity: AgentIdentity, f: RequestFacts) => p.evaluate(input(identity, f)),
    explain: (identity: AgentIdentity, f: RequestFacts) => {
      const e = p.explain(input(identity, f));
      return { decision: e.decision, considered: e.trace.map((t) => ({ id: t.id, matched: t.matched })) };
    },
  };
}

function facts(upstream: string, method: string, path: string): RequestFacts {
  return { upstream, method, path, forwardPath: path, rawQuery: '', query: {}, tool: undefined, args: {}, argsError: undefined };
}

describe('compilePolicy', () => {
  it('denies by default when nothing matches, naming default-deny', () => {
    const p = compilePolicy([]);
    const d = p.evaluate(agent, facts('api', 'GET', '/x'));
    expect(d.effect).toBe('deny');
    expect(d.rules).toEqual([DEFAULT_DENY_RULE]);
    expect(d.reason).toContain('GET /x');
  });

  it('denies by default when only other upstreams have rules', () => {
    const p = compilePolicy([rule({ id: 'other', upstream: 'other', effect: 'allow' })]);
    expect(p.evaluate(agent, facts('api', 'GET', '/x'))).toMatchObject({ effect: 'deny', rules: [DEFAULT_DENY_RULE] });
  });

  it('the most restrictive matching rule wins, whatever the order', () => {
    const allow = rule({ id: 'allow', upstream: 'api', effect: 'allow' });
    const deny = rule({ id: 'deny', upstream: 'api', paths: ['/admin/**'], effect: 'deny', reason: 'no admin' });
    for (const rules of [[allow, deny], [deny, allow]]) {
      const p = compilePolicy(rules);
      expect(p.evaluate(agent, facts('api', 'GET', '/admin/x'))).toEqual({ effect: 'deny', rules: ['deny'], reason: 'no admin' });
      expect(p.evaluate(agent, facts('api', 'GET', '/other'))).toMatchObject({ effect: 'allow', rules: ['allow'] });
    }
  });

  it('an any-upstream deny beats an upstream-specific allow, and vice versa', () => {
    const p = compilePolicy([
      rule({ id: 'api-allow', upstream: 'api', effect: 'allow' }),
      rule({ id: 'global-no-delete', methods: ['DELETE'], effect: 'deny' }),
    ]);
    expect(p.evaluate(agent, facts('api', 'DELETE', '/x'))).toMatchObject({ effect: 'deny', rules: ['global-no-delete'] });
    expect(p.evaluate(agent, facts('api', 'GET', '/x'))).toMatchObject({ effect: 'allow' });
    const q = compilePolicy([
      rule({ id: 'global-allow', effect: 'allow' }),
      rule({ id: 'api-no-delete', upstream: 'api', methods: ['DELETE'], effect: 'deny' }),
    ]);
    expect(q.evaluate(agent, facts('api', 'DELETE', '/x'))).toMatchObject({ effect: 'deny', rules: ['api-no-delete'] });
  });

  it('lists every rule that produced the winning effect, reason from the first', () => {
    const p = compilePolicy([
      rule({ id: 'a', upstream: 'api', effect: 'deny', reason: 'first' }),
      rule({ id: 'b', upstream: 'api', effect: 'allow' }),
      rule({ id: 'c', effect: 'deny', reason: 'second' }),
    ]);
    expect(p.evaluate(agent, facts('api', 'GET', '/'))).toEqual({ effect: 'deny', rules: ['a', 'c'], reason: 'first' });
  });

  it('reason falls back to description, then to the rule id', () => {
    const p = compilePolicy([
      rule({ id: 'r1', upstream: 'a', effect: 'allow', description: 'described' }),
      rule({ id: 'r2', upstream: 'b', effect: 'allow' }),
      rule({ id: 'r3', upstream: 'c', effect: 'allow', description: 'described', reason: 'given' }),
    ]);
    expect(p.evaluate(agent, facts('a', 'GET', '/')).reason).toBe('described');
    expect(p.evaluate(agent, facts('b', 'GET', '/')).reason).toBe('rule r2');
    expect(p.evaluate(agent, facts('c', 'GET', '/')).reason).toBe('given');
  });

  it('rules without an upstream apply to every upstream, including ones with no rules of their own', () => {
    const p = compilePolicy([
      rule({ id: 'api-only', upstream: 'api', methods: ['POST'], effect: 'allow' }),
      rule({ id: 'all-get', methods: ['GET'], effect: 'allow' }),
    ]);
    expect(p.evaluate(agent, facts('api', 'GET', '/x'))).toMatchObject({ effect: 'allow', rules: ['all-get'] });
    expect(p.evaluate(agent, facts('api', 'POST', '/x'))).toMatchObject({ effect: 'allow', rules: ['api-only'] });
    expect(p.evaluate(agent, facts('other', 'GET', '/x'))).toMatchObject({ effect: 'allow', rules: ['all-get'] });
    expect(p.evaluate(agent, facts('other', 'POST', '/x'))).toMatchObject({ effect: 'deny', rules: [DEFAULT_DENY_RULE] });
  });

  it('a rule for one upstream never applies to another', () => {
    const p = compilePolicy([rule({ id: 'a', upstream: 'a', effect: 'allow' }), rule({ id: 'b', upstream: 'b', effect: 'deny' })]);
    expect(p.evaluate(agent, facts('a', 'GET', '/'))).toMatchObject({ effect: 'allow', rules: ['a'] });
    expect(p.evaluate(agent, facts('b', 'GET', '/'))).toMatchObject({ effect: 'deny', rules: ['b'] });
  });

  it('matches methods exactly', () => {
    const p = compilePolicy([rule({ id: 'get', methods: ['GET', 'HEAD'], effect: 'allow' })]);
    expect(p.evaluate(agent, facts('api', 'GET', '/')).effect).toBe('allow');
    expect(p.evaluate(agent, facts('api', 'HEAD', '/')).effect).toBe('allow');
    expect(p.evaluate(agent, facts('api', 'POST', '/')).effect).toBe('deny');
    expect(p.evaluate(agent, facts('api', 'get', '/')).effect).toBe('deny');
  });

  describe('path patterns', () => {
    const cases: [string, string, boolean][] = [
      ['/v1/models', '/v1/models', true],
      ['/v1/models', '/v1/models/', true],
      ['/v1/models/', '/v1/models', true],
      ['/v1/models', '/v1/models/x', false],
      ['/v1/models', '/v1/model', false],
      ['/v1/models', '/V1/models', false],
      ['/v1/models/*', '/v1/models/gpt', true],
      ['/v1/models/*', '/v1/models/', false],
      ['/v1/models/*', '/v1/models', false],
      ['/v1/models/*', '/v1/models/a/b', false],
      ['/v1/*/items', '/v1/x/items', true],
      ['/v1/*/items', '/v1/x/y/items', false],
      ['/v1/*/items', '/v1//items', false],
      ['/admin/**', '/admin', true],
      ['/admin/**', '/admin/', true],
      ['/admin/**', '/admin/a/b/c', true],
      ['/admin/**', '/administrator', false],
      ['/admin/**', '/x/admin/y', false],
      ['/**', '/', true],
      ['/**', '/anything/at/all', true],
      ['/v1.2/a+b', '/v1.2/a+b', true],
      ['/v1.2/*', '/v1x2/a', false],
      ['/a.b/**', '/axb/c', false],
      ['/a$/**', '/a$/x', true],
      ['/(x)/*', '/(x)/y', true],
      ['/(x)/*', '/x/y', false],
    ];
    it.each(cases)('%s vs %s → %s', (pattern, path, matched) => {
      const p = compilePolicy([rule({ id: 'r', paths: [pattern], effect: 'allow' })]);
      expect(p.evaluate(agent, facts('api', 'GET', path)).effect).toBe(matched ? 'allow' : 'deny');
    });

    it('deny patterns ignore letter case and a trailing slash; allow patterns ignore only the slash', () => {
      const p = compilePolicy([
        rule({ id: 'all', effect: 'allow' }),
        rule({ id: 'no-admin', paths: ['/admin/**', '/v1/Secret'], effect: 'deny' }),
      ]);
      for (const path of ['/ADMIN/users', '/Admin', '/admin/', '/v1/secret', '/V1/SECRET/']) {
        expect(p.evaluate(agent, facts('api', 'GET', path))).toMatchObject({ effect: 'deny', rules: ['no-admin'] });
      }
      const allowOnly = compilePolicy([rule({ id: 'r', paths: ['/v1/models'], effect: 'allow' })]);
      expect(allowOnly.evaluate(agent, facts('api', 'GET', '/V1/models')).effect).toBe('deny');
    });

    it('any of several patterns matches', () => {
      const p = compilePolicy([rule({ id: 'r', paths: ['/a', '/b/*', '/c/**'], effect: 'allow' })]);
      for (const path of ['/a', '/b/1', '/c', '/c/1/2']) expect(p.evaluate(agent, facts('api', 'GET', path)).effect).toBe('allow');
      for (const path of ['/b', '/b/1/2', '/d']) expect(p.evaluate(agent, facts('api', 'GET', path)).effect).toBe('deny');
    });

    it('methods and paths must both match', () => {
      const p = compilePolicy([rule({ id: 'r', methods: ['POST'], paths: ['/v1/messages'], effect: 'allow' })]);
      expect(p.evaluate(agent, facts('api', 'POST', '/v1/messages')).effect).toBe('allow');
      expect(p.evaluate(agent, facts('api', 'GET', '/v1/messages')).effect).toBe('deny');
      expect(p.evaluate(agent, facts('api', 'POST', '/v1/other')).effect).toBe('deny');
    });
  });

  describe('explain', () => {
    const rules = [
      rule({ id: 'api-allow', upstream: 'api', effect: 'allow' }),
      rule({ id: 'api-no-admin', upstream: 'api', paths: ['/admin/**'], effect: 'deny' }),
      rule({ id: 'other-allow', upstream: 'other', effect: 'allow' }),
      rule({ id: 'global-no-delete', methods: ['DELETE'], effect: 'deny' }),
    ];
    const p = compilePolicy(rules);

    it('lists every rule considered for the upstream (its own and the global ones), with whether it matched', () => {
      const e = p.explain(agent, facts('api', 'GET', '/admin/x'));
      expect(e.considered).toEqual([
        { id: 'api-allow', matched: true },
        { id: 'api-no-admin', matched: true },
        { id: 'global-no-delete', matched: false },
      ]);
      expect(e.decision).toMatchObject({ effect: 'deny', rules: ['api-no-admin'] });
    });

    it('never lists rules of other upstreams', () => {
      const e = p.explain(agent, facts('unknown', 'DELETE', '/'));
      expect(e.considered).toEqual([{ id: 'global-no-delete', matched: true }]);
      expect(e.decision).toMatchObject({ effect: 'deny', rules: ['global-no-delete'] });
    });

    it('agrees with evaluate', () => {
      for (const f of [facts('api', 'GET', '/x'), facts('api', 'DELETE', '/x'), facts('other', 'GET', '/'), facts('none', 'GET', '/')]) {
        expect(p.explain(agent, f).decision).toEqual(p.evaluate(agent, f));
      }
    });

    it('reports default-deny when nothing matched', () => {
      const e = p.explain(agent, facts('none', 'GET', '/'));
      expect(e.considered).toEqual([{ id: 'global-no-delete', matched: false }]);
      expect(e.decision).toMatchObject({ effect: 'deny', rules: [DEFAULT_DENY_RULE] });
    });
  });
});
