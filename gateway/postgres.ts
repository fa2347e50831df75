import pg from 'pg';
import { ConfigError, ValetError } from './errors.js';

/**
 * What the PostgreSQL backends (approvals, secrets) share: a pool whose 64-bit integers come back
 * as numbers (every one is a millisecond time or a small counter), versioned migrations run under
 * an advisory lock so instances starting together migrate once, and a LISTEN connection that
 * reconnects by itself. The URL may carry `options=-c search_path=<schema>` to keep a fleet (or a
 * test) in its own schema. No URL or password ever reaches a log line or an error message.
 */

const INT8_OID = 20;
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary'): (value: string) => unknown {
    if (oid === INT8_OID && format !== 'binary') return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format ?? 'text') as (value: string) => unknown;
  },
};

/** A message safe to log about a failed connection or query: the driver's code and text, no URL. */
export function pgProblem(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? `${e.code}: ` : '';
  return `${code}${typeof e.message === 'string' ? e.message : String(err)}`;
}

/**
 * Makes a lost connection harmless to the process. The pool hears about idle connections; a
 * connection checked out between two queries of a transaction (no query in flight) emits its
 * error on the client itself, which without a listener is an uncaught exception that ends the
 * gateway. The transaction's next query then fails, and the pool drops the broken client.
 */
export function guardPool(pool: pg.Pool, onError: (problem: string) => void): pg.Pool {
  pool.on('error', (err) => onError(pgProblem(err)));
  pool.on('connect', (client) => client.on('error', (err) => onError(pgProblem(err))));
  return pool;
}

/** Opens a pool; `onError` hears about connections that failed (the pool replaces them). */
export function openPgPool(url: string, applicationName: string, onError: (problem: string) => void): pg.Pool {
  return guardPool(new pg.Pool({ connectionString: url, max: 10, application_name: applicationName, types, connectionTimeoutMillis: 10_000 }), onError);
}

/**
 * Runs the migrations `table` has not seen yet, in one transaction, while holding a session
 * advisory lock named after `table`: two instances starting at once never both run a migration.
 * `table` holds one row, the number of migrations applied; a database from a newer Valet is
 * refused, never downgraded.
 */
export async function migratePg(pool: pg.Pool, table: string, migrations: readonly string[]): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [`valet:migrate:${table}`]);
    try {
      // The schema the URL's search_path names is created when missing, as the audit log's is.
      const path = (await client.query<{ search_path: string }>('SHOW search_path')).rows[0]?.search_path.split(',')[0]?.trim();
      if (path !== undefined && /^[a-z_][a-z0-9_]*$/.test(path) && path !== 'public') await ensureSchema(client, path);
      await client.query('BEGIN');
      await client.query(`CREATE TABLE IF NOT EXISTS ${table} (version integer NOT NULL)`);
      const r = await client.query<{ version: number }>(`SELECT version FROM ${table}`);
      const current = r.rows[0]?.version ?? 0;
      if (current > migrations.length) {
        throw new ValetError('VALET_ERR_CONFIG', `the PostgreSQL schema of ${table} was written by a newer Valet (schema ${current}); upgrade Valet`);
      }
      for (let v = current; v < migrations.length; v++) await client.query(migrations[v] as string);
      if (r.rows.length === 0) await client.query(`INSERT INTO ${table} (version) VALUES ($1)`, [migrations.length]);
      else await client.query(`UPDATE ${table} SET version = $1`, [migrations.length]);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [`valet:migrate:${table}`]).catch(() => undefined);
    }
  } finally {
    client.release();
  }
}

/**
 * `CREATE SCHEMA IF NOT EXISTS`, safe beside another process doing the same (PostgreSQL's IF NOT
 * EXISTS can still fail with a duplicate when two run at once). Outside a transaction.
 */
export async function ensureSchema(client: pg.ClientBase, schema: string): Promise<void> {
  try {
    await client.query(`CREATE SCHEMA IF NOT EXISTS "${schema.replace(/"/g, '""')}"`);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== '23505' && code !== '42P06') throw err;
  }
}

/** Runs `fn` in a transaction on one pooled connection. */
export async function inTransaction<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

export interface PgListener {
  /** undefined while LISTEN is in place; otherwise why not (never a URL or a password). */
  problem(): string | undefined;
  close(): Promise<void>;
}

export interface PgListenOptions {
  readonly url: string;
  readonly channel: string;
  readonly applicationName: string;
  /** A notification's payload. */
  onNotify(payload: string): void;
  /**
   * After the connection was (re-)established and LISTEN is in place, with the time the previous
   * connection was lost (undefined the first time): notifications sent meanwhile were missed, so
   * the caller re-reads what they would have told it.
   */
  onListening(lostAt: number | undefined): void;
  onError(problem: string): void;
  /** Delay before reconnecting (ms); default 250, doubling up to 5 s. */
  readonly retryMs?: number;
}

/**
 * Keeps one connection LISTENing on `channel`: when it drops, it is replaced (with backoff) and
 * `onListening` tells the caller to catch up. Resolves once the first LISTEN is in place.
 */
export async function listenPg(o: PgListenOptions): Promise<PgListener> {
  let closed = false;
  let client: pg.Client | undefined;
  let timer: NodeJS.Timeout | undefined;
  let delay = o.retryMs ?? 250;
  let lastProblem = 'reconnecting to PostgreSQL';

  const connect = async (lostAt: number | undefined): Promise<void> => {
    const c = new pg.Client({ connectionString: o.url, application_name: o.applicationName, types, connectionTimeoutMillis: 10_000 });
    // Until LISTEN is in place a failure is the caller's (the rejected promise), not a reconnect.
    const early = (): void => undefined;
    c.on('error', early);
    try {
      await c.connect();
      await c.query(`LISTEN ${o.channel}`);
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
    if (closed) {
      await c.end().catch(() => undefined);
      return;
    }
    let lost = false;
    const onLost = (err?: Error): void => {
      if (lost) return;
      lost = true;
      lastProblem = err !== undefined ? pgProblem(err) : 'the PostgreSQL connection ended';
      if (err !== undefined) o.onError(lastProblem);
      c.removeAllListeners('notification');
      c.end().catch(() => undefined);
      if (client === c) client = undefined;
      schedule(Date.now());
    };
    c.off('error', early);
    c.on('error', onLost);
    c.on('end', () => onLost());
    c.on('notification', (n) => {
      if (n.channel === o.channel && n.payload !== undefined) o.onNotify(n.payload);
    });
    client = c;
    delay = o.retryMs ?? 250;
    o.onListening(lostAt);
  };

  const schedule = (lostAt: number): void => {
    if (closed || timer !== undefined) return;
    timer = setTimeout(() => {
      timer = undefined;
      connect(lostAt).catch((err: unknown) => {
        lastProblem = pgProblem(err);
        o.onError(lastProblem);
        delay = Math.min(delay * 2, 5_000);
        schedule(lostAt);
      });
    }, delay);
    timer.unref();
  };

  await connect(undefined);
  return {
    problem: () => (client !== undefined ? undefined : lastProblem),
    async close() {
      closed = true;
      if (timer !== undefined) clearTimeout(timer);
      const c = client;
      client = undefined;
      if (c !== undefined) {
        c.removeAllListeners('end');
        c.removeAllListeners('error');
        c.on('error', () => undefined);
        await c.end().catch(() => undefined);
      }
    },
  };
}

/** Whether a URL is a PostgreSQL connection URL (validated at start, never per request). */
export const PG_URL = /^postgres(ql)?:\/\//;

/**
 * The PostgreSQL URL a kind of state (`gateway.approvals`, `gateway.secrets`) uses, or undefined
 * for the embedded SQLite backend. `VALET_POSTGRES_URL`, when set, overrides the configured URL
 * and selects PostgreSQL, so one configuration directory runs embedded or as a fleet.
 */
export function postgresUrlFor(path: string, backend: 'sqlite' | 'postgres' | undefined, url: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  const fromEnv = env['VALET_POSTGRES_URL'];
  const chosen = fromEnv !== undefined && fromEnv !== '' ? fromEnv : url;
  if (backend !== 'postgres' && (fromEnv === undefined || fromEnv === '')) return undefined;
  if (chosen === undefined || !PG_URL.test(chosen)) {
    throw new ConfigError([
      { file: 'gateway', line: 0, column: 0, path: `${path}.postgres.url`, message: `the postgres backend needs a postgres:// URL (${path}.postgres.url or VALET_POSTGRES_URL)` },
    ]);
  }
  return chosen;
}

/** The schema a connection URL puts first in `search_path` (`?options=-c search_path=<schema>`), if any. */
export function urlSchema(url: string): string | undefined {
  const m = /search_path=([^\s,]+)/.exec(urlOptions(url).options);
  return m?.[1]?.replace(/^"(.*)"$/, '$1');
}

/**
 * A connection URL without its `options` parameter, and that parameter ('' when it has none, or is
 * not a URL the driver would read it from). node-postgres lets a URL's `options` replace a pool's
 * own: a pool with settings of its own sends the URL's first and its own after them.
 */
export function urlOptions(url: string): { url: string; options: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return { url, options: '' };
  }
  const options = u.searchParams.get('options');
  if (options === null) return { url, options: '' };
  u.searchParams.delete('options');
  return { url: u.toString(), options };
}
