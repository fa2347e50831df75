import type { Config, RuleConfig } from '../config/types.js';
import type { Effect } from '../types.js';
import { compilePaths } from './compile.js';

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
