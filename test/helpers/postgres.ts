import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The shared test server (trust auth); each test file works in a schema of its own. */
export const PG_URL = process.env['VALET_TEST_POSTGRES_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';

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
