/** One counter to charge: `cost` against `limit` in any window of `windowMs`. */
export interface CounterCharge {
  readonly key: string;
  readonly windowMs: number;
  readonly limit: number;
  readonly cost: number;
  /**
   * When a shared store (Redis) cannot be reached, this charge falls back to a limiter local to the
   * instance instead of failing the request (`fail_open: true` on the limit or budget).
   */
  readonly failOpen?: boolean;
}

/**
 * Admitted: for each charge, the slot its cost went into (to settle it later) and the counter's
 * total after it. Refused: the first charge that did not fit, and when it will (null: never, its
 * cost is above the limit).
 */
export type ConsumeResult = { ok: true; placed?: readonly Placed[] } | { ok: false; index: number; retryAfterMs: number | null };

/** Where an admitted charge went: its slot, and the counter's total in the window after it. */
export interface Placed {
  readonly slot: number;
  readonly used: number;
}

/**
 * A correction to a charge already admitted (a budget's reservation settled to what was spent):
 * a negative `delta` is given back to the slot the charge went into (nothing if that slot has left
 * the window); a positive one is added to the slot of `now` whatever the limit (it was spent).
 */
export interface CounterAdjustment {
  readonly key: string;
  readonly windowMs: number;
  readonly slot: number;
  readonly delta: number;
}

/**
 * Rate-limit and budget counters. `tryConsume` is atomic over all its charges: either every
 * counter takes its cost, or none changes and the first that would overflow is named. Keys are
 * opaque strings built by the policy (tenant-scoped, unambiguous); a store only compares them.
 * The store in the data directory (`counters-db.ts`) and the in-memory one share the algorithm
 * below, and the Redis one (`counters-redis.ts`) runs it in a Lua script.
 *
 * A store in the process answers at once; a shared one answers with a Promise (and rejects with
 * VALET_ERR_COUNTERS_UNAVAILABLE when it cannot decide). Callers await only a Promise, so the
 * embedded path costs no extra turn of the event loop.
 *
 * The algorithm is a sliding log kept in slots, which never lets more than `limit` through in any
 * closed interval of `windowMs`, wherever it starts:
 *
 * - A counter is a list of slots, each `{slot, last, used}`: the cost charged while the clock was in
 *   that slot (`windowMs / SLOTS_PER_WINDOW` wide) and the time of its latest charge.
 * - At time `t` a slot counts while `last >= t - windowMs`; a charge is admitted when the counted
 *   total plus its cost is at most `limit`, and is added to the slot of `t`.
 * - Every charge in a slot happened at or before the slot's `last`, so every charge made in
 *   `[t - windowMs, t]` is counted at `t`. Take any interval `[a, a + windowMs]` and the last charge
 *   admitted in it, at `t`: all the others in the interval were made at or after `a >= t - windowMs`,
 *   so they were counted when `t` was admitted, and the interval holds at most `limit`.
 * - The price of bounded memory (at most `SLOTS_PER_WINDOW + 1` slots per counter) is caution, not
 *   excess: a charge counts until its slot's `last` leaves the window, at most one slot width
 *   (1/60 of the window) after the charge itself does.
 *
 * `retryAfterMs` is exact for this algorithm: the first moment enough of the oldest slots have left
 * the window for the refused cost to fit (a cost above `limit` never fits: the whole window).
 */
export interface CounterStore {
  tryConsume(charges: readonly CounterCharge[], now: number): ConsumeResult | Promise<ConsumeResult>;
  /** Applies corrections to admitted charges; answers each counter's total after its correction. */
  settle(adjustments: readonly CounterAdjustment[], now: number): readonly number[] | Promise<readonly number[]>;
}

/** A store in the process (memory, counters.db): it answers at once. */
export interface LocalCounterStore extends CounterStore {
  tryConsume(charges: readonly CounterCharge[], now: number): ConsumeResult;
  settle(adjustments: readonly CounterAdjustment[], now: number): readonly number[];
}

/** One slot of a counter, in slot order. */
export interface CounterSlot {
  readonly slot: number;
  readonly last: number;
  readonly used: number;
}

/** How many slots a window is cut into: the bound on a counter's size and on its caution. */
export const SLOTS_PER_WINDOW = 60;

/** The slots still inside the window at `now`. */
export function liveSlots(slots: readonly CounterSlot[], windowMs: number, now: number): CounterSlot[] {
  const from = now - windowMs;
  return slots.filter((s) => s.last >= from);
}

/** undefined if `c` fits beside the live slots (oldest first), else the milliseconds until it will (null: never). */
export function refusal(live: readonly CounterSlot[], c: CounterCharge, now: number): number | null | undefined {
  let excess = c.cost - c.limit;
  for (const s of live) excess += s.used;
  if (excess <= 0) return undefined;
  // A cost above the limit never fits: waiting cannot help.
  if (c.cost > c.limit) return null;
  for (const s of live) {
    excess -= s.used;
    // A slot stops counting once `last < t - windowMs`; with millisecond clocks, one past the edge.
    if (excess <= 0) return Math.floor(s.last + c.windowMs - now) + 1;
  }
  return c.windowMs;
}

/** The total of live slots. */
export function usedIn(live: readonly CounterSlot[]): number {
  let used = 0;
  for (const s of live) used += s.used;
  return used;
}

/**
 * The slot a charge at `now` goes into: the clock's, or the newest if the clock went back (a
 * later `last` only makes the slot count longer).
 */
export function slotFor(live: readonly CounterSlot[], windowMs: number, now: number): number {
  const slot = Math.floor(now / Math.max(1, Math.ceil(windowMs / SLOTS_PER_WINDOW)));
  const newest = live.at(-1);
  return newest === undefined ? slot : Math.max(slot, newest.slot);
}

/** One counter as a store holds it: its slots, oldest first (none: nothing left to count). */
export interface CounterState {
  readonly key: string;
  readonly windowMs: number;
  readonly slots: readonly CounterSlot[];
}

export interface MemoryCounterOptions {
  /** Counters to start from (those kept in counters.db). */
  readonly initial?: Iterable<CounterState>;
  /** Told of every counter a charge changed, as it now is, so that it can be written behind. */
  readonly changed?: (state: CounterState) => void;
}

/**
 * In-process counters: atomic because the event loop runs one call at a time. Alone they serve
 * policy tests and the CLI; with `initial` and `changed`, counters.db keeps them across restarts.
 */
export function memoryCounterStore(options: MemoryCounterOptions = {}): LocalCounterStore {
  const counters = new Map<string, CounterState>();
  // The window is part of a counter's identity: a reload may change it under the same key.
  const id = (key: string, windowMs: number): string => `${windowMs} ${key}`;
  for (const c of options.initial ?? []) counters.set(id(c.key, c.windowMs), c);
  const changed = options.changed;
  let calls = 0;
  return {
    tryConsume(charges, now) {
      if (++calls % 10_000 === 0) {
        for (const [k, c] of counters) if (liveSlots(c.slots, c.windowMs, now).length === 0) counters.delete(k);
      }
      const live = charges.map((c) => liveSlots(counters.get(id(c.key, c.windowMs))?.slots ?? [], c.windowMs, now));
      for (const [i, c] of charges.entries()) {
        const retryAfterMs = refusal(live[i] as CounterSlot[], c, now);
        if (retryAfterMs !== undefined) return { ok: false, index: i, retryAfterMs };
      }
      const placed: Placed[] = [];
      for (const [i, c] of charges.entries()) {
        const slots = live[i] as CounterSlot[];
        placed.push({ slot: add(slots, c.windowMs, c.cost, now), used: usedIn(slots) });
        put(c.key, c.windowMs, slots);
      }
      return { ok: true, placed };
    },
    settle(adjustments, now) {
      return adjustments.map((a) => {
        const slots = liveSlots(counters.get(id(a.key, a.windowMs))?.slots ?? [], a.windowMs, now);
        if (a.delta > 0) add(slots, a.windowMs, a.delta, now);
        else if (a.delta < 0) {
          const at = slots.findIndex((s) => s.slot === a.slot);
          const s = slots[at];
          if (s !== undefined) slots[at] = { ...s, used: Math.max(0, s.used + a.delta) };
        }
        put(a.key, a.windowMs, slots);
        return usedIn(slots);
      });
    },
  };
  function put(key: string, windowMs: number, slots: CounterSlot[]): void {
    const state: CounterState = { key, windowMs, slots };
    counters.set(id(key, windowMs), state);
    changed?.(state);
  }
}

/** Adds `cost` to the slot of `now` (the newest, if the clock went back); answers that slot. */
function add(slots: CounterSlot[], windowMs: number, cost: number, now: number): number {
  const slot = slotFor(slots, windowMs, now);
  const newest = slots.at(-1);
  if (newest?.slot === slot) slots[slots.length - 1] = { slot, last: Math.max(newest.last, now), used: newest.used + cost };
  else slots.push({ slot, last: now, used: cost });
  return slot;
}

/** What conditions see as `history`: the agent's recent calls of this tool (or route). */
export interface HistorySummary {
  readonly calls_last_hour: bigint;
  readonly calls_last_day: bigint;
  readonly first_use: boolean;
}

/**
 * Calls per key (the policy's tenant-scoped encoding of agent and tool), counted per minute. A
 * summary rounds out to whole minutes, erring towards more calls: `calls_last_hour` counts the
 * current minute and the 60 before it, `calls_last_day` the current minute and the 1440 before.
 */
export interface HistoryStore {
  /**
   * A store outside the process (Redis): `summary` answers with a Promise, so the policy asks it
   * before evaluation when a condition reads `history`.
   */
  readonly shared?: boolean;
  /** Synchronous in the process; a shared store's Promise rejects with VALET_ERR_COUNTERS_UNAVAILABLE. */
  record(key: string, now: number): void | Promise<void>;
  /** Read while CEL runs (synchronously): a Promise must be resolved first (`Policy.resolveHistory`). */
  summary(key: string, now: number): HistorySummary | Promise<HistorySummary>;
  /**
   * A shared store only: the summary with the version of the key's history it was read at. Calls
   * decided on other instances come between reading and recording; {@link recordIfUnchanged}
   * makes a decision on a summary count only if the summary still holds.
   */
  read?(key: string, now: number): Promise<VersionedHistory>;
  /** A shared store only: records the call if no other was recorded since `version` was read; false (nothing recorded) otherwise. */
  recordIfUnchanged?(key: string, now: number, version: string): Promise<boolean>;
}

/** A summary and the version of the history it was read from (see {@link HistoryStore.read}). */
export interface VersionedHistory {
  readonly summary: HistorySummary;
  readonly version: string;
}

/** A history store in the process (memory, counters.db): it answers at once. */
export interface LocalHistoryStore extends HistoryStore {
  record(key: string, now: number): void;
  summary(key: string, now: number): HistorySummary;
}

export const HISTORY_MINUTE_MS = 60_000;
const HOUR_MINUTES = 60;
export const DAY_MINUTES = 1440;

/** The minute of `now` and the first minute of the hour and the day summaries count. */
export function historyMinutes(now: number): { minute: number; hour: number; day: number } {
  const minute = Math.floor(now / HISTORY_MINUTE_MS);
  return { minute, hour: minute - HOUR_MINUTES, day: minute - DAY_MINUTES };
}

/** Calls of one key in one minute. */
export interface MinuteCalls {
  readonly key: string;
  readonly minute: number;
  readonly calls: number;
}

export interface MemoryHistoryOptions {
  /** Calls and keys seen (with the last minute each was) to start from (those kept in counters.db). */
  readonly initial?: { readonly calls: Iterable<MinuteCalls>; readonly seen: Iterable<{ readonly key: string; readonly minute: number }> };
  /** Told of every minute a record changed, with its count now (its key was seen in that minute). */
  readonly changed?: (calls: MinuteCalls) => void;
}

/** How long a key is remembered as seen: `first_use` is true for a call not made for this long. */
export const SEEN_DAYS = 90;
export const SEEN_MINUTES = SEEN_DAYS * DAY_MINUTES;

/** Recent calls per key, in minutes for a day, plus whether the key was seen in the last {@link SEEN_DAYS} days. */
export function memoryHistoryStore(options: MemoryHistoryOptions = {}): LocalHistoryStore {
  const calls = new Map<string, { minute: number; calls: number }[]>();
  // Key → the last minute it was seen. Bounded by time, not count: a route key per distinct path
  // would otherwise grow for ever.
  const seen = new Map<string, number>();
  for (const s of options.initial?.seen ?? []) seen.set(s.key, s.minute);
  for (const c of options.initial?.calls ?? []) {
    const list = calls.get(c.key) ?? [];
    list.push({ minute: c.minute, calls: c.calls });
    calls.set(c.key, list);
  }
  for (const list of calls.values()) list.sort((a, b) => a.minute - b.minute);
  const changed = options.changed;
  const recent = (key: string, day: number): { minute: number; calls: number }[] => {
    const list = calls.get(key) ?? [];
    let drop = 0;
    while (drop < list.length && (list[drop] as { minute: number }).minute < day) drop++;
    if (drop > 0) list.splice(0, drop);
    return list;
  };
  let records = 0;
  return {
    record(key, now) {
      const { minute, day } = historyMinutes(now);
      if (++records % 10_000 === 0) {
        for (const [k, list] of calls) if ((list.at(-1)?.minute ?? day - 1) < day) calls.delete(k);
        for (const [k, last] of seen) if (last < minute - SEEN_MINUTES) seen.delete(k);
      }
      seen.set(key, Math.max(minute, seen.get(key) ?? minute));
      const list = recent(key, day);
      let newest = list.at(-1);
      if (newest !== undefined && newest.minute >= minute) newest.calls++;
      else list.push((newest = { minute, calls: 1 }));
      calls.set(key, list);
      changed?.({ key, minute: newest.minute, calls: newest.calls });
    },
    summary(key, now) {
      const { hour, day } = historyMinutes(now);
      let inHour = 0;
      let inDay = 0;
      for (const m of recent(key, day)) {
        inDay += m.calls;
        if (m.minute >= hour) inHour += m.calls;
      }
      const last = seen.get(key);
      return { calls_last_hour: BigInt(inHour), calls_last_day: BigInt(inDay), first_use: last === undefined || last < historyMinutes(now).minute - SEEN_MINUTES };
    },
  };
}
