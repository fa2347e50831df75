import { APPROVAL_ID, type ApprovalService } from '../approvals/service.js';
import { approvalJson, type ApprovalRecord, type ApprovalStatus } from '../approvals/types.js';
import type { LinkAction, LinkClaims } from '../approvals/links.js';
import { escapeHtml, htmlPage } from './html.js';
import { ValetError } from '../errors.js';
import { tenantScope, type AdminIdentity } from './auth.js';
import type { AdminAsset, AdminRoute } from './server.js';

const STATUSES: readonly ApprovalStatus[] = ['pending', 'approved', 'denied', 'expired', 'aborted', 'consumed'];
/** The longest reason an approver may give. */
export const MAX_REASON = 1_000;

/**
 * Who may decide an approval, besides holding `approvals.resolve` (roles `approver`, `admin`):
 * - a tenant admin or approver only for its own tenant's approvals;
 * - a token with a groups claim only for approvals whose rule names one of its groups;
 * - a token without a groups claim only with the `admin` role (an `approver` must be in the group);
 * - nobody approves a call made on their own behalf (the delegating user): four eyes. Denying is allowed.
 */
export function mayResolve(who: AdminIdentity, a: ApprovalRecord, action: LinkAction): void {
  if (who.groups !== undefined) {
    if (!who.groups.includes(a.group)) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `Approval ${a.id} needs a member of approver group "${a.group}"; your token's groups do not include it.`);
  } else if (!who.roles.includes('admin')) {
    throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `Approval ${a.id} needs a member of approver group "${a.group}": your token carries no groups claim, and only the admin role decides without one.`);
  }
  if (action === 'approve' && a.user !== null && a.user === who.subject) {
    throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `Approval ${a.id} is for a call made on your own behalf; another approver must approve it.`);
  }
}

/** An approval the identity may see: its own tenant's only, others are "not found". */
export async function visible(service: ApprovalService, who: AdminIdentity, id: string): Promise<ApprovalRecord> {
  const a = await service.get(id);
  if (a === undefined || (who.tenant !== undefined && a.tenant !== who.tenant)) throw new ValetError('VALET_ERR_APPROVAL_NOT_FOUND');
  return a;
}

function reasonOf(body: Record<string, unknown>, required: boolean): string | null {
  for (const key of Object.keys(body)) if (key !== 'reason') throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `Unknown field "${key}" (only "reason").`);
  const r = body['reason'];
  if (r === undefined || r === null || (typeof r === 'string' && r.trim() === '')) {
    if (required) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'A denial needs a "reason".');
    return null;
  }
  if (typeof r !== 'string' || r.length > MAX_REASON) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `"reason" must be a string of at most ${MAX_REASON} characters.`);
  return r.trim();
}

/** `/api/approvals...` and `/api/approval-links/:token`. */
export function approvalRoutes(service: ApprovalService): AdminRoute[] {
  const decide = (action: LinkAction): AdminRoute => ({
    method: 'POST',
    path: `/api/approvals/:id/${action}`,
    permission: 'approvals.resolve',
    handle: async ({ who, params, body }) => {
      const reason = reasonOf(body, action === 'deny');
      const a = await visible(service, who, params['id'] as string);
      mayResolve(who, a, action);
      return { json: { approval: approvalJson(await service.decide(a.id, action, who.subject, reason)) } };
    },
  });
  return [
    {
      method: 'GET',
      path: '/api/approvals',
      permission: 'approvals.read',
      handle: async ({ who, query }) => {
        const limit = query.get('limit') === null ? 100 : Number(query.get('limit'));
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'limit must be an integer from 1 to 1000.');
        const status = query.get('status') ?? undefined;
        if (status !== undefined && !STATUSES.includes(status as ApprovalStatus)) {
          throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `status must be one of ${STATUSES.join(', ')}.`);
        }
        await service.sweep();
        const rows = await service.list({
          status: status as ApprovalStatus | undefined,
          tenant: tenantScope(who, query.get('tenant') ?? undefined),
          agent: query.get('agent') ?? undefined,
          limit,
        });
        return { json: { approvals: rows.map(approvalJson) } };
      },
    },
    {
      method: 'GET',
      path: '/api/approvals/:id',
      permission: 'approvals.read',
      handle: async ({ who, params }) => {
        await service.sweep();
        return { json: { approval: approvalJson(await visible(service, who, params['id'] as string)) } };
      },
    },
    decide('approve'),
    decide('deny'),
    {
      // The confirmation behind a notification's link: the link names the approval and the action,
      // the admin token names the person. The link works once.
      method: 'POST',
      path: '/api/approval-links/:token',
      permission: 'approvals.resolve',
      handle: async ({ who, params, body }) => {
        const claims = service.link(params['token'] as string);
        const reason = reasonOf(body, claims.action === 'deny');
        const a = await visible(service, who, claims.approvalId);
        mayResolve(who, a, claims.action);
        await service.useLink(claims, who.subject);
        return { json: { approval: approvalJson(await service.decide(a.id, claims.action, who.subject, reason)) } };
      },
    },
  ];
}

const LINK_PAGE = /^\/approvals\/link\/([A-Za-z0-9_.-]{1,600})$/;
const LINK_SCRIPT_PATH = '/approvals/link.js';

const html = escapeHtml;
const page = htmlPage;

/**
 * The page a notification's approve/deny link opens (`GET /approvals/link/<token>` on the admin
 * listener): the call, server-rendered, no external assets. Opening it changes nothing (chat apps
 * fetch links to preview them); confirming posts to `/api/approval-links/<token>` with the person's
 * admin token, from the page's own script (`/approvals/link.js`, the only script the CSP allows).
 */
export function approvalPages(service: ApprovalService): (path: string) => AdminAsset | undefined | Promise<AdminAsset | undefined> {
  const script = Buffer.from(LINK_SCRIPT);
  return async (path) => {
    if (path === LINK_SCRIPT_PATH) return { contentType: 'text/javascript; charset=utf-8', body: script };
    const m = LINK_PAGE.exec(path);
    if (m === null) return undefined;
    const token = m[1] as string;
    let claims: LinkClaims;
    try {
      claims = service.link(token);
    } catch (err) {
      return page(403, 'Link not valid', `<p>${html(err instanceof ValetError ? err.message : 'This approval link is not valid.')}</p>`);
    }
    const a = APPROVAL_ID.test(claims.approvalId) ? await service.get(claims.approvalId) : undefined;
    if (a === undefined) return page(404, 'No such approval', '<p>This approval no longer exists.</p>');
    return page(200, `${claims.action === 'approve' ? 'Approve' : 'Deny'} ${a.method} ${a.upstream} ${a.path}?`, linkBody(a, claims, token));
  };
}

function linkBody(a: ApprovalRecord, claims: LinkClaims, token: string): string {
  const row = (k: string, v: string | null): string => `<tr><th scope="row">${html(k)}</th><td>${v === null ? '—' : `<code>${html(v)}</code>`}</td></tr>`;
  const verb = claims.action === 'approve' ? 'Approve' : 'Deny';
  const parts = [
    `<p>Rule <code>${html(a.rule)}</code> asks approver group <code>${html(a.group)}</code>: ${html(a.reason)}</p>`,
    '<table>',
    row('Approval', a.id),
    row('Status', a.status),
    row('Agent', a.agent),
    row('Tenant', a.tenant),
    row('On behalf of user', a.user),
    row('Upstream', a.upstream),
    row('Tool', a.tool),
    row('Method', a.method),
    row('Path', a.path),
    row('Mode', a.mode === 'hold' ? 'hold (the agent is waiting)' : 'async (the agent re-sends once approved)'),
    row('Requested', new Date(a.createdAt).toISOString()),
    row('Expires', new Date(a.expiresAt).toISOString()),
    '</table>',
    `<h2>Arguments</h2>${a.argsNote !== null ? `<p>${html(a.argsNote)}</p>` : ''}<pre>${html(JSON.stringify(a.args, null, 2))}</pre>`,
  ];
  if (a.status !== 'pending') {
    parts.push(`<p><strong>This approval is ${html(a.status)}${a.resolver !== null ? ` (by ${html(a.resolver)})` : ''}; there is nothing left to decide.</strong></p>`);
  } else {
    parts.push(
      `<form id="resolve" data-api="/api/approval-links/${html(token)}">`,
      '<p><label>Your admin token (<code>valet token --admin …</code> or your identity provider)<br><input type="password" name="admin_token" autocomplete="off" required size="60"></label></p>',
      `<p><label>Reason${claims.action === 'deny' ? ' (required)' : ' (optional)'}<br><textarea name="reason" rows="3" cols="60" maxlength="${MAX_REASON}"${claims.action === 'deny' ? ' required' : ''}></textarea></label></p>`,
      `<p><button type="submit">${verb}</button></p>`,
      '</form>',
      '<p id="result" role="status"></p>',
      `<p>Or from a terminal: <code>valet approvals ${claims.action} ${html(a.id)}${claims.action === 'deny' ? ' --reason "…"' : ''}</code></p>`,
      `<script src="${LINK_SCRIPT_PATH}"></script>`,
    );
  }
  return parts.join('\n');
}

/** Sends the confirmation with the admin token in `Authorization` (never a cookie), as JSON. */
const LINK_SCRIPT = `'use strict';
(function () {
  var form = document.getElementById('resolve');
  if (!form) return;
  var out = document.getElementById('result');
  form.addEventListener('submit', function (event) {
    event.preventDefault();
    var token = form.elements.admin_token.value.trim();
    var reason = form.elements.reason.value.trim();
    out.textContent = 'Sending…';
    fetch(form.getAttribute('data-api'), {
      method: 'POST',
      credentials: 'omit',
      cache: 'no-store',
      headers: { 'authorization': 'Bearer ' + token, 'content-type': 'application/json' },
      body: JSON.stringify(reason === '' ? {} : { reason: reason })
    }).then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (body) {
        if (res.ok && body.approval) {
          out.textContent = 'Done: approval ' + body.approval.id + ' is now ' + body.approval.status + '.';
          form.remove();
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
