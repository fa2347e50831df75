import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type pg from 'pg';
import { postgresSettings } from './audit/backend.js';
import { verifyInSnapshot } from './audit/postgres/log.js';
import { createPool, lockKey } from './audit/postgres/schema.js';
import { AuditCore, writerLock } from './audit/sqlite/core.js';
import { readJournal } from './audit/sqlite/journal.js';
import { AUDIT_FILE } from './audit/sqlite/store.js';
import { APPROVALS_FILE } from './approvals/sqlite/store.js';
import { DEFAULT_APPROVAL_SETTINGS, DEFAULT_AUDIT, type Config } from './config/types.js';
import { ValetError } from './errors.js';
import { instanceId } from './instance.js';
import { migrateSharedBackends } from './migrate.js';
import { inTransaction, openPgPool, postgresUrlFor } from './postgres.js';
import { parseMasterKey } from './secrets/crypto.js';
import { SECRETS_CHANNEL } from './secrets/postgres/store.js';
import { openSqliteSecretStore, SECRETS_FILE } from './secrets/sqlite/store.js';
import { secretVariable } from './secrets/variable.js';

/** What `valet migrate --from sqlite` copied for one kind of state. */
export interface Imported {
  readonly kind: 'audit log' | 'approvals' | 'secrets';
  readonly summary: string;
}

type Row = Record<string, unknown>;

/** Rows per INSERT statement (PostgreSQL takes at most 65,535 parameters in one). */
const BATCH = 500;

/**
 * Copies what an embedded gateway kept in its data directory into the PostgreSQL backends the
 * configuration (or `VALET_POSTGRES_URL`) selects, so an installation moves to a fleet without
 * losing its history:
 *
 * - the audit log row for row and event for event, hashes and ids unchanged: the chain verifies on
 *   PostgreSQL with the same head, so anchors written before the move still check it;
 * - approvals (a pending async approval can be approved and used on any instance afterwards; one
 *   that held a request of the stopped gateway is aborted, as a restart would);
 * - the secret store's ciphertexts, unchanged, after checking that `VALET_MASTER_KEY` (which every
 *   instance of the fleet needs) opens them.
 *
 * The gateway must be stopped (its audit writer lock is taken for the whole copy). Every target
 * must be empty, checked for all before anything is written; each kind is copied in one
 * transaction, so a failure leaves it empty and the command can be run again. The SQLite files are
 * only read. Counters (rate-limit windows, call history) are not copied: they start afresh in Redis.
 */
export async function importFromSqlite(config: Pick<Config, 'gateway'>, dataDir: string, env: NodeJS.ProcessEnv): Promise<Imported[]> {
  const g = config.gateway;
  const audit = postgresSettings(g.audit ?? DEFAULT_AUDIT, env);
  const approvals = g.approvals ?? DEFAULT_APPROVAL_SETTINGS;
  const approvalsUrl = postgresUrlFor('gateway.approvals', approvals.backend, approvals.postgres.url, env);
  const secretsUrl = postgresUrlFor('gateway.secrets', g.secrets?.backend, g.secrets?.postgres?.url, env);
  const has = (file: string): boolean => existsSync(join(dataDir, file));
  const plan = {
    audit: audit !== undefined && has(AUDIT_FILE) ? audit : undefined,
    approvals: approvalsUrl !== undefined && has(APPROVALS_FILE) ? approvalsUrl : undefined,
    secrets: secretsUrl !== undefined && has(SECRETS_FILE) ? secretsUrl : undefined,
  };
  if (plan.audit === undefined && plan.approvals === undefined && plan.secrets === undefined) {
    throw new ValetError(
      'VALET_ERR_CONFIG',
      audit === undefined && approvalsUrl === undefined && secretsUrl === undefined
        ? 'nothing to migrate to: no backend is on PostgreSQL (set VALET_POSTGRES_URL or gateway.<audit|approvals|secrets>.backend: postgres)'
        : `nothing to migrate from: ${dataDir} holds no ${AUDIT_FILE}, ${APPROVALS_FILE} or ${SECRETS_FILE}`,
    );
  }

  // A gateway that was killed left decisions in its journal without rows: they are written (as
  // VALET_ERR_OUTCOME_UNKNOWN rows) by the writer that takes the lock, as at the next start.
  if (plan.audit !== undefined && readJournal(dataDir).files.length > 0) new AuditCore(dataDir).close();
  const lock = writerLock(dataDir);
  if (lock === undefined) throw new ValetError('VALET_ERR_CONFIG', `a gateway is running on ${dataDir}: stop it before moving its state to PostgreSQL`);
  const open: Database.Database[] = [];
  const pools: pg.Pool[] = [];
  const sqlite = (file: string): Database.Database => {
    const db = new Database(join(dataDir, file), { readonly: true, fileMustExist: true });
    open.push(db);
    return db;
  };
  try {
    await migrateSharedBackends(config, env);
    const auditPool = plan.audit && createPool(plan.audit, { statementTimeoutMs: 0 });
    const approvalsPool = plan.approvals && openPgPool(plan.approvals, 'valet-migrate', () => undefined);
    const secretsPool = plan.secrets && openPgPool(plan.secrets, 'valet-migrate', () => undefined);
    for (const p of [auditPool, approvalsPool, secretsPool]) if (p) pools.push(p);

    // Every check before any write.
    const notEmpty = async (pool: pg.Pool, table: string, what: string): Promise<void> => {
      const n = Number((await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)).rows[0]?.n ?? 0);
      if (n > 0) throw new ValetError('VALET_ERR_CONFIG', `the PostgreSQL ${what} already holds ${n} row(s): migrate into empty tables (a fresh schema), nothing was copied`);
    };
    if (auditPool) {
      await notEmpty(auditPool, 'audit_chain', 'audit log');
      await notEmpty(auditPool, 'audit_log', 'audit log');
    }
    if (approvalsPool) await notEmpty(approvalsPool, 'approvals', 'approvals table');
    if (secretsPool) {
      await notEmpty(secretsPool, 'secrets', 'secret store');
      const text = secretVariable(env, 'VALET_MASTER_KEY', g.environment, 'VALET_ERR_MASTER_KEY');
      if (text === undefined) {
        throw new ValetError(
          'VALET_ERR_MASTER_KEY',
          `no master key: every instance of the fleet opens the shared store with VALET_MASTER_KEY (or VALET_MASTER_KEY_FILE); set it to the key this gateway used${has('master-key') ? ` (a development key is in ${join(dataDir, 'master-key')})` : ''}`,
        );
      }
      // Throws VALET_ERR_MASTER_KEY when the key is not the store's: the fleet could not read it.
      await openSqliteSecretStore(dataDir, { key: parseMasterKey(text.value, text.source) }).close();
    }

    const done: Imported[] = [];
    if (auditPool && plan.audit) done.push(await copyAudit(sqlite(AUDIT_FILE), auditPool, plan.audit.schema ?? 'public', instanceId(dataDir, env)));
    if (approvalsPool) done.push(await copyApprovals(sqlite(APPROVALS_FILE), approvalsPool, instanceId(dataDir, env)));
    if (secretsPool) done.push(await copySecrets(sqlite(SECRETS_FILE), secretsPool));
    return done;
  } finally {
    for (const db of open) db.close();
    for (const p of pools) await p.end();
    lock.close();
  }
}

/** Inserts rows in batches of multi-row INSERTs; `columns` are quoted as given. */
async function insertAll(c: pg.PoolClient, table: string, columns: readonly string[], rows: Iterable<Row>): Promise<number> {
  const quoted = columns.map((k) => `"${k}"`).join(', ');
  let batch: unknown[][] = [];
  let n = 0;
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const values = batch.map((_, i) => `(${columns.map((_k, j) => `$${i * columns.length + j + 1}`).join(', ')})`).join(', ');
    await c.query(`INSERT INTO ${table} (${quoted}) VALUES ${values}`, batch.flat());
    n += batch.length;
    batch = [];
  };
  for (const row of rows) {
    batch.push(columns.map((k) => row[k] ?? null));
    if (batch.length === BATCH) await flush();
  }
  await flush();
  return n;
}

/** The columns two tables share (a source may be of an older schema; the target may have more). */
const shared = (db: Database.Database, table: string, target: readonly string[]): string[] => {
  const source = new Set((db.pragma(`table_info(${table})`) as { name: string }[]).map((c) => c.name));
  return target.filter((c) => source.has(c));
};

async function targetColumns(c: pg.PoolClient, table: string): Promise<string[]> {
  const r = await c.query<{ column_name: string }>(
    'SELECT column_name FROM information_schema.columns WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position',
    [table],
  );
  return r.rows.map((x) => x.column_name);
}

async function copyAudit(db: Database.Database, pool: pg.Pool, schema: string, instance: string): Promise<Imported> {
  return inTransaction(pool, async (c) => {
    // The chain lock: no instance may append while the chain is being laid down.
    await c.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(schema, 'chain')]);
    const rowColumns = shared(db, 'audit_log', await targetColumns(c, 'audit_log'));
    const rows = await insertAll(
      c,
      'audit_log',
      [...rowColumns, 'instance'],
      (function* () {
        for (const r of db.prepare(`SELECT ${rowColumns.map((k) => `"${k}"`).join(', ')} FROM audit_log ORDER BY id`).iterate() as Iterable<Row>) yield { ...r, instance };
      })(),
    );
    // The batches of sealed request facts the rows refer to (ids kept: the references name them).
    const factsBatches = shared(db, 'audit_facts', await targetColumns(c, 'audit_facts'));
    if (factsBatches.length > 0) {
      await insertAll(c, 'audit_facts', factsBatches, db.prepare(`SELECT ${factsBatches.join(', ')} FROM audit_facts ORDER BY id`).iterate() as Iterable<Row>);
      await c.query("SELECT setval(pg_get_serial_sequence('audit_facts', 'id'), (SELECT coalesce(max(id), 0) + 1 FROM audit_facts), false)");
    }
    const eventColumns = shared(db, 'audit_chain', await targetColumns(c, 'audit_chain'));
    const events = await insertAll(c, 'audit_chain', eventColumns, db.prepare(`SELECT ${eventColumns.join(', ')} FROM audit_chain ORDER BY seq`).iterate() as Iterable<Row>);
    const head = db.prepare('SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: Buffer } | undefined;
    const ids = db.prepare('SELECT coalesce(max(id), 0) AS id, coalesce(max(logged_at), 0) AS at FROM audit_log').get() as { id: number; at: number };
    if (head !== undefined) {
      // next_id past every id ever used (a pruned log's ids are not reused), as the SQLite log does.
      const seqMax = Math.max(ids.id, (db.prepare('SELECT coalesce(max(row_id), 0) AS m FROM audit_chain').get() as { m: number }).m);
      await c.query('UPDATE audit_head SET seq = $1, hash = $2, next_id = $3, logged_at = $4', [head.seq, head.hash, seqMax + 1, ids.at]);
    }
    // Checked as `valet audit verify` would, inside the transaction: a chain that does not verify is not committed.
    const result = await verifyInSnapshot(c, [], 1);
    if (!result.ok) throw new ValetError('VALET_ERR_AUDIT_UNAVAILABLE', `the copied audit chain does not verify (${result.problems[0]?.message ?? 'unknown problem'}); nothing was copied — run valet audit verify on the SQLite log`);
    const hex = head === undefined ? 'empty' : `head ${head.hash.toString('hex').slice(0, 16)}… at event ${head.seq}`;
    return { kind: 'audit log', summary: `${rows} row(s), ${events} chain event(s); ${hex}; verified` };
  });
}

async function copyApprovals(db: Database.Database, pool: pg.Pool, instance: string): Promise<Imported> {
  const now = Date.now();
  return inTransaction(pool, async (c) => {
    const columns = shared(db, 'approvals', await targetColumns(c, 'approvals'));
    let aborted = 0;
    const rows = await insertAll(
      c,
      'approvals',
      [...columns, 'instance_id'],
      (function* () {
        for (const r of db.prepare(`SELECT ${columns.map((k) => `"${k}"`).join(', ')} FROM approvals`).iterate() as Iterable<Row>) {
          // The request a hold approval kept waiting belonged to the stopped gateway: it can never be answered.
          if (r['mode'] === 'hold' && (r['status'] === 'pending' || r['status'] === 'approved')) {
            aborted++;
            yield { ...r, status: 'aborted', resolution_reason: 'the gateway stopped while the request was held', resolved_at: now, instance_id: instance };
          } else yield { ...r, instance_id: instance };
        }
      })(),
    );
    const linkColumns = shared(db, 'approval_links_used', await targetColumns(c, 'approval_links_used'));
    const links = await insertAll(c, 'approval_links_used', linkColumns, db.prepare(`SELECT ${linkColumns.join(', ')} FROM approval_links_used`).iterate() as Iterable<Row>);
    const pending = (db.prepare("SELECT count(*) AS n FROM approvals WHERE mode = 'async' AND status IN ('pending', 'approved')").get() as { n: number }).n;
    return { kind: 'approvals', summary: `${rows} approval(s) (${pending} async still open, ${aborted} held one(s) aborted), ${links} used link(s)` };
  });
}

async function copySecrets(db: Database.Database, pool: pg.Pool): Promise<Imported> {
  return inTransaction(pool, async (c) => {
    const meta = await insertAll(c, 'secrets_meta', ['key', 'value'], db.prepare('SELECT key, value FROM store_meta').iterate() as Iterable<Row>);
    const columns = shared(db, 'secrets', await targetColumns(c, 'secrets'));
    // Ids unchanged: a version's ciphertext is bound to its secret.
    const secrets = await insertAll(c, 'secrets', columns, db.prepare(`SELECT ${columns.join(', ')} FROM secrets ORDER BY id`).iterate() as Iterable<Row>);
    const versionColumns = shared(db, 'secret_versions', await targetColumns(c, 'secret_versions'));
    const versions = await insertAll(c, 'secret_versions', versionColumns, db.prepare(`SELECT ${versionColumns.join(', ')} FROM secret_versions`).iterate() as Iterable<Row>);
    await c.query("SELECT setval(pg_get_serial_sequence('secrets', 'id'), greatest((SELECT max(id) FROM secrets), 1))");
    await c.query('UPDATE secrets_state SET generation = generation + 1');
    await c.query(`NOTIFY ${SECRETS_CHANNEL}`);
    return { kind: 'secrets', summary: `${secrets} secret(s), ${versions} version(s), ${meta} key check(s); still encrypted under the same master key` };
  });
}
