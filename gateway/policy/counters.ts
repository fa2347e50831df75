/** One counter to charge: `cost` against `limit` per fixed window of `windowMs`. */
export interface CounterCharge {
  readonly key: string;
  readonly windowMs: number;
  readonly limit: number;
  readonly cost: number;
}

/**
 * Rate-limit and budget counters. `tryConsume` is atomic over all its charges: either every
 * counter takes its cost, or none changes and the first that would overflow is named. Shared
 * deployments put a Redis implementation behind the same interface.
 */
export interface CounterStore {
  tryConsume(charges: readonly CounterCharge[], now: number): { ok: true } | { ok: false; index: number; retryAfterMs: number };
}

/** In-process fixed-window counters; atomic because the event loop runs one call at a time. */
export function memoryCounterStore(): CounterStore {
  const windows = new Map<string, { start: number; used: number }>();
  let calls = 0;
  return {
    tryConsume(charges, now) {
      if (++calls % 10_000 === 0) {
        for (const [k, w] of windows) if (w.start + 86_400_000 * 31 < now) windows.delete(k);
      }
      const current = charges.map((c) => {
        const start = Math.floor(now / c.windowMs) * c.windowMs;
        const key = `${c.key}@${c.windowMs}`;
        const w = windows.get(key);
        return { key, start, used: w && w.start === start ? w.used : 0 };
      });
      for (const [i, c] of charges.entries()) {
        const w = current[i] as { start: number; used: number };
        if (w.used + c.cost > c.limit) return { ok: false, index: i, retryAfterMs: w.start + c.windowMs - now };
      }
      for (const [i, c] of charges.entries()) {
        const w = current[i] as { key: string; start: number; used: number };
        windows.set(w.key, { start: w.start, used: w.used + c.cost });
      }
      return { ok: true };
    },
  };
}

/** What conditions see as `history`: the agent's recent calls of this tool (or route). */
export interface HistorySummary {
  readonly calls_last_hour: bigint;
  readonly calls_last_day: bigint;
  readonly first_use: boolean;
}

export interface HistoryStore {
  record(agent: string, call: string, now: number): void;
  summary(agent: string, call: string, now: number): HistorySummary;
}

const DAY = 86_400_000;
const HOUR = 3_600_000;
const MAX_PER_KEY = 100_000;

/** Recent calls per agent and tool, kept for a day (bounded per key), plus whether ever seen. */
export function memoryHistoryStore(): HistoryStore {
  const calls = new Map<string, number[]>();
  const seen = new Set<string>();
  const prune = (list: number[], now: number): void => {
    let drop = 0;
    while (drop < list.length && (list[drop] as number) <= now - DAY) drop++;
    if (drop > 0) list.splice(0, drop);
  };
  return {
    record(agent, call, now) {
      const key = `${agent}\u0000${call}`;
      seen.add(key);
      const list = calls.get(key) ?? [];
      prune(list, now);
      if (list.length >= MAX_PER_KEY) list.shift();
      list.push(now);
      calls.set(key, list);
    },
    summary(agent, call, now) {
      const key = `${agent}\u0000${call}`;
      const list = calls.get(key) ?? [];
      prune(list, now);
      let hour = 0;
      for (let i = list.length - 1; i >= 0 && (list[i] as number) > now - HOUR; i--) hour++;
      return { calls_last_hour: BigInt(hour), calls_last_day: BigInt(list.length), first_use: !seen.has(key) };
    },
  };
}
