import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The shared test server (trust auth); every suite works in schemas of its own. */
export const PG_BASE_URL = process.env['VALET_TEST_POSTGRES_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A connection URL that puts every statement in `schema`. */
export const pgUrlFor = (schema: string): string => `${PG_BASE_URL}?options=${encodeURIComponent(`-c search_path=${schema}`)}`;

export interface PgSchemas {
  /** Creates a new empty schema and returns a URL that works in it. */
  fresh(): Promise<{ schema: string; url: string }>;
  /** Runs SQL in a schema (to tamper with rows, or end a connection). */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(schema: string, sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  /** Drops every schema this suite created. */
  dropAll(): Promise<void>;
}

/** Random schemas for one test file (`valet_t_<random>_<n>`), dropped after it. */
export function pgSchemas(): PgSchemas {
  const prefix = `valet_t_${randomBytes(5).toString('hex')}`;
  const created: string[] = [];
  const admin = new pg.Pool({ connectionString: PG_BASE_URL, max: 2 });
  return {
    async fresh() {
      const schema = `${prefix}_${created.length}`;
      await admin.query(`CREATE SCHEMA ${schema}`);
      created.push(schema);
      return { schema, url: pgUrlFor(schema) };
    },
    async query(schema, sql, params = []) {
      const c = await admin.connect();
      try {
        await c.query(`SET search_path TO ${schema}`);
        return await c.query(sql, params);
      } finally {
        await c.query('RESET search_path').catch(() => undefined);
        c.release();
      }
    },
    async dropAll() {
      for (const s of created.splice(0)) await admin.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
      await admin.end();
    },
  };
}
