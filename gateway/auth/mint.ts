import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import type { IssuerConfig } from '../config/types.js';

export interface MintOptions {
  agent: string;
  tenant?: string | undefined;
  team?: string | undefined;
  roles?: readonly string[] | undefined;
  environment?: string | undefined;
  /** The delegating user: the token's `sub`, with the agent as the RFC 8693 actor. */
  user?: string | undefined;
  /** The delegating user's roles. */
  userRoles?: readonly string[] | undefined;
  /** Whole seconds, at most the issuer's `max_ttl` (a longer token would be refused anyway); tests mint expired tokens with a negative one. */
  ttlSeconds: number;
  /** The session the token belongs to (`sid`); without it the token is a session of its own (`jti`). */
  session?: string | undefined;
  /** Groups (admin tokens: the approver groups the person belongs to). */
  groups?: readonly string[] | undefined;
  /** Replaces the issuer's audience (admin tokens carry the admin plane's). */
  audience?: string | undefined;
}

/** Mints an agent token signed with a shared-secret issuer's key (development and tests). */
export async function mintAgentToken(issuer: IssuerConfig, secret: Uint8Array, o: MintOptions): Promise<string> {
  const alg = issuer.algorithms[0];
  if (issuer.key.kind !== 'secret' || alg === undefined) throw new TypeError(`issuer ${issuer.name} cannot mint tokens`);
  if (!Number.isInteger(o.ttlSeconds) || o.ttlSeconds > issuer.maxTtlS) {
    throw new RangeError(`the token lifetime must be whole seconds, at most issuer ${issuer.name}'s max_ttl (${issuer.maxTtlS}s)`);
  }
  const c = issuer.claims;
  const claims: Record<string, unknown> = {};
  if (o.tenant !== undefined) claims[c.tenant] = o.tenant;
  if (o.team !== undefined) claims[c.team] = o.team;
  if (o.roles !== undefined && o.roles.length > 0) claims[c.roles] = [...o.roles];
  if (o.environment !== undefined) claims[c.environment] = o.environment;
  if (o.groups !== undefined) claims[c.groups ?? 'groups'] = [...o.groups];
  if (o.user !== undefined) claims['act'] = { sub: o.agent };
  if (o.session !== undefined) claims['sid'] = o.session;
  if (o.user !== undefined && o.userRoles !== undefined && o.userRoles.length > 0) claims[c.userRoles] = [...o.userRoles];
  // One clock reading for both: exp - iat is exactly the ttl, never a second more.
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT(claims)
    .setProtectedHeader({ alg, typ: 'JWT' })
    .setIssuer(issuer.issuer)
    .setAudience(o.audience ?? (issuer.audience.length === 1 ? (issuer.audience[0] as string) : [...issuer.audience]))
    .setSubject(o.user ?? o.agent)
    .setIssuedAt(now)
    .setJti(randomUUID())
    .setExpirationTime(now + o.ttlSeconds)
    .sign(secret);
}
