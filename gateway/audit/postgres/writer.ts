import type { Logger } from 'pino';
import { batchRef, SEAL_FAILED, sealByTenant, type FactsKey, type TenantBatch } from '../facts.js';
import type { AuditDurability } from '../../config/types.js';
import type pg from 'pg';
import { ValetError } from '../../errors.js';
import type { AuditRecord } from '../../types.js';
import { digestPlan, EVENT, joinFragments, linkHash, rowFragments, sha256Hex, storedText } from '../chain.js';
import { FINAL, pack, RECORD_FIELDS } from '../protocol.js';
import type { AuditHead, AuditWriter, PruneResult, RetentionCutoffs } from '../port.js';
import { pruneInTransaction } from './prune.js';
import { createPool, DIGEST_COLUMNS, INTEGER_COLUMNS, lockKey, migrate, NUMERIC_COLUMNS, ROW_COLUMNS, type PgAuditSettings } from './schema.js';

/** The content columns a record fills (all but the id, the recording time and the chain's bookkeeping). */
const RECORD_COLUMNS = ROW_COLUMNS.filter((c) => c !== 'id' && c !== 'logged_at' && c !== 'chain_seq' && c !== 'outcome_seq');
const camel = (column: string): string => column.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
/** Where each content column's value is in a {@link PackedOp} (every content column is a record field: checked as the module loads). */
const FIELD_AT = RECORD_COLUMNS.map((c) => {
  const at = (RECORD_FIELDS as readonly string[]).indexOf(camel(c));
  if (at < 0) throw new Error(`audit_log column ${c} is not an AuditRecord field`);
  return 1 + at;
});
const NUMERIC = RECORD_COLUMNS.map((c) => NUMERIC_COLUMNS.has(c));
/** Columns stored as `integer` (4 bytes); the other integer columns are `bigint`. */
const INT4_COLUMNS: ReadonlySet<string> = new Set(['status', 'upstream_status']);
/**
 * For each integer column, the largest magnitude it is written with (undefined: not an integer
 * column). Beyond it a value is clamped: past 2^53 a number is no longer an exact integer here, and
 * PostgreSQL refuses what its type cannot hold, which would fail every commit the value rode in
 * (an upstream's usage report, say), retried outcomes included.
 */
const BOUND = RECORD_COLUMNS.map((c) => (!INTEGER_COLUMNS.has(c) ? undefined : INT4_COLUMNS.has(c) ? 2 ** 31 - 1 : Number.MAX_SAFE_INTEGER));
const TS_AT = RECORD_COLUMNS.indexOf('ts');
const TENANT_AT = RECORD_COLUMNS.indexOf('tenant');
const REQUEST_AT = RECORD_COLUMNS.indexOf('request_id');
/** How a row's digest is encoded from its content values (see {@link rowFragments}). */
const DIGEST_PLAN = digestPlan(DIGEST_COLUMNS, RECORD_COLUMNS);

/** How long a completed request's row may wait for a decision to travel with (ms). */
const COMPLETION_DELAY_MS = 10;
/** Rows kept for retry while the database is unreachable, beyond which the oldest are dropped (logged). */
const MAX_HELD = 200_000;
/** Operations per transaction: a backlog after an outage drains in steps of this many. */
const MAX_BATCH = 1_000;

export interface PgAuditWriterOptions {
  settings: PgAuditSettings;
  /**
   * This gateway's name among the instances sharing the log: stored on its decision rows, so that at
   * start it completes only its own unfinished ones. Stable across restarts, unique among live instances.
   */
  instance: string;
  logger: Logger;
  failOpen?: boolean;
  /**
   * `async`: the call does not wait for its row. `strict` and `crash` both wait for the COMMIT: a
   * row committed on the server survives a killed Valet and, with the server's
   * `synchronous_commit = on`, a power loss of the server.
   */
  durability?: AuditDurability | undefined;
  /** Seals the request facts of each commit's rows, one batch per tenant (gateway/audit/facts.ts, `v2`); none: rows have no facts. */
  factsKey?: FactsKey | undefined;
  /** How long a commit may wait for the chain lock or the server before the request is refused (ms). */
  statementTimeoutMs?: number;
  onCommit?: ((seconds: number) => void) | undefined;
}

type Op = { decision: boolean; rec: AuditRecord; waiter?: { resolve: () => void; reject: (e: Error) => void } };
/** An open-row change, applied in order once its transaction has committed: set, or delete (undefined). */
type OpenChange = [string, OpenRow | undefined];

/** A decision committed whose outcome is not: its row as written. */
interface OpenRow {
  readonly id: number;
  readonly loggedAt: number;
  /** Its content columns as written, in {@link RECORD_COLUMNS} order. */
  readonly values: readonly unknown[];
  /** Its content encoding, one fragment per digest column (see {@link rowFragments}). */
  readonly parts: readonly string[];
}

/** Text as PostgreSQL will hand it back: no NUL character, no lone surrogate. */
function pgText(s: string): string {
  const t = storedText(s);
  return t.includes('\0') ? t.replace(/\0/g, '\uFFFD') : t;
}

/** A value as PostgreSQL will hand it back, so that the digest the writer computes is the one verify recomputes. */
function normalise(numeric: boolean, bound: number | undefined, v: unknown): unknown {
  if (v === undefined || v === null) return null;
  if (typeof v === 'boolean') v = v ? 1 : 0;
  if (numeric) {
    const n = typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^-?\d{1,15}$/.test(v) ? Number(v) : Number.NaN;
    if (!Number.isFinite(n)) return null;
    if (bound === undefined) return n;
    const r = Math.round(n);
    return r > bound ? bound : r < -bound ? -bound : r;
  }
  return pgText(typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'bigint' ? String(v) : JSON.stringify(v));
}

/** A record's content columns as PostgreSQL will hand them back, in {@link RECORD_COLUMNS} order. */
function contentOf(rec: AuditRecord): unknown[] {
  const op = pack(FINAL, rec);
  const values = new Array<unknown>(RECORD_COLUMNS.length);
  for (let i = 0; i < values.length; i++) {
    const v = op[FIELD_AT[i] as number];
    const bound = BOUND[i];
    values[i] = typeof v === 'string' && !NUMERIC[i] ? pgText(v) : typeof v === 'number' && bound !== undefined && Number.isInteger(v) && v <= bound && v >= -bound ? v : normalise(NUMERIC[i] as boolean, bound, v);
  }
  return values;
}

/** An open row from a row read back from `audit_log` (start-up recovery). */
function openRowOf(row: Readonly<Record<string, unknown>>): OpenRow {
  const values = RECORD_COLUMNS.map((c, i) => normalise(NUMERIC[i] as boolean, BOUND[i], row[c]));
  const id = Number(row['id']);
  const loggedAt = Number(row['logged_at']);
  return { id, loggedAt, values, parts: rowFragments(DIGEST_PLAN, values, id, loggedAt) };
}

const unavailable = (code: string | undefined): ValetError =>
  new ValetError('VALET_ERR_AUDIT_UNAVAILABLE', `The audit log could not be written${code ? ` (${code})` : ''}; nothing was forwarded.`);

/** A column's type, for reading it out of the JSON a statement takes its rows in. */
const pgType = (column: string): string =>
  INT4_COLUMNS.has(column)
    ? 'integer'
    : NUMERIC_COLUMNS.has(column) && !INTEGER_COLUMNS.has(column)
      ? 'double precision'
      : NUMERIC_COLUMNS.has(column) || column === 'outcome_seq' || column === 'chain_seq'
        ? 'bigint'
        : 'text';
/** Element `i` of the JSON array `r` as a value of `column`. */
const element = (column: string, i: number): string => (pgType(column) === 'text' ? `r->>${i}` : `(r->>${i})::${pgType(column)}`);

/**
 * The one statement that writes a transaction's rows and events and advances the head, the same
 * text every time (prepared once per connection). Rows travel as JSON arrays of arrays, one
 * parameter each: completed rows (content columns, outcome seq, id), new rows (content columns, id,
 * logged_at, chain seq, instance, outcome seq), chain events (seq, row id, kind, hash, digest in
 * hex) and sealed facts batches (id, rows, sealed text; $10). The completed rows' ids come as an
 * array too ($9): the planner then reads `audit_log` by its primary key, whatever it guesses of the
 * JSON's length. Every row read present under the chain lock must be updated (retention takes the
 * lock too); if one were not, the division by zero fails the statement and the transaction rolls back.
 */
const APPEND_SQL = (() => {
  const n = RECORD_COLUMNS.length;
  const set = RECORD_COLUMNS.map((c, i) => `"${c}" = ${element(c, i)}`).join(', ');
  const insertColumns = [...RECORD_COLUMNS, 'id', 'logged_at', 'chain_seq', 'instance', 'outcome_seq'];
  return (
    `WITH completed AS (UPDATE audit_log AS t SET ${set}, outcome_seq = ${element('outcome_seq', n)} FROM jsonb_array_elements($1::jsonb) AS u (r) WHERE t.id = ANY($9::bigint[]) AND t.id = ${element('id', n + 1)} RETURNING t.id), ` +
    `added AS (INSERT INTO audit_log (${insertColumns.map((c) => `"${c}"`).join(', ')}) SELECT ${insertColumns.map((c, i) => element(c, i)).join(', ')} FROM jsonb_array_elements($2::jsonb) AS a (r)), ` +
    `events AS (INSERT INTO audit_chain (seq, row_id, kind, hash, digest) SELECT (r->>0)::bigint, (r->>1)::bigint, (r->>2)::smallint, decode(r->>3, 'hex'), decode(r->>4, 'hex') FROM jsonb_array_elements($3::jsonb) AS e (r)), ` +
    `sealed AS (INSERT INTO audit_facts (id, rows, sealed) SELECT (r->>0)::bigint, (r->>1)::integer, r->>2 FROM jsonb_array_elements($10::jsonb) AS f (r)) ` +
    `UPDATE audit_head SET seq = $4::bigint, hash = $5::bytea, next_id = $6::bigint, logged_at = $7::bigint ` +
    `RETURNING 1 / (CASE WHEN (SELECT count(*) FROM completed) = $8::bigint THEN 1 ELSE 0 END) AS checked`
  );
})();

/**
 * Appends `ops` to the chain on `client`, in two round trips whatever their number: begin (with
 * `begin`), take the chain lock, read the head, which rows still exist and ids for the facts batches,
 * as one multi-statement query (each statement of it reads what was committed before it began, so
 * the head is read under the lock); then write every completed row, new row, chain event and facts
 * batch and advance the head in one statement, with COMMIT (with `commit`) sent right behind it.
 * The lock is held across one turn of this instance's event loop, which on a busy instance is what
 * the other instances wait for. Returns the new head and the open-row changes to apply once committed.
 */
async function appendOps(
  client: pg.PoolClient,
  schema: string,
  instance: string,
  queued: readonly Op[],
  open: ReadonlyMap<string, OpenRow>,
  o: { begin?: boolean; commit?: boolean; facts?: readonly TenantBatch[] } = {},
): Promise<{ head: { seq: number; hash: Buffer }; changes: OpenChange[] }> {
  const facts = o.facts ?? [];
  // Rows a completion of this batch would update, if retention has not deleted them meanwhile.
  const priorIds: number[] = [];
  for (const op of queued) {
    const prior = op.decision ? undefined : open.get(op.rec.requestId);
    if (prior !== undefined) priorIds.push(prior.id);
  }
  // Only numbers are written into this text: the lock key and row ids (integers), a count.
  const ids = facts.length === 0 ? '' : `, (SELECT array_agg(nextval(pg_get_serial_sequence('audit_facts', 'id'))) FROM generate_series(1, ${facts.length})) AS facts_ids`;
  const results = (await client.query(
    `${o.begin === true ? 'BEGIN; ' : ''}SELECT pg_advisory_xact_lock(${lockKey(schema, 'chain')}::bigint); ` +
      `SELECT seq, hash, next_id, logged_at, (SELECT array_agg(id) FROM audit_log WHERE id = ANY('{${priorIds.join(',')}}'::bigint[])) AS present${ids} FROM audit_head`,
  )) as unknown as pg.QueryResult[];
  const h = results.at(-1)?.rows[0] as { seq: number; hash: Buffer; next_id: number; logged_at: number; present: (number | string)[] | null; facts_ids?: (number | string)[] } | undefined;
  if (h === undefined) throw Object.assign(new Error('audit_head is empty'), { code: 'VALET_NO_HEAD' });
  // Each facts batch's rows refer to its line in it, by the batch's id.
  const factsIds = (h.facts_ids ?? []).map(Number);
  const ops = facts.length === 0 ? queued : withFactsRefs(queued, facts, factsIds);
  const present = new Set((h.present ?? []).map(Number));
  let head = { seq: h.seq, hash: h.hash };
  let nextId = h.next_id;
  let loggedAt = h.logged_at;
  const n = RECORD_COLUMNS.length;
  /** New rows: content columns, id, logged_at, chain seq, instance, outcome seq. */
  const inserts: unknown[][] = [];
  /** Where the insert of a decision of this batch is, by request id: its completion in the batch fills it. */
  const insertOf = new Map<string, unknown[]>();
  const updates: unknown[][] = [];
  const events: unknown[][] = [];
  const changes: OpenChange[] = [];
  const justOpened = new Map<string, OpenRow>();
  for (const op of ops) {
    loggedAt = Math.max(loggedAt, Date.now());
    const values = contentOf(op.rec);
    const requestId = values[REQUEST_AT] as string;
    const seq = head.seq + 1;
    const ts = (values[TS_AT] as number | null) ?? null;
    const tenant = (values[TENANT_AT] as string | null) ?? null;
    const prior = op.decision ? undefined : (justOpened.get(requestId) ?? open.get(requestId));
    if (prior !== undefined) {
      changes.push([requestId, undefined]);
      justOpened.delete(requestId);
      // A decision of this same batch is still an insert not yet sent: complete it there.
      const pending = insertOf.get(requestId);
      if (pending !== undefined || present.has(prior.id)) {
        if (pending !== undefined) {
          for (let i = 0; i < n; i++) pending[i] = values[i];
          pending[n + 4] = seq;
          insertOf.delete(requestId);
        } else {
          values.push(seq, prior.id);
          updates.push(values);
          present.delete(prior.id);
        }
        const digest = sha256Hex(joinFragments(rowFragments(DIGEST_PLAN, values, prior.id, prior.loggedAt, prior)));
        const hash = linkHash(head.hash, seq, EVENT.outcome, prior.id, ts, tenant, digest);
        events.push([seq, prior.id, EVENT.outcome, hash.toString('hex'), null]);
        head = { seq, hash };
        continue;
      }
      // The row is gone (retention deleted it while the request ran): write the request whole.
    }
    const id = nextId++;
    const parts = rowFragments(DIGEST_PLAN, values, id, loggedAt);
    const digest = sha256Hex(joinFragments(parts));
    const kind = op.decision ? EVENT.decision : EVENT.record;
    const hash = linkHash(head.hash, seq, kind, id, ts, tenant, digest);
    // A decision's values stay its open row's; a record's are sent as they are.
    const row = op.decision ? values.slice() : values;
    row.push(id, loggedAt, seq, op.decision ? instance : null, null);
    inserts.push(row);
    events.push([seq, id, kind, hash.toString('hex'), op.decision ? digest : null]);
    if (op.decision) {
      const o = { id, loggedAt, values, parts };
      justOpened.set(requestId, o);
      insertOf.set(requestId, row);
      changes.push([requestId, o]);
    }
    head = { seq, hash };
  }
  const writing = client.query({
    name: 'valet_audit_append',
    text: APPEND_SQL,
    values: [
      JSON.stringify(updates),
      JSON.stringify(inserts),
      JSON.stringify(events),
      head.seq,
      head.hash,
      nextId,
      loggedAt,
      updates.length,
      updates.map((u) => u[n + 1]),
      JSON.stringify(facts.map((b, i) => [factsIds[i], b.at.length, b.sealed.text])),
    ],
  });
  // COMMIT goes right behind the write, on the pipelined connection: the server releases the chain
  // lock as soon as the write is done, not a turn of this event loop later. Should the write fail,
  // the COMMIT of the failed transaction rolls it back (its tag says ROLLBACK), and the write's
  // error is what the caller sees.
  const committing = o.commit === true ? client.query('COMMIT') : undefined;
  committing?.catch(() => undefined);
  await writing;
  if (committing !== undefined && (await committing).command !== 'COMMIT') throw Object.assign(new Error('the audit transaction was rolled back'), { code: 'VALET_ROLLED_BACK' });
  return { head, changes };
}

/**
 * The request facts of these ops (their records' `factsPlain`) sealed one batch per tenant, before
 * the transaction begins. A batch that cannot be sealed leaves its rows without facts (`failed` is
 * told each request id and why, never what).
 */
function sealFacts(ops: readonly Op[], key: FactsKey | undefined, failed: (requestId: string, err: unknown) => void): TenantBatch[] {
  if (key === undefined) return [];
  return sealByTenant(
    key,
    ops.length,
    (i) => {
      const op = ops[i] as Op;
      // A decision shares its record with the completion that follows: the facts go with the completion.
      return op.decision || op.rec.factsPlain === null ? undefined : [op.rec.tenant, op.rec.requestId, op.rec.factsPlain];
    },
    failed,
  );
}

/**
 * The ops with each sealed record's `facts` set to the reference to its line in its batch (`ids`:
 * the batches' ids, in order). Copies: the queued ops keep their facts unsealed, so a failed
 * transaction seals them again.
 */
function withFactsRefs(ops: readonly Op[], batches: readonly TenantBatch[], ids: readonly number[]): Op[] {
  const out = ops.slice();
  batches.forEach((b, i) => {
    b.at.forEach((at, line) => {
      const op = out[at] as Op;
      out[at] = { decision: op.decision, rec: { ...op.rec, facts: batchRef(ids[i] as number, line, b.sealed.digest), factsPlain: null } };
    });
  });
  return out;
}

/**
 * Runs `fn` in a transaction on a pooled client; rolls back and rethrows on error. `own`: fn begins
 * and commits the transaction itself (the request path's appends: BEGIN goes with the chain lock's
 * round trip, COMMIT right after the write, releasing the lock).
 */
async function inTransaction<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>, own = false): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    if (own) return await fn(client);
    await client.query('BEGIN');
    const r = await fn(client);
    await client.query('COMMIT');
    return r;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/**
 * The audit writer on PostgreSQL. Group commit: decisions arriving while a transaction is in flight
 * go together in the next one. A commit resolves once PostgreSQL's COMMIT has returned with
 * `synchronous_commit = on` (the WAL is flushed on the server): durable before forward. Every
 * transaction appends to the one chain shared by all instances (see {@link appendOps}).
 */
export async function startPgAuditWriter(o: PgAuditWriterOptions): Promise<AuditWriter & { readonly recovered: number }> {
  const schema = o.settings.schema ?? 'public';
  const failOpen = o.failOpen ?? false;
  const pool = createPool(o.settings, { max: 3, statementTimeoutMs: o.statementTimeoutMs ?? 10_000, pipeline: true });
  try {
    await migrate(pool, schema);
  } catch (err) {
    await pool.end();
    throw err;
  }
  const open = new Map<string, OpenRow>();
  let queue: Op[] = [];
  let running: Promise<void> | undefined;
  let runningOps = 0;
  let timer: NodeJS.Timeout | undefined;
  let immediate: NodeJS.Immediate | undefined;
  let retry: NodeJS.Timeout | undefined;
  let backoff = 0;
  let commits = 0;
  let head: AuditHead = { seq: 0, hash: '' };
  let closing = false;

  const apply = (r: Awaited<ReturnType<typeof appendOps>>): void => {
    for (const [k, v] of r.changes) {
      if (v === undefined) open.delete(k);
      else open.set(k, v);
    }
    head = { seq: r.head.seq, hash: r.head.hash.toString('hex') };
  };

  const run = async (): Promise<void> => {
    while (queue.length > 0) {
      // At most MAX_BATCH per transaction: a backlog after an outage drains in steps instead of one
      // transaction that never fits.
      const ops = queue.slice(0, MAX_BATCH);
      queue = queue.slice(ops.length);
      runningOps = ops.length;
      const started = performance.now();
      try {
        const facts = sealFacts(ops, o.factsKey, factsFailed);
        apply(await inTransaction(pool, (c) => appendOps(c, schema, o.instance, ops, open, { begin: true, commit: true, facts }), true));
        commits++;
        backoff = 0;
        o.onCommit?.((performance.now() - started) / 1000);
        for (const op of ops) op.waiter?.resolve();
      } catch (err) {
        const code = (err as { code?: string }).code;
        o.logger.error(
          { code, message: (err as Error).message, failOpen },
          failOpen
            ? 'AUDIT LOG NOT WRITABLE: fail_open is set, so requests are forwarded without a durable record'
            : 'audit log not writable: requests that would be forwarded are refused (503)',
        );
        // Refused decisions are not kept (their requests were not forwarded); completions are, for a retry.
        const kept = ops.filter((op) => failOpen || o.durability === 'async' || !op.decision).map((op) => ({ decision: op.decision, rec: op.rec }));
        for (const op of ops) {
          if (failOpen) op.waiter?.resolve();
          else op.waiter?.reject(unavailable(code));
        }
        queue = kept.concat(queue);
        if (queue.length > MAX_HELD) {
          o.logger.error({ dropped: queue.length - MAX_HELD }, 'audit rows dropped: the database has not been writable for too long');
          queue = queue.slice(queue.length - MAX_HELD);
        }
        if (!closing) {
          backoff = Math.min(5_000, Math.max(50, backoff * 2));
          retry ??= setTimeout(() => {
            retry = undefined;
            kick();
          }, backoff);
        }
        return;
      }
    }
  };

  const kick = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    if (immediate !== undefined) clearImmediate(immediate);
    timer = undefined;
    immediate = undefined;
    if (running !== undefined || retry !== undefined || queue.length === 0) return;
    running = run().finally(() => {
      running = undefined;
      runningOps = 0;
      // What arrived while that transaction was committing goes now, as one (close makes its own last attempt).
      if (closing) return;
      if (queue.some((op) => op.decision)) kick();
      else if (queue.length > 0) timer ??= setTimeout(kick, COMPLETION_DELAY_MS);
    });
  };

  const factsFailed = (reqId: string, err: unknown): void => o.logger.error({ reqId, message: (err as Error).message }, SEAL_FAILED);
  const enqueue = (op: Op): void => {
    queue.push(op);
    if (running !== undefined || retry !== undefined) return;
    if (op.decision) immediate ??= setImmediate(kick);
    else if (immediate === undefined) timer ??= setTimeout(kick, COMPLETION_DELAY_MS);
  };

  // Rows this instance left in flight when it last stopped (killed, crashed, power lost): completed
  // as VALET_ERR_OUTCOME_UNKNOWN. Other instances' unfinished rows are theirs: they may be running.
  let recovered = 0;
  try {
    await inTransaction(pool, async (c) => {
      const rows = (
        await c.query<Record<string, unknown>>(
          `SELECT r.* FROM audit_log r JOIN audit_chain e ON e.seq = r.chain_seq
            WHERE r.instance = $1 AND r.outcome_seq IS NULL AND r.status = 0 AND e.kind = ${EVENT.decision}`,
          [o.instance],
        )
      ).rows;
      // One at a time: two interrupted rows may share a request id.
      for (const row of rows) {
        const rec: Record<string, unknown> = {};
        for (const c of RECORD_COLUMNS) rec[camel(c)] = row[c];
        rec['errorCode'] = 'VALET_ERR_OUTCOME_UNKNOWN';
        const r = await appendOps(c, schema, o.instance, [{ decision: false, rec: rec as unknown as AuditRecord }], new Map([[row['request_id'] as string, openRowOf(row)]]));
        head = { seq: r.head.seq, hash: r.head.hash.toString('hex') };
      }
      recovered = rows.length;
      if (rows.length === 0) {
        const h = (await c.query<{ seq: number; hash: Buffer }>('SELECT seq, hash FROM audit_head')).rows[0];
        if (h !== undefined) head = { seq: h.seq, hash: h.hash.toString('hex') };
      }
    });
  } catch (err) {
    await pool.end();
    throw err;
  }
  if (recovered > 0) o.logger.warn({ rows: recovered, instance: o.instance }, 'audit rows left in flight by this instance completed as VALET_ERR_OUTCOME_UNKNOWN');

  return {
    recovered,
    commit(rec) {
      if (closing) return failOpen ? Promise.resolve() : Promise.reject(unavailable('CLOSED'));
      if (o.durability === 'async') {
        enqueue({ decision: true, rec });
        return Promise.resolve();
      }
      return new Promise<void>((resolve, reject) => enqueue({ decision: true, rec, waiter: { resolve, reject } }));
    },
    record(rec) {
      enqueue({ decision: false, rec });
    },
    async flush() {
      // Until nothing queued before this call is left: each run takes the whole queue, and one that
      // fails leaves a retry timer (kick then starts nothing, and the rows stay pending).
      for (;;) {
        kick();
        if (running === undefined) return;
        await running;
      }
    },
    get pending() {
      return queue.length + runningOps;
    },
    get head() {
      return head;
    },
    get commits() {
      return commits;
    },
    async prune(cutoffs: RetentionCutoffs): Promise<PruneResult> {
      return inTransaction(pool, (c) =>
        pruneInTransaction(c, schema, cutoffs, { maxRows: 500 }, (id) => {
          for (const [k, v] of open) if (v.id === id) open.delete(k);
        }),
      );
    },
    async close() {
      closing = true;
      if (retry !== undefined) {
        clearTimeout(retry);
        retry = undefined;
      }
      // What is queued gets one more attempt (and what arrives meanwhile rides along); a server
      // still unreachable then loses it, logged, rather than holding shutdown forever.
      if (running !== undefined) await running;
      kick();
      if (running !== undefined) await running;
      if (timer !== undefined) clearTimeout(timer);
      if (queue.length > 0) o.logger.error({ rows: queue.length }, 'audit rows lost at shutdown: the audit database could not be written');
      await pool.end();
    },
  };
}
