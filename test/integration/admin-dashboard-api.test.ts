import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

interface Json {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown> & { error?: { code: string; message: string } };
}

const TESTS_YAML = `tests:
  - name: reads are allowed
    identity: { agent: a1, tenant: acme }
    request: { upstream: api, method: GET, path: /v1/items }
    expect: { effect: allow, rule: reads }
  - name: admin paths are denied
    identity: { agent: a1 }
    request: { upstream: api, method: GET, path: /admin/users }
    expect: { effect: deny, rule: no-admin }
  - name: a deliberately wrong expectation
    identity: { agent: a1, tenant: globex }
    request: { upstream: api, method: GET, path: /admin/users }
    expect: { effect: allow }
`;

/** The admin routes behind the dashboard: agents seen, stats, policy rules and tests, explain. */
describe('admin API for the dashboard', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  const ids: Record<string, string> = {};

  const admin = async (path: string, token: string): Promise<Json> => {
    const res = await request(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
    return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Json['body'] };
  };
  const call = async (name: string, tenant: string | undefined, method: 'GET' | 'POST', path: string, body?: unknown): Promise<void> => {
    const token = await gw.token({ agent: `bot-${tenant ?? 'none'}`, ...(tenant !== undefined && { tenant }) });
    const res = await request(`${gw.url}/api${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? null : JSON.stringify(body),
    });
    await res.body.text();
    ids[name] = res.headers['valet-request-id'] as string;
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'reads', effect: 'allow', upstream: 'api', methods: ['GET'] },
        { id: 'no-admin', effect: 'deny', upstream: 'api', paths: ['/admin/**'], reason: 'admin endpoints are off limits' },
        { id: 'orders', effect: 'allow', upstream: 'api', methods: ['POST'], paths: ['/orders'] },
        { id: 'big-orders', effect: 'deny', upstream: 'api', methods: ['POST'], paths: ['/orders'], when: 'args.amount > 100', reason: 'orders above 100 need a person' },
        { id: 'readers-only', effect: 'deny', upstream: 'api', paths: ['/reports/**'], roles: ['intern'] },
        { id: 'globex-lockdown', effect: 'deny', upstream: 'api', paths: ['/exports/**'], scope: { tenant: 'globex' } },
      ],
      files: { 'tests.yaml': TESTS_YAML },
      env: { API_KEY: 'sk-dashboard-test' },
    });
    await call('acmeRead', 'acme', 'GET', '/v1/items');
    await call('acmeRead2', 'acme', 'GET', '/v1/items/2');
    await call('acmeAdmin', 'acme', 'GET', '/admin/users');
    await call('acmeSmallOrder', 'acme', 'POST', '/orders', { amount: 5 });
    await call('acmeBigOrder', 'acme', 'POST', '/orders', { amount: 500 });
    await call('globexRead', 'globex', 'GET', '/v1/items');
    const res = await request(`${gw.url}/api/v1/items`);
    await res.body.text();
    ids['anonymous'] = res.headers['valet-request-id'] as string;
    await gw.waitForAudit(7);
  });

  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('GET /api/agents: each agent once, with its tenant, last use and counts by decision', async () => {
    const r = await admin('/api/agents', await gw.adminToken(['auditor']));
    expect(r.status).toBe(200);
    const agents = r.body['agents'] as { agent: string; tenant: string; requests: number; decisions: Record<string, number>; last_seen: string }[];
    expect(agents.map((a) => a.agent).sort()).toEqual(['bot-acme', 'bot-globex']);
    const acme = agents.find((a) => a.agent === 'bot-acme');
    expect(acme).toMatchObject({ tenant: 'acme', requests: 5, decisions: { allow: 3, deny: 2, escalate: 0, none: 0 } });
    expect(Date.parse(acme?.last_seen ?? '')).toBeGreaterThan(Date.now() - 60_000);
  });

  it('GET /api/agents and /api/stats are limited to a tenant admin\'s tenant; asking for another is 403', async () => {
    const t = await gw.adminToken(['admin'], { tenant: 'globex' });
    const agents = await admin('/api/agents', t);
    expect((agents.body['agents'] as { agent: string }[]).map((a) => a.agent)).toEqual(['bot-globex']);
    const stats = await admin('/api/stats', t);
    expect(stats.body['totals']).toEqual({ allow: 1, deny: 0, escalate: 0, none: 0 });
    expect((await admin('/api/agents?tenant=acme', t)).status).toBe(403);
    expect((await admin('/api/stats?tenant=acme', t)).status).toBe(403);
  });

  it('GET /api/stats: requests per bucket by decision; refusals before the policy count as none', async () => {
    const until = Date.now() + 1_000;
    const since = until - 10 * 60_000;
    const r = await admin(`/api/stats?since_ms=${since}&until_ms=${until}&bucket_ms=60000`, await gw.adminToken(['auditor']));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ since_ms: since, until_ms: until, bucket_ms: 60_000, tenant: null });
    const buckets = r.body['buckets'] as { start_ms: number; allow: number; deny: number; escalate: number; none: number }[];
    expect(buckets).toHaveLength(10);
    expect(buckets.map((b) => b.start_ms)).toEqual(Array.from({ length: 10 }, (_v, i) => since + i * 60_000));
    const sum = (k: 'allow' | 'deny' | 'none'): number => buckets.reduce((n, b) => n + b[k], 0);
    expect({ allow: sum('allow'), deny: sum('deny'), none: sum('none') }).toEqual({ allow: 4, deny: 2, none: 1 });
    expect(r.body['totals']).toEqual({ allow: 4, deny: 2, escalate: 0, none: 1 });
    // Buckets outside the rows' time are empty.
    expect(buckets.slice(0, 8).every((b) => b.allow + b.deny + b.none === 0)).toBe(true);
  });

  it('GET /api/stats refuses bad ranges and too many buckets', async () => {
    const t = await gw.adminToken(['auditor']);
    expect((await admin('/api/stats?since_ms=10&until_ms=5', t)).status).toBe(400);
    expect((await admin('/api/stats?since_ms=0&until_ms=100000000&bucket_ms=1000', t)).body.error?.message).toMatch(/at most 1000/);
    expect((await admin('/api/stats?bucket_ms=10', t)).status).toBe(400);
    expect((await admin('/api/stats?since_ms=abc', t)).status).toBe(400);
  });

  it('agents and stats need audit.read', async () => {
    const t = await gw.adminToken(['approver']);
    expect((await admin('/api/agents', t)).status).toBe(403);
    expect((await admin('/api/stats', t)).status).toBe(403);
  });

  it('GET /api/policy/rules: every rule with its match and where it is written', async () => {
    const r = await admin('/api/policy/rules', await gw.adminToken(['approver']));
    expect(r.status).toBe(200);
    const rules = r.body['rules'] as Record<string, unknown>[];
    expect(rules.map((x) => x['id'])).toEqual(['reads', 'no-admin', 'orders', 'big-orders', 'readers-only', 'globex-lockdown']);
    expect(rules[3]).toMatchObject({
      id: 'big-orders',
      effect: 'deny',
      upstream: 'api',
      methods: ['POST'],
      paths: ['/orders'],
      when: 'args.amount > 100',
      reason: 'orders above 100 need a person',
      at: expect.stringMatching(/^rules\.yaml:\d+$/),
    });
    expect(r.body['version']).toMatch(/^sha256:/);
  });

  it('GET /api/policy/rules hides rules scoped to other tenants from a tenant admin', async () => {
    const r = await admin('/api/policy/rules', await gw.adminToken(['admin'], { tenant: 'acme' }));
    expect((r.body['rules'] as { id: string }[]).map((x) => x.id)).not.toContain('globex-lockdown');
    const g = await admin('/api/policy/rules', await gw.adminToken(['admin'], { tenant: 'globex' }));
    expect((g.body['rules'] as { id: string }[]).map((x) => x.id)).toContain('globex-lockdown');
  });

  it('GET /api/policy/tests runs the tests beside the policy; a tenant admin sees its own and untenanted ones', async () => {
    const r = await admin('/api/policy/tests', await gw.adminToken(['auditor']));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ passed: 2, failed: 1 });
    const results = r.body['results'] as { name: string; passed: boolean; actual: string; at: string }[];
    expect(results.find((x) => !x.passed)).toMatchObject({ name: 'a deliberately wrong expectation', actual: 'deny by no-admin', at: expect.stringMatching(/^tests\.yaml:\d+$/) });
    const acme = await admin('/api/policy/tests', await gw.adminToken(['admin'], { tenant: 'acme' }));
    expect((acme.body['results'] as { name: string }[]).map((x) => x.name)).toEqual(['reads are allowed', 'admin paths are denied']);
  });

  it('explain: a recorded deny replays rule by rule, agreeing with the record', async () => {
    const r = await admin(`/api/audit/${ids['acmeAdmin']}/explain`, await gw.adminToken(['auditor']));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({
      request_id: ids['acmeAdmin'],
      recorded: { decision: 'deny', rule: 'no-admin', status: 403 },
      same_version: true,
      not_replayable: null,
      replay: { decision: { effect: 'deny', rules: ['no-admin'] }, agrees: true },
    });
    const trace = (r.body['replay'] as { trace: { id: string; matched: boolean; why: string; needs: string[]; at: string }[] }).trace;
    expect(trace.find((t) => t.id === 'no-admin')).toMatchObject({ matched: true, why: 'matched', needs: [] });
    expect(trace.find((t) => t.id === 'reads')).toMatchObject({ matched: true, needs: [] });
    expect(trace.find((t) => t.id === 'orders')).toMatchObject({ matched: false, why: expect.stringContaining('method GET'), needs: [] });
    // A rule that failed on something recorded is certain even if it also names roles.
    expect(trace.find((t) => t.id === 'readers-only')).toMatchObject({ matched: false, needs: [] });
    expect(trace.find((t) => t.id === 'globex-lockdown')).toMatchObject({ matched: false, why: 'scope: tenant is not globex', needs: [] });
    expect(r.body['not_recorded']).toEqual(expect.arrayContaining([expect.stringMatching(/^arguments/)]));
  });

  it('explain: a condition on arguments is marked as needing them, not guessed', async () => {
    const r = await admin(`/api/audit/${ids['acmeSmallOrder']}/explain`, await gw.adminToken(['auditor']));
    const replay = r.body['replay'] as { agrees: boolean; trace: { id: string; why: string; needs: string[] }[] };
    expect(r.body['recorded']).toMatchObject({ decision: 'allow', rule: 'orders' });
    const big = replay.trace.find((t) => t.id === 'big-orders');
    expect(big?.needs).toEqual(['arguments']);
    expect(big?.why).toMatch(/condition/);
    // Without the arguments the condition fails closed, so the replay disagrees — and says why.
    expect(replay.agrees).toBe(false);
  });

  it('explain: a request refused before authentication has no rules to explain', async () => {
    const r = await admin(`/api/audit/${ids['anonymous']}/explain`, await gw.adminToken(['auditor']));
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ replay: null, recorded: { decision: null, status: 401 }, not_replayable: expect.stringMatching(/before its agent was known/) });
  });

  it("explain: another tenant's row is not found for a tenant admin; unknown ids are 404", async () => {
    const acme = await gw.adminToken(['admin'], { tenant: 'acme' });
    expect((await admin(`/api/audit/${ids['acmeRead']}/explain`, acme)).status).toBe(200);
    const other = await admin(`/api/audit/${ids['globexRead']}/explain`, acme);
    expect(other.status).toBe(404);
    expect(other.body.error?.code).toBe('VALET_ERR_ADMIN_NOT_FOUND');
    expect((await admin(`/api/audit/${ids['anonymous']}/explain`, acme)).status).toBe(404);
    expect((await admin('/api/audit/no-such-id/explain', await gw.adminToken(['auditor']))).status).toBe(404);
    expect((await admin(`/api/audit/${ids['acmeRead']}/explain`, await gw.adminToken(['approver']))).status).toBe(403);
  });

  it('serves the dashboard at / with a strict CSP, its assets under /assets/, nothing else', async () => {
    const page = await request(`${gw.adminUrl}/`);
    const html = await page.body.text();
    if (page.statusCode === 503) {
      // Not built in this checkout: the page says how to build it.
      expect(html).toMatch(/npm run build/);
      return;
    }
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['content-security-policy']).toMatch(/default-src 'self'/);
    expect(page.headers['x-frame-options']).toBe('DENY');
    expect(html).toContain('<script type="module" src="/assets/app.js"></script>');
    // No inline script or style, and nothing from another origin.
    expect(html).not.toMatch(/<script>|<style|style=|https?:\/\//);
    const js = await request(`${gw.adminUrl}/assets/app.js`);
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(await js.body.text()).not.toMatch(/https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    const css = await request(`${gw.adminUrl}/assets/app.css`);
    expect(css.headers['content-type']).toBe('text/css; charset=utf-8');
    expect(await css.body.text()).not.toMatch(/@import|url\(\s*['"]?https?:/);
    for (const path of ['/assets/nope.js', '/index.html', '/assets/../package.json']) {
      const r = await request(`${gw.adminUrl}${path}`);
      await r.body.text();
      expect(r.statusCode, path).toBe(404);
    }
    const post = await request(`${gw.adminUrl}/`, { method: 'POST' });
    await post.body.text();
    expect(post.statusCode).toBe(405);
  });
});
