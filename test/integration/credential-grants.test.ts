/**
 * Credentials Valet obtains and keeps (issue: refresh tokens that rotate, JWT bearer for service
 * accounts, GitHub App installation tokens, token exchange): a fake authorization server and a fake
 * API on 127.0.0.1, real sockets, the gateway restarted on the same data where persistence matters.
 */
import { generateKeyPairSync } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { decodeJwt } from 'jose';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectErrorBody, requestIdOf, sleep } from '../helpers/http.js';
import { startFakeAuthServer, type FakeAuthServer } from '../helpers/oauth.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const CLIENT_ID = 'valet-client';
const CLIENT_SECRET = 'cs-grants-client-secret-93af';
const SA_EMAIL = 'agents@project.iam.gserviceaccount.com';
const APP_ID = '424242';

const rsa = (): { publicKey: string; privateKey: string } =>
  generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });

describe('obtained credentials', () => {
  const sa = rsa();
  const clientKey = generateKeyPairSync('ec', { namedCurve: 'P-256', publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  // GitHub hands out PKCS#1 ("BEGIN RSA PRIVATE KEY") app keys.
  const app = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs1', format: 'pem' } });
  let auth: FakeAuthServer;
  let api: FakeUpstream;
  let hooks: FakeUpstream;
  const gateways: TestGateway[] = [];

  beforeAll(async () => {
    const { createPublicKey } = await import('node:crypto');
    auth = await startFakeAuthServer({
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      assertionKey: createPublicKey(sa.publicKey),
      serviceAccount: SA_EMAIL,
      appKey: createPublicKey(app.publicKey),
      appId: APP_ID,
      clientKey: createPublicKey(clientKey.publicKey),
    });
    api = await startFakeUpstream((req, res: ServerResponse) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, youSent: req.headers['authorization'] }));
    });
    hooks = await startFakeUpstream((_req, res) => {
      res.writeHead(204);
      res.end();
    });
  });
  afterEach(async () => {
    for (const g of gateways.splice(0)) await g.close();
    auth.lifetimeS = 3600;
    auth.failWith = undefined;
  });
  afterAll(async () => {
    await auth?.close();
    await api?.close();
    await hooks?.close();
  });

  const client = { token_url: '', client_id: CLIENT_ID, client_secret: 'CLIENT_SECRET' };
  const start = async (provider: Record<string, unknown>, o: { env?: Record<string, string>; root?: string; rules?: unknown[] } = {}): Promise<TestGateway> => {
    const gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: api.origin, credential: { scheme: 'bearer', provider } }],
      rules: o.rules ?? [{ id: 'ok', effect: 'allow' }],
      gateway: { approvals: { channels: [{ type: 'webhook', url: `${hooks.origin}/hooks`, secret_env: 'HOOK_SECRET', max_attempts: 1 }] } },
      env: { CLIENT_SECRET, HOOK_SECRET: 'hook-secret-0123456789abcdef', ...o.env },
      ...(o.root !== undefined && { root: o.root }),
    });
    gateways.push(gw);
    return gw;
  };
  const call = async (gw: TestGateway, who: { agent?: string; tenant?: string; user?: string } = {}): Promise<{ status: number; text: string; requestId: string; sent: string | undefined }> => {
    const token = await gw.token({ agent: who.agent ?? 'bot', tenant: who.tenant, user: who.user });
    const before = api.requests.length;
    const res = await request(`${gw.url}/api/v1/things`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.body.text();
    return { status: res.statusCode, text, requestId: requestIdOf(res.headers), sent: api.requests.length > before ? headerValues(api.requests.at(-1)!, 'authorization')[0] : undefined };
  };

  describe('oauth2_refresh_token', () => {
    it('rotates: each refresh token is used once, the new one replaces it, across a burst and a restart', async () => {
      auth.seedRefreshToken('rt-seed-1', 'acct1');
      auth.lifetimeS = 1;
      const provider = { kind: 'oauth2_refresh_token', ...client, token_url: `${auth.origin}/token`, refresh_token: 'CRM_REFRESH_TOKEN' };
      const env = { CRM_REFRESH_TOKEN: 'rt-seed-1' };
      let gw = await start(provider, { env });
      const first = await call(gw);
      expect(first.status).toBe(200);
      expect(first.sent).toMatch(/^Bearer at-acct1-/);
      expect(first.text).not.toContain(first.sent!.slice(7)); // scrubbed on the way back
      const before = auth.grants('refresh_token').length;
      await sleep(1_100); // expired: a burst of 100 makes one refresh
      const burst = await Promise.all(Array.from({ length: 100 }, () => call(gw)));
      expect(burst.every((r) => r.status === 200)).toBe(true);
      expect(auth.grants('refresh_token').length - before).toBe(1);
      expect(new Set(burst.map((r) => r.sent)).size).toBe(1);
      // The refresh tokens presented were each a different one: never one used twice.
      const presented = auth.grants('refresh_token').map((r) => new URLSearchParams(r.body.toString()).get('refresh_token'));
      expect(new Set(presented).size).toBe(presented.length);
      expect(auth.reused).toEqual([]);
      // A restart on the same data uses the stored (rotated) refresh token, not the seed again.
      auth.lifetimeS = 3600;
      const root = gw.root;
      await gw.close({ keep: true });
      gateways.splice(gateways.indexOf(gw), 1);
      await sleep(1_100);
      gw = await start(provider, { env, root });
      expect((await call(gw)).status).toBe(200);
      expect(auth.reused).toEqual([]);
      const stored = await gw.gateway.secretStore!.grants.list({ upstream: 'api' });
      expect(stored).toEqual([expect.objectContaining({ status: 'active', hasRefreshToken: true })]);
      // The store holds them sealed: neither token appears in the database file in the clear.
      const { readFileSync, existsSync } = await import('node:fs');
      const file = `${gw.dataDir}/secrets.db`;
      if (existsSync(file)) {
        const bytes = readFileSync(file).toString('latin1');
        for (const r of auth.grants('refresh_token')) expect(bytes).not.toContain(new URLSearchParams(r.body.toString()).get('refresh_token'));
        expect(bytes).not.toContain('at-acct1-');
      }
    }, 30_000);

    it('a revoked grant is marked broken: calls get 503 VALET_ERR_CREDENTIAL_BROKEN, admins are told, a new refresh token mends it', async () => {
      auth.seedRefreshToken('rt-seed-2', 'acct2');
      auth.lifetimeS = 1;
      const provider = { kind: 'oauth2_refresh_token', ...client, token_url: `${auth.origin}/token`, refresh_token: 'CRM_REFRESH_TOKEN' };
      const gw = await start(provider, { env: { CRM_REFRESH_TOKEN: 'rt-seed-2' } });
      expect((await call(gw)).status).toBe(200);
      auth.revoke('acct2');
      await sleep(1_100);
      const forwarded = api.requests.length;
      const broken = await call(gw);
      expect(broken.status).toBe(503);
      expectErrorBody(broken.text, 'VALET_ERR_CREDENTIAL_BROKEN', broken.requestId);
      expect(broken.text).toContain('invalid_grant');
      expect(api.requests.length).toBe(forwarded);
      // Refused from then on without asking the authorization server again.
      const asked = auth.grants('refresh_token').length;
      expect((await call(gw)).status).toBe(503);
      expect(auth.grants('refresh_token').length).toBe(asked);
      // Admins hear of it once, on the notification channels.
      await expect.poll(() => hooks.requests.filter((r) => r.body.toString().includes('credential.broken')).length).toBe(1);
      const notice = JSON.parse(hooks.requests.find((r) => r.body.toString().includes('credential.broken'))!.body.toString()) as Record<string, unknown>;
      expect(notice).toMatchObject({ type: 'credential.broken', credential: { upstream: 'api', tenant: null, user: null, problem: expect.stringContaining('invalid_grant') } });
      // `valet credentials list` shows it broken; never a token.
      const env = { VALET_CONFIG: gw.configDir, VALET_DATA: gw.dataDir, CLIENT_SECRET, HOOK_SECRET: 'x', CRM_REFRESH_TOKEN: 'rt-seed-2', ...gw.backendEnv };
      const list = await runCli(['credentials', 'list'], { env });
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout).toMatch(/api\s+-\s+-\s+broken \(the authorization server rejected the grant \(invalid_grant\)/);
      expect(list.stdout).not.toMatch(/rt-acct2|at-acct2/);
      // An admin puts a new refresh token in the secret: the grant starts over from it.
      auth.seedRefreshToken('rt-seed-2b', 'acct2b');
      await gw.gateway.secretStore!.set('CRM_REFRESH_TOKEN', null, 'rt-seed-2b');
      await expect.poll(async () => (await call(gw)).status).toBe(200);
    }, 30_000);
  });

  it('client_auth private_key_jwt: the client authenticates with a signed assertion, never a shared secret', async () => {
    const gw = await start(
      { kind: 'oauth2_client_credentials', token_url: `${auth.origin}/token`, client_id: CLIENT_ID, client_auth: 'private_key_jwt', client_private_key: 'CLIENT_KEY', client_key_id: 'k-2026' },
      { env: { CLIENT_KEY: clientKey.privateKey.replace(/\n/g, '\\n') } },
    );
    const first = await call(gw);
    expect(first.status).toBe(200);
    expect(first.sent).toMatch(/^Bearer at-client-/);
    const form = new URLSearchParams(auth.grants('client_credentials').at(-1)!.body.toString());
    expect(form.get('client_secret')).toBeNull();
    expect(auth.grants('client_credentials').at(-1)!.headers['authorization']).toBeUndefined();
    const { decodeProtectedHeader } = await import('jose');
    expect(decodeProtectedHeader(form.get('client_assertion')!)).toMatchObject({ alg: 'ES256', kid: 'k-2026' });
  });

  it('oauth2_jwt_bearer: a Google service-account file signs the assertion; the token is cached', async () => {
    const file = JSON.stringify({ type: 'service_account', client_email: SA_EMAIL, private_key: sa.privateKey, private_key_id: 'k1', token_uri: `${auth.origin}/token` });
    const gw = await start({ kind: 'oauth2_jwt_bearer', private_key: 'GOOGLE_SA', scopes: ['https://www.googleapis.com/auth/cloud-platform'] }, { env: { GOOGLE_SA: file } });
    const before = auth.grants('urn:ietf:params:oauth:grant-type:jwt-bearer').length;
    for (let i = 0; i < 5; i++) expect((await call(gw)).sent).toMatch(/^Bearer at-sa-/);
    const asked = auth.grants('urn:ietf:params:oauth:grant-type:jwt-bearer').slice(before);
    expect(asked).toHaveLength(1);
    const assertion = decodeJwt(new URLSearchParams(asked[0]!.body.toString()).get('assertion')!);
    expect(assertion).toMatchObject({ iss: SA_EMAIL, aud: `${auth.origin}/token`, scope: 'https://www.googleapis.com/auth/cloud-platform' });
    // A key that is not the service account's is refused by the server: 503, nothing forwarded.
    const other = rsa();
    const wrong = await start({ kind: 'oauth2_jwt_bearer', private_key: 'GOOGLE_SA', token_url: `${auth.origin}/token`, issuer: SA_EMAIL }, { env: { GOOGLE_SA: other.privateKey.replace(/\n/g, '\\n') } });
    const refused = await call(wrong);
    expect(refused.status).toBe(503);
    expectErrorBody(refused.text, 'VALET_ERR_TOKEN_ENDPOINT', refused.requestId);
    expect(refused.sent).toBeUndefined();
  });

  it('github_app: an installation token minted with the app JWT, per installation, cached and renewed before it expires', async () => {
    const provider = { kind: 'github_app', app_id: Number(APP_ID), private_key: 'GITHUB_APP_KEY', installation_id: 77, api_url: auth.origin };
    auth.lifetimeS = 2;
    const gw = await start(provider, { env: { GITHUB_APP_KEY: Buffer.from(app.privateKey).toString('base64') } });
    const minted = (): number => auth.requests.filter((r) => r.url === '/app/installations/77/access_tokens').length;
    const first = await call(gw);
    expect(first.sent).toMatch(/^Bearer ghs-77-/);
    expect((await call(gw)).sent).toBe(first.sent);
    expect(minted()).toBe(1);
    const jwt = decodeJwt(String(auth.requests.find((r) => r.url === '/app/installations/77/access_tokens')!.headers['authorization']).slice(7));
    expect(jwt.iss).toBe(APP_ID);
    await sleep(1_200); // in the second half of its life: renewed in the background
    expect((await call(gw)).sent).toBe(first.sent); // still valid: it serves while the renewal runs
    await expect.poll(async () => (await call(gw)).sent).not.toBe(first.sent);
    expect(minted()).toBe(2);
    // GitHub down and the token expired: fail closed.
    auth.failWith = 502;
    await sleep(2_100);
    const down = await call(gw);
    expect(down.status).toBe(503);
    expect(down.sent).toBeUndefined();
  }, 20_000);

  it('oauth2_token_exchange: each agent token is exchanged once for its own upstream token, never shared across agents', async () => {
    const gw = await start({ kind: 'oauth2_token_exchange', ...client, token_url: `${auth.origin}/token`, audience: 'https://api.example.com' });
    const exchanges = (): number => auth.grants('urn:ietf:params:oauth:grant-type:token-exchange').length;
    const before = exchanges();
    const alice = await gw.token({ agent: 'bot-a', user: 'alice' });
    const bob = await gw.token({ agent: 'bot-b', user: 'bob' });
    const sent = async (t: string): Promise<string | undefined> => {
      const res = await request(`${gw.url}/api/v1/things`, { headers: { authorization: `Bearer ${t}` } });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      return headerValues(api.requests.at(-1)!, 'authorization')[0];
    };
    const a = await Promise.all(Array.from({ length: 10 }, () => sent(alice)));
    const b = await sent(bob);
    expect(new Set(a).size).toBe(1);
    expect(decodeJwt(a[0]!.slice(7)).sub).toBe('alice');
    expect(decodeJwt(b!.slice(7)).sub).toBe('bob');
    expect(exchanges() - before).toBe(2);
    const form = new URLSearchParams(auth.grants('urn:ietf:params:oauth:grant-type:token-exchange').at(-1)!.body.toString());
    expect(form.get('audience')).toBe('https://api.example.com');
    expect(form.get('subject_token')).toBe(bob);
    // The agent token reached the authorization server only, never the API.
    for (const r of api.requests) expect(JSON.stringify(r.headers)).not.toContain(bob);
    // Both delegation chains are kept in the audit row: the agent token's and the issued token's.
    const rows = await gw.auditRows();
    expect(JSON.parse(rows.at(-1)!.act!)).toEqual({ token: ['bot-b'], exchanged: ['token-exchanger', 'bot-b'] });
    expect(JSON.stringify(rows)).not.toContain(b!.slice(7));
  });
});
