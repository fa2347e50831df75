import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createReplayGuard, SIGNATURE_WINDOW_S, verifySlackSignature, verifyValetSignature } from '../../gateway/approvals/chat.js';
import { signWebhook } from '../../gateway/approvals/notify.js';
import { chatReceivers } from '../../gateway/approvals/setup.js';
import { loadConfig } from '../../gateway/config/load.js';
import type { ConfigError } from '../../gateway/errors.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('chat request signatures', () => {
  const secret = 'slack-signing-secret-4f1e9a0b7c2d';
  const body = Buffer.from('payload=%7B%22type%22%3A%22block_actions%22%7D');
  const now = 1_700_000_000;
  const slack = (ts: number, b: Buffer | string = body, s = secret): Record<string, string> => ({
    'x-slack-request-timestamp': String(ts),
    'x-slack-signature': `v0=${createHmac('sha256', s).update(`v0:${ts}:${b.toString()}`).digest('hex')}`,
  });

  it('Slack: v0 HMAC over "v0:<ts>:<raw body>", within 5 minutes either way', () => {
    expect(verifySlackSignature(slack(now), body, secret, now)).toEqual({ signature: slack(now)['x-slack-signature'], timestamp: now });
    expect(verifySlackSignature(slack(now - SIGNATURE_WINDOW_S), body, secret, now)).toBeDefined();
    expect(verifySlackSignature(slack(now - SIGNATURE_WINDOW_S - 1), body, secret, now)).toBeUndefined();
    expect(verifySlackSignature(slack(now + SIGNATURE_WINDOW_S + 1), body, secret, now)).toBeUndefined();
    expect(verifySlackSignature(slack(now, body, 'another-secret'), body, secret, now)).toBeUndefined();
    expect(verifySlackSignature(slack(now), Buffer.concat([body, Buffer.from('x')]), secret, now)).toBeUndefined();
    expect(verifySlackSignature({ 'x-slack-request-timestamp': `${now}.5`, 'x-slack-signature': slack(now)['x-slack-signature'] }, body, secret, now)).toBeUndefined();
    expect(verifySlackSignature({ 'x-slack-signature': slack(now)['x-slack-signature'] }, body, secret, now)).toBeUndefined();
  });

  it('callback: the valet-signature of outgoing webhooks, within 5 minutes', () => {
    const json = Buffer.from('{"approval_id":"apr_x","action":"approve","approver":"a"}');
    expect(verifyValetSignature({ 'valet-signature': signWebhook(secret, json, now) }, json, secret, now)).toMatchObject({ timestamp: now });
    expect(signWebhook(secret, json, now)).toBe(signWebhook(secret, json.toString(), now));
    expect(verifyValetSignature({ 'valet-signature': signWebhook(secret, json, now - 301) }, json, secret, now)).toBeUndefined();
    expect(verifyValetSignature({ 'valet-signature': signWebhook('wrong', json, now) }, json, secret, now)).toBeUndefined();
    expect(verifyValetSignature({ 'valet-signature': `${signWebhook(secret, json, now)},v1=00` }, json, secret, now)).toBeUndefined();
  });

  it('a signature is accepted once while it could still verify, and forgotten after', () => {
    const guard = createReplayGuard();
    expect(guard.first({ signature: 'a', timestamp: now }, now)).toBe(true);
    expect(guard.first({ signature: 'a', timestamp: now }, now + SIGNATURE_WINDOW_S)).toBe(false);
    expect(guard.first({ signature: 'b', timestamp: now }, now + 1)).toBe(true);
    // Past the window the request no longer verifies anyway; the entry is dropped.
    expect(guard.first({ signature: 'a', timestamp: now }, now + SIGNATURE_WINDOW_S + 1)).toBe(true);
  });
});

describe('chat configuration', () => {
  const GATEWAY = `issuers:
  - name: dev
    issuer: valet-dev
    audience: valet
    algorithms: [HS256]
    secret: { env: K }
upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
`;
  const load = (gateway: string): ReturnType<typeof loadConfig> => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-chat-unit-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'a.yaml'), `${GATEWAY}${gateway}`);
    return loadConfig(dir);
  };
  const problems = (gateway: string): string[] => {
    try {
      load(gateway);
    } catch (err) {
      return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
    }
    return [];
  };

  it('reads Slack interactivity and the callback; secrets come from the environment', () => {
    const c = load(`gateway:
  approvals:
    channels:
      - type: slack
        url_env: SLACK_URL
        signing_secret_env: SLACK_SIGNING_SECRET
        approvers:
          U012AB: { subject: alice, groups: [finance] }
    callback:
      secret_env: CHAT_SECRET
      approvers:
        constructor: { subject: carol, groups: [finance, privacy], tenant: acme }
`);
    const s = c.gateway.approvals;
    expect(s?.channels[0]).toMatchObject({ signingSecretEnv: 'SLACK_SIGNING_SECRET', approvers: new Map([['U012AB', { subject: 'alice', groups: ['finance'], tenant: undefined }]]) });
    expect(s?.callback).toEqual({ secretEnv: 'CHAT_SECRET', approvers: new Map([['constructor', { subject: 'carol', groups: ['finance', 'privacy'], tenant: 'acme' }]]) });
    const chat = chatReceivers(s ?? (undefined as never), { SLACK_SIGNING_SECRET: 'slack-0a1b2c3d4e5f6a7b8c9d', CHAT_SECRET: ' chat-9f8e7d6c5b4a3f2e1d0c ' });
    expect(chat.slack.map((x) => x.secret)).toEqual(['slack-0a1b2c3d4e5f6a7b8c9d']);
    expect(chat.callback?.secret).toBe('chat-9f8e7d6c5b4a3f2e1d0c');
    // A Map: an id that names an Object.prototype member is only what the file says.
    expect(chat.slack[0]?.approvers.get('constructor')).toBeUndefined();
    expect(() => chatReceivers(s ?? (undefined as never), { SLACK_SIGNING_SECRET: 'x' })).toThrow(/gateway\.approvals\.callback: the environment variable CHAT_SECRET/);
    expect(load('').gateway.approvals?.callback).toBeUndefined();
  });

  it('refuses half-configured or misplaced interactivity', () => {
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: slack, url_env: U, signing_secret_env: S }]\n')).toEqual([expect.stringMatching(/channels\[0\]: Slack buttons need both/)]);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: slack, url_env: U, approvers: { U1: { subject: a, groups: [g] } } }]\n')).toEqual([expect.stringMatching(/Slack buttons need both/)]);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: webhook, url: "https://h.example", secret_env: W, signing_secret_env: S }]\n')).toEqual([
      expect.stringMatching(/signing_secret_env: only Slack channels take interactions/),
    ]);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: slack, url_env: U, signing_secret_env: S, approvers: { U1: { subject: a } } }]\n').length).toBeGreaterThan(0);
    expect(problems('gateway:\n  approvals:\n    callback: { secret_env: S }\n').length).toBeGreaterThan(0);
    expect(problems('gateway:\n  approvals:\n    callback: { secret_env: S, approvers: { "bad id": { subject: a, groups: [g] } } }\n').length).toBeGreaterThan(0);
  });
});
