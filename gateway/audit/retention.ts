import type { AuditSettings } from '../config/types.js';
import type { RetentionCutoffs } from './port.js';

const DAY_MS = 86_400_000;

/**
 * The cutoffs `gateway.audit.retention_days` and `tenant_retention_days` give at `now`, or
 * undefined when nothing is ever deleted. A tenant override applies to that tenant's rows; every
 * other row (other tenants, and requests refused before a tenant was known) follows the default.
 */
export function retentionCutoffs(
  s: Pick<AuditSettings, 'retentionDays' | 'tenantRetentionDays'>,
  now: number = Date.now(),
): RetentionCutoffs | undefined {
  const tenants = Object.entries(s.tenantRetentionDays);
  if (s.retentionDays === undefined && tenants.every(([, d]) => d === null)) return undefined;
  return {
    defaultBefore: s.retentionDays === undefined ? null : now - s.retentionDays * DAY_MS,
    tenantBefore: Object.fromEntries(tenants.map(([t, d]) => [t, d === null ? null : now - d * DAY_MS])),
  };
}
