import { openPrivateDatabase } from '../sqlite.js';
import { DEFAULT_SESSION_TTL_MS } from '../config/types.js';
import { memorySessionStore, type LocalSessionStore } from './sessions.js';
import {
  historyMinutes,
  liveSlots,
  memoryCounterStore,
  memoryHistoryStore,
  SEEN_MINUTES,
  type CounterSlot,
  type CounterState,
  type LocalCounterStore,
  type LocalHistoryStore,
  type MinuteCalls,
} from './counters.js';

/**
 * Rate limits, budgets, call history and agents' sessions (call sequences) live in `<data>/counters.db`, so that a restart neither
 * refills a daily budget nor makes every call a first use. A file of its own, like approvals.db:
 * its writes never queue behind the audit writer's batches, and its schema version is its own.
 *
 * The counters themselves are in memory (the same algorithm as everywhere, `counters.ts`); what a
 * charge or a record changes is written behind, every {@link FLUSH_MS} in one transaction, and at
 * close. A check therefore costs what it costs in memory (a few µs, not a SQLite transaction on
 * the request path); a crash of the process loses at most the last {@link FLUSH_MS} of charges,
 * a clean stop none. One gateway process owns a data directory (the audit writer's lock), so no
 * other writer can charge the same counters meanwhile.
 */
export const COUNTERS_FILE = 'counters.db';

/** How often changed counters and history are written to counters.db. */
export const FLUSH_MS = 200;

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
   CREATE TABLE history_seen (key TEXT PRIMARY KEY, minute INTEGER NOT NULL) WITHOUT ROWID;`,
  // Call sequences: what each agent session did (sessions.ts), kept while the session is live.
  `CREATE TABLE session_marks (
     session TEXT NOT NULL,
     mark    TEXT NOT NULL,
     at      REAL NOT NULL,
     PRIMARY KEY (session, mark)
   ) WITHOUT ROWID;`,
];

export interface CounterDatabase {
  readonly counters: LocalCounterStore;
  readonly history: LocalHistoryStore;
  readonly sessions: LocalSessionStore;
  /** Writes what changed since the last flush (also done on a timer and at close). */
  flush(): void;
  close(): void;
}

/**
 * Opens (creating and migrating if needed) `<dataDir>/counters.db`, and
 * loads what still counts. `onError` hears of a write behind that failed (it is tried again).
 */
export function openCounterDatabase(
  dataDir: string,
  now: () => number = Date.now,
  onError: (err: unknown) => void = () => {},
  sessionTtlMs: number = DEFAULT_SESSION_TTL_MS,
): CounterDatabase {
  const db = openPrivateDatabase(dataDir, COUNTERS_FILE, MIGRATIONS);

  const s = {
    allSlots: db.prepare<[], { key: string; windowMs: number; slot: number; last: number; used: number }>(
      'SELECT key, window_ms AS windowMs, slot, last_at AS last, used FROM counter_slots ORDER BY key, window_ms, slot',
    ),
    allCalls: db.prepare<[number], MinuteCalls>('SELECT key, minute, calls FROM history_calls WHERE minute >= ?'),
    allSeen: db.prepare<[], { key: string; minute: number }>('SELECT key, minute FROM history_seen'),
    clearCounter: db.prepare<[string, number]>('DELETE FROM counter_slots WHERE key = ? AND window_ms = ?'),
    putSlot: db.prepare<[string, number, number, number, number]>('INSERT INTO counter_slots (key, window_ms, slot, last_at, used) VALUES (?, ?, ?, ?, ?)'),
    putCalls: db.prepare<[string, number, number]>(
      'INSERT INTO history_calls (key, minute, calls) VALUES (?, ?, ?) ON CONFLICT (key, minute) DO UPDATE SET calls = excluded.calls',
    ),
    see: db.prepare<[string, number]>(
      'INSERT INTO history_seen (key, minute) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET minute = max(minute, excluded.minute)',
    ),
    sweepSlots: db.prepare<[number]>('DELETE FROM counter_slots WHERE last_at + window_ms < ?'),
    sweepCalls: db.prepare<[number]>('DELETE FROM history_calls WHERE minute < ?'),
    sweepSeen: db.prepare<[number]>('DELETE FROM history_seen WHERE minute < ?'),
    allMarks: db.prepare<[], { session: string; mark: string; at: number }>('SELECT session, mark, at FROM session_marks ORDER BY session'),
    putMark: db.prepare<[string, string, number]>(
      'INSERT INTO session_marks (session, mark, at) VALUES (?, ?, ?) ON CONFLICT (session, mark) DO UPDATE SET at = max(at, excluded.at)',
    ),
    sweepMarks: db.prepare<[number]>('DELETE FROM session_marks WHERE session IN (SELECT session FROM session_marks GROUP BY session HAVING max(at) < ?)'),
  };
  const sweep = (at: number): void => {
    s.sweepSlots.run(at);
    const { minute, day } = historyMinutes(at);
    s.sweepCalls.run(day);
    s.sweepSeen.run(minute - SEEN_MINUTES);
    s.sweepMarks.run(at - sessionTtlMs);
  };
  const opened = now();
  sweep(opened);

  const initial = new Map<string, { key: string; windowMs: number; slots: CounterSlot[] }>();
  for (const row of s.allSlots.iterate()) {
    const id = `${row.windowMs} ${row.key}`;
    let c = initial.get(id);
    if (c === undefined) initial.set(id, (c = { key: row.key, windowMs: row.windowMs, slots: [] }));
    c.slots.push({ slot: row.slot, last: row.last, used: row.used });
  }
  for (const c of initial.values()) c.slots = liveSlots(c.slots, c.windowMs, opened);

  // What changed since the last flush: the latest state of each counter and of each minute's calls.
  let counterChanges = new Map<string, CounterState>();
  let callChanges = new Map<string, MinuteCalls>();
  const counters = memoryCounterStore({
    initial: initial.values(),
    changed: (c) => void counterChanges.set(`${c.windowMs} ${c.key}`, c),
  });
  const history = memoryHistoryStore({
    initial: { calls: s.allCalls.all(historyMinutes(opened).day), seen: s.allSeen.iterate() },
    changed: (c) => void callChanges.set(`${c.minute} ${c.key}`, c),
  });

  const initialSessions = new Map<string, { session: string; marks: Map<string, number>; last: number }>();
  for (const row of s.allMarks.iterate()) {
    let state = initialSessions.get(row.session);
    if (state === undefined) initialSessions.set(row.session, (state = { session: row.session, marks: new Map(), last: row.at }));
    state.marks.set(row.mark, row.at);
    state.last = Math.max(state.last, row.at);
  }
  let markChanges = new Map<string, { session: string; mark: string; at: number }>();
  const sessions = memorySessionStore({
    ttlMs: sessionTtlMs,
    initial: initialSessions.values(),
    changed: (session, mark, at) => void markChanges.set(JSON.stringify([session, mark]), { session, mark, at }),
  });

  let flushes = 0;
  const write = db.transaction((cs: Iterable<CounterState>, calls: Iterable<MinuteCalls>, marks: Iterable<{ session: string; mark: string; at: number }>) => {
    for (const m of marks) s.putMark.run(m.session, m.mark, m.at);
    for (const c of cs) {
      s.clearCounter.run(c.key, c.windowMs);
      for (const slot of c.slots) s.putSlot.run(c.key, c.windowMs, slot.slot, slot.last, slot.used);
    }
    for (const c of calls) {
      s.putCalls.run(c.key, c.minute, c.calls);
      s.see.run(c.key, c.minute);
    }
    if (++flushes % 1_000 === 0) sweep(now());
  });
  const flush = (): void => {
    if (counterChanges.size === 0 && callChanges.size === 0 && markChanges.size === 0) return;
    // Cleared only once written: a failed write is tried again with what arrives meanwhile.
    write(counterChanges.values(), callChanges.values(), markChanges.values());
    counterChanges = new Map();
    callChanges = new Map();
    markChanges = new Map();
  };
  const timer = setInterval(() => {
    try {
      flush();
    } catch (err) {
      onError(err);
    }
  }, FLUSH_MS);
  timer.unref();

  let closed = false;
  return {
    counters,
    history,
    sessions,
    flush,
    close() {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      try {
        flush();
      } finally {
        db.close();
      }
    },
  };
}
