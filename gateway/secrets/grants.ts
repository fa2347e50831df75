import { ValetError } from '../errors.js';
import { open, seal, type MasterKey, type Sealed, type SecretAddress } from './crypto.js';

/**
 * Credentials Valet obtains rather than is given: access tokens from a token endpoint, refresh
 * tokens (which rotate on use), a user's connected account. They live next to the static secrets,
 * sealed under the same master key, so a fleet shares them (one token request for all instances)
 * and a rotated refresh token is never lost or used twice.
 */

/** Whose credential for which upstream. `scope` tells apart several for one user (a subject token's digest, a pending connection). */
export interface GrantKey {
  readonly upstream: string;
  /** `null`: shared by every tenant. */
  readonly tenant: string | null;
  /** `null`: not a user's own account. */
  readonly user: string | null;
  readonly scope: string;
}

/** The secret part, sealed as one value. */
export interface GrantTokens {
  readonly accessToken?: string | undefined;
  readonly refreshToken?: string | undefined;
}

export type GrantStatus = 'active' | 'broken';

/** What is written: all of it replaces the previous version. */
export interface GrantWrite {
  readonly tokens: GrantTokens;
  /** When the access token stops being usable (ms since the epoch); `null`: unknown or no access token. */
  readonly expiresAt: number | null;
  readonly status: GrantStatus;
  /** Why a broken grant is broken: a message fit for admins (an OAuth error code, never a token). */
  readonly problem: string | null;
  /** A digest of the configured secret a refresh token was first taken from: a new one there starts over. */
  readonly seed: string | null;
}

/** What list views show of a grant: never a token. Times in ms since the epoch. */
export interface GrantInfo {
  readonly key: GrantKey;
  readonly version: number;
  readonly expiresAt: number | null;
  readonly refreshedAt: number;
  readonly createdAt: number;
  readonly status: GrantStatus;
  readonly problem: string | null;
  readonly hasRefreshToken: boolean;
}

export interface Grant extends GrantInfo {
  readonly tokens: GrantTokens;
  readonly seed: string | null;
}

export interface GrantFilter {
  readonly upstream?: string | undefined;
  /** undefined: every tenant; null: shared only. */
  readonly tenant?: string | null | undefined;
  readonly user?: string | undefined;
}

/**
 * The grant side of the secret store. Every write is compare-and-set on the version, so two
 * instances refreshing at once cannot both win, and a short lease lets one of them ask the token
 * endpoint while the others wait for its result instead of asking too (a rotating refresh token
 * used twice would revoke the grant at most authorization servers).
 */
export interface GrantStore {
  read(key: GrantKey): Promise<Grant | undefined>;
  /** Writes version `expected + 1` if the grant is at `expected` (0: absent); false when another write came first. Clears the lease. */
  write(key: GrantKey, value: GrantWrite, expected: number): Promise<boolean>;
  /** Takes the lease for `ms` if the grant is at `expected` (0: absent) and no live lease is held by another owner. */
  lease(key: GrantKey, expected: number, owner: string, ms: number): Promise<boolean>;
  /** Gives a lease back (after a failed request), so the next caller need not wait for it to run out. */
  release(key: GrantKey, owner: string): Promise<void>;
  /** Removes grants; `scope` undefined: every scope of that key. Returns how many went. */
  remove(key: Omit<GrantKey, 'scope'> & { readonly scope?: string }): Promise<number>;
  /** Metadata of the grants a filter selects (pending connections excluded), by upstream, tenant, user. */
  list(filter?: GrantFilter): Promise<GrantInfo[]>;
}

/** Scopes starting with this hold a connection waiting for its authorization code (state → PKCE verifier). */
export const PENDING_SCOPE = 'pending:';

/** A grant row as both backends store it: tenant and user '' for none. */
export interface GrantRow {
  readonly upstream: string;
  readonly tenant: string;
  readonly user: string;
  readonly scope: string;
  readonly version: number;
  readonly nonce: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
  readonly expires_at: number | string | null;
  readonly refreshed_at: number | string;
  readonly created_at: number | string;
  readonly status: string;
  readonly problem: string | null;
  readonly seed: string | null;
  readonly has_refresh: number | boolean;
}

/** Binds a grant's ciphertext to its key and version: a row copied elsewhere fails to open. */
function address(key: GrantKey, version: number): SecretAddress {
  return { tenant: key.tenant, name: JSON.stringify(['grant', key.upstream, key.user, key.scope]), version };
}

export function sealGrant(masterKey: MasterKey, key: GrantKey, version: number, tokens: GrantTokens): Sealed {
  return seal(masterKey, JSON.stringify({ a: tokens.accessToken, r: tokens.refreshToken }), address(key, version));
}

export function grantKeyOf(r: GrantRow): GrantKey {
  return { upstream: r.upstream, tenant: r.tenant === '' ? null : r.tenant, user: r.user === '' ? null : r.user, scope: r.scope };
}

export function grantInfo(r: GrantRow): GrantInfo {
  return {
    key: grantKeyOf(r),
    version: r.version,
    expiresAt: r.expires_at === null ? null : Number(r.expires_at),
    refreshedAt: Number(r.refreshed_at),
    createdAt: Number(r.created_at),
    status: r.status === 'broken' ? 'broken' : 'active',
    problem: r.problem,
    hasRefreshToken: r.has_refresh === true || r.has_refresh === 1,
  };
}

/** Opens a row; VALET_ERR_CREDENTIAL_CORRUPT when it fails its integrity check. */
export function openGrant(masterKey: MasterKey, r: GrantRow): Grant {
  const info = grantInfo(r);
  const plain = JSON.parse(open(masterKey, r, address(info.key, r.version))) as { a?: string; r?: string };
  return { ...info, tokens: { accessToken: plain.a, refreshToken: plain.r }, seed: r.seed };
}

/** The same row sealed under another master key (rekey); VALET_ERR_CREDENTIAL_CORRUPT if the old key cannot open it. */
export function resealGrant(oldKey: MasterKey, newKey: MasterKey, r: GrantRow): Sealed {
  let g: Grant;
  try {
    g = openGrant(oldKey, r);
  } catch {
    throw new ValetError('VALET_ERR_CREDENTIAL_CORRUPT', `the credential grant of upstream ${r.upstream} failed its integrity check; nothing was re-encrypted (revoke it, then rekey)`);
  }
  return sealGrant(newKey, g.key, r.version, g.tokens);
}

/** The row key of a grant key: tenant and user '' for none. */
export function rowKey(key: GrantKey): [string, string, string, string] {
  return [key.upstream, key.tenant ?? '', key.user ?? '', key.scope];
}

/**
 * Shared by both backends' migrations: the table, in each one's types, and the index a user's
 * connections are listed by (before each decision of an agent acting for that user).
 */
export function grantTableSql(blob: string, int: string, withoutRowid = ''): string {
  return `CREATE TABLE credential_grants (
     upstream     text    NOT NULL,
     tenant       text    NOT NULL,   -- '' shared by every tenant
     "user"       text    NOT NULL,   -- '' not a user's own account
     scope        text    NOT NULL,
     version      integer NOT NULL,
     nonce        ${blob} NOT NULL,
     ciphertext   ${blob} NOT NULL,
     tag          ${blob} NOT NULL,
     expires_at   ${int},
     refreshed_at ${int}  NOT NULL,
     created_at   ${int}  NOT NULL,
     status       text    NOT NULL,
     problem      text,
     seed         text,
     has_refresh  boolean NOT NULL,
     lease_owner  text,
     lease_until  ${int},
     PRIMARY KEY (upstream, tenant, "user", scope)
   )${withoutRowid};
   CREATE INDEX credential_grants_user ON credential_grants (tenant, "user");`;
}

/**
 * Grants held in this process only: for a gateway whose secrets come from the environment or
 * files, with no store. Tokens then last as long as the process, and each instance asks for its own.
 */
export function memoryGrants(): GrantStore {
  const rows = new Map<string, { g: Grant; leaseOwner?: string; leaseUntil?: number }>();
  const k = (key: GrantKey): string => JSON.stringify(rowKey(key));
  const matches = (g: GrantKey, f: GrantFilter): boolean =>
    !g.scope.startsWith(PENDING_SCOPE) && (f.upstream === undefined || g.upstream === f.upstream) && (f.tenant === undefined || g.tenant === f.tenant) && (f.user === undefined || g.user === f.user);
  return {
    async read(key) {
      const r = rows.get(k(key));
      return r === undefined || r.g.version === 0 ? undefined : r.g;
    },
    async write(key, w, expected) {
      const r = rows.get(k(key));
      if ((r?.g.version ?? 0) !== expected) return false;
      const now = Date.now();
      const g: Grant = {
        key,
        version: expected + 1,
        expiresAt: w.expiresAt,
        refreshedAt: now,
        createdAt: expected === 0 ? now : (r?.g.createdAt ?? now),
        status: w.status,
        problem: w.problem,
        hasRefreshToken: w.tokens.refreshToken !== undefined,
        tokens: w.tokens,
        seed: w.seed,
      };
      rows.set(k(key), { g });
      return true;
    },
    async lease(key, expected, owner, ms) {
      const now = Date.now();
      const r = rows.get(k(key));
      if ((r?.g.version ?? 0) !== expected) return false;
      if (r !== undefined && r.leaseUntil !== undefined && r.leaseUntil > now && r.leaseOwner !== owner) return false;
      const g = r?.g ?? { key, version: 0, expiresAt: null, refreshedAt: now, createdAt: now, status: 'active', problem: null, hasRefreshToken: false, tokens: {}, seed: null };
      rows.set(k(key), { g, leaseOwner: owner, leaseUntil: now + ms });
      return true;
    },
    async release(key, owner) {
      const r = rows.get(k(key));
      if (r?.leaseOwner === owner) rows.set(k(key), { g: r.g });
    },
    async remove(key) {
      let n = 0;
      for (const [id, r] of rows) {
        const g = r.g.key;
        if (g.upstream === key.upstream && g.tenant === key.tenant && g.user === key.user && (key.scope === undefined ? !g.scope.startsWith(PENDING_SCOPE) : g.scope === key.scope)) {
          rows.delete(id);
          if (r.g.version > 0) n++;
        }
      }
      return n;
    },
    async list(f = {}) {
      return [...rows.values()]
        .filter((r) => r.g.version > 0 && matches(r.g.key, f))
        .map(({ g }) => ({ key: g.key, version: g.version, expiresAt: g.expiresAt, refreshedAt: g.refreshedAt, createdAt: g.createdAt, status: g.status, problem: g.problem, hasRefreshToken: g.hasRefreshToken }));
    },
  };
}
