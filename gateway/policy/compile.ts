import type {
  AgentRegistration,
  ApprovalConfig,
  BudgetConfig,
  Config,
  CounterKey,
  Environment,
  MatchConfig,
  RateLimitConfig,
  ResponseRuleConfig,
  SequenceStep,
} from '../config/types.js';
import { ConfigError, ValetError, type ConfigProblem } from '../errors.js';
import type { AgentIdentity, ApprovalRequest, BudgetLevel, Decision, Effect, Limited, RequestFacts, Spend } from '../types.js';
import { CEL_VARIABLES, CONNECTED, MATCH_VARIABLE, celErrorMessage, compileCel, type CelProgram } from './cel.js';
import { combineRedactors, compileRedactor, type KeepMatch, type RedactionSpec, type Redactor } from '../proxy/redact.js';
import type { ConsumeResult, CounterStore, HistoryStore, HistorySummary, VersionedHistory } from './counters.js';
import { createContextSources, type ContextSources } from './context.js';
import { describeScope, effectiveUpstreams, namedUpstreams, openedUpstreams, upstreamOfTool } from './scope.js';
import { compileTools, type ToolMatch } from './tools.js';
import { argsDigest, calledMark, memorySessionStore, okMark, sessionKey, type SessionMarks, type SessionStore } from './sessions.js';

/** Everything a decision depends on besides the rules themselves. */
export interface EvaluationInput {
  readonly identity: AgentIdentity;
  readonly facts: RequestFacts;
  /** The gateway's deployment environment. */
  readonly environment: Environment;
  readonly now: number;
  /** Values from context sources (`ctx.*`), resolved before evaluation. */
  readonly context: Readonly<Record<string, unknown>>;
  /** `history`, when a shared store was asked before evaluation ({@link Policy.resolveHistory}). */
  readonly history?: HistorySummary;
  /** The version of that history (a shared store's), for {@link Policy.claimCall}. */
  readonly historyVersion?: string;
  /** What the session holds of the calls sequence rules ask about ({@link Policy.resolveSession}). */
  readonly session?: SessionMarks;
}

/** One rule as considered for a request: matched, or the first reason it did not. */
export interface RuleTrace {
  readonly id: string;
  readonly effect: Effect;
  readonly principal: 'agent' | 'user';
  readonly matched: boolean;
  readonly why: string;
  readonly at: string;
  /** Its effective scope, the part its file's place implies included (`organisation` when none). */
  readonly scope: string;
}

/** A compiled policy set; the request path only calls these. */
export interface Policy {
  /** Content hash of the configuration it was compiled from. */
  readonly version: string;
  /**
   * The rules as they would decide with those in shadow mode enforced: evaluated beside this
   * policy and recorded, never enforced. Absent when no rule is in shadow mode.
   */
  readonly shadow?: Policy;
  /**
   * The identity rules see: tenant and team from the agent registry when the token leaves them
   * out. Throws VALET_ERR_IDENTITY_REFUSED when a claim disagrees with the registry, or the agent
   * is not registered and `gateway.policy.require_registered_agents` is set.
   */
  resolveIdentity(identity: AgentIdentity): AgentIdentity;
  matchTool(upstream: string, method: string, path: string): ToolMatch | undefined;
  /** Whether any condition, limit or tool of this upstream reads arguments (so bodies are parsed). */
  readsArgs(upstream: string): boolean;
  evaluate(input: EvaluationInput): Decision;
  explain(input: EvaluationInput): { decision: Decision; trace: RuleTrace[] };
  /**
   * Applies rate limits and budgets to an allowed request; counts it unless it is refused. A
   * Promise only with a shared counter store (Redis), which rejects with
   * VALET_ERR_COUNTERS_UNAVAILABLE when it cannot decide.
   */
  charge(input: EvaluationInput, spend?: Spend): Charged | Promise<Charged>;
  /**
   * Settles a reservation to what the call spent: the difference is given back (or, past the
   * reservation, added). Answers each budget's level after it, for alerts. A Promise only with a
   * shared counter store.
   */
  settle(reservation: Reservation, actual: Spend, now: number): BudgetLevel[] | Promise<BudgetLevel[]>;
  /** Each limit and budget of the request's upstream: whether it applies and what the request would take of it (nothing is charged). */
  explainLimits(input: EvaluationInput, spend?: Spend): { traces: LimitTrace[]; failed?: Decision };
  /** Whether any usage budget may count calls to this upstream (only then is an LLM call's reservation worked out). */
  meters(upstream: string): boolean;
  /** Records a forwarded call for `history.*` conditions (a Promise only with a shared store). */
  recordCall(input: EvaluationInput): void | Promise<void>;
  /**
   * With a shared store, records a call allowed on the history in `input` only if that history still
   * holds (no call recorded since on any instance); false means decide again on a fresh read. Only
   * for inputs with a `historyVersion`.
   */
  claimCall(input: EvaluationInput & { readonly historyVersion: string }): Promise<boolean>;
  /**
   * The `history` a shared store holds for this request and its version, to put in the input before
   * evaluation (CEL runs synchronously). undefined when no condition reads `history` or the store
   * is in the process (then it is read lazily, only if a condition that reads it runs).
   */
  resolveHistory(input: Omit<EvaluationInput, 'context'>): Promise<VersionedHistory> | undefined;
  /** Looks up the `ctx.*` values this request's conditions may read. */
  resolveContext(input: Omit<EvaluationInput, 'context'>): Record<string, unknown> | Promise<Record<string, unknown>>;
  /**
   * The marks of the agent's session that sequence rules (`requires`, `blocked_by`) which may apply
   * to this request ask about, to put in the input before evaluation; a Promise only with a shared
   * store. undefined when no such rule may apply, or the request has no session (they then deny).
   */
  resolveSession(input: Omit<EvaluationInput, 'context'>): SessionMarks | Promise<SessionMarks> | undefined;
  /**
   * Records in the agent's session that this call was forwarded (`called`) or answered 2xx (`ok`),
   * if some sequence rule asks about its tool. A Promise only with a shared store.
   */
  recordSequence(input: EvaluationInput, outcome: 'called' | 'ok'): void | Promise<void>;
  /** What response rules may do to this request's answer; undefined when none applies. */
  responsePlan(input: EvaluationInput): ResponsePlan | undefined;
}

/** The response rules that matched a request, and what they do to an answer of a given status. */
export interface ResponsePlan {
  readonly rules: readonly string[];
  at(status: number): ResponseAction | undefined;
}

/** What happens to one answer: withheld, held for a person, or redacted (also after a release). */
export interface ResponseAction {
  readonly kind: 'block' | 'escalate' | 'redact';
  readonly rules: readonly string[];
  readonly reason: string;
  readonly approval?: ApprovalRequest;
  readonly redactor?: Redactor;
  readonly keep?: KeepMatch;
}

/**
 * What charging a request gives: refused by a limit or budget, denied (it could not be applied),
 * the usage budgets' reservation (go on, settle it when the call is over), or undefined (go on).
 */
export type Charged = Limited | Decision | Reservation | undefined;

/** What a metered call reserved of each usage budget it counts against. */
export interface Reservation {
  readonly kind: 'reserved';
  readonly held: readonly HeldBudget[];
  /** Each budget's level right after the reservation. */
  readonly levels: readonly BudgetLevel[];
}

/** One budget's part of a {@link Reservation} (amounts in the counter's units). */
export interface HeldBudget {
  readonly id: string;
  readonly usage: 'tokens' | 'cost';
  /** The counter's key (the budget, its key kind and the tenant's, team's... ids, as JSON). */
  readonly key: string;
  readonly windowMs: number;
  readonly limit: number;
  readonly slot: number;
  readonly reserved: number;
  readonly used: number;
}

export type { BudgetLevel };

export const DEFAULT_DENY_RULE = 'default-deny';

/** Why a scoped file's allow or escalation never applies (explanations and `valet policy check`). */
export const INERT = 'inert: no organisation-level allow rule names this upstream, so a scoped file cannot open it';

const RANK: Record<Effect, number> = { allow: 0, escalate: 1, deny: 2 };

/** One bit per CEL variable, to record which ones a program reads. */
const ARGS = 1;
const ENV = 2;
const AGENT = 4;
const USER = 8;
const PRINCIPAL = 16;
const REQUEST = 32;
const TIME = 64;
const HISTORY = 128;
const CTX = 256;
const VARIABLE_BITS: Record<keyof typeof CEL_VARIABLES, number> = {
  args: ARGS,
  env: ENV,
  agent: AGENT,
  user: USER,
  principal: PRINCIPAL,
  request: REQUEST,
  time: TIME,
  history: HISTORY,
  ctx: CTX,
};

/** A CEL program and the variables it may read (any it names), so an activation needs only those. */
type Program = CelProgram & { readonly reads: number };

/**
 * Roles as bits: each role some rule names gets one, so "has any of these roles" is an AND. With
 * more than 32 such roles a mask is one 32-bit word per 32 roles instead of a single number.
 */
type RoleMask = number | Int32Array;

/** Agent or delegating user: built once per identity object, for every decision it makes. */
interface Principal {
  readonly kind: 'agent' | 'user';
  readonly id: string;
  /** For `explain` and limits, which check roles by name. */
  readonly roles: ReadonlySet<string>;
  /** For `evaluate`. */
  readonly mask: RoleMask;
  /** The CEL variable `principal`. */
  readonly variable: Readonly<Record<string, unknown>>;
}

interface Principals {
  readonly agent: Principal;
  readonly user: Principal | undefined;
  /** The CEL variables `agent` and `user`. */
  readonly agentVariable: Readonly<Record<string, unknown>>;
  readonly userVariable: Readonly<Record<string, unknown>>;
}

/** One evaluation in progress: a decision, an explanation or a charge. */
interface Evaluation {
  readonly input: EvaluationInput;
  readonly principals: Principals;
  /** Whose rules apply: the agent's, then (delegation) the user's. */
  principal: Principal;
  /** The request path as allow patterns see it (one trailing slash removed) and as restrictive ones do. */
  readonly path: string;
  readonly lowerPath: string;
  /** The CEL activation, made on the first condition and filled in as conditions need variables. */
  vars: Record<string, unknown> | undefined;
  /** The variables `vars` holds (VARIABLE_BITS). */
  filled: number;
}

interface CompiledMatch {
  readonly config: MatchConfig;
  readonly methods: ReadonlySet<string> | undefined;
  readonly tools: ReadonlySet<string> | undefined;
  readonly roles: readonly string[] | undefined;
  readonly environments: ReadonlySet<string> | undefined;
  /** Takes the path normalised, and lower-cased when `restrictive` (see compilePaths). */
  readonly matchPath: ((path: string) => boolean) | undefined;
  readonly when: Program | undefined;
  /** Restrictive effects match when either environment does; allows need both. */
  readonly restrictive: boolean;
  readonly at: string;
  /** Where it takes effect (see effectiveUpstreams); undefined: every upstream. */
  readonly upstreams: ReadonlySet<string> | undefined;
  /** describeScope, for explanations. */
  readonly scope: string;
}

interface CompiledRule extends CompiledMatch {
  readonly flat: FlatRule;
  /** Where the path index files the rule: the literal prefix of each pattern ([[]]: the root). */
  readonly pathKeys: readonly (readonly string[])[];
}

/** What a decision reports about a winning rule. */
interface Winner {
  readonly id: string;
  readonly effect: Effect;
  readonly reason: string;
  readonly approval: ApprovalConfig | undefined;
}

/**
 * A rule as `evaluate` reads it. The checks it needs are fields of this one object, so a rejected
 * candidate costs one small object read rather than a chase through its config, Sets and closures
 * (cold memory when consecutive requests go to different upstreams). Upstream, method and tool are
 * absent: the index has already proved them.
 */
interface FlatRule extends Winner {
  readonly tenant: string | undefined;
  readonly team: string | undefined;
  readonly agent: string | undefined;
  readonly roles: RoleMask | undefined;
  readonly matchPath: ((path: string) => boolean) | undefined;
  readonly restrictive: boolean;
  readonly environments: ReadonlySet<string> | undefined;
  readonly when: Program | undefined;
  readonly rank: number;
  /**
   * Its place in the order every upstream's rules are considered in: the upstream's own in file
   * order, then those for every upstream. The first failing condition and the order of the ids
   * in a decision follow it.
   */
  readonly order: number;
  /** Its decision when it is the only winner, made once. */
  readonly alone: Decision;
  /** Calls the session must (`requires`) or must not (`blocked_by`) hold, else the rule denies. */
  readonly sequence: Sequence | undefined;
}

/** A rule's call sequence. */
interface Sequence {
  readonly requires: readonly SequenceStep[];
  readonly blockedBy: readonly SequenceStep[];
}

/**
 * Rules of one upstream and method that name no tool, filed by the leading literal segments of
 * their path patterns (lower-cased). A node's `rules` are its own and its ancestors', in rule
 * order, so a request reads the one list of the deepest node its path reaches.
 */
interface PathNode {
  readonly rules: Candidates;
  readonly next: ReadonlyMap<string, PathNode> | undefined;
}

/** `evaluate`'s index below an upstream and method. */
interface MethodRules {
  /** Rules that name tools, per tool; requests for other tools or none skip them all. */
  readonly byTool: ReadonlyMap<string, Candidates>;
  readonly byPath: PathNode;
}

/**
 * A list of candidate rules (or limits, or response rules), in their order; when some of them are
 * scoped (a tenant's, a team's or an agent's), split by the claim they are scoped on, so that a
 * request reads only those its identity can meet rather than every tenant's (see {@link splitByScope}).
 */
type Candidates<T = FlatRule> = readonly T[] | ScopeSplit<T>;

interface ScopeSplit<T> {
  readonly claim: ScopeClaim;
  /** Per value of the claim: the items not scoped on it and those scoped to that value. */
  readonly byValue: ReadonlyMap<string, Candidates<T>>;
  /** An identity whose claim is none of those values: the items not scoped on it. */
  readonly other: Candidates<T>;
  /** An identity without the claim: those, and the restrictive items scoped on it (see scopeAdmits). */
  readonly noClaim: Candidates<T>;
}

type ScopeClaim = 'tenant' | 'team' | 'agent';

interface UpstreamRules {
  readonly byMethod: ReadonlyMap<string, MethodRules>;
  /** For methods no rule names: the rules without a method constraint. */
  readonly otherMethods: MethodRules;
}

interface CompiledLimit extends CompiledMatch {
  readonly limit: number;
  readonly windowMs: number;
  readonly key: CounterKey;
  readonly keyProgram: Program | undefined;
  readonly sum: Program | undefined;
  readonly kind: 'rate_limit' | 'budget';
  /** A usage budget: what LLM calls use, reserved then settled (limit in tokens, or cost in millionths). */
  readonly usage: 'tokens' | 'cost' | undefined;
  /** Counted on this instance alone while shared counters are unreachable. */
  readonly failOpen: boolean;
}

/** One charge of a request: a limit, its counter's key and the amount. */
interface Charge {
  readonly limit: CompiledLimit;
  readonly key: string;
  readonly cost: number;
}

/** A limit or budget as considered for a request (`policy explain`). */
export interface LimitTrace {
  readonly id: string;
  readonly kind: 'rate_limit' | 'budget';
  readonly usage?: 'tokens' | 'cost';
  readonly applies: boolean;
  readonly why: string;
  readonly at: string;
  /** What the request would take of it, its limit and window (when it applies). */
  readonly amount?: string;
  readonly limit?: string;
  readonly window?: string;
}

/** Stands for every upstream in {@link Policy.meters}'s set (no upstream is named with a space). */
const ANY_UPSTREAM = ' any';

/** Cost budgets count millionths of the currency: whole numbers add up exactly in every store. */
const MICROS = 1_000_000;

export interface PolicyStores {
  readonly counters: CounterStore;
  readonly history: HistoryStore;
  /** Users' connected accounts, for `user.connected("upstream")` (loaded before each decision). */
  readonly connections?: { connected(tenant: string | undefined, user: string, upstream: string): boolean };
  /** Agents' sessions, for call sequences; absent: kept in memory (policy tests, the CLI). */
  readonly sessions?: SessionStore;
}

const NO_RULES: readonly FlatRule[] = [];
const DEFAULT_DENY_RULES: readonly string[] = Object.freeze([DEFAULT_DENY_RULE]);

/**
 * Compiles rules, tools, limits and budgets once; CEL is parsed and type-checked here and any error
 * is a {@link ConfigError} naming file, line and field. Rules are indexed by upstream, method, tool
 * and path for `evaluate`.
 */
export function compilePolicy(
  config: Pick<Config, 'version' | 'gateway' | 'tools' | 'rules' | 'responseRules' | 'rateLimits' | 'budgets' | 'contexts' | 'agents'>,
  stores: PolicyStores,
): Policy {
  // Rules in shadow mode: the rules without them are enforced; with them, a shadow decision is
  // recorded beside each enforced one (arguments are read when either set reads them).
  if (config.rules.some((r) => r.mode === 'shadow')) {
    const enforced = compilePolicy({ ...config, rules: config.rules.filter((r) => r.mode !== 'shadow') }, stores);
    return withShadow(enforced, compilePolicy({ ...config, rules: config.rules.map(({ mode: _mode, ...r }) => r) }, stores));
  }
  const problems: ConfigProblem[] = [];
  const toolMatcher = compileTools(config.tools);
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));
  const opened = openedUpstreams(config);

  // A condition written on many rules (one per team or upstream, say) is compiled once: at 10,000
  // rules that holds 40 % less heap and keeps the programs that decisions run few enough to stay
  // in the CPU's caches (docs/policy-performance.md). A program holds no state of its own.
  const programs = new Map<string, Program | { error: string }>();
  const cel = (m: MatchConfig, field: string, source: string, expect: 'bool' | 'number' | 'any', withMatch = false): Program | undefined => {
    const key = `${expect}${withMatch ? '+' : ' '}${source}`;
    let program = programs.get(key);
    if (program === undefined) {
      const compiled = compileCel(source, expect, withMatch);
      program = 'error' in compiled ? compiled : Object.assign(compiled, { reads: variablesRead(source) });
      programs.set(key, program);
    }
    if ('error' in program) {
      problems.push({ file: m.at.file, line: m.lines[field] ?? m.at.line, column: 0, path: `${m.at.path}.${field}`, message: program.error });
      return undefined;
    }
    return program;
  };
  // The same path patterns on many rules (each team's or upstream's copy of a rule) share one
  // matcher, as conditions share one program: a matcher holds no state, and at 10,000 rules the
  // copies of a few regular expressions took 2.6 MB of heap (docs/policy-performance.md).
  const matchers = new Map<string, (path: string) => boolean>();
  const sharedMatcher = (paths: readonly string[], ignoreCase: boolean): ((path: string) => boolean) => {
    const key = JSON.stringify([ignoreCase, paths]);
    let matcher = matchers.get(key);
    if (matcher === undefined) matchers.set(key, (matcher = pathMatcher(paths, ignoreCase)));
    return matcher;
  };
  const base = (m: MatchConfig, restrictive: boolean, upstreams: ReadonlySet<string> | undefined): CompiledMatch => ({
    config: m,
    upstreams,
    scope: describeScope(m),
    methods: m.methods ? new Set(m.methods) : undefined,
    tools: m.tools ? new Set(m.tools) : undefined,
    roles: m.roles,
    environments: m.environments ? new Set(m.environments) : undefined,
    matchPath: m.paths ? sharedMatcher(m.paths, restrictive) : undefined,
    when: m.when === undefined ? undefined : cel(m, 'when', m.when, 'bool'),
    restrictive,
    at: `${m.at.file}:${m.at.line}`,
  });

  // Only roles that some rule names get a bit: no other role can make a rule match.
  const roleBits = new Map<string, number>();
  for (const r of config.rules) for (const role of r.roles ?? []) if (!roleBits.has(role)) roleBits.set(role, roleBits.size);
  const roleMask = (roles: Iterable<string>): RoleMask => {
    const words = new Int32Array(Math.ceil(roleBits.size / 32));
    for (const role of roles) {
      const bit = roleBits.get(role);
      if (bit !== undefined) words[bit >>> 5] = (words[bit >>> 5] as number) | (1 << (bit & 31));
    }
    return words.length > 1 ? words : (words[0] ?? 0);
  };

  const compiled: CompiledRule[] = config.rules.map((r, i) => {
    const upstreams = effectiveUpstreams(r, opened, toolUpstream);
    const m = base(r, r.effect !== 'allow', upstreams);
    const reason = r.reason ?? r.description ?? `rule ${r.id}`;
    // One literal with every field: all of them sit in the object itself (fields added after a
    // spread go to a second, separate store, another cold read per candidate).
    const flat: FlatRule = {
      tenant: r.scope?.tenant,
      team: r.scope?.team,
      agent: r.scope?.agent,
      roles: r.roles && roleMask(r.roles),
      matchPath: m.matchPath,
      restrictive: m.restrictive,
      environments: m.environments,
      when: m.when,
      rank: RANK[r.effect],
      order: (upstreams === undefined ? config.rules.length : 0) + i,
      id: r.id,
      effect: r.effect,
      reason,
      approval: r.approval,
      alone: frozen(decisionOf([{ id: r.id, effect: r.effect, reason, approval: r.approval }])),
      sequence: r.requires === undefined && r.blockedBy === undefined ? undefined : { requires: r.requires ?? [], blockedBy: r.blockedBy ?? [] },
    };
    return { ...m, flat, pathKeys: r.paths ? r.paths.map((p) => literalPrefix(p, m.restrictive)) : [[]] };
  });
  // A scoped file's grant on an upstream the organisation never opened can never take effect.
  const rules = compiled.filter((r) => r.upstreams === undefined || r.upstreams.size > 0);
  const inert = compiled.filter((r) => r.upstreams !== undefined && r.upstreams.size === 0);
  const limits: CompiledLimit[] = [
    ...config.rateLimits.map((l: RateLimitConfig) => limitOf(l, 'rate_limit', undefined)),
    ...config.budgets.map((b: BudgetConfig) => limitOf(b, 'budget', b.sum === undefined ? undefined : cel(b, 'sum', b.sum, 'number'))),
  ];
  function limitOf(l: RateLimitConfig | BudgetConfig, kind: 'rate_limit' | 'budget', sum: Program | undefined): CompiledLimit {
    const upstreams = namedUpstreams(l, toolUpstream);
    const usage = 'usage' in l ? l.usage : undefined;
    return {
      ...base(l, true, upstreams.size === 0 ? undefined : upstreams),
      limit: usage === 'cost' ? Math.round(l.limit * MICROS) : l.limit,
      usage,
      windowMs: l.windowMs,
      key: l.key,
      keyProgram: typeof l.key === 'object' ? cel(l, 'key', l.key.cel, 'any') : undefined,
      sum,
      kind,
      failOpen: l.failOpen ?? config.gateway.counters?.failOpen ?? false,
    };
  }
  const responses: CompiledResponseRule[] = (config.responseRules ?? []).map((r) => {
    const named = namedUpstreams(r, toolUpstream);
    let redactor: Redactor | undefined;
    try {
      if (r.redact !== undefined) redactor = compileRedactor({ ...(r.redact.paths !== undefined && { paths: r.redact.paths }), ...(r.redact.patterns !== undefined && { patterns: r.redact.patterns as NonNullable<RedactionSpec['patterns']> }) });
    } catch (err) {
      problems.push({ file: r.at.file, line: r.at.line, column: 0, path: `${r.at.path}.redact`, message: (err as Error).message });
    }
    const statuses = r.status;
    return {
      ...base(r, true, named.size === 0 ? undefined : named),
      rule: r,
      redactor,
      keep: r.redact?.keep === undefined ? undefined : cel(r, 'keep', r.redact.keep, 'bool', true),
      owns: new Set((r.redact?.patterns ?? []).map((p) => (typeof p === 'string' ? p : 'regex'))),
      statusMatches:
        statuses === undefined ? () => true : (status: number) => statuses.some((x) => (x.endsWith('xx') ? Math.floor(status / 100) === Number(x[0]) : Number(x) === status)),
    };
  });
  let contexts: ContextSources | undefined;
  try {
    contexts = createContextSources(config.contexts);
  } catch (err) {
    const c = config.contexts[0];
    problems.push({ file: c?.at.file ?? '', line: c?.at.line ?? 0, column: 0, path: 'contexts', message: (err as Error).message });
  }
  if (problems.length > 0 || contexts === undefined) throw new ConfigError(problems);
  const contextSources = contexts;

  const byUpstream = <T extends CompiledMatch>(items: readonly T[]): { lists: ReadonlyMap<string, readonly T[]>; any: readonly T[] } => {
    const any: T[] = [];
    const index = new Map<string, T[]>();
    for (const item of items) {
      const upstreams = item.upstreams;
      if (upstreams === undefined) {
        any.push(item);
        continue;
      }
      for (const u of upstreams) {
        const list = index.get(u);
        if (list) list.push(item);
        else index.set(u, [item]);
      }
    }
    for (const [u, list] of index) index.set(u, [...list, ...any]);
    return { lists: index, any };
  };
  const rulesByUpstream = byUpstream(rules);
  const responsesByUpstream = byUpstream(responses);
  const limitsByUpstream = byUpstream(limits);
  // Per upstream, split by scope too: a request charges and answers through only the limits and
  // response rules its identity can meet (explainLimits still lists them all).
  const meetable = <T extends CompiledMatch>(byUp: { lists: ReadonlyMap<string, readonly T[]>; any: readonly T[] }): ((upstream: string, id: AgentIdentity) => readonly T[]) => {
    const lists = new Map([...byUp.lists].map(([u, list]) => [u, splitByScope(list, configScope)]));
    const any = splitByScope(byUp.any, configScope);
    return (upstream, id) => candidatesFor(lists.get(upstream) ?? any, id);
  };
  const limitsMet = meetable(limitsByUpstream);
  const responsesMet = meetable(responsesByUpstream);
  const rulesFor = (upstream: string): readonly CompiledRule[] => rulesByUpstream.lists.get(upstream) ?? rulesByUpstream.any;
  const limitsFor = (upstream: string): readonly CompiledLimit[] => limitsByUpstream.lists.get(upstream) ?? limitsByUpstream.any;
  // Once: the upstreams some usage budget may count (ANY_UPSTREAM: a budget naming none counts them all).
  const metered = new Set(limits.filter((l) => l.usage !== undefined).flatMap((l) => (l.upstreams === undefined ? [ANY_UPSTREAM] : [...l.upstreams])));
  // Below the upstream, by method, then tool or path; every combination is built here, so a
  // request only does Map lookups.
  const methodRules = (list: readonly CompiledRule[], method: string | undefined): MethodRules => {
    const fit = list.filter((r) => r.methods === undefined || (method !== undefined && r.methods.has(method)));
    const byTool = new Map<string, FlatRule[]>();
    for (const r of fit) {
      for (const t of r.tools ?? []) {
        const forTool = byTool.get(t);
        if (forTool) forTool.push(r.flat);
        else byTool.set(t, [r.flat]);
      }
    }
    return { byTool: new Map([...byTool].map(([t, rules]) => [t, splitByScope(rules, flatScope)])), byPath: pathIndex(fit.filter((r) => r.tools === undefined)) };
  };
  const upstreamRules = (list: readonly CompiledRule[]): UpstreamRules => ({
    byMethod: new Map([...new Set(list.flatMap((r) => r.config.methods ?? []))].map((m) => [m, methodRules(list, m)])),
    otherMethods: methodRules(list, undefined),
  });
  const index = new Map([...rulesByUpstream.lists].map(([u, list]) => [u, upstreamRules(list)]));
  const anyUpstream = upstreamRules(rulesByUpstream.any);

  const argsReaders = new Set<string>();
  let anyUpstreamReadsArgs = false;
  for (const t of config.tools) if (Object.keys(t.args).length > 0) argsReaders.add(t.upstream);
  for (const item of [...rules, ...limits]) {
    const reads = [item.when, ...('sum' in item ? [item.sum, item.keyProgram] : [])].some((p) => p?.readsArgs);
    if (!reads) continue;
    if (item.config.upstream !== undefined) argsReaders.add(item.config.upstream);
    else if (item.config.tools !== undefined) for (const t of item.config.tools) argsReaders.add(upstreamOfTool(t, toolUpstream));
    else anyUpstreamReadsArgs = true;
  }
  // A sequence step with `same` compares arguments of this call and of the earlier one: both are read.
  for (const r of rules) {
    for (const step of [...(r.flat.sequence?.requires ?? []), ...(r.flat.sequence?.blockedBy ?? [])]) {
      if (step.same === undefined) continue;
      argsReaders.add(upstreamOfTool(step.tool, toolUpstream));
      if (r.upstreams === undefined) anyUpstreamReadsArgs = true;
      else for (const u of r.upstreams) argsReaders.add(u);
    }
  }
  const sources = [...rules, ...limits].map((i) => [i.config.when, 'sum' in i.config ? i.config.sum : undefined].join(' '));
  const readsTime = sources.some((s) => /\btime\b/.test(s));
  const readsHistory = sources.some((s) => /\bhistory\b/.test(s));
  // What may read history, for asking a shared store only when a request could meet one of them.
  const historyReaders = [...rules, ...limits].filter((_, i) => /\bhistory\b/.test(sources[i] as string));
  // Call sequences: the rules that have one, and per tool they name, the argument lists compared (undefined: none).
  const sessions = stores.sessions ?? memorySessionStore({ ttlMs: config.gateway.policy?.sessions?.ttlMs });
  const sequenceRules = rules.filter((r) => r.flat.sequence !== undefined);
  const sequenced = new Map<string, (readonly string[] | undefined)[]>();
  for (const r of sequenceRules) {
    for (const step of [...(r.flat.sequence as Sequence).requires, ...(r.flat.sequence as Sequence).blockedBy]) {
      const lists = sequenced.get(step.tool) ?? [];
      if (!lists.some((l) => JSON.stringify(l) === JSON.stringify(step.same))) lists.push(step.same);
      sequenced.set(step.tool, lists);
    }
  }
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

  const principal = (kind: 'agent' | 'user', id: string, roles: readonly string[]): Principal => {
    const set = new Set(roles);
    return { kind, id, roles: set, mask: roleMask(set), variable: { kind, id, roles: [...set] } };
  };
  // Identities come from the verified-token cache, so the same object makes many decisions.
  const identities = new WeakMap<AgentIdentity, Principals>();
  const principalsOf = (id: AgentIdentity): Principals => {
    let p = identities.get(id);
    if (p === undefined) {
      const agentVariable: Record<string, unknown> = { id: id.agent };
      if (id.tenant !== undefined) agentVariable['tenant'] = id.tenant;
      if (id.team !== undefined) agentVariable['team'] = id.team;
      agentVariable['roles'] = [...id.roles];
      if (id.environment !== undefined) agentVariable['environment'] = id.environment;
      p = {
        agent: principal('agent', id.agent, id.roles),
        user: id.user === undefined ? undefined : principal('user', id.user, id.userRoles),
        agentVariable,
        userVariable: id.user === undefined ? {} : userVariable(id.user, id.userRoles, id.tenant, stores.connections),
      };
      identities.set(id, p);
    }
    return p;
  };

  const evaluation = (input: EvaluationInput): Evaluation => {
    const principals = principalsOf(input.identity);
    const path = normalisePath(input.facts.path);
    return { input, principals, principal: principals.agent, path, lowerPath: path.toLowerCase(), vars: undefined, filled: 0 };
  };
  const asUser = (s: Evaluation, user: Principal): Evaluation => {
    s.principal = user;
    s.filled &= ~PRINCIPAL;
    return s;
  };

  /** The history of an input nobody resolved: only a store in the process can answer at once. */
  const localHistory = (input: EvaluationInput): HistorySummary => {
    const h = stores.history.summary(historyKey(input.identity, input.facts), input.now);
    // A condition that reads history unresolved fails (and denies) rather than seeing nothing.
    if (h instanceof Promise) throw new Error('history was not resolved before evaluation');
    return h;
  };

  // Split by scope like the index: a request never reads or records history, nor reads session
  // marks, for the rules of other tenants, teams or agents (their history keys are not its own).
  const historyReadersOf = splitByScope(historyReaders, configScope);
  const sequenceRulesOf = splitByScope(sequenceRules, configScope);

  /**
   * Whether a condition that reads `history` may run for a request like this one (same upstream,
   * tool, method and path: the same history key). Roles and environment are left out: asking a
   * shared store once too often is safe, skipping a reader is not.
   */
  const historyRead = (input: Pick<EvaluationInput, 'identity' | 'facts'>): boolean => {
    const { facts } = input;
    const path = normalisePath(facts.path);
    return candidatesFor(historyReadersOf, input.identity).some(
      (m) =>
        (m.config.upstream === undefined || m.config.upstream === facts.upstream) &&
        (m.tools === undefined || (facts.tool !== undefined && m.tools.has(facts.tool))) &&
        (m.methods === undefined || m.methods.has(facts.method)) &&
        (m.matchPath === undefined || m.matchPath(m.restrictive ? path.toLowerCase() : path)),
    );
  };

  /** The sequence rules that may apply to a request like this one (as {@link historyRead}, erring towards more). */
  const sequencesFor = (input: Pick<EvaluationInput, 'identity' | 'facts'>): CompiledRule[] => {
    if (sequenceRules.length === 0) return [];
    const { facts } = input;
    const path = normalisePath(facts.path);
    return candidatesFor(sequenceRulesOf, input.identity).filter(
      (m) =>
        (m.upstreams === undefined || m.upstreams.has(facts.upstream)) &&
        (m.tools === undefined || (facts.tool !== undefined && m.tools.has(facts.tool))) &&
        (m.methods === undefined || m.methods.has(facts.method)) &&
        (m.matchPath === undefined || m.matchPath(m.restrictive ? path.toLowerCase() : path)),
    );
  };
  /** The session mark a step asks about for this call: a 2xx answer for `requires`, any forwarded call for `blocked_by`. */
  const stepMark = (step: SequenceStep, required: boolean, facts: RequestFacts): string => {
    const digest = step.same === undefined ? undefined : argsDigest(step.same, facts.args);
    return required ? okMark(step.tool, digest) : calledMark(step.tool, digest);
  };
  const sessionOf = (id: AgentIdentity): string | undefined => (id.session === undefined ? undefined : sessionKey(id.tenant, id.agent, id.session));
  /** Why a rule's call sequence does not hold for this request, or undefined when it does. */
  const sequenceBroken = (q: Sequence, s: Evaluation): string | undefined => {
    const { input } = s;
    const key = sessionOf(input.identity);
    if (key === undefined) return 'the call has no session (the agent token has no sid or jti claim)';
    if (q.requires.some((st) => st.same !== undefined) || q.blockedBy.some((st) => st.same !== undefined)) {
      if (input.facts.argsError !== undefined) return input.facts.argsError;
    }
    const names = [...q.requires.map((st) => stepMark(st, true, input.facts)), ...q.blockedBy.map((st) => stepMark(st, false, input.facts))];
    let marks = input.session;
    // Marks nobody read for this request (a candidate set's rules, say): a store in the process answers now.
    if (marks === undefined || names.some((n) => marks?.set[n] === undefined)) {
      if (sessions.shared === true) return 'the session was not read before evaluation';
      marks = sessions.read(key, names, input.now) as SessionMarks;
    }
    const recent = (step: SequenceStep, required: boolean): boolean => {
      const at = (marks as SessionMarks).set[stepMark(step, required, input.facts)];
      return typeof at === 'number' && (step.withinMs === undefined || at >= (marks as SessionMarks).now - step.withinMs);
    };
    const described = (step: SequenceStep): string =>
      `${step.tool}${step.same === undefined ? '' : ` with the same ${step.same.join(', ')}`}${step.withinMs === undefined ? '' : ` within ${formatMs(step.withinMs)}`}`;
    for (const step of q.requires) if (!recent(step, true)) return `requires a successful call of ${described(step)} earlier in this session`;
    for (const step of q.blockedBy) if (recent(step, false)) return `blocked by a call of ${described(step)} earlier in this session`;
    return undefined;
  };

  /** The activation for a program that reads `reads`: one object per evaluation, filled in as needed. */
  const variables = (s: Evaluation, reads: number): Record<string, unknown> => {
    const vars = (s.vars ??= {});
    const missing = reads & ~s.filled;
    if (missing === 0) return vars;
    s.filled |= missing;
    const { input } = s;
    const { facts } = input;
    if (missing & ARGS) vars['args'] = facts.args;
    if (missing & ENV) vars['env'] = input.environment;
    if (missing & AGENT) vars['agent'] = s.principals.agentVariable;
    if (missing & USER) vars['user'] = s.principals.userVariable;
    if (missing & PRINCIPAL) vars['principal'] = s.principal.variable;
    if (missing & REQUEST) {
      const request: Record<string, unknown> = { upstream: facts.upstream, method: facts.method, path: facts.path };
      if (facts.tool !== undefined) request['tool'] = facts.tool;
      request['query'] = facts.query;
      vars['request'] = request;
    }
    if (missing & TIME) vars['time'] = readsTime ? timeOf(timeParts, input.now) : {};
    if (missing & HISTORY) vars['history'] = readsHistory ? (input.history ?? localHistory(input)) : {};
    if (missing & CTX) vars['ctx'] = input.context;
    return vars;
  };

  /** true, false, or why the condition could not be evaluated. */
  const condition = (when: Program, s: Evaluation): boolean | string => {
    const { argsError } = s.input.facts;
    if (when.readsArgs && argsError !== undefined) return argsError;
    try {
      const v = when(variables(s, when.reads));
      return typeof v === 'boolean' ? v : 'the condition did not give a bool';
    } catch (err) {
      return celErrorMessage(err);
    }
  };

  /** `evaluate` for one principal: the candidates are in two lists (tool rules, path rules). */
  const decideFor = (s: Evaluation, tools: readonly FlatRule[], paths: readonly FlatRule[]): Decision => {
    // The first matching rule of the best rank so far, and the later ones of that rank.
    let best: FlatRule | undefined;
    let ties: FlatRule[] | undefined;
    // Both lists are in rule order, and so is the walk through them.
    for (let i = 0, j = 0; i < tools.length || j < paths.length; ) {
      const fromTools = i < tools.length && (j === paths.length || (tools[i] as FlatRule).order < (paths[j] as FlatRule).order);
      const r = (fromTools ? tools[i++] : paths[j++]) as FlatRule;
      if (!admits(r, s)) continue;
      if (r.when !== undefined) {
        const c = condition(r.when, s);
        if (c === false) continue;
        // Fail closed, as explainFor does; the first failure decides whatever else matches.
        if (c !== true) return failed(r, c);
      }
      if (r.sequence !== undefined) {
        const broken = sequenceBroken(r.sequence, s);
        if (broken !== undefined) return sequenceDenial(r, broken);
      }
      if (best === undefined || r.rank > best.rank) {
        best = r;
        ties = undefined;
      } else if (r.rank === best.rank) (ties ??= []).push(r);
    }
    return conclude(best, ties, s.input.facts);
  };

  /** `explain` for one principal: every rule of the upstream, and why each did or did not match. */
  const explainFor = (s: Evaluation, trace: RuleTrace[]): Decision => {
    const kind = s.principal.kind;
    let failure: Decision | undefined;
    let best: FlatRule | undefined;
    let ties: FlatRule[] | undefined;
    for (const r of rulesFor(s.input.facts.upstream)) {
      const { flat } = r;
      const note = (matched: boolean, why: string): void =>
        void trace.push({ id: flat.id, effect: flat.effect, principal: kind, matched, why, at: r.at, scope: r.scope });
      const fits = staticMatch(r, s);
      if (fits !== true) {
        note(false, fits);
        continue;
      }
      const c = r.when === undefined ? true : condition(r.when, s);
      if (typeof c === 'string') {
        failure ??= failed(flat, c);
        note(false, `condition could not be evaluated: ${c}`);
        continue;
      }
      if (c && flat.sequence !== undefined) {
        const broken = sequenceBroken(flat.sequence, s);
        if (broken !== undefined) {
          failure ??= sequenceDenial(flat, broken);
          note(false, `sequence: ${broken}`);
          continue;
        }
      }
      note(c, c ? 'matched' : 'condition is false');
      if (!c) continue;
      if (best === undefined || flat.rank > best.rank) {
        best = flat;
        ties = undefined;
      } else if (flat.rank === best.rank) (ties ??= []).push(flat);
    }
    const { upstream } = s.input.facts;
    for (const r of inert) {
      const named = namedUpstreams(r.config, toolUpstream);
      if (named.size > 0 && !named.has(upstream)) continue;
      trace.push({ id: r.flat.id, effect: r.flat.effect, principal: kind, matched: false, why: INERT, at: r.at, scope: r.scope });
    }
    // A condition that cannot be evaluated denies: failing closed beats guessing.
    return failure ?? conclude(best, ties, s.input.facts);
  };

  /**
   * The charges a request makes of the limits and budgets that apply to it (`trace`, when given,
   * says for each limit of its upstream whether it applies and what it would take), or the denial
   * when one cannot be applied.
   */
  const chargesOf = (input: EvaluationInput, spend: Spend | undefined, trace?: LimitTrace[]): Charge[] | Decision => {
    const s = evaluation(input);
    const entries: Charge[] = [];
    const candidates = trace === undefined ? limitsMet(input.facts.upstream, input.identity) : limitsFor(input.facts.upstream);
    for (const l of candidates) {
      const note = (applies: boolean, why: string, amount?: number): void =>
        void trace?.push({ id: l.config.id, kind: l.kind, ...(l.usage !== undefined && { usage: l.usage }), applies, why, at: `${l.config.at.file}:${l.config.at.line}`, ...(amount !== undefined && { amount: amountText(l, amount), limit: amountText(l, l.limit), window: formatMs(l.windowMs) }) });
      // A usage budget counts metered LLM calls only; any other request spends nothing of it.
      if (l.usage !== undefined && spend === undefined) {
        note(false, 'not a metered LLM call');
        continue;
      }
      const fits = staticMatch(l, s);
      if (fits !== true) {
        note(false, fits);
        continue;
      }
      const c = l.when === undefined ? true : condition(l.when, s);
      const fail = (error: string): Decision => {
        note(true, `could not be applied: ${error}`);
        return { effect: 'deny', rules: [l.config.id], reason: `${l.kind === 'budget' ? 'budget' : 'rate limit'} ${l.config.id} could not be applied: ${error}` };
      };
      if (typeof c === 'string') return fail(c);
      if (!c) {
        note(false, 'condition is false');
        continue;
      }
      const key = counterKey(l, s);
      if (!Array.isArray(key)) return fail(key.error);
      let cost = 1;
      if (l.usage !== undefined && spend !== undefined) cost = l.usage === 'tokens' ? Math.ceil(spend.tokens) : Math.ceil(spend.cost * MICROS);
      else if (l.sum) {
        if (l.sum.readsArgs && input.facts.argsError !== undefined) return fail(input.facts.argsError);
        try {
          const v = l.sum(variables(s, l.sum.reads));
          cost = typeof v === 'bigint' ? Number(v) : (v as number);
        } catch (err) {
          return fail(celErrorMessage(err));
        }
        if (typeof cost !== 'number' || !Number.isFinite(cost) || cost < 0) return fail('the amount is not a non-negative number');
      }
      note(true, `counted per ${typeof l.key === 'string' ? l.key : 'cel key'}`, cost);
      entries.push({ limit: l, key: JSON.stringify([l.kind, l.config.id, ...key]), cost });
    }
    return entries;
  };

  /**
   * The counter's key within its limit, as a JSON array: strings are escaped and delimited, so no
   * id (one holding ':' or NUL, say) can pass for another key. Every key but `global` names the
   * tenant first (null without one): agent ids, users, tools and CEL values are the tenant's own, so
   * tenant B's "bot" never spends tenant A's "bot"'s quota. `global` is the one counter all tenants
   * share, for limits that protect an upstream's own quota.
   */
  const counterKey = (l: CompiledLimit, s: Evaluation): unknown[] | { error: string } => {
    const { identity: id, facts } = s.input;
    const tenant = id.tenant ?? null;
    switch (l.key) {
      case 'agent':
        return ['agent', tenant, id.agent];
      case 'tenant':
        return ['tenant', tenant];
      case 'team':
        // An agent in no team spends a budget of its own rather than one shared by every team-less agent.
        return id.team === undefined ? ['team', tenant, null, id.agent] : ['team', tenant, id.team];
      case 'session':
        // The token's session (`sid`), else the token itself (`jti`): one an agent cannot share with another.
        return id.session === undefined ? { error: 'the agent token names no session (sid or jti claim)' } : ['session', tenant, id.agent, id.session];
      case 'upstream':
        return ['upstream', tenant, facts.upstream];
      case 'user':
        return id.user === undefined ? ['user', tenant, null, id.agent] : ['user', tenant, id.user];
      case 'tool':
        return facts.tool === undefined ? ['route', tenant, facts.upstream, facts.method, facts.path] : ['tool', tenant, facts.tool];
      case 'global':
        return ['global'];
      default:
        try {
          const program = l.keyProgram as Program;
          return ['cel', tenant, String(program(variables(s, program.reads)))];
        } catch (err) {
          return { error: celErrorMessage(err) };
        }
    }
  };

  return {
    version: config.version,
    resolveIdentity: identityResolver(config.agents ?? [], config.gateway.policy?.requireRegisteredAgents ?? false),
    matchTool: toolMatcher,
    readsArgs: (upstream) => anyUpstreamReadsArgs || argsReaders.has(upstream),
    evaluate(input) {
      const s = evaluation(input);
      const { upstream, method, tool } = input.facts;
      const forUpstream = index.get(upstream) ?? anyUpstream;
      const at = forUpstream.byMethod.get(method) ?? forUpstream.otherMethods;
      const id = input.identity;
      const tools = tool === undefined ? NO_RULES : candidatesFor(at.byTool.get(tool) ?? NO_RULES, id);
      const paths = candidatesFor(rulesForPath(at.byPath, s.lowerPath), id);
      const agent = decideFor(s, tools, paths);
      const { user } = s.principals;
      // Nothing outranks the agent's own deny, so the user's rules need not run.
      if (user === undefined || agent.effect === 'deny') return agent;
      return delegated(agent, decideFor(asUser(s, user), tools, paths), user);
    },
    explain(input) {
      const trace: RuleTrace[] = [];
      const s = evaluation(input);
      const agent = explainFor(s, trace);
      const { user } = s.principals;
      if (user === undefined) return { decision: agent, trace };
      return { decision: delegated(agent, explainFor(asUser(s, user), trace), user), trace };
    },
    charge(input, spend) {
      const entries = chargesOf(input, spend);
      if (!Array.isArray(entries)) return entries;
      if (entries.length === 0) return undefined;
      // A call whose spending cannot be bounded fits no budget (and no store takes an infinite amount).
      const unbounded = entries.findIndex((e) => !Number.isFinite(e.cost));
      if (unbounded !== -1) return chargedBy(entries, { ok: false, index: unbounded, retryAfterMs: null }, spend);
      const r = stores.counters.tryConsume(
        entries.map((e) => ({ key: e.key, windowMs: e.limit.windowMs, limit: e.limit.limit, cost: e.cost, failOpen: e.limit.failOpen })),
        input.now,
      );
      return r instanceof Promise ? r.then((settled) => chargedBy(entries, settled, spend)) : chargedBy(entries, r, spend);
    },
    meters: (upstream) => metered.has(upstream) || metered.has(ANY_UPSTREAM),
    explainLimits(input, spend) {
      const traces: LimitTrace[] = [];
      const entries = chargesOf(input, spend, traces);
      return { traces, ...(!Array.isArray(entries) && { failed: entries }) };
    },
    settle(reservation, actual, now) {
      const held = reservation.held;
      const adjustments = held.map((h) => ({ key: h.key, windowMs: h.windowMs, slot: h.slot, delta: amountOf(h.usage, actual) - h.reserved }));
      const levels = (used: readonly number[]): BudgetLevel[] => held.map((h, i) => levelOf(h, used[i] ?? 0));
      const r = stores.counters.settle(adjustments, now);
      return r instanceof Promise ? r.then(levels) : levels(r);
    },
    recordCall(input) {
      // A shared store costs a round trip per call: it records only what some condition may read.
      if (stores.history.shared === true && (!readsHistory || !historyRead(input))) return undefined;
      return stores.history.record(historyKey(input.identity, input.facts), input.now);
    },
    claimCall(input) {
      const claim = stores.history.recordIfUnchanged;
      if (claim === undefined) throw new Error('claimCall needs a shared history store');
      return claim.call(stores.history, historyKey(input.identity, input.facts), input.now, input.historyVersion);
    },
    resolveHistory(input) {
      const read = stores.history.read;
      if (!readsHistory || read === undefined || !historyRead(input)) return undefined;
      return read.call(stores.history, historyKey(input.identity, input.facts), input.now);
    },
    resolveContext: (input) => contextSources.resolve(input),
    responsePlan(input) {
      const list = responsesMet(input.facts.upstream, input.identity);
      if (list.length === 0) return undefined;
      const s = evaluation(input);
      const hits: { r: CompiledResponseRule; failed?: string }[] = [];
      for (const r of list) {
        if (staticMatch(r, s) !== true) continue;
        const c = r.when === undefined ? true : condition(r.when, s);
        if (c === false) continue;
        hits.push(typeof c === 'string' ? { r, failed: c } : { r });
      }
      return hits.length === 0 ? undefined : responsePlanOf(hits, (program, match) => {
        const vars = variables(s, program.reads);
        vars[MATCH_VARIABLE] = match;
        return program(vars);
      });
    },
    resolveSession(input) {
      if (sequenceRules.length === 0) return undefined;
      const applying = sequencesFor(input);
      if (applying.length === 0 || input.facts.argsError !== undefined) return undefined;
      const key = sessionOf(input.identity);
      if (key === undefined) return undefined;
      const names = new Set<string>();
      for (const r of applying) {
        const q = r.flat.sequence as Sequence;
        for (const step of q.requires) names.add(stepMark(step, true, input.facts));
        for (const step of q.blockedBy) names.add(stepMark(step, false, input.facts));
      }
      return sessions.read(key, [...names], input.now);
    },
    recordSequence(input, outcome) {
      const tool = input.facts.tool;
      const lists = tool === undefined ? undefined : sequenced.get(tool);
      if (lists === undefined) return undefined;
      const key = sessionOf(input.identity);
      if (key === undefined) return undefined;
      const mark = outcome === 'ok' ? okMark : calledMark;
      const names = lists.map((same) => mark(tool as string, same === undefined ? undefined : argsDigest(same, input.facts.args)));
      return sessions.mark(key, names, input.now);
    },
  };
}

/** A response rule, compiled. */
interface CompiledResponseRule extends CompiledMatch {
  readonly rule: ResponseRuleConfig;
  readonly redactor: Redactor | undefined;
  /** `redact.keep`: true keeps a pattern's match (it also reads `match`). */
  readonly keep: Program | undefined;
  /** The pattern names its `keep` decides about (`regex` for its own expressions). */
  readonly owns: ReadonlySet<string>;
  readonly statusMatches: (status: number) => boolean;
}

/**
 * What the matching response rules do to an answer of each status: block beats escalate beats
 * redact. A rule whose condition could not be evaluated blocks (fail closed). The redactions of
 * every applying rule are combined; a pattern's match is kept only if every applying rule with that
 * pattern has a `keep` that says so.
 */
function responsePlanOf(hits: readonly { r: CompiledResponseRule; failed?: string }[], run: (keep: Program, match: string) => unknown): ResponsePlan {
  return {
    rules: hits.map((h) => h.r.rule.id),
    at(status) {
      const applying = hits.filter((h) => h.r.statusMatches(status));
      if (applying.length === 0) return undefined;
      const failed = applying.find((h) => h.failed !== undefined);
      if (failed !== undefined) return { kind: 'block', rules: [failed.r.rule.id], reason: `response rule ${failed.r.rule.id}: the condition could not be evaluated: ${failed.failed as string}` };
      const reasonOf = (r: ResponseRuleConfig): string => r.reason ?? r.description ?? `response rule ${r.id}`;
      const blocking = applying.filter((h) => h.r.rule.effect === 'block');
      if (blocking.length > 0) return { kind: 'block', rules: blocking.map((h) => h.r.rule.id), reason: reasonOf((blocking[0] as { r: CompiledResponseRule }).r.rule) };
      const redacting = applying.filter((h) => h.r.redactor !== undefined);
      const redactor = redacting.length === 0 ? undefined : combineRedactors(redacting.map((h) => h.r.redactor as Redactor));
      const keep: KeepMatch | undefined = !redacting.some((h) => h.r.keep !== undefined)
        ? undefined
        : (match, pattern) => {
            const owners = redacting.filter((h) => h.r.owns.has(pattern));
            return owners.length > 0 && owners.every((h) => {
              if (h.r.keep === undefined) return false;
              try {
                return run(h.r.keep, match) === true;
              } catch {
                return false;
              }
            });
          };
      const redaction = { ...(redactor !== undefined && { redactor }), ...(keep !== undefined && { keep }) };
      const escalating = applying.filter((h) => h.r.rule.effect === 'escalate');
      const first = escalating[0]?.r.rule;
      if (first?.approval !== undefined) {
        const approval: ApprovalRequest = { group: first.approval.group, timeoutMs: Math.min(...escalating.map((h) => h.r.rule.approval?.timeoutMs ?? Infinity)), mode: 'hold' };
        return { kind: 'escalate', rules: escalating.map((h) => h.r.rule.id), reason: reasonOf(first), approval, ...redaction };
      }
      return { kind: 'redact', rules: redacting.map((h) => h.r.rule.id), reason: reasonOf((redacting[0] as { r: CompiledResponseRule }).r.rule), ...redaction };
    },
  };
}

/** The denial of a rule whose call sequence does not hold. */
function sequenceDenial(r: FlatRule, why: string): Decision {
  return { effect: 'deny', rules: r.alone.rules, reason: `rule ${r.id}: ${why}` };
}

/**
 * `enforced` with `shadow` evaluated beside it (rules in shadow mode, or a candidate set): bodies
 * are read when either reads arguments, so the shadow decision sees what the enforced one would.
 */
export function withShadow(enforced: Policy, shadow: Policy): Policy {
  return { ...enforced, readsArgs: (upstream) => enforced.readsArgs(upstream) || shadow.readsArgs(upstream), shadow };
}

/** The refusal a store's answer means for these charges, or the usage budgets' reservation. */
function chargedBy(entries: readonly Charge[], r: ConsumeResult, spend: Spend | undefined): Limited | Reservation | undefined {
  if (!r.ok) {
    const e = entries[r.index] as Charge;
    const l = e.limit;
    const level = l.usage === undefined ? {} : { level: levelOf({ id: l.config.id, usage: l.usage, key: e.key, windowMs: l.windowMs, limit: l.limit }, l.limit) };
    const what = l.kind === 'budget' ? `budget ${l.config.id} (${amountText(l, l.limit)} per ${formatMs(l.windowMs)})` : `rate limit ${l.config.id} (${l.limit} per ${formatMs(l.windowMs)})`;
    if (r.retryAfterMs === null) {
      const amount = Number.isFinite(e.cost) ? `may spend ${amountText(l, e.cost)}, more than the whole ${what}` : `cannot be known before it runs, so ${what} cannot hold it`;
      return { kind: l.kind, id: l.config.id, reason: `this call ${amount}`, retryAfterMs: null, ...level };
    }
    return { kind: l.kind, id: l.config.id, reason: l.usage === undefined ? `${what} is exhausted` : `${what} cannot hold this call's ${amountText(l, e.cost)} now`, retryAfterMs: r.retryAfterMs, ...level };
  }
  if (spend === undefined) return undefined;
  const held: HeldBudget[] = [];
  for (const [i, e] of entries.entries()) {
    const usage = e.limit.usage;
    const placed = r.placed?.[i];
    if (usage === undefined || placed === undefined) continue;
    held.push({ id: e.limit.config.id, usage, key: e.key, windowMs: e.limit.windowMs, limit: e.limit.limit, slot: placed.slot, reserved: e.cost, used: placed.used });
  }
  return held.length === 0 ? undefined : { kind: 'reserved', held, levels: held.map((h) => levelOf(h, h.used)) };
}

/** A usage budget's amount of some spend: tokens, or millionths of the currency. */
function amountOf(usage: 'tokens' | 'cost', spend: Spend): number {
  return usage === 'tokens' ? Math.round(spend.tokens) : Math.round(spend.cost * MICROS);
}

function amountText(l: CompiledLimit, amount: number): string {
  if (l.usage === 'cost') return (amount / MICROS).toFixed(amount % 10_000 === 0 ? 2 : 6).replace(/(\.\d\d\d*?)0+$/, '$1');
  if (l.usage === 'tokens') return `${amount} tokens`;
  return String(amount);
}

function levelOf(h: Pick<HeldBudget, 'id' | 'usage' | 'key' | 'windowMs' | 'limit'>, used: number): BudgetLevel {
  return { id: h.id, usage: h.usage, key: h.key, windowMs: h.windowMs, used: h.usage === 'cost' ? used / MICROS : used, limit: h.usage === 'cost' ? h.limit / MICROS : h.limit };
}

const VARIABLE_NAMES = new RegExp(`\\b(?:${Object.keys(VARIABLE_BITS).join('|')})\\b`, 'g');

/** The variables a CEL source may read: every one it names (a name in a string literal too). */
function variablesRead(source: string): number {
  let reads = 0;
  for (const [name] of source.matchAll(VARIABLE_NAMES)) reads |= VARIABLE_BITS[name as keyof typeof VARIABLE_BITS];
  return reads;
}

/**
 * Policy.resolveIdentity for one registry. Identities come from the verified-token cache, so each
 * is resolved once and the same object is handed back for every request with that token (which
 * also keeps principalsOf's cache hitting).
 */
function identityResolver(agents: readonly AgentRegistration[], requireRegistered: boolean): (identity: AgentIdentity) => AgentIdentity {
  if (agents.length === 0 && !requireRegistered) return (identity) => identity;
  const registry = new Map<string, AgentRegistration[]>();
  for (const a of agents) registry.set(a.id, [...(registry.get(a.id) ?? []), a]);
  const resolved = new WeakMap<AgentIdentity, AgentIdentity | string>();
  const resolve = (id: AgentIdentity): AgentIdentity | string => {
    const entries = registry.get(id.agent);
    if (entries === undefined) return requireRegistered ? `agent "${id.agent}" is not in the agent registry` : id;
    let entry: AgentRegistration | undefined;
    if (id.tenant !== undefined) {
      entry = entries.find((e) => e.tenant === id.tenant || e.tenant === undefined);
      if (entry === undefined) return `the token claims tenant "${id.tenant}", but the agent registry does not place agent "${id.agent}" there`;
    } else {
      // Several tenants know this id: which one is meant is exactly what the token must say.
      if (entries.length > 1) return `agent "${id.agent}" is registered in more than one tenant; its token must name the tenant`;
      entry = entries[0] as AgentRegistration;
    }
    if (entry.team !== undefined && id.team !== undefined && id.team !== entry.team) {
      return `the token claims team "${id.team}", but the agent registry puts agent "${id.agent}" in another team`;
    }
    const tenant = id.tenant ?? entry.tenant;
    const team = id.team ?? entry.team;
    return tenant === id.tenant && team === id.team ? id : Object.freeze({ ...id, tenant, team });
  };
  return (identity) => {
    let r = resolved.get(identity);
    if (r === undefined) resolved.set(identity, (r = resolve(identity)));
    if (typeof r === 'string') throw new ValetError('VALET_ERR_IDENTITY_REFUSED', `The agent's identity was refused: ${r}.`);
    return r;
  };
}

/** `evaluate`'s static check: only what the index has not already proved (upstream, method, tool). */
function admits(r: FlatRule, s: Evaluation): boolean {
  const id = s.input.identity;
  if (r.tenant !== undefined && !scopeAdmits(r.tenant, r.restrictive, id.tenant)) return false;
  if (r.team !== undefined && !scopeAdmits(r.team, r.restrictive, id.team)) return false;
  if (r.agent !== undefined && r.agent !== id.agent) return false;
  if (r.roles !== undefined && !sharesRole(r.roles, s.principal.mask)) return false;
  if (r.matchPath !== undefined && !r.matchPath(r.restrictive ? s.lowerPath : s.path)) return false;
  if (r.environments !== undefined && !environmentAllows(r.environments, r.restrictive, s.input.environment, id.environment)) return false;
  return true;
}

/** The full static match (no CEL), for `explain` and limits: true, or why not. */
function staticMatch(m: CompiledMatch, s: Evaluation): true | string {
  const { identity: id, facts } = s.input;
  const p = s.principal;
  const scope = m.config.scope;
  if (scope?.tenant !== undefined && !scopeAdmits(scope.tenant, m.restrictive, id.tenant)) return `scope: tenant is not ${scope.tenant}`;
  if (scope?.team !== undefined && !scopeAdmits(scope.team, m.restrictive, id.team)) return `scope: team is not ${scope.team}`;
  if (scope?.agent !== undefined && scope.agent !== id.agent) return `scope: agent is not ${scope.agent}`;
  if (m.config.upstream !== undefined && m.config.upstream !== facts.upstream) return `upstream is not ${m.config.upstream}`;
  if (m.tools && (facts.tool === undefined || !m.tools.has(facts.tool))) return `tool is not one of ${[...m.tools].join(', ')}`;
  if (m.methods && !m.methods.has(facts.method)) return `method ${facts.method} is not one of ${[...m.methods].join(', ')}`;
  if (m.matchPath && !m.matchPath(m.restrictive ? s.lowerPath : s.path)) return `path ${facts.path} matches no pattern`;
  if (m.roles && !m.roles.some((r) => p.roles.has(r))) return `${p.kind} has none of the roles ${m.roles.join(', ')}`;
  if (m.environments && !environmentAllows(m.environments, m.restrictive, s.input.environment, id.environment)) {
    return `environment is not ${[...m.environments].join(', ')}`;
  }
  return true;
}

/**
 * A tenant or team scope: a claim the identity lacks counts as matching for restrictive rules and
 * limits (leaving a claim out never escapes a deny) and as not matching for allows (nor earns one).
 */
function scopeAdmits(scoped: string, restrictive: boolean, claim: string | undefined): boolean {
  return claim === undefined ? restrictive : claim === scoped;
}

function sharesRole(rule: RoleMask, principal: RoleMask): boolean {
  if (typeof rule === 'number') return (rule & (principal as number)) !== 0;
  const words = principal as Int32Array;
  for (let i = 0; i < rule.length; i++) if (((rule[i] as number) & (words[i] as number)) !== 0) return true;
  return false;
}

/**
 * Restrictive rules apply when the gateway's or the token's environment is listed; allows need
 * both, a token without an environment counting as listed.
 */
function environmentAllows(listed: ReadonlySet<string>, restrictive: boolean, gateway: string, token: string | undefined): boolean {
  if (restrictive) return listed.has(gateway) || (token !== undefined && listed.has(token));
  return listed.has(gateway) && (token === undefined || listed.has(token));
}

/** The decision of the matching rules of the best rank (in rule order), or default deny if none matched. */
function conclude(best: FlatRule | undefined, ties: readonly FlatRule[] | undefined, facts: RequestFacts): Decision {
  if (best === undefined) {
    const tool = facts.tool ? ` (tool ${facts.tool})` : '';
    return { effect: 'deny', rules: DEFAULT_DENY_RULES, reason: `no rule allows ${facts.method} ${facts.path}${tool} on ${facts.upstream}` };
  }
  return ties === undefined ? best.alone : decisionOf([best, ...ties]);
}

function decisionOf(winners: readonly Winner[]): Decision {
  const first = winners[0] as Winner;
  const decision: Decision = { effect: first.effect, rules: winners.map((w) => w.id), reason: first.reason };
  if (first.effect === 'escalate' && first.approval) return { ...decision, approval: strictestApproval(winners) };
  return decision;
}

function failed(r: FlatRule, error: string): Decision {
  return { effect: 'deny', rules: r.alone.rules, reason: `rule ${r.id}: the condition could not be evaluated: ${error}` };
}

/**
 * Delegation: the agent gets at most what both it and the user it acts for may do, so the stricter
 * decision stands (the agent's on a tie).
 */
function delegated(agent: Decision, forUser: Decision, user: Principal): Decision {
  return RANK[forUser.effect] > RANK[agent.effect] ? { ...forUser, reason: `acting for user ${user.id}: ${forUser.reason}` } : agent;
}

/** Shared by every decision a rule makes alone, so nobody may change it. */
function frozen(d: Decision): Decision {
  Object.freeze(d.rules);
  if (d.approval) Object.freeze(d.approval);
  return Object.freeze(d);
}

function strictestApproval(winners: readonly Winner[]): NonNullable<Decision['approval']> {
  // Several escalations at once: the shortest timeout; hold if any rule wants the agent to wait.
  const approvals = winners.map((w) => w.approval).filter((a) => a !== undefined);
  const first = approvals[0] as ApprovalConfig;
  // Every argument any of them hides stays hidden.
  const redact = [...new Set(approvals.flatMap((a) => a.redact ?? []))];
  return {
    group: first.group,
    timeoutMs: Math.min(...approvals.map((a) => a.timeoutMs)),
    mode: approvals.some((a) => a.mode === 'hold') ? 'hold' : 'async',
    ...(redact.length > 0 && { redact }),
  };
}

/** The rules that may match `path` (normalised, lower-cased): those of the deepest node it reaches. */
function rulesForPath(root: PathNode, path: string): Candidates {
  let node = root;
  for (let start = 1; node.next !== undefined; ) {
    const end = path.indexOf('/', start);
    const child = node.next.get(path.slice(start, end === -1 ? path.length : end));
    if (child === undefined) break;
    node = child;
    if (end === -1) break;
    start = end + 1;
  }
  return node.rules;
}

/**
 * Files rules under the literal prefixes of their path patterns. A rule without paths, or with a
 * pattern that has no usable prefix, sits at the root, so it is in every node's list; a deep
 * trie of such rules costs memory (nodes × root rules), not time.
 */
function pathIndex(rules: readonly CompiledRule[]): PathNode {
  interface Draft {
    readonly own: FlatRule[];
    readonly next: Map<string, Draft>;
  }
  const root: Draft = { own: [], next: new Map() };
  for (const r of rules) {
    for (const prefix of r.pathKeys) {
      let node = root;
      for (const segment of prefix) {
        let child = node.next.get(segment);
        if (child === undefined) node.next.set(segment, (child = { own: [], next: new Map() }));
        node = child;
      }
      node.own.push(r.flat);
    }
  }
  const seal = (d: Draft, inherited: readonly FlatRule[]): PathNode => {
    const list = d.own.length === 0 ? inherited : [...new Set([...inherited, ...d.own])].sort((a, b) => a.order - b.order);
    return { rules: splitByScope(list, flatScope), next: d.next.size === 0 ? undefined : new Map([...d.next].map(([segment, child]) => [segment, seal(child, list)])) };
  };
  return seal(root, NO_RULES);
}

const SCOPE_CLAIMS: readonly ScopeClaim[] = ['tenant', 'team', 'agent'];

/** What an item is scoped to on one claim: a rule's flat record, a limit's or response rule's config. */
type ScopeOf<T> = (item: T, claim: ScopeClaim) => string | undefined;
const flatScope: ScopeOf<FlatRule> = (r, claim) => r[claim];
const configScope: ScopeOf<CompiledMatch> = (m, claim) => m.config.scope?.[claim];

/**
 * A candidate list split by the first claim (tenant, team, agent) some of its items are scoped on,
 * then each part by the next. Only items the static match could never pass are left out of a
 * part: an item scoped to another value; for an identity without the claim, an allow scoped on it
 * (a restrictive rule or a limit still applies, see scopeAdmits; an agent scope never does without
 * the agent). The items not scoped on the claim are in every part, so the parts together hold more
 * entries than the list: all the parts of one list share `budget` (eight times its length, at
 * least 256 entries), and a list whose split would pass what is left stays whole, which is correct
 * (the static match checks every scope) but scans every tenant's items.
 */
export function splitByScope<T extends { readonly restrictive: boolean }>(
  list: readonly T[],
  scopeOf: ScopeOf<T>,
  claims: readonly ScopeClaim[] = SCOPE_CLAIMS,
  budget = { left: Math.max(256, 8 * list.length) },
): Candidates<T> {
  const claim = claims.find((c) => list.some((item) => scopeOf(item, c) !== undefined));
  if (claim === undefined) return list;
  // An identity without the claim meets the unscoped items and (tenant, team) the restrictive ones.
  const withoutClaim = (item: T, v: string | undefined): boolean => v === undefined || (claim !== 'agent' && item.restrictive);
  const parts = new Map<string, T[]>();
  let unscopedCount = 0;
  let noClaimCount = 0;
  for (const item of list) {
    const v = scopeOf(item, claim);
    if (v === undefined) unscopedCount++;
    else if (!parts.has(v)) parts.set(v, []);
    if (withoutClaim(item, v)) noClaimCount++;
  }
  // Every part holds the unscoped items; counted before any part is built.
  const entries = unscopedCount * (parts.size + 1) + (list.length - unscopedCount) + noClaimCount;
  if (entries > budget.left) return list;
  budget.left -= entries;
  // One pass in list order builds every part in list order.
  const unscoped: T[] = [];
  const noClaim: T[] = [];
  for (const item of list) {
    const v = scopeOf(item, claim);
    if (v === undefined) {
      unscoped.push(item);
      for (const part of parts.values()) part.push(item);
    } else (parts.get(v) as T[]).push(item);
    if (withoutClaim(item, v)) noClaim.push(item);
  }
  const rest = claims.slice(claims.indexOf(claim) + 1);
  const split = (part: readonly T[]): Candidates<T> => splitByScope(part, scopeOf, rest, budget);
  const byValue = new Map<string, Candidates<T>>();
  for (const [v, part] of parts) byValue.set(v, split(part));
  return { claim, byValue, other: split(unscoped), noClaim: split(noClaim) };
}

/** The part of a candidate list an identity can meet. */
export function candidatesFor<T>(c: Candidates<T>, id: Pick<AgentIdentity, ScopeClaim>): readonly T[] {
  while (!Array.isArray(c)) {
    const split = c as ScopeSplit<T>;
    const value = id[split.claim];
    c = value === undefined ? split.noClaim : (split.byValue.get(value) ?? split.other);
  }
  return c as readonly T[];
}

/**
 * The leading segments of a path pattern, lower-cased, that the lower-cased form of every path it
 * matches starts with: where the path index may file it. Only segments in ASCII without `*` or `?`
 * count: under a case-insensitive regex some non-ASCII letters match others (σ and ς), and `?` is
 * a regex operator in compilePaths.
 */
function literalPrefix(pattern: string, ignoreCase: boolean): string[] {
  const normalised = normalisePath(pattern);
  const seen = ignoreCase ? normalised.toLowerCase() : normalised;
  if (!seen.startsWith('/')) return [];
  const prefix: string[] = [];
  for (const segment of seen.split('/').slice(1)) {
    if (!/^[^*?\u0080-\uffff]*$/.test(segment)) break;
    prefix.push(segment.toLowerCase());
  }
  return prefix;
}

/** The history of this agent of this tenant with this tool (or route); JSON, like counter keys. */
/** `[tenant, agent` of an identity, JSON-encoded once: identities come from the verified-token cache. */
const historyPrefixes = new WeakMap<AgentIdentity, string>();

/** The history key of a call: JSON `[tenant, agent, "tool", tool]` or `[tenant, agent, "route", upstream, method, path]`. */
export function historyKey(id: AgentIdentity, facts: RequestFacts): string {
  let prefix = historyPrefixes.get(id);
  if (prefix === undefined) historyPrefixes.set(id, (prefix = JSON.stringify([id.tenant ?? null, id.agent]).slice(0, -1)));
  const call = facts.tool === undefined ? `"route",${JSON.stringify(facts.upstream)},${JSON.stringify(facts.method)},${JSON.stringify(facts.path)}` : `"tool",${JSON.stringify(facts.tool)}`;
  return `${prefix},${call}]`;
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

/** One trailing slash is insignificant. */
function normalisePath(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}

/**
 * `*` matches one non-empty segment, a final `**` any remainder (including none). One trailing
 * slash is insignificant on both sides. Restrictive (deny/escalate) patterns ignore letter case, so
 * case can never dodge them; allow patterns do not, so case can never widen them.
 */
export function compilePaths(patterns: readonly string[], ignoreCase: boolean): (path: string) => boolean {
  const match = pathMatcher(patterns, ignoreCase);
  return (path) => {
    const p = normalisePath(path);
    return match(ignoreCase ? p.toLowerCase() : p);
  };
}

/** compilePaths for a path already normalised, and lower-cased if `ignoreCase`: once per decision, not per rule. */
function pathMatcher(patterns: readonly string[], ignoreCase: boolean): (path: string) => boolean {
  const exact = new Set<string>();
  const regexes: RegExp[] = [];
  for (const raw of patterns) {
    const normalised = normalisePath(raw);
    const p = ignoreCase ? normalised.toLowerCase() : normalised;
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
    if (exact.has(path)) return true;
    for (const re of regexes) if (re.test(path)) return true;
    return false;
  };
}

/** The CEL variable `user`: id and roles, and (hidden) what `user.connected(...)` asks. */
function userVariable(user: string, roles: readonly string[], tenant: string | undefined, connections: PolicyStores['connections']): Record<string, unknown> {
  const v: Record<string, unknown> = { id: user, roles: [...roles] };
  if (connections !== undefined) Object.defineProperty(v, CONNECTED, { value: (upstream: string) => connections.connected(tenant, user, upstream), enumerable: false });
  return v;
}
