import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import { request } from 'undici';
import { createReplayGuard, verifySlackSignature, verifyValetSignature, type ChatReceivers, type ReplayGuard, type SignedChat, type VerifiedSignature } from '../approvals/chat.js';
import type { LinkAction } from '../approvals/links.js';
import { SLACK_ACTIONS, slackEscape } from '../approvals/notify.js';
import type { ApprovalService } from '../approvals/service.js';
import { approvalJson, type ApprovalRecord } from '../approvals/types.js';
import type { ChatApprover } from '../config/types.js';
import { ValetError } from '../errors.js';
import { parseJsonObject } from '../json.js';
import { MAX_REASON, mayResolve, visible } from './approvals.js';
import { ADMIN_ROLES, type AdminIdentity } from './auth.js';
import type { AdminHook } from './server.js';

/** Where a Slack app's interactivity request URL points (on the admin listener). */
export const SLACK_INTERACTIONS_PATH = '/api/chat/slack/interactions';
/** Where other chat tools post signed decisions. */
export const CHAT_CALLBACK_PATH = '/api/chat/callback';
/**
 * Slack's `response_url`s live here. The payload is signed by Slack, but a leaked signing secret
 * must not turn Valet into a client for arbitrary (internal) URLs.
 */
const SLACK_RESPONSE_ORIGIN = 'https://hooks.slack.com/';

export interface ChatHookOptions {
  readonly service: ApprovalService;
  readonly chat: ChatReceivers;
  readonly logger: Logger;
}

/** What Slack shows: an update of the message (a decision) or a note only the presser sees (a refusal). */
interface SlackAnswer {
  readonly text: string;
  readonly replace_original: boolean;
  readonly response_type?: 'ephemeral';
}

interface ChatDecision {
  readonly approval: ApprovalRecord;
  /** False: it was already decided (or expired); `approval` is its current state. */
  readonly decided: boolean;
}

/** A chat approver acts as an admin token with the approver role, their groups and tenant would. */
function identityOf(a: ChatApprover): AdminIdentity {
  return { subject: a.subject, tenant: a.tenant, roles: ['approver'], permissions: new Set(ADMIN_ROLES.approver), groups: a.groups };
}

/** The admin API's checks (tenant scope, group, four eyes), then the decision; a decided approval answers with its state. */
async function decideAs(service: ApprovalService, approver: ChatApprover, id: string, action: LinkAction, reason: string): Promise<ChatDecision> {
  const who = identityOf(approver);
  const a = await visible(service, who, id);
  mayResolve(who, a, action);
  try {
    return { approval: await service.decide(a.id, action, who.subject, reason), decided: true };
  } catch (err) {
    if (!(err instanceof ValetError && err.code === 'VALET_ERR_APPROVAL_RESOLVED')) throw err;
    return { approval: (await service.get(a.id)) ?? a, decided: false };
  }
}

/** The first source whose secret verifies the request; refuses a bad or stale signature and a replay. */
function authenticate(
  sources: readonly SignedChat[],
  verify: (headers: IncomingHttpHeaders, body: Buffer, secret: string, nowS: number) => VerifiedSignature | undefined,
  replays: ReplayGuard,
  headers: IncomingHttpHeaders,
  body: Buffer,
): SignedChat {
  const nowS = Math.floor(Date.now() / 1000);
  for (const source of sources) {
    const v = verify(headers, body, source.secret, nowS);
    if (v === undefined) continue;
    if (!replays.first(v, nowS)) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'This signed request was already received; a replay is refused.');
    return source;
  }
  throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'The request signature does not verify, or its timestamp is more than 5 minutes off.');
}

const reasonFor = (action: LinkAction, via: string, approver: ChatApprover, chatUser: string): string =>
  `${action === 'approve' ? 'approved' : 'denied'} ${via} by ${approver.subject} (${chatUser})`;

/** The interaction Slack posts when a button is pressed: form-encoded, its JSON in `payload`. */
function slackAction(body: Buffer): { user: string; action: LinkAction; approvalId: string; responseUrl: string | undefined } {
  const bad = (why: string): ValetError => new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `Not a Valet button interaction: ${why}.`);
  const raw = new URLSearchParams(body.toString('utf8')).get('payload');
  if (raw === null) throw bad('no "payload" field');
  let p: { type?: unknown; user?: { id?: unknown }; actions?: { action_id?: unknown; value?: unknown }[]; response_url?: unknown };
  try {
    p = JSON.parse(raw) as typeof p;
  } catch {
    throw bad('the payload is not JSON');
  }
  const pressed = Array.isArray(p.actions) ? p.actions[0] : undefined;
  const action = pressed?.action_id === SLACK_ACTIONS.approve ? 'approve' : pressed?.action_id === SLACK_ACTIONS.deny ? 'deny' : undefined;
  if (p.type !== 'block_actions' || action === undefined) throw bad('not a press of an Approve or Deny button');
  if (typeof p.user?.id !== 'string' || typeof pressed?.value !== 'string') throw bad('no user or approval id');
  return { user: p.user.id, action, approvalId: pressed.value, responseUrl: typeof p.response_url === 'string' ? p.response_url : undefined };
}

/** The message after a decision: who decided, what; or the state it was already in. */
function slackOutcome(d: ChatDecision): string {
  const a = d.approval;
  const call = `${slackEscape(a.method)} ${slackEscape(a.upstream)} ${slackEscape(a.path.slice(0, 200))} (${a.id})`;
  if (d.decided) return `${a.status === 'approved' ? 'Approved' : 'Denied'} by ${slackEscape(a.resolver ?? '')}: ${call}`;
  return `Already ${a.status}${a.resolver !== null ? ` by ${slackEscape(a.resolver)}` : ''}: ${call}`;
}

/** The callback's JSON: `{approval_id, action, approver, reason?}`, nothing else. */
function callbackBody(body: Buffer): { approvalId: string; action: LinkAction; approver: string; reason: string | undefined } {
  const parsed = parseJsonObject(body);
  if (parsed.value === undefined) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `The request body is not acceptable: ${parsed.error}.`);
  const b = parsed.value;
  for (const key of Object.keys(b)) {
    if (!['approval_id', 'action', 'approver', 'reason'].includes(key)) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `Unknown field "${key}".`);
  }
  const { approval_id: approvalId, action, approver, reason } = b;
  if (typeof approvalId !== 'string' || typeof approver !== 'string' || (action !== 'approve' && action !== 'deny')) {
    throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'The body needs "approval_id" and "approver" (strings) and "action" ("approve" or "deny").');
  }
  if (reason !== undefined && (typeof reason !== 'string' || reason.trim() === '' || reason.length > MAX_REASON)) {
    throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `"reason" must be a non-empty string of at most ${MAX_REASON} characters.`);
  }
  return { approvalId, action, approver, reason: reason?.trim() };
}

/**
 * The public endpoints approvers decide through from chat: Slack's interactions (when a Slack
 * channel has a signing secret) and the generic signed callback (when configured). Each request
 * is authenticated by its signature and timestamp, refused if replayed, and counts only for a
 * mapped approver who passes the same checks as on the admin API.
 */
export function chatHooks(o: ChatHookOptions): AdminHook[] {
  const replays = createReplayGuard();
  const { service, chat, logger } = o;

  const respond = (url: string | undefined, answer: SlackAnswer): void => {
    if (url === undefined || !url.startsWith(SLACK_RESPONSE_ORIGIN)) return;
    request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(answer), headersTimeout: 10_000, bodyTimeout: 10_000 })
      .then((res) => res.body.dump())
      // The code only: the response URL is a credential for the message.
      .catch((err: unknown) => logger.warn({ code: (err as { code?: string }).code }, 'chat: posting to Slack\'s response_url failed'));
  };

  const hooks: AdminHook[] = [];
  if (chat.slack.length > 0) {
    hooks.push({
      path: SLACK_INTERACTIONS_PATH,
      handle: async ({ headers, body }) => {
        const source = authenticate(chat.slack, verifySlackSignature, replays, headers, body);
        const p = slackAction(body);
        const approver = source.approvers.get(p.user);
        let answer: SlackAnswer;
        try {
          if (approver === undefined) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `Slack user ${p.user} is not one of Valet's approvers.`);
          const d = await decideAs(service, approver, p.approvalId, p.action, reasonFor(p.action, 'in Slack', approver, p.user));
          answer = { replace_original: true, text: slackOutcome(d) };
        } catch (err) {
          // Slack shows the HTTP answer to nobody: refusals go to the presser through response_url.
          if (!(err instanceof ValetError) || err.status >= 500) throw err;
          logger.info({ slackUser: p.user, approvalId: p.approvalId, code: err.code }, 'chat: Slack decision refused');
          answer = { response_type: 'ephemeral', replace_original: false, text: `${slackEscape(err.message)} Nothing was decided.` };
        }
        respond(p.responseUrl, answer);
        return { json: answer };
      },
    });
  }
  const callback = chat.callback;
  if (callback !== undefined) {
    hooks.push({
      path: CHAT_CALLBACK_PATH,
      handle: async ({ headers, body }) => {
        authenticate([callback], verifyValetSignature, replays, headers, body);
        if ((headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() !== 'application/json') throw new ValetError('VALET_ERR_ADMIN_MEDIA_TYPE');
        const b = callbackBody(body);
        const approver = callback.approvers.get(b.approver);
        if (approver === undefined) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `"${b.approver}" is not in gateway.approvals.callback.approvers.`);
        const d = await decideAs(service, approver, b.approvalId, b.action, b.reason ?? reasonFor(b.action, 'through the chat callback', approver, b.approver));
        return { json: { approval: approvalJson(d.approval), decided: d.decided } };
      },
    });
  }
  return hooks;
}
