import OpenAI from 'openai';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { AuditRow } from '../../gateway/audit/port.js';
import { browserAvailable, buildDashboard, launchBrowser, openDashboard, pageProblems } from '../helpers/browser.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeLlm, type FakeLlm } from '../helpers/llm.js';

/** The Spend view: LLM cost per agent, team and model from the audit log, and each usage budget against its limit. */
describe.skipIf(!browserAvailable)('dashboard: spend', () => {
  let fake: FakeLlm;
  let gw: TestGateway;
  let browser: Browser;
  let rows: AuditRow[];

  beforeAll(async () => {
    buildDashboard();
    fake = await startFakeLlm({ usage: { input: 4000, cached: 0, cacheWrite: 0, output: 600, reasoning: 0 } });
    gw = await startTestGateway({
      upstreams: [{ name: 'openai', preset: 'openai', origin: fake.origin }],
      rules: [{ id: 'ok', effect: 'allow' }],
      env: { OPENAI_API_KEY: 'sk-real-openai-spend-view' },
      files: { 'budgets.yaml': stringify({ budgets: [{ id: 'daily-tokens', usage: 'tokens', key: 'agent', window: '1d', limit: 20_000 }] }) },
    });
    // An agent name that would be markup if the page ever wrote data as HTML.
    for (const [agent, tenant, model] of [['writer', 'acme', 'gpt-4o'], ['writer', 'acme', 'gpt-4o'], ['<b>x</b>', 'globex', 'gpt-4o-mini']] as const) {
      const client = new OpenAI({ baseURL: `${gw.url}/openai/v1`, apiKey: await gw.token({ agent, tenant, team: 'red' }), maxRetries: 0 });
      await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1000 });
    }
    rows = await gw.waitForAudit(3);
    browser = await launchBrowser();
  });

  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await fake?.close();
  });

  it("shows each agent's cost and tokens, spend over time, and the budget's counters against its limit", async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['auditor'], { subject: 'erin' }), 'spend');
    const writer = page.locator('#spend-table tr[data-key="writer"]');
    await writer.waitFor();
    const cost = rows.filter((r) => r.agent === 'writer').reduce((n, r) => n + (r.cost ?? 0), 0);
    expect(cost).toBeGreaterThan(0);
    expect(Number(((await writer.locator('td.cost').getAttribute('title')) ?? '').split(' ')[0])).toBeCloseTo(cost, 12);
    expect(await writer.locator('td.cost').textContent()).toMatch(/ USD$/);
    expect(await writer.locator('td').allTextContents()).toEqual(expect.arrayContaining(['writer', 'acme', '2', (2 * 4600).toLocaleString('en-US')]));
    // Data is text: the name arrives as written, no element made of it.
    expect(await page.locator('#spend-table tr[data-key="<b>x</b>"] td').first().textContent()).toBe('<b>x</b>');
    expect(await page.locator('#spend-table b').count()).toBe(0);

    // Two groups, two colours, in the legend and the chart.
    await expect.poll(() => page.locator('#spend-chart .legend li').count()).toBe(2);
    expect(await page.locator('#spend-chart svg rect.series-s0').count()).toBeGreaterThan(0);

    // Per model, then per team.
    await page.locator('button[data-choice="Model"]').click();
    await page.locator('#spend-table tr[data-key="gpt-4o-mini"]').waitFor();
    await page.locator('button[data-choice="Team"]').click();
    await expect.poll(() => page.locator('#spend-table tbody tr').evaluateAll((trs) => trs.map((tr) => `${tr.getAttribute('data-key')}/${tr.getAttribute('data-tenant')}`))).toEqual(['red/acme', 'red/globex']);

    const counter = page.locator('[data-budget="daily-tokens"] tr[data-counter="writer"]');
    await counter.waitFor();
    expect(await counter.locator('td.percent').textContent()).toBe('46 %');
    expect(await counter.locator('meter').getAttribute('value')).toBe('9200');
    expect(pageProblems(page)).toEqual([]);
  });

  it("a tenant admin's view holds its tenant's agents only", async () => {
    const page = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['auditor'], { subject: 'dana', tenant: 'globex' }), 'spend');
    await page.locator('#spend-table tr[data-key="<b>x</b>"]').waitFor();
    expect(await page.locator('#spend-table tbody tr').count()).toBe(1);
    await page.locator('[data-budget="daily-tokens"] tr[data-counter]').first().waitFor();
    expect(await page.locator('[data-budget="daily-tokens"] tr[data-counter]').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-counter')))).toEqual(['<b>x</b>']);
    expect(pageProblems(page)).toEqual([]);
  });
});
