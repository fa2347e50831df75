import type { IncomingMessage } from 'node:http';
import type { UpstreamConfig } from '../config/types.js';
import { secretNames } from '../config/credential.js';
import { providerEndpoint } from '../credentials/types.js';
import { CONNECT_COOKIE, providerOf, type CredentialService } from '../credentials/service.js';
import { ValetError } from '../errors.js';
import type { GrantInfo } from '../secrets/grants.js';
import type { SecretSource } from '../secrets/env.js';
import { tenantScope } from './auth.js';
import { escapeHtml, htmlPage } from './html.js';
import type { AdminAsset, AdminRoute } from './server.js';

/** A grant as the admin API and the CLI show it: never a token. */
export function grantJson(g: GrantInfo): Record<string, unknown> {
  const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());
  return {
    upstream: g.key.upstream,
    tenant: g.key.tenant,
    user: g.key.user,
    status: g.status,
    problem: g.problem,
    expires_at: iso(g.expiresAt),
    refreshed_at: iso(g.refreshedAt),
    connected_at: iso(g.createdAt),
    has_refresh_token: g.hasRefreshToken,
  };
}

/** Each upstream's credential: static or its provider, where it gets tokens, the secrets it needs (names and whether they resolve). */
export function credentialSummary(u: UpstreamConfig, has: (name: string) => boolean): Record<string, unknown> {
  const provider = providerOf(u);
  return {
    upstream: u.name,
    kind: provider?.kind ?? (u.credential.scheme === 'aws_sigv4' ? 'aws_sigv4' : 'static'),
    inject: u.credential.scheme,
    endpoint: provider === undefined ? null : providerEndpoint(provider),
    secrets: secretNames(u.credential).map((name) => ({ name, available: has(name) })),
  };
}

export interface CredentialRouteDeps {
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>;
  readonly credentials: CredentialService;
  readonly secrets: SecretSource & { has?(name: string): boolean };
}

/**
 * `/api/credentials`: what each upstream's credential is and the grants Valet holds (status,
 * expiry, last refresh — never a value); `test` obtains a token now; `DELETE` revokes a grant.
 * `/api/connections/:upstream`: a person (any admin-plane identity) starts connecting their own
 * account; the answer sets the cookie that binds the callback to this browser.
 */
export function credentialRoutes(d: CredentialRouteDeps): AdminRoute[] {
  const has = (name: string): boolean => d.secrets.has?.(name) ?? d.secrets.get(name, undefined) !== undefined;
  const upstreamOf = (name: string): UpstreamConfig => {
    const u = d.upstreams.get(name);
    if (u === undefined) throw new ValetError('VALET_ERR_ADMIN_NOT_FOUND', `No upstream is called ${name}.`);
    return u;
  };
  return [
    {
      method: 'GET',
      path: '/api/credentials',
      permission: 'secrets.read',
      handle: async ({ who, query }) => {
        const tenant = tenantScope(who, query.get('tenant') ?? undefined);
        const grants = await d.credentials.list({ upstream: query.get('upstream') ?? undefined, tenant, user: query.get('user') ?? undefined });
        return {
          json: {
            upstreams: [...d.upstreams.values()].map((u) => credentialSummary(u, has)),
            grants: grants.filter((g) => g.key.scope === '' || g.key.user === null).map(grantJson),
          },
        };
      },
    },
    {
      method: 'POST',
      path: '/api/credentials/:upstream/test',
      permission: 'secrets.write',
      handle: async ({ who, params, body }) => {
        const u = upstreamOf(params['upstream'] as string);
        const cache = d.credentials.cache(u.name);
        if (cache === undefined || cache.kind === 'oauth2_user' || cache.kind === 'oauth2_token_exchange') {
          throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `Upstream ${u.name}'s credential is not one Valet can obtain on its own (static, a user's account or an exchange).`);
        }
        const tenant = tenantScope(who, typeof body['tenant'] === 'string' ? body['tenant'] : undefined);
        const { expiresAt } = await cache.probe({ tenant, user: undefined });
        return { json: { upstream: u.name, ok: true, expires_at: new Date(expiresAt).toISOString() } };
      },
    },
    {
      method: 'DELETE',
      path: '/api/credentials/:upstream',
      permission: 'secrets.write',
      handle: async ({ who, params, query }) => {
        const u = upstreamOf(params['upstream'] as string);
        const tenant = tenantScope(who, query.get('tenant') ?? undefined) ?? null;
        const removed = await d.credentials.revoke(u.name, tenant, query.get('user'));
        return { json: { upstream: u.name, revoked: removed } };
      },
    },
    {
      method: 'GET',
      path: '/api/connections',
      permission: 'self',
      handle: async ({ who }) => {
        const mine = await d.credentials.list({ tenant: who.tenant ?? null, user: who.subject });
        return { json: { user: who.subject, tenant: who.tenant ?? null, available: d.credentials.userUpstreams, connections: mine.filter((g) => g.key.scope === '').map(grantJson) } };
      },
    },
    {
      method: 'POST',
      path: '/api/connections/:upstream',
      permission: 'self',
      handle: async ({ who, params }) => {
        const u = upstreamOf(params['upstream'] as string);
        const start = await d.credentials.beginConnect(u.name, who.tenant, who.subject);
        const secure = d.credentials.redirectUri(u.name).startsWith('https:') ? '; Secure' : '';
        return {
          json: { upstream: u.name, user: who.subject, authorize_url: start.authorizeUrl },
          // SameSite=Lax: sent on the authorization server's top-level redirect back, never on a cross-site subrequest.
          headers: { 'set-cookie': `${CONNECT_COOKIE}=${start.binding}; Path=/connect/; Max-Age=600; HttpOnly; SameSite=Lax${secure}` },
        };
      },
    },
    {
      method: 'DELETE',
      path: '/api/connections/:upstream',
      permission: 'self',
      handle: async ({ who, params }) => {
        const u = upstreamOf(params['upstream'] as string);
        const removed = await d.credentials.revoke(u.name, who.tenant ?? null, who.subject);
        return { json: { upstream: u.name, revoked: removed } };
      },
    },
  ];
}

const CONNECT_PAGE = /^\/connect\/([A-Za-z0-9_-]{1,64})$/;
const CALLBACK_PAGE = /^\/connect\/([A-Za-z0-9_-]{1,64})\/callback$/;
const CONNECT_SCRIPT_PATH = '/connect/connect.js';

/**
 * The pages people use to connect their own accounts (`/connect`, `/connect/<upstream>`) and the
 * OAuth callback (`/connect/<upstream>/callback`). The pages only show; starting a connection
 * needs the person's admin-plane token, sent by the page's own script in `Authorization`.
 */
export function connectPages(credentials: CredentialService): (path: string, req: IncomingMessage, url: URL) => Promise<AdminAsset | undefined> {
  const script = Buffer.from(CONNECT_SCRIPT);
  return async (path, req, url) => {
    if (path === CONNECT_SCRIPT_PATH) return { contentType: 'text/javascript; charset=utf-8', body: script };
    if (path === '/connect') {
      const items = credentials.userUpstreams.map((u) => `<li><a href="/connect/${escapeHtml(u)}">Connect ${escapeHtml(u)}</a></li>`);
      return htmlPage(200, 'Connect your accounts', items.length === 0 ? '<p>No upstream here uses people\'s own accounts.</p>' : `<ul>${items.join('')}</ul>`);
    }
    const c = CALLBACK_PAGE.exec(path);
    if (c !== null) {
      const upstream = c[1] as string;
      if (req.method !== 'GET') return htmlPage(200, 'Connect', '<p>Nothing to do.</p>');
      const error = url.searchParams.get('error');
      if (error !== null) return htmlPage(400, `${upstream} was not connected`, `<p>The provider answered <code>${escapeHtml(error.slice(0, 64))}</code>. <a href="/connect/${escapeHtml(upstream)}">Start again</a>.</p>`);
      const state = url.searchParams.get('state');
      const code = url.searchParams.get('code');
      if (state === null || code === null) return htmlPage(400, 'Not a connection', '<p>This address is where the provider sends you back after you connect an account.</p>');
      try {
        const done = await credentials.completeConnect(upstream, state, code, cookie(req, CONNECT_COOKIE));
        return htmlPage(200, `${upstream} connected`, `<p>Your account is connected for <code>${escapeHtml(done.user)}</code>${done.tenant !== null ? ` (tenant <code>${escapeHtml(done.tenant)}</code>)` : ''}. Agents acting for you can now use it; you can close this window.</p>`, {
          'set-cookie': `${CONNECT_COOKIE}=; Path=/connect/; Max-Age=0; HttpOnly; SameSite=Lax`,
        });
      } catch (err) {
        const e = err instanceof ValetError ? err : new ValetError('VALET_ERR_INTERNAL', undefined, { cause: err });
        return htmlPage(e.status === 503 ? 502 : 400, `${upstream} was not connected`, `<p><code>${e.code}</code>: ${escapeHtml(e.message)}</p><p><a href="/connect/${escapeHtml(upstream)}">Start again</a>.</p>`);
      }
    }
    const m = CONNECT_PAGE.exec(path);
    if (m === null) return undefined;
    const upstream = m[1] as string;
    if (!credentials.userUpstreams.includes(upstream)) return htmlPage(404, 'Nothing to connect', `<p>Upstream <code>${escapeHtml(upstream)}</code> does not use people's own accounts.</p>`);
    return htmlPage(
      200,
      `Connect ${upstream}`,
      [
        `<p>Agents that act for you will call <code>${escapeHtml(upstream)}</code> with your own account once you connect it. Valet keeps the provider's tokens encrypted; agents never see them.</p>`,
        `<form id="connect" data-api="/api/connections/${escapeHtml(upstream)}">`,
        '<p><label>Your token for this admin plane (from your identity provider, or <code>valet token --admin --agent YOU</code>)<br><input type="password" name="token" autocomplete="off" required size="60"></label></p>',
        `<p><button type="submit">Connect ${escapeHtml(upstream)}</button></p>`,
        '</form>',
        '<p id="result" role="status"></p>',
        `<script src="${CONNECT_SCRIPT_PATH}"></script>`,
      ].join('\n'),
    );
  };
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** Starts the connection with the person's token in `Authorization`, then follows the provider's address. */
const CONNECT_SCRIPT = `'use strict';
(function () {
  var form = document.getElementById('connect');
  if (!form) return;
  var out = document.getElementById('result');
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    out.textContent = 'Starting…';
    fetch(form.getAttribute('data-api'), {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'authorization': 'Bearer ' + form.elements.token.value.trim(), 'content-type': 'application/json' },
      body: '{}'
    }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (body) {
        if (res.ok && body.authorize_url) {
          out.textContent = 'Redirecting to the provider…';
          window.location.assign(body.authorize_url);
        } else {
          out.textContent = 'Refused: ' + (body.error ? body.error.code + ': ' + body.error.message : 'HTTP ' + res.status);
        }
      });
    }, function () {
      out.textContent = 'The gateway could not be reached.';
    });
  });
})();
`;
