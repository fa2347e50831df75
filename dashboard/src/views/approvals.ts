import { ApiError } from '../api.js';
import { poll, type Context, type View } from '../context.js';
import { badge, empty, fill, h, time } from '../dom.js';

/** An approval as the admin API returns it (`approvalJson` in gateway/approvals/types.ts). */
interface Approval {
  id: string;
  status: string;
  mode: 'hold' | 'async';
  agent: string;
  tenant: string | null;
  user: string | null;
  upstream: string;
  tool: string | null;
  method: string;
  path: string;
  args: Record<string, unknown>;
  args_note: string | null;
  rule: string;
  reason: string;
  group: string;
  timeout_s: number;
  created_at: string;
  expires_at: string;
  request_id: string;
  request_digest?: string;
}

const POLL_MS = 2000;

/**
 * The queue of escalated requests waiting for a person. It polls every 2 s (EventSource cannot
 * send an Authorization header, and the admin plane reads no cookie); cards stay in place across
 * polls so a reason being typed is not lost.
 */
export const approvalsView: View = {
  id: 'approvals',
  title: 'Approvals',
  permission: 'approvals.read',
  mount(ctx, el) {
    const status = h('p', { class: 'muted live' });
    const list = h('div', { class: 'approvals', id: 'approval-list' });
    fill(
      el,
      h('div', { class: 'view-head' }, h('h2', null, 'Pending approvals'), status),
      ctx.can('approvals.resolve') ? null : h('p', { class: 'notice' }, 'Your roles let you see the queue but not approve or deny.'),
      list,
    );
    const cards = new Map<string, { el: HTMLElement; expires: HTMLElement; expiresAt: number }>();

    const tick = async (): Promise<void> => {
      let approvals: Approval[];
      try {
        const r = await ctx.api.get<{ approvals: Approval[] }>('/api/approvals', { status: 'pending' });
        approvals = r.approvals;
      } catch (err) {
        if (err instanceof ApiError && err.status === 404 && err.code === 'VALET_ERR_ADMIN_NOT_FOUND') {
          fill(list, empty('This gateway has no approval workflow (the approvals API is not there).'));
          status.textContent = '';
          return;
        }
        status.textContent = `Update failed: ${(err as Error).message}`;
        status.classList.add('error');
        return;
      }
      status.classList.remove('error');
      status.textContent = `${approvals.length} waiting · updated ${new Date().toLocaleTimeString()}`;
      const seen = new Set(approvals.map((a) => a.id));
      for (const [id, c] of cards) {
        if (!seen.has(id)) {
          c.el.remove();
          cards.delete(id);
        }
      }
      for (const a of approvals) {
        if (!cards.has(a.id)) {
          const c = card(ctx, a, () => {
            cards.get(a.id)?.el.remove();
            cards.delete(a.id);
            showEmpty();
          });
          cards.set(a.id, c);
          list.appendChild(c.el);
        }
      }
      showEmpty();
    };
    const showEmpty = (): void => {
      list.querySelector(':scope > .empty')?.remove();
      if (cards.size === 0) list.appendChild(empty('No approvals are waiting.'));
    };
    const countdown = window.setInterval(() => {
      for (const c of cards.values()) c.expires.textContent = remaining(c.expiresAt);
    }, 1000);
    const stopPolling = poll(POLL_MS, tick);
    return () => {
      stopPolling();
      window.clearInterval(countdown);
    };
  },
};

function remaining(at: number): string {
  const s = Math.round((at - Date.now()) / 1000);
  if (s <= 0) return 'expiring';
  return s < 120 ? `${s} s left` : `${Math.round(s / 60)} min left`;
}

function card(ctx: Context, a: Approval, gone: () => void): { el: HTMLElement; expires: HTMLElement; expiresAt: number } {
  const expiresAt = Date.parse(a.expires_at);
  const expires = h('span', { class: 'expires' }, remaining(expiresAt));
  const reason = h('input', { type: 'text', class: 'reason', name: 'reason', placeholder: 'Reason (kept in the audit log; required to deny)', maxlength: 500, 'aria-label': 'Reason' });
  const buttons: HTMLButtonElement[] = [];
  const resolve = async (action: 'approve' | 'deny'): Promise<void> => {
    if (action === 'deny' && reason.value.trim() === '') {
      ctx.notify('A denial needs a reason: the agent and the audit log get it.', 'error');
      reason.focus();
      return;
    }
    for (const b of buttons) b.disabled = true;
    try {
      await ctx.api.send('POST', `/api/approvals/${encodeURIComponent(a.id)}/${action}`, reason.value.trim() === '' ? {} : { reason: reason.value.trim() });
      ctx.notify(`${action === 'approve' ? 'Approved' : 'Denied'}: ${a.method} ${a.path} for ${a.agent}`);
      gone();
    } catch (err) {
      ctx.notify(`Could not ${action}: ${(err as Error).message}`, 'error');
      for (const b of buttons) b.disabled = false;
      if (err instanceof ApiError && (err.status === 404 || err.status === 409)) gone();
    }
  };
  if (ctx.can('approvals.resolve')) {
    buttons.push(
      h('button', { type: 'button', class: 'approve', on: { click: () => void resolve('approve') } }, 'Approve'),
      h('button', { type: 'button', class: 'deny', on: { click: () => void resolve('deny') } }, 'Deny'),
    );
  }
  const args = Object.keys(a.args ?? {}).length > 0 ? h('pre', { class: 'args' }, JSON.stringify(a.args, null, 2)) : h('p', { class: 'muted' }, 'No arguments.');
  const el = h(
    'article',
    { class: 'card approval', 'data-id': a.id },
    h(
      'header',
      null,
      h('span', { class: 'method' }, a.method),
      ' ',
      h('code', { class: 'path' }, a.path),
      ' on ',
      h('strong', null, a.upstream),
      a.tool ? h('span', { class: 'tool' }, ` · tool ${a.tool}`) : null,
      h('span', { class: 'spacer' }),
      badge(a.mode === 'hold' ? 'agent waiting' : 'async', a.mode),
      ' ',
      expires,
    ),
    h(
      'dl',
      { class: 'facts' },
      h('dt', null, 'Agent'),
      h('dd', null, a.agent),
      h('dt', null, 'Tenant'),
      h('dd', null, a.tenant ?? '—'),
      h('dt', null, 'User'),
      h('dd', null, a.user ?? '—'),
      h('dt', null, 'Rule'),
      h('dd', null, h('code', null, a.rule), ' — ', a.reason),
      h('dt', null, 'Approvers'),
      h('dd', null, a.group),
      h('dt', null, 'Asked'),
      h('dd', null, time(a.created_at, true)),
      h('dt', null, 'Request'),
      h('dd', null, h('code', { class: 'small' }, a.request_id)),
    ),
    h('div', { class: 'args-block' }, h('h4', null, 'Arguments (as the policy redacts them)'), args, a.args_note ? h('p', { class: 'muted' }, a.args_note) : null),
    buttons.length > 0 ? h('div', { class: 'actions' }, reason, ...buttons) : null,
  );
  reason.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') e.preventDefault();
  });
  return { el, expires, expiresAt };
}
