import { request } from 'undici';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { browserAvailable, buildDashboard, launchBrowser, openDashboard, pageProblems } from '../helpers/browser.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

/**
 * The approval loop through a real browser: an agent's call is held by an `escalate` rule (mode
 * hold), a person approves it in the dashboard, and the agent's still-open request completes with
 * the upstream's response. Depends on the approvals workflow (gateway/approvals) and its admin API.
 */
describe.skipIf(!browserAvailable)('dashboard: approvals queue', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let browser: Browser;

  beforeAll(async () => {
    buildDashboard();
    upstream = await startFakeUpstream((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ deployed: true, url: req.url }));
    });
    gw = await startTestGateway({
      upstreams: [{ name: 'ops', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'OPS_KEY' } }],
      rules: [
        { id: 'reads', upstream: 'ops', methods: ['GET'], effect: 'allow' },
        {
          id: 'deploys-need-a-person',
          upstream: 'ops',
          methods: ['POST'],
          paths: ['/v1/deploys'],
          effect: 'escalate',
          reason: 'production deploys need a person',
          approval: { group: 'release', mode: 'hold', timeout: '30s' },
        },
      ],
      env: { OPS_KEY: 'sk-ops-browser-test' },
    });
    browser = await launchBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await upstream?.close();
  });

  const deploy = async (service: string): Promise<{ status: number; body: string }> => {
    const token = await gw.token({ agent: 'release-bot', tenant: 'acme' });
    const res = await request(`${gw.url}/ops/v1/deploys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ service, version: '2.4.1' }),
    });
    return { status: res.statusCode, body: await res.body.text() };
  };

  it('a held call is approved with one click and the agent gets the upstream response', async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['admin'], { subject: 'alice' }), 'approvals');
    // The #token= link moved into session storage and left the address bar.
    expect(new URL(page.url()).hash).toBe('#/approvals');
    expect(await page.evaluate('sessionStorage.getItem("valet.adminToken")')).toMatch(/^eyJ/);
    await expect.poll(() => page.locator('#whoami').textContent()).toContain('alice');

    const held = deploy('billing');
    const card = page.locator('.approval', { hasText: '/v1/deploys' });
    await card.waitFor({ timeout: 10_000 });
    expect(await card.textContent()).toMatch(/release-bot[\s\S]*acme[\s\S]*deploys-need-a-person[\s\S]*production deploys need a person/);
    expect(await card.locator('.args').textContent()).toContain('"service": "billing"');
    expect(upstream.requests).toHaveLength(0);

    await card.locator('input.reason').fill('release window, ticket OPS-42');
    await card.getByRole('button', { name: 'Approve' }).click();

    const answer = await held;
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toEqual({ deployed: true, url: '/v1/deploys' });
    expect(upstream.requests).toHaveLength(1);
    await card.waitFor({ state: 'detached' });
    await expect.poll(() => page.locator('.toast').textContent()).toMatch(/Approved: POST \/v1\/deploys/);

    const rows = await gw.waitForAudit(1);
    expect(rows.at(-1)).toMatchObject({ agent: 'release-bot', status: 200, approver: 'alice', approval_reason: 'release window, ticket OPS-42' });
    expect(pageProblems(page)).toEqual([]);
    await page.context().close();
  });

  it('a denial needs a reason; the denied agent gets 403 and nothing is forwarded', async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['admin'], { subject: 'bob' }), 'approvals');
    const before = upstream.requests.length;
    const held = deploy('payments');
    const card = page.locator('.approval', { hasText: 'payments' });
    await card.waitFor({ timeout: 10_000 });
    await card.getByRole('button', { name: 'Deny' }).click();
    await expect.poll(() => page.locator('.toast').textContent()).toMatch(/needs a reason/);
    await card.locator('input.reason').fill('not during the freeze');
    await card.getByRole('button', { name: 'Deny' }).click();
    const answer = await held;
    expect(answer.status).toBe(403);
    expect(answer.body).toContain('not during the freeze');
    expect(upstream.requests.length).toBe(before);
    await card.waitFor({ state: 'detached' });
    await page.context().close();
  });

  it('an auditor sees the queue without approve or deny buttons', async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['auditor']), 'approvals');
    const held = deploy('search');
    const card = page.locator('.approval', { hasText: 'search' });
    await card.waitFor({ timeout: 10_000 });
    expect(await card.getByRole('button').count()).toBe(0);
    await expect.poll(() => page.locator('.notice').textContent()).toMatch(/not approve or deny/);
    // Resolve it through the API so the agent's request does not wait for the timeout.
    const id = await card.getAttribute('data-id');
    const res = await request(`${gw.adminUrl}/api/approvals/${id}/deny`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await gw.adminToken(['admin'])}`, 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'cleanup' }),
    });
    await res.body.text();
    expect((await held).status).toBe(403);
    await page.context().close();
  });
});
