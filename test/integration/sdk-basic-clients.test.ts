/**
 * SDKs that put their key where Bearer is not: Twilio only does HTTP Basic (account SID as the
 * user name, the auth token as the password) and Slack's Web API client sends Bearer but answers
 * errors its own way. Each real client runs against a fake API on 127.0.0.1 through Valet.
 */
import type { ServerResponse } from 'node:http';
import { WebClient, ErrorCode as SlackErrorCode } from '@slack/web-api';
import twilio from 'twilio';
import type { RequestOptions } from 'twilio/lib/base/RequestClient.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const ACCOUNT = 'AC0123456789abcdef0123456789abcdef';
const TWILIO_TOKEN = 'real-twilio-auth-token-5e4d3c2b1a';
const SLACK_TOKEN = 'xoxb-real-slack-bot-token-7766';

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function fakeApis(req: RecordedRequest, res: ServerResponse): void {
  const url = new URL(req.url, 'http://x');
  const messages = `/2010-04-01/Accounts/${ACCOUNT}/Messages.json`;
  if (url.pathname === messages && req.method === 'POST') {
    const form = new URLSearchParams(req.body.toString());
    return json(res, 201, { sid: 'SM1', account_sid: ACCOUNT, to: form.get('To'), from: form.get('From'), body: form.get('Body'), status: 'queued' });
  }
  if (url.pathname === messages && req.method === 'GET') {
    const page = Number(url.searchParams.get('Page') ?? '0');
    const next = page === 0 ? `${messages}?PageSize=1&Page=1&PageToken=PA1` : null;
    return json(res, 200, { messages: [{ sid: `SM${page + 10}`, account_sid: ACCOUNT, body: `m${page}` }], next_page_uri: next, page, page_size: 1, uri: req.url });
  }
  if (url.pathname === '/api/chat.update') return json(res, 200, { ok: false, error: 'message_not_found' });
  if (url.pathname === `/2010-04-01/Accounts/${ACCOUNT}/Messages/SMmissing.json`) return json(res, 404, { code: 20404, message: 'The requested resource was not found', more_info: 'https://www.twilio.com/docs/errors/20404', status: 404 });
  if (url.pathname === '/api/conversations.list') {
    const second = new URLSearchParams(req.body.toString()).get('cursor') === 'c2';
    return json(res, 200, { ok: true, channels: [second ? { id: 'C2', name: 'random' } : { id: 'C1', name: 'general' }], response_metadata: { next_cursor: second ? '' : 'c2' } });
  }
  if (url.pathname === '/api/chat.postMessage') return json(res, 200, { ok: true, channel: 'C1', ts: '1.2', message: { text: new URLSearchParams(req.body.toString()).get('text') ?? JSON.parse(req.body.toString() || '{}').text } });
  json(res, 404, { message: 'no fake' });
}

describe('Basic-only and other SDKs through Valet', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  const sentTo: string[] = [];

  beforeAll(async () => {
    upstream = await startFakeUpstream(fakeApis);
    gw = await startTestGateway({
      upstreams: [
        // The SDK sends Basic ACCOUNT:<agent token>; Valet sends Basic ACCOUNT:<real token>.
        { name: 'twilio', origin: upstream.origin, dialect: 'twilio', agent_token: { basic: 'password' }, credential: { scheme: 'basic', username: ACCOUNT, secret: 'TWILIO_AUTH_TOKEN' } },
        { name: 'slack', origin: upstream.origin, dialect: 'slack', credential: { scheme: 'bearer', secret: 'SLACK_BOT_TOKEN' } },
      ],
      rules: [
        { id: 'no-calls', upstream: 'twilio', paths: ['/2010-04-01/Accounts/*/Calls.json'], effect: 'deny', reason: 'agents send messages, they do not call' },
        { id: 'no-admin', upstream: 'slack', paths: ['/api/admin.users.list', '/api/admin.conversations.archive'], effect: 'deny', reason: 'no workspace administration' },
        { id: 'ok', effect: 'allow' },
      ],
      env: { TWILIO_AUTH_TOKEN: TWILIO_TOKEN, SLACK_BOT_TOKEN: SLACK_TOKEN },
    });
    token = await gw.token({ agent: 'comms-bot', tenant: 'acme' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  /** Twilio's client takes no base URL; its supported httpClient option sends it through Valet. */
  function twilioClient(): ReturnType<typeof twilio> {
    const valet = `${gw.url}/twilio`;
    class ThroughValet extends twilio.RequestClient {
      override request<TData>(opts: RequestOptions<TData>) {
        const uri = opts.uri.replace(/^https:\/\/api\.twilio\.com/, valet);
        sentTo.push(new URL(uri).pathname);
        return super.request({ ...opts, uri });
      }
    }
    return twilio(ACCOUNT, token, { httpClient: new ThroughValet() });
  }

  it('twilio: the agent token as the Basic password; writes a form, pages a list; the upstream sees the real token once', async () => {
    const client = twilioClient();
    const sent = await client.messages.create({ to: '+15550001', from: '+15550002', body: 'hello' });
    expect(sent).toMatchObject({ sid: 'SM1', body: 'hello' });
    const listed = await client.messages.list({ pageSize: 1, limit: 2 });
    expect(listed.map((m) => m.sid)).toEqual(['SM10', 'SM11']);
    const seen = upstream.requests.filter((r) => r.url.includes('/Messages.json'));
    expect(seen).toHaveLength(3);
    for (const r of seen) {
      expect(headerValues(r, 'authorization')).toEqual([`Basic ${Buffer.from(`${ACCOUNT}:${TWILIO_TOKEN}`).toString('base64')}`]);
      expect(JSON.stringify(r.rawHeaders) + r.body.toString()).not.toContain(token.split('.')[2] as string);
    }
  });

  it('twilio: an upstream error is its RestException with the upstream’s code', async () => {
    const err = await twilioClient().messages('SMmissing').fetch().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(twilio.RestException);
    expect(err).toMatchObject({ status: 404, code: 20404, message: 'The requested resource was not found' });
  });

  it('twilio: a denial is a RestException with Valet’s code and message, sent once', async () => {
    const before = sentTo.length;
    const err = await twilioClient().calls.create({ to: '+15550001', from: '+15550002', url: 'http://example.com/twiml' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(twilio.RestException);
    const e = err as InstanceType<typeof twilio.RestException>;
    expect(e.status).toBe(403);
    expect(e.code).toBe('VALET_ERR_POLICY_DENIED');
    expect(e.message).toBe('Denied by rule no-calls: agents send messages, they do not call');
    expect(sentTo.length - before).toBe(1);
    expect(upstream.requests.filter((r) => r.url.includes('/Calls.json'))).toHaveLength(0);
  });

  it('twilio: a wrong password is not a token (refused 401); Basic without the option is not read', async () => {
    const anonymous = twilio(ACCOUNT, 'not-a-token', { httpClient: new (class extends twilio.RequestClient {
      override request<TData>(opts: RequestOptions<TData>) {
        return super.request({ ...opts, uri: opts.uri.replace(/^https:\/\/api\.twilio\.com/, `${gw.url}/twilio`) });
      }
    })() });
    const err = await anonymous.messages.list({ limit: 1 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 401, code: 'VALET_ERR_TOKEN_INVALID' });
    const basic = `Basic ${Buffer.from(`${ACCOUNT}:${token}`).toString('base64')}`;
    const res = await fetch(`${gw.url}/slack/api/conversations.list`, { headers: { authorization: basic } });
    // (slack's dialect: 200 with ok: false)
    expect(await res.json()).toMatchObject({ ok: false, error: 'valet_err_token_missing' });
    expect(upstream.requests.filter((q) => q.url === '/api/conversations.list')).toHaveLength(0);
  });

  it('slack: reads and writes with the real token; a denial is the client’s platform error, sent once', async () => {
    const slack = new WebClient(token, { slackApiUrl: `${gw.url}/slack/api/`, retryConfig: { retries: 2, factor: 1, minTimeout: 10, maxTimeout: 10 } });
    const ids: string[] = [];
    for await (const page of slack.paginate('conversations.list')) ids.push(...((page as { channels?: { id: string }[] }).channels ?? []).map((c) => c.id));
    expect(ids).toEqual(['C1', 'C2']);
    const posted = await slack.chat.postMessage({ channel: 'C1', text: 'deployed' });
    expect(posted.ok).toBe(true);
    for (const r of upstream.requests.filter((q) => q.url.startsWith('/api/'))) expect(headerValues(r, 'authorization')).toEqual([`Bearer ${SLACK_TOKEN}`]);
    // The upstream's own error: the client's platform error with Slack's code.
    await expect(slack.chat.update({ channel: 'C1', ts: '1.2', text: 'x' })).rejects.toMatchObject({ code: SlackErrorCode.PlatformError, data: { error: 'message_not_found' } });
    // Slack answers errors with 200 and ok: false; any other status but 429 its client retries.
    const err = await slack.apiCall('admin.users.list').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: SlackErrorCode.PlatformError, data: { ok: false, error: 'valet_err_policy_denied', response_metadata: { messages: ['Denied by rule no-admin: no workspace administration'] } } });
    expect(upstream.requests.filter((q) => q.url.startsWith('/api/admin'))).toHaveLength(0);
    const rows = (await gw.auditRows()).filter((r) => r.path === '/api/admin.users.list');
    expect(rows).toHaveLength(1);
    // The row records the status sent and the refusal's code.
    expect(rows[0]).toMatchObject({ rule: 'no-admin', decision: 'deny', status: 200, error_code: 'VALET_ERR_POLICY_DENIED' });
  });

  it('the agent token never reached the upstream, in any request of any client', () => {
    expect(upstream.requests.length).toBeGreaterThanOrEqual(8);
    for (const r of upstream.requests) expect(JSON.stringify(r.rawHeaders) + r.url + r.body.toString('latin1'), r.url).not.toContain(token.split('.')[2] as string);
  });
});
