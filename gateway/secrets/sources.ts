import type { Environment, PostgresSetting, SecretSourceSetting, StateBackend } from '../config/types.js';
import { envSecretSource } from './env.js';
import { fileSecretSource } from './files.js';
import { openKeyedSecretBackend, secretBackendSettings } from './backend.js';
import type { SecretStore } from './port.js';
import type { MasterKey } from './crypto.js';
import { chainSources, type NamedSecretSource, type SecretSource } from './source.js';

/** The configured sources, when `gateway.secrets.sources` is not given. */
export const DEFAULT_SOURCES: readonly SecretSourceSetting[] = [{ kind: 'store' }, { kind: 'env' }];

export interface SecretSourcesOptions {
  readonly settings: readonly SecretSourceSetting[];
  /** Every secret the upstreams' credentials name (the environment source reads only these). */
  readonly names: readonly string[];
  readonly dataDir: string;
  /** `gateway.secrets` backend choice (`VALET_POSTGRES_URL` overrides it); absent: SQLite. */
  readonly backend?: { readonly backend?: StateBackend; readonly postgres?: PostgresSetting } | undefined;
  readonly env: NodeJS.ProcessEnv;
  readonly environment: Environment;
  readonly log: {
    info(obj: object, msg: string): void;
    warn(obj: object, msg: string): void;
    error(obj: object, msg: string): void;
  };
}

export interface SecretSources {
  /** What the request path asks: each source in the configured order. */
  readonly source: SecretSource;
  /** The encrypted store, when it is one of the sources (for its operations and for closing). */
  readonly store: SecretStore | undefined;
  /** The master key the store was opened with (it also seals the audit rows' request facts); undefined without the store. */
  readonly masterKey: MasterKey | undefined;
  /** Names no source has, in any tenant; logged at start. */
  readonly missing: readonly string[];
  /** Records last-used times and closes the store. */
  close(): Promise<void>;
}

/**
 * Builds the secret sources the gateway uses, in the configured order. Opening the store checks
 * the master key (a wrong or missing key throws `VALET_ERR_MASTER_KEY` before anything listens)
 * and decrypts the current values into memory.
 */
export async function createSecretSources(o: SecretSourcesOptions): Promise<SecretSources> {
  const sources: NamedSecretSource[] = [];
  let store: SecretStore | undefined;
  let masterKey: MasterKey | undefined;
  try {
    for (const setting of o.settings) {
      if (setting.kind === 'env') sources.push(envSecretSource(o.names, o.env));
      else if (setting.kind === 'files') sources.push(fileSecretSource(setting.dir));
      else {
        ({ store, key: masterKey } = await openGatewayStore(o));
        sources.push(store);
      }
    }
  } catch (err) {
    await store?.close();
    throw err;
  }
  const missing = [...new Set(o.names)].filter((name) => !sources.some((s) => s.has(name)));
  if (missing.length > 0) {
    o.log.warn({ missing }, 'upstream credentials not set; requests to those upstreams are refused (503)');
  }
  return { source: chainSources(sources), store, masterKey, missing, close: async () => store?.close() };
}

async function openGatewayStore(o: SecretSourcesOptions): Promise<{ store: SecretStore; key: MasterKey }> {
  const { store, resolved } = await openKeyedSecretBackend(
    secretBackendSettings(o.dataDir, o.backend, o.env),
    { env: o.env, environment: o.environment, usageFlushMs: 60_000, busyTimeoutMs: 250, log: o.log },
  );
  try {
    if (resolved.created) {
      o.log.warn(
        { file: resolved.source },
        'generated a development master key for the secret store; set VALET_MASTER_KEY or VALET_MASTER_KEY_FILE in production',
      );
    }
    const { secrets, corrupt } = await store.refresh();
    o.log.info({ file: store.location, keyId: resolved.key.id, secrets, corrupt }, 'secret store open');
    // Another writer's change (`valet secrets rotate`, another instance) reaches requests without a restart.
    store.onChange((stats) => o.log.info({ file: store.location, ...stats }, 'secret store changed; values reloaded'));
    return { store, key: resolved.key };
  } catch (err) {
    await store.close();
    throw err;
  }
}
