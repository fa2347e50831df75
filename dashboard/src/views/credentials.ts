import type { Context, View } from '../context.js';
import { empty, fill, h, time } from '../dom.js';

interface Upstream {
  upstream: string;
  kind: string;
  inject: string;
  endpoint: string | null;
  secrets: { name: string; available: boolean }[];
}

interface Grant {
  upstream: string;
  tenant: string | null;
  user: string | null;
  status: 'active' | 'broken';
  problem: string | null;
  expires_at: string | null;
  refreshed_at: string | null;
  connected_at: string | null;
  has_refresh_token: boolean;
}

const KINDS: Record<string, string> = {
  static: 'stored secret',
  aws_sigv4: 'AWS SigV4 signing',
  oauth2_client_credentials: 'OAuth client credentials',
  oauth2_refresh_token: 'OAuth refresh token',
  oauth2_jwt_bearer: 'JWT bearer (service account)',
  github_app: 'GitHub App installation',
  oauth2_token_exchange: 'token exchange (per agent token)',
  oauth2_user: "users' own accounts",
};

/**
 * Each upstream's credential (static or its provider, the secrets it needs) and the tokens Valet
 * holds for it — shared grants and users' connected accounts — with status, expiry and last
 * refresh. Never a value: the API has none to give.
 */
export const credentialsView: View = {
  id: 'credentials',
  title: 'Credentials',
  permission: 'secrets.read',
  mount(ctx, el) {
    const upstreams = h('div', { class: 'table-wrap', id: 'credential-upstreams' }, h('p', { class: 'muted' }, 'Loading…'));
    const grants = h('div', { class: 'table-wrap', id: 'credential-grants' });
    const load = async (): Promise<void> => {
      let data: { upstreams: Upstream[]; grants: Grant[] };
      try {
        data = await ctx.api.get<{ upstreams: Upstream[]; grants: Grant[] }>('/api/credentials');
      } catch (err) {
        fill(upstreams, h('p', { class: 'error' }, (err as Error).message));
        return;
      }
      fill(
        upstreams,
        h(
          'table',
          { class: 'rows' },
          h('thead', null, h('tr', null, ['Upstream', 'Credential', 'Injected as', 'Token endpoint', 'Secrets'].map((c) => h('th', null, c)))),
          h(
            'tbody',
            null,
            data.upstreams.map((u) =>
              h(
                'tr',
                { 'data-upstream': u.upstream },
                h('td', null, h('code', null, u.upstream)),
                h('td', null, KINDS[u.kind] ?? u.kind),
                h('td', null, u.inject),
                h('td', null, u.endpoint === null ? '—' : h('code', null, u.endpoint)),
                h('td', null, u.secrets.map((s) => h('span', { class: s.available ? 'chip' : 'chip chip-error', title: s.available ? 'available' : 'missing' }, s.name))),
              ),
            ),
          ),
        ),
      );
      if (data.grants.length === 0) return fill(grants, empty('Valet holds no obtained tokens yet: they appear after the first call, or when a user connects an account.'));
      fill(
        grants,
        h(
          'table',
          { class: 'rows' },
          h('thead', null, h('tr', null, ['Upstream', 'Tenant', 'User', 'Status', 'Expires', 'Refreshed', 'Refresh token', ''].map((c) => h('th', null, c)))),
          h('tbody', null, data.grants.map((g) => grantRow(ctx, g, load))),
        ),
      );
    };
    fill(
      el,
      h('div', { class: 'view-head' }, h('h2', null, 'Credentials'), h('span', { class: 'muted' }, 'What each upstream injects, and the tokens Valet obtained. Values are never shown.')),
      h('section', { class: 'card' }, upstreams),
      h('section', { class: 'card' }, h('h3', null, 'Held tokens'), grants),
    );
    void load();
    return () => undefined;
  },
};

function grantRow(ctx: Context, g: Grant, reload: () => Promise<void>): HTMLElement {
  const status = g.status === 'broken' ? h('span', { class: 'badge badge-deny', title: g.problem ?? '' }, 'broken') : h('span', { class: 'badge badge-allow' }, 'active');
  const revoke = ctx.can('secrets.write')
    ? h(
        'button',
        {
          type: 'button',
          class: 'chip',
          on: {
            click: () => {
              const q = new URLSearchParams();
              if (g.tenant !== null) q.set('tenant', g.tenant);
              if (g.user !== null) q.set('user', g.user);
              void ctx.api
                .send<{ revoked: number }>('DELETE', `/api/credentials/${encodeURIComponent(g.upstream)}?${q.toString()}`)
                .then((r) => ctx.notify(`Revoked ${r.revoked} grant${r.revoked === 1 ? '' : 's'} of ${g.upstream}.`))
                .catch((err: unknown) => ctx.notify(`Revoke failed: ${(err as Error).message}`, 'error'))
                .then(reload);
            },
          },
        },
        'Revoke',
      )
    : null;
  return h(
    'tr',
    { 'data-grant': `${g.upstream}/${g.tenant ?? ''}/${g.user ?? ''}`, 'data-status': g.status },
    h('td', null, h('code', null, g.upstream)),
    h('td', null, g.tenant ?? h('span', { class: 'muted' }, 'shared')),
    h('td', null, g.user ?? h('span', { class: 'muted' }, '—')),
    h('td', null, status, g.problem !== null ? h('div', { class: 'muted small' }, g.problem) : null),
    h('td', null, g.expires_at === null ? '—' : time(g.expires_at)),
    h('td', null, g.refreshed_at === null ? '—' : time(g.refreshed_at)),
    h('td', null, g.has_refresh_token ? 'yes' : 'no'),
    h('td', null, revoke),
  );
}
