import { createPrivateKey, randomUUID, type KeyObject } from 'node:crypto';
import { decodeJwt, SignJWT } from 'jose';
import { actorChain } from '../types.js';
import { request } from 'undici';
import { ValetError } from '../errors.js';
import type { Grant } from '../secrets/grants.js';
import { assumeRole, storedKeys } from './sigv4.js';
import type { ClientAuth, ProviderConfig, UserOAuthConfig } from './types.js';

/** What a token endpoint gave: an access token, maybe a (rotated) refresh token, and when the access token expires. */
export interface Issued {
  readonly accessToken: string;
  readonly refreshToken: string | undefined;
  readonly expiresAt: number;
  /** Token exchange: the actors (RFC 8693 `act`) the issued token names, when it is a JWT that has them. */
  readonly act?: readonly string[] | undefined;
}

/** What one token request may use: the tenant's secrets, the stored grant, the agent's token. */
export interface IssueInput {
  /** The secret `name` for the caller's tenant (its own, else the shared one). */
  readonly secret: (name: string) => string | undefined;
  readonly held: Grant | undefined;
  /** The agent's token (token exchange). */
  readonly subjectToken?: string | undefined;
}

export type Issuer = (input: IssueInput) => Promise<Issued>;

/**
 * The authorization server refused the grant itself (RFC 6749 §5.2 `invalid_grant`: a revoked or
 * expired refresh token, a user who disconnected the app): asking again cannot help, a person must
 * act. `reason` is the OAuth error code only.
 */
export class GrantRejected extends Error {
  constructor(readonly reason: string) {
    super(`the authorization server rejected the grant (${reason})`);
  }
}

export interface IssuerOptions {
  /** The upstream, for messages. */
  readonly upstream: string;
  readonly now: () => number;
  readonly timeoutMs: number;
  /** Token requests that failed, for the log: never a secret or a response body. */
  readonly onError: (problem: string) => void;
}

/** An `expires_in` the server leaves out is taken as this (RFC 6749 recommends sending it). */
const DEFAULT_LIFETIME_S = 300;
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const CLIENT_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

/** One token-endpoint conversation: a form POST, the answer checked, secrets kept out of every message. */
export class TokenEndpoint {
  constructor(private readonly o: IssuerOptions) {}

  failure(why: string): ValetError {
    this.o.onError(`upstream ${this.o.upstream}: ${why}`);
    return new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${this.o.upstream} could not be obtained: ${why}; nothing was forwarded.`);
  }

  /** The secret, or VALET_ERR_CREDENTIAL_UNAVAILABLE when it is not configured. */
  need(input: IssueInput, name: string): string {
    const v = input.secret(name);
    if (v === undefined || v === '') throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    return v;
  }

  /** Adds the client's authentication to a token request. */
  async authenticate(client: ClientAuth, url: string, form: URLSearchParams, headers: Record<string, string>, input: IssueInput): Promise<string[]> {
    switch (client.method) {
      case 'none':
        form.set('client_id', client.clientId);
        return [];
      case 'post': {
        const secret = this.need(input, client.clientSecret as string);
        form.set('client_id', client.clientId);
        form.set('client_secret', secret);
        return [secret];
      }
      case 'basic': {
        const secret = this.need(input, client.clientSecret as string);
        // RFC 6749 §2.3.1: both parts form-encoded before Basic.
        const enc = (s: string): string => encodeURIComponent(s).replace(/%20/g, '+');
        headers['authorization'] = `Basic ${Buffer.from(`${enc(client.clientId)}:${enc(secret)}`).toString('base64')}`;
        return [secret];
      }
      case 'private_key_jwt': {
        // RFC 7523 §2.2 / OIDC Core §9: iss = sub = client_id, aud = the token endpoint, single use (jti).
        const key = this.privateKey(this.need(input, client.privateKey as string));
        const assertion = await this.sign(key.key, key.alg, client.keyId, { iss: client.clientId, sub: client.clientId, aud: url, jti: randomUUID() }, 300);
        form.set('client_id', client.clientId);
        form.set('client_assertion_type', CLIENT_ASSERTION);
        form.set('client_assertion', assertion);
        return [];
      }
    }
  }

  /**
   * A PEM private key (PKCS#8 or GitHub's PKCS#1) and the algorithm it signs with. Secrets are one
   * line (a line break could split a header), so the PEM is stored with its line breaks written
   * `\n` (as service-account files have them), or base64-encoded whole.
   */
  privateKey(stored: string): { key: KeyObject; alg: 'RS256' | 'ES256' } {
    let key: KeyObject;
    try {
      const pem = stored.includes('-----BEGIN') ? stored.replace(/\\n/g, '\n') : Buffer.from(stored, 'base64').toString('utf8');
      key = createPrivateKey(pem);
    } catch {
      throw this.failure('the configured private key is not a PEM private key');
    }
    return { key, alg: key.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256' };
  }

  async sign(key: KeyObject, alg: string, kid: string | undefined, claims: Record<string, unknown>, lifetimeS: number, iatSkewS = 0): Promise<string> {
    const iat = Math.floor(this.o.now() / 1000) - iatSkewS;
    return new SignJWT(claims).setProtectedHeader(kid === undefined ? { alg, typ: 'JWT' } : { alg, kid, typ: 'JWT' }).setIssuedAt(iat).setExpirationTime(iat + iatSkewS + lifetimeS).sign(key);
  }

  /**
   * POSTs `form` and returns the token response. A refused `refresh_token` or `authorization_code`
   * grant (`invalid_grant`) is a {@link GrantRejected}; anything else that is not a token is a 503.
   */
  async post(url: string, form: URLSearchParams, headers: Record<string, string>, hidden: readonly string[], body: 'form' | 'json' = 'form'): Promise<Record<string, unknown>> {
    let status: number;
    let answer: unknown;
    try {
      const res = await request(url, {
        method: 'POST',
        headers: { 'content-type': body === 'form' ? 'application/x-www-form-urlencoded' : 'application/json', accept: 'application/json', ...headers },
        body: body === 'form' ? form.toString() : JSON.stringify(Object.fromEntries(form)),
        headersTimeout: this.o.timeoutMs,
        bodyTimeout: this.o.timeoutMs,
      });
      status = res.statusCode;
      answer = await res.body.json().catch(() => undefined);
    } catch (err) {
      throw this.failure(`the token endpoint could not be reached (${(err as { code?: string }).code ?? 'error'})`);
    }
    const b = (typeof answer === 'object' && answer !== null ? answer : {}) as Record<string, unknown>;
    if (status >= 200 && status < 300) return b;
    // Only an OAuth error code (RFC 6749 §5.2: invalid_client, invalid_scope...) is repeated, never
    // the rest of the body: a server that echoes what it was sent must not put a secret in a message.
    const code = typeof b['error'] === 'string' && /^[a-z_]{1,40}$/.test(b['error']) && !hidden.some((h) => h.includes(b['error'] as string)) ? b['error'] : undefined;
    const grant = form.get('grant_type');
    if (code === 'invalid_grant' && (grant === 'refresh_token' || grant === 'authorization_code')) throw new GrantRejected(code);
    throw this.failure(`the token endpoint answered ${status}${code === undefined ? '' : `: ${code}`}`);
  }

  /** An RFC 6749 §5.1 access-token response, checked. */
  issued(b: Record<string, unknown>, started: number, previousRefresh: string | undefined): Issued {
    const token = b['access_token'];
    if (typeof token !== 'string' || token === '') throw this.failure('the token endpoint answered without an access token');
    const lifetime = Number(b['expires_in']) > 0 ? Number(b['expires_in']) : DEFAULT_LIFETIME_S;
    // A server that does not rotate leaves refresh_token out: the one held stays valid.
    const refresh = typeof b['refresh_token'] === 'string' && b['refresh_token'] !== '' ? b['refresh_token'] : previousRefresh;
    return { accessToken: token, refreshToken: refresh, expiresAt: started + lifetime * 1000 };
  }

  /** The token request of an OAuth grant: form, client authentication, answer. */
  async grant(url: string, client: ClientAuth | undefined, form: URLSearchParams, input: IssueInput, previousRefresh?: string): Promise<Issued> {
    const headers: Record<string, string> = {};
    const hidden = [...(client === undefined ? [] : await this.authenticate(client, url, form, headers, input)), ...form.values()];
    const started = this.o.now();
    return this.issued(await this.post(url, form, headers, hidden), started, previousRefresh);
  }
}

const scopeForm = (form: URLSearchParams, scopes: readonly string[]): void => {
  if (scopes.length > 0) form.set('scope', scopes.join(' '));
};

/** A Google service-account file's fields, when the secret is one; else the secret is taken as a PEM key. */
function serviceAccount(value: string): { privateKey: string; clientEmail?: string | undefined; tokenUri?: string | undefined; keyId?: string | undefined } {
  if (!value.trimStart().startsWith('{')) return { privateKey: value };
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(value) as Record<string, unknown>;
  } catch {
    return { privateKey: value };
  }
  const s = (k: string): string | undefined => (typeof j[k] === 'string' ? (j[k] as string) : undefined);
  return { privateKey: s('private_key') ?? '', clientEmail: s('client_email'), tokenUri: s('token_uri'), keyId: s('private_key_id') };
}

/**
 * The function that asks for a new token for a provider. Each is one round trip (two for none);
 * caching, single flight and storage are the caller's (cache.ts).
 */
export function issuerFor(p: ProviderConfig, o: IssuerOptions): Issuer {
  const ep = new TokenEndpoint(o);
  switch (p.kind) {
    case 'oauth2_client_credentials':
      return async (input) => {
        const form = new URLSearchParams({ grant_type: 'client_credentials' });
        scopeForm(form, p.scopes);
        if (p.resource !== undefined) form.set('resource', p.resource);
        if (p.audience !== undefined) form.set('audience', p.audience);
        return ep.grant(p.tokenUrl, p.client, form, input);
      };
    case 'oauth2_refresh_token':
    case 'oauth2_user':
      return async (input) => {
        const refresh = input.held?.tokens.refreshToken ?? (p.kind === 'oauth2_refresh_token' ? ep.need(input, p.refreshToken) : undefined);
        if (refresh === undefined) throw new GrantRejected('no_refresh_token');
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refresh });
        if (p.kind === 'oauth2_refresh_token') scopeForm(form, p.scopes);
        return ep.grant(p.tokenUrl, p.client, form, input, refresh);
      };
    case 'oauth2_jwt_bearer':
      return async (input) => {
        const sa = serviceAccount(ep.need(input, p.privateKey));
        const tokenUrl = p.tokenUrl ?? sa.tokenUri;
        const issuer = p.issuer ?? sa.clientEmail;
        if (tokenUrl === undefined || issuer === undefined) throw ep.failure('the JWT bearer grant needs "token_url" and "issuer" (or a service-account file that has them)');
        const { key } = ep.privateKey(sa.privateKey);
        const claims: Record<string, unknown> = { iss: issuer, aud: p.audience ?? tokenUrl };
        if (p.subject !== undefined) claims['sub'] = p.subject;
        // Google reads the scopes from the assertion (its `scope` claim); RFC 7523 servers from the form.
        if (p.scopes.length > 0) claims['scope'] = p.scopes.join(' ');
        const assertion = await ep.sign(key, p.algorithm, p.keyId ?? sa.keyId, claims, 3600);
        const form = new URLSearchParams({ grant_type: JWT_BEARER, assertion });
        return ep.grant(tokenUrl, undefined, form, input);
      };
    case 'github_app':
      return async (input) => {
        const { key } = ep.privateKey(ep.need(input, p.privateKey));
        // GitHub: iat 60 s in the past against clock drift, at most 10 minutes in all.
        const jwt = await ep.sign(key, 'RS256', undefined, { iss: p.appId }, 540, 60);
        const started = o.now();
        const b = await ep.post(
          `${p.apiUrl}/app/installations/${encodeURIComponent(p.installationId)}/access_tokens`,
          new URLSearchParams(),
          { authorization: `Bearer ${jwt}`, accept: 'application/vnd.github+json', 'x-github-api-version': '2022-11-28', 'user-agent': 'valet' },
          [],
          'json',
        );
        const token = b['token'];
        const expires = typeof b['expires_at'] === 'string' ? Date.parse(b['expires_at']) : NaN;
        if (typeof token !== 'string' || token === '') throw ep.failure('GitHub answered without an installation token');
        return { accessToken: token, refreshToken: undefined, expiresAt: Number.isFinite(expires) ? expires : started + 3_600_000 };
      };
    case 'aws_assume_role':
      // The role's temporary credentials, as one JSON value: sealed, cached and shared like a token.
      return async (input) => {
        const a = await assumeRole(p.sigv4, p.role, storedKeys(p.sigv4, input.secret), { upstream: o.upstream, origin: p.role.stsEndpoint, timeoutMs: o.timeoutMs, onError: o.onError }, o.now);
        return { accessToken: JSON.stringify(a.credentials), refreshToken: undefined, expiresAt: a.expiresAt };
      };
    case 'oauth2_token_exchange':
      return async (input) => {
        if (input.subjectToken === undefined) throw ep.failure('no subject token to exchange');
        const form = new URLSearchParams({ grant_type: TOKEN_EXCHANGE, subject_token: input.subjectToken, subject_token_type: JWT_TOKEN_TYPE });
        if (p.requestedTokenType !== undefined) form.set('requested_token_type', p.requestedTokenType);
        if (p.audience !== undefined) form.set('audience', p.audience);
        if (p.resource !== undefined) form.set('resource', p.resource);
        scopeForm(form, p.scopes);
        const issued = await ep.grant(p.tokenUrl, p.client, form, input);
        return { ...issued, act: issuedActors(issued.accessToken) };
      };
  }
}

/** The authorization request of the connect flow (RFC 6749 §4.1.1 with RFC 7636 S256). */
export function authorizationUrl(p: UserOAuthConfig, redirectUri: string, state: string, challenge: string): string {
  const u = new URL(p.authorizeUrl);
  for (const [k, v] of Object.entries(p.authorizeParams)) u.searchParams.set(k, v);
  u.searchParams.set('response_type', 'code');
  u.searchParams.set('client_id', p.client.clientId);
  u.searchParams.set('redirect_uri', redirectUri);
  if (p.scopes.length > 0) u.searchParams.set('scope', p.scopes.join(' '));
  u.searchParams.set('state', state);
  u.searchParams.set('code_challenge', challenge);
  u.searchParams.set('code_challenge_method', 'S256');
  return u.toString();
}

/** Redeems an authorization code with its PKCE verifier (RFC 6749 §4.1.3, RFC 7636 §4.5). */
export function redeemCode(p: UserOAuthConfig, o: IssuerOptions, input: IssueInput, code: string, verifier: string, redirectUri: string): Promise<Issued> {
  const form = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier });
  return new TokenEndpoint(o).grant(p.tokenUrl, p.client, form, input);
}

/**
 * The `act` chain of an access token an exchange issued, when it is a JWT (read, not verified: it
 * came straight from the authorization server and is only recorded, never trusted for a decision).
 */
function issuedActors(token: string): string[] | undefined {
  try {
    const chain = actorChain(decodeJwt(token)['act']);
    return chain.length > 0 ? chain : undefined;
  } catch {
    return undefined;
  }
}
