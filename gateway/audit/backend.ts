import type { AuditLog } from './port.js';
import { openSqliteAuditLog } from './sqlite/log.js';

/** Where the audit log lives and how a process other than its writer opens it. */
export interface AuditBackendSettings {
  readonly dataDir: string;
  /** Reading only (queries, verify, export, ship); otherwise retention may delete rows too. */
  readonly readonly?: boolean;
  /** Create the log when there is none (the gateway at start); otherwise a missing log is undefined. */
  readonly create?: boolean;
  /** How long a write waits for the writer's lock before failing (ms). */
  readonly busyTimeoutMs?: number;
}

/**
 * The one place an audit log implementation is chosen, for the gateway's read side (admin API,
 * dashboard) and for the CLI. Today that is the embedded SQLite database in the data directory.
 */
export function openAuditBackend(settings: AuditBackendSettings & { readonly create: true }): Promise<AuditLog>;
export function openAuditBackend(settings: AuditBackendSettings): Promise<AuditLog | undefined>;
export async function openAuditBackend(settings: AuditBackendSettings): Promise<AuditLog | undefined> {
  const { dataDir, ...options } = settings;
  return openSqliteAuditLog(dataDir, options);
}
