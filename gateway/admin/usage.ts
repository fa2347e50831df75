import { SPEND_KEYS, type AuditLog, type SpendKey } from '../audit/port.js';
import { budgetSpend, perTenant, publicBudget, publicSpend } from '../audit/spend.js';
import type { BudgetConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import { tenantScope } from './auth.js';
import { bucketSize, timeRange } from './insights.js';
import type { AdminRoute } from './server.js';

const DAY = 86_400_000;
/** Rows `/api/usage` returns at most (groups × buckets); `truncated` says when there were more. */
const MAX_ROWS = 10_000;

/** What the usage routes read: the audit log, the budgets of the configuration in force, the price table's currency. */
export interface UsageRouteDeps {
  readonly audit: AuditLog;
  /** Read per request: a policy reload may change them. */
  readonly budgets: () => readonly BudgetConfig[];
  readonly currency: string;
}

/** The `by` query parameter: one of {@link SPEND_KEYS}, `agent` by default. */
function spendKey(value: string | null): SpendKey {
  const by = value ?? 'agent';
  if (!(SPEND_KEYS as readonly string[]).includes(by)) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `by must be one of ${SPEND_KEYS.join(', ')}.`);
  return by as SpendKey;
}

/**
 * LLM spend for the dashboard and scripts, from the audit log's metered calls: `/api/usage` adds
 * up tokens and cost per agent, team, tenant, user, model or upstream (and per time bucket);
 * `/api/budgets` lists the usage budgets in force with what each counter settled to over its
 * window. A tenant admin sees its tenant's calls only, as in the other audit views.
 */
export function usageRoutes(d: UsageRouteDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/usage',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const by = spendKey(query.get('by'));
        const { since, until } = timeRange(query, Date.now(), 7 * DAY);
        const bucket = bucketSize(query, since, until);
        const rows = await d.audit.spend({ sinceMs: since, untilMs: until, tenant, by, perTenant: perTenant(by), bucketMs: bucket, limit: MAX_ROWS });
        return {
          json: {
            currency: d.currency,
            by,
            since_ms: since,
            until_ms: until,
            bucket_ms: bucket ?? null,
            tenant: tenant ?? null,
            truncated: rows.length === MAX_ROWS,
            rows: rows.map((r) => ({ ...publicSpend(r), ...(bucket !== undefined && { start_ms: since + (r.bucket ?? 0) * bucket }) })),
          },
        };
      },
    },
    {
      method: 'GET',
      path: '/api/budgets',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const budgets = await budgetSpend(d.audit, d.budgets(), { now: Date.now(), tenant });
        return {
          json: {
            currency: d.currency,
            tenant: tenant ?? null,
            budgets: budgets.map(publicBudget),
          },
        };
      },
    },
  ];
}
