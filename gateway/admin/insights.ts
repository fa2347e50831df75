import type { AuditLog } from '../audit/port.js';
import { ValetError } from '../errors.js';
import { tenantScope } from './auth.js';
import type { AdminRoute } from './server.js';

const HOUR = 3_600_000;
const MAX_BUCKETS = 1_000;
const MAX_AGENTS = 1_000;

/** Decisions as the charts count them; `none` is a request refused before the policy ran (token, path, upstream). */
const DECISIONS = ['allow', 'deny', 'escalate', 'none'] as const;
type Counts = Record<(typeof DECISIONS)[number], number>;

/**
 * Summaries of the audit log for the dashboard: the agents seen and requests over time by decision.
 * Both are aggregates the audit log computes (over `ts`, which SQLite indexes); a tenant admin
 * sees only its tenant's rows, so requests without a tenant (refused before authentication) are
 * counted for organisation-wide admins only.
 */
export function insightRoutes(log: AuditLog, now: () => number = Date.now): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/agents',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const since = time(query, 'since_ms') ?? 0;
        const agents = await log.agents({ sinceMs: since, tenant, limit: MAX_AGENTS });
        return {
          json: {
            agents: agents.map((a) => ({
              agent: a.agent,
              tenant: a.tenant,
              last_seen: new Date(a.lastSeen).toISOString(),
              requests: a.requests,
              decisions: a.decisions,
              errors: a.errors,
            })),
          },
        };
      },
    },
    {
      method: 'GET',
      path: '/api/stats',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const { since, until } = timeRange(query, now(), 24 * HOUR);
        const bucket = bucketSize(query, since, until) ?? Math.max(1_000, Math.ceil((until - since) / 60));
        const count = Math.ceil((until - since) / bucket);
        const rows = await log.decisionCounts({ sinceMs: since, untilMs: until, bucketMs: bucket, tenant });
        const zero = (): Counts => ({ allow: 0, deny: 0, escalate: 0, none: 0 });
        const buckets = Array.from({ length: count }, (_v, i) => ({ start_ms: since + i * bucket, ...zero() }));
        const totals = zero();
        for (const r of rows) {
          const d = (DECISIONS as readonly string[]).includes(r.decision) ? (r.decision as keyof Counts) : 'none';
          const slot = buckets[Math.floor(r.bucket)];
          if (slot === undefined) continue;
          slot[d] += r.count;
          totals[d] += r.count;
        }
        return { json: { since_ms: since, until_ms: until, bucket_ms: bucket, tenant: tenant ?? null, totals, buckets } };
      },
    },
  ];
}

/** `since_ms` and `until_ms` from the query: by default the `span` before `now`, and `now`; since must come first. */
export function timeRange(query: URLSearchParams, now: number, span: number): { since: number; until: number } {
  const until = time(query, 'until_ms') ?? now;
  const since = time(query, 'since_ms') ?? until - span;
  if (since >= until) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'since_ms must be before until_ms.');
  return { since, until };
}

/** `bucket_ms` from the query, if given: at least a second, and at most {@link MAX_BUCKETS} buckets over the range. */
export function bucketSize(query: URLSearchParams, since: number, until: number): number | undefined {
  const bucket = time(query, 'bucket_ms');
  if (bucket === undefined) return undefined;
  if (bucket < 1_000) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'bucket_ms must be at least 1000.');
  const count = Math.ceil((until - since) / bucket);
  if (count > MAX_BUCKETS) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `That is ${count} buckets; at most ${MAX_BUCKETS} are returned.`);
  return bucket;
}

function time(query: URLSearchParams, name: string): number | undefined {
  const v = query.get(name);
  if (v === null || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `${name} must be a non-negative integer (milliseconds).`);
  return n;
}
