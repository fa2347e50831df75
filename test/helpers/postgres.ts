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

/** The same server, for suites that give Valet a schema name (`gateway.audit.postgres.schema`). */
export const PG_URL = PG_BASE_URL;

/** A fresh schema name, random per call: several engineers and test files share the server. */
export function freshSchema(prefix = 'valet_audit'): string {
  return `${prefix}_${randomBytes(6).toString('hex')}`;
}

/** Drops a schema made by {@link freshSchema} and everything in it. */
export async function dropSchema(schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await c.end();
  }
}

/** Runs one statement in `schema` (for tampering behind the writer's back). */
export async function sql(schema: string, text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: PG_URL, options: `-c search_path=${schema}` });
  await c.connect();
  try {
    return await c.query(text, params);
  } finally {
    await c.end();
  }
}
