import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, closedPort, expectErrorBody, expectNoStackTrace, header, requestIdOf } from '../helpers/http.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

// Characters that change under URL-encoding, so both raw and encoded copies are looked for.
const SECRET = 'sk-live_Upstream+Secret/42=';
const Q_SECRET = 'q-secret-value-0042';
const forms = (s: string): string[] => [s, encodeURIComponent(s), Buffer.from(s).toString('base64'), Buffer.from(s).toString('base64url')];

describe('upstream failures', () => {
  let slow: FakeUpstream;
  let stalls: FakeUpstream;
  let redirect: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  const locations = new Map<string, string>();

  beforeAll(async () => {
    const downPort = await closedPort();
    slow = await startFakeUpstream(() => {
      /* never answers */
    });
    stalls = await startFakeUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n'); // then silence: the body timeout must fire
    });
    locations.set('/query-leak', `http://evil.example/steal?key=${encodeURIComponent(SECRET)}&x=1`);
    locations.set('/raw-leak', `http://evil.example/steal?key=${SECRET}`);
    locations.set('/userinfo-leak', `http://svc:${encodeURIComponent(SECRET)}@evil.example/steal`);
    locations.set('/userinfo-raw', `http://${SECRET}@evil.example/steal`);
    locations.set('/relative-leak', `/next?token=${encodeURIComponent(SECRET)}&page=2`);
    locations.set('/q/relative', `/next?key=${Q_SECRET}&page=2`);
    locations.set('/q/absolute', `http://evil.example/next?page=2&key=${Q_SECRET}`);
    redirect = await startFakeUpstream((req, res) => {
      const path = req.url.split('?')[0] as string;
      res.writeHead(302, { location: locations.get(path) ?? '/', 'content-type': 'text/plain' });
      res.end('Found');
    });
    gw = await startTestGateway({
      upstreams: [
        { name: 'down', origin: `http://127.0.0.1:${downPort}`, credential: { scheme: 'bearer', secret: 'UP_KEY' } },
        { name: 'slow', origin: slow.origin, timeouts: { headers_ms: 300 }, credential: { scheme: 'bearer', secret: 'UP_KEY' } },
        { name: 'stalls', origin: stalls.origin, timeouts: { body_ms: 300 }, credential: { scheme: 'bearer', secret: 'UP_KEY' } },
        { name: 'redir', origin: redirect.origin, credential: { scheme: 'bearer', secret: 'UP_KEY' } },
        { name: 'redirq', origin: redirect.origin, credential: { scheme: 'query', param: 'key', secret: 'Q_KEY' } },
      ],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { UP_KEY: SECRET, Q_KEY: Q_SECRET },
    });
    token = await gw.token();
  });
  afterAll(async () => {
    await gw?.close();
    await slow?.close();
    await stalls?.close();
    await redirect?.close();
  });

  async function get(path: string) {
    const started = Date.now();
    const res = await request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text, ms: Date.now() - started };
  }

  function expectNoSecret(r: { headers: Record<string, string | string[] | undefined>; text: string }, secret = SECRET): void {
    const everything = JSON.stringify(r.headers) + '\n' + r.text;
    for (const f of forms(secret)) expect(everything).not.toContain(f);
    expect(everything).not.toContain(token);
  }

  it('an upstream that stalls mid-body: the agent keeps what arrived, the connection is cut, the row says timeout', async () => {
    const res = await request(`${gw.url}/stalls/events`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.statusCode).toBe(200);
    const id = requestIdOf(res.headers);
    let received = '';
    await expect(
      (async () => {
        for await (const chunk of res.body) received += String(chunk);
      })(),
    ).rejects.toThrow();
    expect(received).toBe('data: first\n\n');
    expect(await auditRowFor(gw, id)).toMatchObject({ status: 200, upstream_status: 200, error_code: 'VALET_ERR_UPSTREAM_TIMEOUT' });
  });

  it('an upstream that is down is 502 VALET_ERR_UPSTREAM_UNREACHABLE', async () => {
    const r = await get('/down/v1/x');
    expect(r.status).toBe(502);
    const id = requestIdOf(r.headers);
    expectErrorBody(r.text, 'VALET_ERR_UPSTREAM_UNREACHABLE', id);
    expectNoSecret(r);
    expect(await auditRowFor(gw, id)).toMatchObject({ status: 502, error_code: 'VALET_ERR_UPSTREAM_UNREACHABLE', decision: 'allow', upstream_status: null });
  });

  it('an upstream that never answers is 504 VALET_ERR_UPSTREAM_TIMEOUT after headers_ms', async () => {
    const before = slow.requests.length;
    const r = await get('/slow/v1/x');
    expect(r.status).toBe(504);
    expect(slow.requests.length).toBe(before + 1); // it was sent; the answer never came
    expect(r.ms).toBeGreaterThanOrEqual(250);
    expect(r.ms).toBeLessThan(5000);
    const id = requestIdOf(r.headers);
    expectErrorBody(r.text, 'VALET_ERR_UPSTREAM_TIMEOUT', id);
    expectNoSecret(r);
    expect(await auditRowFor(gw, id)).toMatchObject({ status: 504, error_code: 'VALET_ERR_UPSTREAM_TIMEOUT' });
  });

  it('a client that hangs up before the upstream answers is audited as a client close, not as an upstream failure', async () => {
    const before = slow.requests.length;
    const ac = new AbortController();
    const pending = request(`${gw.url}/slow/v1/hangup`, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal }).then(
      () => 'answered',
      (err: unknown) => (err as Error).name,
    );
    const deadline = Date.now() + 2000;
    while (slow.requests.length === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    ac.abort(); // well before headers_ms (300 ms) runs out
    expect(await pending).toBe('AbortError');
    let rows = (await gw.auditRows()).filter((r) => r.path === '/v1/hangup');
    while (rows.length === 0 && Date.now() < deadline + 3000) {
      await new Promise((r) => setTimeout(r, 20));
      rows = (await gw.auditRows()).filter((r) => r.path === '/v1/hangup');
    }
    expect(rows).toHaveLength(1);
    // The same code the pipeline records when the client goes away while the body streams.
    expect(rows[0]!.error_code).toBe('VALET_ERR_CLIENT_CLOSED');
  });

  describe('a redirect carrying the secret', () => {
    for (const path of ['/query-leak', '/raw-leak', '/userinfo-leak', '/userinfo-raw']) {
      it(`is passed back unfollowed and scrubbed (${path})`, async () => {
        const before = redirect.requests.length;
        const r = await get(`/redir${path}`);
        expect(r.status).toBe(302);
        expect(redirect.requests.length - before).toBe(1);
        const location = header(r.headers, 'location') as string;
        expect(location).toBeDefined();
        expect(new URL(location).host).toBe('evil.example'); // passed back, not followed, not rewritten
        expect(r.text).toBe('Found');
        expectNoSecret(r);
        expect(await auditRowFor(gw, requestIdOf(r.headers))).toMatchObject({ status: 302, upstream_status: 302 });
      });
    }

    it('relative Location stays root-relative, below the upstream\'s prefix, without the secret', async () => {
      const r = await get('/redir/relative-leak');
      expect(r.status).toBe(302);
      const location = header(r.headers, 'location') as string;
      expect(location.startsWith('/redir/next?')).toBe(true);
      expect(new URL(location, 'http://x').searchParams.get('page')).toBe('2');
      expectNoSecret(r);
    });

    it('the query-scheme credential parameter is removed from Location', async () => {
      for (const path of ['/q/relative', '/q/absolute']) {
        const before = redirect.requests.length;
        const r = await get(`/redirq${path}`);
        expect(r.status).toBe(302);
        expect(redirect.requests.length - before).toBe(1);
        // The upstream did get the credential...
        expect(new URL(redirect.requests.at(-1)!.url, 'http://x').searchParams.get('key')).toBe(Q_SECRET);
        // ...the agent does not.
        const location = header(r.headers, 'location') as string;
        expect(new URL(location, 'http://x').searchParams.get('page')).toBe('2');
        expect(new URL(location, 'http://x').searchParams.has('key')).toBe(false);
        expectNoSecret(r, Q_SECRET);
      }
    });
  });

  it('no error body carries a stack trace or the secret', async () => {
    const bodies: string[] = [];
    for (const path of ['/down/x', '/slow/x', '/nosuch/x', '/redir/a//b', '/redir/%zz']) {
      const r = await get(path);
      expect(r.status).toBeGreaterThanOrEqual(400);
      bodies.push(r.text);
      expectNoStackTrace(r.text);
      expectNoSecret(r);
    }
    const missing = await request(`${gw.url}/redir/x`);
    const text = await missing.body.text();
    expect(missing.statusCode).toBe(401);
    expectNoStackTrace(text);
    expect(bodies).toHaveLength(5);
  });
});
