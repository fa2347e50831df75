import { ApiError } from '../api.js';
import type { Context, View } from '../context.js';
import { empty, field, fill, h, time } from '../dom.js';

interface Secret {
  name: string;
  tenant: string | null;
  version: number;
  created_at: string;
  rotated_at: string | null;
  last_used_at: string | null;
}

/** A value input that the page never fills: values go to the server and are never read back. */
function valueInput(name: string): HTMLInputElement {
  return h('input', { type: 'password', name, autocomplete: 'new-password', spellcheck: 'false', required: true, 'aria-label': 'Secret value' });
}

/**
 * Upstream credentials in the encrypted store: names, tenants, versions, last use. Setting and
 * rotating are write-only — no API returns a value, and the value fields are cleared after use.
 */
export const secretsView: View = {
  id: 'secrets',
  title: 'Secrets',
  permission: 'secrets.read',
  mount(ctx, el) {
    const table = h('div', { class: 'table-wrap', id: 'secret-list' }, h('p', { class: 'muted' }, 'Loading…'));
    const load = async (): Promise<void> => {
      let secrets: Secret[];
      try {
        secrets = (await ctx.api.get<{ secrets: Secret[] }>('/api/secrets')).secrets;
      } catch (err) {
        const absent = err instanceof ApiError && err.status === 404 && err.code === 'VALET_ERR_ADMIN_NOT_FOUND';
        fill(table, absent ? empty('The encrypted secret store is not enabled on this gateway (credentials come from the environment or files).') : h('p', { class: 'error' }, (err as Error).message));
        return;
      }
      if (secrets.length === 0) return fill(table, empty('No secrets in the store yet.'));
      fill(
        table,
        h(
          'table',
          { class: 'rows' },
          h('thead', null, h('tr', null, ['Name', 'Tenant', 'Version', 'Created', 'Rotated', 'Last used', ''].map((c) => h('th', null, c)))),
          h('tbody', null, secrets.map((s) => row(ctx, s, load))),
        ),
      );
    };
    fill(
      el,
      h('div', { class: 'view-head' }, h('h2', null, 'Secrets'), h('span', { class: 'muted' }, 'Values are write-only: nothing here can show one.')),
      ctx.can('secrets.write') ? setForm(ctx, load) : null,
      h('section', { class: 'card' }, table),
    );
    void load();
    return () => undefined;
  },
};

function row(ctx: Context, s: Secret, reload: () => Promise<void>): HTMLElement[] {
  const tr = h(
    'tr',
    { 'data-secret': `${s.tenant ?? ''}/${s.name}` },
    h('td', null, h('code', null, s.name)),
    h('td', null, s.tenant ?? h('span', { class: 'muted' }, 'shared')),
    h('td', { class: 'num' }, String(s.version)),
    h('td', null, time(s.created_at)),
    h('td', null, s.rotated_at ? time(s.rotated_at) : '—'),
    h('td', null, time(s.last_used_at, true)),
    h('td', null),
  );
  if (!ctx.can('secrets.write')) return [tr];
  const value = valueInput('value');
  const formRow = h(
    'tr',
    { class: 'rotate-row', hidden: true },
    h(
      'td',
      { colspan: 7 },
      h(
        'form',
        {
          class: 'inline',
          on: {
            submit: (e) => {
              e.preventDefault();
              void (async () => {
                try {
                  const r = await ctx.api.send<Secret>('PUT', `/api/secrets/${encodeURIComponent(s.name)}`, { value: value.value, ...(ctx.who.tenant === null && { tenant: s.tenant }) });
                  ctx.notify(`${s.name} rotated to version ${r.version}.`);
                  await reload();
                } catch (err) {
                  ctx.notify(`Rotate failed: ${(err as Error).message}`, 'error');
                } finally {
                  value.value = '';
                }
              })();
            },
          },
        },
        field(`New value for ${s.name}${s.tenant ? ` (${s.tenant})` : ''}`, value),
        h('button', { type: 'submit', class: 'primary' }, 'Rotate'),
        h('button', { type: 'button', on: { click: () => ((formRow.hidden = true), (value.value = '')) } }, 'Cancel'),
      ),
    ),
  );
  (tr.lastElementChild as HTMLElement).appendChild(
    h(
      'button',
      {
        type: 'button',
        class: 'chip',
        on: {
          click: () => {
            formRow.hidden = !formRow.hidden;
            if (!formRow.hidden) value.focus();
          },
        },
      },
      'Rotate',
    ),
  );
  return [tr, formRow];
}

function setForm(ctx: Context, reload: () => Promise<void>): HTMLElement {
  const name = h('input', { type: 'text', name: 'name', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'OPENAI_API_KEY' });
  const tenant = h('input', { type: 'text', name: 'tenant', autocomplete: 'off', placeholder: 'blank = shared' });
  if (ctx.who.tenant !== null) {
    tenant.value = ctx.who.tenant;
    tenant.disabled = true;
  }
  const value = valueInput('value');
  return h(
    'form',
    {
      class: 'card inline',
      id: 'secret-set',
      on: {
        submit: (e) => {
          e.preventDefault();
          void (async () => {
            const body: Record<string, unknown> = { name: name.value.trim(), value: value.value };
            if (ctx.who.tenant === null && tenant.value.trim() !== '') body['tenant'] = tenant.value.trim();
            try {
              const r = await ctx.api.send<Secret>('POST', '/api/secrets', body);
              ctx.notify(`${r.name} stored (version ${r.version}).`);
              name.value = '';
              await reload();
            } catch (err) {
              const exists = err instanceof ApiError && err.status === 409;
              ctx.notify(exists ? `${name.value} already exists: use Rotate on its row.` : `Could not store it: ${(err as Error).message}`, 'error');
            } finally {
              value.value = '';
            }
          })();
        },
      },
    },
    h('h3', null, 'Add a secret ', h('span', { class: 'muted small' }, 'The value is sent once and never shown again; rotate a secret from its row.')),
    field('Name', name),
    field('Tenant', tenant),
    field('Value', value),
    h('button', { type: 'submit', class: 'primary' }, 'Store'),
  );
}
