import { request } from 'undici';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { browserAvailable, buildDashboard, launchBrowser, openDashboard, pageProblems } from '../helpers/browser.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const VALUES = { shared: 'sk-shared-3f9a1c', acme: 'sk-acme-77d2e0', globex: 'sk-globex-c41b9e', typed: 'sk-typed-in-browser-5e8d', rotated: 'sk-rotated-in-browser-a0b7' };

/** A tenant admin sees its own tenant only, in every view; roles decide which views exist at all. */
describe.skipIf(!browserAvailable)('dashboard: tenants and roles', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let browser: Browser;
  const held: Promise<number>[] = [];

  const adminApi = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> => {
    const res = await request(`${gw.adminUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${await gw.adminToken(['admin'])}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? null : JSON.stringify(body),
    });
    return res.body.json();
  };
  const call = async (tenant: string, path: string): Promise<number> => {
    const token = await gw.token({ agent: `bot-${tenant}`, tenant });
    const res = await request(`${gw.url}/api${path}`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.text();
    return res.statusCode;
  };

  beforeAll(async () => {
    buildDashboard();
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'reads', upstream: 'api', methods: ['GET'], effect: 'allow' },
        { id: 'refunds', upstream: 'api', paths: ['/v1/refunds/**'], effect: 'escalate', approval: { group: 'finance', mode: 'hold', timeout: '30s' } },
      ],
    });
    await adminApi('POST', '/api/secrets', { name: 'API_KEY', value: VALUES.shared });
    await adminApi('POST', '/api/secrets', { name: 'API_KEY', value: VALUES.acme, tenant: 'acme' });
    await adminApi('POST', '/api/secrets', { name: 'API_KEY', value: VALUES.globex, tenant: 'globex' });
    await adminApi('POST', '/api/secrets', { name: 'GLOBEX_ONLY', value: VALUES.globex, tenant: 'globex' });
    for (const tenant of ['acme', 'acme', 'globex']) expect(await call(tenant, '/v1/items')).toBe(200);
    await gw.waitForAudit(3);
    // One held request per tenant, answered at the end.
    held.push(call('acme', '/v1/refunds/r1'), call('globex', '/v1/refunds/r2'));
    browser = await launchBrowser();
  });

  afterAll(async () => {
    const pending = ((await adminApi('GET', '/api/approvals?status=pending')) as { approvals: { id: string }[] }).approvals;
    for (const a of pending) await adminApi('POST', `/api/approvals/${a.id}/deny`, { reason: 'test over' });
    await Promise.all(held);
    await browser?.close();
    await gw?.close();
    await upstream?.close();
  });

  it("a tenant admin sees only its tenant's audit rows, agents, approvals and secrets", async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['admin'], { subject: 'dana', tenant: 'acme' }), 'audit');
    expect(await page.locator('#whoami').textContent()).toMatch(/dana[\s\S]*tenant acme/);

    await expect.poll(() => page.locator('#audit-results tbody tr td:nth-child(3)').allTextContents()).toEqual(['acme', 'acme']);
    const tenantField = page.locator('#audit-filters input[name="tenant"]');
    expect(await tenantField.isDisabled()).toBe(true);
    expect(await tenantField.inputValue()).toBe('acme');

    await page.goto(`${gw.adminUrl}/#/activity`);
    await page.locator('#agent-list tr[data-agent]').first().waitFor();
    expect(await page.locator('#agent-list tr[data-agent]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-agent')))).toEqual(['bot-acme']);

    await page.goto(`${gw.adminUrl}/#/approvals`);
    await page.locator('.approval').first().waitFor({ timeout: 10_000 });
    expect(await page.locator('.approval').allTextContents()).toEqual([expect.stringContaining('/v1/refunds/r1')]);

    await page.goto(`${gw.adminUrl}/#/secrets`);
    await page.locator('#secret-list tbody tr[data-secret]').first().waitFor();
    expect(await page.locator('#secret-list tbody tr[data-secret]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-secret')))).toEqual(['acme/API_KEY']);
    expect(await page.content()).not.toMatch(/globex/);
    expect(pageProblems(page)).toEqual([]);
    await page.context().close();
  });

  it('secrets are set and rotated write-only: the value never comes back and the field is cleared', async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['admin'], { tenant: 'acme' }), 'secrets');
    const responses: string[] = [];
    page.on('response', (r) => void r.text().then((t) => responses.push(t), () => undefined));
    const form = page.locator('#secret-set');
    expect(await form.locator('input[name="tenant"]').isDisabled()).toBe(true);
    await form.locator('input[name="name"]').fill('ACME_EXTRA');
    await form.locator('input[name="value"]').fill(VALUES.typed);
    await form.getByRole('button', { name: 'Store' }).click();
    const row = page.locator('tr[data-secret="acme/ACME_EXTRA"]');
    await row.waitFor();
    expect(await form.locator('input[name="value"]').inputValue()).toBe('');
    expect(await row.locator('td:nth-child(3)').textContent()).toBe('1');

    await row.getByRole('button', { name: 'Rotate' }).click();
    const rotate = page.locator('tr.rotate-row:not([hidden]) form');
    await rotate.locator('input[name="value"]').fill(VALUES.rotated);
    await rotate.getByRole('button', { name: 'Rotate' }).click();
    await expect.poll(() => page.locator('tr[data-secret="acme/ACME_EXTRA"] td:nth-child(3)').textContent()).toBe('2');
    expect(responses.join('\n')).not.toMatch(new RegExp(Object.values(VALUES).join('|')));
    expect(await page.content()).not.toMatch(new RegExp(Object.values(VALUES).join('|')));
    const listed = (await adminApi('GET', '/api/secrets?tenant=acme')) as { secrets: { name: string; version: number }[] };
    expect(listed.secrets.find((s) => s.name === 'ACME_EXTRA')?.version).toBe(2);
    await page.context().close();
  });

  it('roles decide the views: an approver sees approvals and policies only', async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['approver']));
    expect(await page.locator('nav.tabs a').allTextContents()).toEqual(['Approvals', 'Policies']);
    // A view the roles do not grant falls back to the first one.
    await page.goto(`${gw.adminUrl}/#/secrets`);
    await expect.poll(() => page.locator('main').getAttribute('data-view')).toBe('approvals');
    await page.context().close();
  });

  it('signing in by pasting a token; a bad token is refused; signing out forgets it', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${gw.adminUrl}/`);
    await page.locator('#token').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.locator('.signin .error').textContent()).toMatch(/Signed out: .*admin token/);

    await page.locator('#token').fill(await gw.adminToken(['secrets_manager'], { subject: 'erin' }));
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.locator('#whoami').textContent()).toMatch(/erin[\s\S]*all tenants[\s\S]*secrets_manager/);
    expect(await page.locator('nav.tabs a').allTextContents()).toEqual(['Policies', 'Secrets', 'Credentials']);
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#token').waitFor();
    expect(await page.evaluate('sessionStorage.length')).toBe(0);
    await context.close();
  });
});
