import { readFileSync } from 'node:fs';
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

  const call = async (agent: string, tenant: string, path: string, user?: string): Promise<void> => {
    const token = await gw.token({ agent, tenant, ...(user !== undefined && { user }) });
    const res = await request(`${gw.url}/api${path}`, { headers: { authorization: `Bearer ${token}` } });
    await res.body.text();
  };
  /** Agent names in the results table, top to bottom. */
  const agentsShown = async (): Promise<string[]> => page.locator('#audit-results tbody tr td:nth-child(2)').allTextContents();
  const filter = async (values: Record<string, string>): Promise<void> => {
    await page.getByRole('button', { name: 'Reset' }).click();
    for (const [name, value] of Object.entries(values)) {
      if (name === 'decision') await page.locator('#audit-filters select[name="decision"]').selectOption(value);
      else await page.locator(`#audit-filters input[name="${name}"]`).fill(value);
    }
    await page.getByRole('button', { name: 'Apply' }).click();
  };

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
    // The oldest rows: enough for more than one page (50 rows a page).
    await Promise.all(Array.from({ length: 55 }, (_v, i) => call('bulk', 'initech', `/v1/bulk/${i}`)));
    await gw.waitForAudit(55);
    for (let i = 0; i < 3; i++) await call('alpha', 'acme', `/v1/items/${i}`, i === 0 ? 'uma' : undefined);
    for (let i = 0; i < 2; i++) await call('beta', 'acme', `/admin/users/${i}`);
    await call('gamma', 'globex', '/v1/items');
    await gw.waitForAudit(61);
    browser = await launchBrowser();
    page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['auditor'], { subject: 'carol' }), 'audit');
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await upstream?.close();
  });

  it('lists every row newest first, and a filter shows exactly the matching rows', async () => {
    await expect.poll(async () => (await agentsShown()).slice(0, 7)).toEqual(['gamma', 'beta', 'beta', 'alpha', 'alpha', 'alpha', 'bulk']);
    await filter({ agent: 'beta' });
    await expect.poll(agentsShown).toEqual(['beta', 'beta']);
    expect(await page.locator('#audit-results tbody tr td:nth-child(8)').allTextContents()).toEqual(['deny', 'deny']);

    await page.getByRole('button', { name: 'Reset' }).click();
    await page.locator('#audit-filters select[name="decision"]').selectOption('allow');
    await page.locator('#audit-filters input[name="tenant"]').fill('acme');
    await page.getByRole('button', { name: 'Apply' }).click();
    await expect.poll(agentsShown).toEqual(['alpha', 'alpha', 'alpha']);
  });

  it('filters by user, status, rule, decision and time range', async () => {
    await filter({ user: 'uma' });
    await expect.poll(agentsShown).toEqual(['alpha']);
    await filter({ status: '403' });
    await expect.poll(agentsShown).toEqual(['beta', 'beta']);
    await filter({ rule: 'reads', tenant: 'globex' });
    await expect.poll(agentsShown).toEqual(['gamma']);
    await filter({ decision: 'none' });
    await expect.poll(() => page.locator('#audit-results').textContent()).toMatch(/No audit rows match/);
    await filter({ until: '2020-01-01T00:00' });
    await expect.poll(() => page.locator('#audit-results').textContent()).toMatch(/No audit rows match/);
    await filter({ agent: 'gamma' });
    await page.getByRole('button', { name: '15 min' }).click();
    await expect.poll(agentsShown).toEqual(['gamma']);
  });

  it('pages through older rows and back', async () => {
    await filter({ agent: 'bulk' });
    // The Reset inside filter() loads an unfiltered first page of 50 too: wait for the bulk agent's.
    await expect.poll(async () => (await agentsShown()).filter((a) => a === 'bulk').length).toBe(50);
    const firstPage = await page.locator('#audit-results tbody tr').first().getAttribute('data-request-id');
    await page.getByRole('button', { name: 'Older →' }).click();
    await expect.poll(async () => (await agentsShown()).length).toBe(5);
    expect(await page.getByRole('button', { name: 'Older →' }).isDisabled()).toBe(true);
    expect(await page.locator('.view-head').textContent()).toMatch(/Rows 51–55/);
    await page.getByRole('button', { name: '← Newer' }).click();
    await expect.poll(() => page.locator('#audit-results tbody tr').first().getAttribute('data-request-id')).toBe(firstPage);
  });

  it('exports what the filters select, through the export endpoint with the token', async () => {
    await filter({ agent: 'beta' });
    await expect.poll(agentsShown).toEqual(['beta', 'beta']);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'NDJSON' }).click()]);
    expect(download.suggestedFilename()).toMatch(/^valet-audit-.*\.ndjson$/);
    const lines = readFileSync(await download.path(), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { agent: string; decision: string });
    expect(lines.map((l) => [l.agent, l.decision])).toEqual([
      ['beta', 'deny'],
      ['beta', 'deny'],
    ]);
  });

  it('opens a request: every recorded field, and the decision explained rule by rule, honestly', async () => {
    await filter({ agent: 'beta' });
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
    expect(await page.locator('.legend li[data-series="allow"] strong').textContent()).toBe('59');
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
