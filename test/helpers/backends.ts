import { createHash, randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { createClient } from '@redis/client';
import pg from 'pg';
import { PG_BASE_URL, pgUrlFor } from './postgres.js';

/**
 * Which backends the gateways a test starts use. `npm test` runs the integration, security and
 * browser suites twice (vitest.config.ts): once embedded (SQLite, in-memory counters) and once with
 * `VALET_TEST_BACKENDS=shared`, where every deployment a test makes (one data directory: the
 * gateways started on it and the CLI commands run against it) gets its own PostgreSQL schema for
 * audit, approvals and secrets, and its own Redis key prefix for counters.
 */
export const SHARED_BACKENDS = process.env['VALET_TEST_BACKENDS'] === 'shared';

export const REDIS_TEST_URL = process.env['VALET_TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379';

/** Schema → the keys every instance of that deployment shares (a fleet has no development key). */
const made = new Map<string, Record<string, string>>();

/** The deployment's name, from its data directory: a restart on the same directory finds the same state. */
const deploymentOf = (dataDir: string): string => `valet_t_${createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 16)}`;

/** The Redis key prefix of the deployment on `dataDir` (written into its `gateway.counters.redis.prefix`). */
export const redisPrefixFor = (dataDir: string): string => `${deploymentOf(dataDir)}:`;

/**
 * The environment that points a gateway or a CLI command at the deployment on `dataDir`: empty
 * when embedded; otherwise `VALET_POSTGRES_URL` (its schema, which Valet's migrations create),
 * `VALET_REDIS_URL`, and the master and approval-link keys every instance of a fleet must share.
 */
export function backendEnv(dataDir: string): Record<string, string> {
  if (!SHARED_BACKENDS) return {};
  const schema = deploymentOf(dataDir);
  let keys = made.get(schema);
  if (keys === undefined) {
    keys = { VALET_MASTER_KEY: randomBytes(32).toString('base64'), VALET_APPROVAL_LINK_KEY: randomBytes(32).toString('base64url') };
    made.set(schema, keys);
  }
  return { VALET_POSTGRES_URL: pgUrlFor(schema), VALET_REDIS_URL: REDIS_TEST_URL, ...keys };
}

/** Drops every schema and Redis key this test file's deployments made (vitest's setup file runs it after each file). */
export async function dropDeployments(): Promise<void> {
  if (made.size === 0) return;
  const schemas = [...made.keys()];
  made.clear();
  const admin = new pg.Pool({ connectionString: PG_BASE_URL, max: 1 });
  try {
    for (const s of schemas) await admin.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  } finally {
    await admin.end();
  }
  const redis = createClient({ url: REDIS_TEST_URL });
  await redis.connect();
  try {
    for (const s of schemas) {
      for await (const keys of redis.scanIterator({ MATCH: `${s}:*`, COUNT: 1000 })) if (keys.length > 0) await redis.del(keys);
    }
  } finally {
    redis.destroy();
  }
}

/** Runs SQL in the deployment's PostgreSQL schema (to read or tamper behind the gateway's back). */
export async function deploymentQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(dataDir: string, text: string, params: unknown[] = []): Promise<R[]> {
  const url = backendEnv(dataDir)['VALET_POSTGRES_URL'];
  if (url === undefined) throw new Error('deploymentQuery: the deployment is embedded (SQLite)');
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, params)).rows;
  } finally {
    await c.end();
  }
}

/**
 * Every row of every table in the deployment's schema, as text per table (byte columns as Latin-1):
 * what a search for leaked secrets reads, like the bytes of the SQLite files on the embedded backend.
 */
export async function deploymentDump(dataDir: string): Promise<Record<string, string>> {
  const schema = deploymentOf(dataDir);
  const tables = await deploymentQuery<{ table_name: string }>(dataDir, 'SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [schema]);
  const out: Record<string, string> = {};
  for (const { table_name: t } of tables) {
    const rows = await deploymentQuery(dataDir, `SELECT * FROM "${t}"`);
    out[t] = JSON.stringify(rows, (_k, v: unknown) => (v !== null && typeof v === 'object' && (v as { type?: string }).type === 'Buffer' ? Buffer.from((v as { data: number[] }).data).toString('latin1') : typeof v === 'bigint' ? String(v) : v));
  }
  return out;
}
