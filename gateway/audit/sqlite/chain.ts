import { batchDigest } from '../facts.js';
import { anchorSeqs, ChainWalk, checkAnchors, EVENT, factsRefProblem, GENESIS, META_COLUMNS, parseNote, problemList, pruneCoverage, rowDigest, verifyResult, type ChainEvent, type ChainHead } from '../chain.js';
import type { Anchor, VerifyResult } from '../port.js';
import type { AuditDatabase } from './store.js';

/** The hash chain (gateway/audit/chain.ts) as SQLite stores it: `audit_chain`, read and verified here. */

/** The content columns of `audit_log`, sorted by name: what {@link encodeRow} covers. */
export function contentColumns(db: AuditDatabase): string[] {
  const cols = db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all('audit_log') as string[];
  return cols.filter((c) => !META_COLUMNS.has(c)).sort();
}

/** The chain's newest event. */
export const HEAD_SQL = 'SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1';

/** The chain head from {@link HEAD_SQL}'s row (none: the genesis). */
export function headOf(r: unknown): ChainHead {
  const row = r as { seq: number; hash: Buffer } | undefined;
  return row === undefined ? { seq: 0, hash: GENESIS } : { seq: row.seq, hash: row.hash };
}

export function readHead(db: AuditDatabase): ChainHead {
  return headOf(db.prepare(HEAD_SQL).get());
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
  const { problems, problem } = problemList();
  const prunes = (db.prepare(`SELECT seq, note FROM audit_chain WHERE kind = ${EVENT.prune} ORDER BY seq`).all() as { seq: number; note: string | null }[]).map(
    (p) => ({ seq: p.seq, note: parseNote(p.note) }),
  );
  const covered = pruneCoverage(prunes);
  const checkpoint = readCheckpoint(db);
  const getRow = db.prepare('SELECT * FROM audit_log WHERE id = ?');
  const events = db.prepare('SELECT seq, kind, row_id, hash, ts, tenant, digest, note FROM audit_chain WHERE seq > ? ORDER BY seq').iterate(checkpoint.seq) as IterableIterator<ChainEvent>;

  const walk = new ChainWalk(checkpoint, columns, covered, problem);
  for (const e of events) {
    if (problems.length >= maxProblems) break;
    walk.event(e, e.kind === EVENT.prune ? undefined : (getRow.get(e.row_id) as Record<string, unknown> | undefined));
  }
  const { count, pruned, liveRecords, lastSeq, lastHash, awaiting } = walk;

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

  // Rows whose sealed facts are a batch's: the batch is there, as it was.
  if (hasFactsBatches(db)) {
    const digests = new Map<number, string>();
    for (const b of db.prepare('SELECT id, sealed FROM audit_facts').iterate() as IterableIterator<{ id: number; sealed: string }>) digests.set(b.id, batchDigest(b.sealed));
    const refs = db.prepare(`SELECT id, request_id, facts, coalesce(outcome_seq, chain_seq) AS seq FROM audit_log WHERE facts LIKE 'v2.%' ORDER BY id`).iterate() as IterableIterator<{
      id: number;
      request_id: string | null;
      facts: string;
      seq: number | null;
    }>;
    for (const r of refs) {
      if (problems.length >= maxProblems) break;
      const p = factsRefProblem(r, digests);
      if (p !== undefined) problem(p);
    }
  }

  const hashAt = db.prepare('SELECT hash FROM audit_chain WHERE seq = ?').pluck();
  const stored = new Map<number, Buffer>();
  for (const seq of anchorSeqs(anchors, checkpoint, lastSeq)) {
    const h = hashAt.get(seq) as Buffer | undefined;
    if (h !== undefined) stored.set(seq, h);
  }
  const anchorsChecked = checkAnchors(anchors, checkpoint, lastSeq, stored, problem);
  return verifyResult({ problems, rows, events: count, checkpoint, last: { seq: lastSeq, hash: lastHash }, incomplete, pruned, anchors: anchorsChecked });
}

/** Whether the database has the table of sealed facts batches (a read-only open of an older file may not). */
export function hasFactsBatches(db: AuditDatabase): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_facts'").get() !== undefined;
}
