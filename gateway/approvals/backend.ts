import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ApprovalStore } from './port.js';
import { openPgApprovalStore } from './postgres/store.js';
import { openSqliteApprovalStore } from './sqlite/store.js';
import { privateDir } from '../private-files.js';
import { ValetError } from '../errors.js';

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

/** The file holding this instance's id in its data directory. */
export const INSTANCE_ID_FILE = 'instance-id';
const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * This instance's id, stable across its restarts: `VALET_INSTANCE_ID`, else one generated once into
 * `<dataDir>/instance-id`. A fleet's instances each have their own data directory, so a restarting
 * instance aborts the requests it was holding and no other instance's.
 */
export function instanceId(dataDir: string, env: NodeJS.ProcessEnv = {}): string {
  const fromEnv = env['VALET_INSTANCE_ID'];
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!INSTANCE_ID.test(fromEnv)) throw new ValetError('VALET_ERR_CONFIG', 'VALET_INSTANCE_ID must be 1 to 128 letters, digits, ".", "_", ":" or "-"');
    return fromEnv;
  }
  const file = join(dataDir, INSTANCE_ID_FILE);
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  privateDir(dataDir);
  const id = `vi_${randomBytes(12).toString('base64url')}`;
  try {
    writeFileSync(file, `${id}\n`, { mode: 0o600, flag: 'wx' });
    return id;
  } catch (err) {
    // Another process of this instance created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readFileSync(file, 'utf8').trim();
    throw err;
  }
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
