import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Environment, PostgresSetting, StateBackend } from '../config/types.js';
import { ValetError } from '../errors.js';
import { postgresUrlFor } from '../postgres.js';
import { secretVariable } from './variable.js';
import { resolveMasterKey, type ResolvedMasterKey } from './master-key.js';
import type { SecretStore, SecretStoreOptions } from './port.js';
import { openPgSecretStore } from './postgres/store.js';
import { openSqliteSecretStore, SECRETS_FILE } from './sqlite/store.js';

/** Where the secret store keeps its state. */
export interface SecretBackendSettings {
  /** The data directory: the embedded backend's `secrets.db` lives here (and a generated development master key). */
  readonly dataDir: string;
  /** Set: the ciphertexts are kept in this PostgreSQL database, shared by a fleet (see `postgresUrlFor`). */
  readonly postgresUrl?: string | undefined;
}

/**
 * The backend `gateway.secrets` names, with `VALET_POSTGRES_URL` overriding it (and selecting
 * PostgreSQL). Throws a `ConfigError` for `backend: postgres` without a URL.
 */
export function secretBackendSettings(dataDir: string, settings: { backend?: StateBackend; postgres?: PostgresSetting } | undefined, env: NodeJS.ProcessEnv): SecretBackendSettings {
  return { dataDir, postgresUrl: postgresUrlFor('gateway.secrets', settings?.backend, settings?.postgres?.url, env) };
}

/**
 * Opens the configured secret store: the one place that names an implementation of the
 * {@link SecretStore} port, so the gateway, the admin plane and the CLI never see a driver.
 * Verifies `options.key` if one is given (VALET_ERR_MASTER_KEY when it is not the store's).
 */
export async function openSecretBackend(settings: SecretBackendSettings, options: SecretStoreOptions = {}): Promise<SecretStore> {
  if (settings.postgresUrl !== undefined) return openPgSecretStore(settings.postgresUrl, options);
  return openSqliteSecretStore(settings.dataDir, options);
}

/**
 * Whether a store exists yet, so that reading commands (`valet secrets list`) create no file. A
 * PostgreSQL store is a server's: it is opened (and its tables created) like any other time.
 */
export async function secretBackendExists(settings: SecretBackendSettings): Promise<boolean> {
  if (settings.postgresUrl !== undefined) return true;
  return existsSync(join(settings.dataDir, SECRETS_FILE));
}

export interface KeyedSecretBackendOptions extends Omit<SecretStoreOptions, 'key'> {
  readonly env: NodeJS.ProcessEnv;
  readonly environment: Environment;
}

/**
 * Opens the store with the master key the gateway uses (see `resolveMasterKey`). Generating a
 * development key is allowed only outside production and only while the store is empty, which is
 * why the store is first opened without a key and asked. A PostgreSQL store never gets a generated key.
 */
export async function openKeyedSecretBackend(
  settings: SecretBackendSettings,
  o: KeyedSecretBackendOptions,
): Promise<{ store: SecretStore; resolved: ResolvedMasterKey }> {
  if (settings.postgresUrl !== undefined && secretVariable(o.env, 'VALET_MASTER_KEY', o.environment, 'VALET_ERR_MASTER_KEY') === undefined) {
    // Every instance of a fleet must open the shared store with the same key: none may make up its own.
    throw new ValetError(
      'VALET_ERR_MASTER_KEY',
      'no master key: a secret store in PostgreSQL is shared by every instance, which all need the same VALET_MASTER_KEY or VALET_MASTER_KEY_FILE (no development key is generated)',
    );
  }
  const probe = await openSecretBackend(settings);
  let empty: boolean;
  try {
    empty = await probe.isEmpty();
  } finally {
    await probe.close();
  }
  const { env, environment, ...options } = o;
  const resolved = resolveMasterKey({ env, dataDir: settings.dataDir, environment, storeIsEmpty: () => empty, generate: true });
  if (resolved === undefined) throw new TypeError('unreachable: a master key is generated when none is configured');
  return { store: await openSecretBackend(settings, { ...options, key: resolved.key }), resolved };
}
