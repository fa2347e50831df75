import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ANCHOR_FILE, readAnchors } from '../../gateway/audit/anchor.js';
import { openAuditBackend, postgresSettings } from '../../gateway/audit/backend.js';
import { DEFAULT_AUDIT } from '../../gateway/config/types.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

interface Page {
  rows: Record<string, unknown>[];
  next_cursor: string | null;
}

describe('audit admin API: filters, pages, tenant scope, export; anchors', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let auditor: string;
  let acmeAdmin: string;

  const get = async (path: string, token: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> => {
    const r = await request(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${token}` } });
    return { status: r.statusCode, headers: r.headers, text: await r.body.text() };
  };
  const page = async (query: string, token = auditor): Promise<Page> => {
    const r = await get(`/api/audit?${query}`, token);
    expect(r.status, r.text).toBe(200);
    return JSON.parse(r.text) as Page;
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream((_req, res) => res.end('{}'));
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'reads', methods: ['GET'], effect: 'allow' },
        { id: 'no-deletes', methods: ['DELETE'], effect: 'deny', reason: 'never' },
      ],
      files: { 'tools.yaml': 'tools:\n  - { name: api.item, upstream: api, method: GET, path: "/v1/items/{id}", audit_args: [id, note] }\n' },
      env: { API_KEY: 'sk-audit-api' },
    });
    const call = async (token: string | undefined, method: 'GET' | 'DELETE', path: string): Promise<void> => {
      const r = await request(`${gw.url}/api${path}`, { method, headers: token ? { authorization: `Bearer ${token}` } : {} });
      await r.body.text();
    };
    const alice = await gw.token({ agent: 'a1', tenant: 'acme', user: 'alice' });
    const g1 = await gw.token({ agent: 'g1', tenant: 'globex' });
    for (let i = 0; i < 3; i++) await call(alice, 'GET', `/v1/items/${i}`);
    await call(g1, 'GET', '/v1/list');
    await call(g1, 'GET', '/v1/list');
    await call(g1, 'DELETE', '/v1/items/9');
    await call(undefined, 'GET', '/v1/items/1');
    await gw.waitForAudit(7);
    auditor = await gw.adminToken(['auditor']);
    acmeAdmin = await gw.adminToken(['admin'], { tenant: 'acme' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('filters by tenant, agent, user, upstream, tool, decision, rule, status, request id and time', async () => {
    const n = async (q: string): Promise<number> => (await page(q)).rows.length;
    expect(await n('')).toBe(7);
    expect(await n('tenant=globex')).toBe(3);
    expect(await n('agent=a1')).toBe(3);
    expect(await n('user=alice')).toBe(3);
    expect(await n('upstream=api')).toBe(7);
    expect(await n('tool=api.item')).toBe(3); // GETs on /v1/items/{id} that got as far as the policy
    expect(await n('decision=deny&rule=no-deletes')).toBe(1);
    expect(await n('decision=none&status=401')).toBe(1);
    const one = (await page('limit=1')).rows[0]!;
    expect(await n(`request_id=${one['request_id'] as string}`)).toBe(1);
    expect(await n(`since_ms=${Date.now() + 60_000}`)).toBe(0);
    expect(await n(`until=${encodeURIComponent(new Date(Date.now() + 60_000).toISOString())}&since_ms=0`)).toBe(7);
    expect((await get('/api/audit?decision=maybe', auditor)).status).toBe(400);
    expect((await get('/api/audit?since_ms=soon', auditor)).status).toBe(400);
  });

  it("keeps the arguments a tool's audit_args name, and nothing else of the request", async () => {
    const rows = (await page('tool=api.item')).rows;
    expect(rows.map((r) => r['args'])).toEqual(['{"id":"2"}', '{"id":"1"}', '{"id":"0"}']);
    expect((await page('tool=api.item&limit=1')).rows[0]).not.toHaveProperty('body');
    const other = (await page('tenant=globex')).rows;
    expect(other.every((r) => r['args'] === null)).toBe(true);
  });

  it('pages with a keyset cursor, newest first, each row once', async () => {
    const ids: number[] = [];
    let cursor: string | null = null;
    do {
      const p: Page = await page(`limit=3${cursor ? `&cursor=${cursor}` : ''}`);
      ids.push(...p.rows.map((r) => r['id'] as number));
      cursor = p.next_cursor;
    } while (cursor !== null);
    expect(ids).toEqual([7, 6, 5, 4, 3, 2, 1]);
    expect((await page('limit=3')).rows[0]).not.toHaveProperty('chain_seq');
  });

  it("a tenant admin sees only its tenant's rows, in queries and exports", async () => {
    const own = await page('', acmeAdmin);
    expect(own.rows.map((r) => r['tenant'])).toEqual(['acme', 'acme', 'acme']);
    expect((await get('/api/audit?tenant=globex', acmeAdmin)).status).toBe(403);
    const exported = await get('/api/audit/export?format=ndjson', acmeAdmin);
    expect(exported.status).toBe(200);
    const lines = exported.text.trimEnd().split('\n').map((l) => JSON.parse(l) as { tenant: string });
    expect(lines.map((l) => l.tenant)).toEqual(['acme', 'acme', 'acme']);
    expect((await get('/api/audit/export?format=csv&tenant=globex', acmeAdmin)).status).toBe(403);
  });

  it('exports stream as an attachment in every format; CSV parses back', async () => {
    const csv = await get('/api/audit/export?format=csv&decision=allow', auditor);
    expect(csv.status).toBe(200);
    expect(csv.headers['content-type']).toBe('text/csv; charset=utf-8; header=present');
    expect(csv.headers['content-disposition']).toMatch(/^attachment; filename="valet-audit-[\dTZ-]+\.csv"$/);
    const rows = parse(csv.text, { columns: true }) as Record<string, string>[];
    expect(rows).toHaveLength(5);
    expect(rows.map((r) => Number(r['id']))).toEqual([1, 2, 3, 4, 5]); // oldest first
    expect(rows[0]).toMatchObject({ agent: 'a1', tenant: 'acme', user: 'alice', tool: 'api.item', status: '200', decision: 'allow' });
    const json = JSON.parse((await get('/api/audit/export?format=json', auditor)).text) as unknown[];
    expect(json).toHaveLength(7);
    const cef = (await get('/api/audit/export?format=cef&tenant=globex', auditor)).text.trimEnd().split('\n');
    expect(cef).toHaveLength(3);
    for (const line of cef) expect(line).toMatch(/^CEF:0\|Valet\|Valet Gateway\|/);
    const syslog = (await get('/api/audit/export?format=syslog&status=401', auditor)).text.trimEnd().split('\n');
    expect(syslog).toEqual([expect.stringMatching(/^<109>1 \S+ \S+ valet - audit \[valet@32473 /)]);
    expect((await get('/api/audit/export?format=xml', auditor)).status).toBe(400);
    expect((await get('/api/audit/export?format=csv', await gw.adminToken(['approver']))).status).toBe(403);
  });

  it('anchors the chain head at shutdown; the chain verifies against it', async () => {
    await gw.close({ keep: true });
    const file = join(gw.dataDir, ANCHOR_FILE);
    expect(existsSync(file)).toBe(true);
    const { anchors, problems } = readAnchors(file, undefined);
    expect(problems).toEqual([]);
    // Through the port, on whichever backend the gateway wrote to.
    const log = await openAuditBackend({ dataDir: gw.dataDir, readonly: true, postgres: postgresSettings(DEFAULT_AUDIT, gw.backendEnv) });
    try {
      const result = await log!.verify({ anchors });
      expect(anchors.at(-1)!.seq).toBe(result.head.seq);
      expect(result).toMatchObject({ ok: true, rows: 7, anchors: { checked: anchors.length } });
    } finally {
      await log?.close();
    }
    expect(readFileSync(file, 'utf8')).toMatch(/^\{"seq":\d+,"hash":"[0-9a-f]{64}","at":\d+\}\n/);
  });
});
