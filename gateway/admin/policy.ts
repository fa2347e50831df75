import { relative, resolve } from 'node:path';
import type { AuditLog, AuditRow } from '../audit/port.js';
import type { Config, RuleConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { RuleTrace } from '../policy/compile.js';
import type { PolicyHolder } from '../policy/reload.js';
import { runPolicyTests, scenarioInput, type TestResult } from '../policy/testing.js';
import { tenantScope, type AdminIdentity } from './auth.js';
import { timeRange } from './insights.js';
import type { AdminRoute } from './server.js';

/**
 * What the audit log does not keep, so an explanation replayed from a row cannot know it. Said in
 * every answer, because an explanation that silently guessed would be worse than none.
 */
const NOT_RECORDED = [
  'arguments (request bodies and query values are not stored)',
  "the token's roles, team and environment claims (and a delegating user's roles)",
  'context lookups (ctx.*), which are not repeated',
] as const;

/**
 * The policy as the dashboard shows it: its rules, its tests run against the loaded configuration,
 * and a recorded request explained rule by rule against the policy in force now.
 */
export function policyRoutes(d: { readonly audit: AuditLog; readonly policies: PolicyHolder }): AdminRoute[] {
  let tests: { version: string; results: Promise<TestResult[]> } | undefined;
  return [
    {
      method: 'GET',
      path: '/api/policy/rules',
      permission: 'policy.read',
      handle: ({ who }) => {
        const config = d.policies.config();
        return { json: { version: config.version, rules: config.rules.filter((r) => visible(who, r.scope?.tenant)).map((r) => ruleJson(config, r)) } };
      },
    },
    {
      // Where the rules in shadow mode (or a candidate set) would have decided otherwise, from the audit log.
      method: 'GET',
      path: '/api/policy/shadow',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const { since, until } = timeRange(query, Date.now(), 7 * 86_400_000);
        const rows = await d.audit.shadowDisagreements({ sinceMs: since, untilMs: until, tenant, limit: 500 });
        return {
          json: {
            since_ms: since,
            until_ms: until,
            shadow: d.policies.current().shadow?.version ?? null,
            disagreements: rows.map((r) => ({ enforced: r.enforced, shadow: r.shadow, rules: JSON.parse(r.rules) as unknown, calls: Number(r.calls), last: new Date(Number(r.lastMs)).toISOString(), example_request_id: r.example })),
          },
        };
      },
    },
    {
      // The same reload as a file change or SIGHUP: rules and context data files, all or nothing.
      method: 'POST',
      path: '/api/policy/reload',
      permission: 'policy.reload',
      handle: ({ who }) => {
        if (who.tenant !== undefined) {
          throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'The policy is shared by every tenant: only an admin without a tenant may reload it.');
        }
        const r = d.policies.reload();
        if (r.ok) return { json: { reloaded: true, version: r.version } };
        return { status: 409, json: { reloaded: false, version: d.policies.status().version, error: r.error } };
      },
    },
    {
      method: 'GET',
      path: '/api/policy/tests',
      permission: 'policy.read',
      handle: async ({ who }) => {
        const config = d.policies.config();
        // Tests are pure (fresh counters each), so one run per policy version serves everyone.
        if (tests?.version !== config.version) tests = { version: config.version, results: runPolicyTests(config) };
        const own = new Set(config.tests.filter((t) => visible(who, t.identity.tenant)).map((t) => `${t.at.file}:${t.at.line}`));
        const results = (await tests.results).filter((r) => own.has(r.at)).map((r) => ({ ...r, at: where(config, r.at) }));
        const failed = results.filter((r) => !r.passed).length;
        return { json: { version: config.version, passed: results.length - failed, failed, results } };
      },
    },
    {
      method: 'GET',
      path: '/api/audit/:request_id/explain',
      permission: 'audit.read',
      handle: async ({ who, params }) => {
        const row = await d.audit.byRequestId(params['request_id'] ?? '');
        // Another tenant's row is reported as absent: its existence is not the tenant admin's business.
        if (row === undefined || (who.tenant !== undefined && row.tenant !== who.tenant)) {
          throw new ValetError('VALET_ERR_ADMIN_NOT_FOUND', 'No audit row has that request id.');
        }
        tenantScope(who, row.tenant ?? undefined);
        return { json: explainRow(row, d.policies) };
      },
    },
  ];
}

const visible = (who: AdminIdentity, tenant: string | undefined): boolean => who.tenant === undefined || tenant === undefined || tenant === who.tenant;

/** `file:line` with the file relative to the configuration directory, as people name it. */
function where(config: Config, at: string): string {
  const colon = at.lastIndexOf(':');
  return `${relative(resolve(config.dir), resolve(at.slice(0, colon)))}${at.slice(colon)}`;
}

function ruleJson(config: Config, r: RuleConfig): Record<string, unknown> {
  return {
    id: r.id,
    effect: r.effect,
    mode: r.mode ?? 'enforce',
    description: r.description ?? null,
    reason: r.reason ?? null,
    scope: r.scope ?? null,
    upstream: r.upstream ?? null,
    tools: r.tools ?? null,
    methods: r.methods ?? null,
    paths: r.paths ?? null,
    roles: r.roles ?? null,
    environments: r.environments ?? null,
    when: r.when ?? null,
    approval: r.approval === undefined ? null : { group: r.approval.group, mode: r.approval.mode, timeout_s: r.approval.timeoutMs / 1000 },
    at: where(config, `${r.at.file}:${r.at.line}`),
  };
}

/** Replays a recorded request's identity, method, path and time through the policy in force now. */
function explainRow(row: AuditRow, policies: PolicyHolder): Record<string, unknown> {
  const config = policies.config();
  const policy = policies.current();
  const recorded = {
    decision: row.decision,
    rule: row.rule,
    reason: row.reason,
    status: row.status,
    error_code: row.error_code,
    tool: row.tool,
    policy_version: row.policy_version,
  };
  const base = { request_id: row.request_id, recorded, policy_version: policy.version, same_version: row.policy_version === policy.version, not_recorded: NOT_RECORDED };
  if (row.agent === null || row.upstream === null || !config.upstreams.has(row.upstream)) {
    const why = row.agent === null ? 'the request was refused before its agent was known (no valid token, bad path or unknown upstream), so no rule was considered' : `the upstream "${row.upstream}" is not configured now`;
    return { ...base, replay: null, not_replayable: why };
  }
  let input: ReturnType<typeof scenarioInput>;
  try {
    input = scenarioInput(policy, config, {
      identity: { agent: row.agent, ...(row.tenant !== null && { tenant: row.tenant }), ...(row.user !== null && { user: row.user }) },
      request: { upstream: row.upstream, method: row.method, path: row.path, time: new Date(row.ts).toISOString() },
    });
  } catch (err) {
    // The agent registry in force now refuses the recorded identity: no rule would be considered.
    if (!(err instanceof ValetError) || err.code !== 'VALET_ERR_IDENTITY_REFUSED') throw err;
    return { ...base, replay: null, not_replayable: err.message };
  }
  const { decision, trace } = policy.explain({ ...input, context: {} });
  const rules = new Map(config.rules.map((r) => [r.id, r]));
  return {
    ...base,
    replay: {
      decision: { effect: decision.effect, rules: decision.rules, reason: decision.reason },
      tool: input.facts.tool ?? null,
      agrees: decision.effect === row.decision,
      trace: trace.map((t) => ({ ...t, at: where(config, t.at), needs: needs(t, rules.get(t.id)) })),
    },
    not_replayable: null,
  };
}

/**
 * The unrecorded inputs a traced outcome depended on; empty when it is certain. A rule that failed
 * on tenant, agent, upstream, tool, method or path failed for recorded reasons whatever else it says.
 */
function needs(t: RuleTrace, rule: RuleConfig | undefined): string[] {
  if (t.why.startsWith('scope: team')) return ['team'];
  if (t.why.includes('has none of the roles')) return ['roles'];
  if (t.why.startsWith('environment is not')) return ['environment'];
  if (!t.matched && !t.why.startsWith('condition')) return [];
  const out = new Set<string>();
  // A team scope matched a restrictive rule either by the team or by its absence; the team is not recorded.
  if (rule?.scope?.team !== undefined) out.add('team');
  const when = rule?.when ?? '';
  if (/\bargs\b/.test(when)) out.add('arguments');
  if (/\bctx\b/.test(when)) out.add('context');
  if (/\broles\b/.test(when)) out.add('roles');
  if (/\bteam\b/.test(when)) out.add('team');
  if (/\benvironment\b/.test(when)) out.add('environment');
  return [...out];
}
