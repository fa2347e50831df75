import type { AuditSettings } from '../config/types.js';
import { urlSchema } from '../postgres.js';
import type { AuditLog } from './port.js';
import type { PgAuditSettings } from './postgres/schema.js';
import { openPgAuditLog } from './postgres/log.js';
import { openSqliteAuditLog } from './sqlite/log.js';

/** Where the audit log lives and how a process other than its writer opens it. */
export interface AuditBackendSettings {
  readonly dataDir: string;
  /** The log on PostgreSQL instead of the data directory (see {@link postgresSettings}). */
  readonly postgres?: PgAuditSettings | undefined;
  /** Reading only (queries, verify, export, ship); otherwise retention may delete rows too. */
  readonly readonly?: boolean;
  /** Create the log when there is none (the gateway at start); otherwise a missing log is undefined. */
  readonly create?: boolean;
  /** How long a write waits for the writer's lock before failing (ms). */
  readonly busyTimeoutMs?: number;
}

/**
 * The PostgreSQL settings when the log is there, else undefined (SQLite): `VALET_POSTGRES_URL`
 * overrides `gateway.audit.postgres.url` and selects PostgreSQL whatever `gateway.audit.backend` says.
 */
export function postgresSettings(audit: Pick<AuditSettings, 'backend' | 'postgres'>, env: Readonly<Record<string, string | undefined>>): PgAuditSettings | undefined {
  const fromEnv = env['VALET_POSTGRES_URL'];
  const url = fromEnv !== undefined && fromEnv !== '' ? fromEnv : audit.backend === 'postgres' ? audit.postgres.url : undefined;
  if (url === undefined) {
    if (audit.backend === 'postgres') throw new Error('gateway.audit.backend is postgres but neither gateway.audit.postgres.url nor VALET_POSTGRES_URL is set');
    return undefined;
  }
  // The URL's search_path, as approvals and secrets use it, unless the audit schema is set apart.
  return { url, schema: audit.postgres.schema ?? urlSchema(url) };
}

/**
 * The one place an audit log implementation is chosen, for the gateway's read side (admin API,
 * dashboard) and for the CLI: PostgreSQL when `postgres` is given, else the embedded SQLite database
 * in the data directory.
 */
export function openAuditBackend(settings: AuditBackendSettings & { readonly create: true }): Promise<AuditLog>;
export function openAuditBackend(settings: AuditBackendSettings): Promise<AuditLog | undefined>;
export async function openAuditBackend(settings: AuditBackendSettings): Promise<AuditLog | undefined> {
  const { dataDir, postgres, ...options } = settings;
  if (postgres !== undefined) return openPgAuditLog(postgres, { ...(options.create !== undefined && { create: options.create }) });
  return openSqliteAuditLog(dataDir, options);
}
