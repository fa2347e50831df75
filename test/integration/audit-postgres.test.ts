import { rmSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { openPgAuditLog } from '../../gateway/audit/postgres/log.js';
import { runCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { dropSchema, freshSchema, PG_URL } from '../helpers/postgres.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const schema = freshSchema('valet_fleet');
const gateways: TestGateway[] = [];
let upstream: FakeUpstream | undefined;

afterAll(async () => {
  for (const g of gateways) rmSync(g.root, { recursive: true, force: true });
  await upstream?.close();
  await dropSchema(schema);
});

describe('two gateways on one PostgreSQL audit log', () => {
  it('serve requests concurrently; every forwarded request has its row, and `valet audit verify` passes over both', async () => {
    upstream = await startFakeUpstream();
    const start = (instance: string): Promise<TestGateway> =>
      startTestGateway({
        upstreams: [{ name: 'api', origin: upstream!.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
        rules: [
          { id: 'reads', methods: ['GET'], effect: 'allow' },
          { id: 'no-deletes', methods: ['DELETE'], effect: 'deny', reason: 'never' },
        ],
        gateway: { audit: { backend: 'postgres', postgres: { url: PG_URL, schema, instance } } },
        env: { API_KEY: 'sk-fleet' },
      });
    gateways.push(await start('a'), await start('b'));
    const [a, b] = gateways as [TestGateway, TestGateway];
    const token = await a.token({ agent: 'fleet-agent', tenant: 'acme' });
    const calls = Array.from({ length: 40 }, async (_, i) => {
      const gw = i % 2 ? a : b;
      const r = await request(`${gw.url}/api/v1/items/${i}`, { method: i % 5 === 0 ? 'DELETE' : 'GET', headers: { authorization: `Bearer ${token}` } });
      await r.body.text();
      return { status: r.statusCode, id: r.headers['valet-request-id'] as string };
    });
    const results = await Promise.all(calls);
    expect(results.filter((r) => r.status === 200)).toHaveLength(32);
    expect(results.filter((r) => r.status === 403)).toHaveLength(8);
    expect(upstream.requests).toHaveLength(32);
    // Kept: the CLI below reads their configuration (removed in afterAll).
    await a.close({ keep: true });
    await b.close({ keep: true });

    const log = (await openPgAuditLog({ url: PG_URL, schema }))!;
    try {
      const rows = (await log.page({ limit: 100, order: 'asc' })).rows;
      expect(rows).toHaveLength(40);
      for (const r of results) expect(rows.find((row) => row.request_id === r.id)).toMatchObject({ status: r.status });
      // Both instances wrote, into one id sequence.
      const instances = await log.pool.query<{ instance: string | null; n: number }>('SELECT instance, count(*) AS n FROM audit_log WHERE instance IS NOT NULL GROUP BY instance ORDER BY instance');
      expect(instances.rows).toEqual([
        { instance: 'a', n: 16 },
        { instance: 'b', n: 16 },
      ]);
      expect(rows.map((r) => r.id)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    } finally {
      await log.close();
    }

    const env = { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, API_KEY: 'sk-fleet' };
    const verify = await runCli(['audit', 'verify', '--config', a.configDir, '--data', a.dataDir], { env });
    expect(verify.stderr).toBe('');
    expect(verify.code).toBe(0);
    expect(verify.stdout).toMatch(/^ok: 40 row\(s\), events 1–72,/);
    // The other instance's configuration names the same log.
    const json = await runCli(['audit', '--config', b.configDir, '--format', 'json', '--limit', '5'], { env });
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toHaveLength(5);

    // Each instance sealed the facts of a commit as one batch (gateway/audit/facts.ts, v2): every row
    // refers to its line; altering or deleting a batch is found without the key; retention deletes
    // a batch with the last row that refers to it.
    const facts = (await openPgAuditLog({ url: PG_URL, schema }))!;
    try {
      const refs = (await facts.page({ limit: 100, order: 'asc' })).rows.map((r) => r.facts);
      for (const f of refs) expect(f).toMatch(/^v2\.[1-9][0-9]*\.[0-9]+\.[A-Za-z0-9_-]{43}$/);
      const held = (await facts.pool.query<{ batches: number; rows: number }>('SELECT count(*)::int AS batches, sum(rows)::int AS rows FROM audit_facts')).rows[0];
      expect(held?.rows).toBe(40);
      expect(held?.batches).toBeLessThan(40);
      const first = (await facts.pool.query<{ id: number; sealed: string }>('SELECT id, sealed FROM audit_facts ORDER BY id LIMIT 1')).rows[0]!;
      await facts.pool.query("UPDATE audit_facts SET sealed = sealed || 'A' WHERE id = $1", [first.id]);
      expect((await facts.verify()).problems.map((p) => p.message)).toContainEqual(expect.stringMatching(new RegExp(`batch ${first.id} was altered$`)));
      await facts.pool.query('DELETE FROM audit_facts WHERE id = $1', [first.id]);
      expect((await facts.verify()).problems.map((p) => p.message)).toContainEqual(expect.stringMatching(new RegExp(`batch ${first.id} is missing \\(deleted\\)$`)));
      await facts.pool.query('INSERT INTO audit_facts (id, rows, sealed) VALUES ($1, $2, $3)', [first.id, (refs.filter((f) => f?.startsWith(`v2.${first.id}.`))).length, first.sealed]);
      expect((await facts.verify()).ok).toBe(true);
      await facts.prune({ defaultBefore: Date.now() + 60_000, tenantBefore: {} });
      expect((await facts.pool.query('SELECT id FROM audit_facts')).rows).toEqual([]);
      expect((await facts.verify()).ok).toBe(true);
    } finally {
      await facts.close();
    }
  });
});
