import { ApiError, createApi } from './api.js';
import type { Context, Permission, View, Whoami } from './context.js';
import { fill, h } from './dom.js';
import { clearToken, loadToken, saveToken, takeTokenFromUrl } from './session.js';
import { activityView } from './views/activity.js';
import { approvalsView } from './views/approvals.js';
import { auditView } from './views/audit.js';
import { policiesView } from './views/policies.js';
import { secretsView } from './views/secrets.js';
import { spendView } from './views/spend.js';
import { credentialsView } from './views/credentials.js';

const VIEWS: readonly View[] = [approvalsView, auditView, activityView, spendView, policiesView, secretsView, credentialsView];

const root = document.getElementById('app') as HTMLElement;

function signIn(message?: string): void {
  const input = h('textarea', {
    id: 'token',
    rows: 4,
    spellcheck: 'false',
    autocomplete: 'off',
    placeholder: 'eyJhbGciOi...',
    'aria-label': 'Admin token',
  });
  const form = h(
    'form',
    {
      class: 'signin card',
      on: {
        submit: (e) => {
          e.preventDefault();
          if (input.value.trim() === '') return;
          saveToken(input.value);
          void start();
        },
      },
    },
    h('h1', null, 'Valet'),
    h('p', null, 'Paste an admin token to sign in. It is kept in this tab only (session storage) and sent as a Bearer header; it is never a cookie.'),
    message ? h('p', { class: 'error', role: 'alert' }, message) : null,
    input,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    h('p', { class: 'hint' }, 'Mint one with ', h('code', null, 'valet token --admin --subject YOU --role admin'), ', or open a link of the form ', h('code', null, '/#token=…'), '.'),
  );
  fill(root, form);
  input.focus();
}

async function start(): Promise<void> {
  takeTokenFromUrl();
  const token = loadToken();
  if (token === undefined) return signIn();
  const signOut = (message?: string): void => {
    clearToken();
    stop?.();
    signIn(message);
  };
  let expired = false;
  const api = createApi(token, (message) => {
    if (expired) return;
    expired = true;
    signOut(`Signed out: ${message}`);
  });
  let who: Whoami;
  try {
    who = await api.get<Whoami>('/api/whoami');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    if (err instanceof ApiError && err.status === 403) return signOut(`This token grants no admin role: ${err.message}`);
    fill(root, h('p', { class: 'error card' }, `Cannot reach the admin API: ${(err as Error).message}`));
    return;
  }
  const views = VIEWS.filter((v) => who.permissions.includes(v.permission));
  if (views.length === 0) return signOut('This token grants none of the dashboard views.');

  const toast = h('div', { class: 'toast', role: 'status', 'aria-live': 'polite' });
  let toastTimer: number | undefined;
  const ctx: Context = {
    api,
    who,
    can: (p: Permission) => who.permissions.includes(p),
    notify(message, kind = 'ok') {
      toast.textContent = message;
      toast.className = `toast show toast-${kind}`;
      window.clearTimeout(toastTimer);
      toastTimer = window.setTimeout(() => (toast.className = 'toast'), 4000);
    },
    go(view, params = {}) {
      const q = new URLSearchParams(params).toString();
      location.hash = `#/${view}${q ? `?${q}` : ''}`;
    },
  };

  const nav = h('nav', { class: 'tabs', 'aria-label': 'Views' });
  const main = h('main', { id: 'view' });
  const header = h(
    'header',
    { class: 'top' },
    h('span', { class: 'brand' }, 'Valet'),
    nav,
    h(
      'div',
      { class: 'who', id: 'whoami' },
      h('span', { class: 'subject' }, who.subject),
      who.tenant === null ? h('span', { class: 'scope' }, 'all tenants') : h('span', { class: 'scope tenant' }, `tenant ${who.tenant}`),
      h('span', { class: 'roles' }, who.roles.join(', ')),
      h('button', { type: 'button', class: 'link', on: { click: () => signOut() } }, 'Sign out'),
    ),
  );
  fill(root, header, main, toast);

  let unmount: (() => void) | undefined;
  const route = (): void => {
    const m = /^#\/([a-z]+)(?:\?(.*))?$/.exec(location.hash);
    const view = views.find((v) => v.id === m?.[1]) ?? (views[0] as View);
    const params = new URLSearchParams(m?.[2] ?? '');
    fill(
      nav,
      views.map((v) => h('a', { href: `#/${v.id}`, class: v === view ? 'active' : undefined, 'aria-current': v === view ? 'page' : undefined, 'data-view': v.id }, v.title)),
    );
    unmount?.();
    main.replaceChildren();
    main.dataset['view'] = view.id;
    document.title = `${view.title} · Valet`;
    unmount = view.mount(ctx, main, params);
  };
  window.addEventListener('hashchange', route);
  stop = () => {
    window.removeEventListener('hashchange', route);
    unmount?.();
    unmount = undefined;
  };
  route();
}

let stop: (() => void) | undefined;
void start();
