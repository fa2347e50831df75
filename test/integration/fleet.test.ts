/**
 * The fleet acceptance test: three `valet start` processes (the real CLI) sharing one PostgreSQL
 * schema (audit log, approvals, secrets) and one Redis key prefix (rate limits, budgets), all
 * selected by the environment (`VALET_POSTGRES_URL`, `VALET_REDIS_URL`) over one configuration
 * directory. Limits hold exactly across instances, an approval or a secret decided on one instance
 * is honoured by another, the shared audit chain verifies, and an instance killed with SIGKILL
 * mid-load completes its own unfinished rows when it restarts.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@redis/client';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { mintAgentToken, type MintOptions } from '../../gateway/auth/mint.js';
import { loadConfig } from '../../gateway/config/load.js';
import { DEFAULT_LLM, type Config } from '../../gateway/config/types.js';
import { generateMasterKeyText } from '../../gateway/secrets/crypto.js';
import { listeningPort, runCli, spawnCli } from '../helpers/cli.js';
import { pgSchemas } from '../helpers/postgres.js';
import { startFakeAuthServer, type FakeAuthServer } from '../helpers/oauth.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';
import { startFakeLlm, type FakeLlm } from '../helpers/llm.js';
import { LlmMetering } from '../../gateway/llm/metering.js';
import { meteredRoute } from '../../gateway/llm/routes.js';

const REDIS = 'redis://127.0.0.1:6379';

/** A streamed chat call, and the budget that holds exactly six of its reservations. */
const CHAT = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 200, stream: true };
const CHAT_RESERVE = new LlmMetering(DEFAULT_LLM).plan(meteredRoute('openai', 'POST', '/v1/chat/completions')!, CHAT).reserve.tokens;
const LLM_LIMIT = 6 * CHAT_RESERVE + Math.floor(CHAT_RESERVE / 2);
const SIGNING_KEY = randomBytes(32).toString('base64url');

const LIMITS_YAML = `tools:
  - name: pay.transfer
    upstream: pay
    method: POST
    path: /v1/transfers
rate_limits:
  - id: limited-per-minute
    upstream: pay
    paths: [/v1/limited]
    limit: 5
    window: 1m
    key: agent
budgets:
  - id: llm-tokens
    upstream: llm
    usage: tokens
    limit: ${LLM_LIMIT}
    window: 1h
    key: tenant
  - id: transfer-budget
    tools: [pay.transfer]
    sum: args.amount
    limit: 500
    window: 1d
    key: agent
`;

const RULES = [
  { id: 'pay-allow', upstream: 'pay', effect: 'allow' },
  { id: 'transfers', tools: ['pay.transfer'], effect: 'allow' },
  { id: 'hold', upstream: 'pay', paths: ['/v1/hold/**'], effect: 'escalate', reason: 'needs a person', approval: { group: 'finance', mode: 'hold', timeout: '20s' } },
  { id: 'vault-allow', upstream: 'vault', effect: 'allow' },
  { id: 'crm-allow', upstream: 'crm', effect: 'allow' },
  { id: 'llm-allow', upstream: 'llm', effect: 'allow' },
];

interface Instance {
  readonly name: string;
  readonly env: Record<string, string>;
  child: ChildProcess;
  url: string;
  adminUrl: string;
}

interface Reply {
  status: number;
  text: string;
}

async function send(url: string, o: { token: string; method?: 'GET' | 'POST'; body?: unknown; headers?: Record<string, string> }): Promise<Reply> {
  const res = await request(url, {
    method: o.method ?? 'GET',
    headers: { authorization: `Bearer ${o.token}`, ...(o.body !== undefined && { 'content-type': 'application/json' }), ...o.headers },
    ...(o.body !== undefined && { body: JSON.stringify(o.body) }),
  });
  return { status: res.statusCode, text: await res.body.text() };
}

describe('a fleet of three valet processes on one PostgreSQL and one Redis', () => {
  const pgs = pgSchemas();
  const redis = createClient({ url: REDIS });
  const prefix = `valet-test:${randomUUID()}:`;
  const root = mkdtempSync(join(tmpdir(), 'valet-fleet-'));
  const configDir = join(root, 'config');
  let schema: string;
  let upstream: FakeUpstream;
  let auth: FakeAuthServer;
  let llm: FakeLlm;
  let config: Config;
  const fleet: Instance[] = [];
  const token = (o: Partial<MintOptions> = {}): Promise<string> =>
    mintAgentToken(config.issuers[0]!, new TextEncoder().encode(SIGNING_KEY), { agent: 'agent-1', ttlSeconds: 300, ...o });
  const adminToken = (roles: string[], subject: string, groups: string[] = []): Promise<string> =>
    token({ agent: subject, roles, groups, audience: config.gateway.admin.audience });
  const inst = (i: number): Instance => fleet[i] as Instance;

  /** Starts (or restarts) an instance's `valet start` child and waits for its ports. */
  async function start(inst: Instance): Promise<void> {
    let out = '';
    inst.child = spawnCli(['start'], { env: inst.env });
    inst.child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
    const port = await listeningPort(inst.child, (c) => (out += c));
    const admin = /"adminPort":(\d+)/.exec(out);
    if (!admin) throw new Error(`no admin port in: ${out}`);
    inst.url = `http://127.0.0.1:${port}`;
    inst.adminUrl = `http://127.0.0.1:${admin[1]}`;
  }

  async function stop(child: ChildProcess): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  beforeAll(async () => {
    await redis.connect();
    const fresh = await pgs.fresh();
    schema = fresh.schema;
    upstream = await startFakeUpstream((req, res) => {
      // `/v1/held/*` is never answered: certainly in flight when its instance is killed.
      if (req.url.startsWith('/v1/held/')) return;
      // Load requests take a moment, so some are in flight when an instance is killed.
      const delay = req.url.startsWith('/v1/load') ? 20 : 0;
      setTimeout(() => {
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ executed: true, url: req.url }));
      }, delay);
    });
    auth = await startFakeAuthServer({ clientId: 'fleet-client', clientSecret: 'cs-fleet-client-7d' });
    llm = await startFakeLlm();
    auth.seedRefreshToken('rt-fleet-seed', 'fleet');
    mkdirSync(configDir, { recursive: true });
    writeFileSync(
      join(configDir, 'gateway.yaml'),
      stringify({
        gateway: {
          listen: { host: '127.0.0.1', port: 0 },
          admin: { listen: { host: '127.0.0.1', port: 0 } },
          shutdown_grace_ms: 2000,
          // The audit log names its schema itself; approvals and secrets follow the URL's search_path.
          audit: { postgres: { schema } },
          counters: { redis: { prefix } },
          secrets: { sources: ['store', 'env'] },
        },
        issuers: [{ name: 'test', issuer: 'valet-fleet-test', audience: 'valet', algorithms: ['HS256'], secret: { env: 'VALET_TEST_SIGNING_KEY' } }],
      }),
    );
    writeFileSync(
      join(configDir, 'upstreams.yaml'),
      stringify({
        upstreams: [
          { name: 'pay', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'PAY_KEY' } },
          { name: 'vault', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'VAULT_TOKEN' } },
          { name: 'llm', preset: 'openai', origin: llm.origin },
          {
            name: 'crm',
            origin: upstream.origin,
            credential: { scheme: 'bearer', provider: { kind: 'oauth2_refresh_token', token_url: `${auth.origin}/token`, client_id: 'fleet-client', client_secret: 'CRM_CLIENT_SECRET', refresh_token: 'CRM_REFRESH_TOKEN' } },
          },
        ],
      }),
    );
    writeFileSync(join(configDir, 'rules.yaml'), stringify({ rules: RULES }));
    writeFileSync(join(configDir, 'limits.yaml'), LIMITS_YAML);
    const shared = {
      VALET_CONFIG: configDir,
      VALET_POSTGRES_URL: fresh.url,
      VALET_REDIS_URL: REDIS,
      VALET_MASTER_KEY: generateMasterKeyText(),
      VALET_APPROVAL_LINK_KEY: randomBytes(32).toString('base64url'),
      VALET_TEST_SIGNING_KEY: SIGNING_KEY,
      PAY_KEY: 'sk_fleet_pay_5e1f',
      OPENAI_API_KEY: 'sk-fleet-openai-3c4d',
      CRM_CLIENT_SECRET: 'cs-fleet-client-7d',
      CRM_REFRESH_TOKEN: 'rt-fleet-seed',
    };
    config = loadConfig(configDir);
    for (const name of ['a', 'b', 'c']) {
      const env = { ...shared, VALET_DATA: join(root, `data-${name}`), VALET_INSTANCE_ID: `fleet-${name}` };
      fleet.push({ name, env, child: undefined as unknown as ChildProcess, url: '', adminUrl: '' });
    }
    await Promise.all(fleet.map(start));
  }, 60_000);

  afterAll(async () => {
    await Promise.all(fleet.map((i) => (i.child ? stop(i.child) : undefined)));
    await upstream?.close();
    await auth?.close();
    await llm?.close();
    for await (const keys of redis.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) if (keys.length > 0) await redis.del(keys);
    redis.destroy();
    await pgs.dropAll();
    rmSync(root, { recursive: true, force: true });
  }, 20_000);

  it('keeps every kind of state in its own schema', async () => {
    const tables = (await pgs.query<{ table_name: string }>(schema, 'SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [schema])).rows.map((r) => r.table_name);
    expect(tables).toContain('audit_log');
    expect(tables.some((t) => t.includes('approval'))).toBe(true);
    expect(tables.some((t) => t.includes('secret'))).toBe(true);
  });

  it('an obtained credential is shared by the fleet: a burst over three instances makes one refresh, and a rotated refresh token is never used twice', async () => {
    auth.lifetimeS = 2;
    const t = await token({ agent: 'crm-agent', tenant: 'acme' });
    const burst = await Promise.all(Array.from({ length: 60 }, (_, i) => send(`${inst(i % 3).url}/crm/v1/contacts`, { token: t })));
    expect(burst.map((r) => r.status)).toEqual(Array(60).fill(201));
    expect(auth.grants('refresh_token')).toHaveLength(1);
    const sent = new Set(upstream.requests.filter((q) => q.url === '/v1/contacts').map((q) => headerValues(q, 'authorization')[0]));
    expect(sent.size).toBe(1);
    // Expired on every instance at once: still one refresh, with the refresh token the first one rotated to.
    await new Promise((r) => setTimeout(r, 2_100));
    const again = await Promise.all(Array.from({ length: 30 }, (_, i) => send(`${inst(i % 3).url}/crm/v1/contacts`, { token: t })));
    expect(again.map((r) => r.status)).toEqual(Array(30).fill(201));
    expect(auth.grants('refresh_token')).toHaveLength(2);
    expect(auth.reused).toEqual([]);
    auth.lifetimeS = 3600;
  });

  it('a burst of 30 over three instances against 5 a minute lets exactly 5 through; a budget holds exactly', async () => {
    const t = await token({ agent: 'burst-agent', tenant: 'acme' });
    const sent = await Promise.all(Array.from({ length: 30 }, (_, i) => send(`${inst(i % 3).url}/pay/v1/limited`, { token: t })));
    expect(sent.filter((r) => r.status === 201)).toHaveLength(5);
    const refused = sent.filter((r) => r.status !== 201);
    expect(refused.map((r) => r.status)).toEqual(Array(25).fill(429));
    for (const r of refused) expect(r.text).toContain('VALET_ERR_RATE_LIMITED');
    expect(upstream.requests.filter((q) => q.url === '/v1/limited')).toHaveLength(5);

    const b = await token({ agent: 'budget-agent', tenant: 'acme' });
    const spent = await Promise.all(
      Array.from({ length: 30 }, (_, i) => send(`${inst(i % 3).url}/pay/v1/transfers`, { token: b, method: 'POST', body: { amount: 100 } })),
    );
    expect(spent.filter((r) => r.status === 201)).toHaveLength(5);
    for (const r of spent.filter((x) => x.status !== 201)) expect(r.text).toContain('VALET_ERR_BUDGET_EXCEEDED');
    expect(upstream.requests.filter((q) => q.url === '/v1/transfers')).toHaveLength(5);
  }, 30_000);

  it('LLM usage budgets hold across the fleet: 30 streamed calls over three instances, six reservations fit, nothing overshoots', async () => {
    let release = (): void => undefined;
    llm.behaviour = { usage: { input: 6, cached: 0, cacheWrite: 0, output: 40, reasoning: 0 }, gate: new Promise<void>((r) => (release = r)) };
    const t = await token({ agent: 'llm-agent', tenant: 'llm-tenant' });
    const calls = Array.from({ length: 30 }, (_, i) => send(`${inst(i % 3).url}/llm/v1/chat/completions`, { token: t, method: 'POST', body: CHAT }));
    // The refusals come while the six admitted calls are held in flight by the fake.
    while (llm.requests.length < 6) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 200));
    expect(llm.requests).toHaveLength(6);
    release();
    const replies = await Promise.all(calls);
    expect(replies.filter((r) => r.status === 200)).toHaveLength(6);
    for (const r of replies.filter((x) => x.status !== 200)) expect(r.text).toContain('VALET_ERR_BUDGET_EXCEEDED');
    // Settled to 46 tokens each on whichever instance served them: a seventh call fits now.
    expect((await send(`${inst(1).url}/llm/v1/chat/completions`, { token: t, method: 'POST', body: CHAT })).status).toBe(200);
    expect(llm.requests).toHaveLength(7);
  }, 30_000);

  it('a request held on B is released by an approval through A\'s admin API', async () => {
    const approver = await adminToken(['approver'], 'fiona', ['finance']);
    const t = await token({ agent: 'hold-bot', tenant: 'acme' });
    const reply = send(`${inst(1).url}/pay/v1/hold/transfers`, { token: t, method: 'POST', body: { amount: 70 } });
    let id: string | undefined;
    const deadline = Date.now() + 5_000;
    while (id === undefined) {
      const res = await request(`${inst(0).adminUrl}/api/approvals`, { headers: { authorization: `Bearer ${approver}` } });
      const list = ((await res.body.json()) as { approvals?: { id: string; agent: string; status: string }[] }).approvals ?? [];
      id = list.find((a) => a.agent === 'hold-bot' && a.status === 'pending')?.id;
      if (id === undefined) {
        if (Date.now() > deadline) throw new Error('the held request never appeared on A');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    expect(upstream.requests.filter((q) => q.url === '/v1/hold/transfers')).toHaveLength(0);
    const approved = await request(`${inst(0).adminUrl}/api/approvals/${id}/approve`, {
      method: 'POST',
      headers: { authorization: `Bearer ${approver}`, 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'checked' }),
    });
    await approved.body.text();
    expect(approved.statusCode).toBe(200);
    const r = await reply;
    expect(r.status, r.text).toBe(201);
    expect(JSON.parse(r.text)).toMatchObject({ executed: true, url: '/v1/hold/transfers' });
    expect(upstream.requests.filter((q) => q.url === '/v1/hold/transfers')).toHaveLength(1);
  }, 20_000);

  it('a secret rotated through C\'s admin API is the one A injects', async () => {
    const adm = await adminToken(['admin'], 'root-admin');
    const t = await token({ agent: 'vault-bot', tenant: 'acme' });
    const put = async (method: 'POST' | 'PUT', path: string, body: unknown): Promise<number> => {
      const res = await request(`${inst(2).adminUrl}${path}`, { method, headers: { authorization: `Bearer ${adm}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      await res.body.text();
      return res.statusCode;
    };
    const injectedByA = async (): Promise<string[]> => {
      const r = await send(`${inst(0).url}/vault/v1/x`, { token: t });
      return r.status === 201 ? headerValues(upstream.requests.at(-1)!, 'authorization') : [`status ${r.status}`];
    };
    const waitForA = async (want: string): Promise<void> => {
      const deadline = Date.now() + 3_000;
      let last: string[] = [];
      while (!(last = await injectedByA()).includes(want)) {
        if (Date.now() > deadline) throw new Error(`A never injected the new value (last: ${last.join(',')})`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    expect(await put('POST', '/api/secrets', { name: 'VAULT_TOKEN', value: 'vt-fleet-one-8a2c' })).toBe(201);
    await waitForA('Bearer vt-fleet-one-8a2c');
    expect(await put('PUT', '/api/secrets/VAULT_TOKEN', { value: 'vt-fleet-two-d90b' })).toBe(200);
    await waitForA('Bearer vt-fleet-two-d90b');
    expect(await injectedByA()).toEqual(['Bearer vt-fleet-two-d90b']);
  }, 20_000);

  it('valet audit verify passes over the rows all three wrote, and rows exist from each instance', async () => {
    const t = await token({ agent: 'verify-bot', tenant: 'acme' });
    for (const i of [0, 1, 2]) expect((await send(`${inst(i).url}/pay/v1/hello/${inst(i).name}`, { token: t })).status).toBe(201);
    // The upstream saw Valet's request id; the decision row written before forwarding names the instance that wrote it.
    const sentTo = new Map(
      upstream.requests.filter((q) => q.url.startsWith('/v1/hello/')).map((q) => [headerValues(q, 'x-request-id')[0] as string, `fleet-${q.url.slice('/v1/hello/'.length)}`]),
    );
    const rows = (
      await pgs.query<{ request_id: string; instance: string }>(schema, 'SELECT request_id, instance FROM audit_log WHERE request_id = ANY($1) AND instance IS NOT NULL', [[...sentTo.keys()]])
    ).rows;
    expect(new Map(rows.map((r) => [r.request_id, r.instance]))).toEqual(sentTo);
    expect([...sentTo.values()].sort()).toEqual(['fleet-a', 'fleet-b', 'fleet-c']);
    const r = await runCli(['audit', 'verify'], { env: inst(0).env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
  }, 20_000);

  it('kill -9 under load: after the restart every forwarded request has a finished audit row, and the chain verifies', async () => {
    const victim = inst(2);
    const t = await token({ agent: 'load-bot', tenant: 'acme' });
    let n = 0;
    let dead = false;
    const worker = async (): Promise<void> => {
      while (!dead) {
        try {
          await send(`${victim.url}/pay/v1/load/${n++}`, { token: t });
        } catch {
          return;
        }
      }
    };
    const before = upstream.requests.length;
    const workers = Array.from({ length: 4 }, worker);
    const held = [0, 1].map((i) => send(`${victim.url}/pay/v1/held/${i}`, { token: t }).then(() => 'answered', () => 'cut off'));
    // Kill only once the load has reached the upstream.
    const deadline = Date.now() + 5_000;
    const arrived = (p: string): number => upstream.requests.slice(before).filter((q) => q.url.startsWith(p)).length;
    while (arrived('/v1/load') < 10 || arrived('/v1/held/') < 2) {
      if (Date.now() > deadline) throw new Error('no load reached the upstream');
      await new Promise((r) => setTimeout(r, 10));
    }
    await stop(victim.child);
    dead = true;
    await Promise.all(workers);
    expect(await Promise.all(held)).toEqual(['cut off', 'cut off']);
    await start(victim);

    const idOf = (q: RecordedRequest): string => headerValues(q, 'x-request-id')[0] as string;
    const ids = upstream.requests.filter((q) => q.url.startsWith('/v1/load') || q.url.startsWith('/v1/held/')).map(idOf);
    expect(ids.length).toBeGreaterThanOrEqual(12);
    const rows = (
      await pgs.query<{ request_id: string; status: number; error_code: string | null }>(schema, 'SELECT request_id, status, error_code FROM audit_log WHERE request_id = ANY($1)', [ids])
    ).rows;
    const byId = new Map(rows.map((r) => [r.request_id, r]));
    for (const id of ids) {
      const row = byId.get(id);
      expect(row, `no audit row for forwarded request ${id}`).toBeDefined();
      expect(row!.status !== 0 || row!.error_code === 'VALET_ERR_OUTCOME_UNKNOWN', `row ${id}: ${JSON.stringify(row)}`).toBe(true);
    }
    // The two the upstream never answered were completed by the restarted instance itself.
    for (const q of upstream.requests.filter((x) => x.url.startsWith('/v1/held/'))) expect(byId.get(idOf(q))).toMatchObject({ status: 0, error_code: 'VALET_ERR_OUTCOME_UNKNOWN' });
    const r = await runCli(['audit', 'verify'], { env: inst(0).env });
    expect(r.code, r.stdout + r.stderr).toBe(0);
  }, 30_000);
});
