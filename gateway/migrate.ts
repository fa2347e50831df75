import { postgresSettings } from './audit/backend.js';
import { createPool, migrate as migrateAudit } from './audit/postgres/schema.js';
import { migrateApprovals } from './approvals/postgres/store.js';
import { DEFAULT_APPROVAL_SETTINGS, DEFAULT_AUDIT, type Config } from './config/types.js';
import { postgresUrlFor, urlSchema } from './postgres.js';
import { migrateSecrets } from './secrets/postgres/store.js';

/** What `valet migrate` did for one kind of state. */
export interface Migrated {
  readonly kind: 'audit log' | 'approvals' | 'secrets';
  /** Where: the PostgreSQL schema (audit) or `search_path` of the URL; never the URL itself. */
  readonly where: string;
}

/**
 * Creates or upgrades the PostgreSQL schemas of the shared backends the configuration (and
 * `VALET_POSTGRES_URL`) selects, each under its advisory lock, so it is safe beside instances that
 * are starting. Every store also does this when it opens; this runs it on its own, for a deploy step
 * before the instances start. SQLite files migrate when they are opened, so nothing is done for them.
 */
export async function migrateSharedBackends(config: Pick<Config, 'gateway'>, env: NodeJS.ProcessEnv): Promise<Migrated[]> {
  const g = config.gateway;
  const done: Migrated[] = [];
  const audit = postgresSettings(g.audit ?? DEFAULT_AUDIT, env);
  if (audit !== undefined) {
    const pool = createPool(audit);
    try {
      await migrateAudit(pool, audit.schema ?? 'public');
    } finally {
      await pool.end();
    }
    done.push({ kind: 'audit log', where: `schema ${audit.schema ?? 'public'}` });
  }
  const approvals = g.approvals ?? DEFAULT_APPROVAL_SETTINGS;
  const approvalsUrl = postgresUrlFor('gateway.approvals', approvals.backend, approvals.postgres.url, env);
  if (approvalsUrl !== undefined) {
    await migrateApprovals(approvalsUrl);
    done.push({ kind: 'approvals', where: searchPath(approvalsUrl) });
  }
  const secretsUrl = postgresUrlFor('gateway.secrets', g.secrets?.backend, g.secrets?.postgres?.url, env);
  if (secretsUrl !== undefined) {
    await migrateSecrets(secretsUrl);
    done.push({ kind: 'secrets', where: searchPath(secretsUrl) });
  }
  return done;
}

/** Where a URL's tables go, for messages (a URL may hold a password, so it is never shown). */
function searchPath(url: string): string {
  const schema = urlSchema(url);
  return schema === undefined ? 'the default search_path' : `schema ${schema}`;
}
