import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import {
  DAY_MINUTES,
  historyMinutes,
  liveSlots,
  refusal,
  slotFor,
  type CounterCharge,
  type CounterSlot,
  type CounterStore,
  type HistoryStore,
} from './counters.js';

/**
 * Rate limits, budgets and call history live in `<data>/counters.db`, so that a restart neither
 * refills a daily budget nor makes every call a first use. A file of its own, like approvals.db:
 * its writes (one small transaction per charged or forwarded request) never queue behind the audit
 * writer's batches, and its schema version is its own.
 */
export const COUNTERS_FILE = 'counters.db';

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE counter_slots (
     key       TEXT    NOT NULL,
     window_ms INTEGER NOT NULL,
     slot      INTEGER NOT NULL,
     last_at   REAL    NOT NULL,
     used      REAL    NOT NULL,
     PRIMARY KEY (key, window_ms, slot)
   ) WITHOUT ROWID;
   CREATE TABLE history_calls (
     key    TEXT    NOT NULL,
     minute INTEGER NOT NULL,
     calls  INTEGER NOT NULL,
     PRIMARY KEY (key, minute)
   ) WITHOUT ROWID;
   CREATE TABLE history_seen (key TEXT PRIMARY KEY) WITHOUT ROWID;`,
];

/** Every this many charges (or records), expired slots (or minutes) of all keys are deleted. */
const SWEEP_EVERY = 10_000;

export interface CounterDatabase {
  readonly counters: CounterStore;
  readonly history: HistoryStore;
  close(): void;
}

/** Opens (creating, mode 0600, and migrating if needed) `<dataDir>/counters.db` in WAL mode. */
export function openCounterDatabase(dataDir: string, now: () => number = Date.now): CounterDatabase {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = join(dataDir, COUNTERS_FILE);
  // Created 0600 before SQLite opens it: its -wal and -shm files take the same mode.
  closeSync(openSync(file, 'a', 0o600));
  try {
    chmodSync(file, 0o600);
  } catch {
    // not ours to change (a mounted file); SQLite still works
  }
  const db = new Database(file);
  db.pragma('busy_timeout = 5000');
  db.pragma('journal_mode = WAL');
  // A crash of the process loses nothing; a power cut may lose the last commits, like approvals.db.
  db.pragma('synchronous = NORMAL');
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    db.close();
    throw new Error(`${file} has schema version ${current}, newer than this Valet knows (${MIGRATIONS.length})`);
  }
  db.transaction(() => {
    for (let v = current; v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v] as string);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  })();

  const s = {
    slots: db.prepare<[string, number], CounterSlot>('SELECT slot, last_at AS last, used FROM counter_slots WHERE key = ? AND window_ms = ? ORDER BY slot'),
    expire: db.prepare<[string, number, number]>('DELETE FROM counter_slots WHERE key = ? AND window_ms = ? AND last_at < ?'),
    charge: db.prepare<[string, number, number, number, number]>(
      `INSERT INTO counter_slots (key, window_ms, slot, last_at, used) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (key, window_ms, slot) DO UPDATE SET last_at = max(last_at, excluded.last_at), used = used + excluded.used`,
    ),
    sweepSlots: db.prepare<[number]>('DELETE FROM counter_slots WHERE last_at + window_ms < ?'),
    call: db.prepare<[string, number]>('INSERT INTO history_calls (key, minute, calls) VALUES (?, ?, 1) ON CONFLICT (key, minute) DO UPDATE SET calls = calls + 1'),
    see: db.prepare<[string]>('INSERT OR IGNORE INTO history_seen (key) VALUES (?)'),
    calls: db.prepare<[number, string, number], { hour: number; day: number }>(
      `SELECT coalesce(sum(CASE WHEN minute >= ? THEN calls ELSE 0 END), 0) AS hour, coalesce(sum(calls), 0) AS day
       FROM history_calls WHERE key = ? AND minute >= ?`,
    ),
    seen: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM history_seen WHERE key = ?'),
    sweepCalls: db.prepare<[number]>('DELETE FROM history_calls WHERE minute < ?'),
  };
  const sweep = (at: number): void => {
    s.sweepSlots.run(at);
    s.sweepCalls.run(historyMinutes(at).day);
  };
  sweep(now());

  // IMMEDIATE: the check and the charge hold the write lock together, so even a second process on
  // the same file could not slip a charge in between.
  const consume = db.transaction((charges: readonly CounterCharge[], at: number) => {
    const live: CounterSlot[][] = [];
    for (const [i, c] of charges.entries()) {
      const all = s.slots.all(c.key, c.windowMs);
      const slots = liveSlots(all, c.windowMs, at);
      if (slots.length < all.length) s.expire.run(c.key, c.windowMs, at - c.windowMs);
      const retryAfterMs = refusal(slots, c, at);
      if (retryAfterMs !== undefined) return { ok: false as const, index: i, retryAfterMs };
      live.push(slots);
    }
    for (const [i, c] of charges.entries()) s.charge.run(c.key, c.windowMs, slotFor(live[i] as CounterSlot[], c.windowMs, at), at, c.cost);
    return { ok: true as const };
  });
  const record = db.transaction((key: string, minute: number) => {
    s.call.run(key, minute);
    s.see.run(key);
  });

  let charges = 0;
  let records = 0;
  return {
    counters: {
      tryConsume(list, at) {
        if (++charges % SWEEP_EVERY === 0) s.sweepSlots.run(at);
        return consume.immediate(list, at);
      },
    },
    history: {
      record(key, at) {
        const { minute } = historyMinutes(at);
        if (++records % SWEEP_EVERY === 0) s.sweepCalls.run(minute - DAY_MINUTES);
        record(key, minute);
      },
      summary(key, at) {
        const { hour, day } = historyMinutes(at);
        const r = s.calls.get(hour, key, day) as { hour: number; day: number };
        return { calls_last_hour: BigInt(r.hour), calls_last_day: BigInt(r.day), first_use: s.seen.get(key) === undefined };
      },
    },
    close: () => db.close(),
  };
}
