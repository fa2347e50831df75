import type { ApprovalStore } from './port.js';
import { openPgApprovalStore } from './postgres/store.js';
import { openSqliteApprovalStore } from './sqlite/store.js';
import { instanceId } from '../instance.js';

/** Where the approvals backend keeps its state. */
export interface ApprovalBackendSettings {
  /** The data directory: the embedded backend's `approvals.db` lives here (and this instance's id). */
  readonly dataDir: string;
  /** Set: approvals are kept in this PostgreSQL database, shared by a fleet (see `postgresUrlFor`). */
  readonly postgresUrl?: string | undefined;
  /** `VALET_INSTANCE_ID`, if the environment names this instance. */
  readonly env?: NodeJS.ProcessEnv | undefined;
  /** A shared backend's connection problems (never a URL or a password). */
  readonly onError?: ((problem: string) => void) | undefined;
}

/**
 * Opens the configured approvals backend: the one place that names an implementation of the
 * {@link ApprovalStore} port, so the service, the admin plane and the CLI never see a driver.
 * Asynchronous because a networked backend connects and migrates before it answers.
 */
export async function openApprovalBackend(settings: ApprovalBackendSettings): Promise<ApprovalStore> {
  if (settings.postgresUrl === undefined) return openSqliteApprovalStore(settings.dataDir);
  return openPgApprovalStore({
    url: settings.postgresUrl,
    instanceId: instanceId(settings.dataDir, settings.env),
    onError: settings.onError ?? (() => undefined),
  });
}
