import { rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { AuditRecord } from '../../types.js';
import { compactable, digestPlan, encodeNote, EVENT, fragment, GENESIS, joinFragments, linkHash, META_COLUMNS, parseNote, pruneNote, rowDigest, rowFragments, sha256, sha256Hex, storedText, type ChainHead, type DigestPlan } from '../chain.js';
import type { PruneResult, RetentionCutoffs } from '../port.js';
import { batchRef, batchRefCounts, sealByTenant, type FactsKey, type TenantBatch } from '../facts.js';
import { DECISION, ERROR_CODE_AT, FACTS_PLAIN_AT, FINAL, pack, RECORD_FIELDS, REQUEST_ID_AT, STATUS_AT, type PackedOp } from '../protocol.js';
import { readJournal } from './journal.js';
import { contentColumns, HEAD_SQL, headOf, readCheckpoint, readHead } from './chain.js';
import { openAuditDatabase, type AuditDatabase } from './store.js';
import { privateFile } from '../../private-files.js';

/**
 * What the request path hands the writer (as a {@link PackedOp} between threads):
 * - `decision`: a request about to be forwarded. The caller waits until this is committed (fsynced).
 * - `final`: a request is over. If its decision was committed, this completes that row (an
 *   `outcome` event); otherwise it is written whole (a `record` event).
 */
export type AuditOp = { op: 'decision'; rec: AuditRecord } | { op: 'final'; rec: AuditRecord };

type Statement = Database.Statement<unknown[], unknown>;

interface OpenRow {
  readonly id: number;
  readonly loggedAt: number;
  /** The content columns as written with the decision, in table order (its first `columns.length` entries). */
  readonly values: readonly unknown[];
  /** Its content encoding, one fragment per digest column (see {@link rowFragments}). */
  readonly parts: readonly string[];
}
type Undo = [string, OpenRow | undefined][];

interface Column {
  readonly name: string;
  /** The AuditRecord property that fills it: `request_id` ← `requestId`. */
  readonly key: string;
  /** Where that property is in a {@link PackedOp}; -1: not a record field (always NULL). */
  readonly field: number;
  readonly numeric: boolean;
  readonly normalise: (v: unknown) => unknown;
}

const isNumeric = (declared: string): boolean => /INT|REAL|FLOA|DOUB/i.test(declared);

const camel = (column: string): string => column.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());

/**
 * The columns of `audit_log` a record fills, in table order: all but the row id, the recording time
 * and the chain's bookkeeping. `key`: the AuditRecord property (`request_id` ← `requestId`).
 */
export function recordColumns(db: AuditDatabase): { name: string; type: string; key: string }[] {
  const info = db.prepare('SELECT name, type FROM pragma_table_info(?)').all('audit_log') as { name: string; type: string }[];
  return info.filter((c) => c.name !== 'id' && c.name !== 'logged_at' && !META_COLUMNS.has(c.name)).map((c) => ({ ...c, key: camel(c.name) }));
}

/** The writer's row insert: the record columns in table order, then id, logged_at, chain_seq. */
export const insertRowSql = (names: readonly string[]): string =>
  `INSERT INTO audit_log (${names.join(', ')}, id, logged_at, chain_seq) VALUES (${names.map(() => '?').join(', ')}, ?, ?, ?)`;

/** A batch of sealed request facts (gateway/audit/facts.ts, `v2`) and how many rows refer to it. */
const ADD_FACTS_BATCH_SQL = 'INSERT INTO audit_facts (rows, sealed) VALUES (?, ?)';

/** What the writer seals request facts with, and whom it tells (by request id, never what) when it cannot. */
export interface FactsSealing {
  readonly key: FactsKey;
  readonly failed: (requestId: string, err: unknown) => void;
}

const TENANT_AT = 1 + RECORD_FIELDS.indexOf('tenant');

/** The writer's chain event: seq, row id, kind, hash, digest (kept for decisions). */
export const ADD_EVENT_SQL = 'INSERT INTO audit_chain (seq, row_id, kind, hash, digest) VALUES (?, ?, ?, ?, ?)';

/**
 * Values as SQLite will hand them back, so that the digest the writer computes is the digest
 * verify recomputes from the stored row (SQLite converts by column affinity; better-sqlite3 binds
 * no booleans or objects).
 */
function normaliser(declared: string): (v: unknown) => unknown {
  const t = declared.toUpperCase();
  const numeric = isNumeric(t);
  return (v) => {
    if (v === undefined || v === null) return null;
    if (typeof v === 'boolean') v = v ? 1 : 0;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return null;
      return numeric || t === '' || t.includes('BLOB') ? v : String(v);
    }
    if (typeof v === 'bigint') return numeric ? Number(v) : String(v);
    if (typeof v === 'string') return numeric && /^-?\d{1,15}$/.test(v) ? Number(v) : storedText(v);
    if (Buffer.isBuffer(v)) return v;
    return JSON.stringify(v);
  };
}

/**
 * The single writer of the audit log: applies batches of {@link AuditOp} in one `BEGIN IMMEDIATE`
 * transaction each, assigning row ids, recording times and chain events in commit order.
 * Synchronous; runs in the writer thread (gateway/audit/sqlite/worker.ts) or, inline, on the caller's thread.
 *
 * The chain head and the last id are read inside each transaction, under SQLite's write lock, so
 * another process writing the same file (a `valet audit prune` run, a second writer) never forks
 * the chain.
 */
export class AuditCore {
  readonly db: AuditDatabase;
  private readonly digestColumns: string[];
  private readonly columns: Column[];
  private readonly tsIndex: number;
  private readonly tenantIndex: number;
  /** How to encode a row's content from a values array (see {@link rowFragments}). */
  private readonly plan: DigestPlan;
  /** For each content column (table order), its position in {@link plan}. */
  private readonly planIndex: number[];
  private readonly insert: Statement;
  /** UPDATE statements by the set of columns they change (see {@link updateFor}). */
  private readonly updates = new Map<string, { stmt: Statement; columns: number[] }>();
  private readonly addEvent: Statement;
  private readonly lastRow: Statement;
  /** {@link readHead}, prepared once: read in every transaction, under the write lock. */
  private readonly headRow: Statement;
  private readonly lastPrune: Statement;
  private readonly applyTx: (ops: readonly PackedOp[], undo: Undo, facts: readonly TenantBatch[]) => ChainHead;
  private readonly factsIndex: number;
  private readonly addBatch: Statement;
  /** Decisions committed and not yet completed: request id → row. */
  private readonly open = new Map<string, OpenRow>();
  private lastLoggedAt = 0;
  private readonly facts: FactsSealing | undefined;
  head: ChainHead = { seq: 0, hash: GENESIS };
  /** Seconds the last successful {@link applyPacked} took: its transaction, fsync included. */
  lastCommitSeconds = 0;

  /** Held while this writer runs (see {@link recoverInterrupted}); undefined when another writer holds it. */
  private readonly lock: AuditDatabase | undefined;

  /**
   * `autoCheckpoint: false` leaves copying the WAL back into the database to someone else (the
   * writer's checkpointer thread, see writer.ts), so commits on this connection never wait for it.
   */
  constructor(
    private readonly dataDir: string,
    o: { busyTimeoutMs?: number; cacheKiB?: number; recover?: boolean; autoCheckpoint?: boolean; facts?: FactsSealing | undefined } = {},
  ) {
    this.facts = o.facts;
    this.db = openAuditDatabase(dataDir, { busyTimeoutMs: o.busyTimeoutMs ?? 1000 });
    this.db.pragma(`cache_size = -${o.cacheKiB ?? 32_768}`);
    if (o.autoCheckpoint === false) this.db.pragma('wal_autocheckpoint = 0');
    this.digestColumns = contentColumns(this.db);
    this.columns = recordColumns(this.db).map((c) => {
      const at = (RECORD_FIELDS as readonly string[]).indexOf(c.key);
      return { name: c.name, key: c.key, field: at < 0 ? -1 : 1 + at, numeric: isNumeric(c.type), normalise: normaliser(c.type) };
    });
    const names = this.columns.map((c) => c.name);
    this.tsIndex = names.indexOf('ts');
    this.tenantIndex = names.indexOf('tenant');
    this.factsIndex = names.indexOf('facts');
    this.plan = digestPlan(this.digestColumns, names);
    this.planIndex = names.map((name) => this.digestColumns.indexOf(name));
    // Both statements take the content columns first, in table order, then the chain's own values.
    this.insert = this.db.prepare(insertRowSql(names));
    this.addEvent = this.db.prepare(ADD_EVENT_SQL);
    this.lastRow = this.db.prepare('SELECT id, logged_at FROM audit_log ORDER BY id DESC LIMIT 1');
    this.headRow = this.db.prepare(HEAD_SQL);
    this.lastPrune = this.db.prepare(`SELECT note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq DESC LIMIT 1`).pluck();
    this.addBatch = this.db.prepare(ADD_FACTS_BATCH_SQL);
    this.applyTx = this.db.transaction((ops: readonly PackedOp[], undo: Undo, facts: readonly TenantBatch[]) => this.applyInTransaction(ops, undo, facts)).immediate;
    this.head = readHead(this.db);
    this.lock = o.recover === false ? undefined : writerLock(dataDir);
    if (this.lock !== undefined) this.recoverInterrupted();
  }

  /**
   * Rows a previous gateway left in flight — decision recorded, outcome never (killed, crashed,
   * power lost) — are completed with `error_code = VALET_ERR_OUTCOME_UNKNOWN` and status 0: the
   * call may or may not have reached the upstream. Only a writer holding the writer lock does this,
   * so the requests of another gateway still running on the same data directory are left alone.
   */
  private recoverInterrupted(): void {
    this.recovered = this.recoverJournal();
    const rows = this.db
      .prepare(`SELECT r.* FROM audit_log r JOIN audit_chain c ON c.seq = r.chain_seq WHERE r.status = 0 AND r.outcome_seq IS NULL AND c.kind = ${EVENT.decision}`)
      .all() as Record<string, unknown>[];
    if (rows.length === 0) return;
    const ops = rows.map((row) => {
      const rec: Record<string, unknown> = {};
      for (const c of this.columns) rec[c.key] = row[c.name];
      rec['errorCode'] = 'VALET_ERR_OUTCOME_UNKNOWN';
      const id = row['id'] as number;
      const loggedAt = row['logged_at'] as number;
      const values = this.columns.map((c) => row[c.name]);
      this.open.set(row['request_id'] as string, { id, loggedAt, values, parts: rowFragments(this.plan, values, id, loggedAt) });
      return pack(FINAL, rec as unknown as AuditRecord);
    });
    this.applyPacked(ops);
    this.recovered += rows.length;
  }

  /**
   * The decisions a killed Valet journaled (`strict` and `crash`, see journal.ts) and never wrote a
   * row for are written as rows completed with `VALET_ERR_OUTCOME_UNKNOWN` and status 0; then the
   * journal is deleted. Returns how many rows it wrote.
   */
  private recoverJournal(): number {
    const { ops, files } = readJournal(this.dataDir);
    const has = this.db.prepare('SELECT 1 FROM audit_log WHERE request_id = ? LIMIT 1').pluck();
    const missing: PackedOp[] = [];
    const seen = new Set<string>();
    for (const op of ops) {
      const requestId = op[REQUEST_ID_AT];
      if (typeof requestId !== 'string' || seen.has(requestId) || has.get(requestId) !== undefined) continue;
      seen.add(requestId);
      const final = op.slice();
      final[0] = FINAL;
      final[STATUS_AT] = 0;
      final[ERROR_CODE_AT] = 'VALET_ERR_OUTCOME_UNKNOWN';
      missing.push(final);
    }
    if (missing.length > 0) this.applyPacked(missing);
    for (const f of files) rmSync(f, { force: true });
    return missing.length;
  }

  /** This writer holds the writer lock: it alone recovers what a killed one left, and may keep a decision journal. */
  get holdsLock(): boolean {
    return this.lock !== undefined;
  }

  /** Rows completed as interrupted at start-up. */
  recovered = 0;

  /** Requests whose decision is committed and whose outcome is not. */
  get inFlight(): number {
    return this.open.size;
  }

  /**
   * Writes every op in one transaction and returns once it is committed (fsynced). On any error
   * nothing is written and the error is thrown (`code`: SQLITE_BUSY, SQLITE_FULL, SQLITE_READONLY...).
   */
  apply(ops: readonly AuditOp[]): ChainHead {
    return this.applyPacked(ops.map((o) => pack(o.op === 'decision' ? DECISION : FINAL, o.rec)));
  }

  /** {@link apply} for ops as the writer threads pass them. */
  applyPacked(ops: readonly PackedOp[]): ChainHead {
    const undo: Undo = [];
    try {
      const started = performance.now();
      this.head = this.applyTx(ops, undo, this.sealFacts(ops));
      this.lastCommitSeconds = (performance.now() - started) / 1000;
      return this.head;
    } catch (err) {
      for (let i = undo.length - 1; i >= 0; i--) {
        const [k, v] = undo[i]!;
        if (v === undefined) this.open.delete(k);
        else this.open.set(k, v);
      }
      throw err;
    }
  }

  private track(undo: Undo, requestId: string, v: OpenRow | undefined): void {
    undo.push([requestId, this.open.get(requestId)]);
    if (v === undefined) this.open.delete(requestId);
    else this.open.set(requestId, v);
  }

  /**
   * The request facts of these ops (their `factsPlain`), sealed one batch per tenant before the
   * transaction begins (gateway/audit/facts.ts, `v2`), so the write lock is not held meanwhile.
   * Without a key, or when a batch cannot be sealed (its rows' request ids are reported), the
   * rows have no facts. The ops are left as they are: a failed transaction seals them again.
   */
  private sealFacts(ops: readonly PackedOp[]): TenantBatch[] {
    if (this.facts === undefined) return [];
    return sealByTenant(
      this.facts.key,
      ops.length,
      (i) => {
        const op = ops[i] as PackedOp;
        const plain = op[FACTS_PLAIN_AT];
        return typeof plain === 'string' ? [op[TENANT_AT] ?? null, op[REQUEST_ID_AT] as string, plain] : undefined;
      },
      this.facts.failed,
    );
  }

  private applyInTransaction(ops: readonly PackedOp[], undo: Undo, facts: readonly TenantBatch[]): ChainHead {
    // Each batch's row first: its id goes into the references its rows hold.
    let refs: (string | undefined)[] | undefined;
    for (const b of facts) {
      const id = Number(this.addBatch.run(b.at.length, b.sealed.text).lastInsertRowid);
      refs ??= new Array<string | undefined>(ops.length);
      for (let line = 0; line < b.at.length; line++) refs[b.at[line] as number] = batchRef(id, line, b.sealed.digest);
    }
    let head = headOf(this.headRow.get());
    const last = this.lastRow.get() as { id: number; logged_at: number | null } | undefined;
    let nextId = (last?.id ?? this.pruneFloor()) + 1;
    let loggedAt = Math.max(this.lastLoggedAt, last?.logged_at ?? 0);
    const columns = this.columns;
    const n = columns.length;
    for (let j = 0; j < ops.length; j++) {
      const op = ops[j] as PackedOp;
      loggedAt = Math.max(loggedAt, Date.now());
      const requestId = op[REQUEST_ID_AT] as string;
      // values: the columns in table order, then the three the insert binds last (see constructor).
      const values: unknown[] = new Array<unknown>(n + 3);
      for (let i = 0; i < n; i++) {
        const c = columns[i] as Column;
        const v = c.field < 0 ? null : op[c.field];
        values[i] =
          v === null || v === undefined
            ? null
            : typeof v === 'string' && !c.numeric
              ? storedText(v)
              : typeof v === 'number' && c.numeric && Number.isFinite(v)
                ? v
                : c.normalise(v);
      }
      const ref = refs?.[j];
      if (ref !== undefined) values[this.factsIndex] = ref;
      const seq = head.seq + 1;
      const ts = (values[this.tsIndex] as number | null) ?? null;
      const tenant = (values[this.tenantIndex] as string | null) ?? null;
      const kind = op[0] === DECISION ? EVENT.decision : EVENT.record;
      const open = kind === EVENT.record ? this.open.get(requestId) : undefined;
      if (open !== undefined) {
        const update = this.updateFor(open.values, values);
        const params = update.columns.map((i) => values[i]);
        params.push(seq, open.id);
        const changed = update.stmt.run(params).changes;
        this.track(undo, requestId, undefined);
        if (changed === 1) {
          // The decision's encoding with the changed columns' fragments replaced.
          const parts = open.parts.slice();
          for (const i of update.columns) {
            const at = this.planIndex[i] as number;
            if (at >= 0) parts[at] = fragment(this.plan[at]!.prefix, values[i]);
          }
          const hash = linkHash(head.hash, seq, EVENT.outcome, open.id, ts, tenant, sha256Hex(joinFragments(parts)));
          this.addEvent.run(seq, open.id, EVENT.outcome, hash, null);
          head = { seq, hash };
          continue;
        }
        // The row is gone (retention deleted it while the request ran): write the request whole.
      }
      const id = nextId++;
      const parts = rowFragments(this.plan, values, id, loggedAt);
      const digest = sha256Hex(joinFragments(parts));
      const hash = linkHash(head.hash, seq, kind, id, ts, tenant, digest);
      values[n] = id;
      values[n + 1] = loggedAt;
      values[n + 2] = seq;
      this.insert.run(values);
      // A decision's digest is kept: its row changes when the outcome arrives.
      this.addEvent.run(seq, id, kind, hash, kind === EVENT.decision ? Buffer.from(digest, 'hex') : null);
      // Its values are kept as they are: only the first n (the content columns) are read again.
      if (kind === EVENT.decision) this.track(undo, requestId, { id, loggedAt, values, parts });
      head = { seq, hash };
    }
    this.lastLoggedAt = loggedAt;
    return head;
  }

  /**
   * An UPDATE that sets only the columns whose values changed since the decision (typically the
   * outcome: status, upstream status, error, duration, bytes). SQLite maintains an index for every
   * indexed column an UPDATE names, changed or not, so naming only what changed keeps the
   * completion of a row from rewriting a dozen index entries. Prepared once per set of columns.
   */
  private updateFor(before: readonly unknown[], after: readonly unknown[]): { stmt: Statement; columns: number[] } {
    const columns: number[] = [];
    for (let i = 0; i < this.columns.length; i++) {
      const a = before[i];
      const b = after[i];
      if (a !== b && !(Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b))) columns.push(i);
    }
    const key = columns.join(',');
    let u = this.updates.get(key);
    if (u === undefined) {
      const set = columns.map((i) => `${(this.columns[i] as Column).name} = ?`);
      set.push('outcome_seq = ?');
      u = { stmt: this.db.prepare(`UPDATE audit_log SET ${set.join(', ')} WHERE id = ?`), columns };
      this.updates.set(key, u);
    }
    return u;
  }

  /** When every row was deleted, ids continue after the largest ever assigned (recorded by prune). */
  private pruneFloor(): number {
    return parseNote((this.lastPrune.get() as string | undefined) ?? null)?.max_id ?? 0;
  }

  /**
   * Deletes up to `maxRows` rows older than the cutoffs, keeping their events as stubs, compacts
   * the front of the chain, and appends a `prune` event recording what it did; one transaction.
   */
  prune(cutoffs: RetentionCutoffs, o: { maxRows?: number; now?: number } = {}): PruneResult {
    return pruneAudit(this.db, cutoffs, this.digestColumns, o, (id) => {
      for (const [k, v] of this.open) if (v.id === id) this.open.delete(k);
    });
  }

  close(): void {
    try {
      this.db.pragma('optimize');
    } catch {
      // best effort
    }
    this.db.close();
    this.lock?.close();
  }
}

export const WRITER_LOCK_FILE = 'audit-writer.lock';

/**
 * An exclusive lock for the lifetime of a writer: a small SQLite file in EXCLUSIVE locking mode,
 * written once, so its lock is held until the connection closes — or the process dies, when the
 * operating system releases it. Undefined when another live process holds it.
 */
export function writerLock(dataDir: string): AuditDatabase | undefined {
  let db: AuditDatabase | undefined;
  try {
    privateFile(join(dataDir, WRITER_LOCK_FILE));
    db = new Database(join(dataDir, WRITER_LOCK_FILE), { timeout: 0 });
    db.pragma('journal_mode = MEMORY'); // no -journal file beside it
    db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('user_version = 1');
    return db;
  } catch {
    db?.close();
    return undefined;
  }
}

/** Shared by the writer and `valet audit prune` (another process: the chain head is read under the lock). */
export function pruneAudit(
  db: AuditDatabase,
  cutoffs: RetentionCutoffs,
  digestColumns: readonly string[] = contentColumns(db),
  o: { maxRows?: number; now?: number } = {},
  forget: (rowId: number) => void = () => undefined,
): PruneResult {
  const maxRows = o.maxRows ?? 500;
  const named = Object.keys(cutoffs.tenantBefore);
  const run = db.transaction((): PruneResult => {
    const rows: Record<string, unknown>[] = [];
    if (cutoffs.defaultBefore !== null) {
      const notNamed = named.length === 0 ? '' : `AND (tenant IS NULL OR tenant NOT IN (${named.map(() => '?').join(', ')}))`;
      // In ts order: the ts index serves it without sorting however many rows are due.
      rows.push(
        ...(db.prepare(`SELECT * FROM audit_log WHERE ts < ? ${notNamed} ORDER BY ts LIMIT ?`).all(cutoffs.defaultBefore, ...named, maxRows) as Record<string, unknown>[]),
      );
    }
    for (const [tenant, before] of Object.entries(cutoffs.tenantBefore)) {
      if (before === null || rows.length >= maxRows) continue;
      rows.push(...(db.prepare('SELECT * FROM audit_log WHERE tenant = ? AND ts < ? ORDER BY id LIMIT ?').all(tenant, before, maxRows - rows.length) as Record<string, unknown>[]));
    }
    const batch = rows.slice(0, maxRows);
    const stub = db.prepare('UPDATE audit_chain SET ts = ?, tenant = ?, digest = coalesce(digest, ?) WHERE seq = ? AND row_id = ?');
    const del = db.prepare('DELETE FROM audit_log WHERE id = ?');
    const maxId = Math.max(
      (db.prepare('SELECT max(id) FROM audit_log').pluck().get() as number | null) ?? 0,
      parseNote((db.prepare(`SELECT note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq DESC LIMIT 1`).pluck().get() as string | undefined) ?? null)?.max_id ?? 0,
    );
    for (const row of batch) {
      const id = row['id'] as number;
      const digest = rowDigest(row, digestColumns);
      for (const seq of [row['chain_seq'], row['outcome_seq']]) {
        if (typeof seq === 'number') stub.run(row['ts'], row['tenant'] ?? null, digest, seq, id);
      }
      del.run(id);
      forget(id);
    }
    // A batch of sealed facts goes with the last row that refers to it.
    const released = batchRefCounts(batch);
    if (released.size > 0) {
      const release = db.prepare('UPDATE audit_facts SET rows = rows - ? WHERE id = ?');
      const drop = db.prepare('DELETE FROM audit_facts WHERE id = ? AND rows <= 0');
      for (const [batchId, n] of released) {
        release.run(n, batchId);
        drop.run(batchId);
      }
    }

    // Compact: the longest run of stubs and old prune events at the front of the chain.
    const checkpoint = readCheckpoint(db);
    const front = db.prepare('SELECT seq, kind, hash, ts FROM audit_chain WHERE seq > ? ORDER BY seq LIMIT 5000').all(checkpoint.seq) as {
      seq: number;
      kind: number;
      hash: Buffer;
      ts: number | null;
    }[];
    const { through, compacted } = compactable(checkpoint, front);
    if (batch.length === 0 && compacted === 0) return { rows: 0, compacted: 0, done: true };
    if (compacted > 0) db.prepare('DELETE FROM audit_chain WHERE seq <= ?').run(through.seq);

    const head = readHead(db);
    const note = pruneNote(cutoffs, batch.length, maxId, through, o.now ?? Date.now());
    const text = encodeNote(note);
    const base = head.seq === 0 || head.seq <= through.seq ? through : head;
    const seq = base.seq + 1;
    const hash = linkHash(base.hash, seq, EVENT.prune, maxId, note.at, null, sha256(text));
    db.prepare('INSERT INTO audit_chain (seq, row_id, kind, hash, ts, note) VALUES (?, ?, ?, ?, ?, ?)').run(seq, maxId, EVENT.prune, hash, note.at, text);
    return { rows: batch.length, compacted, done: batch.length < maxRows };
  });
  return run.immediate();
}
