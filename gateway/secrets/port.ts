import type { MasterKey } from './crypto.js';
import type { NamedSecretSource } from './source.js';
import type { GrantStore } from './grants.js';

/** What `list` shows about a secret: never its value. Times are milliseconds since the epoch. */
export interface SecretInfo {
  readonly name: string;
  /** `null`: shared by every tenant. */
  readonly tenant: string | null;
  readonly version: number;
  readonly createdAt: number;
  readonly rotatedAt: number | null;
  /** Recorded by the gateway at most once a minute per secret, so up to a minute behind. */
  readonly lastUsedAt: number | null;
}

export interface ImportResult {
  readonly created: string[];
  readonly rotated: string[];
  readonly unchanged: string[];
  /** Reserved `VALET_*` names in the file, which are gateway settings and were not imported. */
  readonly skipped: string[];
}

export interface RekeyResult {
  readonly secrets: number;
  readonly versions: number;
  /** Credential grants (obtained tokens) sealed again. */
  readonly grants: number;
  readonly oldKeyId: string;
  readonly newKeyId: string;
}

/** What a loaded snapshot holds: how many secrets, and how many of them failed their integrity check. */
export interface SnapshotStats {
  readonly secrets: number;
  readonly corrupt: number;
}

/** What the store reports to the gateway's log. Objects hold names and tenants, never values. */
export interface StoreLog {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** How an implementation is opened; every implementation accepts these. */
export interface SecretStoreOptions {
  /** Needed for everything but `list`, `remove` and `isEmpty`. The key itself is never stored. */
  readonly key?: MasterKey | undefined;
  /** At most how long (ms) another writer's change takes to reach `get`. Default 1000. */
  readonly refreshMs?: number;
  /** Record last-used times, written at most once per this many ms (the gateway: 60000). Off by default. */
  readonly usageFlushMs?: number | undefined;
  /** How long a write may wait for another writer; the gateway keeps it short so a CLI write never stalls requests. Default 5000. */
  readonly busyTimeoutMs?: number;
  readonly log?: StoreLog | undefined;
}

/**
 * The secret store port: upstream credentials at rest, each version sealed with AES-256-GCM under
 * the master key (crypto.ts), which the caller holds and no implementation ever writes down. The
 * gateway, the admin plane and the CLI depend on this; `secrets/backend.ts` chooses the
 * implementation (`secrets/sqlite/`, or `secrets/postgres/` for a fleet).
 *
 * Two sides: the request path reads `get`, a synchronous lookup in a decrypted in-memory snapshot;
 * the operations (CLI, admin API) are asynchronous, each write all or nothing. A write through
 * this object is seen by the next `get`; a write by another process or instance within
 * `refreshMs`, and `onChange` is told when such a change replaced the snapshot.
 */
export interface SecretStore extends NamedSecretSource {
  /** Where the store is, for messages and the start-up log (a file path; never a credential). */
  readonly location: string;
  /** Tokens Valet obtained (access, refresh, users' connected accounts), sealed under the same key. */
  readonly grants: GrantStore;
  /**
   * The current value for an agent of `tenant`: that tenant's secret, else the shared one; never
   * another tenant's. A caller keeps the string it got, so a request in flight is not affected by
   * a rotation. Throws `VALET_ERR_CREDENTIAL_CORRUPT` for a secret that exists but failed its
   * integrity check (it does not fall back to the shared one).
   */
  get(name: string, tenant: string | undefined): string | undefined;
  /** Whether the loaded snapshot has `name` for any tenant (or shared). */
  has(name: string): boolean;
  /** Loads the snapshot now (the gateway does this at start). */
  refresh(): Promise<SnapshotStats>;
  /**
   * Tells `listener` each time the snapshot was reloaded because the store changed — a write here
   * or by another process or instance. Returns the unsubscribe function.
   */
  onChange(listener: (stats: SnapshotStats) => void): () => void;
  /** Writes the last-used times gathered since the last flush (also on close). */
  flushUsage(): Promise<void>;
  /** True when no secret is stored (a fresh store may get a generated development key). */
  isEmpty(): Promise<boolean>;
  /** Rejects with VALET_ERR_MASTER_KEY unless `key` is the key the values were written with (an empty store accepts any). */
  verifyKey(key: MasterKey): Promise<void>;
  /** Every secret's metadata (`tenant`: undefined all, null shared only, a string that tenant's), by name. */
  list(filter?: { tenant?: string | null | undefined }): Promise<SecretInfo[]>;
  /** Creates a secret (version 1). Refuses a name that already exists for that tenant. */
  set(name: string, tenant: string | null, value: string): Promise<SecretInfo>;
  /** Gives an existing secret a new version; earlier versions are kept (encrypted) until `remove`. */
  rotate(name: string, tenant: string | null, value: string): Promise<SecretInfo>;
  /** Deletes a secret and every version of it. */
  remove(name: string, tenant: string | null): Promise<void>;
  /**
   * Imports `NAME=value` lines (see `parseSecretsFile`) for one tenant or shared: new names are
   * created, changed values rotated, equal values left alone; any problem writes nothing.
   */
  importText(text: string, tenant: string | null): Promise<ImportResult>;
  /** Re-encrypts every version of every secret under `newKey`, all or nothing; afterwards only `newKey` opens the store. */
  rekey(newKey: MasterKey): Promise<RekeyResult>;
  /** A shared store: why it cannot serve now (for `/readyz`), undefined when it can. */
  problem?(): string | undefined;
  close(): Promise<void>;
}
