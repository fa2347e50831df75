import { readFileSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_AUDIENCE, DEV_ISSUER, DEV_SIGNING_KEY, devIssuer, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, header, requestIdOf } from '../helpers/http.js';
import {
  claims,
  craftJwt,
  ecKeyPair,
  es256,
  hs256,
  nowS,
  publicPem,
  rs256,
  rsaKeyPair,
  tempKeyDir,
  type KeyDir,
} from '../helpers/keys.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const SECRET = 'sk-upstream-auth-test-31337';
const RSA_ISS = 'https://idp.rsa.test/';
const EC_ISS = 'https://idp.ec.test/';
const LONG_ISS = 'valet-test-long';

describe('agent token authentication', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let keys: KeyDir;
  let pemPath: string;
  const rsa = rsaKeyPair();
  const ec = ecKeyPair();

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    keys = tempKeyDir();
    pemPath = keys.write('rsa-public.pem', publicPem(rsa.publicKey));
    const jwk = { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1', alg: 'ES256', use: 'sig' };
    const jwksPath = keys.write('jwks.json', JSON.stringify({ keys: [jwk] }));
    gw = await startTestGateway({
      issuers: [
        devIssuer, // first: gw.token() mints with issuers[0]
        { name: 'rsa', issuer: RSA_ISS, audience: DEV_AUDIENCE, algorithms: ['RS256'], public_key_file: pemPath },
        { name: 'ec', issuer: EC_ISS, audience: DEV_AUDIENCE, algorithms: ['ES256'], jwks_file: jwksPath },
        { ...devIssuer, name: 'long', issuer: LONG_ISS, max_ttl: '24h' },
      ],
      upstreams: [
        { name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
        {
          name: 'anthropic',
          origin: upstream.origin,
          agent_token: { header: 'x-api-key' },
          credential: { scheme: 'header', header: 'x-api-key', secret: 'API_KEY' },
        },
      ],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { API_KEY: SECRET },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
    keys?.cleanup();
  });

  const dev = (extra: Record<string, unknown> = {}, ttl = 300): Record<string, unknown> =>
    claims({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, ttl, extra });

  async function send(path: string, headers: Record<string, string>) {
    const before = upstream.requests.length;
    const res = await request(`${gw.url}${path}`, { headers });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text, forwarded: upstream.requests.length - before };
  }

  /** The full failure contract: 401, WWW-Authenticate, JSON body, nothing forwarded, an audit row. */
  async function expectRejected(headers: Record<string, string>, code: string, path = '/api/v1/x') {
    const r = await send(path, headers);
    expect(r.status).toBe(401);
    expect(r.forwarded, 'requests forwarded upstream').toBe(0);
    const wwwAuth = header(r.headers, 'www-authenticate');
    expect(wwwAuth).toMatch(/^Bearer realm="valet"/);
    if (code !== 'VALET_ERR_TOKEN_MISSING') expect(wwwAuth).toContain('error="invalid_token"');
    expect(header(r.headers, 'content-type')).toMatch(/^application\/json/);
    const id = requestIdOf(r.headers);
    const body = expectErrorBody(r.text, code, id);
    for (const v of Object.values(headers)) {
      const token = v.replace(/^Bearer\s+/i, '');
      if (token.length > 20) expect(r.text).not.toContain(token);
    }
    const row = await auditRowFor(gw, id);
    expect(row.status).toBe(401);
    expect(row.error_code).toBe(code);
    expect(row.upstream_status).toBeNull();
    return { body, row };
  }

  describe('is refused with 401', () => {
    it('when no token is presented', async () => {
      await expectRejected({}, 'VALET_ERR_TOKEN_MISSING');
      // A non-Bearer Authorization is not a token either.
      await expectRejected({ authorization: 'Basic dXNlcjpwYXNz' }, 'VALET_ERR_TOKEN_MISSING');
    });

    it('when the signature is wrong', async () => {
      const forged = craftJwt({ alg: 'HS256', typ: 'JWT' }, dev(), hs256('a-different-key-0123456789abcdef0123'));
      await expectRejected({ authorization: `Bearer ${forged}` }, 'VALET_ERR_TOKEN_INVALID');
      // A valid token with its payload swapped keeps a now-wrong signature.
      const [h, , s] = (await gw.token()).split('.');
      const tampered = `${h}.${Buffer.from(JSON.stringify(dev({ sub: 'admin' }))).toString('base64url')}.${s}`;
      await expectRejected({ authorization: `Bearer ${tampered}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('when the token expired beyond the 30 s clock skew', async () => {
      const expired = craftJwt({ alg: 'HS256', typ: 'JWT' }, dev({ iat: nowS() - 400 }, -60), hs256(DEV_SIGNING_KEY));
      await expectRejected({ authorization: `Bearer ${expired}` }, 'VALET_ERR_TOKEN_EXPIRED');
      const minted = await gw.token({ ttlSeconds: -45 });
      await expectRejected({ authorization: `Bearer ${minted}` }, 'VALET_ERR_TOKEN_EXPIRED');
    });

    it('when the issuer is unknown', async () => {
      const t = craftJwt({ alg: 'HS256', typ: 'JWT' }, dev({ iss: 'someone-else' }), hs256(DEV_SIGNING_KEY));
      await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('when the audience is wrong', async () => {
      const t = craftJwt({ alg: 'HS256', typ: 'JWT' }, dev({ aud: 'not-valet' }), hs256(DEV_SIGNING_KEY));
      await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
      const noAud = dev();
      delete noAud['aud'];
      const t2 = craftJwt({ alg: 'HS256', typ: 'JWT' }, noAud, hs256(DEV_SIGNING_KEY));
      await expectRejected({ authorization: `Bearer ${t2}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('when alg is "none"', async () => {
      for (const alg of ['none', 'None', 'NONE']) {
        const t = craftJwt({ alg, typ: 'JWT' }, dev(), null);
        await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
      }
      const rsaNone = craftJwt({ alg: 'none' }, claims({ iss: RSA_ISS, aud: DEV_AUDIENCE }), null);
      await expectRejected({ authorization: `Bearer ${rsaNone}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('when HS256 is signed with the RS256 issuer\'s public key PEM as the HMAC secret', async () => {
      const pem = readFileSync(pemPath);
      const rsaClaims = claims({ iss: RSA_ISS, aud: DEV_AUDIENCE });
      for (const secret of [pem, pem.toString('utf8').trim(), rsa.publicKey.export({ format: 'der', type: 'spki' })]) {
        const t = craftJwt({ alg: 'HS256', typ: 'JWT' }, rsaClaims, hs256(secret));
        await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
      }
    });

    it('when the token embeds its own key in a "jwk" header', async () => {
      const attacker = rsaKeyPair();
      const jwk = attacker.publicKey.export({ format: 'jwk' });
      const t = craftJwt({ alg: 'RS256', typ: 'JWT', jwk }, claims({ iss: RSA_ISS, aud: DEV_AUDIENCE }), rs256(attacker.privateKey));
      await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
      const ecAttacker = ecKeyPair();
      const t2 = craftJwt(
        { alg: 'ES256', kid: 'ec-1', jwk: ecAttacker.publicKey.export({ format: 'jwk' }) },
        claims({ iss: EC_ISS, aud: DEV_AUDIENCE }),
        es256(ecAttacker.privateKey),
      );
      await expectRejected({ authorization: `Bearer ${t2}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('when two different tokens are presented (Authorization and x-api-key)', async () => {
      const a = await gw.token({ agent: 'agent-a' });
      const b = await gw.token({ agent: 'agent-b' });
      await expectRejected({ authorization: `Bearer ${a}`, 'x-api-key': b }, 'VALET_ERR_TOKEN_INVALID', '/anthropic/v1/messages');
    });

    describe('when its lifetime is unbounded or unknown (max_ttl, default 1h; iat required)', () => {
      const hs = (c: Record<string, unknown>): string => craftJwt({ alg: 'HS256', typ: 'JWT' }, c, hs256(DEV_SIGNING_KEY));

      it('exp a year ahead', async () => {
        const { body } = await expectRejected({ authorization: `Bearer ${hs(dev({}, 365 * 86_400))}` }, 'VALET_ERR_TOKEN_INVALID');
        expect(JSON.stringify(body)).toMatch(/max_ttl/);
      });

      it('exp = iat + max_ttl + 1s, on the data plane and the admin plane', async () => {
        await expectRejected({ authorization: `Bearer ${hs(dev({}, 3_601))}` }, 'VALET_ERR_TOKEN_INVALID');
        // The same issuer signs admin tokens: the admin plane applies the same limit.
        const admin = hs(dev({ aud: gw.gateway.config.gateway.admin.audience, roles: ['admin'] }, 3_601));
        const res = await request(`${gw.adminUrl}/api/whoami`, { headers: { authorization: `Bearer ${admin}` } });
        expect(res.statusCode).toBe(401);
        expect(await res.body.text()).toMatch(/VALET_ERR_ADMIN_UNAUTHENTICATED.*max_ttl/);
      });

      it('no iat', async () => {
        const c = dev();
        delete c['iat'];
        await expectRejected({ authorization: `Bearer ${hs(c)}` }, 'VALET_ERR_TOKEN_INVALID');
      });

      it('iat in the future beyond the clock skew', async () => {
        await expectRejected({ authorization: `Bearer ${hs(dev({ iat: nowS() + 120 }))}` }, 'VALET_ERR_TOKEN_INVALID');
      });

      it('iat long ago (an old token with exp pushed out)', async () => {
        await expectRejected({ authorization: `Bearer ${hs(dev({ iat: nowS() - 7_200 }, 300))}` }, 'VALET_ERR_TOKEN_INVALID');
      });

      it('nbf in the future does not stretch the limit (exp = nbf + 1h, signed now)', async () => {
        // Not yet valid either way; but after nbf it would still be refused, as exp - iat > 1h.
        await expectRejected({ authorization: `Bearer ${hs(dev({ nbf: nowS() + 86_400 }, 86_400 + 3_600))}` }, 'VALET_ERR_TOKEN_INVALID');
      });

      it('25h from an issuer with max_ttl: 24h', async () => {
        const t = hs(claims({ iss: LONG_ISS, aud: DEV_AUDIENCE, ttl: 25 * 3_600 }));
        await expectRejected({ authorization: `Bearer ${t}` }, 'VALET_ERR_TOKEN_INVALID');
      });
    });

    it('when the token is garbage', async () => {
      await expectRejected({ authorization: 'Bearer abc' }, 'VALET_ERR_TOKEN_INVALID');
      await expectRejected({ authorization: `Bearer ${'a'.repeat(9000)}.b.c` }, 'VALET_ERR_TOKEN_INVALID');
    });
  });

  describe('is accepted', () => {
    async function expectAccepted(headers: Record<string, string>, path = '/api/v1/x') {
      const r = await send(path, headers);
      expect(r.status, r.text).toBe(200);
      expect(r.forwarded).toBe(1);
      const got = upstream.requests.at(-1)!;
      for (const v of Object.values(headers)) {
        const token = v.replace(/^Bearer\s+/i, '');
        expect([got.url, ...got.rawHeaders, got.body.toString()].join('\n')).not.toContain(token);
      }
      const row = await auditRowFor(gw, requestIdOf(r.headers));
      expect(row).toMatchObject({ status: 200, decision: 'allow', error_code: null });
      return { row, got };
    }

    it('a token within the clock skew', async () => {
      const t = craftJwt({ alg: 'HS256', typ: 'JWT' }, dev({}, -5), hs256(DEV_SIGNING_KEY));
      const { row } = await expectAccepted({ authorization: `Bearer ${t}` });
      expect(row.agent).toBe('agent-1');
    });

    it('a token of exactly max_ttl (1h by default), and a normal one', async () => {
      await expectAccepted({ authorization: `Bearer ${craftJwt({ alg: 'HS256', typ: 'JWT' }, dev({}, 3_600), hs256(DEV_SIGNING_KEY))}` });
      await expectAccepted({ authorization: `Bearer ${await gw.token()}` });
      const admin = await gw.adminToken(['admin']);
      const res = await request(`${gw.adminUrl}/api/whoami`, { headers: { authorization: `Bearer ${admin}` } });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    });

    it('a 2h token from an issuer with max_ttl: 24h', async () => {
      const t = craftJwt({ alg: 'HS256', typ: 'JWT' }, claims({ iss: LONG_ISS, aud: DEV_AUDIENCE, ttl: 2 * 3_600 }), hs256(DEV_SIGNING_KEY));
      await expectAccepted({ authorization: `Bearer ${t}` });
    });

    it('an RS256 token verified with public_key_file', async () => {
      const t = craftJwt({ alg: 'RS256', typ: 'JWT' }, claims({ iss: RSA_ISS, aud: DEV_AUDIENCE, sub: 'rsa-agent' }), rs256(rsa.privateKey));
      const { row } = await expectAccepted({ authorization: `Bearer ${t}` });
      expect(row.agent).toBe('rsa-agent');
    });

    it('an ES256 token verified with jwks_file', async () => {
      const t = craftJwt(
        { alg: 'ES256', typ: 'JWT', kid: 'ec-1' },
        claims({ iss: EC_ISS, aud: DEV_AUDIENCE, sub: 'ec-agent', extra: { tenant: 'acme' } }),
        es256(ec.privateKey),
      );
      const { row } = await expectAccepted({ authorization: `Bearer ${t}` });
      expect(row).toMatchObject({ agent: 'ec-agent', tenant: 'acme' });
      // The same claims signed by a key not in the JWKS are refused.
      const other = ecKeyPair();
      const bad = craftJwt({ alg: 'ES256', typ: 'JWT', kid: 'ec-1' }, claims({ iss: EC_ISS, aud: DEV_AUDIENCE }), es256(other.privateKey));
      await expectRejected({ authorization: `Bearer ${bad}` }, 'VALET_ERR_TOKEN_INVALID');
    });

    it('an RFC 8693 delegated token, audited with both agent and user', async () => {
      const t = await gw.token({ agent: 'helper-bot', user: 'alice@example.com' });
      const payload = JSON.parse(Buffer.from(t.split('.')[1] as string, 'base64url').toString()) as Record<string, unknown>;
      expect(payload).toMatchObject({ sub: 'alice@example.com', act: { sub: 'helper-bot' } });
      const { row } = await expectAccepted({ authorization: `Bearer ${t}` });
      expect(row).toMatchObject({ agent: 'helper-bot', user: 'alice@example.com' });
      // Hand-made, via the RS256 issuer as well.
      const t2 = craftJwt(
        { alg: 'RS256', typ: 'JWT' },
        claims({ iss: RSA_ISS, aud: DEV_AUDIENCE, sub: 'bob', extra: { act: { sub: 'rsa-bot' } } }),
        rs256(rsa.privateKey),
      );
      const { row: row2 } = await expectAccepted({ authorization: `Bearer ${t2}` });
      expect(row2).toMatchObject({ agent: 'rsa-bot', user: 'bob' });
    });

    it('a token in the Anthropic-style x-api-key header when the upstream declares it', async () => {
      const t = await gw.token({ agent: 'claude-agent' });
      const { row, got } = await expectAccepted({ 'x-api-key': t }, '/anthropic/v1/messages');
      expect(row.agent).toBe('claude-agent');
      expect(headerValues(got, 'x-api-key')).toEqual([SECRET]);
      expect(headerValues(got, 'authorization')).toEqual([]);
    });

    it('but x-api-key is not a token source for an upstream that did not declare it', async () => {
      const t = await gw.token();
      await expectRejected({ 'x-api-key': t }, 'VALET_ERR_TOKEN_MISSING', '/api/v1/x');
    });
  });
});
