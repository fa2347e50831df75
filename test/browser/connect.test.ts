import { request } from 'undici';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { browserAvailable, buildDashboard, launchBrowser, openDashboard, pageProblems } from '../helpers/browser.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectErrorBody, requestIdOf, sleep } from '../helpers/http.js';
import { startFakeAuthServer, type FakeAuthServer } from '../helpers/oauth.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const CLIENT_ID = 'valet-crm-app';
const CLIENT_SECRET = 'cs-crm-oauth-app-secret-5d1e';

/**
 * Users' own accounts (credential provider `oauth2_user`): a person connects their account through
 * the authorization-code flow with PKCE that Valet runs, in a real browser, against a fake
 * provider with a consent page; agents acting for that person then call with that person's token,
 * and nobody else's calls ever carry it.
 */
describe.skipIf(!browserAvailable)('connect a user account (authorization code + PKCE)', () => {
  let auth: FakeAuthServer;
  let api: FakeUpstream;
  let gw: TestGateway;
  let browser: Browser;
  let consenting = 'alice-at-provider';

  beforeAll(async () => {
    buildDashboard();
    auth = await startFakeAuthServer({ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, consentingUser: () => consenting });
    api = await startFakeUpstream((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, url: req.url }));
    });
    gw = await startTestGateway({
      upstreams: [
        {
          name: 'crm',
          origin: api.origin,
          credential: {
            scheme: 'bearer',
            provider: { kind: 'oauth2_user', authorize_url: `${auth.origin}/authorize`, token_url: `${auth.origin}/token`, client_id: CLIENT_ID, client_secret: 'CRM_OAUTH_SECRET', scopes: ['contacts.read'] },
          },
        },
        { name: 'notes', origin: api.origin, credential: { scheme: 'bearer', secret: 'NOTES_KEY' } },
      ],
      rules: [
        { id: 'crm', upstream: 'crm', effect: 'allow' },
        { id: 'notes-once-crm-is-connected', upstream: 'notes', when: 'user.connected("crm")', effect: 'allow' },
      ],
      env: { CRM_OAUTH_SECRET: CLIENT_SECRET, NOTES_KEY: 'notes-static-key-0000' },
    });
    browser = await launchBrowser();
  });
  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    await auth?.close();
    await api?.close();
  });

  const call = async (upstream: string, user: string, tenant = 'acme'): Promise<{ status: number; text: string; requestId: string; sent: string | undefined }> => {
    const token = await gw.token({ agent: 'assistant', tenant, user });
    const before = api.requests.length;
    const res = await request(`${gw.url}/${upstream}/v1/contacts`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.body.text();
    return { status: res.statusCode, text, requestId: requestIdOf(res.headers), sent: api.requests.length > before ? headerValues(api.requests.at(-1)!, 'authorization')[0] : undefined };
  };

  /** Connects `user`'s account through the pages, as a person would; returns the callback page's URL. */
  const connect = async (user: string, tenant: string): Promise<{ callback: string; text: string }> => {
    const context = await browser.newContext();
    const page = await context.newPage();
    try {
      await page.goto(`${gw.adminUrl}/connect/crm`);
      await page.fill('input[name="token"]', await gw.adminToken([], { subject: user, tenant }));
      await page.click('button[type="submit"]');
      await page.waitForURL(`${auth.origin}/authorize?**`);
      await page.click('#approve');
      await page.waitForURL(`${gw.adminUrl}/connect/crm/callback?**`);
      return { callback: page.url(), text: (await page.textContent('body')) ?? '' };
    } finally {
      await context.close();
    }
  };

  it('an agent acting for a user who has not connected gets a coded error with the link; after connecting, that user\'s token is used', async () => {
    const before = await call('crm', 'alice');
    expect(before.status).toBe(403);
    const body = expectErrorBody(before.text, 'VALET_ERR_CREDENTIAL_NOT_CONNECTED', before.requestId) as unknown as { error: { connect_url: string } };
    expect(body.error.connect_url).toBe(`${gw.adminUrl}/connect/crm`);
    expect(before.sent).toBeUndefined();
    expect((await call('notes', 'alice')).status).toBe(403); // user.connected("crm") is false

    const done = await connect('alice', 'acme');
    expect(done.text).toContain('Your account is connected for alice (tenant acme)');
    const code = auth.grants('authorization_code').at(-1)!;
    const form = new URLSearchParams(code.body.toString());
    expect(form.get('code_verifier')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(form.get('redirect_uri')).toBe(`${gw.adminUrl}/connect/crm/callback`);

    const after = await call('crm', 'alice');
    expect(after.status).toBe(200);
    expect(after.sent).toMatch(/^Bearer at-alice-at-provider-/);
    await expect.poll(async () => (await call('notes', 'alice')).status).toBe(200);

    // Never another user's, never another tenant's.
    const bob = await call('crm', 'bob');
    expect(bob.status).toBe(403);
    expect(bob.sent).toBeUndefined();
    const elsewhere = await call('crm', 'alice', 'globex');
    expect(elsewhere.status).toBe(403);
    expect((await call('notes', 'bob')).status).toBe(403);

    // The callback works once: replayed, it is refused and changes nothing.
    const page = await (await browser.newContext()).newPage();
    const replay = await page.goto(done.callback);
    expect(replay?.status()).toBe(400);
    expect(await page.textContent('body')).toContain('VALET_ERR_CONNECT_INVALID');
    await page.context().close();

    // From a terminal: where to connect, and revoking alice's account (running gateways notice within 5 s).
    const env = { VALET_CONFIG: gw.configDir, VALET_DATA: gw.dataDir, VALET_ADMIN_PUBLIC_URL: gw.adminUrl, CRM_OAUTH_SECRET: CLIENT_SECRET, NOTES_KEY: 'x', ...gw.backendEnv };
    const where = await runCli(['credentials', 'connect', 'crm'], { env });
    expect(where.stdout).toContain(`${gw.adminUrl}/connect/crm`);
    const listed = await runCli(['credentials', 'list', '--user', 'alice'], { env });
    expect(listed.stdout).toMatch(/crm\s+acme\s+alice\s+active/);
    expect(listed.stdout).not.toContain('at-alice');
    const revoked = await runCli(['credentials', 'revoke', 'crm', '--tenant', 'acme', '--user', 'alice'], { env });
    expect(revoked.stdout, revoked.stderr).toContain('revoked 1 grant of crm for tenant acme for user alice');
    await expect.poll(async () => (await call('crm', 'alice')).status, { timeout: 10_000 }).toBe(403);
  }, 60_000);

  it('a connection started by one person cannot be completed in another person\'s browser', async () => {
    // Mallory starts a connection for herself and sends Bob the provider's address.
    const start = await request(`${gw.adminUrl}/api/connections/crm`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await gw.adminToken([], { subject: 'mallory', tenant: 'acme' })}`, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(start.statusCode).toBe(200);
    expect(String(start.headers['set-cookie'])).toMatch(/^valet_connect=[A-Za-z0-9_-]+; Path=\/connect\/; Max-Age=600; HttpOnly; SameSite=Lax/);
    const { authorize_url } = (await start.body.json()) as { authorize_url: string };
    consenting = 'bob-at-provider';
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(authorize_url);
    await page.click('#approve');
    await page.waitForURL(`${gw.adminUrl}/connect/crm/callback?**`);
    expect(await page.textContent('body')).toContain('VALET_ERR_CONNECT_INVALID');
    await context.close();
    consenting = 'alice-at-provider';
    // Bob's account was not connected to Mallory.
    expect((await call('crm', 'mallory')).status).toBe(403);
  }, 30_000);

  it('the user\'s refresh token rotates; the user can disconnect; an admin can revoke', async () => {
    auth.lifetimeS = 1;
    await connect('carol', 'acme');
    const first = await call('crm', 'carol');
    expect(first.status).toBe(200);
    await sleep(1_100);
    const second = await call('crm', 'carol');
    expect(second.status).toBe(200);
    expect(second.sent).not.toBe(first.sent);
    expect(auth.reused).toEqual([]);
    auth.lifetimeS = 3600;
    // Listed for the admin: status and times, never a token.
    const list = await request(`${gw.adminUrl}/api/credentials?user=carol`, { headers: { authorization: `Bearer ${await gw.adminToken(['admin'])}` } });
    const listed = (await list.body.json()) as { grants: Record<string, unknown>[] };
    expect(listed.grants).toEqual([expect.objectContaining({ upstream: 'crm', tenant: 'acme', user: 'carol', status: 'active', has_refresh_token: true })]);
    expect(JSON.stringify(listed)).not.toMatch(/at-|rt-/);
    // The dashboard's Credentials view shows the upstream's provider and the held grant, with status.
    const dash = await openDashboard(browser, gw.adminUrl, await gw.adminToken(['admin']), 'credentials');
    await dash.locator('tr[data-grant="crm/acme/carol"][data-status="active"]').waitFor();
    expect(await dash.locator('tr[data-upstream="crm"]').textContent()).toContain("users' own accounts");
    expect(await dash.locator('#credential-grants').textContent()).not.toMatch(/at-|rt-/);
    expect(pageProblems(dash)).toEqual([]);
    await dash.context().close();
    // Carol disconnects herself.
    const mine = `Bearer ${await gw.adminToken([], { subject: 'carol', tenant: 'acme' })}`;
    const off = await request(`${gw.adminUrl}/api/connections/crm`, { method: 'DELETE', headers: { authorization: mine } });
    expect(await off.body.json()).toEqual({ upstream: 'crm', revoked: 1 });
    const gone = await call('crm', 'carol');
    expect(gone.status).toBe(403);
    expect(gone.text).toContain('VALET_ERR_CREDENTIAL_NOT_CONNECTED');
    // A user with no admin role reads only their own connections; the admin list needs a role.
    const own = await request(`${gw.adminUrl}/api/connections`, { headers: { authorization: mine } });
    expect(await own.body.json()).toMatchObject({ user: 'carol', tenant: 'acme', available: ['crm'], connections: [] });
    const forbidden = await request(`${gw.adminUrl}/api/credentials`, { headers: { authorization: mine } });
    expect(forbidden.statusCode).toBe(403);
    await forbidden.body.dump();
  }, 30_000);
});
