import pg from 'pg';
import { META_COLUMNS, sha256 } from '../chain.js';
import { ensureSchema, guardPool, urlOptions } from '../../postgres.js';

/**
 * The audit log's tables on PostgreSQL and the connection settings every process uses with them.
 *
 * - `audit_log`: the same columns, in the same order, as the SQLite table (exports and the admin
 *   API see the same rows), plus `instance`: the gateway that wrote the decision (bookkeeping, like
 *   `chain_seq`, neither hashed nor returned), so that at start an instance completes only its own
 *   unfinished rows.
 * - `audit_chain`: the events of the one hash chain (gateway/audit/chain.ts), shared by every instance.
 * - `audit_head`: one row, the chain's head, the next row id and the latest recording time. A writer
 *   reads and advances it under `pg_advisory_xact_lock(chain lock)`, so the instances append to one
 *   chain in commit order, ids never repeat (even after every row was pruned), and `logged_at` never
 *   decreases as ids grow, whatever the instances' clocks say.
 */

/** Where the log lives: the database URL and the schema its tables are in. */
export interface PgAuditSettings {
  readonly url: string;
  /** Default `public`. Created at start if missing. */
  readonly schema?: string | undefined;
}

/** The row columns in storage order (SQLite's order); `instance` is stored too but never read back. */
export const ROW_COLUMNS = [
  'id', 'ts', 'request_id', 'agent', 'tenant', 'user', 'upstream', 'method', 'path', 'decision', 'rule', 'reason', 'status',
  'upstream_status', 'error_code', 'duration_ms', 'bytes_in', 'bytes_out', 'policy_version', 'tool', 'approval_id', 'approver',
  'approval_reason', 'approval_at', 'logged_at', 'chain_seq', 'outcome_seq', 'args', 'upstream_request_id', 'act', 'rpc',
  'team', 'model', 'tokens', 'cost', 'usage', 'shadow', 'facts', 'response',
] as const;

/** What {@link rowDigest} covers: the content columns sorted by name. */
export const DIGEST_COLUMNS: readonly string[] = ROW_COLUMNS.filter((c) => !META_COLUMNS.has(c)).sort();

/** Columns whose values are integers in PostgreSQL (a fraction would be rounded by the database; the writer rounds first). */
export const INTEGER_COLUMNS: ReadonlySet<string> = new Set(['id', 'ts', 'status', 'upstream_status', 'bytes_in', 'bytes_out', 'approval_at', 'logged_at', 'chain_seq', 'outcome_seq', 'tokens']);
export const NUMERIC_COLUMNS: ReadonlySet<string> = new Set([...INTEGER_COLUMNS, 'duration_ms', 'cost']);

/** `SELECT` list of {@link ROW_COLUMNS} (`user` is a reserved word). */
export const SELECT_ROW = ROW_COLUMNS.map((c) => `"${c}"`).join(', ');

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE audit_log (
     id              BIGINT PRIMARY KEY,
     ts              BIGINT NOT NULL,
     request_id      TEXT   NOT NULL,
     agent           TEXT,
     tenant          TEXT,
     "user"          TEXT,
     upstream        TEXT,
     method          TEXT   NOT NULL,
     path            TEXT   NOT NULL,
     decision        TEXT,
     rule            TEXT,
     reason          TEXT,
     status          INTEGER NOT NULL,
     upstream_status INTEGER,
     error_code      TEXT,
     duration_ms     DOUBLE PRECISION NOT NULL,
     bytes_in        BIGINT NOT NULL,
     bytes_out       BIGINT NOT NULL,
     policy_version  TEXT,
     tool            TEXT,
     approval_id     TEXT,
     approver        TEXT,
     approval_reason TEXT,
     approval_at     BIGINT,
     logged_at       BIGINT NOT NULL,
     chain_seq       BIGINT,
     outcome_seq     BIGINT,
     args            TEXT,
     instance        TEXT
   );
   CREATE INDEX audit_log_ts ON audit_log (ts);
   CREATE INDEX audit_log_logged_at ON audit_log (logged_at);
   CREATE INDEX audit_log_request_id ON audit_log (request_id, id);
   CREATE INDEX audit_log_agent ON audit_log (agent, id) WHERE agent IS NOT NULL;
   CREATE INDEX audit_log_tenant ON audit_log (tenant, id) WHERE tenant IS NOT NULL;
   CREATE INDEX audit_log_user ON audit_log ("user", id) WHERE "user" IS NOT NULL;
   CREATE INDEX audit_log_upstream ON audit_log (upstream, id) WHERE upstream IS NOT NULL;
   CREATE INDEX audit_log_tool ON audit_log (tool, id) WHERE tool IS NOT NULL;
   CREATE INDEX audit_log_decision ON audit_log (decision, id);
   CREATE INDEX audit_log_rule ON audit_log (rule, id) WHERE rule IS NOT NULL;
   CREATE INDEX audit_log_status ON audit_log (status, id);
   CREATE INDEX audit_log_approval_id ON audit_log (approval_id) WHERE approval_id IS NOT NULL;
   CREATE INDEX audit_log_unfinished ON audit_log (instance) WHERE outcome_seq IS NULL AND status = 0;
   CREATE TABLE audit_chain (
     seq    BIGINT PRIMARY KEY,
     row_id BIGINT NOT NULL,
     kind   SMALLINT NOT NULL,
     hash   BYTEA NOT NULL,
     ts     BIGINT,
     tenant TEXT,
     digest BYTEA,
     note   TEXT
   );
   CREATE INDEX audit_chain_prune ON audit_chain (seq) WHERE kind = 4;
   CREATE TABLE audit_head (
     one       BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
     seq       BIGINT NOT NULL,
     hash      BYTEA  NOT NULL,
     next_id   BIGINT NOT NULL,
     logged_at BIGINT NOT NULL
   );
   INSERT INTO audit_head (seq, hash, next_id, logged_at) VALUES (0, '\\x${'00'.repeat(32)}', 1, 0);`,
  // The upstream's own request id, beside Valet's (null columns are left out of a row's digest).
  `ALTER TABLE audit_log ADD COLUMN upstream_request_id TEXT;`,
  // The RFC 8693 delegation chain (null columns are left out of a row's digest).
  `ALTER TABLE audit_log ADD COLUMN act TEXT;`,
  // An MCP message's JSON-RPC method, id and session.
  `ALTER TABLE audit_log ADD COLUMN rpc TEXT;`,
  // The agent's team, and what an LLM call used: its model, tokens, cost and usage by kind (JSON).
  `ALTER TABLE audit_log ADD COLUMN team TEXT;
   ALTER TABLE audit_log ADD COLUMN model TEXT;
   ALTER TABLE audit_log ADD COLUMN tokens BIGINT;
   ALTER TABLE audit_log ADD COLUMN cost DOUBLE PRECISION;
   ALTER TABLE audit_log ADD COLUMN usage TEXT;`,
  // What the rules in shadow mode would have decided (JSON), beside the enforced decision.
  `ALTER TABLE audit_log ADD COLUMN shadow TEXT;`,
  // What the decision was made on, sealed (gateway/audit/facts.ts), for `valet policy replay`.
  `ALTER TABLE audit_log ADD COLUMN facts TEXT;`,
  // What response rules did to the answer (JSON).
  `ALTER TABLE audit_log ADD COLUMN response TEXT;`,
  // Request facts sealed one batch per commit and tenant (gateway/audit/facts.ts, `v2`), which rows'
  // `facts` refer to; `rows`: how many rows still do, so retention deletes a batch with its last row.
  `CREATE TABLE audit_facts (id BIGSERIAL PRIMARY KEY, rows INTEGER NOT NULL, sealed TEXT NOT NULL);`,
];

/** A 64-bit advisory lock key, per schema and purpose (the locks are per database: schemas must not share them). */
export function lockKey(schema: string, purpose: 'chain' | 'migrate'): string {
  return sha256(`valet-audit:${schema}:${purpose}`).readBigInt64BE(0).toString();
}

const quoteIdent = (s: string): string => `"${s.replace(/"/g, '""')}"`;

/** int8 (ids, times, counts) as numbers: every value the log holds is below 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => (oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser,
};

/**
 * A pool on the log's schema. Commits are durable (`synchronous_commit = on`, whatever the server's
 * default or the URL's `options` say); a statement that waits longer than `statementTimeoutMs` (the
 * chain lock, a lost server) fails, so a request is refused rather than held. The writer's
 * statements are prepared once per connection (parsed once) and planned at every execution
 * (`plan_cache_mode = force_custom_plan`): a generic plan made while the table was small (a
 * sequential scan) would otherwise be kept as it grows to millions of rows.
 */
export function createPool(s: PgAuditSettings, o: { max?: number; statementTimeoutMs?: number; connectTimeoutMs?: number; pipeline?: boolean } = {}): pg.Pool {
  const schema = s.schema ?? 'public';
  // The URL's options first, the log's own after them (the last wins).
  const { url, options } = urlOptions(s.url);
  const own = `-c search_path=${quoteIdent(schema).replace(/ /g, '\\ ')} -c synchronous_commit=on -c plan_cache_mode=force_custom_plan`;
  const pool = new pg.Pool({
    connectionString: url,
    max: o.max ?? 4,
    connectionTimeoutMillis: o.connectTimeoutMs ?? 5_000,
    statement_timeout: o.statementTimeoutMs ?? 10_000,
    options: options === '' ? own : `${options} ${own}`,
    application_name: 'valet-audit',
    types,
    // The writer's: a query is sent without waiting for the answer to the one before (see appendOps).
    ...(o.pipeline === true && { pipeline: true }),
  });
  // A lost connection must not crash the process: the writer logs the failed commit itself.
  return guardPool(pool, () => undefined);
}

/**
 * Creates the schema and applies the migrations not yet applied, under a session advisory lock:
 * instances starting together wait for one another, and each applies only what is still missing.
 */
export async function migrate(pool: pg.Pool, schema = 'public'): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1::bigint)', [lockKey(schema, 'migrate')]);
    try {
      await ensureSchema(client, schema);
      await client.query('CREATE TABLE IF NOT EXISTS audit_schema_version (version INTEGER NOT NULL)');
      const r = await client.query<{ version: number }>('SELECT version FROM audit_schema_version');
      let version = r.rows[0]?.version ?? 0;
      if (r.rows.length === 0) await client.query('INSERT INTO audit_schema_version (version) VALUES (0)');
      for (; version < MIGRATIONS.length; version++) {
        await client.query('BEGIN');
        try {
          await client.query(MIGRATIONS[version] as string);
          await client.query('UPDATE audit_schema_version SET version = $1', [version + 1]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw err;
        }
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1::bigint)', [lockKey(schema, 'migrate')]);
    }
  } finally {
    client.release();
  }
}

/** Whether the log's tables exist (a reader does not create them). */
export async function migrated(pool: pg.Pool): Promise<boolean> {
  const r = await pool.query<{ t: string | null }>("SELECT to_regclass('audit_head')::text AS t");
  return r.rows[0]?.t != null;
}
