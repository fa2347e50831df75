import type { Config, RuleConfig } from '../config/types.js';
import type { Effect } from '../types.js';
import { compilePaths, INERT } from './compile.js';
import { effectiveUpstreams, namedUpstreams, openedUpstreams } from './scope.js';

/** A rule that can never decide anything, and why. */
export interface DeadRule {
  readonly id: string;
  readonly at: string;
  readonly why: string;
}

const RANK: Record<Effect, number> = { allow: 0, escalate: 1, deny: 2 };

/**
 * Finds rules that can never take effect: unreachable (their own constraints contradict each
 * other) or shadowed (a stricter rule without a condition matches every request they match).
 */
export function findDeadRules(config: Pick<Config, 'rules' | 'tools'>): DeadRule[] {
  const tools = new Map(config.tools.map((t) => [t.name, t]));
  const dead: DeadRule[] = [];
  for (const r of config.rules) {
    const at = `${r.at.file}:${r.at.line}`;
    if (r.tools && r.methods && !r.tools.some((t) => r.methods?.includes(tools.get(t)?.method ?? ''))) {
      dead.push({ id: r.id, at, why: `unreachable: none of its tools uses a method in ${r.methods.join(', ')}` });
      continue;
    }
    if (r.tools && r.paths) {
      const match = compilePaths(r.paths, r.effect !== 'allow');
      if (!r.tools.some((t) => match(tools.get(t)?.path ?? ''))) {
        dead.push({ id: r.id, at, why: 'unreachable: none of its tools has a path its patterns match' });
        continue;
      }
    }
    const shadow = config.rules.find((o) => o !== r && RANK[o.effect] > RANK[r.effect] && o.when === undefined && covers(o, r));
    if (shadow) dead.push({ id: r.id, at, why: `shadowed: ${shadow.effect} rule ${shadow.id} (${shadow.at.file}:${shadow.at.line}) matches every request it matches` });
  }
  return dead;
}

/** A rule whose scope does not do what its place or its `scope:` suggests. */
export interface ScopeProblem {
  readonly id: string;
  readonly at: string;
  readonly problem: string;
}

/**
 * Rules that escape, or seem to escape, the scope their file's place gives them. A `scope:` that
 * contradicts the place is already a configuration error; these are the warnings:
 * - an allow or escalation in a scoped file (agents/, teams/, tenants/) on an upstream no
 *   organisation-level allow names: inert, wholly or on some of its upstreams;
 * - a grant scoped only by `scope:` in an organisation-level file, whose scope nothing about its
 *   place shows (move it below teams/, tenants/ or agents/);
 * - a rule for an agent in a team or tenant the agent registry does not put that agent in.
 */
export function findScopeProblems(config: Pick<Config, 'rules' | 'tools' | 'agents'>): ScopeProblem[] {
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));
  const opened = openedUpstreams(config);
  const registry = new Map<string, { tenant: string | undefined; team: string | undefined }[]>();
  for (const a of config.agents ?? []) registry.set(a.id, [...(registry.get(a.id) ?? []), a]);
  const out: ScopeProblem[] = [];
  for (const r of config.rules) {
    const at = `${r.at.file}:${r.at.line}`;
    const scope = r.scope;
    const effective = effectiveUpstreams(r, opened, toolUpstream);
    if (effective !== undefined && effective.size === 0) {
      out.push({ id: r.id, at, problem: `${r.effect} is ${INERT}` });
    } else if (effective !== undefined && r.fileScope !== undefined) {
      const lost = [...namedUpstreams(r, toolUpstream)].filter((u) => !effective.has(u));
      if (lost.length > 0) out.push({ id: r.id, at, problem: `${r.effect} is inert on ${lost.join(', ')}: no organisation-level allow rule names ${lost.length > 1 ? 'them' : 'it'}` });
    }
    if (r.effect !== 'deny' && r.fileScope === undefined && scope !== undefined) {
      const where = scope.tenant !== undefined ? `tenants/${scope.tenant}/` : scope.team !== undefined ? `teams/${scope.team}.yaml` : `agents/${scope.agent as string}.yaml`;
      out.push({ id: r.id, at, problem: `${r.effect} is scoped only by "scope:" in an organisation-level file; put it in ${where} so its place shows its scope` });
    }
    const entries = scope?.agent === undefined ? undefined : registry.get(scope.agent);
    if (entries !== undefined && scope !== undefined) {
      const fits = entries.some(
        (e) => (scope.tenant === undefined || e.tenant === undefined || e.tenant === scope.tenant) && (scope.team === undefined || e.team === undefined || e.team === scope.team),
      );
      if (!fits) out.push({ id: r.id, at, problem: `can never apply: the agent registry puts agent ${scope.agent as string} in another tenant or team than its scope` });
    }
  }
  return out;
}

/** Whether every request `inner` matches is matched by `outer` (conservatively: false if unsure). */
function covers(outer: RuleConfig, inner: RuleConfig): boolean {
  const set = (o: readonly string[] | undefined, i: readonly string[] | undefined): boolean =>
    o === undefined || (i !== undefined && i.every((x) => o.includes(x)));
  if (outer.upstream !== undefined && outer.upstream !== inner.upstream) return false;
  for (const k of ['tenant', 'team', 'agent'] as const) {
    if (outer.scope?.[k] !== undefined && outer.scope[k] !== inner.scope?.[k]) return false;
  }
  if (!set(outer.tools, inner.tools) || !set(outer.methods, inner.methods) || !set(outer.environments, inner.environments)) return false;
  // Roles: `outer` matches principals with any of its roles; it covers `inner` if inner's roles are among them.
  if (!set(outer.roles, inner.roles)) return false;
  if (outer.paths !== undefined) {
    if (inner.paths === undefined) return false;
    const match = compilePaths(outer.paths, true);
    // A wildcard pattern in `inner` is covered only by the same pattern or a `**` prefix of it.
    const ok = inner.paths.every((p) =>
      p.includes('*') ? outer.paths?.some((o) => o === p || (o.endsWith('/**') && p.startsWith(o.slice(0, -2)))) : match(p),
    );
    if (!ok) return false;
  }
  return true;
}
