import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';

/** Debian's Chromium (`apt-get install chromium`, done by .ci/run); VALET_CHROMIUM overrides. */
export const CHROMIUM = process.env['VALET_CHROMIUM'] ?? '/usr/bin/chromium';

/**
 * Whether the browser tests can run. Without Chromium they are skipped with a note, unless
 * VALET_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails the run instead.
 */
export const browserAvailable = existsSync(CHROMIUM);
if (!browserAvailable && process.env['VALET_REQUIRE_BROWSER'] === '1') {
  throw new Error(`Chromium not found at ${CHROMIUM}; install it (apt-get install chromium) or set VALET_CHROMIUM`);
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Bundles the dashboard from its current sources (dist/dashboard; about half a second), so tests never see a stale build. */
export function buildDashboard(): void {
  execFileSync(process.execPath, ['scripts/build-dashboard.mjs'], { cwd: ROOT, stdio: 'pipe' });
}

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/**
 * A fresh page (its own session storage) signed in through the `#token=` link. Fails the test on
 * any console error or CSP violation, and on any request to another origin than the admin listener.
 */
export async function openDashboard(browser: Browser, adminUrl: string, token: string, view = ''): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(e.message));
  page.on('request', (r) => {
    if (!r.url().startsWith(`${adminUrl}/`) && !r.url().startsWith('blob:')) problems.push(`request to another origin: ${r.url()}`);
  });
  (page as Page & { problems?: string[] }).problems = problems;
  await page.goto(`${adminUrl}/#token=${encodeURIComponent(token)}`);
  await page.locator('#whoami').waitFor();
  if (view !== '') await page.goto(`${adminUrl}/#/${view}`);
  return page;
}

/** Console errors, CSP violations and foreign requests the page has seen. */
export function pageProblems(page: Page): string[] {
  return (page as Page & { problems?: string[] }).problems ?? [];
}
