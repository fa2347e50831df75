/**
 * A credential obtained from an OAuth token endpoint (client-credentials grant) instead of a
 * stored string: a fake authorization server and a fake API on 127.0.0.1, real sockets.
 */
import type { ServerResponse } from 'node:http';
import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectErrorBody, requestIdOf, sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const CLIENT_ID = 'valet-client';
const CLIENT_SECRET = 'cs-real-client-secret-7e6d5c4b';
/** A tenant's own client secret, kept in the store for that tenant alone. */
const GLOBEX_SECRET = 'cs-globex-own-secret-1a2b3c4d';

describe('credential.provider: oauth2_client_credentials', () => {
  let auth: FakeUpstream;
  let api: FakeUpstream;
  let gw: TestGateway;
  /** What the token endpoint does next. */
  let mode: { status: number; expiresIn: number; delayMs: number; error?: string } = { status: 200, expiresIn: 3600, delayMs: 0 };
  let issued = 0;
  const tokenRequests = (): RecordedRequest[] => auth.requests.filter((r) => r.url === '/oauth/token');

  beforeAll(async () => {
    auth = await startFakeUpstream((req, res: ServerResponse) => {
      const form = new URLSearchParams(req.body.toString());
      const basic = Buffer.from(String(req.headers['authorization'] ?? '').replace(/^Basic /, ''), 'base64').toString();
      const answer = (status: number, body: unknown): void => {
        setTimeout(() => {
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(JSON.stringify(body));
        }, mode.delayMs);
      };
      const client = basic === `${CLIENT_ID}:${CLIENT_SECRET}` ? '' : basic === `${CLIENT_ID}:${GLOBEX_SECRET}` ? 'globex-' : undefined;
      if (client === undefined || form.get('grant_type') !== 'client_credentials') return answer(401, { error: 'invalid_client' });
      if (mode.status !== 200) return answer(mode.status, { error: mode.error ?? 'temporarily_unavailable', error_description: `details mentioning ${CLIENT_SECRET}` });
      issued++;
      answer(200, { access_token: `at-${client}${issued}-${form.get('scope')?.replace(' ', '+')}`, token_type: 'Bearer', expires_in: mode.expiresIn });
    });
    api = await startFakeUpstream((req, res) => {
      // An API that echoes the token it received (scrubbed on the way back).
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, youSent: req.headers['authorization'] }));
    });
    // One upstream per test that needs a token of its own: tokens are per upstream, tenant and client secret.
    const provider = { kind: 'oauth2_client_credentials', token_url: `${auth.origin}/oauth/token`, client_id: CLIENT_ID, client_secret: 'CRM_CLIENT_SECRET', scopes: ['read', 'write'] };
    gw = await startTestGateway({
      upstreams: ['crm', 'crm-renew', 'crm-down'].map((name) => ({ name, origin: api.origin, credential: { scheme: 'bearer', provider } })),
      rules: [{ id: 'ok', effect: 'allow' }],
      env: { CRM_CLIENT_SECRET: CLIENT_SECRET },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await auth?.close();
    await api?.close();
  });
  beforeEach(() => {
    mode = { status: 200, expiresIn: 3600, delayMs: 0 };
  });

  const call = async (tenant = 'acme', upstream = 'crm'): Promise<{ status: number; text: string; requestId: string }> => {
    const token = await gw.token({ agent: 'crm-bot', tenant });
    const res = await request(`${gw.url}/${upstream}/v1/contacts`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.statusCode, text: await res.body.text(), requestId: requestIdOf(res.headers) };
  };

  it('a burst of 200 calls makes one token request; every call carries that token, scrubbed from what comes back', async () => {
    mode.delayMs = 100; // the burst arrives while the token request is in flight
    const results = await Promise.all(Array.from({ length: 200 }, () => call()));
    expect(results.filter((r) => r.status === 200)).toHaveLength(200);
    expect(tokenRequests()).toHaveLength(1);
    expect(new URLSearchParams(tokenRequests()[0]!.body.toString()).get('scope')).toBe('read write');
    const sent = api.requests.map((r) => headerValues(r, 'authorization'));
    expect(new Set(sent.map((v) => JSON.stringify(v)))).toEqual(new Set([JSON.stringify(['Bearer at-1-read+write'])]));
    for (const r of results) {
      expect(r.text).not.toContain('at-1-read+write');
      expect(JSON.parse(r.text)).toMatchObject({ youSent: 'Bearer [REDACTED]' });
    }
  });

  it('tenants on the shared client secret share its token; a tenant with its own client secret gets a token of its own', async () => {
    const before = tokenRequests().length;
    expect((await call('initech')).status).toBe(200);
    expect(tokenRequests().length - before).toBe(0);
    await gw.gateway.secretStore!.set('CRM_CLIENT_SECRET', 'globex', GLOBEX_SECRET);
    expect((await call('globex')).status).toBe(200);
    expect((await call('globex')).status).toBe(200);
    expect(tokenRequests().length - before).toBe(1);
    expect(headerValues(api.requests.at(-1)!, 'authorization')).toEqual([expect.stringMatching(/^Bearer at-globex-\d+-read\+write$/)]);
    expect((await call('acme')).status).toBe(200);
    expect(headerValues(api.requests.at(-1)!, 'authorization')).toEqual(['Bearer at-1-read+write']);
  });

  it('renews ahead of expiry while the current token keeps serving', async () => {
    mode.expiresIn = 2;
    expect((await call('initech', 'crm-renew')).status).toBe(200); // a 2 s token: renewed in its second half
    const first = headerValues(api.requests.at(-1)!, 'authorization')[0];
    const before = tokenRequests().length;
    await sleep(1_200);
    expect((await call('initech', 'crm-renew')).status).toBe(200);
    expect(headerValues(api.requests.at(-1)!, 'authorization')[0]).toBe(first); // still valid: used while renewing
    await sleep(200);
    expect((await call('initech', 'crm-renew')).status).toBe(200);
    expect(headerValues(api.requests.at(-1)!, 'authorization')[0]).not.toBe(first);
    expect(tokenRequests().length - before).toBe(1);
  });

  it('fails closed with 503 VALET_ERR_TOKEN_ENDPOINT when no valid token can be had, and recovers by itself', async () => {
    mode.expiresIn = 1;
    expect((await call('umbrella', 'crm-down')).status).toBe(200);
    await sleep(1_100);
    mode.status = 500;
    const forwarded = api.requests.length;
    const down = await call('umbrella', 'crm-down');
    expect(down.status).toBe(503);
    expectErrorBody(down.text, 'VALET_ERR_TOKEN_ENDPOINT', down.requestId);
    expect((JSON.parse(down.text) as { error: { message: string } }).error.message).toContain('the token endpoint answered 500: temporarily_unavailable');
    expect(down.text).not.toContain(CLIENT_SECRET);
    expect(api.requests.length).toBe(forwarded);
    mode.status = 401;
    mode.error = 'invalid_client';
    expect(JSON.parse((await call('umbrella', 'crm-down')).text).error.message).toContain('answered 401: invalid_client');
    // A server that echoes the client secret as its "error" gets no echo in the message.
    mode.error = CLIENT_SECRET;
    const echoed = await call('umbrella', 'crm-down');
    expect(echoed.text).toContain('answered 401');
    expect(echoed.text).not.toContain(CLIENT_SECRET);
    mode.status = 200;
    expect((await call('umbrella', 'crm-down')).status).toBe(200);
    const row = (await gw.auditRows()).find((r) => r.request_id === down.requestId);
    expect(row).toMatchObject({ status: 503, error_code: 'VALET_ERR_TOKEN_ENDPOINT', upstream: 'crm-down' });
    // Neither the client secret nor any access token in a log line or an audit row.
    const stored = JSON.stringify(await gw.auditRows()) + gw.logs.join('\n');
    expect(stored).not.toContain(CLIENT_SECRET);
    expect(stored).not.toMatch(/at-\d+-read/);
  });

  it('valet credentials list and test show the provider and obtain a token, never a value', async () => {
    const env = { VALET_CONFIG: gw.configDir, VALET_DATA: gw.dataDir, CRM_CLIENT_SECRET: CLIENT_SECRET, ...gw.backendEnv };
    const list = await runCli(['credentials', 'list', '--format', 'json'], { env });
    expect(list.code, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout) as { upstreams: unknown[]; grants: Record<string, unknown>[] };
    expect(listed.upstreams[0]).toEqual({ upstream: 'crm', kind: 'oauth2_client_credentials', inject: 'bearer', endpoint: `${auth.origin}/oauth/token`, secrets: [{ name: 'CRM_CLIENT_SECRET', available: true }] });
    // The tokens the gateway holds, shared through the store: status and times, never a value.
    expect(listed.grants).toContainEqual(expect.objectContaining({ upstream: 'crm', tenant: null, user: null, status: 'active', has_refresh_token: false, expires_at: expect.any(String) }));
    expect(list.stdout).not.toMatch(/at-\d/);
    const before = tokenRequests().length;
    const ok = await runCli(['credentials', 'test', 'crm'], { env });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^ok: crm obtained a token from http:\/\/127\.0\.0\.1:\d+\/oauth\/token, valid for 3\d{3} s\n$/);
    expect(tokenRequests().length - before).toBe(1);
    mode.status = 503;
    const down = await runCli(['credentials', 'test', 'crm'], { env });
    expect(down.code).not.toBe(0);
    expect(down.stderr).toContain('VALET_ERR_TOKEN_ENDPOINT');
    expect(down.stderr).toContain('answered 503');
    const missing = await runCli(['credentials', 'test', 'crm'], { env: { ...env, CRM_CLIENT_SECRET: '' } });
    expect(missing.stderr).toContain('no source has CRM_CLIENT_SECRET');
    for (const r of [list, ok, down, missing]) expect(r.stdout + r.stderr).not.toContain(CLIENT_SECRET);
  }, 30_000);

  it('is checked at start: bearer or header only, and not beside a secret', async () => {
    for (const [credential, message] of [
      [{ scheme: 'basic', provider: { kind: 'oauth2_client_credentials', token_url: 'http://127.0.0.1:9/t', client_id: 'c', client_secret: 'S' } }, 'injected with scheme "bearer" or "header"'],
      [{ scheme: 'bearer', secret: 'X', provider: { kind: 'oauth2_client_credentials', token_url: 'http://127.0.0.1:9/t', client_id: 'c', client_secret: 'S' } }, 'give "secret" or "provider", not both'],
      [{ scheme: 'bearer', provider: { kind: 'oauth2_client_credentials', token_url: 'ftp://x', client_id: 'c', client_secret: 'S' } }, 'token_url'],
    ] as const) {
      await expect(startTestGateway({ upstreams: [{ name: 'x', origin: api.origin, credential }], rules: [{ id: 'ok', effect: 'allow' }] }), message).rejects.toMatchObject({
        code: 'VALET_ERR_CONFIG',
        message: expect.stringContaining(message),
      });
    }
  });
});
