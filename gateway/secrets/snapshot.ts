import { ValetError } from '../errors.js';
import { open, seal, type MasterKey, type Sealed } from './crypto.js';
import { describeSecret } from './validate.js';
import type { SecretInfo, SnapshotStats, StoreLog } from './port.js';

/** A secret as every store keeps it: one row per (tenant, name), its current version. */
export interface SecretRow {
  id: number;
  tenant: string | null;
  name: string;
  version: number;
  created_at: number;
  rotated_at: number | null;
  last_used_at: number | null;
}

/** One sealed value of a secret. */
export interface VersionRow extends Sealed {
  secret_id: number;
  version: number;
}

/** A decrypted current value; `value` undefined means it failed its integrity check. */
interface Entry {
  readonly id: number;
  readonly value: string | undefined;
}

interface ByName {
  shared: Entry | undefined;
  readonly tenants: Map<string, Entry>;
}

/**
 * The decrypted current values the request path reads, whichever store they come from: built
 * once per (re)load, looked up per request without a query.
 */
export class SecretSnapshot {
  static readonly EMPTY = new SecretSnapshot(new Map());

  private constructor(private readonly byName: ReadonlyMap<string, ByName>) {}

  /**
   * Opens every current version with `key`. A value that fails its integrity check is kept as
   * corrupt (its requests are refused with 503) and logged by name, tenant and version, never value.
   */
  static decrypt(key: MasterKey, secrets: readonly SecretRow[], versions: readonly VersionRow[], log: StoreLog | undefined): SecretSnapshot {
    const sealed = new Map(versions.map((v) => [v.secret_id, v]));
    const next = new Map<string, ByName>();
    for (const s of secrets) {
      let value: string | undefined;
      const v = sealed.get(s.id);
      try {
        if (v === undefined) throw new ValetError('VALET_ERR_CREDENTIAL_CORRUPT');
        value = open(key, v, { tenant: s.tenant, name: s.name, version: s.version });
      } catch {
        log?.error({ secretName: s.name, tenant: s.tenant, version: s.version }, 'a stored secret failed its integrity check; requests that need it are refused (503)');
      }
      let byName = next.get(s.name);
      if (byName === undefined) next.set(s.name, (byName = { shared: undefined, tenants: new Map() }));
      const entry = { id: s.id, value };
      if (s.tenant === null) byName.shared = entry;
      else byName.tenants.set(s.tenant, entry);
    }
    return new SecretSnapshot(next);
  }

  /** The tenant's value, else the shared one; undefined when neither exists. */
  entry(name: string, tenant: string | undefined): Entry | undefined {
    const byName = this.byName.get(name);
    if (byName === undefined) return undefined;
    return (tenant === undefined ? undefined : byName.tenants.get(tenant)) ?? byName.shared;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  stats(): SnapshotStats {
    let secrets = 0;
    let corrupt = 0;
    for (const byName of this.byName.values()) {
      for (const e of [byName.shared, ...byName.tenants.values()]) {
        if (e === undefined) continue;
        secrets++;
        if (e.value === undefined) corrupt++;
      }
    }
    return { secrets, corrupt };
  }
}

/** What the admin plane and the CLI show of a secret: never its value. */
export function secretInfo(r: SecretRow): SecretInfo {
  return { name: r.name, tenant: r.tenant, version: r.version, createdAt: r.created_at, rotatedAt: r.rotated_at, lastUsedAt: r.last_used_at };
}

/**
 * One version sealed again under `newKey` (`rekey`), or VALET_ERR_CREDENTIAL_CORRUPT when the old
 * key cannot open it: a rekey then writes nothing.
 */
export function reseal(oldKey: MasterKey, newKey: MasterKey, s: SecretRow, v: VersionRow): Sealed {
  const address = { tenant: s.tenant, name: s.name, version: v.version };
  let value: string;
  try {
    value = open(oldKey, v, address);
  } catch {
    throw new ValetError(
      'VALET_ERR_CREDENTIAL_CORRUPT',
      `${describeSecret(s.name, s.tenant)} version ${v.version} failed its integrity check; nothing was re-encrypted (remove that secret, then rekey)`,
    );
  }
  return seal(newKey, value, address);
}
