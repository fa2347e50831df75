import { createHash, randomUUID } from 'node:crypto';
import { ValetError } from '../errors.js';
import type { SecretSource } from '../secrets/env.js';
import type { Grant, GrantKey, GrantStore } from '../secrets/grants.js';
import { GrantRejected, issuerFor, type Issued, type Issuer, type IssuerOptions } from './oauth.js';
import type { ProviderConfig } from './types.js';

/** Who a call is for: the credential is chosen per tenant, per user for users' own accounts, per agent token for an exchange. */
export interface Caller {
  readonly tenant: string | undefined;
  readonly user: string | undefined;
  /** The agent's token: the subject of a token exchange. */
  readonly agentToken?: string | undefined;
}

/** What a provider gives a call: the value to inject, and (token exchange) the actors the issued token names. */
export interface Provided {
  readonly token: string;
  readonly act?: readonly string[] | undefined;
}

/** A credential went bad in a way only a person can fix (a revoked grant). */
export interface BrokenCredential {
  readonly upstream: string;
  readonly tenant: string | null;
  readonly user: string | null;
  readonly problem: string;
}

export interface CredentialCacheOptions {
  readonly upstream: string;
  readonly provider: ProviderConfig;
  readonly grants: GrantStore;
  readonly secrets: SecretSource;
  readonly now?: () => number;
  /** Tokens are renewed this long before they expire, in the background while still valid (default 60 s, at most half the lifetime). */
  readonly refreshAheadMs?: number;
  readonly timeoutMs?: number;
  /** Token requests that failed, for the log: never a secret or a response body. */
  readonly onError?: (problem: string) => void;
  /** A grant the authorization server rejected: admins and approvers are told. */
  readonly onBroken?: (b: BrokenCredential) => void;
  /** Where a user connects an account (for the refusal of a call whose user has not). */
  readonly connectUrl?: (upstream: string) => string | undefined;
}

/** A token held in memory: served without asking the store until near expiry or `checkAfter`. */
interface Held extends Provided {
  readonly expiresAt: number;
  readonly obtainedAt: number;
  /** After this, the store is read again before use: a revoked or replaced grant is seen within RECHECK_MS. */
  readonly checkAfter: number;
}

/** After a failed background renewal, a still-valid token is served without asking again for this long. */
const BACKOFF_MS = 5_000;
/** How long an instance may hold a refresh lease before another may take over. */
const LEASE_MS = 30_000;
/** A held token is checked against the store this often (a revocation elsewhere takes effect within it). */
const RECHECK_MS = 5_000;
/** How long a call waits for another instance's token request before giving up. */
const WAIT_MS = 10_000;
/** Memory entries kept per provider (users, agent tokens): the oldest go first. */
const MAX_HELD = 10_000;

/** A short digest for keys and seeds: refresh tokens and agent tokens are never stored in the clear. */
export const digest = (s: string): string => createHash('sha256').update(s).digest('base64url').slice(0, 22);

/**
 * Obtained credentials for one upstream: cached in memory and in the secret store (sealed, shared
 * by a fleet), per (tenant, user, scope). One token request at a time per key in this process
 * (single flight) and across instances (a lease in the store); renewed ahead of expiry while the
 * held token keeps serving; rotated refresh tokens replace the old one by compare-and-set; a
 * rejected grant is marked broken and refuses calls until someone acts. When the endpoint fails,
 * calls fail closed (503 `VALET_ERR_TOKEN_ENDPOINT`) unless a still-valid token is held.
 */
export class CredentialCache {
  private readonly now: () => number;
  private readonly issue: Issuer;
  private readonly held = new Map<string, Held>();
  private readonly inFlight = new Map<string, Promise<Held>>();
  private readonly failedAt = new Map<string, number>();
  /** This instance, as a lease owner. */
  private readonly owner = randomUUID();
  readonly kind: ProviderConfig['kind'];
  /** How this provider's token requests are made (the connect flow redeems codes with them). */
  readonly options: IssuerOptions;
  /** Exchanged tokens are held in memory only: each is bound to one agent token and lives no longer. */
  private readonly stored: boolean;

  constructor(private readonly o: CredentialCacheOptions) {
    this.now = o.now ?? Date.now;
    this.kind = o.provider.kind;
    this.stored = this.kind !== 'oauth2_token_exchange';
    this.options = { upstream: o.upstream, now: this.now, timeoutMs: o.timeoutMs ?? 10_000, onError: o.onError ?? (() => undefined) };
    this.issue = issuerFor(o.provider, this.options);
  }

  /**
   * The grant key of a call. A provider whose secret a tenant does not hold itself uses the shared
   * one, and so the shared grant: a tenant never triggers a second use of a shared refresh token.
   */
  keyOf(caller: Caller): GrantKey {
    const p = this.o.provider;
    const upstream = this.o.upstream;
    switch (p.kind) {
      case 'oauth2_user':
        if (caller.user === undefined) {
          throw new ValetError('VALET_ERR_CREDENTIAL_NOT_CONNECTED', `Upstream ${upstream} uses the account of the user an agent acts for, and this agent token names no user.`, { extra: { upstream } });
        }
        return { upstream, tenant: caller.tenant ?? null, user: caller.user, scope: '' };
      case 'oauth2_token_exchange':
        return { upstream, tenant: caller.tenant ?? null, user: caller.user ?? null, scope: digest(caller.agentToken ?? '') };
      default: {
        const secret =
          p.kind === 'oauth2_refresh_token' ? p.refreshToken : p.kind === 'github_app' || p.kind === 'oauth2_jwt_bearer' ? p.privateKey : p.kind === 'aws_assume_role' ? p.sigv4.accessKeyId : (p.client.clientSecret ?? p.client.privateKey);
        const own = caller.tenant !== undefined && secret !== undefined && this.o.secrets.get(secret, caller.tenant) !== this.o.secrets.get(secret, undefined);
        return { upstream, tenant: own ? (caller.tenant as string) : null, user: null, scope: p.kind === 'github_app' ? p.installationId : '' };
      }
    }
  }

  /** A valid access token for the call, or a coded refusal; never forwards without one. */
  async token(caller: Caller): Promise<Provided> {
    const key = this.keyOf(caller);
    const k = mapKey(key);
    let h = this.held.get(k);
    const t = this.now();
    // Due for a look at the store: revoked, broken or renewed elsewhere since.
    if (h !== undefined && t < h.expiresAt && t >= h.checkAfter) h = await this.recheck(k, key, h, t);
    if (h !== undefined && t < h.expiresAt) {
      const ahead = Math.min(this.o.refreshAheadMs ?? 60_000, (h.expiresAt - h.obtainedAt) / 2);
      // Close to expiry: renewed in the background; this call still uses the valid token.
      if (h.expiresAt - t <= ahead && t - (this.failedAt.get(k) ?? 0) >= BACKOFF_MS) this.renew(k, key, caller).catch(() => undefined);
      return h;
    }
    return this.renew(k, key, caller);
  }

  /** A new token from the endpoint now, stored like any other (`valet credentials test`). */
  async probe(caller: Caller): Promise<{ expiresAt: number }> {
    const key = this.keyOf(caller);
    const h = await this.obtain(key, caller, true);
    this.remember(mapKey(key), h);
    return { expiresAt: h.expiresAt };
  }

  /** Forgets what is held in memory for a tenant and user (after a revoke through this process). */
  forget(tenant: string | null, user: string | null): void {
    for (const k of this.held.keys()) {
      const [t, u] = JSON.parse(k) as [string | null, string | null];
      if (t === tenant && u === user) this.held.delete(k);
    }
  }

  /** The held token as the store now has it: the store's (perhaps newer) token, or undefined when it is gone or broken. */
  private async recheck(k: string, key: GrantKey, h: Held, t: number): Promise<Held | undefined> {
    let g: Grant | undefined;
    try {
      g = await this.o.grants.read(key);
    } catch {
      // The store cannot be read: the held token serves until it expires.
      return h;
    }
    if (g === undefined || !this.valid(g, t)) {
      this.held.delete(k);
      return undefined;
    }
    const fresh = this.heldFrom(g, t);
    this.remember(k, fresh);
    return fresh;
  }

  private renew(k: string, key: GrantKey, caller: Caller): Promise<Held> {
    let p = this.inFlight.get(k);
    if (p === undefined) {
      p = this.obtain(key, caller, false).then(
        (h) => {
          this.remember(k, h);
          this.failedAt.delete(k);
          return h;
        },
        (err: unknown) => {
          this.failedAt.set(k, this.now());
          // A grant revoked or broken elsewhere stops serving here too.
          if (err instanceof ValetError && err.code !== 'VALET_ERR_TOKEN_ENDPOINT') this.held.delete(k);
          throw err;
        },
      );
      const settled = (): void => void this.inFlight.delete(k);
      p.then(settled, settled);
      this.inFlight.set(k, p);
    }
    return p;
  }

  private remember(k: string, h: Held): void {
    this.held.delete(k);
    this.held.set(k, h);
    if (this.held.size > MAX_HELD) this.held.delete(this.held.keys().next().value as string);
  }

  /** Usable and not yet due for renewal. */
  private fresh(g: Grant, t: number): boolean {
    return g.status === 'active' && g.tokens.accessToken !== undefined && g.expiresAt !== null && t < g.expiresAt - Math.min(this.o.refreshAheadMs ?? 60_000, (g.expiresAt - g.refreshedAt) / 2);
  }

  /** Usable, even if due for renewal. */
  private valid(g: Grant, t: number): boolean {
    return g.status === 'active' && g.tokens.accessToken !== undefined && g.expiresAt !== null && t < g.expiresAt;
  }

  /**
   * Reads the stored grant; uses it if fresh, else takes the lease and asks the endpoint. Another
   * instance holding the lease is waited for (its result appears in the store) up to WAIT_MS,
   * serving a still-valid stored token meanwhile.
   */
  private async obtain(key: GrantKey, caller: Caller, force: boolean): Promise<Held> {
    const seed = this.seed(caller);
    const deadline = this.now() + WAIT_MS;
    for (;;) {
      const read = this.stored ? await this.read(key) : undefined;
      // A new refresh token configured since this grant began: start over from it (over the same row).
      const g = read !== undefined && seed !== undefined && read.seed !== seed ? undefined : read;
      const t = this.now();
      if (g !== undefined && g.status === 'broken') throw this.broken(g.problem ?? 'the grant was rejected');
      if (g === undefined && this.kind === 'oauth2_user') throw this.notConnected(key);
      if (g !== undefined && !force && this.fresh(g, t)) return this.heldFrom(g, t);
      const version = read?.version ?? 0;
      if (this.stored && !(await this.lease(key, version))) {
        if (g !== undefined && this.valid(g, t)) return this.heldFrom(g, t);
        if (this.now() >= deadline) throw new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${this.o.upstream} is being renewed by another instance, which has not finished; nothing was forwarded.`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      let issued: Issued;
      try {
        issued = await this.issue({ secret: (name) => this.o.secrets.get(name, caller.tenant), held: g, subjectToken: caller.agentToken });
      } catch (err) {
        if (err instanceof GrantRejected && this.stored) {
          const problem = `the authorization server rejected the grant (${err.reason}) at ${new Date(this.now()).toISOString()}`;
          await this.o.grants.write(key, { tokens: {}, expiresAt: null, status: 'broken', problem, seed: seed ?? read?.seed ?? null }, version).catch(() => false);
          this.o.onBroken?.({ upstream: key.upstream, tenant: key.tenant, user: key.user, problem });
          throw this.broken(problem);
        }
        if (this.stored) await this.o.grants.release(key, this.owner).catch(() => undefined);
        throw err;
      }
      if (this.stored) {
        // Lost to another writer only if the lease ran out: this token is still valid, the store keeps theirs.
        await this.o.grants
          .write(key, { tokens: { accessToken: issued.accessToken, refreshToken: issued.refreshToken }, expiresAt: issued.expiresAt, status: 'active', problem: null, seed: seed ?? read?.seed ?? null }, version)
          .catch(() => false);
      }
      const now = this.now();
      return { token: issued.accessToken, act: issued.act, expiresAt: issued.expiresAt, obtainedAt: now, checkAfter: this.stored ? now + RECHECK_MS : Infinity };
    }
  }

  private heldFrom(g: Grant, t: number): Held {
    return { token: g.tokens.accessToken as string, expiresAt: g.expiresAt as number, obtainedAt: g.refreshedAt, checkAfter: t + RECHECK_MS };
  }

  private async read(key: GrantKey): Promise<Grant | undefined> {
    try {
      return await this.o.grants.read(key);
    } catch (err) {
      if (err instanceof ValetError && err.code === 'VALET_ERR_CREDENTIAL_CORRUPT') throw err;
      throw new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${this.o.upstream} could not be read from the secret store; nothing was forwarded.`, { cause: err });
    }
  }

  private async lease(key: GrantKey, version: number): Promise<boolean> {
    try {
      return await this.o.grants.lease(key, version, this.owner, LEASE_MS);
    } catch (err) {
      throw new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${this.o.upstream} could not be renewed: the secret store is unavailable; nothing was forwarded.`, { cause: err });
    }
  }

  /** The digest of the configured first refresh token (refresh-token providers): a new one starts the grant over. */
  private seed(caller: Caller): string | undefined {
    if (this.o.provider.kind !== 'oauth2_refresh_token') return undefined;
    const v = this.o.secrets.get(this.o.provider.refreshToken, caller.tenant);
    return v === undefined ? undefined : digest(v);
  }

  private broken(problem: string): ValetError {
    if (this.kind === 'oauth2_user') {
      const url = this.o.connectUrl?.(this.o.upstream);
      return new ValetError('VALET_ERR_CREDENTIAL_BROKEN', `The user's account for upstream ${this.o.upstream} no longer works: ${problem}. The user must connect it again${url === undefined ? '' : ` at ${url}`}; nothing was forwarded.`, {
        extra: url === undefined ? { upstream: this.o.upstream } : { upstream: this.o.upstream, connect_url: url },
      });
    }
    return new ValetError('VALET_ERR_CREDENTIAL_BROKEN', `The credential for upstream ${this.o.upstream} no longer works: ${problem}. An administrator must reconnect or replace it; nothing was forwarded.`);
  }

  private notConnected(key: GrantKey): ValetError {
    const url = this.o.connectUrl?.(this.o.upstream);
    return new ValetError('VALET_ERR_CREDENTIAL_NOT_CONNECTED', `User ${key.user ?? ''} has not connected an account for upstream ${this.o.upstream}${url === undefined ? '' : `; connect it at ${url}`}.`, {
      extra: url === undefined ? { upstream: this.o.upstream } : { upstream: this.o.upstream, connect_url: url },
    });
  }
}

function mapKey(k: GrantKey): string {
  return JSON.stringify([k.tenant, k.user, k.scope]);
}
