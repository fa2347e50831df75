import { request } from 'undici';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { browserAvailable, buildDashboard, launchBrowser, openDashboard, pageProblems } from '../helpers/browser.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

/** The audit explorer, activity charts and policies view in a real browser. */
describe.skipIf(!browserAvailable)('dashboard: audit explorer, activity, policies', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let browser: Browser;
  let page: Page;

  const call = async (agent: string, tenant: string, path: string): Promise<void> => {
    const token = await gw.token({ agent, tenant });
    const res = await request(`${gw.url}/api${path}`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.text();
  };
  /** Agent names in the results table, top to bottom. */
  const agentsShown = async (): Promise<string[]> => page.locator('#audit-results tbody tr td:nth-child(2)').allTextContents();

  beforeAll(async () => {
    buildDashboard();
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'reads', upstream: 'api', methods: ['GET'], effect: 'allow' },
        { id: 'no-admin', upstream: 'api', paths: ['/admin/**'], effect: 'deny', reason: 'admin endpoints are off limits' },
      ],
      files: {
        'tests.yaml': `tests:
  - name: reads are allowed
    identity: { agent: a1 }
    request: { upstream: api, method: GET, path: /v1/items }
    expect: { effect: allow, rule: reads }
`,
      },
      env: { API_KEY: 'sk-audit-browser' },
    });
    for (let i = 0; i < 3; i++) await call('alpha', 'acme', `/v1/items/${i}`);
    for (let i = 0; i < 2; i++) await call('beta', 'acme', `/admin/users/${i}`);
    await call('gamma', 'globex', '/v1/items');
    await gw.waitForAudit(6);
    browser = await launchBrowser();
    page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['auditor'], { subject: 'carol' }), 'audit');
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await upstream?.close();
  });

  it('lists every row newest first, and a filter shows exactly the matching rows', async () => {
    await expect.poll(agentsShown).toEqual(['gamma', 'beta', 'beta', 'alpha', 'alpha', 'alpha']);
    await page.locator('#audit-filters input[name="agent"]').fill('beta');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(agentsShown).toEqual(['beta', 'beta']);
    expect(await page.locator('#audit-results tbody tr td:nth-child(8)').allTextContents()).toEqual(['deny', 'deny']);

    await page.getByRole('button', { name: 'Reset' }).click();
    await page.locator('#audit-filters select[name="decision"]').selectOption('allow');
    await page.locator('#audit-filters input[name="tenant"]').fill('acme');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(agentsShown).toEqual(['alpha', 'alpha', 'alpha']);
  });

  it('opens a request: every recorded field, and the decision explained rule by rule, honestly', async () => {
    await page.getByRole('button', { name: 'Reset' }).click();
    await page.locator('#audit-filters input[name="agent"]').fill('beta');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(agentsShown).toEqual(['beta', 'beta']);
    await page.locator('#audit-results tbody tr').first().click();
    const detail = page.locator('#audit-detail');
    await detail.locator('table.trace').waitFor();
    expect(await detail.locator('.facts').textContent()).toMatch(/request_id[\s\S]*agentbeta[\s\S]*path\/admin\/users\/1/);
    expect(await detail.locator('.recorded').textContent()).toMatch(/Recorded: deny by no-admin — admin endpoints are off limits/);
    expect(await detail.locator('.honest').textContent()).toMatch(/does not store: arguments/);
    expect(await detail.locator('tr[data-rule="no-admin"]').textContent()).toMatch(/matched/);
    expect(await detail.textContent()).toMatch(/agrees with the record/);
  });

  it('a link from elsewhere (agent name) opens the explorer filtered', async () => {
    await page.goto(`${gw.adminUrl}/#/activity`);
    const link = page.locator('#agent-list a', { hasText: 'gamma' });
    await link.waitFor();
    await link.click();
    await expect.poll(agentsShown).toEqual(['gamma']);
    expect(await page.locator('#audit-filters input[name="agent"]').inputValue()).toBe('gamma');
  });

  it('activity: requests by decision as an SVG chart, and the agents seen with their counts', async () => {
    await page.goto(`${gw.adminUrl}/#/activity`);
    await page.locator('#activity-chart svg.chart').waitFor();
    expect(await page.locator('.legend li[data-series="allow"] strong').textContent()).toBe('4');
    expect(await page.locator('.legend li[data-series="deny"] strong').textContent()).toBe('2');
    expect(await page.locator('#activity-chart rect.series-allow').count()).toBeGreaterThan(0);
    const beta = page.locator('#agent-list tr[data-agent="beta"] td');
    expect(await beta.allTextContents()).toEqual(['beta', 'acme', expect.stringMatching(/ago$/), '2', '0', '0', '2', '0', '0']);
  });

  it('policies: version, rules with where they are written, and the policy tests', async () => {
    await page.goto(`${gw.adminUrl}/#/policies`);
    await page.locator('#policy-rules tr[data-rule="no-admin"]').waitFor();
    expect(await page.locator('#policy-status').textContent()).toMatch(/sha256:[\s\S]*no refused reload/);
    expect(await page.locator('#policy-rules tr[data-rule="no-admin"]').textContent()).toMatch(/deny[\s\S]*\/admin\/\*\*[\s\S]*rules\.yaml:\d+/);
    await expect.poll(() => page.locator('#policy-tests').textContent()).toMatch(/1 passed, 0 failed[\s\S]*reads are allowed/);
    expect(pageProblems(page)).toEqual([]);
  });
});
