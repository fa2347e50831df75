import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { createClient } from '@redis/client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CounterKey, RateLimitConfig } from '../../gateway/config/types.js';
import { compilePolicy } from '../../gateway/policy/compile.js';
import { COUNTERS_FILE, openCounterDatabase, type CounterDatabase } from '../../gateway/policy/counters-db.js';
import { memoryCounterStore, memoryHistoryStore, type CounterCharge, type CounterStore, type HistoryStore } from '../../gateway/policy/counters.js';
import { redisCounterStores, withLocalFallback, type RedisCommands } from '../../gateway/policy/counters-redis.js';
import { ValetError } from '../../gateway/errors.js';
import type { AgentIdentity, RequestFacts } from '../../gateway/types.js';
import { agent } from '../helpers/fixtures.js';

const dirs: string[] = [];
const opened: CounterDatabase[] = [];
afterEach(() => {
  for (const db of opened.splice(0)) db.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function sqlite(dir?: string): CounterDatabase {
  const d = dir ?? mkdtempSync(join(tmpdir(), 'valet-counters-'));
  if (dir === undefined) dirs.push(d);
  const db = openCounterDatabase(d, () => 0);
  opened.push(db);
  return db;
}

// A real Redis on 127.0.0.1:6379, a fresh key prefix per store (and per run), deleted afterwards.
// The caller's clock, so the cases replay exact times; in production the script reads Redis's.
const redis = createClient({ url: 'redis://127.0.0.1:6379' });
const run = `valet-test:${randomUUID()}:`;
beforeAll(async () => {
  await redis.connect();
});
afterAll(async () => {
  for await (const keys of redis.scanIterator({ MATCH: `${run}*`, COUNT: 1000 })) if (keys.length > 0) await redis.del(keys);
  redis.destroy();
});

const stores: [string, () => { counters: CounterStore; history: HistoryStore }][] = [
  ['memory', () => ({ counters: memoryCounterStore(), history: memoryHistoryStore() })],
  ['sqlite', () => sqlite()],
  ['redis', () => redisCounterStores(redis as unknown as RedisCommands, { prefix: `${run}${randomUUID()}:`, clock: 'caller' })],
];

const MIN = 60_000;
const rate = (key = 'k', limit = 10, windowMs = MIN): ((cost?: number) => CounterCharge) => (cost = 1) => ({ key, windowMs, limit, cost });

/** Admits `n` unit charges at `t`, returning how many passed. */
async function burst(store: CounterStore, charge: CounterCharge, n: number, t: number): Promise<number> {
  let passed = 0;
  for (let i = 0; i < n; i++) if ((await store.tryConsume([charge], t)).ok) passed++;
  return passed;
}

/** A deterministic pseudo-random sequence, so a failure can be replayed. */
function lcg(seed: number): () => number {
  let x = seed;
  return () => ((x = (x * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
}

describe.each(stores)('%s counter store', (_name, make) => {
  it('limit 10 per 60 s: 10 at 59.9 s and 10 at 60.1 s do not both pass (no window boundary)', async () => {
    const { counters } = make();
    const c = rate()();
    expect(await burst(counters, c, 10, 59_900)).toBe(10);
    expect(await burst(counters, c, 10, 60_100)).toBe(0);
    // Still refused just before a full window has passed since the 10, admitted just after.
    expect((await counters.tryConsume([c], 59_900 + MIN))).toMatchObject({ ok: false });
    expect(await burst(counters, c, 11, 59_900 + MIN + 1_001)).toBe(10);
  });

  it('budget 1000 per day: 1000 at 23:59:59.9 and 1 at 00:00:00.1 do not both pass', async () => {
    const { counters } = make();
    const day = 86_400_000;
    const spend = (amount: number): CounterCharge => ({ key: 'b', windowMs: day, limit: 1000, cost: amount });
    expect((await counters.tryConsume([spend(1000)], day - 100)).ok).toBe(true);
    expect((await counters.tryConsume([spend(1)], day + 100))).toMatchObject({ ok: false });
    expect((await counters.tryConsume([spend(0)], day + 100)).ok).toBe(true);
  });

  it('never admits more than the limit in any closed interval of one window (random arrivals and costs)', async () => {
    for (const seed of [1, 2, 3]) {
      const { counters } = make();
      const rnd = lcg(seed);
      const limit = 20;
      const admitted: { t: number; cost: number }[] = [];
      let t = 0;
      for (let i = 0; i < 1500; i++) {
        t += Math.floor(rnd() * 2_000);
        const cost = 1 + Math.floor(rnd() * 4);
        if ((await counters.tryConsume([{ key: 'r', windowMs: MIN, limit, cost }], t)).ok) admitted.push({ t, cost });
      }
      expect(admitted.length).toBeGreaterThan(100);
      for (const [i, a] of admitted.entries()) {
        let sum = 0;
        for (let j = i; j < admitted.length && (admitted[j] as { t: number }).t <= a.t + MIN; j++) sum += (admitted[j] as { cost: number }).cost;
        expect(sum, `window from ${a.t} (seed ${seed})`).toBeLessThanOrEqual(limit);
      }
    }
  });

  it('retryAfterMs is exact: refused one millisecond earlier, admitted then', async () => {
    const { counters } = make();
    const c = rate('r', 5)();
    for (const t of [1_000, 7_500, 20_250, 31_000, 44_444]) expect((await counters.tryConsume([c], t)).ok).toBe(true);
    const now = 50_000;
    const r = await counters.tryConsume([{ ...c, cost: 2 }], now);
    expect(r.ok).toBe(false);
    const retry = (r as { retryAfterMs: number }).retryAfterMs;
    expect(retry).toBeGreaterThan(0);
    expect(retry).toBeLessThanOrEqual(MIN + 1);
    expect((await counters.tryConsume([{ ...c, cost: 2 }], now + retry - 1)).ok).toBe(false);
    expect((await counters.tryConsume([{ ...c, cost: 2 }], now + retry)).ok).toBe(true);
  });

  it('a cost above the limit never fits: refused with no time to wait, nothing charged', async () => {
    const { counters } = make();
    expect((await counters.tryConsume([{ key: 'w', windowMs: MIN, limit: 10, cost: 11 }], 0))).toEqual({ ok: false, index: 0, retryAfterMs: null });
    expect(await burst(counters, rate('w')(), 10, 1)).toBe(10);
  });

  it('answers where each admitted charge went and the total after it', async () => {
    const { counters } = make();
    const r = await counters.tryConsume([{ key: 'p', windowMs: MIN, limit: 100, cost: 30 }, { key: 'q', windowMs: MIN, limit: 100, cost: 5 }], 1_000);
    expect(r).toEqual({ ok: true, placed: [{ slot: 1, used: 30 }, { slot: 1, used: 5 }] });
    expect(await counters.tryConsume([{ key: 'p', windowMs: MIN, limit: 100, cost: 0.5 }], 2_500)).toEqual({ ok: true, placed: [{ slot: 2, used: 30.5 }] });
  });

  it('settles a reservation: gives back the unused part to its own slot, adds an overrun at now', async () => {
    const { counters } = make();
    const budget = { key: 'r', windowMs: MIN, limit: 100 };
    const first = await counters.tryConsume([{ ...budget, cost: 60 }], 1_000);
    const second = await counters.tryConsume([{ ...budget, cost: 30 }], 5_000);
    if (!first.ok || !second.ok) throw new Error('admitted');
    // Full: a reservation of 20 does not fit until the first settles.
    expect((await counters.tryConsume([{ ...budget, cost: 20 }], 6_000)).ok).toBe(false);
    // The first spent 10 of its 60: 50 back, to the slot it was charged in.
    expect(await counters.settle([{ ...budget, slot: first.placed?.[0]?.slot ?? -1, delta: -50 }], 7_000)).toEqual([40]);
    expect((await counters.tryConsume([{ ...budget, cost: 20 }], 8_000)).ok).toBe(true);
    // The second ran past its 30 by 15: added whatever the limit.
    expect(await counters.settle([{ ...budget, slot: second.placed?.[0]?.slot ?? -1, delta: 15 }], 9_000)).toEqual([75]);
    // The slot given back to leaves the window when the first charge does: 30 + 20 + 15 remain.
    expect((await counters.tryConsume([{ ...budget, cost: 36 }], 1_000 + MIN + 1)).ok).toBe(false);
    expect((await counters.tryConsume([{ ...budget, cost: 35 }], 1_000 + MIN + 1)).ok).toBe(true);
  });

  it('a settlement never takes a slot below zero, and one for a slot gone from the window does nothing', async () => {
    const { counters } = make();
    const budget = { key: 's', windowMs: MIN, limit: 10 };
    const r = await counters.tryConsume([{ ...budget, cost: 4 }], 0);
    if (!r.ok) throw new Error('admitted');
    const slot = r.placed?.[0]?.slot ?? -1;
    expect(await counters.settle([{ ...budget, slot, delta: -9 }], 10)).toEqual([0]);
    expect(await counters.settle([{ ...budget, slot, delta: -1 }], 2 * MIN)).toEqual([0]);
    expect(await burst(counters, { ...budget, cost: 1 }, 11, 2 * MIN)).toBe(10);
  });

  it('is all-or-nothing over several charges, naming the first that overflows', async () => {
    const { counters } = make();
    const a = rate('a', 3)();
    const b = rate('b', 1)();
    expect((await counters.tryConsume([a, b], 0)).ok).toBe(true);
    expect((await counters.tryConsume([a, b], 1))).toMatchObject({ ok: false, index: 1 });
    // The refused call did not charge a: two more fit.
    expect(await burst(counters, a, 3, 2)).toBe(2);
  });

  it('keeps counters of different windows under one key apart (a reload may change the window)', async () => {
    const { counters } = make();
    expect(await burst(counters, rate('x', 2, MIN)(), 3, 0)).toBe(2);
    expect(await burst(counters, rate('x', 2, 2 * MIN)(), 3, 0)).toBe(2);
  });
});

describe.each(stores)('%s history store', (_name, make) => {
  it('counts per key, per hour and day rounded out to whole minutes, and first use', async () => {
    const { history } = make();
    const t0 = 10 * 86_400_000;
    expect(await history.summary('a', t0)).toEqual({ calls_last_hour: 0n, calls_last_day: 0n, first_use: true });
    await history.record('a', t0);
    await history.record('a', t0 + 1_000);
    await history.record('b', t0);
    expect(await history.summary('a', t0 + 2_000)).toEqual({ calls_last_hour: 2n, calls_last_day: 2n, first_use: false });
    // 60 minutes on, still counted (rounded out); 62 minutes on, out of the hour but in the day.
    expect((await history.summary('a', t0 + 60 * MIN)).calls_last_hour).toBe(2n);
    expect(await history.summary('a', t0 + 62 * MIN)).toEqual({ calls_last_hour: 0n, calls_last_day: 2n, first_use: false });
    expect(await history.summary('a', t0 + 1442 * MIN)).toEqual({ calls_last_hour: 0n, calls_last_day: 0n, first_use: false });
  });
});

describe.each(stores)('%s history store: first use', (_name, make) => {
  it('remembers a key for 90 days after its last call, then forgets it (a route key per path cannot grow for ever)', async () => {
    const { history } = make();
    const day = 86_400_000;
    await history.record('k', 0);
    await history.record('k', 30 * day);
    expect((await history.summary('k', 119 * day)).first_use).toBe(false);
    expect((await history.summary('k', 121 * day)).first_use).toBe(true);
  });
});


describe('redis history: record only if unchanged since read', () => {
  it('of calls that read the same version, exactly one records; the others see the new version', async () => {
    const { history } = redisCounterStores(redis as unknown as RedisCommands, { prefix: `${run}${randomUUID()}:`, clock: 'caller' });
    const read = history.read?.bind(history);
    const claim = history.recordIfUnchanged?.bind(history);
    if (read === undefined || claim === undefined) throw new Error('the redis store is versioned');
    const first = await read('k', 1_000);
    expect(first.summary.first_use).toBe(true);
    const claims = await Promise.all(Array.from({ length: 10 }, () => claim('k', 1_000, first.version)));
    expect(claims.filter(Boolean)).toHaveLength(1);
    const after = await read('k', 2_000);
    expect(after.version).not.toBe(first.version);
    expect(after.summary).toEqual({ calls_last_hour: 1n, calls_last_day: 1n, first_use: false });
    // An unconditional record moves the version too: a claim on the older read fails.
    await history.record('k', 3_000);
    expect(await claim('k', 3_000, after.version)).toBe(false);
    expect((await read('k', 4_000)).summary.calls_last_hour).toBe(2n);
    // Another key's history is its own.
    expect(await claim('other', 4_000, (await read('other', 4_000)).version)).toBe(true);
  });
});
describe('shared counters falling back to local ones (fail_open)', () => {
  const unavailable = (): Promise<never> => Promise.reject(new ValetError('VALET_ERR_COUNTERS_UNAVAILABLE', 'Redis is unreachable'));
  const down: CounterStore = { tryConsume: unavailable, settle: unavailable };
  const open = (key: string): CounterCharge => ({ key, windowMs: MIN, limit: 2, cost: 1, failOpen: true });

  it('counts fail_open charges locally while the shared store fails, with the same algorithm', async () => {
    const store = withLocalFallback(down);
    const results = [];
    for (let i = 0; i < 3; i++) results.push(await store.tryConsume([open('a'), open('b')], 1_000 + i));
    expect(results.map((r) => r.ok)).toEqual([true, true, false]);
  });

  it('fails closed when any charge of the decision is not fail_open', async () => {
    const store = withLocalFallback(down);
    for (const charges of [[rate('c')()], [open('a'), rate('c')()], [rate('c')(), open('a')]]) {
      await expect(store.tryConsume(charges, 0)).rejects.toMatchObject({ code: 'VALET_ERR_COUNTERS_UNAVAILABLE' });
    }
  });

  it('answers from the shared store while it answers', async () => {
    const shared = memoryCounterStore();
    const store = withLocalFallback({ tryConsume: (c, now) => Promise.resolve(shared.tryConsume(c, now)), settle: (a, now) => Promise.resolve(shared.settle(a, now)) });
    expect(await burst(store, open('s'), 3, 0)).toBe(2);
    expect(shared.tryConsume([open('s')], 1)).toMatchObject({ ok: false });
  });
});

describe('counters.db', () => {
  it('keeps counters and history across a reopen, in a 0600 WAL file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-counters-'));
    dirs.push(dir);
    const first = sqlite(dir);
    const spend = { key: 'b', windowMs: 86_400_000, limit: 1000, cost: 900 };
    expect(first.counters.tryConsume([spend], 5_000).ok).toBe(true);
    first.history.record('h', 5_000);
    first.close();
    opened.splice(opened.indexOf(first), 1);

    const again = sqlite(dir);
    expect(again.counters.tryConsume([{ ...spend, cost: 101 }], 6_000)).toMatchObject({ ok: false });
    expect(again.counters.tryConsume([{ ...spend, cost: 100 }], 6_000).ok).toBe(true);
    expect(again.history.summary('h', 6_000)).toEqual({ calls_last_hour: 1n, calls_last_day: 1n, first_use: false });
    expect(statSync(join(dir, COUNTERS_FILE)).mode & 0o777).toBe(0o600);
    const raw = new Database(join(dir, COUNTERS_FILE), { readonly: true });
    try {
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      raw.close();
    }
  });

  it('writes behind: a flush (the timer, or close) makes charges and history survive a crash of the process', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-counters-'));
    dirs.push(dir);
    const first = sqlite(dir);
    const spend = { key: 'b', windowMs: 86_400_000, limit: 1000, cost: 600 };
    expect(first.counters.tryConsume([spend], 5_000).ok).toBe(true);
    first.history.record('h', 5_000);
    const rows = (): unknown => {
      const raw = new Database(join(dir, COUNTERS_FILE), { readonly: true });
      try {
        return raw.prepare('SELECT (SELECT count(*) FROM counter_slots) AS slots, (SELECT count(*) FROM history_calls) AS calls').get();
      } finally {
        raw.close();
      }
    };
    // Nothing on disk until the write behind: the request path never waits for SQLite.
    expect(rows()).toEqual({ slots: 0, calls: 0 });
    first.flush();
    expect(rows()).toEqual({ slots: 1, calls: 1 });
    // The first store is never closed (a crash); a new process opens the file and sees the charge.
    const again = openCounterDatabase(dir, () => 6_000);
    opened.push(again);
    expect(again.counters.tryConsume([spend], 6_000)).toMatchObject({ ok: false });
    expect(again.history.summary('h', 6_000)).toEqual({ calls_last_hour: 1n, calls_last_day: 1n, first_use: false });
  });

  it('prunes what can no longer count when it opens', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-counters-'));
    dirs.push(dir);
    const first = sqlite(dir);
    first.counters.tryConsume([rate('old')()], 0);
    first.history.record('old', 0);
    first.close();
    opened.splice(opened.indexOf(first), 1);
    const later = openCounterDatabase(dir, () => 3 * 86_400_000);
    opened.push(later);
    const raw = new Database(join(dir, COUNTERS_FILE), { readonly: true });
    try {
      expect(raw.prepare('SELECT count(*) AS n FROM counter_slots').get()).toEqual({ n: 0 });
      expect(raw.prepare('SELECT count(*) AS n FROM history_calls').get()).toEqual({ n: 0 });
    } finally {
      raw.close();
    }
  });
});

describe('counter keys', () => {
  const at = { file: 'limits.yaml', line: 1, column: 1, path: 'rate_limits[0]' };
  const limit = (key: CounterKey): RateLimitConfig => ({
    id: `by-${typeof key === 'string' ? key : 'cel'}`,
    description: undefined,
    scope: undefined,
    upstream: undefined,
    tools: undefined,
    methods: undefined,
    paths: undefined,
    roles: undefined,
    environments: undefined,
    when: undefined,
    at,
    lines: {},
    limit: 1,
    windowMs: MIN,
    key,
  });
  const GATEWAY = {
    environment: 'development',
    listen: { host: '127.0.0.1', port: 0 },
    shutdownGraceMs: 1,
  maxRetryAfterS: 60,
    maxHeaderBytes: 16384,
    maxBodyBytes: 1024,
    timezone: 'UTC',
    admin: { listen: { host: '127.0.0.1', port: 0 }, audience: 'valet-admin' },
  } as const;
  const facts = (tool: string): RequestFacts => ({ upstream: 'api', method: 'GET', path: '/x', forwardPath: '/x', rawQuery: '', query: {}, tool, args: {}, argsError: undefined });

  /** The store keys a charge by `identity` produces, per limit. */
  function keysOf(key: CounterKey, identity: AgentIdentity, tool = 'api.get'): string[] {
    const seen: string[] = [];
    const recording: CounterStore = {
      tryConsume(charges) {
        seen.push(...charges.map((c) => c.key));
        return { ok: true };
      },
      settle: () => [],
    };
    const policy = compilePolicy(
      { version: 'v', gateway: GATEWAY, tools: [], rules: [], rateLimits: [limit(key)], budgets: [], contexts: [] },
      { counters: recording, history: memoryHistoryStore() },
    );
    policy.charge({ identity, facts: facts(tool), environment: 'development', now: 0, context: {} });
    return seen;
  }

  it('names the tenant in every key but global, and no id with ":" or NUL collides across tenants', () => {
    const who = (tenant: string | undefined, id: string, user?: string): AgentIdentity => ({ ...agent, tenant, agent: id, user });
    const pairs: [AgentIdentity, AgentIdentity][] = [
      [who('a', 'bot'), who('b', 'bot')],
      [who('a:b', 'c'), who('a', 'b:c')],
      [who('a\u0000b', 'c'), who('a', 'b\u0000c')],
      [who(undefined, 'bot'), who('', 'bot')],
      [who('a', 'x', 'alice'), who('b', 'x', 'alice')],
      [who('t', '"],["agent","u"'), who('u', 'x')],
    ];
    for (const key of ['agent', 'user', 'tool', { cel: 'request.tool' }] as CounterKey[]) {
      for (const [x, y] of pairs) {
        const kx = keysOf(key, x);
        const ky = keysOf(key, y);
        expect(kx).toHaveLength(1);
        expect(kx, `${JSON.stringify(key)}: ${x.tenant}/${x.agent} vs ${y.tenant}/${y.agent}`).not.toEqual(ky);
      }
    }
    expect(keysOf('tenant', who('a', 'x'))).not.toEqual(keysOf('tenant', who('b', 'x')));
    // global is the one counter all tenants share.
    expect(keysOf('global', who('a', 'x'))).toEqual(keysOf('global', who('b', 'y')));
    // Within a tenant, a user's key is the user's, not any agent's.
    expect(keysOf('user', who('a', 'alice'))).not.toEqual(keysOf('user', who('a', 'bot', 'alice')));
  });
});
