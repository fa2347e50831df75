import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { UpstreamConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { SecretSource } from '../secrets/env.js';
import { PENDING_SCOPE, type GrantInfo, type GrantKey, type GrantStore } from '../secrets/grants.js';
import { CredentialCache, digest, type BrokenCredential, type Caller, type Provided } from './cache.js';
import { authorizationUrl, GrantRejected, redeemCode } from './oauth.js';
import { sigV4Signer, type AwsCredentials, type SignableRequest, type SignedRequest, type SigV4Signer } from './sigv4.js';
import type { ProviderConfig, UserOAuthConfig } from './types.js';

export interface CredentialServiceOptions {
  readonly upstreams: Iterable<UpstreamConfig>;
  readonly grants: GrantStore;
  readonly secrets: SecretSource;
  /** The admin plane's URL as people's browsers reach it: connect pages and OAuth redirect URIs. */
  readonly publicUrl: () => string | undefined;
  readonly onError?: (problem: string) => void;
  readonly onBroken?: (b: BrokenCredential) => void;
  readonly now?: () => number;
  readonly refreshAheadMs?: number;
}

/** A connection started: where to send the browser, and the value its cookie must hold on return. */
export interface ConnectStart {
  readonly authorizeUrl: string;
  readonly binding: string;
}

/** How long a started connection waits for its callback. */
const CONNECT_TTL_MS = 10 * 60_000;
/** How long a user's list of connected accounts is believed (a connection made on another instance shows within it). */
const CONNECTIONS_TTL_MS = 5_000;

export const CONNECT_COOKIE = 'valet_connect';

/** The provider of an upstream, if its credential has one. */
export function providerOf(u: UpstreamConfig): ProviderConfig | undefined {
  const c = u.credential;
  return (c.scheme === 'bearer' || c.scheme === 'header') && c.provider !== undefined ? c.provider : undefined;
}

/**
 * Every obtained credential of a gateway: one {@link CredentialCache} per upstream whose credential
 * has a provider, users' connected accounts (for `user.connected()` in policy), and the
 * authorization-code flow through which users connect them.
 */
export class CredentialService {
  private readonly caches = new Map<string, CredentialCache>();
  private readonly userProviders = new Map<string, UserOAuthConfig>();
  private readonly now: () => number;
  /** (tenant, user) → the upstreams the user has connected, and until when that is believed. */
  private readonly connections = new Map<string, { upstreams: ReadonlySet<string>; until: number }>();

  /** AWS upstreams: a signer each, and the cache of its role's temporary credentials when it assumes one. */
  private readonly signers = new Map<string, { signer: SigV4Signer; assumed: CredentialCache | undefined }>();

  constructor(private readonly o: CredentialServiceOptions) {
    this.now = o.now ?? Date.now;
    const cacheFor = (upstream: string, provider: ProviderConfig): CredentialCache =>
      new CredentialCache({
        upstream,
        provider,
        grants: o.grants,
        secrets: o.secrets,
        now: this.now,
        ...(o.refreshAheadMs !== undefined && { refreshAheadMs: o.refreshAheadMs }),
        ...(o.onError !== undefined && { onError: o.onError }),
        ...(o.onBroken !== undefined && { onBroken: o.onBroken }),
        connectUrl: (name) => this.connectUrl(name),
      });
    for (const u of o.upstreams) {
      const c = u.credential;
      if (c.scheme === 'aws_sigv4') {
        const signer = sigV4Signer(c, { upstream: u.name, origin: u.origin, now: this.now, ...(o.onError !== undefined && { onError: o.onError }) });
        this.signers.set(u.name, { signer, assumed: c.assumeRole === undefined ? undefined : cacheFor(u.name, { kind: 'aws_assume_role', sigv4: c, role: c.assumeRole }) });
        continue;
      }
      const provider = providerOf(u);
      if (provider === undefined) continue;
      this.caches.set(u.name, cacheFor(u.name, provider));
      if (provider.kind === 'oauth2_user') this.userProviders.set(u.name, provider);
    }
  }

  /** Whether an upstream's requests are signed over a payload hash: a streamed body must then be read whole first. */
  hashesPayload(upstream: string): boolean {
    return this.signers.get(upstream)?.signer.hashesPayload === true;
  }

  /**
   * An AWS upstream's request signed (SigV4) with the tenant's keys, or with the temporary
   * credentials of the role they assume; undefined for any other upstream.
   */
  sign(upstream: string, req: SignableRequest, caller: Caller): Promise<SignedRequest> | undefined {
    const s = this.signers.get(upstream);
    if (s === undefined) return undefined;
    const assumed = s.assumed;
    return s.signer.sign(req, (name) => this.o.secrets.get(name, caller.tenant), assumed === undefined ? undefined : async () => JSON.parse((await assumed.token(caller)).token) as AwsCredentials);
  }

  get grants(): GrantStore {
    return this.o.grants;
  }

  /** The token to inject for a call, or undefined when the upstream's credential is a stored secret. */
  token(upstream: string, caller: Caller): Promise<Provided> | undefined {
    return this.caches.get(upstream)?.token(caller);
  }

  cache(upstream: string): CredentialCache | undefined {
    return this.caches.get(upstream);
  }

  /** Upstreams whose credential is a user's own account. */
  get userUpstreams(): readonly string[] {
    return [...this.userProviders.keys()];
  }

  connectUrl(upstream: string): string | undefined {
    const base = this.o.publicUrl();
    return base === undefined ? undefined : `${base}/connect/${encodeURIComponent(upstream)}`;
  }

  redirectUri(upstream: string): string {
    const base = this.o.publicUrl();
    if (base === undefined) throw new ValetError('VALET_ERR_CONNECT_INVALID', 'The admin plane has no public URL yet.');
    return `${base}/connect/${encodeURIComponent(upstream)}/callback`;
  }

  // ---------------------------------------------------------------------------------------------
  // `user.connected("github")`: answered from memory, loaded before the decision (`load`).

  /** Whether the user has a working connected account for the upstream (as last loaded). */
  connected(tenant: string | undefined, user: string, upstream: string): boolean {
    return this.connections.get(connectionKey(tenant, user))?.upstreams.has(upstream) ?? false;
  }

  /** Loads a user's connections if they are not fresh in memory; undefined when nothing needs waiting for. */
  loadConnections(tenant: string | undefined, user: string): Promise<void> | undefined {
    if (this.userProviders.size === 0) return undefined;
    const k = connectionKey(tenant, user);
    const c = this.connections.get(k);
    if (c !== undefined && c.until > this.now()) return undefined;
    return this.o.grants.list({ tenant: tenant ?? null, user }).then((grants) => {
      const upstreams = new Set(grants.filter((g) => g.status === 'active' && g.key.scope === '' && this.userProviders.has(g.key.upstream)).map((g) => g.key.upstream));
      this.connections.delete(k);
      this.connections.set(k, { upstreams, until: this.now() + CONNECTIONS_TTL_MS });
      if (this.connections.size > 10_000) this.connections.delete(this.connections.keys().next().value as string);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Connecting a user's account: authorization code with PKCE (RFC 6749 §4.1, RFC 7636).

  /**
   * Starts a connection for the user: a random `state` (its digest names the pending row, so the
   * state itself is never stored), a PKCE verifier sealed in that row, and a browser binding the
   * callback must present as a cookie, so that a link started by one person cannot be completed
   * in another's browser (which would connect the wrong account).
   */
  async beginConnect(upstream: string, tenant: string | undefined, user: string): Promise<ConnectStart> {
    const p = this.userProviders.get(upstream);
    if (p === undefined) throw new ValetError('VALET_ERR_ADMIN_NOT_FOUND', `Upstream ${upstream} takes no user accounts.`);
    const state = randomBytes(32).toString('base64url');
    const verifier = randomBytes(32).toString('base64url');
    const binding = randomBytes(32).toString('base64url');
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    const pending = JSON.stringify({ tenant: tenant ?? null, user, verifier, binding: digest(binding) });
    const written = await this.o.grants.write(pendingKey(upstream, state), { tokens: { accessToken: pending }, expiresAt: this.now() + CONNECT_TTL_MS, status: 'active', problem: null, seed: null }, 0);
    if (!written) throw new ValetError('VALET_ERR_INTERNAL');
    return { authorizeUrl: authorizationUrl(p, this.redirectUri(upstream), state, challenge), binding };
  }

  /**
   * Completes a connection from the callback: the pending row is taken once (removed before the
   * code is redeemed, so a replayed callback finds nothing), the browser binding checked, the code
   * redeemed with the verifier, and the user's grant written (replacing a broken or older one).
   */
  async completeConnect(upstream: string, state: string, code: string, binding: string | undefined): Promise<{ tenant: string | null; user: string }> {
    const p = this.userProviders.get(upstream);
    if (p === undefined) throw new ValetError('VALET_ERR_ADMIN_NOT_FOUND', `Upstream ${upstream} takes no user accounts.`);
    const key = pendingKey(upstream, state);
    const row = await this.o.grants.read(key);
    if (row === undefined || (await this.o.grants.remove(key)) !== 1) throw new ValetError('VALET_ERR_CONNECT_INVALID');
    const pending = JSON.parse(row.tokens.accessToken ?? '{}') as { tenant: string | null; user: string; verifier: string; binding: string };
    if (row.expiresAt === null || row.expiresAt < this.now()) throw new ValetError('VALET_ERR_CONNECT_INVALID');
    if (binding === undefined || !sameDigest(digest(binding), pending.binding)) throw new ValetError('VALET_ERR_CONNECT_INVALID');
    const cache = this.caches.get(upstream) as CredentialCache;
    let issued;
    try {
      issued = await redeemCode(p, cache.options, { secret: (name) => this.o.secrets.get(name, pending.tenant ?? undefined), held: undefined }, code, pending.verifier, this.redirectUri(upstream));
    } catch (err) {
      if (err instanceof GrantRejected) throw new ValetError('VALET_ERR_CONNECT_INVALID', 'The authorization server refused the authorization code (invalid_grant); start again.');
      throw err;
    }
    const grantKey: GrantKey = { upstream, tenant: pending.tenant, user: pending.user, scope: '' };
    const value = { tokens: { accessToken: issued.accessToken, refreshToken: issued.refreshToken }, expiresAt: issued.expiresAt, status: 'active' as const, problem: null, seed: null };
    for (let attempt = 0; attempt < 5; attempt++) {
      const current = await this.o.grants.read(grantKey);
      if (await this.o.grants.write(grantKey, value, current?.version ?? 0)) break;
    }
    cache.forget(pending.tenant, pending.user);
    this.connections.delete(connectionKey(pending.tenant ?? undefined, pending.user));
    return { tenant: pending.tenant, user: pending.user };
  }

  // ---------------------------------------------------------------------------------------------
  // Operations (CLI, admin API): metadata only, never a token.

  list(filter: { upstream?: string | undefined; tenant?: string | null | undefined; user?: string | undefined } = {}): Promise<GrantInfo[]> {
    return this.o.grants.list(filter);
  }

  /** Removes a stored grant (a shared one, or a user's connected account): the next call starts over or needs a new connection. */
  async revoke(upstream: string, tenant: string | null, user: string | null): Promise<number> {
    const n = await this.o.grants.remove({ upstream, tenant, user });
    this.caches.get(upstream)?.forget(tenant, user);
    if (user !== null) this.connections.delete(connectionKey(tenant ?? undefined, user));
    return n;
  }
}

function connectionKey(tenant: string | undefined, user: string): string {
  return JSON.stringify([tenant ?? null, user]);
}

/** A started connection: no tenant or user in its key, since the callback knows neither. */
function pendingKey(upstream: string, state: string): GrantKey {
  return { upstream, tenant: null, user: null, scope: `${PENDING_SCOPE}${digest(state)}` };
}

function sameDigest(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
