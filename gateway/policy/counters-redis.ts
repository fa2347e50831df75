import { createHash } from 'node:crypto';
import { createClient } from '@redis/client';
import { ValetError } from '../errors.js';
import {
  DAY_MINUTES,
  HISTORY_MINUTE_MS,
  SEEN_MINUTES,
  SLOTS_PER_WINDOW,
  memoryCounterStore,
  type ConsumeResult,
  type CounterCharge,
  type CounterStore,
  type HistoryStore,
  type HistorySummary,
  type VersionedHistory,
  type LocalCounterStore,
} from './counters.js';
import type { SessionMarks, SessionStore } from './sessions.js';
import { DEFAULT_SESSION_TTL_MS } from '../config/types.js';

/** The one command a store sends; `@redis/client`'s client has it. */
export interface RedisCommands {
  sendCommand(args: readonly string[], options?: { timeout?: number; rejectInFlight?: boolean }): Promise<unknown>;
}

/** How long a decision waits for Redis before the request is refused (fail closed). */
export const REDIS_TIMEOUT_MS = 2_000;

/**
 * Whose clock windows are measured by. `server`: Redis's (TIME inside the script), so instances
 * whose clocks differ still share one timeline. `caller`: the `now` passed in (tests replay times).
 */
export type RedisClock = 'server' | 'caller';

export interface RedisStoreOptions {
  /** Prepended to every key (default `valet:`). */
  readonly prefix?: string;
  readonly clock?: RedisClock;
  /** How long an idle session's marks live (gateway.policy.sessions.ttl). */
  readonly sessionTtlMs?: number;
}

// Every script's clock: Redis's own (TIME) unless the caller passes \`now\` in ARGV[1] (clock: caller).
const CLOCK = `
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end`;

// The slotted sliding log of counters.ts, over every charge of one decision in one script run, so
// no other instance's charge can come between reading a counter and adding to it. A counter is one
// string: `slot last used;` per live slot, oldest first. It expires when its newest slot leaves the
// window, so idle counters cost nothing. Costs keep 17 digits (budgets may spend fractions).
// A counter's live slots, adding to the slot of now, and writing it back (answering its total).
// Totals go back to the caller as strings: Redis would cut a Lua number to an integer.
const SLOTS = `
local function slots_of(key, w)
  local live = {}
  local raw = redis.call('GET', key)
  if raw then
    for s, l, u in string.gmatch(raw, '([^ ]+) ([^ ]+) ([^;]+);') do
      l = tonumber(l)
      if l >= now - w then live[#live + 1] = { tonumber(s), l, tonumber(u) } end
    end
  end
  return live
end
local function add(live, w, cost)
  local slot = math.floor(now / math.max(1, math.ceil(w / ${SLOTS_PER_WINDOW})))
  local newest = live[#live]
  if newest and newest[1] >= slot then
    newest[2] = math.max(newest[2], now)
    newest[3] = newest[3] + cost
    return newest[1]
  end
  live[#live + 1] = { slot, now, cost }
  return slot
end
local function store(key, live, w)
  local parts, last, used = {}, now, 0
  for j, s in ipairs(live) do
    parts[j] = string.format('%.17g %.17g %.17g;', s[1], s[2], s[3])
    if s[2] > last then last = s[2] end
    used = used + s[3]
  end
  if #parts == 0 then redis.call('DEL', key) else redis.call('SET', key, table.concat(parts), 'PX', math.floor(last + w - now) + 1) end
  return string.format('%.17g', used)
end`;

const CONSUME = `${CLOCK}
${SLOTS}
local lives = {}
for i = 1, #KEYS do
  local w, limit, cost = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local live = slots_of(KEYS[i], w)
  local excess = cost - limit
  for _, s in ipairs(live) do excess = excess + s[3] end
  if excess > 0 then
    if cost > limit then return { 0, i - 1, -1 } end
    for _, s in ipairs(live) do
      excess = excess - s[3]
      if excess <= 0 then return { 0, i - 1, math.floor(s[2] + w - now) + 1 } end
    end
    return { 0, i - 1, w }
  end
  lives[i] = live
end
local placed = { 1 }
for i = 1, #KEYS do
  local w, cost = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i + 1])
  local live = lives[i]
  placed[#placed + 1] = add(live, w, cost)
  placed[#placed + 1] = store(KEYS[i], live, w)
end
return placed
`;

// A budget's reservation settled: ARGV after the clock, per key, its window, the slot the charge
// went into and the correction (see CounterAdjustment). Answers each counter's total after.
const SETTLE = `${CLOCK}
${SLOTS}
local used = {}
for i = 1, #KEYS do
  local w, slot, delta = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local live = slots_of(KEYS[i], w)
  if delta > 0 then
    add(live, w, delta)
  elseif delta < 0 then
    for _, s in ipairs(live) do
      if s[1] == slot then s[3] = math.max(0, s[3] + delta) end
    end
  end
  used[i] = store(KEYS[i], live, w)
end
return used
`;

const NOW = `${CLOCK}
local minute = math.floor(now / ${HISTORY_MINUTE_MS})
`;

// KEYS: the key's calls per minute (a hash), the last minute it was seen. The hash lives a day past
// its last call, the seen key ${SEEN_MINUTES / DAY_MINUTES} days; minutes older than a day are
// dropped once the hash holds twice as many as a day has.
// KEYS[3]: the history's version, one more per recorded call. ARGV[2]: the version the caller read
// its summary at ('' records whatever happened since): another call recorded since → nothing, 0.
const RECORD = `${NOW}
local version = redis.call('GET', KEYS[3]) or '0'
if ARGV[2] ~= '' and ARGV[2] ~= version then return 0 end
redis.call('SET', KEYS[3], tonumber(version) + 1, 'PX', ${(SEEN_MINUTES + 2) * HISTORY_MINUTE_MS})
redis.call('HINCRBY', KEYS[1], minute, 1)
redis.call('PEXPIRE', KEYS[1], ${(DAY_MINUTES + 2) * HISTORY_MINUTE_MS})
if redis.call('HLEN', KEYS[1]) > ${2 * DAY_MINUTES + 2} then
  for _, m in ipairs(redis.call('HKEYS', KEYS[1])) do
    if tonumber(m) < minute - ${DAY_MINUTES} then redis.call('HDEL', KEYS[1], m) end
  end
end
local seen = tonumber(redis.call('GET', KEYS[2]) or '')
if seen == nil or minute > seen then redis.call('SET', KEYS[2], minute, 'PX', ${(SEEN_MINUTES + 2) * HISTORY_MINUTE_MS}) end
return 1
`;

const SUMMARY = `${NOW}
local all = redis.call('HGETALL', KEYS[1])
local hour, day = 0, 0
for i = 1, #all, 2 do
  local m, c = tonumber(all[i]), tonumber(all[i + 1])
  if m >= minute - ${DAY_MINUTES} then
    day = day + c
    if m >= minute - 60 then hour = hour + c end
  end
end
local seen = tonumber(redis.call('GET', KEYS[2]) or '')
return { hour, day, (seen == nil or seen < minute - ${SEEN_MINUTES}) and 1 or 0, redis.call('GET', KEYS[3]) or '0' }
`;

// A session's marks (see sessions.ts): one hash, mark → time last set, living ARGV[2] ms past the
// latest. MARK sets ARGV[3...] at now; READ answers now and the time of each of ARGV[3...] (nil: unset).
const MARK = `${CLOCK}
for i = 3, #ARGV do
  local at = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if now > at then redis.call('HSET', KEYS[1], ARGV[i], now) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
`;

const READ = `${CLOCK}
local out = { now }
for i = 3, #ARGV do out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i]) end
return out
`;

interface Script {
  readonly source: string;
  readonly sha: string;
}

const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
const SCRIPTS = { consume: script(CONSUME), settle: script(SETTLE), record: script(RECORD), summary: script(SUMMARY), mark: script(MARK), read: script(READ) };

/** Runs a script by hash, sending its source only when Redis does not know it yet (after a restart). */
async function run(redis: RedisCommands, s: Script, keys: readonly string[], args: readonly string[]): Promise<unknown> {
  const options = { timeout: REDIS_TIMEOUT_MS, rejectInFlight: true };
  try {
    try {
      return await redis.sendCommand(['EVALSHA', s.sha, String(keys.length), ...keys, ...args], options);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return await redis.sendCommand(['EVAL', s.source, String(keys.length), ...keys, ...args], options);
    }
  } catch (err) {
    throw new ValetError('VALET_ERR_COUNTERS_UNAVAILABLE', `Shared counters unavailable: ${redisFailure(err)}; nothing was forwarded.`, { cause: err });
  }
}

/** Why Redis failed, in words that hold no URL or password. */
export function redisFailure(err: unknown): string {
  const e = err as { name?: string; code?: string; message?: string } | undefined;
  const name = `${e?.name ?? ''} ${e?.code ?? ''} ${e?.message === 'The client is offline' || e?.message === 'The client is closed' ? 'Offline' : ''}`;
  if (/Offline|Closed|Socket|ECONN|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|EPIPE/.test(name)) return 'Redis is unreachable';
  if (/Timeout/.test(name)) return `Redis did not answer within ${REDIS_TIMEOUT_MS / 1000} s`;
  return `Redis answered with an error: ${String((err as Error | undefined)?.message ?? err).slice(0, 200)}`;
}

/**
 * Counters and history in Redis, shared by every instance pointed at it, atomic across them: each
 * decision is one Lua script over all its charges, with the algorithm of counters.ts.
 *
 * Keys: `<prefix>{counters}:<windowMs>:<key>` for counters. The hash tag `{counters}` puts every
 * counter in one cluster slot, because one decision may charge an agent's, its tenant's and the
 * global counter together and a script may only touch keys of one slot; the price is that
 * counters live on one shard of a cluster. History: `<prefix>h:{<key>}` (calls per minute) and
 * `<prefix>s:{<key>}` (last minute seen), tagged by their key so the pair shares a slot.
 */
export function redisCounterStores(redis: RedisCommands, options: RedisStoreOptions = {}): { counters: CounterStore; history: HistoryStore; sessions: SessionStore } {
  const prefix = options.prefix ?? 'valet:';
  const server = (options.clock ?? 'server') === 'server';
  const at = (now: number): string => (server ? '' : String(now));
  const historyKeys = (key: string): string[] => [`${prefix}h:{${key}}`, `${prefix}s:{${key}}`, `${prefix}v:{${key}}`];
  const read = async (key: string, now: number): Promise<VersionedHistory> => {
    const r = (await run(redis, SCRIPTS.summary, historyKeys(key), [at(now)])) as [number, number, number, string];
    return { summary: { calls_last_hour: BigInt(r[0] ?? 0), calls_last_day: BigInt(r[1] ?? 0), first_use: r[2] === 1 }, version: String(r[3]) };
  };
  return {
    counters: {
      async tryConsume(charges, now) {
        if (charges.length === 0) return { ok: true };
        const keys: string[] = [];
        const args = [at(now)];
        for (const c of charges) {
          keys.push(`${prefix}{counters}:${c.windowMs}:${c.key}`);
          args.push(String(c.windowMs), String(c.limit), String(c.cost));
        }
        const r = (await run(redis, SCRIPTS.consume, keys, args)) as (number | string)[];
        if (r[0] !== 1) return { ok: false, index: Number(r[1]), retryAfterMs: Number(r[2]) < 0 ? null : Number(r[2]) };
        const placed = charges.map((_, i) => ({ slot: Number(r[1 + 2 * i]), used: Number(r[2 + 2 * i]) }));
        return { ok: true, placed };
      },
      async settle(adjustments, now) {
        if (adjustments.length === 0) return [];
        const keys: string[] = [];
        const args = [at(now)];
        for (const a of adjustments) {
          keys.push(`${prefix}{counters}:${a.windowMs}:${a.key}`);
          args.push(String(a.windowMs), String(a.slot), String(a.delta));
        }
        return ((await run(redis, SCRIPTS.settle, keys, args)) as string[]).map(Number);
      },
    },
    history: {
      shared: true,
      async record(key, now) {
        await run(redis, SCRIPTS.record, historyKeys(key), [at(now), '']);
      },
      async summary(key, now): Promise<HistorySummary> {
        return (await read(key, now)).summary;
      },
      read,
      async recordIfUnchanged(key, now, version) {
        return (await run(redis, SCRIPTS.record, historyKeys(key), [at(now), version])) === 1;
      },
    },
    sessions: {
      shared: true,
      async read(session, names, now): Promise<SessionMarks> {
        const r = (await run(redis, SCRIPTS.read, [`${prefix}q:{${session}}`], [at(now), '0', ...names])) as (number | string | null)[];
        const set: Record<string, number | null> = {};
        names.forEach((n, i) => {
          const v = r[i + 1];
          set[n] = v === null || v === undefined ? null : Number(v);
        });
        return { set, now: Number(r[0]) };
      },
      async mark(session, names, now) {
        if (names.length === 0) return;
        await run(redis, SCRIPTS.mark, [`${prefix}q:{${session}}`], [at(now), String(options.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS), ...names]);
      },
    },
  };
}

/**
 * Shared counters that fall back, for charges marked `failOpen`, to counters on this instance
 * alone while the shared ones fail. A decision with any other charge fails closed.
 */
export function withLocalFallback(shared: CounterStore, local: LocalCounterStore = memoryCounterStore()): CounterStore {
  return {
    tryConsume(charges, now) {
      const r = shared.tryConsume(charges, now);
      if (!(r instanceof Promise)) return r;
      return r.catch((err: unknown): ConsumeResult => {
        if (charges.length === 0 || !charges.every((c: CounterCharge) => c.failOpen === true)) throw err;
        return local.tryConsume(charges, now);
      });
    },
    // A settlement that cannot reach the shared store is also made on the local one: if the charge
    // fell back there, that is where it is; if not, the local counters only err towards more spent.
    settle(adjustments, now) {
      const r = shared.settle(adjustments, now);
      if (!(r instanceof Promise)) return r;
      return r.catch(() => local.settle(adjustments, now));
    },
  };
}

/** A connection to Redis for counters: the stores, why it cannot serve (for `/readyz`), and close. */
export interface RedisCounters {
  readonly counters: CounterStore;
  readonly history: HistoryStore;
  readonly sessions: SessionStore;
  /** undefined while Redis is connected; otherwise why not, in words without the URL. */
  problem(): string | undefined;
  close(): Promise<void>;
}

/**
 * Connects to Redis without waiting: start-up does not need it, requests meanwhile fail closed
 * (503) or fall back where `fail_open`. Commands are never queued while disconnected (they fail at
 * once), and the client reconnects by itself, backing off up to 2 s.
 */
export function connectRedisCounters(url: string, options: { prefix: string; sessionTtlMs?: number; onError?: (message: string) => void }): RedisCounters {
  let lastError: string | undefined = 'connecting to Redis';
  const client = createClient({
    url,
    disableOfflineQueue: true,
    socket: { connectTimeout: REDIS_TIMEOUT_MS, reconnectStrategy: (retries: number) => Math.min(50 * 2 ** retries, 2_000) },
  });
  client.on('error', (err: unknown) => {
    const message = redisFailure(err);
    if (message !== lastError) options.onError?.(message);
    lastError = message;
  });
  client.on('ready', () => {
    lastError = undefined;
  });
  client.connect().catch(() => undefined);
  const stores = redisCounterStores(client as unknown as RedisCommands, { prefix: options.prefix, ...(options.sessionTtlMs !== undefined && { sessionTtlMs: options.sessionTtlMs }) });
  return {
    counters: withLocalFallback(stores.counters),
    history: stores.history,
    sessions: stores.sessions,
    problem: () => (client.isReady ? undefined : (lastError ?? 'Redis is unreachable')),
    async close() {
      client.destroy();
    },
  };
}
