import { createHash } from 'node:crypto';
import { DEFAULT_SESSION_TTL_MS } from '../config/types.js';

/**
 * What happened earlier in an agent's session, for call sequences (`requires`, `blocked_by`): a
 * set of marks, each with the time it was last set. A mark is `called <tool>` (the call was
 * forwarded) or `ok <tool>` (its upstream answered 2xx), optionally followed by a digest of the
 * argument values a rule compares (`same:`), so "the same pull request" can be asked for.
 *
 * A session is idle-expired: its marks are forgotten `ttlMs` after the last one was set.
 */
export interface SessionStore {
  /** A store outside the process (Redis): reads answer with a Promise, resolved before evaluation. */
  readonly shared?: boolean;
  /** The marks of `session` among `names` that are set, with the time each was last set. */
  read(session: string, names: readonly string[], now: number): SessionMarks | Promise<SessionMarks>;
  /** Sets `names` in `session` at `now` (a shared store: at its own clock). */
  mark(session: string, names: readonly string[], now: number): void | Promise<void>;
}

/**
 * The marks read, each with the time it was last set (null: not set), and the clock they were read
 * at (a shared store's own, so `within` compares like with like). Plain JSON: it is kept with the
 * request's facts for replay.
 */
export interface SessionMarks {
  readonly set: Readonly<Record<string, number | null>>;
  readonly now: number;
}

/** A session store in the process (memory, counters.db): it answers at once. */
export interface LocalSessionStore extends SessionStore {
  read(session: string, names: readonly string[], now: number): SessionMarks;
  mark(session: string, names: readonly string[], now: number): void;
}

/** A session's marks as the store in the process keeps them. */
export interface SessionState {
  readonly session: string;
  readonly marks: ReadonlyMap<string, number>;
  /** The latest of the marks' times: the session expires `ttlMs` after it. */
  readonly last: number;
}


export interface MemorySessionOptions {
  readonly ttlMs?: number | undefined;
  /** Sessions to start from (those kept in counters.db). */
  readonly initial?: Iterable<SessionState>;
  /** Told of every mark set, so that it can be written behind. */
  readonly changed?: (session: string, name: string, at: number) => void;
}

/** Sessions in the process: policy tests, the CLI, and (with counters.db behind it) one gateway. */
export function memorySessionStore(options: MemorySessionOptions = {}): LocalSessionStore {
  const ttl = options.ttlMs ?? DEFAULT_SESSION_TTL_MS;
  const sessions = new Map<string, { marks: Map<string, number>; last: number }>();
  for (const s of options.initial ?? []) sessions.set(s.session, { marks: new Map(s.marks), last: s.last });
  let writes = 0;
  const live = (session: string, now: number): { marks: Map<string, number>; last: number } | undefined => {
    const s = sessions.get(session);
    if (s !== undefined && s.last < now - ttl) {
      sessions.delete(session);
      return undefined;
    }
    return s;
  };
  return {
    read(session, names, now) {
      const s = live(session, now);
      const set: Record<string, number | null> = {};
      for (const n of names) set[n] = s?.marks.get(n) ?? null;
      return { set, now };
    },
    mark(session, names, now) {
      if (names.length === 0) return;
      if (++writes % 10_000 === 0) for (const [k, s] of sessions) if (s.last < now - ttl) sessions.delete(k);
      let s = live(session, now);
      if (s === undefined) sessions.set(session, (s = { marks: new Map(), last: now }));
      s.last = Math.max(s.last, now);
      for (const n of names) {
        s.marks.set(n, Math.max(now, s.marks.get(n) ?? now));
        options.changed?.(session, n, now);
      }
    },
  };
}

/** A forwarded call of `tool`. */
export function calledMark(tool: string, digest?: string): string {
  return digest === undefined ? `called ${tool}` : `called ${tool} ${digest}`;
}

/** A call of `tool` its upstream answered with a 2xx status. */
export function okMark(tool: string, digest?: string): string {
  return digest === undefined ? `ok ${tool}` : `ok ${tool} ${digest}`;
}

/**
 * The digest of the values of `names` among a call's arguments (absent ones as null), so two calls
 * on the same object (owner, repository and number) share it. JSON keeps `1` and `"1"` apart.
 */
export function argsDigest(names: readonly string[], args: Readonly<Record<string, unknown>>): string {
  const values = names.map((n) => (n in args ? (args[n] ?? null) : null));
  return createHash('sha256')
    .update(JSON.stringify([names, values], (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)))
    .digest('base64url')
    .slice(0, 22);
}

/** A session's key in a store: its tenant, agent and id as JSON, so no agent can name another's session. */
export function sessionKey(tenant: string | undefined, agent: string, session: string): string {
  return JSON.stringify([tenant ?? null, agent, session]);
}
