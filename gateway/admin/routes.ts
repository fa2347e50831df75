import type { AuditLog } from '../audit/port.js';
import type { PolicyHolder } from '../policy/reload.js';
import type { Metrics } from './metrics.js';
import type { AdminProbe, AdminRoute } from './server.js';

export interface AdminRouteDeps {
  readonly audit: AuditLog;
  readonly policies: PolicyHolder;
  /** Audit rows queued and not yet written. */
  readonly auditPending: () => number;
  /** The gateway's own audit writer is committing (the audit writer's `busy`). */
  readonly auditWriterBusy?: () => boolean;
  readonly metrics: Metrics;
  /** Why the counters backend cannot serve (Redis down), or undefined. */
  readonly countersProblem?: () => string | undefined;
  /** Why shared approvals or the shared secret store cannot serve (PostgreSQL unreachable), or undefined. */
  readonly approvalsProblem?: () => string | undefined;
  readonly secretsProblem?: () => string | undefined;
}

export function adminRoutes(d: AdminRouteDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/whoami',
      permission: 'policy.read',
      handle: ({ who }) => ({ json: { subject: who.subject, tenant: who.tenant ?? null, roles: who.roles, permissions: [...who.permissions] } }),
    },
    {
      method: 'GET',
      path: '/api/policy',
      permission: 'policy.read',
      handle: () => {
        const s = d.policies.status();
        return {
          json: {
            version: s.version,
            loaded_at: new Date(s.loadedAt).toISOString(),
            last_reload_error: s.lastError === undefined ? null : { at: new Date(s.lastError.at).toISOString(), message: s.lastError.message },
          },
        };
      },
    },
  ];
}

/**
 * `/healthz`: the process answers. `/metrics`: Prometheus text format, unauthenticated as scrapers
 * expect (counts and timings by upstream and decision; no identities, no secrets). `/readyz`: it can do its job — the audit database takes a write
 * lock at once (another process holding it, a read-only file or a missing file all fail), a
 * policy is loaded, the counters backend answers (Redis connected, when counters live there), and
 * shared approvals and secrets are connected (PostgreSQL: each store's notification connection is
 * up, and the secret store's last reload worked). A refused reload does not make the gateway
 * unready (the previous policy is still enforced) but is reported.
 */
export function adminProbes(d: AdminRouteDeps): AdminProbe[] {
  return [
    { path: '/healthz', handle: () => ({ status: 200, contentType: 'application/json', body: '{"status":"ok"}' }) },
    {
      path: '/metrics',
      handle: async () => ({ status: 200, contentType: d.metrics.registry.contentType, body: await d.metrics.registry.metrics() }),
    },
    {
      path: '/readyz',
      handle: async () => {
        // The write lock held by this gateway's own writer, mid-commit, is not a database that cannot be written.
        const probed = await d.audit.writable();
        const database = probed === 'SQLITE_BUSY' && d.auditWriterBusy?.() === true ? 'ok' : probed;
        const s = d.policies.status();
        const counters = d.countersProblem?.() ?? 'ok';
        const approvals = d.approvalsProblem?.() ?? 'ok';
        const secrets = d.secretsProblem?.() ?? 'ok';
        const ready = database === 'ok' && counters === 'ok' && approvals === 'ok' && secrets === 'ok';
        const body = {
          ready,
          checks: {
            database,
            counters,
            approvals,
            secrets,
            audit_queue: d.auditPending(),
            policy: { version: s.version, last_reload_error: s.lastError?.message ?? null },
          },
        };
        return { status: ready ? 200 : 503, contentType: 'application/json', body: JSON.stringify(body) };
      },
    },
  ];
}
