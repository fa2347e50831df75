import { parse as parseCel, serialize as serializeCel, type ASTNode } from '@marcbachmann/cel-js';
import { DEFAULT_SESSION_TTL_MS, type Config, type MatchConfig, type RuleConfig, type SequenceStep, type ToolConfig } from '../config/types.js';
import type { Effect } from '../types.js';
import { compilePaths, INERT } from './compile.js';
import { effectiveUpstreams, namedUpstreams, openedUpstreams, type OpenedUpstreams } from './scope.js';

/** A rule that can never decide anything, and why. */
export interface DeadRule {
  readonly id: string;
  readonly at: string;
  readonly why: string;
}

const RANK: Record<Effect, number> = { allow: 0, escalate: 1, deny: 2 };

/** A `{name}` segment of a tool's route. */
const ROUTE_PARAM = /^\{[A-Za-z_][A-Za-z0-9_]*\}$/;

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
  /** The rule can never take effect at all (inert everywhere, or out of its agent's reach). */
  readonly never: boolean;
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
      out.push({ id: r.id, at, never: true, problem: `${r.effect} is ${INERT}` });
    } else if (effective !== undefined && r.fileScope !== undefined) {
      const lost = [...namedUpstreams(r, toolUpstream)].filter((u) => !effective.has(u));
      if (lost.length > 0) out.push({ id: r.id, at, never: false, problem: `${r.effect} is inert on ${lost.join(', ')}: no organisation-level allow rule names ${lost.length > 1 ? 'them' : 'it'}` });
    }
    if (r.effect !== 'deny' && r.fileScope === undefined && scope !== undefined) {
      const where = scope.tenant !== undefined ? `tenants/${scope.tenant}/` : scope.team !== undefined ? `teams/${scope.team}.yaml` : `agents/${scope.agent as string}.yaml`;
      out.push({ id: r.id, at, never: false, problem: `${r.effect} is scoped only by "scope:" in an organisation-level file; put it in ${where} so its place shows its scope` });
    }
    const entries = scope?.agent === undefined ? undefined : registry.get(scope.agent);
    if (entries !== undefined && scope !== undefined) {
      const fits = entries.some(
        (e) => (scope.tenant === undefined || e.tenant === undefined || e.tenant === scope.tenant) && (scope.team === undefined || e.team === undefined || e.team === scope.team),
      );
      if (!fits) out.push({ id: r.id, at, never: true, problem: `can never apply: the agent registry puts agent ${scope.agent as string} in another tenant or team than its scope` });
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

/** A call sequence (`requires`, `blocked_by`) that can never hold, or does not do what it says. */
export interface SequenceProblem {
  readonly id: string;
  readonly at: string;
  readonly problem: string;
  /** The sequence can never hold, so the rule can never let a call through. */
  readonly never: boolean;
}

/** What a tool's calls look like to a rule: its upstream and, for a declared tool, its route and arguments. */
interface ToolShape {
  readonly upstream: string;
  readonly declared: ToolConfig | undefined;
}

/**
 * Call sequences that can never be satisfied, and steps that do not do what they say:
 * - a required tool no allow or escalate rule (that can apply to the rule's tenant and agent) lets
 *   through, or only rules that require, in turn, a call that can never come first (a rule
 *   requiring its own tool, or a cycle);
 * - a tool both required and blocked, where every call the `requires` step needs is one the
 *   `blocked_by` step forbids;
 * - a `within` longer than `gateway.policy.sessions.ttl`: an idle session is forgotten sooner;
 * - a `same:` argument a tool with declared arguments does not have.
 */
export function findSequenceProblems(config: Pick<Config, 'rules' | 'tools' | 'agents' | 'gateway'>): SequenceProblem[] {
  const shapes = toolShapes(config);
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));
  const opened = openedUpstreams(config);
  const dead = new Set(findDeadRules(config).map((d) => d.id));
  // Rules that can let a call through: no deny, no rule in shadow mode, nothing dead.
  const granting = config.rules.filter((g) => g.effect !== 'deny' && g.mode !== 'shadow' && !dead.has(g.id));
  const ttlMs = config.gateway.policy?.sessions?.ttlMs ?? DEFAULT_SESSION_TTL_MS;
  const lets = (tool: string, rules: readonly RuleConfig[]): RuleConfig[] => {
    const shape = shapes.get(tool);
    return shape === undefined ? [] : rules.filter((g) => mayLetThrough(g, tool, shape, opened, toolUpstream));
  };
  // The tools whose calls can come first, per tenant and agent a rule is scoped to.
  const firstCalls = new Map<string, Set<string>>();
  const out: SequenceProblem[] = [];
  for (const r of config.rules) {
    const at = `${r.at.file}:${r.at.line}`;
    const requires = r.requires ?? [];
    const blockedBy = r.blockedBy ?? [];
    if (requires.length > 0) {
      const mine = granting.filter((g) => sameSession(g, r));
      const session = `${r.scope?.tenant ?? ''}\0${r.scope?.agent ?? ''}`;
      const first = firstCalls.get(session) ?? reachable(shapes, (tool) => lets(tool, mine));
      firstCalls.set(session, first);
      for (const step of unique(requires.map((s) => s.tool))) {
        if (first.has(step)) continue;
        const through = lets(step, mine);
        if (through.length === 0) {
          const elsewhere = lets(step, granting).length > 0 ? ' that can apply to its tenant and agent' : '';
          out.push({ id: r.id, at, never: true, problem: `requires a call of ${step} that can never succeed: no allow or escalate rule${elsewhere} lets ${step} through` });
          continue;
        }
        const blockers = (tool: string): string[] => unique(lets(tool, mine).flatMap((g) => (g.requires ?? []).map((s) => s.tool).filter((t) => !first.has(t))));
        out.push({
          id: r.id,
          at,
          never: true,
          problem: `requires a call of ${step} that can never come first: every rule that lets it through (${through.map((g) => g.id).join(', ')}) requires an earlier call of ${blockers(step).join(', ')}${inCycle(step, blockers) ? ' (a cycle: none of them can be called first)' : ', which can never come first either'}`,
        });
      }
    }
    for (const need of requires) {
      const forbid = blockedBy.find(
        (b) =>
          b.tool === need.tool &&
          (b.same === undefined || b.same.every((a) => need.same?.includes(a) === true)) &&
          (b.withinMs === undefined || (need.withinMs !== undefined && b.withinMs >= need.withinMs)),
      );
      if (forbid !== undefined) {
        out.push({ id: r.id, at, never: true, problem: `needs and forbids the same earlier call: it requires ${describeStep(need)} and is blocked by ${describeStep(forbid)}, and every call the first needs is one the second forbids` });
      }
    }
    for (const [field, steps] of [['requires', requires], ['blocked_by', blockedBy]] as const) {
      for (const step of steps) {
        if (step.withinMs !== undefined && step.withinMs > ttlMs) {
          out.push({ id: r.id, at, never: false, problem: `${field} ${describeStep(step)}, longer than gateway.policy.sessions.ttl (${formatDuration(ttlMs)}): a session idle that long is forgotten sooner, with its calls` });
        }
        const tool = shapes.get(step.tool)?.declared;
        if (tool === undefined || Object.keys(tool.args).length === 0) continue;
        const params = new Set(pathSegments(tool.path).filter((p) => ROUTE_PARAM.test(p)).map((p) => p.slice(1, -1)));
        const missing = (step.same ?? []).filter((a) => !params.has(a) && !(a in tool.args));
        if (missing.length > 0) {
          out.push({
            id: r.id,
            at,
            never: false,
            problem: `${field} ${step.tool} with the same ${missing.join(', ')}, which ${step.tool} does not have (not a path parameter of ${tool.path}, not among its declared args): the earlier call's value is always absent`,
          });
        }
      }
    }
  }
  return out;
}

/** Every tool a rule may speak of: the declared ones and an MCP server's (`<upstream>.<name>`), named by some rule. */
function toolShapes(config: Pick<Config, 'rules' | 'tools'>): Map<string, ToolShape> {
  const shapes = new Map<string, ToolShape>(config.tools.map((t) => [t.name, { upstream: t.upstream, declared: t }]));
  for (const r of config.rules) {
    for (const t of [...(r.tools ?? []), ...(r.requires ?? []).map((s) => s.tool), ...(r.blockedBy ?? []).map((s) => s.tool)]) {
      if (!shapes.has(t)) shapes.set(t, { upstream: t.slice(0, t.indexOf('.')), declared: undefined });
    }
  }
  return shapes;
}

/**
 * Whether rule `g` may let a call of `tool` through (an approximation that errs towards yes): it
 * names the tool, or it names no tools and its upstream, methods and paths may fit the tool's
 * route; and it is not inert on the tool's upstream.
 */
function mayLetThrough(g: RuleConfig, tool: string, shape: ToolShape, opened: OpenedUpstreams, toolUpstream: ReadonlyMap<string, string>): boolean {
  const effective = effectiveUpstreams(g, opened, toolUpstream);
  if (effective !== undefined && !effective.has(shape.upstream)) return false;
  if (g.tools !== undefined) return g.tools.includes(tool);
  if (g.upstream !== undefined && g.upstream !== shape.upstream) return false;
  const t = shape.declared;
  // An MCP server's tool has no route of its own to compare methods and paths with.
  if (t === undefined) return true;
  if (g.methods !== undefined && !g.methods.includes(t.method)) return false;
  return g.paths === undefined || g.paths.some((p) => patternMayMatchRoute(p, t.path, g.effect !== 'allow'));
}

/** Whether a path pattern may match some path of a tool's route, whose `{name}` segments match any segment. */
function patternMayMatchRoute(pattern: string, route: string, ignoreCase: boolean): boolean {
  const ps = pathSegments(pattern);
  const rs = pathSegments(route);
  for (const [i, p] of ps.entries()) {
    if (p === '**') return true;
    const r = rs[i];
    if (r === undefined) return false;
    if (ROUTE_PARAM.test(r)) continue;
    if (p === '*' ? r === '' : ignoreCase ? p.toLowerCase() !== r.toLowerCase() : p !== r) return false;
  }
  return ps.length === rs.length;
}

/** Whether the calls two rules match can be of one session: no tenant or agent of one is another's. */
function sameSession(a: RuleConfig, b: RuleConfig): boolean {
  return (['tenant', 'agent'] as const).every((k) => a.scope?.[k] === undefined || b.scope?.[k] === undefined || a.scope[k] === b.scope[k]);
}

/** The tools whose calls can get through some time in a session: a least fixpoint over the rules that let each through. */
function reachable(shapes: ReadonlyMap<string, ToolShape>, lets: (tool: string) => readonly RuleConfig[]): Set<string> {
  const through = new Map([...shapes.keys()].map((t) => [t, lets(t)]));
  const done = new Set<string>();
  for (let grew = true; grew; ) {
    grew = false;
    for (const [tool, rules] of through) {
      if (done.has(tool) || !rules.some((g) => (g.requires ?? []).every((s) => done.has(s.tool)))) continue;
      done.add(tool);
      grew = true;
    }
  }
  return done;
}

/** Whether `tool` leads back to itself through the calls that must come before it (`blockers`). */
function inCycle(tool: string, blockers: (tool: string) => readonly string[]): boolean {
  const seen = new Set<string>();
  const stack = [...blockers(tool)];
  for (let t = stack.pop(); t !== undefined; t = stack.pop()) {
    if (t === tool) return true;
    if (seen.has(t)) continue;
    seen.add(t);
    stack.push(...blockers(t));
  }
  return false;
}

/** A budget no call an escalation rule escalates can ever fit: an approval that is always wasted. */
export interface BudgetProblem {
  /** The budget's id and place. */
  readonly id: string;
  readonly at: string;
  /** The escalation rule's id. */
  readonly rule: string;
  readonly problem: string;
}

/**
 * Budgets (`sum:`) smaller than every call an escalation rule escalates: the rule's `when` bounds
 * the budget's `sum` from below by at least its whole `limit` (a top-level conjunct `X > N`,
 * `X >= N`, `N < X` or `N <= X`), and the budget applies to every call the rule matches. Such a
 * call, once approved, is refused by the budget anyway.
 */
export function findWastedApprovals(config: Pick<Config, 'rules' | 'budgets' | 'tools'>): BudgetProblem[] {
  const tools = new Map(config.tools.map((t) => [t.name, t]));
  const budgets = config.budgets.flatMap((b) => {
    const sum = b.sum === undefined || b.when !== undefined ? undefined : celKey(b.sum);
    return sum === undefined ? [] : [{ b, sum }];
  });
  const out: BudgetProblem[] = [];
  if (budgets.length === 0) return out;
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));
  const opened = openedUpstreams(config);
  for (const r of config.rules) {
    if (r.effect !== 'escalate' || r.mode === 'shadow' || r.when === undefined || effectiveUpstreams(r, opened, toolUpstream)?.size === 0) continue;
    const bounds = lowerBounds(r.when);
    for (const { b, sum } of budgets) {
      const bound = bounds.find((x) => x.expression === sum && (x.strict ? x.min >= b.limit : x.min > b.limit));
      if (bound === undefined || !limitCovers(b, r, tools)) continue;
      out.push({
        id: b.id,
        at: `${b.at.file}:${b.at.line}`,
        rule: r.id,
        problem: `budget ${b.id} (limit ${b.limit} per ${formatDuration(b.windowMs)}) is smaller than any call rule ${r.id} (${r.at.file}:${r.at.line}) escalates (${bound.text}): an approved call would still be refused`,
      });
    }
  }
  return out;
}

/** A top-level conjunct of a condition that bounds an expression from below. */
interface LowerBound {
  /** The bounded expression, as {@link celKey} writes it. */
  readonly expression: string;
  readonly min: number;
  /** `>`: the expression is above `min`; `>=`: at least `min`. */
  readonly strict: boolean;
  /** The conjunct as written. */
  readonly text: string;
}

/** The lower bounds among the top-level `&&` conjuncts of a CEL condition; none if it does not parse. */
function lowerBounds(when: string): LowerBound[] {
  let ast: ASTNode;
  try {
    ast = parseCel(when).ast;
  } catch {
    return [];
  }
  const conjuncts = (n: ASTNode): ASTNode[] => (n.op === '&&' ? [...conjuncts(n.args[0]), ...conjuncts(n.args[1])] : [n]);
  const out: LowerBound[] = [];
  for (const n of conjuncts(ast)) {
    if (n.op !== '>' && n.op !== '>=' && n.op !== '<' && n.op !== '<=') continue;
    const [left, right] = n.args;
    // `X > N` and `X >= N` bound X on the left; `N < X` and `N <= X` on the right.
    const [x, limit] = n.op === '>' || n.op === '>=' ? [left, numberOf(right)] : [right, numberOf(left)];
    if (limit === undefined || numberOf(x) !== undefined) continue;
    out.push({ expression: serializeCel(x), min: limit, strict: n.op === '>' || n.op === '<', text: n.input.slice(n.range.start, n.range.end) });
  }
  return out;
}

/** A numeric literal's value (`1000`, `2.5`, `-3`), else undefined. */
function numberOf(n: ASTNode): number | undefined {
  if (n.op === 'value') return typeof n.args === 'number' || typeof n.args === 'bigint' ? Number(n.args) : undefined;
  if (n.op === '-_') {
    const inner = numberOf(n.args);
    return inner === undefined ? undefined : -inner;
  }
  return undefined;
}

/** A CEL expression written one way whatever its spacing and parentheses; undefined if it does not parse. */
function celKey(source: string): string | undefined {
  try {
    return serializeCel(parseCel(source).ast);
  } catch {
    return undefined;
  }
}

/**
 * Whether a limit surely applies to every request rule `r` matches (conservatively: false if
 * unsure): each of its constraints is absent or implied by the rule's.
 */
function limitCovers(l: MatchConfig, r: RuleConfig, tools: ReadonlyMap<string, ToolConfig>): boolean {
  const subset = (o: readonly string[] | undefined, i: readonly string[] | undefined): boolean => o === undefined || (i !== undefined && i.every((x) => o.includes(x)));
  const ruleTools = r.tools?.map((t) => tools.get(t));
  const declared = ruleTools !== undefined && ruleTools.every((t) => t !== undefined) ? (ruleTools as ToolConfig[]) : undefined;
  if (l.upstream !== undefined) {
    const upstreams = r.upstream !== undefined ? [r.upstream] : declared?.map((t) => t.upstream);
    if (upstreams === undefined || !upstreams.every((u) => u === l.upstream)) return false;
  }
  for (const k of ['tenant', 'team', 'agent'] as const) {
    if (l.scope?.[k] !== undefined && l.scope[k] !== r.scope?.[k]) return false;
  }
  if (l.roles !== undefined || !subset(l.tools, r.tools) || !subset(l.environments, r.environments)) return false;
  if (l.methods !== undefined && !subset(l.methods, r.methods) && !(declared !== undefined && declared.every((t) => l.methods?.includes(t.method)))) return false;
  if (l.paths !== undefined) {
    const patterns = l.paths;
    const match = compilePaths(patterns, true);
    // As in `covers`: a wildcard is covered only by the same pattern or a `**` prefix of it.
    const byPaths = r.paths?.every((p) => (p.includes('*') ? patterns.some((o) => o === p || (o.endsWith('/**') && p.startsWith(o.slice(0, -2)))) : match(p)));
    const byRoutes = declared?.every((t) => patterns.some((o) => patternCoversRoute(o, t.path)));
    if (byPaths !== true && byRoutes !== true) return false;
  }
  return true;
}

/** Whether a (case-insensitive) path pattern matches every path of a tool's route: a `{name}` segment only by `*` or `**`. */
function patternCoversRoute(pattern: string, route: string): boolean {
  const ps = pathSegments(pattern);
  const rs = pathSegments(route);
  for (const [i, p] of ps.entries()) {
    if (p === '**') return true;
    const r = rs[i];
    if (r === undefined) return false;
    if (ROUTE_PARAM.test(r) ? p !== '*' : p !== '*' && p.toLowerCase() !== r.toLowerCase()) return false;
  }
  return ps.length === rs.length;
}


/** A path's segments; one trailing slash is insignificant. */
function pathSegments(path: string): string[] {
  const s = path.split('/').slice(1);
  if (s.length > 1 && s[s.length - 1] === '') s.pop();
  return s;
}

/** A rule that can never take effect, with every reason found. */
export interface NeverMatchingRule {
  readonly id: string;
  readonly at: string;
  /** Why, e.g. `shadowed: ...`, `can never apply: ...`, `requires a call of ...`. */
  readonly why: string;
}

/**
 * Every rule that can never take effect: dead ({@link findDeadRules}), inert or out of its agent's
 * reach ({@link findScopeProblems}), or with a call sequence that can never hold
 * ({@link findSequenceProblems}). One entry per rule, its reasons joined.
 */
export function findNeverMatching(config: Pick<Config, 'rules' | 'tools' | 'agents' | 'gateway'>): NeverMatchingRule[] {
  const found = new Map<string, { at: string; why: string[] }>();
  const add = (id: string, at: string, why: string): void => {
    const seen = found.get(id);
    if (seen === undefined) found.set(id, { at, why: [why] });
    else seen.why.push(why);
  };
  for (const d of findDeadRules(config)) add(d.id, d.at, d.why);
  for (const p of findScopeProblems(config)) if (p.never) add(p.id, p.at, p.problem);
  for (const p of findSequenceProblems(config)) if (p.never) add(p.id, p.at, p.problem);
  const order = new Map(config.rules.map((r, i) => [r.id, i]));
  return [...found]
    .sort(([a], [b]) => (order.get(a) ?? 0) - (order.get(b) ?? 0))
    .map(([id, { at, why }]) => ({ id, at, why: why.join('; ') }));
}

/** How a change (a base set to a new one) changes which rules can never take effect. */
export interface DeadRuleChange {
  /** Dead in the new set: new rules, or rules (same id) that could match in the base set. */
  readonly newlyDead: readonly (NeverMatchingRule & { readonly existed: boolean })[];
  /** Dead in both sets. */
  readonly alreadyDead: readonly NeverMatchingRule[];
  /** Rules of the base set (id, place there) the new set no longer has. */
  readonly removed: readonly { readonly id: string; readonly at: string }[];
}

/** Compares the rules that can never take effect in `next` with those of `base` (rules are the same by id). */
export function compareDeadRules(base: Pick<Config, 'rules' | 'tools' | 'agents' | 'gateway'>, next: Pick<Config, 'rules' | 'tools' | 'agents' | 'gateway'>): DeadRuleChange {
  const before = new Set(findNeverMatching(base).map((d) => d.id));
  const existing = new Set(base.rules.map((r) => r.id));
  const present = new Set(next.rules.map((r) => r.id));
  const dead = findNeverMatching(next);
  return {
    newlyDead: dead.filter((d) => !before.has(d.id)).map((d) => ({ ...d, existed: existing.has(d.id) })),
    alreadyDead: dead.filter((d) => before.has(d.id)),
    removed: base.rules.filter((r) => !present.has(r.id)).map((r) => ({ id: r.id, at: `${r.at.file}:${r.at.line}` })),
  };
}

/** One line of `valet policy check`'s report, without its `warning: ` or `info: ` prefix. */
export interface CheckLine {
  readonly level: 'warning' | 'info';
  readonly text: string;
}

/** The parts of a configuration `valet policy check` lints. */
export type LintedConfig = Pick<Config, 'rules' | 'tools' | 'agents' | 'gateway' | 'budgets'>;

/**
 * What `valet policy check` reports about a set: dead rules, rules escaping their scope, call
 * sequences, budgets that waste approvals. With a base set (`--against`, named `label`), rules that
 * can never take effect are told apart: newly dead in this change (warnings) or already dead in
 * the base (info), and the base's rules the set no longer has are listed (info).
 */
export function policyCheckReport(config: LintedConfig, against?: { readonly label: string; readonly config: LintedConfig }): CheckLine[] {
  const lines: CheckLine[] = [];
  const warn = (text: string): void => void lines.push({ level: 'warning', text });
  const scopes = findScopeProblems(config);
  const sequences = findSequenceProblems(config);
  if (against === undefined) {
    for (const d of findDeadRules(config)) warn(`${d.at}: rule ${d.id} is ${d.why}`);
    for (const p of scopes) warn(`${p.at}: rule ${p.id} ${p.problem}`);
    for (const p of sequences) warn(`${p.at}: rule ${p.id} ${p.problem}`);
  } else {
    const change = compareDeadRules(against.config, config);
    for (const d of change.newlyDead) {
      warn(d.existed ? `${d.at}: rule ${d.id} is newly dead in this change (it could match in ${against.label}): ${d.why}` : `${d.at}: rule ${d.id}, new in this change, can never match: ${d.why}`);
    }
    for (const d of change.alreadyDead) lines.push({ level: 'info', text: `${d.at}: rule ${d.id} was already dead in ${against.label}: ${d.why}` });
    for (const r of change.removed) lines.push({ level: 'info', text: `${r.at}: rule ${r.id} was removed in this change (it is in ${against.label}, not in this set)` });
    for (const p of scopes) if (!p.never) warn(`${p.at}: rule ${p.id} ${p.problem}`);
    for (const p of sequences) if (!p.never) warn(`${p.at}: rule ${p.id} ${p.problem}`);
  }
  for (const b of findWastedApprovals(config)) warn(`${b.at}: ${b.problem}`);
  return lines;
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)];
}

function describeStep(step: SequenceStep): string {
  return `${step.tool}${step.same === undefined ? '' : ` with the same ${step.same.join(', ')}`}${step.withinMs === undefined ? '' : ` within ${formatDuration(step.withinMs)}`}`;
}

/** `1d`, `90m`, `45s`: a window or `within` as configured. */
function formatDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
