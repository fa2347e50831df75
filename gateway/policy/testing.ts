import type { Config, PolicyTestConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { AgentIdentity, Decision, Limited, RequestFacts, Spend } from '../types.js';
import { ambiguityError, bodyKind, buildArgs, parseBody } from './args.js';
import { compilePolicy, type Charged, type EvaluationInput, type LimitTrace, type Policy, type RuleTrace } from './compile.js';
import { memoryCounterStore, memoryHistoryStore } from './counters.js';

/** A request described by hand: policy tests and `valet policy explain`. */
export type Scenario = Pick<PolicyTestConfig, 'identity' | 'request'>;

export interface TestResult {
  readonly name: string;
  readonly at: string;
  readonly passed: boolean;
  readonly expected: string;
  readonly actual: string;
  readonly reason: string;
}

/**
 * Turns a scenario into what the engine evaluates: identity (resolved against the agent registry,
 * as the gateway does; a refusal throws VALET_ERR_IDENTITY_REFUSED), facts (tool, args) and time.
 */
export function scenarioInput(policy: Policy, config: Pick<Config, 'gateway'>, s: Scenario): Omit<EvaluationInput, 'context'> {
  const id = s.identity;
  const claimed: AgentIdentity = {
    agent: id.agent,
    tenant: id.tenant,
    team: id.team,
    roles: id.roles ?? [],
    environment: id.env,
    user: id.user,
    userRoles: id.user_roles ?? [],
    issuer: 'policy-test',
    tokenId: undefined,
    // One session per test: its `before` calls and its request.
    session: 'policy-test',
    expiresAt: Number.MAX_SAFE_INTEGER,
  };
  const identity = policy.resolveIdentity(claimed);
  const r = s.request;
  const match = policy.matchTool(r.upstream, r.method, r.path);
  const query: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(r.query ?? {})) query[k] = [v];
  const kind = r.json !== undefined ? 'json' : r.form !== undefined ? 'form' : 'none';
  const bytes = Buffer.from(r.json !== undefined ? JSON.stringify(r.json) : (r.form ?? ''));
  const parsed = parseBody(bodyKind(kind === 'json' ? 'application/json' : 'application/x-www-form-urlencoded', kind !== 'none'), bytes);
  const args = buildArgs(match?.params ?? {}, query, kind === 'none' ? { value: undefined, error: undefined, ambiguous: false } : parsed, kind, match?.tool.args ?? {});
  // The gateway refuses such a request (400) before any rule runs, whatever the rules say.
  if (args.ambiguous && policy.readsArgs(r.upstream)) throw ambiguityError(args.error);
  const facts: RequestFacts = {
    upstream: r.upstream,
    method: r.method,
    path: r.path,
    forwardPath: r.path,
    rawQuery: '',
    query,
    tool: match?.tool.name,
    args: args.args,
    argsError: args.error,
  };
  const input = { identity, facts, environment: config.gateway.environment, now: r.time ? Date.parse(r.time) : Date.now() };
  const session = policy.resolveSession(input);
  if (session instanceof Promise) throw new TypeError('policy tests keep sessions in memory');
  return session === undefined ? input : { ...input, session };
}

/** The outcome as tests name it: an effect, or `rate_limited` when a limit or budget refused. */
export function outcomeOf(decision: Decision, limited: Limited | Decision | undefined): { effect: string; rule: string; reason: string } {
  if (decision.effect === 'allow' && limited !== undefined) {
    if ('kind' in limited) return { effect: 'rate_limited', rule: limited.id, reason: limited.reason };
    return { effect: limited.effect, rule: limited.rules.join(','), reason: limited.reason };
  }
  return { effect: decision.effect, rule: decision.rules.join(','), reason: decision.reason };
}

/**
 * Runs the policy tests written beside the policies. Each test gets fresh counters and history;
 * `repeat: N` sends the request N times and checks the last outcome (for rate limits, budgets and
 * history conditions).
 */
export async function runPolicyTests(config: Config): Promise<TestResult[]> {
  const results: TestResult[] = [];
  for (const t of config.tests) {
    const policy = compilePolicy(config, { counters: memoryCounterStore(), history: memoryHistoryStore() });
    let outcome = { effect: '', rule: '', reason: '' };
    // Earlier calls of the session: each is decided, and recorded (answered 2xx) if allowed.
    for (const request of t.before ?? []) {
      for (let i = 0; i < (request.repeat ?? 1); i++) {
        try {
          await decideAndRecord(policy, config, { identity: t.identity, request });
        } catch (err) {
          if (!(err instanceof ValetError) || (err.code !== 'VALET_ERR_IDENTITY_REFUSED' && err.code !== 'VALET_ERR_BAD_REQUEST')) throw err;
        }
      }
    }
    for (let i = 0; i < (t.request.repeat ?? 1); i++) {
      try {
        outcome = await decideAndRecord(policy, config, t);
      } catch (err) {
        // The gateway refuses such a token or request before any rule runs; a test names the code as the rule.
        if (!(err instanceof ValetError) || (err.code !== 'VALET_ERR_IDENTITY_REFUSED' && err.code !== 'VALET_ERR_BAD_REQUEST')) throw err;
        outcome = { effect: 'deny', rule: err.code, reason: err.message };
        break;
      }
    }
    const ruleOk = t.expect.rule === undefined || outcome.rule.split(',').includes(t.expect.rule);
    results.push({
      name: t.name,
      at: `${t.at.file}:${t.at.line}`,
      passed: outcome.effect === t.expect.effect && ruleOk,
      expected: `${t.expect.effect}${t.expect.rule ? ` by ${t.expect.rule}` : ''}`,
      actual: `${outcome.effect} by ${outcome.rule}`,
      reason: outcome.reason,
    });
  }
  return results;
}

/** Decides a scenario as the gateway would, charging limits; an allowed call is recorded as forwarded and answered 2xx. */
async function decideAndRecord(policy: Policy, config: Config, s: Scenario): Promise<{ effect: string; rule: string; reason: string }> {
  const base = scenarioInput(policy, config, s);
  const input = { ...base, context: await policy.resolveContext(base) };
  const decision = policy.evaluate(input);
  const limited = decision.effect === 'allow' ? refusal(await policy.charge(input)) : undefined;
  const outcome = outcomeOf(decision, limited);
  if (outcome.effect === 'allow') {
    await policy.recordCall(input);
    await policy.recordSequence(input, 'called');
    await policy.recordSequence(input, 'ok');
  }
  return outcome;
}

/** Every rule considered for a scenario, in order, and the final decision. */
export async function explainScenario(
  policy: Policy,
  config: Pick<Config, 'gateway'>,
  s: Scenario,
  spend?: Spend,
): Promise<{ decision: Decision; trace: RuleTrace[]; limits: LimitTrace[]; limited: Limited | Decision | undefined; shadow: Decision | undefined; input: EvaluationInput }> {
  const base = scenarioInput(policy, config, s);
  const history = await policy.resolveHistory(base);
  const context = await policy.resolveContext(base);
  const input: EvaluationInput = history === undefined ? { ...base, context } : { ...base, context, history: history.summary, historyVersion: history.version };
  const { decision, trace } = policy.explain(input);
  const { traces } = policy.explainLimits(input, spend);
  return { decision, trace, limits: traces, limited: decision.effect === 'allow' ? refusal(await policy.charge(input, spend)) : undefined, shadow: policy.shadow?.evaluate(input), input };
}

/** A charge's refusal, if it was one (a reservation goes on). */
function refusal(charged: Charged): Limited | Decision | undefined {
  return charged !== undefined && 'kind' in charged && charged.kind === 'reserved' ? undefined : (charged as Limited | Decision | undefined);
}
