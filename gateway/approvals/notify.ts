import { createHmac, randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import { approvalJson, type ApprovalRecord } from './types.js';

/** What approvers are told about: one escalated call, with links to act on it (if links are on). */
export interface ApprovalNotice {
  readonly event: 'approval.requested';
  readonly approval: ApprovalRecord;
  readonly links: { readonly approve: string; readonly deny: string } | undefined;
}

/** Admins are told that an obtained credential stopped working (a revoked grant): calls for it are refused until someone acts. */
export interface CredentialNotice {
  readonly event: 'credential.broken';
  readonly upstream: string;
  readonly tenant: string | null;
  /** A user's own connected account; null: a shared credential. */
  readonly user: string | null;
  /** What the authorization server said (an OAuth error code) and when; never a token. */
  readonly problem: string;
}

/** A usage budget passed 80 % or 100 % of its limit (or refused a call it could not hold). */
export interface BudgetNotice {
  readonly event: 'budget.threshold';
  readonly budget: string;
  /** 80 or 100 (percent). */
  readonly threshold: number;
  readonly usage: 'tokens' | 'cost';
  /** Whose counter: the budget's key and its ids (`["team", "acme", "red"]`: team red of tenant acme). */
  readonly counter: readonly unknown[];
  readonly used: number;
  readonly limit: number;
  readonly windowMs: number;
}

export type Notice = ApprovalNotice | CredentialNotice | BudgetNotice;

/** For logs: the approval id, the credential or the budget. */
const subject = (n: Notice): Record<string, unknown> =>
  n.event === 'approval.requested' ? { approvalId: n.approval.id } : n.event === 'credential.broken' ? { credential: n.upstream, tenant: n.tenant, user: n.user } : { budget: n.budget, counter: n.counter, threshold: n.threshold };

/** The outcome of one delivery attempt. `retry`: try again later; `fail`: never (a 4xx, a bad config). */
export type Delivery = { ok: true } | { ok: false; retry: boolean; detail: string };

/** A way to reach approvers. Further channels (e-mail, PagerDuty, Teams) implement this and plug in. */
export interface NotificationChannel {
  /** For logs, e.g. `webhook[0]`; never a URL (it may carry a secret). */
  readonly name: string;
  /** Only approvals for these approver groups; undefined: every group. */
  readonly groups: readonly string[] | undefined;
  readonly retry: RetryPolicy;
  /** One attempt; must not throw. */
  send(notice: Notice): Promise<Delivery>;
  /** Releases connections (called once, when the notifier closes). */
  close?(): Promise<void>;
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  /** Delay before the second attempt; doubles each time (with jitter), capped at `maxDelayMs`. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export interface Notifier {
  /** Queues a notice for every channel that takes its group; returns at once, never throws. */
  notify(notice: Notice): void;
  /** Deliveries not yet finished (attempting or waiting to retry). */
  readonly inFlight: number;
  /** Stops retrying; waits briefly for attempts on the wire. */
  close(): Promise<void>;
}

export interface NotifierOptions {
  readonly logger: Logger;
  /** Deliveries beyond this many in flight are dropped (and logged), so a dead receiver cannot grow memory. */
  readonly maxInFlight?: number;
  readonly random?: () => number;
}

/**
 * Sends notices off the request path: each channel's delivery is retried on network errors, 408,
 * 429 and 5xx with exponential backoff and jitter, up to its `maxAttempts`; the request that
 * escalated never waits for it.
 */
export function createNotifier(channels: readonly NotificationChannel[], o: NotifierOptions): Notifier {
  const maxInFlight = o.maxInFlight ?? 10_000;
  const random = o.random ?? Math.random;
  const timers = new Set<NodeJS.Timeout>();
  const attempts = new Set<Promise<void>>();
  let inFlight = 0;
  let closed = false;

  const deliver = (channel: NotificationChannel, notice: Notice, attempt: number): void => {
    const p = channel.send(notice).then((d) => {
      attempts.delete(p);
      if (d.ok) {
        inFlight--;
        o.logger.debug({ channel: channel.name, ...subject(notice), attempt }, 'notification delivered');
        return;
      }
      if (!d.retry || attempt >= channel.retry.maxAttempts || closed) {
        inFlight--;
        o.logger.warn({ channel: channel.name, ...subject(notice), attempts: attempt, detail: d.detail }, 'notification failed');
        return;
      }
      const cap = Math.min(channel.retry.maxDelayMs, channel.retry.baseDelayMs * 2 ** (attempt - 1));
      const delay = Math.round(cap / 2 + random() * (cap / 2));
      o.logger.info({ channel: channel.name, ...subject(notice), attempt, detail: d.detail, retryInMs: delay }, 'notification will be retried');
      const t = setTimeout(() => {
        timers.delete(t);
        deliver(channel, notice, attempt + 1);
      }, delay);
      t.unref();
      timers.add(t);
    });
    attempts.add(p);
  };

  return {
    notify(notice) {
      if (closed) return;
      for (const channel of channels) {
        // A broken credential concerns every channel's people: it stops calls whatever their group.
        if (notice.event === 'approval.requested' && channel.groups !== undefined && !channel.groups.includes(notice.approval.group)) continue;
        if (inFlight >= maxInFlight) {
          o.logger.warn({ channel: channel.name, ...subject(notice) }, 'notification dropped: too many in flight');
          continue;
        }
        inFlight++;
        deliver(channel, notice, 1);
      }
    },
    get inFlight() {
      return inFlight;
    },
    async close() {
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await Promise.race([Promise.allSettled([...attempts]), new Promise((r) => setTimeout(r, 2_000).unref())]);
      await Promise.allSettled(channels.map((c) => c.close?.()));
    },
  };
}

/** Each channel's connections: short timeouts, at most 16 at once, redirects never followed. */
const httpAgent = (): Agent => new Agent({ connectTimeout: 5_000, headersTimeout: 10_000, bodyTimeout: 10_000, connections: 16 });

async function post(dispatcher: Agent, url: string, headers: Record<string, string>, body: string): Promise<Delivery> {
  try {
    const res = await request(url, { method: 'POST', headers, body, dispatcher });
    await res.body.dump();
    if (res.statusCode >= 200 && res.statusCode < 300) return { ok: true };
    const retry = res.statusCode === 408 || res.statusCode === 429 || res.statusCode >= 500;
    return { ok: false, retry, detail: `HTTP ${res.statusCode}` };
  } catch (err) {
    // The code only: messages can carry the URL, which may itself be a secret (Slack's is).
    return { ok: false, retry: true, detail: (err as { code?: string }).code ?? 'request failed' };
  }
}

/** The generic webhook's JSON body. */
export function webhookBody(notice: Notice, eventId: string, now: number): string {
  const head = { type: notice.event, id: eventId, created_at: new Date(now).toISOString() };
  if (notice.event === 'credential.broken') return JSON.stringify({ ...head, credential: { upstream: notice.upstream, tenant: notice.tenant, user: notice.user, problem: notice.problem } });
  if (notice.event === 'budget.threshold') {
    const { budget, threshold, usage, counter, used, limit, windowMs } = notice;
    return JSON.stringify({ ...head, budget: { id: budget, threshold, usage, counter, used, limit, window_s: windowMs / 1000 } });
  }
  return JSON.stringify({ ...head, approval: approvalJson(notice.approval), links: notice.links ?? null });
}

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the `valet-signature` header (also what the chat callback checks). */
export function signWebhook(secret: string, body: string | Buffer, unixSeconds: number): string {
  const mac = createHmac('sha256', secret).update(`${unixSeconds}.`).update(body).digest('hex');
  return `t=${unixSeconds},v1=${mac}`;
}

export interface WebhookSettings {
  readonly name: string;
  readonly url: string;
  readonly secret: string;
  readonly groups: readonly string[] | undefined;
  readonly retry: RetryPolicy;
}

/**
 * A generic webhook: `POST` of a JSON body, signed with HMAC-SHA256 (`valet-signature`). The
 * receiver recomputes the MAC over `<t>.<raw body>` with the shared secret, compares in constant
 * time, and refuses stale `t` (e.g. older than 5 minutes). Each attempt is signed afresh; the
 * event id (`valet-event-id`) stays the same across retries, for de-duplication.
 */
export function webhookChannel(s: WebhookSettings): NotificationChannel {
  const ids = new WeakMap<Notice, string>();
  const dispatcher = httpAgent();
  return {
    name: s.name,
    groups: s.groups,
    retry: s.retry,
    close: () => dispatcher.close(),
    send(notice) {
      let id = ids.get(notice);
      if (id === undefined) ids.set(notice, (id = randomUUID()));
      const now = Date.now();
      const body = webhookBody(notice, id, now);
      return post(
        dispatcher,
        s.url,
        {
          'content-type': 'application/json',
          'user-agent': 'valet-approvals',
          'valet-event-id': id,
          'valet-signature': signWebhook(s.secret, body, Math.floor(now / 1000)),
        },
        body,
      );
    },
  };
}

export interface SlackSettings {
  readonly name: string;
  readonly url: string;
  readonly groups: readonly string[] | undefined;
  readonly retry: RetryPolicy;
  /** Approve/Deny buttons (the Slack app's interactivity points at Valet's interaction endpoint). */
  readonly buttons: boolean;
}

/** A Slack incoming webhook: one message with the call's summary, approve/deny links and, if configured, buttons. */
export function slackChannel(s: SlackSettings): NotificationChannel {
  const dispatcher = httpAgent();
  return {
    name: s.name,
    groups: s.groups,
    retry: s.retry,
    close: () => dispatcher.close(),
    send: (notice) => post(dispatcher, s.url, { 'content-type': 'application/json', 'user-agent': 'valet-approvals' }, JSON.stringify(slackMessage(notice, s.buttons))),
  };
}

/** Slack's control characters in text; everything the agent chose is escaped so it cannot forge links or mentions. */
export const slackEscape = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const code = (s: string): string => `\`${slackEscape(s.replace(/`/g, "'").replace(/[\r\n]+/g, ' ')).slice(0, 300)}\``;

/** The `action_id`s of the Approve and Deny buttons; each button's `value` is the approval id. */
export const SLACK_ACTIONS = { approve: 'valet_approve', deny: 'valet_deny' } as const;

/** A notice as a Slack message (`text` for notifications, `blocks` for the channel); `buttons` adds Approve/Deny to approvals. */
export function slackMessage(notice: Notice, buttons = false): { text: string; blocks: unknown[] } {
  if (notice.event === 'budget.threshold') {
    const amount = (n: number): string => (notice.usage === 'cost' ? n.toFixed(2) : `${Math.round(n)} tokens`);
    const whose = notice.counter.map((p) => (p === null ? '-' : String(p))).join(' ');
    const text = `*Budget ${notice.threshold >= 100 ? 'exhausted' : `at ${notice.threshold} %`}* — ${code(notice.budget)} for ${code(whose)}: ${amount(notice.used)} of ${amount(notice.limit)} used in the window.`;
    return { text: `Budget ${slackEscape(notice.budget)} at ${notice.threshold} %`, blocks: [{ type: 'section', text: { type: 'mrkdwn', text } }] };
  }
  if (notice.event === 'credential.broken') {
    const whose = notice.user !== null ? `user ${code(notice.user)}'s account` : 'the shared credential';
    const text = `*Credential broken* — upstream ${code(notice.upstream)}${notice.tenant !== null ? ` (tenant ${code(notice.tenant)})` : ''}: ${whose} was rejected: ${slackEscape(notice.problem)}. Calls are refused until it is reconnected or replaced (\`valet credentials list\`).`;
    return { text: `Credential broken: ${slackEscape(notice.upstream)}`, blocks: [{ type: 'section', text: { type: 'mrkdwn', text } }] };
  }
  const a = notice.approval;
  const who = [`Agent ${code(a.agent)}`, a.tenant !== null ? `tenant ${code(a.tenant)}` : undefined, a.user !== null ? `for user ${code(a.user)}` : undefined]
    .filter(Boolean)
    .join(' · ');
  const call = `${code(a.method)} ${code(a.upstream)} ${code(a.path)}${a.tool !== null ? ` (tool ${code(a.tool)})` : ''}`;
  const expires = Math.floor(a.expiresAt / 1000);
  let args = JSON.stringify(a.args, null, 1);
  if (args.length > 2_000) args = `${args.slice(0, 2_000)}\n…`;
  const lines = [
    `*Approval needed* — rule ${code(a.rule)}: ${slackEscape(a.reason)}`,
    who,
    `Call: ${call}`,
    `Approver group ${code(a.group)} · ${a.mode === 'hold' ? 'the agent is waiting' : 'the agent will re-send once approved'} · expires <!date^${expires}^{date_short_pretty} {time_secs}|${new Date(a.expiresAt).toISOString()}>`,
  ];
  const actions = notice.links ? `<${notice.links.approve}|Approve…> · <${notice.links.deny}|Deny…> (you will be asked to identify)` : 'Resolve with `valet approvals approve|deny`';
  lines.push(`${actions} · id ${code(a.id)}`);
  lines.push(`Arguments${a.argsNote !== null ? ` (${slackEscape(a.argsNote)})` : ''}:\n\`\`\`${slackEscape(args.replace(/```/g, "'''"))}\`\`\``);
  const text = lines.join('\n');
  return {
    text: `Approval needed: ${slackEscape(a.method)} ${slackEscape(a.upstream)} ${slackEscape(a.path.slice(0, 200))} by ${slackEscape(a.agent)} (rule ${slackEscape(a.rule)})`,
    blocks: [
      { type: 'section', text: { type: 'mrkdwn', text: text.length > 2_900 ? `${text.slice(0, 2_900)}…` : text } },
      ...(buttons
        ? [
            {
              type: 'actions',
              block_id: 'valet_decision',
              elements: [
                { type: 'button', action_id: SLACK_ACTIONS.approve, style: 'primary', text: { type: 'plain_text', text: 'Approve' }, value: a.id },
                { type: 'button', action_id: SLACK_ACTIONS.deny, style: 'danger', text: { type: 'plain_text', text: 'Deny' }, value: a.id },
              ],
            },
          ]
        : []),
    ],
  };
}
