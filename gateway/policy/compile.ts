import type { RuleConfig } from '../config/types.js';
import type { AgentIdentity, Decision, Effect, RequestFacts } from '../types.js';

/** A compiled rule set; `evaluate` is the only thing the request path calls. */
export interface Policy {
  evaluate(identity: AgentIdentity, facts: RequestFacts): Decision;
  /** Every rule that was considered for these facts and whether it matched, for explanations. */
  explain(identity: AgentIdentity, facts: RequestFacts): { decision: Decision; considered: { id: string; matched: boolean }[] };
}

interface CompiledRule {
  readonly id: string;
  readonly effect: Effect;
  readonly reason: string;
  readonly methods: ReadonlySet<string> | undefined;
  readonly matchPath: ((path: string) => boolean) | undefined;
}

const RANK: Record<Effect, number> = { allow: 0, escalate: 1, deny: 2 };

export const DEFAULT_DENY_RULE = 'default-deny';

/**
 * Compiles rules once. Rules are indexed by upstream, so a request only looks at the rules that
 * name its upstream plus those that name none. Every matching rule is considered; the most
 * restrictive effect wins (deny > escalate > allow); no match is a deny by `default-deny`.
 */
export function compilePolicy(rules: readonly RuleConfig[]): Policy {
  const anyUpstream: CompiledRule[] = [];
  const byUpstream = new Map<string, CompiledRule[]>();
  for (const r of rules) {
    const compiled: CompiledRule = {
      id: r.id,
      effect: r.effect,
      reason: r.reason ?? r.description ?? `rule ${r.id}`,
      methods: r.methods ? new Set(r.methods) : undefined,
      // A deny must not be dodged by letter case: deny patterns ignore it, allow patterns do not.
      matchPath: r.paths ? compilePaths(r.paths, r.effect === 'deny') : undefined,
    };
    if (r.upstream === undefined) anyUpstream.push(compiled);
    else byUpstream.set(r.upstream, [...(byUpstream.get(r.upstream) ?? []), compiled]);
  }
  for (const list of byUpstream.values()) list.push(...anyUpstream);

  const candidates = (facts: RequestFacts): readonly CompiledRule[] => byUpstream.get(facts.upstream) ?? anyUpstream;
  const matches = (rule: CompiledRule, facts: RequestFacts): boolean =>
    (rule.methods === undefined || rule.methods.has(facts.method)) && (rule.matchPath === undefined || rule.matchPath(facts.path));

  const decide = (matched: readonly CompiledRule[], facts: RequestFacts): Decision => {
    let best: Effect | undefined;
    for (const r of matched) if (best === undefined || RANK[r.effect] > RANK[best]) best = r.effect;
    if (best === undefined) {
      return { effect: 'deny', rules: [DEFAULT_DENY_RULE], reason: `no rule allows ${facts.method} ${facts.path} on ${facts.upstream}` };
    }
    const winners = matched.filter((r) => r.effect === best);
    return { effect: best, rules: winners.map((r) => r.id), reason: (winners[0] as CompiledRule).reason };
  };

  return {
    evaluate(_identity, facts) {
      const matched: CompiledRule[] = [];
      for (const r of candidates(facts)) if (matches(r, facts)) matched.push(r);
      return decide(matched, facts);
    },
    explain(_identity, facts) {
      const considered = candidates(facts).map((r) => ({ rule: r, matched: matches(r, facts) }));
      return {
        decision: decide(considered.filter((c) => c.matched).map((c) => c.rule), facts),
        considered: considered.map((c) => ({ id: c.rule.id, matched: c.matched })),
      };
    },
  };
}

/**
 * `*` matches one non-empty segment, a final `**` any remainder (including none). One trailing
 * slash is insignificant on both sides, so `/admin` and `/admin/` match alike.
 */
function compilePaths(patterns: readonly string[], ignoreCase: boolean): (path: string) => boolean {
  const exact = new Set<string>();
  const regexes: RegExp[] = [];
  const norm = (p: string): string => {
    const trimmed = p.length > 1 && p.endsWith('/') ? p.slice(0, -1) : p;
    return ignoreCase ? trimmed.toLowerCase() : trimmed;
  };
  for (const raw of patterns) {
    const p = norm(raw);
    if (!p.includes('*')) {
      exact.add(p);
      continue;
    }
    const body = p
      .split('/')
      .slice(1)
      .map((s) => (s === '**' ? '(?:/.*)?' : s === '*' ? '/[^/]+' : `/${s.replace(/[.+^${}()|[\]\\]/g, '\\$&')}`))
      .join('');
    regexes.push(new RegExp(`^${body}$`, ignoreCase ? 'i' : ''));
  }
  return (path) => {
    const p = norm(path);
    return exact.has(p) || regexes.some((re) => re.test(p));
  };
}
