import { request } from 'undici';
import { ValetError } from '../errors.js';

/** `credential.provider` of kind `oauth2_client_credentials` (RFC 6749 §4.4), as configured. */
export interface ClientCredentialsConfig {
  readonly kind: 'oauth2_client_credentials';
  readonly tokenUrl: string;
  readonly clientId: string;
  /** The name of the secret holding the client secret (store or environment, per tenant like any other). */
  readonly clientSecret: string;
  readonly scopes: readonly string[];
  /** RFC 8707 `resource` and the common `audience` parameter, when the server wants them. */
  readonly resource: string | undefined;
  readonly audience: string | undefined;
  /** How the client authenticates: HTTP Basic (`client_secret_basic`, the default) or in the form (`client_secret_post`). */
  readonly clientAuth: 'basic' | 'post';
}

/** An access token and when it stops being usable (ms since the epoch). */
interface Held {
  readonly token: string;
  readonly expiresAt: number;
  readonly obtainedAt: number;
}

export interface TokenProvider {
  /** A valid access token for the tenant's client credentials; VALET_ERR_TOKEN_ENDPOINT when none can be had. */
  token(tenant: string | null): Promise<string>;
  /** A new token from the endpoint, bypassing the cache (`valet credentials test`): when it expires. */
  probe(tenant: string | null): Promise<{ expiresAt: number }>;
}

export interface ProviderOptions {
  /** The upstream, for messages. */
  readonly upstream: string;
  /** Looks the client secret up for a tenant (its own, else the shared one), like any credential secret. */
  readonly secret: (name: string, tenant: string | null) => string | undefined;
  readonly now?: () => number;
  /** Tokens are renewed this long before they expire, in the background while still valid (default 60 s, at most half the lifetime). */
  readonly refreshAheadMs?: number;
  readonly timeoutMs?: number;
  /** Token requests that failed, for the log: never the secret or the response body. */
  readonly onError?: (problem: string) => void;
}

/** After a failed renewal, a still-valid token is served without asking again for this long. */
const BACKOFF_MS = 5_000;

/** An `expires_in` the server leaves out is taken as this (RFC 6749 recommends sending it). */
const DEFAULT_LIFETIME_S = 300;

/**
 * Access tokens from the client-credentials grant, cached per tenant (a tenant may hold its own
 * client secret). One token request at a time per tenant however many calls wait for it
 * (single-flight); renewed ahead of expiry while the current token keeps serving; when the token
 * endpoint fails, calls fail closed (503 `VALET_ERR_TOKEN_ENDPOINT`) unless a still-valid token is
 * held. Tokens live in memory only; they are scrubbed from responses like any injected secret.
 */
export function clientCredentialsProvider(c: ClientCredentialsConfig, o: ProviderOptions): TokenProvider {
  const now = o.now ?? Date.now;
  const held = new Map<string, Held>();
  const inFlight = new Map<string, Promise<Held>>();
  /** When a background renewal last failed, per tenant: not retried in the background for BACKOFF_MS. */
  const failedAt = new Map<string, number>();

  const fetchToken = async (tenant: string | null): Promise<Held> => {
    const secret = o.secret(c.clientSecret, tenant);
    if (secret === undefined || secret === '') throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    const form = new URLSearchParams({ grant_type: 'client_credentials' });
    if (c.scopes.length > 0) form.set('scope', c.scopes.join(' '));
    if (c.resource !== undefined) form.set('resource', c.resource);
    if (c.audience !== undefined) form.set('audience', c.audience);
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    if (c.clientAuth === 'post') {
      form.set('client_id', c.clientId);
      form.set('client_secret', secret);
    } else {
      // RFC 6749 §2.3.1: both parts form-encoded before Basic.
      const enc = (s: string): string => encodeURIComponent(s).replace(/%20/g, '+');
      headers['authorization'] = `Basic ${Buffer.from(`${enc(c.clientId)}:${enc(secret)}`).toString('base64')}`;
    }
    const started = now();
    let status: number;
    let body: unknown;
    try {
      const res = await request(c.tokenUrl, { method: 'POST', headers, body: form.toString(), headersTimeout: o.timeoutMs ?? 10_000, bodyTimeout: o.timeoutMs ?? 10_000 });
      status = res.statusCode;
      body = await res.body.json().catch(() => undefined);
    } catch (err) {
      throw failure(`the token endpoint could not be reached (${(err as { code?: string }).code ?? 'error'})`);
    }
    const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
    if (status !== 200 || typeof b['access_token'] !== 'string' || b['access_token'] === '') {
      // Only an OAuth error code (RFC 6749 §5.2: invalid_client, invalid_scope...) is repeated, never
      // the rest of the body: a server that echoes what it was sent must not put the secret in a message.
      const code = typeof b['error'] === 'string' && /^[a-z_]{1,40}$/.test(b['error']) && !secret.includes(b['error']) ? `: ${b['error']}` : '';
      throw failure(`the token endpoint answered ${status}${code}`);
    }
    const lifetime = typeof b['expires_in'] === 'number' && b['expires_in'] > 0 ? b['expires_in'] : Number(b['expires_in']) > 0 ? Number(b['expires_in']) : DEFAULT_LIFETIME_S;
    return { token: b['access_token'], obtainedAt: started, expiresAt: started + lifetime * 1000 };
  };

  const failure = (why: string): ValetError => {
    o.onError?.(`upstream ${o.upstream}: ${why}`);
    return new ValetError('VALET_ERR_TOKEN_ENDPOINT', `The credential for upstream ${o.upstream} could not be obtained: ${why}; nothing was forwarded.`);
  };

  /** One request per tenant at a time; its result replaces the held token. */
  const renew = (key: string, tenant: string | null): Promise<Held> => {
    let p = inFlight.get(key);
    if (p === undefined) {
      p = fetchToken(tenant).then(
        (h) => {
          held.set(key, h);
          failedAt.delete(key);
          return h;
        },
        (err: unknown) => {
          failedAt.set(key, now());
          throw err;
        },
      );
      const settled = (): void => void inFlight.delete(key);
      p.then(settled, settled);
      inFlight.set(key, p);
    }
    return p;
  };

  return {
    async token(tenant) {
      const key = tenant ?? '';
      const h = held.get(key);
      const t = now();
      if (h !== undefined && t < h.expiresAt) {
        const ahead = Math.min(o.refreshAheadMs ?? 60_000, (h.expiresAt - h.obtainedAt) / 2);
        // Close to expiry: renewed in the background; this call still uses the valid token.
        if (h.expiresAt - t <= ahead && t - (failedAt.get(key) ?? 0) >= BACKOFF_MS) renew(key, tenant).catch(() => undefined);
        return h.token;
      }
      return (await renew(key, tenant)).token;
    },
    async probe(tenant) {
      return { expiresAt: (await fetchToken(tenant)).expiresAt };
    },
  };
}
