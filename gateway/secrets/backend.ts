import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Environment } from '../config/types.js';
import { resolveMasterKey, type ResolvedMasterKey } from './master-key.js';
import type { SecretStore, SecretStoreOptions } from './port.js';
import { openSqliteSecretStore, SECRETS_FILE } from './sqlite/store.js';

/** Where the secret store keeps its state. */
export interface SecretBackendSettings {
  /** The data directory: the embedded backend's `secrets.db` lives here (and a generated development master key). */
  readonly dataDir: string;
}

/**
 * Opens the configured secret store: the one place that names an implementation of the
 * {@link SecretStore} port, so the gateway, the admin plane and the CLI never see a driver.
 * Verifies `options.key` if one is given (VALET_ERR_MASTER_KEY when it is not the store's).
 */
export async function openSecretBackend(settings: SecretBackendSettings, options: SecretStoreOptions = {}): Promise<SecretStore> {
  return openSqliteSecretStore(settings.dataDir, options);
}

/** Whether a store exists yet, so that reading commands (`valet secrets list`) create nothing. */
export async function secretBackendExists(settings: SecretBackendSettings): Promise<boolean> {
  return existsSync(join(settings.dataDir, SECRETS_FILE));
}

export interface KeyedSecretBackendOptions extends Omit<SecretStoreOptions, 'key'> {
  readonly env: NodeJS.ProcessEnv;
  readonly environment: Environment;
}

/**
 * Opens the store with the master key the gateway uses (see `resolveMasterKey`). Generating a
 * development key is allowed only outside production and only while the store is empty, which is
 * why the store is first opened without a key and asked.
 */
export async function openKeyedSecretBackend(
  settings: SecretBackendSettings,
  o: KeyedSecretBackendOptions,
): Promise<{ store: SecretStore; resolved: ResolvedMasterKey }> {
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
