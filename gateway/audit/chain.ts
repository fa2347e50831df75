import { hash } from 'node:crypto';
import type { AuditDatabase } from './store.js';

/**
 * The audit log's hash chain.
 *
 * Every change to the log is an *event* in `audit_chain`, numbered `seq` = 1, 2, 3, ... in commit
 * order by the single writer, and linked to the previous one:
 *
 *   hash(seq) = SHA-256( hash(seq - 1) ‖ JSON [seq, kind, row_id, ts, tenant, hex(digest)] )
 *
 * where `digest` is the SHA-256 of the event's content (below) and hash(0) is 32 zero bytes.
 *
 * Kinds of event:
 * - 1 `decision`: a request about to be forwarded; its row is written, durably, before the call
 *   leaves. The digest covers the whole row as it was then, and is stored with the event because
 *   the row's outcome columns change afterwards.
 * - 2 `outcome`: the same row completed (status, latency, bytes...). The digest covers the whole row
 *   as it is now, so every column of a finished row is covered by this event.
 * - 3 `record`: a row written once, complete (a request refused before forwarding).
 * - 4 `prune`: retention deleted rows; the digest covers the event's `note` (JSON: cutoffs, counts,
 *   and the checkpoint below).
 *
 * A row's content is encoded canonically: every column whose value is not NULL, except the chain's
 * own bookkeeping columns, as `[name, value]` pairs sorted by name, serialised with JSON.stringify.
 * Leaving NULLs out means a column added by a later migration (NULL in old rows) does not change
 * the digest of rows written before it existed. The row id is part of the content, so moving a
 * row's content to another id is caught like any edit.
 *
 * `ts` and `tenant` appear in the hashed tuple as well as in the content so that, once retention
 * deletes a row, its events can stay behind as *stubs* (ts, tenant and digest copied into the
 * event) and still be checked: the stub's hash proves which tenant's row of what age was removed,
 * and verify accepts the removal only if a later prune event's cutoffs cover it. When every event
 * up to some seq is a stub (or a prune event), the prefix is deleted and the prune event records
 * the hash it ended on (`through_seq`, `through_hash`): verification starts from there.
 */

export const EVENT = { decision: 1, outcome: 2, record: 3, prune: 4 } as const;
export type EventKind = (typeof EVENT)[keyof typeof EVENT];

/** Columns the chain maintains for itself: not content, not hashed. */
export const META_COLUMNS: ReadonlySet<string> = new Set(['chain_seq', 'outcome_seq']);

export const GENESIS: Buffer = Buffer.alloc(32);

export type RowValues = Readonly<Record<string, unknown>>;

/** The canonical content encoding of a row (see above); `columns` sorted by name, meta columns removed. */
export function encodeRow(row: RowValues, columns: readonly string[]): string {
  const pairs: [string, unknown][] = [];
  for (const c of columns) {
    const v = row[c];
    if (v !== null && v !== undefined) pairs.push([c, v]);
  }
  return JSON.stringify(pairs);
}

export function sha256(data: string | Buffer): Buffer {
  return hash('sha256', data, 'buffer');
}

export function rowDigest(row: RowValues, columns: readonly string[]): Buffer {
  return sha256(encodeRow(row, columns));
}

/** SHA-256 as lowercase hex: a string is cheaper to make than a Buffer (the writer's hot path). */
export function sha256Hex(data: string): string {
  return hash('sha256', data, 'hex');
}

/** Reused for every link: hash(seq - 1) then the tuple, so a link allocates no input buffer. */
let linkScratch = Buffer.allocUnsafe(1024);

/**
 * hash(seq) from hash(seq - 1) and the event; `digest` as bytes or as lowercase hex. The tuple is
 * written out by hand, byte for byte what `JSON.stringify([seq, kind, rowId, ts, tenant, hex])`
 * makes (integers and finite numbers print alike in both).
 */
export function linkHash(prev: Buffer, seq: number, kind: number, rowId: number, ts: number | null, tenant: string | null, digest: Buffer | string): Buffer {
  const hex = typeof digest === 'string' ? digest : digest.toString('hex');
  const tuple = `[${seq},${kind},${rowId},${ts === null || !Number.isFinite(ts) ? 'null' : ts},${tenant === null ? 'null' : jsonString(tenant)},"${hex}"]`;
  const need = 32 + Buffer.byteLength(tuple, 'utf8');
  if (need > linkScratch.length) linkScratch = Buffer.allocUnsafe(need * 2);
  prev.copy(linkScratch, 0, 0, 32);
  const n = linkScratch.write(tuple, 32, 'utf8');
  return hash('sha256', linkScratch.subarray(0, 32 + n), 'buffer');
}

/**
 * The text SQLite will hand back: it stores UTF-8, where a lone UTF-16 surrogate (possible in a
 * JWT claim or a JSON argument) becomes U+FFFD. The writer hashes what will be read back.
 */
export function storedText(s: string): string {
  const w = s as string & { isWellFormed(): boolean; toWellFormed(): string };
  return w.isWellFormed() ? s : w.toWellFormed();
}

/** Printable ASCII without `"` or `\`: JSON writes such a string as it is, between quotes. */
const PLAIN = /^[ !#-[\]-~]*$/;

/** `JSON.stringify(s)` for a string, without the native call for the common plain case. */
export function jsonString(s: string): string {
  return PLAIN.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** The content columns of `audit_log`, sorted by name: what {@link encodeRow} covers. */
export function contentColumns(db: AuditDatabase): string[] {
  const cols = db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all('audit_log') as string[];
  return cols.filter((c) => !META_COLUMNS.has(c)).sort();
}

/** What a prune event's note records. Times are Unix milliseconds. */
export interface PruneNote {
  v: 1;
  /** When the prune ran. */
  at: number;
  /** Rows of tenants not listed in `tenant_before` (and rows with no tenant) older than this were deleted; null: none. */
  default_before: number | null;
  /** Per-tenant cutoffs; null: that tenant's rows are kept. */
  tenant_before: Record<string, number | null>;
  /** Rows deleted by this event. */
  rows: number;
  /** The largest row id ever assigned when the prune ran (ids are never reused). */
  max_id: number;
  /** Events 1..through_seq were compacted away; through_hash is hash(through_seq). */
  through_seq: number | null;
  through_hash: string | null;
}

export function encodeNote(n: PruneNote): string {
  return JSON.stringify({
    v: n.v,
    at: n.at,
    default_before: n.default_before,
    tenant_before: Object.fromEntries(Object.entries(n.tenant_before).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))),
    rows: n.rows,
    max_id: n.max_id,
    through_seq: n.through_seq,
    through_hash: n.through_hash,
  });
}

export function parseNote(text: string | null): PruneNote | undefined {
  if (text === null) return undefined;
  try {
    const n = JSON.parse(text) as PruneNote;
    return typeof n === 'object' && n !== null && n.v === 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** The last event and the checkpoint verification starts from. */
export interface ChainHead {
  seq: number;
  hash: Buffer;
}

export function readHead(db: AuditDatabase): ChainHead {
  const r = db.prepare('SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: Buffer } | undefined;
  return r === undefined ? { seq: 0, hash: GENESIS } : { seq: r.seq, hash: r.hash };
}

/** Where the retained chain begins: the latest compaction checkpoint, or the genesis. */
export function readCheckpoint(db: AuditDatabase): ChainHead {
  const notes = db.prepare(`SELECT note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq DESC`).pluck().iterate() as IterableIterator<string>;
  for (const text of notes) {
    const n = parseNote(text);
    if (n?.through_seq != null && n.through_hash != null) return { seq: n.through_seq, hash: Buffer.from(n.through_hash, 'hex') };
  }
  return { seq: 0, hash: GENESIS };
}

// ---------------------------------------------------------------------------------------------
// verification

/** An anchor: the chain head at some moment, kept outside the database. */
export interface Anchor {
  seq: number;
  hash: string;
  at: number;
  /** Where it came from, for messages (`file:line`). */
  source?: string;
}

export interface VerifyProblem {
  /** Chain position the problem is at (for ordering; rows not in the chain sort by their neighbours). */
  position: number;
  seq: number | null;
  rowId: number | null;
  requestId: string | null;
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Rows in audit_log, and events in the retained chain. */
  rows: number;
  events: number;
  head: { seq: number; hash: string };
  /** The compaction checkpoint verification started from (seq 0: the genesis). */
  checkpoint: { seq: number; hash: string };
  /** Rows whose decision was recorded but whose outcome never was (the gateway stopped mid-request). */
  incomplete: number;
  /** Events whose rows retention deleted (kept as stubs). */
  pruned: number;
  anchors: { checked: number; beforeCheckpoint: number; latest: Anchor | undefined };
  /** Sorted by position: the first is the first bad row or event. */
  problems: VerifyProblem[];
}

interface EventRow {
  seq: number;
  kind: number;
  row_id: number;
  hash: Buffer;
  ts: number | null;
  tenant: string | null;
  digest: Buffer | null;
  note: string | null;
}

/** For each prune event (by seq), the cutoff any later prune applies to a tenant: stubs need a later prune covering them. */
function coverage(prunes: { seq: number; note: PruneNote | undefined }[]): (seq: number, tenant: string | null, ts: number) => boolean {
  const tenants = new Set<string>();
  for (const p of prunes) for (const t of Object.keys(p.note?.tenant_before ?? {})) tenants.add(t);
  const cutoff = (n: PruneNote | undefined, t: string | null): number => {
    if (n === undefined) return -Infinity;
    const v = t !== null && Object.hasOwn(n.tenant_before, t) ? n.tenant_before[t] : n.default_before;
    return v ?? -Infinity;
  };
  // suffix[i]: the largest cutoff any prune at index >= i applies, per named tenant and for the rest.
  const suffixDefault: number[] = new Array<number>(prunes.length + 1).fill(-Infinity);
  const suffixTenant = new Map<string, number[]>([...tenants].map((t) => [t, new Array<number>(prunes.length + 1).fill(-Infinity)]));
  for (let i = prunes.length - 1; i >= 0; i--) {
    const n = prunes[i]!.note;
    suffixDefault[i] = Math.max(suffixDefault[i + 1]!, cutoff(n, null));
    for (const [t, arr] of suffixTenant) arr[i] = Math.max(arr[i + 1]!, cutoff(n, t));
  }
  return (seq, tenant, ts) => {
    let lo = 0;
    let hi = prunes.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (prunes[mid]!.seq > seq) hi = mid;
      else lo = mid + 1;
    }
    const arr = tenant !== null ? suffixTenant.get(tenant) : undefined;
    return ts < (arr !== undefined ? arr[lo]! : suffixDefault[lo]!);
  };
}

/**
 * Checks the whole retained chain and every row against it, inside one read transaction (a
 * consistent snapshot while the gateway keeps writing). Finds: rows edited (content no longer
 * matches its hash), rows deleted (an event whose row is gone and that no prune covers), events
 * deleted (a gap in seq), rows inserted (a row no event names), rows reordered or moved to another
 * id, events rewritten (an event that does not chain from the one before), and, with anchors, the
 * tail cut off or the history rewritten up to an anchored point.
 */
export function verifyChain(db: AuditDatabase, o: { anchors?: readonly Anchor[]; maxProblems?: number } = {}): VerifyResult {
  const maxProblems = o.maxProblems ?? 50;
  db.exec('BEGIN');
  try {
    return verifyInSnapshot(db, o.anchors ?? [], maxProblems);
  } finally {
    db.exec('COMMIT');
  }
}

function verifyInSnapshot(db: AuditDatabase, anchors: readonly Anchor[], maxProblems: number): VerifyResult {
  const columns = contentColumns(db);
  const problems: VerifyProblem[] = [];
  const problem = (p: Omit<VerifyProblem, 'position'> & { position?: number }): void => {
    problems.push({ position: p.position ?? p.seq ?? Number.MAX_SAFE_INTEGER, ...p });
  };
  const prunes = (db.prepare(`SELECT seq, note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq`).all() as { seq: number; note: string | null }[]).map(
    (p) => ({ seq: p.seq, note: parseNote(p.note) }),
  );
  const covered = coverage(prunes);
  const checkpoint = readCheckpoint(db);
  const getRow = db.prepare('SELECT * FROM audit_log WHERE id = ?');
  const events = db.prepare('SELECT seq, kind, row_id, hash, ts, tenant, digest, note FROM audit_chain WHERE seq > ? ORDER BY seq').iterate(checkpoint.seq) as IterableIterator<EventRow>;

  let expected = checkpoint.seq + 1;
  let prev: Buffer | undefined = checkpoint.hash;
  let count = 0;
  let pruned = 0;
  let liveRecords = 0;
  let lastFirstRow = 0;
  let lastSeq = checkpoint.seq;
  let lastHash = checkpoint.hash;
  /** Decision events still waiting for their outcome event: row id → (seq, stored digest). */
  const awaiting = new Map<number, { seq: number; digest: Buffer }>();

  for (const e of events) {
    if (problems.length >= maxProblems) break;
    count++;
    if (e.seq !== expected) {
      problem({
        seq: e.seq,
        rowId: null,
        requestId: null,
        position: expected,
        message:
          e.seq - expected === 1
            ? `event ${expected} is missing (deleted from the chain; its row went with it or is reported below)`
            : `events ${expected}–${e.seq - 1} are missing (deleted from the chain)`,
      });
      // Its predecessor is gone: this link cannot be checked; later ones are, against stored hashes.
      prev = undefined;
    }
    expected = e.seq + 1;
    lastSeq = e.seq;
    lastHash = e.hash;

    let digest: Buffer | undefined;
    let ts: number | null = null;
    let tenant: string | null = null;
    let requestId: string | null = null;
    const isFirst = e.kind === EVENT.decision || e.kind === EVENT.record;
    if (e.kind === EVENT.prune) {
      digest = sha256(e.note ?? '');
      ts = e.ts;
    } else if (e.kind === EVENT.decision || e.kind === EVENT.outcome || e.kind === EVENT.record) {
      const row = getRow.get(e.row_id) as Record<string, unknown> | undefined;
      if (row !== undefined) {
        ts = row['ts'] as number;
        tenant = (row['tenant'] as string | null) ?? null;
        requestId = (row['request_id'] as string | null) ?? null;
        if (e.kind === EVENT.decision) {
          if (e.digest === null) {
            problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id}: its decision event lacks the stored digest (the event was altered)` });
          } else {
            digest = e.digest;
            awaiting.set(e.row_id, { seq: e.seq, digest: e.digest });
          }
        } else {
          digest = rowDigest(row, columns);
          if (e.kind === EVENT.outcome && !awaiting.delete(e.row_id)) {
            problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id}: an outcome event with no decision event before it (inserted, or moved)` });
          }
        }
        if (isFirst) liveRecords++;
      } else if (e.ts !== null && e.digest !== null) {
        // A stub: retention deleted the row and kept what proves which row it was.
        pruned++;
        digest = e.digest;
        ts = e.ts;
        tenant = e.tenant;
        if (e.kind === EVENT.decision) awaiting.set(e.row_id, { seq: e.seq, digest: e.digest });
        if (e.kind === EVENT.outcome) awaiting.delete(e.row_id);
        if (!covered(e.seq, tenant, ts)) {
          problem({
            seq: e.seq,
            rowId: e.row_id,
            requestId: null,
            message: `row ${e.row_id} (tenant ${tenant ?? '-'}, ${new Date(ts).toISOString()}) was removed, but no later retention prune covers it`,
          });
        }
      } else {
        problem({ seq: e.seq, rowId: e.row_id, requestId: null, message: `row ${e.row_id} is missing (deleted)` });
      }
      if (isFirst) {
        if (e.row_id <= lastFirstRow) {
          problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id} is out of order (after row ${lastFirstRow}): rows were reordered or renumbered` });
        }
        lastFirstRow = Math.max(lastFirstRow, e.row_id);
      }
    } else {
      problem({ seq: e.seq, rowId: e.row_id, requestId: null, message: `event ${e.seq} has an unknown kind ${e.kind} (inserted or altered)` });
    }

    if (digest !== undefined && prev !== undefined) {
      const link = linkHash(prev, e.seq, e.kind, e.row_id, ts, tenant, digest);
      if (!link.equals(e.hash)) {
        const what =
          e.kind === EVENT.prune
            ? `the retention record at event ${e.seq} was altered`
            : e.kind === EVENT.decision
              ? `row ${e.row_id}: its decision event does not match (the event or the previous event's hash was rewritten, or the row was renumbered)`
              : `row ${e.row_id} does not match its hash (edited, moved, or the previous event's hash was rewritten)`;
        problem({ seq: e.seq, rowId: e.kind === EVENT.prune ? null : e.row_id, requestId, message: what });
      }
    }
    prev = e.hash;
  }

  // Rows whose decision was recorded but whose outcome never came: their content must still be the decision's.
  let incomplete = 0;
  for (const [rowId, a] of awaiting) {
    const row = getRow.get(rowId) as Record<string, unknown> | undefined;
    if (row === undefined) continue; // a stub: checked above
    if (!rowDigest(row, columns).equals(a.digest)) {
      problem({ seq: a.seq, rowId, requestId: (row['request_id'] as string) ?? null, message: `row ${rowId} (no outcome recorded) does not match its decision record (edited)` });
    } else {
      incomplete++;
    }
  }

  // Rows no event names: inserted behind the writer's back.
  const rows = db.prepare('SELECT count(*) FROM audit_log').pluck().get() as number;
  if (rows !== liveRecords) {
    const strays = db
      .prepare(
        `SELECT r.id, r.request_id FROM audit_log r
         WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.seq = r.chain_seq AND c.row_id = r.id AND c.kind IN (${EVENT.decision}, ${EVENT.record}) AND c.seq > ?)
         ORDER BY r.id LIMIT ?`,
      )
      .all(checkpoint.seq, maxProblems) as { id: number; request_id: string | null }[];
    const seqBefore = db.prepare('SELECT chain_seq FROM audit_log WHERE id < ? AND chain_seq IS NOT NULL ORDER BY id DESC LIMIT 1').pluck();
    for (const s of strays) {
      const before = (seqBefore.get(s.id) as number | undefined) ?? 0;
      problem({ seq: null, rowId: s.id, requestId: s.request_id, position: before + 0.5, message: `row ${s.id} is not in the chain (inserted)` });
    }
  }

  // Anchors: the head must have reached every anchored point, with the same hash there.
  const hashAt = db.prepare('SELECT hash FROM audit_chain WHERE seq = ?').pluck();
  let checked = 0;
  let beforeCheckpoint = 0;
  let latest: Anchor | undefined;
  for (const a of anchors) {
    if (latest === undefined || a.seq > latest.seq) latest = a;
    const where = `the anchor of ${new Date(a.at).toISOString()}${a.source ? ` (${a.source})` : ''}`;
    if (a.seq > lastSeq) {
      problem({
        seq: null,
        rowId: null,
        requestId: null,
        position: lastSeq + 0.5,
        message: `the chain ends at event ${lastSeq}, but ${where} records event ${a.seq}: the newest events were removed (truncated)`,
      });
      continue;
    }
    if (a.seq < checkpoint.seq) {
      beforeCheckpoint++;
      continue;
    }
    const stored = a.seq === checkpoint.seq ? checkpoint.hash : (hashAt.get(a.seq) as Buffer | undefined);
    checked++;
    if (stored === undefined) continue; // the gap is reported above
    if (stored.toString('hex') !== a.hash) {
      problem({ seq: a.seq, rowId: null, requestId: null, message: `event ${a.seq} differs from ${where}: the chain was rewritten up to that point` });
    }
  }

  problems.sort((a, b) => a.position - b.position);
  const head = count === 0 ? checkpoint : { seq: lastSeq, hash: lastHash };
  return {
    ok: problems.length === 0,
    rows,
    events: count,
    head: { seq: head.seq, hash: head.hash.toString('hex') },
    checkpoint: { seq: checkpoint.seq, hash: checkpoint.hash.toString('hex') },
    incomplete,
    pruned,
    anchors: { checked, beforeCheckpoint, latest },
    problems,
  };
}
