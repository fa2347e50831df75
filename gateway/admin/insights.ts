import type { AuditDatabase } from '../audit/store.js';
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
 * Both read the audit database directly (aggregates over `ts`, which is indexed); a tenant admin
 * sees only its tenant's rows, so requests without a tenant (refused before authentication) are
 * counted for organisation-wide admins only.
 */
export function insightRoutes(db: AuditDatabase, now: () => number = Date.now): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/agents',
      permission: 'audit.read',
      handle: ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const since = time(query, 'since_ms') ?? 0;
        const rows = db
          .prepare(
            `SELECT agent, tenant, MAX(ts) AS last_seen, COUNT(*) AS requests,
                    SUM(decision = 'allow') AS allow, SUM(decision = 'deny') AS deny,
                    SUM(decision = 'escalate') AS escalate, SUM(decision IS NULL) AS none,
                    SUM(status >= 500) AS errors
               FROM audit_log
              WHERE agent IS NOT NULL AND ts >= @since ${tenant === undefined ? '' : 'AND tenant = @tenant'}
              GROUP BY agent, tenant
              ORDER BY last_seen DESC
              LIMIT ${MAX_AGENTS}`,
          )
          .all({ since, ...(tenant !== undefined && { tenant }) }) as {
          agent: string;
          tenant: string | null;
          last_seen: number;
          requests: number;
          allow: number;
          deny: number;
          escalate: number;
          none: number;
          errors: number;
        }[];
        return {
          json: {
            agents: rows.map((r) => ({
              agent: r.agent,
              tenant: r.tenant,
              last_seen: new Date(r.last_seen).toISOString(),
              requests: r.requests,
              decisions: { allow: r.allow, deny: r.deny, escalate: r.escalate, none: r.none },
              errors: r.errors,
            })),
          },
        };
      },
    },
    {
      method: 'GET',
      path: '/api/stats',
      permission: 'audit.read',
      handle: ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const until = time(query, 'until_ms') ?? now();
        const since = time(query, 'since_ms') ?? until - 24 * HOUR;
        if (since >= until) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'since_ms must be before until_ms.');
        const bucket = time(query, 'bucket_ms') ?? Math.max(1_000, Math.ceil((until - since) / 60));
        if (bucket < 1_000) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'bucket_ms must be at least 1000.');
        const count = Math.ceil((until - since) / bucket);
        if (count > MAX_BUCKETS) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `That is ${count} buckets; at most ${MAX_BUCKETS} are returned.`);
        const rows = db
          .prepare(
            `SELECT CAST((ts - @since) / @bucket AS INTEGER) AS b, COALESCE(decision, 'none') AS decision, COUNT(*) AS n
               FROM audit_log
              WHERE ts >= @since AND ts < @until ${tenant === undefined ? '' : 'AND tenant = @tenant'}
              GROUP BY b, decision`,
          )
          .all({ since, until, bucket, ...(tenant !== undefined && { tenant }) }) as { b: number; decision: string; n: number }[];
        const zero = (): Counts => ({ allow: 0, deny: 0, escalate: 0, none: 0 });
        const buckets = Array.from({ length: count }, (_v, i) => ({ start_ms: since + i * bucket, ...zero() }));
        const totals = zero();
        for (const r of rows) {
          const d = (DECISIONS as readonly string[]).includes(r.decision) ? (r.decision as keyof Counts) : 'none';
          const slot = buckets[Math.floor(r.b)];
          if (slot === undefined) continue;
          slot[d] += r.n;
          totals[d] += r.n;
        }
        return { json: { since_ms: since, until_ms: until, bucket_ms: bucket, tenant: tenant ?? null, totals, buckets } };
      },
    },
  ];
}

function time(query: URLSearchParams, name: string): number | undefined {
  const v = query.get(name);
  if (v === null || v === '') return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `${name} must be a non-negative integer (milliseconds).`);
  return n;
}
