import type { ApprovalStore } from './port.js';
import { openSqliteApprovalStore } from './sqlite/store.js';

/** Where the approvals backend keeps its state. */
export interface ApprovalBackendSettings {
  /** The data directory: the embedded backend's `approvals.db` lives here. */
  readonly dataDir: string;
}

/**
 * Opens the configured approvals backend: the one place that names an implementation of the
 * {@link ApprovalStore} port, so the service, the admin plane and the CLI never see a driver.
 * Asynchronous because a networked backend connects and migrates before it answers.
 */
export async function openApprovalBackend(settings: ApprovalBackendSettings): Promise<ApprovalStore> {
  return openSqliteApprovalStore(settings.dataDir);
}
