import type {
  BudgetConfig,
  Config,
  CounterKey,
  Environment,
  MatchConfig,
  RateLimitConfig,
  RuleConfig,
} from '../config/types.js';
import { ConfigError, type ConfigProblem } from '../errors.js';
import type { AgentIdentity, Decision, Effect, Limited, RequestFacts } from '../types.js';
import { celErrorMessage, compileCel, type CelProgram } from './cel.js';
import type { CounterStore, HistoryStore } from './counters.js';
import { createContextSources, type ContextSources } from './context.js';
import { compileTools, type ToolMatch } from './tools.js';

/** Everything a decision depends on besides the rules themselves. */
export interface EvaluationInput {
  readonly identity: AgentIdentity;
  readonly facts: RequestFacts;
  /** The gateway's deployment environment. */
  readonly environment: Environment;
  readonly now: number;
  /** Values from context sources (`ctx.*`), resolved before evaluation. */
  readonly context: Readonly<Record<string, unknown>>;
}

/** One rule as considered for a request: matched, or the first reason it did not. */
export interface RuleTrace {
  readonly id: string;
  readonly effect: Effect;
  readonly principal: 'agent' | 'user';
  readonly matched: boolean;
  readonly why: string;
  readonly at: string;
}

/** A compiled policy set; the request path only calls these. */
export interface Policy {
  /** Content hash of the configuration it was compiled from. */
  readonly version: string;
  matchTool(upstream: string, method: string, path: string): ToolMatch | undefined;
  /** Whether any condition, limit or tool of this upstream reads arguments (so bodies are parsed). */
  readsArgs(upstream: string): boolean;
  evaluate(input: EvaluationInput): Decision;
  explain(input: EvaluationInput): { decision: Decision; trace: RuleTrace[] };
  /** Applies rate limits and budgets to an allowed request; counts it unless it is refused. */
  charge(input: EvaluationInput): Limited | Decision | undefined;
  /** Records a forwarded call for `history.*` conditions. */
  recordCall(input: EvaluationInput): void;
  /** Looks up the `ctx.*` values this request's conditions may read. */
  resolveContext(input: Omit<EvaluationInput, 'context'>): Promise<Record<string, unknown>>;
}

export const DEFAULT_DENY_RULE = 'default-deny';

const RANK: Record<Effect, number> = { allow: 0, escalate: 1, deny: 2 };

interface Principal {
  readonly kind: 'agent' | 'user';
  readonly id: string;
  readonly roles: ReadonlySet<string>;
}

interface CompiledMatch {
  readonly config: MatchConfig;
  readonly methods: ReadonlySet<string> | undefined;
  readonly tools: ReadonlySet<string> | undefined;
  readonly roles: readonly string[] | undefined;
  readonly environments: ReadonlySet<string> | undefined;
  readonly matchPath: ((path: string) => boolean) | undefined;
  readonly when: CelProgram | undefined;
  /** Restrictive effects match when either environment does; allows need both. */
  readonly restrictive: boolean;
  readonly at: string;
}

interface CompiledRule extends CompiledMatch {
  readonly rule: RuleConfig;
}

interface CompiledLimit extends CompiledMatch {
  readonly limit: number;
  readonly windowMs: number;
  readonly key: CounterKey;
  readonly keyProgram: CelProgram | undefined;
  readonly sum: CelProgram | undefined;
  readonly kind: 'rate_limit' | 'budget';
}

export interface PolicyStores {
  readonly counters: CounterStore;
  readonly history: HistoryStore;
}

/**
 * Compiles rules, tools, limits and budgets once; CEL is parsed and type-checked here and any error
 * is a {@link ConfigError} naming file, line and field. Rules are indexed by upstream.
 */
export function compilePolicy(
  config: Pick<Config, 'version' | 'gateway' | 'tools' | 'rules' | 'rateLimits' | 'budgets' | 'contexts'>,
  stores: PolicyStores,
): Policy {
  const problems: ConfigProblem[] = [];
  const toolMatcher = compileTools(config.tools);
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));

  const cel = (m: MatchConfig, field: string, source: string, expect: 'bool' | 'number' | 'any'): CelProgram | undefined => {
    const program = compileCel(source, expect);
    if ('error' in program) {
      problems.push({ file: m.at.file, line: m.lines[field] ?? m.at.line, column: 0, path: `${m.at.path}.${field}`, message: program.error });
      return undefined;
    }
    return program;
  };
  const base = (m: MatchConfig, restrictive: boolean): CompiledMatch => ({
    config: m,
    methods: m.methods ? new Set(m.methods) : undefined,
    tools: m.tools ? new Set(m.tools) : undefined,
    roles: m.roles,
    environments: m.environments ? new Set(m.environments) : undefined,
    matchPath: m.paths ? compilePaths(m.paths, restrictive) : undefined,
    when: m.when === undefined ? undefined : cel(m, 'when', m.when, 'bool'),
    restrictive,
    at: `${m.at.file}:${m.at.line}`,
  });

  const rules: CompiledRule[] = config.rules.map((r) => ({ ...base(r, r.effect !== 'allow'), rule: r }));
  const limits: CompiledLimit[] = [
    ...config.rateLimits.map((l: RateLimitConfig) => limitOf(l, 'rate_limit', undefined)),
    ...config.budgets.map((b: BudgetConfig) => limitOf(b, 'budget', cel(b, 'sum', b.sum, 'number'))),
  ];
  function limitOf(l: RateLimitConfig | BudgetConfig, kind: 'rate_limit' | 'budget', sum: CelProgram | undefined): CompiledLimit {
    return {
      ...base(l, true),
      limit: l.limit,
      windowMs: l.windowMs,
      key: l.key,
      keyProgram: typeof l.key === 'object' ? cel(l, 'key', l.key.cel, 'any') : undefined,
      sum,
      kind,
    };
  }
  let contexts: ContextSources | undefined;
  try {
    contexts = createContextSources(config.contexts);
  } catch (err) {
    const c = config.contexts[0];
    problems.push({ file: c?.at.file ?? '', line: c?.at.line ?? 0, column: 0, path: 'contexts', message: (err as Error).message });
  }
  if (problems.length > 0 || contexts === undefined) throw new ConfigError(problems);
  const contextSources = contexts;

  const byUpstream = <T extends CompiledMatch>(items: readonly T[]): ((upstream: string) => readonly T[]) => {
    const any: T[] = [];
    const index = new Map<string, T[]>();
    for (const item of items) {
      const upstreams = new Set<string>();
      if (item.config.upstream !== undefined) upstreams.add(item.config.upstream);
      else for (const t of item.config.tools ?? []) upstreams.add(toolUpstream.get(t) as string);
      if (upstreams.size === 0) any.push(item);
      for (const u of upstreams) index.set(u, [...(index.get(u) ?? []), item]);
    }
    for (const [u, list] of index) index.set(u, [...list, ...any]);
    return (upstream) => index.get(upstream) ?? any;
  };
  const rulesFor = byUpstream(rules);
  const limitsFor = byUpstream(limits);
  // Second level: per (upstream, method, tool), only the rules whose method and tool constraints
  // can hold. Built on first use; the combinations are finite (upstreams × methods × tools).
  const narrowed = new Map<string, readonly CompiledRule[]>();
  const rulesAt = (facts: RequestFacts): readonly CompiledRule[] => {
    const key = `${facts.upstream}\u0000${facts.method}\u0000${facts.tool ?? ''}`;
    let list = narrowed.get(key);
    if (list === undefined) {
      list = rulesFor(facts.upstream).filter(
        (r) => (!r.methods || r.methods.has(facts.method)) && (!r.tools || (facts.tool !== undefined && r.tools.has(facts.tool))),
      );
      if (narrowed.size < 100_000) narrowed.set(key, list);
    }
    return list;
  };

  const argsReaders = new Set<string>();
  let anyUpstreamReadsArgs = false;
  for (const t of config.tools) if (Object.keys(t.args).length > 0) argsReaders.add(t.upstream);
  for (const item of [...rules, ...limits]) {
    const reads = [item.when, ...('sum' in item ? [item.sum, item.keyProgram] : [])].some((p) => p?.readsArgs);
    if (!reads) continue;
    if (item.config.upstream !== undefined) argsReaders.add(item.config.upstream);
    else if (item.config.tools !== undefined) for (const t of item.config.tools) argsReaders.add(toolUpstream.get(t) as string);
    else anyUpstreamReadsArgs = true;
  }
  const sources = [...rules, ...limits].map((i) => [i.config.when, 'sum' in i.config ? i.config.sum : undefined].join(' '));
  const readsTime = sources.some((s) => /\btime\b/.test(s));
  const readsHistory = sources.some((s) => /\bhistory\b/.test(s));
  const timeParts = new Intl.DateTimeFormat('en-US', {
    timeZone: config.gateway.timezone,
    hourCycle: 'h23',
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    weekday: 'short',
  });

  const principals = (identity: AgentIdentity): Principal[] => {
    const agent: Principal = { kind: 'agent', id: identity.agent, roles: new Set(identity.roles) };
    // Delegation: the agent gets at most what both it and the user it acts for may do.
    return identity.user === undefined ? [agent] : [agent, { kind: 'user', id: identity.user, roles: new Set(identity.userRoles) }];
  };

  const activation = (input: EvaluationInput, p: Principal): Record<string, unknown> => {
    const { identity: id, facts } = input;
    const act: Record<string, unknown> = {
      args: facts.args,
      env: input.environment,
      agent: compact({ id: id.agent, tenant: id.tenant, team: id.team, roles: [...id.roles], environment: id.environment }),
      user: id.user === undefined ? {} : { id: id.user, roles: [...id.userRoles] },
      principal: { kind: p.kind, id: p.id, roles: [...p.roles] },
      request: compact({ upstream: facts.upstream, method: facts.method, path: facts.path, tool: facts.tool, query: facts.query }),
      time: readsTime ? timeOf(timeParts, input.now) : {},
      history: readsHistory ? stores.history.summary(id.agent, callKey(facts), input.now) : {},
      ctx: input.context,
    };
    return act;
  };

  /** Static match (no CEL): true, or why not. */
  const staticMatch = (m: CompiledMatch, input: EvaluationInput, p: Principal): true | string => {
    const { identity: id, facts } = input;
    const scope = m.config.scope;
    if (scope?.tenant !== undefined && scope.tenant !== id.tenant) return `scope: tenant is not ${scope.tenant}`;
    if (scope?.team !== undefined && scope.team !== id.team) return `scope: team is not ${scope.team}`;
    if (scope?.agent !== undefined && scope.agent !== id.agent) return `scope: agent is not ${scope.agent}`;
    if (m.config.upstream !== undefined && m.config.upstream !== facts.upstream) return `upstream is not ${m.config.upstream}`;
    if (m.tools && (facts.tool === undefined || !m.tools.has(facts.tool))) return `tool is not one of ${[...m.tools].join(', ')}`;
    if (m.methods && !m.methods.has(facts.method)) return `method ${facts.method} is not one of ${[...m.methods].join(', ')}`;
    if (m.matchPath && !m.matchPath(facts.path)) return `path ${facts.path} matches no pattern`;
    if (m.roles && !m.roles.some((r) => p.roles.has(r))) return `${p.kind} has none of the roles ${m.roles.join(', ')}`;
    if (m.environments) {
      const gw = m.environments.has(input.environment);
      const token = id.environment === undefined || m.environments.has(id.environment);
      const tokenAny = id.environment !== undefined && m.environments.has(id.environment);
      if (!(m.restrictive ? gw || tokenAny : gw && token)) return `environment is not ${[...m.environments].join(', ')}`;
    }
    return true;
  };

  type Outcome = { matched: true } | { matched: false; why: string } | { error: string };
  const condition = (m: CompiledMatch, facts: RequestFacts, act: () => Record<string, unknown>): Outcome => {
    if (!m.when) return { matched: true };
    if (m.when.readsArgs && facts.argsError !== undefined) return { error: facts.argsError };
    try {
      const v = m.when(act());
      if (v === true) return { matched: true };
      if (v === false) return { matched: false, why: 'condition is false' };
      return { error: 'the condition did not give a bool' };
    } catch (err) {
      return { error: celErrorMessage(err) };
    }
  };

  const decideFor = (input: EvaluationInput, p: Principal, trace: RuleTrace[] | undefined): Decision => {
    let memo: Record<string, unknown> | undefined;
    const act = (): Record<string, unknown> => (memo ??= activation(input, p));
    const matched: CompiledRule[] = [];
    let failure: { rule: CompiledRule; error: string } | undefined;
    for (const r of trace ? rulesFor(input.facts.upstream) : rulesAt(input.facts)) {
      const s = staticMatch(r, input, p);
      if (s !== true) {
        trace?.push({ id: r.rule.id, effect: r.rule.effect, principal: p.kind, matched: false, why: s, at: r.at });
        continue;
      }
      const c = condition(r, input.facts, act);
      if ('error' in c) {
        failure ??= { rule: r, error: c.error };
        trace?.push({ id: r.rule.id, effect: r.rule.effect, principal: p.kind, matched: false, why: `condition could not be evaluated: ${c.error}`, at: r.at });
        continue;
      }
      trace?.push({ id: r.rule.id, effect: r.rule.effect, principal: p.kind, matched: c.matched, why: c.matched ? 'matched' : c.why, at: r.at });
      if (c.matched) matched.push(r);
    }
    // A condition that cannot be evaluated denies: failing closed beats guessing.
    if (failure) {
      return { effect: 'deny', rules: [failure.rule.rule.id], reason: `rule ${failure.rule.rule.id}: the condition could not be evaluated: ${failure.error}` };
    }
    let best: Effect | undefined;
    for (const r of matched) if (best === undefined || RANK[r.rule.effect] > RANK[best]) best = r.rule.effect;
    if (best === undefined) {
      const tool = input.facts.tool ? ` (tool ${input.facts.tool})` : '';
      return { effect: 'deny', rules: [DEFAULT_DENY_RULE], reason: `no rule allows ${input.facts.method} ${input.facts.path}${tool} on ${input.facts.upstream}` };
    }
    const winners = matched.filter((r) => r.rule.effect === best);
    const first = winners[0] as CompiledRule;
    const reason = first.rule.reason ?? first.rule.description ?? `rule ${first.rule.id}`;
    const decision: Decision = { effect: best, rules: winners.map((r) => r.rule.id), reason };
    if (best === 'escalate' && first.rule.approval) return { ...decision, approval: strictestApproval(winners) };
    return decision;
  };

  const decide = (input: EvaluationInput, trace: RuleTrace[] | undefined): Decision => {
    let result: Decision | undefined;
    for (const p of principals(input.identity)) {
      const d = decideFor(input, p, trace);
      const labelled = p.kind === 'user' ? { ...d, reason: `acting for user ${p.id}: ${d.reason}` } : d;
      if (result === undefined || RANK[labelled.effect] > RANK[result.effect]) result = labelled;
    }
    return result as Decision;
  };

  const counterKey = (l: CompiledLimit, input: EvaluationInput, act: () => Record<string, unknown>): string | { error: string } => {
    const { identity: id, facts } = input;
    switch (l.key) {
      case 'agent':
        return `agent:${id.agent}`;
      case 'tenant':
        return `tenant:${id.tenant ?? ''}`;
      case 'user':
        return `user:${id.user ?? `agent:${id.agent}`}`;
      case 'tool':
        return `tool:${facts.tool ?? `${facts.upstream} ${facts.method} ${facts.path}`}`;
      case 'global':
        return 'global';
      default:
        try {
          return `cel:${String((l.keyProgram as CelProgram)(act()))}`;
        } catch (err) {
          return { error: celErrorMessage(err) };
        }
    }
  };

  return {
    version: config.version,
    matchTool: toolMatcher,
    readsArgs: (upstream) => anyUpstreamReadsArgs || argsReaders.has(upstream),
    evaluate: (input) => decide(input, undefined),
    explain(input) {
      const trace: RuleTrace[] = [];
      return { decision: decide(input, trace), trace };
    },
    charge(input) {
      const agent = principals(input.identity)[0] as Principal;
      let memo: Record<string, unknown> | undefined;
      const act = (): Record<string, unknown> => (memo ??= activation(input, agent));
      const entries: { limit: CompiledLimit; key: string; cost: number }[] = [];
      for (const l of limitsFor(input.facts.upstream)) {
        if (staticMatch(l, input, agent) !== true) continue;
        const c = condition(l, input.facts, act);
        const fail = (error: string): Decision => ({
          effect: 'deny',
          rules: [l.config.id],
          reason: `${l.kind === 'budget' ? 'budget' : 'rate limit'} ${l.config.id} could not be applied: ${error}`,
        });
        if ('error' in c) return fail(c.error);
        if (!c.matched) continue;
        const key = counterKey(l, input, act);
        if (typeof key !== 'string') return fail(key.error);
        let cost = 1;
        if (l.sum) {
          if (l.sum.readsArgs && input.facts.argsError !== undefined) return fail(input.facts.argsError);
          try {
            const v = l.sum(act());
            cost = typeof v === 'bigint' ? Number(v) : (v as number);
          } catch (err) {
            return fail(celErrorMessage(err));
          }
          if (typeof cost !== 'number' || !Number.isFinite(cost) || cost < 0) return fail('the amount is not a non-negative number');
        }
        entries.push({ limit: l, key: `${l.kind}:${l.config.id}:${key}`, cost });
      }
      if (entries.length === 0) return undefined;
      const r = stores.counters.tryConsume(
        entries.map((e) => ({ key: e.key, windowMs: e.limit.windowMs, limit: e.limit.limit, cost: e.cost })),
        input.now,
      );
      if (r.ok) return undefined;
      const l = (entries[r.index] as { limit: CompiledLimit }).limit;
      const what = l.kind === 'budget' ? `budget ${l.config.id} (${l.limit} per ${formatMs(l.windowMs)})` : `rate limit ${l.config.id} (${l.limit} per ${formatMs(l.windowMs)})`;
      return { kind: l.kind, id: l.config.id, reason: `${what} is exhausted`, retryAfterMs: r.retryAfterMs };
    },
    recordCall(input) {
      stores.history.record(input.identity.agent, callKey(input.facts), input.now);
    },
    resolveContext: (input) => contextSources.resolve(input),
  };
}

function strictestApproval(winners: readonly CompiledRule[]): NonNullable<Decision['approval']> {
  // Several escalations at once: the shortest timeout; hold if any rule wants the agent to wait.
  const approvals = winners.map((w) => w.rule.approval).filter((a) => a !== undefined);
  const first = approvals[0] as NonNullable<RuleConfig['approval']>;
  return {
    group: first.group,
    timeoutMs: Math.min(...approvals.map((a) => a.timeoutMs)),
    mode: approvals.some((a) => a.mode === 'hold') ? 'hold' : 'async',
  };
}

function callKey(facts: RequestFacts): string {
  return facts.tool ?? `${facts.upstream} ${facts.method} ${facts.path}`;
}

function compact(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}

const WEEKDAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

function timeOf(format: Intl.DateTimeFormat, now: number): Record<string, unknown> {
  const parts: Record<string, string> = {};
  for (const p of format.formatToParts(now)) parts[p.type] = p.value;
  return {
    hour: BigInt(Number(parts['hour'])),
    minute: BigInt(Number(parts['minute'])),
    weekday: BigInt(WEEKDAYS.indexOf(parts['weekday'] ?? '')),
    date: `${parts['year']}-${parts['month']}-${parts['day']}`,
    unix: BigInt(Math.floor(now / 1000)),
  };
}

function formatMs(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/**
 * `*` matches one non-empty segment, a final `**` any remainder (including none). One trailing
 * slash is insignificant on both sides. Restrictive (deny/escalate) patterns ignore letter case, so
 * case can never dodge them; allow patterns do not, so case can never widen them.
 */
export function compilePaths(patterns: readonly string[], ignoreCase: boolean): (path: string) => boolean {
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

