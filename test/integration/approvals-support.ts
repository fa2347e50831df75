/**
 * Shared set-up for the approvals suites: a gateway whose `pay` upstream has hold and async
 * escalation rules, fake webhook and Slack receivers, and small request helpers.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { request } from 'undici';
import { expect } from 'vitest';
import type { TestGateway, TestGatewayOptions } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

export const PAY_SECRET = 'sk_live_approvals_suite_7d3e91ab';
export const WEBHOOK_SECRET = 'whsec_approvals_suite_0a9b8c7d6e5f';

export const PAY_TOOLS_YAML = `tools:
  - name: pay.transfer
    upstream: pay
    method: POST
    path: /v1/async/transfers
  - name: pay.card
    upstream: pay
    method: GET
    path: /v1/async/cards/{card_id}
rate_limits:
  - id: limited-payouts
    upstream: pay
    paths: [/v1/async/limited/**]
    limit: 1
    window: 1h
`;

/** Rules: `/v1/hold/**` and `/v1/async/**` escalate (finance), `-short` variants expire in 1 s; the rest is allowed. */
export const PAY_RULES = [
  { id: 'pay-allow', upstream: 'pay', effect: 'allow' },
  {
    id: 'hold-transfers',
    upstream: 'pay',
    paths: ['/v1/hold/**'],
    effect: 'escalate',
    reason: 'transfers need a person',
    approval: { group: 'finance', mode: 'hold', timeout: '20s', redact: ['card.number'] },
  },
  { id: 'hold-short', upstream: 'pay', paths: ['/v1/hold-short/**'], effect: 'escalate', reason: 'quick decision', approval: { group: 'finance', mode: 'hold', timeout: '1s' } },
  {
    id: 'async-transfers',
    upstream: 'pay',
    paths: ['/v1/async/**'],
    effect: 'escalate',
    reason: 'async transfers need a person',
    approval: { group: 'finance', mode: 'async', timeout: '30s', redact: ['card.number', 'card_id', 'memo'] },
  },
  { id: 'async-short', upstream: 'pay', paths: ['/v1/async-short/**'], effect: 'escalate', reason: 'quick async', approval: { group: 'finance', mode: 'async', timeout: '1s' } },
  { id: 'privacy', upstream: 'pay', paths: ['/v1/privacy/**'], effect: 'escalate', reason: 'personal data', approval: { group: 'privacy', mode: 'async', timeout: '30s' } },
];

export interface Receivers {
  readonly webhook: FakeUpstream;
  readonly slack: FakeUpstream;
  /** Webhook answers: the next N deliveries fail with 500. */
  failNext(n: number): void;
  close(): Promise<void>;
}

export async function startReceivers(): Promise<Receivers> {
  let failures = 0;
  const webhook = await startFakeUpstream((_req, res) => {
    if (failures > 0) {
      failures--;
      res.writeHead(500).end('try later');
      return;
    }
    res.writeHead(204).end();
  });
  const slack = await startFakeUpstream((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('ok'));
  return {
    webhook,
    slack,
    failNext: (n) => {
      failures = n;
    },
    close: async () => {
      await webhook.close();
      await slack.close();
    },
  };
}

export function payGateway(upstream: FakeUpstream, rx: Receivers, gateway: Record<string, unknown> = {}): TestGatewayOptions {
  return {
    upstreams: [{ name: 'pay', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'PAY_KEY' } }],
    rules: PAY_RULES,
    files: { 'tools.yaml': PAY_TOOLS_YAML },
    gateway: {
      approvals: {
        max_pending_per_agent: 3,
        max_pending_per_tenant: 5,
        channels: [
          { type: 'webhook', url: `${rx.webhook.origin}/hooks/valet`, secret_env: 'APPROVAL_WEBHOOK_SECRET', max_attempts: 4, backoff: '20ms' },
          { type: 'slack', url_env: 'SLACK_APPROVALS_URL', groups: ['finance'] },
        ],
      },
      ...gateway,
    },
    env: { PAY_KEY: PAY_SECRET, APPROVAL_WEBHOOK_SECRET: WEBHOOK_SECRET, SLACK_APPROVALS_URL: `${rx.slack.origin}/services/T000/B000/slack-url-secret` },
  };
}

/**
 * {@link payGateway} plus a `vault` upstream whose credential (`VAULT_TOKEN`) only the secret store
 * holds: what the fleet suites use to see approvals and secrets shared. `env` adds to the pay env.
 */
export function payAndVaultGateway(upstream: FakeUpstream, rx: Receivers, env: Record<string, string>, root?: string): TestGatewayOptions {
  const options = payGateway(upstream, rx);
  return {
    ...options,
    upstreams: [...options.upstreams, { name: 'vault', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'VAULT_TOKEN' } }],
    rules: [...options.rules, { id: 'vault-allow', upstream: 'vault', effect: 'allow' }],
    gateway: { ...options.gateway, secrets: { sources: ['store', 'env'] } },
    env: { ...options.env, ...env },
    ...(root !== undefined && { root }),
  };
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

export async function call(
  base: string,
  path: string,
  o: { token?: string; method?: string; body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Reply> {
  const headers: Record<string, string> = { ...o.headers };
  if (o.token !== undefined) headers['authorization'] = `Bearer ${o.token}`;
  let body: string | Buffer | null = null;
  if (o.body !== undefined) {
    body = typeof o.body === 'string' || Buffer.isBuffer(o.body) ? o.body : JSON.stringify(o.body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await request(`${base}${path}`, { method: (o.method ?? (body === null ? 'GET' : 'POST')) as 'GET', headers, body, ...(o.signal && { signal: o.signal }) });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, text, json };
}

export const admin = (gw: TestGateway, token: string, path: string, body?: unknown): Promise<Reply> =>
  call(gw.adminUrl, path, { token, ...(body !== undefined && { body, method: 'POST' }) });

/** Polls the admin API until an approval matching `pred` is listed; returns it. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function waitForApproval(gw: TestGateway, token: string, pred: (a: any) => boolean, timeoutMs = 5_000): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await admin(gw, token, '/api/approvals?limit=1000');
    expect(r.status, r.text).toBe(200);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const found = (r.json.approvals as any[]).find(pred);
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error('approval not found in time');
    await new Promise((r2) => setTimeout(r2, 20));
  }
}

/** Checks a webhook delivery's `valet-signature` against the shared secret; returns the parsed body. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function verifyWebhook(req: RecordedRequest, secret = WEBHOOK_SECRET): any {
  const header = req.headers['valet-signature'];
  expect(typeof header).toBe('string');
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header as string);
  expect(m, `signature header ${String(header)}`).not.toBeNull();
  const [, t, mac] = m as RegExpExecArray;
  expect(Math.abs(Date.now() / 1000 - Number(t))).toBeLessThan(300);
  const expected = createHmac('sha256', secret).update(`${t}.${req.body.toString('utf8')}`).digest();
  expect(timingSafeEqual(expected, Buffer.from(mac as string, 'hex')), 'HMAC matches').toBe(true);
  return JSON.parse(req.body.toString('utf8'));
}

export async function waitUntil(pred: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
