import type { Logger } from 'pino';
import { batchRef, SEAL_FAILED, sealByTenant, type FactsKey } from '../facts.js';
import type { AuditDurability } from '../../config/types.js';
import type pg from 'pg';
import { ValetError } from '../../errors.js';
import type { AuditRecord } from '../../types.js';
import { EVENT, linkHash, rowDigest, storedText } from '../chain.js';
import type { AuditHead, AuditWriter, PruneResult, RetentionCutoffs } from '../port.js';
import { pruneInTransaction } from './prune.js';
import { createPool, DIGEST_COLUMNS, INTEGER_COLUMNS, lockKey, migrate, NUMERIC_COLUMNS, ROW_COLUMNS, type PgAuditSettings } from './schema.js';

/** The columns an insert names, in this order: the row columns, then the instance. */
const INSERT_COLUMNS = [...ROW_COLUMNS.filter((c) => c !== 'outcome_seq'), 'instance'];
/** The content columns a record fills (all but the id, the recording time and the chain's bookkeeping). */
const RECORD_COLUMNS = ROW_COLUMNS.filter((c) => c !== 'id' && c !== 'logged_at' && c !== 'chain_seq' && c !== 'outcome_seq');
const camel = (column: string): string => column.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
const RECORD_KEYS = RECORD_COLUMNS.map(camel);

/** How long a completed request's row may wait for a decision to travel with (ms). */
const COMPLETION_DELAY_MS = 10;
/** Rows kept for retry while the database is unreachable, beyond which the oldest are dropped (logged). */
const MAX_HELD = 200_000;
/** Operations per transaction (each row takes about 30 parameters of the 65,535 one statement may have). */
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
type Row = Record<string, unknown>;
/** An open-row change, applied in order once its transaction has committed: set, or delete (undefined). */
type OpenChange = [string, OpenRow | undefined];

/** A decision committed whose outcome is not: its row as written (id, logged_at and content). */
interface OpenRow {
  readonly id: number;
  readonly row: Row;
}

/** A value as PostgreSQL will hand it back, so that the digest the writer computes is the one verify recomputes. */
function normalise(column: string, v: unknown): unknown {
  if (v === undefined || v === null) return null;
  if (typeof v === 'boolean') v = v ? 1 : 0;
  if (NUMERIC_COLUMNS.has(column)) {
    const n = typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^-?\d{1,15}$/.test(v) ? Number(v) : Number.NaN;
    if (!Number.isFinite(n)) return null;
    return INTEGER_COLUMNS.has(column) ? Math.round(n) : n;
  }
  const s = typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'bigint' ? String(v) : JSON.stringify(v);
  // PostgreSQL text holds no NUL character and no lone surrogate: hash what will be read back.
  return storedText(s).replace(/\0/g, '\uFFFD');
}

function contentOf(rec: AuditRecord): Row {
  const row: Row = {};
  for (let i = 0; i < RECORD_COLUMNS.length; i++) {
    const c = RECORD_COLUMNS[i] as string;
    row[c] = normalise(c, (rec as unknown as Record<string, unknown>)[RECORD_KEYS[i] as string]);
  }
  return row;
}

const unavailable = (code: string | undefined): ValetError =>
  new ValetError('VALET_ERR_AUDIT_UNAVAILABLE', `The audit log could not be written${code ? ` (${code})` : ''}; nothing was forwarded.`);

/** A column's type, for the casts that let one statement take many rows as parameters. */
const pgType = (column: string): string =>
  column === 'status' || column === 'upstream_status'
    ? 'integer'
    : NUMERIC_COLUMNS.has(column) && !INTEGER_COLUMNS.has(column)
      ? 'double precision'
      : NUMERIC_COLUMNS.has(column) || column === 'outcome_seq'
        ? 'bigint'
        : 'text';

/** `(v, …), (v, …)` with every value a typed parameter appended to `params`. */
function tuples(rows: readonly (readonly unknown[])[], columns: readonly string[], params: unknown[]): string {
  return rows.map((v) => `(${v.map((x, i) => `$${params.push(x)}::${pgType(columns[i] as string)}`).join(', ')})`).join(', ');
}

/**
 * Appends `ops` to the chain in the transaction open on `client`, in three statements whatever
 * their number: take the chain lock; read the head and which rows still exist; write every
 * completed row, new row and chain event and advance the head in one statement (then COMMIT, with
 * `commit`). The lock is held across a fixed number of round trips, not one per completed row: on
 * a busy instance each round trip waits for a turn of the event loop, which is what the other
 * instances wait for. Returns the new head and the open-row changes to apply once committed.
 */
async function appendOps(
  client: pg.PoolClient,
  schema: string,
  instance: string,
  ops: readonly Op[],
  open: ReadonlyMap<string, OpenRow>,
  commit = false,
): Promise<{ head: { seq: number; hash: Buffer }; changes: OpenChange[] }> {
  // Rows a completion of this batch would update, if retention has not deleted them meanwhile.
  const priorIds: number[] = [];
  for (const op of ops) {
    const prior = op.decision ? undefined : open.get(op.rec.requestId);
    if (prior !== undefined) priorIds.push(prior.id);
  }
  await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(schema, 'chain')]);
  const h = (
    await client.query<{ seq: number; hash: Buffer; next_id: number; logged_at: number; present: number[] | null }>(
      'SELECT seq, hash, next_id, logged_at, (SELECT array_agg(id) FROM audit_log WHERE id = ANY($1::bigint[])) AS present FROM audit_head',
      [priorIds],
    )
  ).rows[0];
  if (h === undefined) throw Object.assign(new Error('audit_head is empty'), { code: 'VALET_NO_HEAD' });
  const present = new Set((h.present ?? []).map(Number));
  let head = { seq: h.seq, hash: h.hash };
  let nextId = h.next_id;
  let loggedAt = h.logged_at;
  const inserts: unknown[][] = [];
  const updates: unknown[][] = [];
  const events: unknown[][] = [];
  const changes: OpenChange[] = [];
  const justOpened = new Map<string, OpenRow>();
  for (const op of ops) {
    loggedAt = Math.max(loggedAt, Date.now());
    const content = contentOf(op.rec);
    const requestId = content['request_id'] as string;
    const seq = head.seq + 1;
    const ts = (content['ts'] as number | null) ?? null;
    const tenant = (content['tenant'] as string | null) ?? null;
    const prior = op.decision ? undefined : (justOpened.get(requestId) ?? open.get(requestId));
    if (prior !== undefined) {
      changes.push([requestId, undefined]);
      justOpened.delete(requestId);
      // A decision of this same batch is still an insert not yet sent: complete it there.
      const pending = inserts.find((v) => v[0] === prior.id);
      if (pending !== undefined || present.has(prior.id)) {
        if (pending !== undefined) {
          for (let i = 0; i < INSERT_COLUMNS.length; i++) {
            const c = INSERT_COLUMNS[i] as string;
            if (c in content) pending[i] = content[c];
          }
          pending.push(seq);
        } else {
          updates.push([prior.id, ...RECORD_COLUMNS.map((c) => content[c]), seq]);
          present.delete(prior.id);
        }
        const row: Row = { ...content, id: prior.id, logged_at: prior.row['logged_at'] };
        const hash = linkHash(head.hash, seq, EVENT.outcome, prior.id, ts, tenant, rowDigest(row, DIGEST_COLUMNS));
        events.push([seq, prior.id, EVENT.outcome, hash, null]);
        head = { seq, hash };
        continue;
      }
      // The row is gone (retention deleted it while the request ran): write the request whole.
    }
    const id = nextId++;
    const row: Row = { ...content, id, logged_at: loggedAt };
    const digest = rowDigest(row, DIGEST_COLUMNS);
    const kind = op.decision ? EVENT.decision : EVENT.record;
    const hash = linkHash(head.hash, seq, kind, id, ts, tenant, digest);
    inserts.push(INSERT_COLUMNS.map((c) => (c === 'chain_seq' ? seq : c === 'instance' ? (op.decision ? instance : null) : row[c])));
    events.push([seq, id, kind, hash, op.decision ? digest : null]);
    if (op.decision) {
      const o = { id, row };
      justOpened.set(requestId, o);
      changes.push([requestId, o]);
    }
    head = { seq, hash };
  }

  // One statement: every data-modifying part of a WITH runs, once and to completion.
  const params: unknown[] = [];
  const parts: string[] = [];
  if (updates.length > 0) {
    const columns = ['id', ...RECORD_COLUMNS, 'outcome_seq'];
    const names = columns.map((c) => `"${c}"`).join(', ');
    const set = [...RECORD_COLUMNS, 'outcome_seq'].map((c) => `"${c}" = v."${c}"`).join(', ');
    parts.push(`completed AS (UPDATE audit_log AS r SET ${set} FROM (VALUES ${tuples(updates, columns, params)}) AS v (${names}) WHERE r.id = v.id RETURNING r.id)`);
  }
  // Rows completed within the batch carry their outcome seq as one more value; the others none.
  const plain = inserts.filter((v) => v.length === INSERT_COLUMNS.length);
  const done = inserts.filter((v) => v.length > INSERT_COLUMNS.length);
  for (const [i, [rows, columns]] of ([
    [plain, INSERT_COLUMNS],
    [done, [...INSERT_COLUMNS, 'outcome_seq']],
  ] as const).entries()) {
    if (rows.length === 0) continue;
    parts.push(`rows${i} AS (INSERT INTO audit_log (${columns.map((c) => `"${c}"`).join(', ')}) VALUES ${tuples(rows, columns, params)})`);
  }
  if (events.length > 0) {
    const eventTypes = ['bigint', 'bigint', 'smallint', 'bytea', 'bytea'];
    const eventTuples = events.map((v) => `(${v.map((x, i) => `$${params.push(x)}::${eventTypes[i] as string}`).join(', ')})`).join(', ');
    parts.push(`events AS (INSERT INTO audit_chain (seq, row_id, kind, hash, digest) VALUES ${eventTuples})`);
  }
  const headParams = [params.push(head.seq), params.push(head.hash), params.push(nextId), params.push(loggedAt)];
  // Every row read present under the chain lock is updated (retention takes the lock too); if one
  // were not, the division by zero fails the statement, and the queued COMMIT rolls back.
  const updated = updates.length > 0 ? `1 / (CASE WHEN (SELECT count(*) FROM completed) = $${params.push(updates.length)}::bigint THEN 1 ELSE 0 END)` : '1';
  await client.query(
    `${parts.length > 0 ? `WITH ${parts.join(', ')} ` : ''}UPDATE audit_head SET seq = $${headParams[0]}::bigint, hash = $${headParams[1]}::bytea, next_id = $${headParams[2]}::bigint, logged_at = $${headParams[3]}::bigint RETURNING ${updated} AS checked`,
    params,
  );
  if (commit) await client.query('COMMIT');
  return { head, changes };
}

/**
 * The request facts of these ops (their records' `factsPlain`) sealed one batch per tenant and
 * stored in `audit_facts` inside the caller's transaction; returns the ops with each record's
 * `facts` set to the reference to its line (copies: the queued ops keep their facts unsealed, so a
 * failed transaction seals them again). A batch that cannot be sealed leaves its rows without facts
 * (`failed` is told each request id and why, never what).
 */
async function withFactsBatches(client: pg.PoolClient, ops: readonly Op[], key: FactsKey | undefined, failed: (requestId: string, err: unknown) => void): Promise<Op[]> {
  const out = ops.slice();
  if (key === undefined) return out;
  const batches = sealByTenant(
    key,
    ops.length,
    (i) => {
      const op = ops[i] as Op;
      // A decision shares its record with the completion that follows: the facts go with the completion.
      return op.decision || op.rec.factsPlain === null ? undefined : [op.rec.tenant, op.rec.requestId, op.rec.factsPlain];
    },
    failed,
  );
  if (batches.length === 0) return out;
  // Ids are drawn in the order of `ord`, so sorted they are the batches' in order.
  const ids = (
    await client.query<{ id: number }>('INSERT INTO audit_facts (rows, sealed) SELECT n, sealed FROM unnest($1::int[], $2::text[]) WITH ORDINALITY AS b (n, sealed, ord) ORDER BY ord RETURNING id', [
      batches.map((b) => b.at.length),
      batches.map((b) => b.sealed.text),
    ])
  ).rows
    .map((r) => r.id)
    .sort((a, b) => a - b);
  batches.forEach((b, i) => {
    b.at.forEach((at, line) => {
      const op = out[at] as Op;
      out[at] = { decision: op.decision, rec: { ...op.rec, facts: batchRef(ids[i] as number, line, b.sealed.digest), factsPlain: null } };
    });
  });
  return out;
}

/**
 * Runs `fn` in a transaction on a pooled client; rolls back and rethrows on error. `committing`: fn
 * commits itself (the request path's appends: COMMIT right after the write, releasing the chain lock).
 */
async function inTransaction<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>, committing = false): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    if (committing) return await fn(client);
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
  const pool = createPool(o.settings, { max: 3, statementTimeoutMs: o.statementTimeoutMs ?? 10_000 });
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
      // At most MAX_BATCH per transaction: one statement's parameters are bounded (65,535), and a
      // backlog after an outage drains in steps instead of one transaction that never fits.
      const ops = queue.slice(0, MAX_BATCH);
      queue = queue.slice(ops.length);
      runningOps = ops.length;
      const started = performance.now();
      try {
        apply(await inTransaction(pool, async (c) => appendOps(c, schema, o.instance, await withFactsBatches(c, ops, o.factsKey, factsFailed), open, true), true));
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
        await c.query<Row>(
          `SELECT r.* FROM audit_log r JOIN audit_chain e ON e.seq = r.chain_seq
            WHERE r.instance = $1 AND r.outcome_seq IS NULL AND r.status = 0 AND e.kind = ${EVENT.decision}`,
          [o.instance],
        )
      ).rows;
      // One at a time: two interrupted rows may share a request id.
      for (const row of rows) {
        const rec: Record<string, unknown> = {};
        for (let i = 0; i < RECORD_COLUMNS.length; i++) rec[RECORD_KEYS[i] as string] = row[RECORD_COLUMNS[i] as string];
        rec['errorCode'] = 'VALET_ERR_OUTCOME_UNKNOWN';
        const r = await appendOps(c, schema, o.instance, [{ decision: false, rec: rec as unknown as AuditRecord }], new Map([[row['request_id'] as string, { id: row['id'] as number, row }]]));
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
