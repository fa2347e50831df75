/**
 * The audit rows the audit benchmarks write: a population shaped like a multi-tenant deployment,
 * drawn from a deterministic pseudo-random sequence so that every run writes the same distribution.
 */
import { requestId } from '../../gateway/audit/ids.js';
import { newAuditRecord } from '../../gateway/server/pipeline.js';
import type { AuditRecord } from '../../gateway/types.js';

let seed = 0x9e3779b9;
export const rand = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 0x1_0000_0000;
};
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;

// A population shaped like a multi-tenant deployment: agents belong to one tenant, some calls are
// delegated by a user, most map to a tool, a few rules decide most requests.
const TENANTS = Array.from({ length: 20 }, (_, i) => `tenant-${i}`);
const AGENTS = Array.from({ length: 200 }, (_, i) => ({ agent: `agent-${i}`, tenant: TENANTS[i % TENANTS.length] as string }));
const USERS = Array.from({ length: 1000 }, (_, i) => `user-${i}@example.com`);
const UPSTREAMS = ['openai', 'anthropic', 'github', 'stripe', 'postmark', 'slack', 'jira', 'linear', 'notion', 'salesforce'];
const TOOLS = Array.from({ length: 50 }, (_, i) => `${UPSTREAMS[i % UPSTREAMS.length]}.tool_${i}`);
const RULES = Array.from({ length: 100 }, (_, i) => `rule-${i}`);
const POLICY = 'sha256:4f2a9c0d1e7b3a55';

export function decisionRecord(): AuditRecord {
  const a = pick(AGENTS);
  const upstream = pick(UPSTREAMS);
  const hasTool = rand() < 0.6;
  return {
    ...newAuditRecord(requestId(), rand() < 0.7 ? 'POST' : 'GET', `/v1/${hasTool ? 'chat/completions' : `items/${Math.floor(rand() * 100_000)}`}`),
    agent: a.agent,
    tenant: a.tenant,
    user: rand() < 0.3 ? pick(USERS) : null,
    upstream,
    tool: hasTool ? pick(TOOLS) : null,
    decision: rand() < 0.01 ? 'escalate' : 'allow',
    // Zipf-like: a handful of rules decide most requests.
    rule: RULES[Math.min(RULES.length - 1, Math.floor(-Math.log(1 - rand()) * 8))] as string,
    reason: 'agents may call this tool within their budget',
    bytesIn: Math.floor(rand() * 4096),
    policyVersion: POLICY,
  };
}

/** The decision's row completed: status, latency, bytes. */
export function outcome(rec: AuditRecord): AuditRecord {
  const r = rand();
  const status = r < 0.93 ? 200 : r < 0.97 ? 201 : r < 0.99 ? 502 : 500;
  return { ...rec, status, upstreamStatus: status === 502 ? null : status, errorCode: status === 502 ? 'VALET_ERR_UPSTREAM_UNREACHABLE' : null, durationMs: Math.round(rand() * 900_000) / 1000, bytesOut: Math.floor(rand() * 20_000) };
}

/** A request refused before forwarding: one complete row (auth failure, rate limit, policy deny). */
export function refusal(): AuditRecord {
  const rec = decisionRecord();
  const r = rand();
  if (r < 0.15) return { ...rec, agent: null, tenant: null, user: null, tool: null, decision: null, rule: null, reason: null, policyVersion: null, status: 401, errorCode: 'VALET_ERR_TOKEN_MISSING', durationMs: 0.2 };
  if (r < 0.25) return { ...rec, decision: 'deny', status: 429, errorCode: 'VALET_ERR_RATE_LIMITED', durationMs: 0.4 };
  return { ...rec, decision: 'deny', rule: 'default-deny', reason: 'no rule allows this request', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED', durationMs: 0.3 };
}
