import { createHmac, generateKeyPairSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, SignJWT, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createTokenVerifier, type TokenVerifier } from '../../gateway/auth/verify.js';
import type { IssuerConfig } from '../../gateway/config/types.js';
import { ValetError } from '../../gateway/errors.js';

const claims = { tenant: 'tenant', team: 'team', roles: 'roles', environment: 'env', user: 'user', userRoles: 'user_roles' };
const SECRET = 'unit-test-secret-0123456789abcdef012345';
const hsIssuer: IssuerConfig = {
  name: 'dev',
  issuer: 'dev-iss',
  audience: ['valet'],
  algorithms: ['HS256'],
  clockSkewS: 30,
  maxTtlS: 3600,
  key: { kind: 'secret', env: 'UNIT_SECRET', generate: false },
  claims,
};
const hs = new TextEncoder().encode(SECRET);
const now = (): number => Math.floor(Date.now() / 1000);

function sign(payload: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(payload)
    .setProtectedHeader({ alg: 'HS256', ...header })
    .setIssuedAt().setIssuer('dev-iss')
    .setAudience('valet')
    .setSubject('agent-7')
    .setExpirationTime(now() + 60)
    .sign(hs);
}

/** Signs by hand, for headers jose's signer itself refuses to produce. */
function handSigned(header: Record<string, unknown>): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'HS256', ...header })}.${b64({ iss: 'dev-iss', aud: 'valet', sub: 'agent-7', iat: now(), exp: now() + 60 })}`;
  return `${input}.${createHmac('sha256', hs).update(input).digest('base64url')}`;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'accepted';
  } catch (err) {
    expect(err).toBeInstanceOf(ValetError);
    return (err as ValetError).code;
  }
}

describe('agent token verification', () => {
  let verify: TokenVerifier;
  let jwksServer: Server;
  let jwksVerify: TokenVerifier;
  const es = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let jwk: JWK;

  beforeAll(async () => {
    verify = createTokenVerifier([hsIssuer], '/nonexistent', { UNIT_SECRET: SECRET });
    jwk = { ...(await exportJWK(es.publicKey)), kid: 'k1', alg: 'ES256' };
    jwksServer = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, '127.0.0.1', r));
    const port = (jwksServer.address() as AddressInfo).port;
    jwksVerify = createTokenVerifier(
      [{ ...hsIssuer, name: 'corp', issuer: 'https://corp.test/', algorithms: ['ES256'], key: { kind: 'jwks_url', url: `http://127.0.0.1:${port}/jwks.json` } }],
      '/nonexistent',
      {},
    );
  });
  afterAll(() => new Promise<void>((r) => jwksServer.close(() => r())));

  it('maps claims to an identity', async () => {
    const id = await verify(await sign({ tenant: 'acme', team: 'pay', roles: 'finance support', env: 'production' }));
    expect(id).toMatchObject({ agent: 'agent-7', tenant: 'acme', team: 'pay', roles: ['finance', 'support'], environment: 'production', user: undefined });
    expect(Object.isFrozen(id)).toBe(true);
  });

  it('answers a token it has verified from its cache without waiting, until the entry lapses (60 s at most, or when the token expires); never one that failed', async () => {
    const token = await sign({ tenant: 'acme' });
    expect(verify.cached(token)).toBeUndefined();
    const id = await verify(token);
    expect(verify.cached(token)).toBe(id);
    const forged = `${token.slice(0, -4)}${token.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
    expect(await codeOf(verify(forged))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(verify.cached(forged)).toBeUndefined();
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 61_000 });
    try {
      expect(verify.cached(token)).toBeUndefined();
    } finally {
      vi.useRealTimers();
    }
  });

  it('RFC 8693 act: sub is the user, act.sub the agent', async () => {
    const token = await new SignJWT({ act: { sub: 'bot' } })
      .setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet').setSubject('alice').setExpirationTime(now() + 60).sign(hs);
    expect(await verify(token)).toMatchObject({ agent: 'bot', user: 'alice' });
  });

  it('allows the configured clock skew and no more', async () => {
    const within = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet').setSubject('a').setExpirationTime(now() - 20).sign(hs);
    const beyond = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet').setSubject('a').setExpirationTime(now() - 90).sign(hs);
    expect(await codeOf(verify(within))).toBe('accepted');
    expect(await codeOf(verify(beyond))).toBe('VALET_ERR_TOKEN_EXPIRED');
  });

  it('requires exp and sub', async () => {
    const noExp = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet').setSubject('a').sign(hs);
    const noSub = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet').setExpirationTime(now() + 60).sign(hs);
    expect(await codeOf(verify(noExp))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(await codeOf(verify(noSub))).toBe('VALET_ERR_TOKEN_INVALID');
  });

  describe('token lifetime (max_ttl from iat)', () => {
    const token = (c: { iat?: number; exp: number; nbf?: number }): Promise<string> => {
      const t = new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuer('dev-iss').setAudience('valet').setSubject('a').setExpirationTime(c.exp);
      if (c.iat !== undefined) t.setIssuedAt(c.iat);
      if (c.nbf !== undefined) t.setNotBefore(c.nbf);
      return t.sign(hs);
    };

    it('accepts exactly max_ttl and refuses one second more, or a year', async () => {
      expect(await codeOf(verify(await token({ iat: now(), exp: now() + 3600 })))).toBe('accepted');
      expect(await codeOf(verify(await token({ iat: now(), exp: now() + 3601 })))).toBe('VALET_ERR_TOKEN_INVALID');
      expect(await codeOf(verify(await token({ iat: now(), exp: now() + 365 * 86_400 })))).toBe('VALET_ERR_TOKEN_INVALID');
    });

    it('counts from iat, so an old iat with a fresh exp is refused, and nbf does not shorten the count', async () => {
      expect(await codeOf(verify(await token({ iat: now() - 3000, exp: now() + 900 })))).toBe('VALET_ERR_TOKEN_INVALID');
      expect(await codeOf(verify(await token({ iat: now() - 3000, exp: now() + 500, nbf: now() - 10 })))).toBe('accepted');
      expect(await codeOf(verify(await token({ iat: now() - 7200, nbf: now() - 60, exp: now() + 60 })))).toBe('VALET_ERR_TOKEN_INVALID');
    });

    it('requires iat, as a number, not in the future beyond the clock skew', async () => {
      expect(await codeOf(verify(await token({ exp: now() + 60 })))).toBe('VALET_ERR_TOKEN_INVALID');
      expect(await codeOf(verify(await token({ iat: now() + 120, exp: now() + 180 })))).toBe('VALET_ERR_TOKEN_INVALID');
      expect(await codeOf(verify(await token({ iat: now() + 20, exp: now() + 180 })))).toBe('accepted');
      const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
      const input = `${b64({ alg: 'HS256' })}.${b64({ iss: 'dev-iss', aud: 'valet', sub: 'a', iat: 'yesterday', exp: now() + 60 })}`;
      expect(await codeOf(verify(`${input}.${createHmac('sha256', hs).update(input).digest('base64url')}`))).toBe('VALET_ERR_TOKEN_INVALID');
    });

    it('says why without echoing the token', async () => {
      const t = await token({ iat: now(), exp: now() + 7200 });
      const err = await verify(t).catch((e: unknown) => e as ValetError);
      expect(err).toBeInstanceOf(ValetError);
      expect((err as ValetError).message).toMatch(/lifetime \(exp - iat = 7200s\).*max_ttl \(3600s\)/);
      expect((err as ValetError).message).not.toContain(t.split('.')[2]);
      const noIat = await verify(await token({ exp: now() + 60 })).catch((e: unknown) => e as ValetError);
      expect((noIat as ValetError).message).toContain('"iat"');
    });

    it('applies each issuer its own max_ttl', async () => {
      const long = createTokenVerifier([{ ...hsIssuer, maxTtlS: 86_400 }], '/nonexistent', { UNIT_SECRET: SECRET });
      const twoHours = await token({ iat: now(), exp: now() + 7200 });
      expect(await codeOf(long(twoHours))).toBe('accepted');
      expect(await codeOf(verify(twoHours))).toBe('VALET_ERR_TOKEN_INVALID');
      // The admin plane verifies with the same issuers and another audience: the same limit holds.
      const admin = createTokenVerifier([hsIssuer], '/nonexistent', { UNIT_SECRET: SECRET }, { audience: 'valet-admin' });
      const adminToken = (ttl: number): Promise<string> =>
        new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuedAt().setIssuer('dev-iss').setAudience('valet-admin').setSubject('alice').setExpirationTime(now() + ttl).sign(hs);
      expect(await codeOf(admin(await adminToken(600)))).toBe('accepted');
      expect(await codeOf(admin(await adminToken(3601)))).toBe('VALET_ERR_TOKEN_INVALID');
    });
  });

  it.each([
    ['jku', { jku: 'http://127.0.0.1:1/keys' }],
    ['x5u', { x5u: 'http://127.0.0.1:1/cert' }],
  ])('refuses a token with %s', async (_name, header) => {
    expect(await codeOf(verify(await sign({}, header)))).toBe('VALET_ERR_TOKEN_INVALID');
  });

  it('refuses an unknown critical header, and accepts the same token without it', async () => {
    expect(await codeOf(verify(handSigned({ crit: ['x-ext'], 'x-ext': true })))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(await codeOf(verify(handSigned({})))).toBe('accepted');
  });

  it('refuses malformed claims rather than guessing', async () => {
    expect(await codeOf(verify(await sign({ roles: [1, 2] })))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(await codeOf(verify(await sign({ tenant: 42 })))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(await codeOf(verify(await sign({ act: 'bot' })))).toBe('VALET_ERR_TOKEN_INVALID');
    expect(await codeOf(verify('not-a-token'))).toBe('VALET_ERR_TOKEN_INVALID');
  });

  it('never echoes the token in an error message', async () => {
    const token = await sign({}, { jku: 'http://127.0.0.1:1/keys' });
    try {
      await verify(token);
    } catch (err) {
      expect(String((err as Error).message)).not.toContain(token.split('.')[2]);
    }
  });

  it('verifies through a JWKS URL served over HTTP', async () => {
    const token = await new SignJWT({ tenant: 'corp-a' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuedAt().setIssuer('https://corp.test/').setAudience('valet').setSubject('agent-x').setExpirationTime(now() + 60)
      .sign(es.privateKey);
    expect(await jwksVerify(token)).toMatchObject({ agent: 'agent-x', tenant: 'corp-a' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuedAt().setIssuer('https://corp.test/').setAudience('valet').setSubject('agent-x').setExpirationTime(now() + 60)
      .sign(other.privateKey);
    expect(await codeOf(jwksVerify(forged))).toBe('VALET_ERR_TOKEN_INVALID');
  });
});
