import type { Environment, SecretSourceSetting } from '../config/types.js';
import { envSecretSource } from './env.js';
import { fileSecretSource } from './files.js';
import { resolveMasterKey } from './master-key.js';
import { chainSources, type NamedSecretSource, type SecretSource } from './source.js';
import { openSecretStore, type SecretStore } from './store.js';

/** The configured sources, when `gateway.secrets.sources` is not given. */
export const DEFAULT_SOURCES: readonly SecretSourceSetting[] = [{ kind: 'store' }, { kind: 'env' }];

export interface SecretSourcesOptions {
  readonly settings: readonly SecretSourceSetting[];
  /** Every secret the upstreams' credentials name (the environment source reads only these). */
  readonly names: readonly string[];
  readonly dataDir: string;
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
  /** Names no source has, in any tenant; logged at start. */
  readonly missing: readonly string[];
  /** Records last-used times and closes the store. */
  close(): void;
}

/**
 * Builds the secret sources the gateway uses, in the configured order. Opening the store checks
 * the master key (a wrong or missing key throws `VALET_ERR_MASTER_KEY` before anything listens)
 * and decrypts the current values into memory.
 */
export function createSecretSources(o: SecretSourcesOptions): SecretSources {
  const sources: NamedSecretSource[] = [];
  let store: SecretStore | undefined;
  try {
    for (const setting of o.settings) {
      if (setting.kind === 'env') sources.push(envSecretSource(o.names, o.env));
      else if (setting.kind === 'files') sources.push(fileSecretSource(setting.dir));
      else sources.push((store = openGatewayStore(o)));
    }
  } catch (err) {
    store?.close();
    throw err;
  }
  const missing = [...new Set(o.names)].filter((name) => !sources.some((s) => s.has(name)));
  if (missing.length > 0) {
    o.log.warn({ missing }, 'upstream credentials not set; requests to those upstreams are refused (503)');
  }
  return { source: chainSources(sources), store, missing, close: () => store?.close() };
}

function openGatewayStore(o: SecretSourcesOptions): SecretStore {
  // Open without a key first: whether the store is empty decides if a development key may be generated.
  const probe = openSecretStore(o.dataDir);
  let resolved;
  try {
    resolved = resolveMasterKey({ env: o.env, dataDir: o.dataDir, environment: o.environment, storeIsEmpty: () => probe.isEmpty(), generate: true });
  } finally {
    probe.close();
  }
  if (resolved === undefined) throw new TypeError('unreachable: a master key is generated when none is configured');
  if (resolved.created) {
    o.log.warn(
      { file: resolved.source },
      'generated a development master key for the secret store; set VALET_MASTER_KEY or VALET_MASTER_KEY_FILE in production',
    );
  }
  const store = openSecretStore(o.dataDir, { key: resolved.key, usageFlushMs: 60_000, busyTimeoutMs: 250, log: o.log });
  const { secrets, corrupt } = store.refresh();
  o.log.info({ file: store.file, keyId: resolved.key.id, secrets, corrupt }, 'secret store open');
  return store;
}
