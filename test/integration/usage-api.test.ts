/**
 * LLM spend from the audit log, end to end: calls through a real gateway (the OpenAI SDK against
 * a fake provider reporting known usage), then `GET /api/usage` grouped and bucketed, `GET
 * /api/budgets` with each counter's settled spend, a tenant admin's view, and `valet usage` reading
 * the same log from another process. Run on both backends (SQLite; PostgreSQL with shared backends).
 */
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { AuditRow } from '../../gateway/audit/port.js';
import { runCli } from '../helpers/cli.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeLlm, type FakeLlm, type FakeUsage } from '../helpers/llm.js';

interface Call {
  agent: string;
  tenant: string;
  team?: string;
  model: string;
  usage: FakeUsage;
}

/** Two tenants, an agent id ("a1") and a team name ("red") in both, one agent with no team. */
const CALLS: Call[] = [
  { agent: 'a1', tenant: 'acme', team: 'red', model: 'gpt-4o-mini', usage: { input: 100, cached: 20, cacheWrite: 0, output: 10, reasoning: 0 } },
  { agent: 'a1', tenant: 'acme', team: 'red', model: 'gpt-4o', usage: { input: 200, cached: 0, cacheWrite: 0, output: 30, reasoning: 5 } },
  { agent: 'a2', tenant: 'acme', team: 'blue', model: 'gpt-4o-mini', usage: { input: 50, cached: 0, cacheWrite: 0, output: 5, reasoning: 0 } },
  { agent: 'b1', tenant: 'globex', team: 'red', model: 'gpt-4o-mini', usage: { input: 300, cached: 100, cacheWrite: 0, output: 50, reasoning: 20 } },
  { agent: 'a1', tenant: 'globex', model: 'gpt-4o', usage: { input: 10, cached: 0, cacheWrite: 0, output: 1, reasoning: 0 } },
];

const BUDGETS = [
  { id: 'agent-tokens', usage: 'tokens', key: 'agent', upstream: 'openai', window: '1d', limit: 10_000 },
  { id: 'team-cost', usage: 'cost', key: 'team', window: '1d', limit: 1 },
  { id: 'acme-pool', usage: 'tokens', key: 'global', scope: { tenant: 'acme' }, window: '1h', limit: 5_000 },
  { id: 'per-route', usage: 'tokens', key: 'tool', window: '1d', limit: 1_000_000 },
];

interface SpendJson {
  key: string | null;
  tenant?: string | null;
  start_ms?: number;
  calls: number;
  tokens: number;
  cost: number;
  input: number;
  cached: number;
  cache_write: number;
  output: number;
  reasoning: number;
}
interface UsageJson {
  currency: string;
  by: string;
  rows: SpendJson[];
  truncated: boolean;
}
interface BudgetJson {
  id: string;
  usage: string;
  key: string;
  window_s: number;
  limit: number;
  per_counter: boolean;
  approximate: boolean;
  counters: { key: string | null; tenant: string | null; used: number; percent: number | null }[];
}

const total = (u: FakeUsage): number => u.input + u.cached + u.cacheWrite + u.output + u.reasoning;

let fake: FakeLlm;
let gw: TestGateway;
let rows: AuditRow[];

beforeAll(async () => {
  fake = await startFakeLlm();
  gw = await startTestGateway({
    upstreams: [{ name: 'openai', preset: 'openai', origin: fake.origin }],
    rules: [{ id: 'ok', effect: 'allow' }],
    env: { OPENAI_API_KEY: 'sk-real-openai-usage-test' },
    files: { 'budgets.yaml': stringify({ budgets: BUDGETS }) },
  });
  for (const c of CALLS) {
    fake.behaviour = { usage: c.usage };
    const client = new OpenAI({ baseURL: `${gw.url}/openai/v1`, apiKey: await gw.token({ agent: c.agent, tenant: c.tenant, ...(c.team !== undefined && { team: c.team }) }), maxRetries: 0 });
    await client.chat.completions.create({ model: c.model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 100 });
  }
  // One call that is no LLM call: counted nowhere.
  await (await request(`${gw.url}/openai/v1/models`, { headers: { authorization: `Bearer ${await gw.token({ agent: 'a1', tenant: 'acme' })}` } })).body.dump();
  rows = (await gw.waitForAudit(CALLS.length + 1)).filter((r) => r.tokens !== null);
  expect(rows).toHaveLength(CALLS.length);
});

afterAll(async () => {
  await gw?.close();
  await fake?.close();
});

async function admin<T>(path: string, token?: string): Promise<{ status: number; body: T }> {
  const res = await request(`${gw.adminUrl}${path}`, { headers: { authorization: `Bearer ${token ?? (await gw.adminToken(['auditor']))}` } });
  return { status: res.statusCode, body: (await res.body.json()) as T };
}

/** What the calls selected by `pick`, grouped by `group`, add up to: tokens from what the fake reported, cost from the rows. */
function expected(group: (c: Call) => string, pick: (c: Call) => boolean = () => true): Map<string, { calls: number; tokens: number; cost: number; input: number; cached: number; output: number; reasoning: number }> {
  const out = new Map<string, { calls: number; tokens: number; cost: number; input: number; cached: number; output: number; reasoning: number }>();
  CALLS.forEach((c, i) => {
    if (!pick(c)) return;
    const g = out.get(group(c)) ?? { calls: 0, tokens: 0, cost: 0, input: 0, cached: 0, output: 0, reasoning: 0 };
    g.calls++;
    g.tokens += total(c.usage);
    g.cost += rows[i]?.cost ?? Number.NaN;
    g.input += c.usage.input;
    g.cached += c.usage.cached;
    g.output += c.usage.output;
    g.reasoning += c.usage.reasoning;
    out.set(group(c), g);
  });
  return out;
}

function expectRows(actual: SpendJson[], name: (r: SpendJson) => string, want: ReturnType<typeof expected>): void {
  expect(actual.map(name).sort()).toEqual([...want.keys()].sort());
  for (const r of actual) {
    const w = want.get(name(r));
    expect(r, name(r)).toMatchObject({ calls: w?.calls, tokens: w?.tokens, input: w?.input, cached: w?.cached, cache_write: 0, output: w?.output, reasoning: w?.reasoning });
    expect(r.cost).toBeCloseTo(w?.cost ?? Number.NaN, 12);
  }
}

describe('GET /api/usage', () => {
  it('the rows match the calls made (the fake reported what the SDK saw)', () => {
    expect(rows.map((r) => [r.agent, r.tenant, r.team, r.model, r.tokens])).toEqual(CALLS.map((c) => [c.agent, c.tenant, c.team ?? null, c.model, total(c.usage)]));
    expect(rows.every((r) => (r.cost ?? 0) > 0)).toBe(true);
  });

  it('by agent: per agent of each tenant, tokens by kind and cost add up exactly', async () => {
    const r = await admin<UsageJson>('/api/usage?by=agent');
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ currency: 'USD', by: 'agent', truncated: false });
    expectRows(r.body.rows, (x) => `${x.tenant}/${x.key}`, expected((c) => `${c.tenant}/${c.agent}`));
    // The costliest first.
    expect(r.body.rows.map((x) => x.cost)).toEqual([...r.body.rows.map((x) => x.cost)].sort((a, b) => b - a));
  });

  it('by team: a team name in two tenants is two rows; an agent without a team is under null', async () => {
    const r = await admin<UsageJson>('/api/usage?by=team');
    expectRows(r.body.rows, (x) => `${x.tenant}/${x.key}`, expected((c) => `${c.tenant}/${c.team ?? null}`));
  });

  it('by model and by tenant: across tenants, no tenant field', async () => {
    const models = await admin<UsageJson>('/api/usage?by=model');
    expectRows(models.body.rows, (x) => String(x.key), expected((c) => c.model));
    expect(models.body.rows.every((x) => !('tenant' in x))).toBe(true);
    const tenants = await admin<UsageJson>('/api/usage?by=tenant');
    expectRows(tenants.body.rows, (x) => String(x.key), expected((c) => c.tenant));
  });

  it('bucketed: each bucket holds exactly the calls recorded in it', async () => {
    const since = Math.min(...rows.map((x) => x.ts)) - 1_500;
    const until = Math.max(...rows.map((x) => x.ts)) + 1_000;
    const bucket = 1_000;
    const r = await admin<UsageJson & { bucket_ms: number }>(`/api/usage?by=model&since_ms=${since}&until_ms=${until}&bucket_ms=${bucket}`);
    expect(r.body.bucket_ms).toBe(bucket);
    const startOf = (i: number): number => since + Math.floor(((rows[i] as AuditRow).ts - since) / bucket) * bucket;
    const index = new Map(CALLS.map((c, i) => [c, i]));
    expectRows(r.body.rows, (x) => `${x.start_ms}/${x.key}`, expected((c) => `${startOf(index.get(c) as number)}/${c.model}`));
    // Earliest bucket first.
    expect(r.body.rows.map((x) => x.start_ms)).toEqual([...r.body.rows.map((x) => x.start_ms as number)].sort((a, b) => a - b));
    // A range that ends before the calls holds none of them.
    expect((await admin<UsageJson>(`/api/usage?by=model&since_ms=${since - 60_000}&until_ms=${since}`)).body.rows).toEqual([]);
  });

  it("a tenant admin sees its tenant's calls only, and may not ask for another's", async () => {
    const token = await gw.adminToken(['auditor'], { subject: 'dana', tenant: 'acme' });
    const r = await admin<UsageJson & { tenant: string }>('/api/usage?by=model', token);
    expect(r.body.tenant).toBe('acme');
    expectRows(r.body.rows, (x) => String(x.key), expected((c) => c.model, (c) => c.tenant === 'acme'));
    expect((await admin('/api/usage?tenant=globex', token)).status).toBe(403);
    // An organisation-wide admin may narrow to one tenant.
    const globex = await admin<UsageJson>('/api/usage?by=agent&tenant=globex');
    expectRows(globex.body.rows, (x) => `${x.tenant}/${x.key}`, expected((c) => `${c.tenant}/${c.agent}`, (c) => c.tenant === 'globex'));
  });

  it('refuses an unknown grouping, bad ranges and too many buckets; needs audit.read', async () => {
    expect((await admin('/api/usage?by=path')).status).toBe(400);
    expect((await admin('/api/usage?since_ms=10&until_ms=5')).status).toBe(400);
    expect((await admin('/api/usage?since_ms=0&until_ms=100000000&bucket_ms=1000')).status).toBe(400);
    expect((await admin('/api/usage', await gw.adminToken(['approver']))).status).toBe(403);
  });
});

describe('GET /api/budgets', () => {
  const budgetsOf = async (token?: string): Promise<Map<string, BudgetJson>> => new Map((await admin<{ budgets: BudgetJson[] }>('/api/budgets', token)).body.budgets.map((b) => [b.id, b]));
  const counters = (b: BudgetJson | undefined): Record<string, { used: number; percent: number | null }> =>
    Object.fromEntries((b?.counters ?? []).map((c) => [`${c.tenant}/${c.key}`, { used: c.used, percent: c.percent }]));
  const percent = (used: number, limit: number): number => Math.round((used / limit) * 10_000) / 100;

  it('each usage budget with its counters over its window: used and percent of the limit', async () => {
    const budgets = await budgetsOf();
    expect([...budgets.keys()]).toEqual(BUDGETS.map((b) => b.id));

    const agents = budgets.get('agent-tokens');
    expect(agents).toMatchObject({ usage: 'tokens', key: 'agent', window_s: 86_400, limit: 10_000, per_counter: true, approximate: false });
    const byAgent = expected((c) => `${c.tenant}/${c.agent}`);
    expect(counters(agents)).toEqual(Object.fromEntries([...byAgent].map(([k, v]) => [k, { used: v.tokens, percent: percent(v.tokens, 10_000) }])));
    // The fullest counter first.
    expect(agents?.counters[0]).toMatchObject({ tenant: 'globex', key: 'b1', used: 470, percent: 4.7 });

    const teams = counters(budgets.get('team-cost'));
    for (const [k, v] of expected((c) => `${c.tenant}/${c.team ?? null}`)) {
      expect(teams[k]?.used).toBeCloseTo(v.cost, 12);
      // Agents in no team spend a counter each: their sum has no percent.
      expect(teams[k]?.percent).toBe(k.endsWith('/null') ? null : percent(v.cost, 1));
    }

    const acme = [...expected(() => 'all', (c) => c.tenant === 'acme').values()][0];
    expect(budgets.get('acme-pool')?.counters).toEqual([{ key: null, tenant: null, used: acme?.tokens, percent: percent(acme?.tokens ?? 0, 5_000) }]);

    // Per tool (or route): the log cannot tell those counters apart, so one total without a percent.
    const all = CALLS.reduce((n, c) => n + total(c.usage), 0);
    expect(budgets.get('per-route')).toMatchObject({ per_counter: false, counters: [{ key: null, tenant: null, used: all, percent: null }] });
  });

  it("a tenant admin sees the budgets that can apply to its tenant, counted over its tenant's calls", async () => {
    const budgets = await budgetsOf(await gw.adminToken(['auditor'], { tenant: 'globex' }));
    expect([...budgets.keys()]).toEqual(['agent-tokens', 'team-cost', 'per-route']);
    expect(Object.keys(counters(budgets.get('agent-tokens'))).sort()).toEqual(['globex/a1', 'globex/b1']);
  });
});

describe('valet usage (CLI)', () => {
  const cli = (...args: string[]): ReturnType<typeof runCli> => runCli(['usage', ...args, '--config', gw.configDir, '--data', gw.dataDir]);

  it('--by model --format json: the same sums as the API', async () => {
    const r = await cli('--by', 'model', '--format', 'json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as UsageJson;
    expect(out).toMatchObject({ currency: 'USD', by: 'model' });
    expectRows(out.rows, (x) => String(x.key), expected((c) => c.model));
  });

  it('--format table: a row per agent of each tenant and the total, cost in the currency; --tenant narrows', async () => {
    const r = await cli('--tenant', 'acme');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^AGENT\s+TENANT\s+CALLS\s+TOKENS\s+INPUT\s+CACHED\s+CACHE_WRITE\s+OUTPUT\s+REASONING\s+COST \(USD\)$/);
    const acme = expected(() => 'all', (c) => c.tenant === 'acme').get('all');
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 4))).toEqual([
      ['a1', 'acme', '2', '365'],
      ['a2', 'acme', '1', '55'],
      ['TOTAL', String(acme?.calls), String(acme?.tokens), String(acme?.input)],
    ]);
    expect(Number(lines.at(-1)?.split(/\s+/).at(-1))).toBeCloseTo(acme?.cost ?? Number.NaN, 6);
  });

  it('--budgets --format json: each budget with its counters, as GET /api/budgets', async () => {
    const r = await cli('--budgets', '--format', 'json');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { currency: string; budgets: BudgetJson[] };
    const api = (await admin<{ budgets: BudgetJson[] }>('/api/budgets')).body.budgets;
    expect(out.budgets.map((b) => ({ ...b, since_ms: 0 }))).toEqual(api.map((b) => ({ ...b, since_ms: 0 })));
    expect(out.budgets.find((b) => b.id === 'agent-tokens')?.counters[0]).toMatchObject({ key: 'b1', tenant: 'globex', used: 470, percent: 4.7 });
  });

  it('--budgets as a table: one line per counter with its percent', async () => {
    const r = await cli('--budgets');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^BUDGET\s+USAGE\s+KEY\s+LIMIT\s+SINCE\s+COUNTER\s+TENANT\s+USED\s+PERCENT$/);
    expect(lines.find((l) => l.startsWith('agent-tokens') && / b1 /.test(l))).toMatch(/ 470\s+4\.7$/);
    expect(lines.find((l) => l.startsWith('team-cost') && l.includes('(no team)'))).toBeDefined();
  });

  it('usage mistakes exit 2 with the usage text', async () => {
    for (const args of [['--by', 'path'], ['--format', 'xml'], ['--budgets', '--since', '1d'], ['--since', 'yesterday']]) {
      const r = await cli(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('valet usage');
    }
  });
});
