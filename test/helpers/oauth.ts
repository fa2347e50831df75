import { createHash, randomBytes, type KeyObject } from 'node:crypto';
import { decodeJwt, jwtVerify } from 'jose';
import { startFakeUpstream, type FakeUpstream, type RecordedRequest } from './upstream.js';

/**
 * A fake OAuth 2.0 authorization server on 127.0.0.1 that behaves like real ones where Valet could
 * get it wrong: refresh tokens rotate on every use and a used or revoked one is `invalid_grant`
 * (and, like most servers, reuse revokes the whole family); JWT-bearer assertions and GitHub App
 * JWTs are verified with the public key; authorization codes are single use, bound to the
 * redirect URI and to the PKCE challenge (S256); token exchange checks its subject token.
 */
export interface FakeAuthServer {
  readonly origin: string;
  readonly requests: RecordedRequest[];
  /** Token requests of one grant type (`refresh_token`, `authorization_code`, ...). */
  grants(type: string): RecordedRequest[];
  /** Makes `token` a valid refresh token for `subject` (a seed an admin put in a secret). */
  seedRefreshToken(token: string, subject?: string): void;
  /** Revokes every refresh token of the subject: the next refresh is `invalid_grant`. */
  revoke(subject: string): void;
  /** Refresh tokens presented after they were rotated away (each one would be an attack). */
  readonly reused: string[];
  /** Seconds the next tokens live. */
  lifetimeS: number;
  /** Set: every token request fails with this status. */
  failWith: number | undefined;
  close(): Promise<void>;
}

export interface FakeAuthOptions {
  readonly clientId: string;
  readonly clientSecret: string;
  /** Verifies JWT-bearer assertions (iss = `serviceAccount`). */
  readonly assertionKey?: KeyObject;
  readonly serviceAccount?: string;
  /** Verifies GitHub App JWTs (iss = `appId`). */
  readonly appKey?: KeyObject;
  readonly appId?: string;
  /** Verifies `private_key_jwt` client assertions (RFC 7523 §2.2: iss = sub = client id, aud = the token endpoint). */
  readonly clientKey?: KeyObject;
  /** The user who consents on the authorization page (set per test). */
  consentingUser?: () => string;
}

export async function startFakeAuthServer(o: FakeAuthOptions): Promise<FakeAuthServer> {
  let n = 0;
  const refresh = new Map<string, { subject: string; live: boolean }>();
  const revoked = new Set<string>();
  const codes = new Map<string, { redirectUri: string; challenge: string; subject: string }>();
  const reused: string[] = [];
  const state = { lifetimeS: 3600, failWith: undefined as number | undefined };
  const next = (prefix: string): string => `${prefix}-${++n}-${randomBytes(4).toString('hex')}`;

  let upstream: FakeUpstream | undefined;
  upstream = await startFakeUpstream(async (req, res) => {
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(body));
    };
    const url = new URL(req.url, 'http://x');
    const issue = (subject: string, withRefresh: boolean, extra: Record<string, unknown> = {}): void => {
      const body: Record<string, unknown> = { access_token: next(`at-${subject}`), token_type: 'Bearer', expires_in: state.lifetimeS, ...extra };
      if (withRefresh) {
        const rt = next(`rt-${subject}`);
        refresh.set(rt, { subject, live: true });
        body['refresh_token'] = rt;
      }
      json(200, body);
    };
    try {
      if (req.method === 'GET' && url.pathname === '/authorize') {
        // A consent page: the person presses Authorize; the code is bound to the challenge and redirect URI.
        const q = url.searchParams;
        if (q.get('client_id') !== o.clientId || q.get('response_type') !== 'code' || q.get('code_challenge_method') !== 'S256' || !q.get('code_challenge')) {
          res.writeHead(400, { 'content-type': 'text/plain' });
          res.end('bad authorization request');
          return;
        }
        const approve = new URL('/authorize/approve', upstream!.origin);
        for (const k of ['redirect_uri', 'state', 'code_challenge', 'scope']) approve.searchParams.set(k, q.get(k) ?? '');
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end(`<!doctype html><title>Fake provider</title><h1>Allow Valet to use your account?</h1><p>Scopes: ${q.get('scope') ?? ''}</p><a id="approve" href="${approve.toString().replace(/&/g, '&amp;')}">Authorize</a>`);
        return;
      }
      if (req.method === 'GET' && url.pathname === '/authorize/approve') {
        const q = url.searchParams;
        const code = next('code');
        codes.set(code, { redirectUri: q.get('redirect_uri') ?? '', challenge: q.get('code_challenge') ?? '', subject: o.consentingUser?.() ?? 'someone' });
        const back = new URL(q.get('redirect_uri') ?? '');
        back.searchParams.set('code', code);
        back.searchParams.set('state', q.get('state') ?? '');
        res.writeHead(302, { location: back.toString() });
        res.end();
        return;
      }
      if (req.method === 'POST' && url.pathname.startsWith('/app/installations/')) {
        const id = url.pathname.split('/')[3];
        const jwt = String(req.headers['authorization'] ?? '').replace(/^Bearer /, '');
        const { payload } = await jwtVerify(jwt, o.appKey as KeyObject, { algorithms: ['RS256'], issuer: o.appId ?? '' });
        if ((payload.exp ?? 0) - (payload.iat ?? 0) > 600) return json(401, { message: 'JWT lifetime too long' });
        if (state.failWith !== undefined) return json(state.failWith, { message: 'down' });
        return json(201, { token: next(`ghs-${id}`), expires_at: new Date(Date.now() + state.lifetimeS * 1000).toISOString() });
      }
      if (req.method !== 'POST' || url.pathname !== '/token') return json(404, { error: 'not_found' });
      if (state.failWith !== undefined) return json(state.failWith, { error: 'temporarily_unavailable' });
      const form = new URLSearchParams(req.body.toString());
      const grant = form.get('grant_type');
      const basic = Buffer.from(String(req.headers['authorization'] ?? '').replace(/^Basic /, ''), 'base64').toString();
      let clientOk = basic === `${o.clientId}:${o.clientSecret}` || (form.get('client_id') === o.clientId && form.get('client_secret') === o.clientSecret);
      if (form.get('client_assertion_type') === 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' && o.clientKey !== undefined) {
        const { payload } = await jwtVerify(form.get('client_assertion') ?? '', o.clientKey, { issuer: o.clientId, subject: o.clientId, audience: `${upstream!.origin}/token` });
        clientOk = typeof payload.jti === 'string' && form.get('client_id') === o.clientId;
      }
      if (grant === 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
        const { payload } = await jwtVerify(form.get('assertion') ?? '', o.assertionKey as KeyObject, { issuer: o.serviceAccount ?? '', audience: `${upstream!.origin}/token` });
        return issue(`sa`, false, { scope: payload['scope'] });
      }
      if (!clientOk) return json(401, { error: 'invalid_client' });
      if (grant === 'refresh_token') {
        const rt = form.get('refresh_token') ?? '';
        const r = refresh.get(rt);
        if (r === undefined || revoked.has(r.subject)) return json(400, { error: 'invalid_grant' });
        if (!r.live) {
          // Reuse of a rotated refresh token: the family is revoked (RFC 9700 §4.14.2).
          reused.push(rt);
          revoked.add(r.subject);
          return json(400, { error: 'invalid_grant' });
        }
        r.live = false;
        return issue(r.subject, true);
      }
      if (grant === 'authorization_code') {
        const c = codes.get(form.get('code') ?? '');
        codes.delete(form.get('code') ?? '');
        const verifier = form.get('code_verifier') ?? '';
        if (c === undefined || c.redirectUri !== form.get('redirect_uri') || createHash('sha256').update(verifier).digest('base64url') !== c.challenge) return json(400, { error: 'invalid_grant' });
        return issue(c.subject, true);
      }
      if (grant === 'urn:ietf:params:oauth:grant-type:token-exchange') {
        const subject = decodeJwt(form.get('subject_token') ?? '');
        if (form.get('subject_token_type') !== 'urn:ietf:params:oauth:token-type:jwt') return json(400, { error: 'invalid_request' });
        // A JWT access token naming the subject, with the agent (and the exchanger) as actors.
        const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
        const jwt = `${b64({ alg: 'RS256', typ: 'at+jwt' })}.${b64({ sub: subject.sub, jti: next('xchg'), act: { sub: 'token-exchanger', act: subject['act'] } })}.c2ln`;
        return json(200, { access_token: jwt, token_type: 'Bearer', expires_in: state.lifetimeS, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token' });
      }
      if (grant === 'client_credentials') return issue('client', false);
      return json(400, { error: 'unsupported_grant_type' });
    } catch {
      return json(400, { error: 'invalid_grant' });
    }
  });
  const u = upstream;
  return {
    origin: u.origin,
    requests: u.requests,
    grants: (type) => u.requests.filter((r) => r.url === '/token' && new URLSearchParams(r.body.toString()).get('grant_type') === type),
    seedRefreshToken: (token, subject = 'seed') => void refresh.set(token, { subject, live: true }),
    revoke: (subject) => void revoked.add(subject),
    reused,
    get lifetimeS() {
      return state.lifetimeS;
    },
    set lifetimeS(v: number) {
      state.lifetimeS = v;
    },
    get failWith() {
      return state.failWith;
    },
    set failWith(v: number | undefined) {
      state.failWith = v;
    },
    close: () => u.close(),
  };
}
