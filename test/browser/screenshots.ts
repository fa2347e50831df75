/**
 * `npm run screenshots`: the dashboard's main views, with a realistic day of traffic, saved to
 * docs/screenshots/*.png. Offline: a local fake upstream, a temporary gateway, Debian's Chromium.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { newAuditRecord } from '../../gateway/server/pipeline.js';
import { buildDashboard, launchBrowser, openDashboard } from '../helpers/browser.js';
import { startTestGateway } from '../helpers/gateway.js';
import { startFakeUpstream } from '../helpers/upstream.js';

const OUT = fileURLToPath(new URL('../../docs/screenshots/', import.meta.url));

const TOOLS = `tools:
  - name: stripe.create_transfer
    upstream: stripe
    method: POST
    path: /v1/transfers
    args: { amount: int }
  - name: github.merge_pull
    upstream: github
    method: PUT
    path: /repos/{owner}/{repo}/pulls/{number}/merge
`;

const TESTS = `tests:
  - name: inference is allowed
    identity: { agent: support-bot, tenant: acme }
    request: { upstream: openai, method: POST, path: /v1/chat/completions, json: { model: gpt-4o } }
    expect: { effect: allow, rule: openai-inference }
  - name: a large transfer needs finance
    identity: { agent: treasury-bot, tenant: acme }
    request: { upstream: stripe, method: POST, path: /v1/transfers, json: { amount: 90000 } }
    expect: { effect: escalate, rule: large-transfers }
  - name: org admin endpoints are never for agents
    identity: { agent: ci-bot, tenant: globex }
    request: { upstream: github, method: DELETE, path: /orgs/globex/members/alice }
    expect: { effect: deny, rule: github-no-admin }
  - name: merging to main needs a release manager
    identity: { agent: ci-bot, tenant: globex }
    request: { upstream: github, method: PUT, path: /repos/globex/api/pulls/7/merge }
    expect: { effect: escalate, rule: merges-need-a-person }
`;

async function main(): Promise<void> {
  buildDashboard();
  mkdirSync(OUT, { recursive: true });
  const upstream = await startFakeUpstream((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, url: req.url }));
  });
  const api = (name: string): Record<string, unknown> => ({ name, origin: upstream.origin, credential: { scheme: 'bearer', secret: `${name.toUpperCase()}_KEY` } });
  const gw = await startTestGateway({
    upstreams: [api('openai'), api('github'), api('stripe')],
    files: { 'tools.yaml': TOOLS, 'tests.yaml': TESTS },
    rules: [
      { id: 'openai-inference', upstream: 'openai', methods: ['POST'], paths: ['/v1/chat/completions', '/v1/embeddings'], effect: 'allow', description: 'chat and embeddings for every agent' },
      { id: 'github-read', upstream: 'github', methods: ['GET'], effect: 'allow' },
      { id: 'github-no-admin', upstream: 'github', paths: ['/orgs/*/members/**', '/admin/**'], effect: 'deny', reason: 'organisation administration is never done by agents' },
      {
        id: 'merges-need-a-person',
        tools: ['github.merge_pull'],
        effect: 'escalate',
        reason: 'merging needs a release manager',
        approval: { group: 'release', mode: 'hold', timeout: '10m' },
      },
      { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow', roles: ['finance'] },
      {
        id: 'large-transfers',
        tools: ['stripe.create_transfer'],
        when: 'args.amount > 50000',
        effect: 'escalate',
        reason: 'transfers above $500 need finance approval',
        approval: { group: 'finance', mode: 'hold', timeout: '15m' },
      },
    ],
    env: { OPENAI_KEY: 'sk-demo-openai', GITHUB_KEY: 'ghp-demo', STRIPE_KEY: 'sk-demo-stripe' },
  });
  const admin = await gw.adminToken(['admin'], { subject: 'alice@example.com' });
  const adminCall = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> => {
    const res = await request(`${gw.adminUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${admin}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return res.body.json();
  };
  const call = async (agent: string, tenant: string, method: string, path: string, body?: unknown, roles: string[] = []): Promise<number> => {
    const token = await gw.token({ agent, tenant, roles });
    const res = await request(`${gw.url}${path}`, {
      method: method as 'GET',
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? null : JSON.stringify(body),
    });
    await res.body.text();
    return res.statusCode;
  };

  for (const [name, tenant] of [['OPENAI_KEY', null], ['GITHUB_KEY', 'globex'], ['STRIPE_KEY', 'acme'], ['STRIPE_KEY', 'globex']] as const) {
    await adminCall('POST', '/api/secrets', { name, value: `sk-demo-${randomUUID()}`, ...(tenant !== null && { tenant }) });
  }

  // A day of history, written through the gateway's own audit writer.
  const agents = [
    { agent: 'support-bot', tenant: 'acme', upstream: 'openai', path: '/v1/chat/completions' },
    { agent: 'treasury-bot', tenant: 'acme', upstream: 'stripe', path: '/v1/transfers' },
    { agent: 'ci-bot', tenant: 'globex', upstream: 'github', path: '/repos/globex/api/pulls' },
    { agent: 'triage-bot', tenant: 'globex', upstream: 'github', path: '/repos/globex/api/issues' },
  ];
  const RULES = {
    openai: { allow: 'openai-inference', deny: 'default-deny', escalate: '' },
    github: { allow: 'github-read', deny: 'github-no-admin', escalate: 'merges-need-a-person' },
    stripe: { allow: 'transfers', deny: 'default-deny', escalate: 'large-transfers' },
  } as const;
  const now = Date.now();
  let seed = 7;
  const rand = (): number => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const times = Array.from({ length: 900 }, () => now - 60_000 - Math.floor(rand() * 24 * 3_600_000)).sort((a, b) => a - b);
  for (const ts of times) {
    const hour = new Date(ts).getHours();
    if (rand() > 0.35 + 0.6 * Math.sin((Math.PI * hour) / 24)) continue;
    const a = agents[Math.floor(rand() * agents.length)] as (typeof agents)[number];
    const r = rand();
    const decision = r < 0.82 ? 'allow' : r < 0.95 || a.upstream === 'openai' ? 'deny' : 'escalate';
    gw.gateway.audit.record({
      ...newAuditRecord(randomUUID(), decision === 'deny' ? 'DELETE' : 'POST', a.path),
      ts,
      agent: a.agent,
      tenant: a.tenant,
      upstream: a.upstream,
      decision,
      rule: RULES[a.upstream as keyof typeof RULES][decision],
      status: decision === 'allow' ? 200 : 403,
      upstreamStatus: decision === 'allow' ? 200 : null,
      durationMs: 20 + rand() * 300,
    });
  }
  // And real calls, just now.
  await call('support-bot', 'acme', 'POST', '/openai/v1/chat/completions', { model: 'gpt-4o', messages: [] });
  await call('treasury-bot', 'acme', 'POST', '/stripe/v1/transfers', { amount: 1200, currency: 'usd' }, ['finance']);
  await call('ci-bot', 'globex', 'GET', '/github/repos/globex/api/pulls/7');
  await call('ci-bot', 'globex', 'DELETE', '/github/orgs/globex/members/alice');
  await call('triage-bot', 'globex', 'GET', '/github/repos/globex/api/issues');
  await call('support-bot', 'acme', 'GET', '/openai/v1/files');
  const held = [
    call('treasury-bot', 'acme', 'POST', '/stripe/v1/transfers', { amount: 250000, currency: 'usd', destination: 'acct_1Q2w3E', description: 'Q3 supplier invoice 4471' }, ['finance']),
    call('ci-bot', 'globex', 'PUT', '/github/repos/globex/api/pulls/7/merge', { merge_method: 'squash', commit_title: 'Release 2.4.1' }),
  ];
  await gw.waitForAudit(6);

  const browser = await launchBrowser();
  const page = await openDashboard(browser, gw.adminUrl, admin, 'approvals');
  const shot = async (name: string, fullPage = false): Promise<void> => {
    await page.mouse.move(1, 1);
    await page.waitForTimeout(300);
    await page.screenshot({ path: `${OUT}${name}.png`, fullPage });
    console.log(`docs/screenshots/${name}.png`);
  };
  await page.locator('.approval').nth(1).waitFor({ timeout: 10_000 });
  await page.locator('.approval input.reason').first().fill('supplier verified, invoice 4471 matches');
  await shot('approvals');

  await page.goto(`${gw.adminUrl}/#/audit`);
  await page.locator('#audit-results tbody tr').first().waitFor();
  await page.locator('#audit-results tbody tr', { hasText: 'treasury-bot' }).first().click();
  await page.locator('#audit-detail table.trace').waitFor();
  await shot('audit');

  await page.goto(`${gw.adminUrl}/#/activity`);
  await page.locator('#activity-chart svg.chart').waitFor();
  await page.locator('#agent-list tr[data-agent]').first().waitFor();
  await shot('activity');

  await page.goto(`${gw.adminUrl}/#/policies`);
  await page.locator('#policy-rules tr[data-rule]').first().waitFor();
  await page.locator('#policy-tests table').waitFor();
  await shot('policies', true);

  await page.goto(`${gw.adminUrl}/#/secrets`);
  await page.locator('#secret-list tbody tr').first().waitFor();
  await page.locator('#secret-set input[name="name"]').fill('POSTMARK_SERVER_TOKEN');
  await shot('secrets');

  await browser.close();
  const pending = ((await adminCall('GET', '/api/approvals?status=pending')) as { approvals: { id: string }[] }).approvals;
  for (const a of pending) await adminCall('POST', `/api/approvals/${a.id}/deny`, { reason: 'screenshots done' });
  await Promise.all(held);
  await gw.close();
  await upstream.close();
}

await main();
