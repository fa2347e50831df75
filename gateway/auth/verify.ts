import { actorChain } from '../types.js';
import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import { ValetError } from '../errors.js';
import type { Environment, IssuerConfig } from '../config/types.js';
import type { AgentIdentity } from '../types.js';
import { verificationKey, type VerificationKey } from './keys.js';

/** Verifies an agent token and returns who the agent is; throws a coded {@link ValetError}. */
export interface TokenVerifier {
  (token: string): Promise<AgentIdentity>;
  /**
   * The identity of a token verified before and not yet expired, without waiting for a turn of the
   * event loop: undefined when it must be verified (the request path then awaits the verifier).
   */
  cached(token: string): AgentIdentity | undefined;
}

const EMBEDDED_KEY_HEADERS = ['jwk', 'jku', 'x5u', 'x5c'] as const;
const CACHE_ENTRIES = 10_000;
const CACHE_MS = 60_000;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/**
 * Builds a verifier for the configured issuers. Key material is resolved here, once. `audience`
 * replaces every issuer's audience: the admin plane verifies its tokens with the same issuers but
 * its own audience, so that no agent token is accepted there and no admin token on the data plane.
 */
export function createTokenVerifier(
  issuers: readonly IssuerConfig[],
  dataDir: string,
  env: NodeJS.ProcessEnv = process.env,
  options: { audience?: string; environment?: Environment } = {},
): TokenVerifier {
  const byIssuer = new Map<string, { config: IssuerConfig; key: VerificationKey }>();
  for (const issuer of issuers) {
    const config = options.audience === undefined ? issuer : { ...issuer, audience: [options.audience] };
    if (byIssuer.has(config.issuer)) throw new TypeError(`two issuers claim iss "${config.issuer}"`);
    byIssuer.set(config.issuer, { config, key: verificationKey(config, dataDir, env, options.environment) });
  }

  // Verified tokens, until they expire (or for at most CACHE_MS): agents reuse one token for many
  // calls, and signature checks dominate the per-request cost. Failures are never cached.
  const cache = new Map<string, { identity: AgentIdentity; until: number }>();
  const cached = (token: string): AgentIdentity | undefined => {
    const hit = cache.get(token);
    if (hit === undefined) return undefined;
    if (hit.until > Date.now()) return hit.identity;
    cache.delete(token);
    return undefined;
  };
  const verify = async (token: string): Promise<AgentIdentity> => {
    const hit = cached(token);
    if (hit !== undefined) return hit;
    const now = Date.now();
    const identity = await verifyUncached(token);
    if (cache.size >= CACHE_ENTRIES) cache.delete(cache.keys().next().value as string);
    cache.set(token, { identity, until: Math.min(identity.expiresAt * 1000, now + CACHE_MS) });
    return identity;
  };
  return Object.assign(verify, { cached });

  async function verifyUncached(token: string): Promise<AgentIdentity> {
    if (token.length > 8192 || !COMPACT_JWS.test(token)) throw invalid('not a compact JWS');
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token);
    } catch {
      throw invalid('malformed token');
    }
    // Keys named or carried by the token itself are never trusted.
    for (const h of EMBEDDED_KEY_HEADERS) if (h in header) throw invalid(`"${h}" header is not accepted`);
    const entry = typeof unverified.iss === 'string' ? byIssuer.get(unverified.iss) : undefined;
    if (!entry) throw invalid('unknown issuer');
    const { config, key } = entry;
    if (typeof header.alg !== 'string' || !config.algorithms.includes(header.alg)) throw invalid('algorithm not allowed');

    let payload: JWTPayload;
    try {
      const options = {
        issuer: config.issuer,
        audience: [...config.audience],
        algorithms: [...config.algorithms],
        clockTolerance: config.clockSkewS,
        requiredClaims: ['exp', 'iat', 'sub'],
        crit: {},
      };
      const result = typeof key === 'function' ? await jwtVerify(token, key, options) : await jwtVerify(token, key, options);
      payload = result.payload;
    } catch (err) {
      throw fromJose(err);
    }
    checkLifetime(payload, config);
    return identityFrom(payload, config);
  }
}

/**
 * A token's lifetime is `exp` − `iat`, whatever its `nbf`: a token signed today for use tomorrow
 * exists, and can leak, from the moment it is signed. jose has already checked that both are numbers
 * and that `exp` (and `nbf`, if any) hold now; a future `iat` would let a token claim to be younger
 * than it is, so it is refused beyond the issuer's clock skew.
 */
function checkLifetime(payload: JWTPayload, config: IssuerConfig): void {
  const iat = payload.iat as number;
  const exp = payload.exp as number;
  if (iat > Date.now() / 1000 + config.clockSkewS) throw invalid('"iat" is in the future');
  const lifetime = exp - iat;
  if (lifetime > config.maxTtlS) {
    throw invalid(`its lifetime (exp - iat = ${lifetime}s) is longer than issuer ${config.name}'s max_ttl (${config.maxTtlS}s)`);
  }
}

function identityFrom(payload: JWTPayload, config: IssuerConfig): AgentIdentity {
  const claims = config.claims;
  const sub = payload.sub;
  if (typeof sub !== 'string' || sub === '') throw invalid('"sub" claim must be a non-empty string');
  // RFC 8693: with `act`, `sub` is the principal (the user) and `act.sub` the party acting (the agent).
  const act = payload['act'];
  let agent = sub;
  let user = optionalString(payload[claims.user], claims.user);
  if (act !== undefined) {
    if (typeof act !== 'object' || act === null || typeof (act as { sub?: unknown }).sub !== 'string') {
      throw invalid('"act" claim must be an object with a "sub"');
    }
    agent = (act as { sub: string }).sub;
    user = sub;
  }
  const groups = payload[claims.groups ?? 'groups'];
  const actors = actorChain(act);
  const tokenId = optionalString(payload.jti, 'jti');
  const session = optionalString(payload.sid, 'sid') ?? tokenId;
  return Object.freeze({
    ...(session !== undefined && { session: session.slice(0, 256) }),
    ...(groups !== undefined && { groups: Object.freeze(roleList(groups, claims.groups ?? 'groups')) }),
    ...(actors.length > 0 && { actors: Object.freeze(actors) }),
    agent,
    user,
    tenant: optionalString(payload[claims.tenant], claims.tenant),
    team: optionalString(payload[claims.team], claims.team),
    roles: Object.freeze(roleList(payload[claims.roles], claims.roles)),
    userRoles: Object.freeze(user === undefined ? [] : roleList(payload[claims.userRoles], claims.userRoles)),
    environment: optionalString(payload[claims.environment], claims.environment),
    issuer: config.issuer,
    tokenId,
    expiresAt: payload.exp as number,
  });
}

function optionalString(v: unknown, claim: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw invalid(`"${claim}" claim must be a non-empty string`);
  return v;
}

function roleList(v: unknown, claim: string): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string') return v.split(' ').filter(Boolean);
  if (Array.isArray(v) && v.every((r) => typeof r === 'string')) return [...v];
  throw invalid(`"${claim}" claim must be a string or an array of strings`);
}

function invalid(detail: string): ValetError {
  return new ValetError('VALET_ERR_TOKEN_INVALID', `The agent token is invalid: ${detail}.`);
}

function fromJose(err: unknown): ValetError {
  if (err instanceof joseErrors.JWTExpired) return new ValetError('VALET_ERR_TOKEN_EXPIRED');
  if (err instanceof joseErrors.JWTClaimValidationFailed) return invalid(`"${err.claim}" claim check failed (${err.reason})`);
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return invalid('signature verification failed');
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return invalid('algorithm not allowed');
  if (err instanceof joseErrors.JWKSNoMatchingKey) return invalid('no matching key');
  if (err instanceof joseErrors.JOSENotSupported) return invalid('unsupported token feature');
  // The key set could not be fetched or read: an outage, not a bad token.
  if (err instanceof joseErrors.JWKSTimeout || err instanceof joseErrors.JWKSInvalid || !(err instanceof joseErrors.JOSEError)) {
    return new ValetError('VALET_ERR_AUTH_UNAVAILABLE', undefined, { cause: err });
  }
  if (err.code === 'ERR_JOSE_GENERIC') return new ValetError('VALET_ERR_AUTH_UNAVAILABLE', undefined, { cause: err });
  return invalid('verification failed');
}

