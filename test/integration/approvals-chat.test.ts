/**
 * Approvals decided from chat: Slack's Block Kit buttons (signed interactions) and the generic
 * signed callback, over real sockets, against the embedded or the shared backends.
 */
import { createHmac } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWebhook } from '../../gateway/approvals/notify.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, PAY_SECRET, payGateway, startReceivers, waitUntil, type Reply, type Receivers } from './approvals-support.js';

const SLACK_SIGNING_SECRET = '8f742231b10e8888abcd99yyyzzz85a5';
const CALLBACK_SECRET = 'cbsec_approvals_chat_41d9e07b2c6a';
const INTERACTIONS = '/api/chat/slack/interactions';
const CALLBACK = '/api/chat/callback';
const BODY = { amount: 700, currency: 'eur' };

describe('approvals decided from chat', () => {
  let upstream: FakeUpstream;
  let rx: Receivers;
  let gw: TestGateway;
  let reader: string;
  let n = 0;

  beforeAll(async () => {
    upstream = await startFakeUpstream((_req, res) => res.writeHead(201, { 'content-type': 'application/json' }).end('{"executed":true}'));
    rx = await startReceivers();
    const base = payGateway(upstream, rx);
    gw = await startTestGateway({
      ...base,
      gateway: {
        approvals: {
          channels: [
            {
              type: 'slack',
              url_env: 'SLACK_APPROVALS_URL',
              signing_secret_env: 'SLACK_SIGNING_SECRET',
              approvers: {
                U_ALICE: { subject: 'alice', groups: ['finance'] },
                U_PAT: { subject: 'pat', groups: ['privacy'] },
                U_BOB: { subject: 'bob', groups: ['finance'] },
                U_TINA: { subject: 'tina', groups: ['finance'], tenant: 'elsewhere' },
              },
            },
          ],
          callback: { secret_env: 'CHAT_CALLBACK_SECRET', approvers: { 'carol@chat': { subject: 'carol', groups: ['finance'] } } },
        },
      },
      env: { ...base.env, SLACK_SIGNING_SECRET, CHAT_CALLBACK_SECRET: CALLBACK_SECRET },
    });
    reader = await gw.adminToken(['auditor']);
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
    await rx?.close();
  });

  /** An escalated async call (on behalf of `user`, if given), its approval id and the agent's token. */
  const escalate = async (user?: string): Promise<{ id: string; token: string }> => {
    const name = `chat-bot-${++n}`;
    const token = await gw.token({ agent: name, tenant: `t-${name}`, ...(user !== undefined && { user }) });
    const r = await call(gw.url, '/pay/v1/async/transfers', { token, body: BODY });
    expect(r.status, r.text).toBe(202);
    return { id: r.json.approval.id as string, token };
  };
  const statusOf = async (id: string): Promise<{ status: string; resolver: string | null; resolution_reason: string | null }> => {
    const r = await admin(gw, reader, `/api/approvals/${id}`);
    expect(r.status, r.text).toBe(200);
    return r.json.approval;
  };

  /** A block_actions payload as Slack posts it, form-encoded. */
  const interaction = (user: string, actionId: string, id: string, extra: Record<string, unknown> = {}): string =>
    new URLSearchParams({
      payload: JSON.stringify({
        type: 'block_actions',
        user: { id: user, username: user.toLowerCase(), team_id: 'T000' },
        team: { id: 'T000' },
        actions: [{ type: 'button', block_id: 'valet_decision', action_id: actionId, value: id, action_ts: '1700000000.1' }],
        ...extra,
      }),
    }).toString();
  const slackHeaders = (body: string, o: { secret?: string; ts?: number } = {}): Record<string, string> => {
    const ts = String(o.ts ?? Math.floor(Date.now() / 1000));
    const sig = createHmac('sha256', o.secret ?? SLACK_SIGNING_SECRET).update(`v0:${ts}:${body}`).digest('hex');
    return { 'content-type': 'application/x-www-form-urlencoded', 'x-slack-request-timestamp': ts, 'x-slack-signature': `v0=${sig}` };
  };
  const postSlack = (body: string, headers: Record<string, string>): Promise<Reply> => call(gw.adminUrl, INTERACTIONS, { method: 'POST', body, headers });
  const pressAs = (user: string, actionId: string, id: string): Promise<Reply> => {
    const body = interaction(user, actionId, id);
    return postSlack(body, slackHeaders(body));
  };

  const signedCallback = (payload: unknown, o: { secret?: string; t?: number } = {}): { body: string; headers: Record<string, string> } => {
    const body = JSON.stringify(payload);
    const t = o.t ?? Math.floor(Date.now() / 1000);
    return { body, headers: { 'content-type': 'application/json', 'valet-signature': signWebhook(o.secret ?? CALLBACK_SECRET, body, t) } };
  };
  const postCallback = (c: { body: string; headers: Record<string, string> }): Promise<Reply> => call(gw.adminUrl, CALLBACK, { method: 'POST', body: c.body, headers: c.headers });

  it('Slack: the message carries Approve/Deny buttons; a signed press by a mapped approver approves; the re-send executes once', async () => {
    const before = rx.slack.requests.length;
    const { id, token } = await escalate();
    await waitUntil(() => rx.slack.requests.slice(before).some((r) => r.body.toString().includes(id)));
    const msg = JSON.parse((rx.slack.requests.slice(before).find((r) => r.body.toString().includes(id))?.body ?? Buffer.from('{}')).toString());
    expect(msg.blocks[1]).toEqual({
      type: 'actions',
      block_id: 'valet_decision',
      elements: [
        { type: 'button', action_id: 'valet_approve', style: 'primary', text: { type: 'plain_text', text: 'Approve' }, value: id },
        { type: 'button', action_id: 'valet_deny', style: 'danger', text: { type: 'plain_text', text: 'Deny' }, value: id },
      ],
    });

    // No admin token: the Slack signature is the authentication. A response_url that is not Slack's is never called.
    const slackCalls = rx.slack.requests.length;
    const body = interaction('U_ALICE', 'valet_approve', id, { response_url: `${rx.slack.origin}/actions/T000/1/secret` });
    const r = await postSlack(body, slackHeaders(body));
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ replace_original: true, text: expect.stringContaining('Approved by alice') });
    expect(await statusOf(id)).toMatchObject({ status: 'approved', resolver: 'alice', resolution_reason: 'approved in Slack by alice (U_ALICE)' });

    const again = await call(gw.url, '/pay/v1/async/transfers', { token, body: BODY, headers: { 'valet-approval': id } });
    expect(again.status, again.text).toBe(201);
    expect(upstream.requests.filter((q) => q.url === '/v1/async/transfers')).toHaveLength(1);
    expect(upstream.requests[0]?.headers['authorization']).toBe(`Bearer ${PAY_SECRET}`);

    // Pressing again answers with the current state; nothing changes.
    const late = await pressAs('U_BOB', 'valet_deny', id);
    expect(late.status).toBe(200);
    expect(late.json.text).toContain('Already consumed by alice');
    expect((await statusOf(id)).status).toBe('consumed');
    expect(rx.slack.requests.length).toBe(slackCalls);
  });

  it('Slack: Deny records a fixed reason naming the approver', async () => {
    const { id } = await escalate();
    const r = await pressAs('U_BOB', 'valet_deny', id);
    expect(r.status, r.text).toBe(200);
    expect(r.json.text).toContain('Denied by bob');
    expect(await statusOf(id)).toMatchObject({ status: 'denied', resolver: 'bob', resolution_reason: 'denied in Slack by bob (U_BOB)' });
  });

  it('Slack: forged, wrong-secret, stale, future, replayed and tampered requests are refused; nothing is decided', async () => {
    const { id } = await escalate();
    const body = interaction('U_ALICE', 'valet_approve', id);
    const refused = async (r: Promise<Reply>): Promise<void> => {
      const res = await r;
      expect(res.status, res.text).toBe(403);
      expect(res.json.error.code).toBe('VALET_ERR_ADMIN_FORBIDDEN');
      expect(res.text).not.toContain(SLACK_SIGNING_SECRET);
    };
    await refused(postSlack(body, { ...slackHeaders(body), 'x-slack-signature': `v0=${'ab'.repeat(32)}` }));
    await refused(postSlack(body, slackHeaders(body, { secret: 'not-the-signing-secret-000000000' })));
    await refused(postSlack(body, slackHeaders(body, { ts: Math.floor(Date.now() / 1000) - 360 })));
    await refused(postSlack(body, slackHeaders(body, { ts: Math.floor(Date.now() / 1000) + 360 })));
    const { 'x-slack-signature': _sig, ...unsigned } = slackHeaders(body);
    await refused(postSlack(body, unsigned));
    // Signed for one approval id, sent with another (the body changed after signing).
    const other = await escalate();
    await refused(postSlack(interaction('U_ALICE', 'valet_approve', other.id), slackHeaders(body)));
    expect((await statusOf(id)).status).toBe('pending');
    expect((await statusOf(other.id)).status).toBe('pending');

    // A valid request works once; the same request again is a replay.
    const denyBody = interaction('U_BOB', 'valet_deny', id);
    const headers = slackHeaders(denyBody);
    expect((await postSlack(denyBody, headers)).status).toBe(200);
    expect((await statusOf(id)).status).toBe('denied');
    await refused(postSlack(denyBody, headers));
  });

  it('Slack: an unmapped user, a user outside the group, another tenant and four eyes are told so; nothing is decided', async () => {
    const { id } = await escalate('bob');
    const refusal = async (user: string, want: RegExp): Promise<void> => {
      const r = await pressAs(user, 'valet_approve', id);
      expect(r.status, r.text).toBe(200);
      expect(r.json).toMatchObject({ response_type: 'ephemeral', replace_original: false });
      expect(r.json.text).toMatch(want);
      expect(r.json.text).toContain('Nothing was decided.');
    };
    await refusal('U_STRANGER', /Slack user U_STRANGER is not one of Valet's approvers/);
    await refusal('U_PAT', /needs a member of approver group "finance"/);
    await refusal('U_TINA', /No such approval/);
    await refusal('U_BOB', /on your own behalf/);
    expect(await statusOf(id)).toMatchObject({ status: 'pending', resolver: null });
    // Four eyes: bob may still deny his own call, and alice may approve it.
    expect((await pressAs('U_ALICE', 'valet_approve', id)).json.text).toContain('Approved by alice');
  });

  it('Slack: a body that is not a button press is a bad request', async () => {
    const body = new URLSearchParams({ payload: JSON.stringify({ type: 'view_submission', user: { id: 'U_ALICE' } }) }).toString();
    const r = await postSlack(body, slackHeaders(body));
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe('VALET_ERR_ADMIN_BAD_REQUEST');
  });

  it('callback: a signed JSON decision by a mapped approver approves; forged, expired and replayed are refused', async () => {
    const { id, token } = await escalate();
    const refused = async (c: { body: string; headers: Record<string, string> }, code = 'VALET_ERR_ADMIN_FORBIDDEN'): Promise<void> => {
      const r = await postCallback(c);
      expect(r.status, r.text).toBe(code === 'VALET_ERR_ADMIN_FORBIDDEN' ? 403 : 400);
      expect(r.json.error.code).toBe(code);
      expect(r.text).not.toContain(CALLBACK_SECRET);
    };
    const decision = { approval_id: id, action: 'approve', approver: 'carol@chat', reason: 'checked in Teams' };
    await refused(signedCallback(decision, { secret: 'cbsec_wrong_secret_0000000000' }));
    await refused(signedCallback(decision, { t: Math.floor(Date.now() / 1000) - 360 }));
    const forged = signedCallback(decision);
    await refused({ body: forged.body.replace('carol@chat', 'mallory'), headers: forged.headers });
    await refused(signedCallback({ ...decision, approver: 'mallory' }));
    await refused(signedCallback({ ...decision, extra: 1 }), 'VALET_ERR_ADMIN_BAD_REQUEST');
    expect((await statusOf(id)).status).toBe('pending');

    const ok = signedCallback(decision);
    const r = await postCallback(ok);
    expect(r.status, r.text).toBe(200);
    expect(r.json).toMatchObject({ decided: true, approval: { id, status: 'approved', resolver: 'carol', resolution_reason: 'checked in Teams' } });
    await refused(ok);

    // Deciding again answers with the current state.
    const again = await postCallback(signedCallback({ approval_id: id, action: 'deny', approver: 'carol@chat' }));
    expect(again.status, again.text).toBe(200);
    expect(again.json).toMatchObject({ decided: false, approval: { status: 'approved', resolver: 'carol' } });

    expect((await call(gw.url, '/pay/v1/async/transfers', { token, body: BODY, headers: { 'valet-approval': id } })).status).toBe(201);
  });

  it('the chat endpoints take POST only', async () => {
    expect((await call(gw.adminUrl, INTERACTIONS)).json.error.code).toBe('VALET_ERR_ADMIN_METHOD');
    expect((await call(gw.adminUrl, CALLBACK)).json.error.code).toBe('VALET_ERR_ADMIN_METHOD');
  });
});
