import type pg from 'pg';
import { compactable, encodeNote, EVENT, GENESIS, linkHash, parseNote, rowDigest, pruneNote, sha256, type ChainHead } from '../chain.js';
import { batchRefCounts } from '../facts.js';
import type { PruneResult, RetentionCutoffs } from '../port.js';
import { DIGEST_COLUMNS, lockKey, SELECT_ROW } from './schema.js';

type Queryable = Pick<pg.PoolClient, 'query'>;

/** Where the retained chain begins: the latest compaction checkpoint, or the genesis. */
export async function readCheckpoint(db: Queryable): Promise<ChainHead> {
  const notes = await db.query<{ note: string | null }>(
    `SELECT note FROM audit_chain WHERE kind = ${EVENT.prune} AND note LIKE '%"through_hash":"%' ORDER BY seq DESC LIMIT 1`,
  );
  const n = parseNote(notes.rows[0]?.note ?? null);
  return n?.through_seq != null && n.through_hash != null ? { seq: n.through_seq, hash: Buffer.from(n.through_hash, 'hex') } : { seq: 0, hash: GENESIS };
}

/**
 * One prune step inside the caller's transaction, with the semantics of the SQLite one
 * (gateway/audit/sqlite/core.ts pruneAudit): up to `maxRows` rows older than the cutoffs are
 * deleted, their events kept as stubs (ts, tenant, digest), the front of the chain compacted, and a
 * `prune` event appended recording what was done. The chain lock and the head row make it one more
 * writer of the shared chain.
 */
export async function pruneInTransaction(
  db: Queryable,
  schema: string,
  cutoffs: RetentionCutoffs,
  o: { maxRows?: number; now?: number } = {},
  forget: (rowId: number) => void = () => undefined,
): Promise<PruneResult> {
  const maxRows = o.maxRows ?? 500;
  await db.query('SELECT pg_advisory_xact_lock($1::bigint)', [lockKey(schema, 'chain')]);
  const named = Object.keys(cutoffs.tenantBefore);
  const rows: Record<string, unknown>[] = [];
  if (cutoffs.defaultBefore !== null) {
    const r = await db.query(
      `SELECT ${SELECT_ROW} FROM audit_log WHERE ts < $1 AND (tenant IS NULL OR NOT (tenant = ANY($2::text[]))) ORDER BY ts LIMIT $3`,
      [cutoffs.defaultBefore, named, maxRows],
    );
    rows.push(...r.rows);
  }
  for (const [tenant, before] of Object.entries(cutoffs.tenantBefore)) {
    if (before === null || rows.length >= maxRows) continue;
    const r = await db.query(`SELECT ${SELECT_ROW} FROM audit_log WHERE tenant = $1 AND ts < $2 ORDER BY id LIMIT $3`, [tenant, before, maxRows - rows.length]);
    rows.push(...r.rows);
  }
  const batch = rows.slice(0, maxRows);
  const head = (await db.query<{ seq: number; hash: Buffer; next_id: number }>('SELECT seq, hash, next_id FROM audit_head')).rows[0];
  if (head === undefined) throw new Error('audit_head is empty');
  const maxId = head.next_id - 1;
  for (const row of batch) {
    const id = row['id'] as number;
    const digest = rowDigest(row, DIGEST_COLUMNS);
    for (const seq of [row['chain_seq'], row['outcome_seq']]) {
      if (typeof seq === 'number') {
        await db.query('UPDATE audit_chain SET ts = $1, tenant = $2, digest = coalesce(digest, $3) WHERE seq = $4 AND row_id = $5', [row['ts'], row['tenant'] ?? null, digest, seq, id]);
      }
    }
    forget(id);
  }
  if (batch.length > 0) await db.query('DELETE FROM audit_log WHERE id = ANY($1::bigint[])', [batch.map((r) => r['id'])]);
  // A batch of sealed facts goes with the last row that refers to it.
  const released = batchRefCounts(batch);
  if (released.size > 0) {
    const ids = [...released.keys()];
    await db.query('UPDATE audit_facts f SET rows = f.rows - r.n FROM unnest($1::bigint[], $2::int[]) AS r(id, n) WHERE f.id = r.id', [ids, ids.map((id) => released.get(id))]);
    await db.query('DELETE FROM audit_facts WHERE id = ANY($1::bigint[]) AND rows <= 0', [ids]);
  }

  // Compact: the longest run of stubs and old prune events at the front of the chain.
  const checkpoint = await readCheckpoint(db);
  const front = (
    await db.query<{ seq: number; kind: number; hash: Buffer; ts: number | null }>('SELECT seq, kind, hash, ts FROM audit_chain WHERE seq > $1 ORDER BY seq LIMIT 5000', [checkpoint.seq])
  ).rows;
  const { through, compacted } = compactable(checkpoint, front);
  if (batch.length === 0 && compacted === 0) return { rows: 0, compacted: 0, done: true };
  if (compacted > 0) await db.query('DELETE FROM audit_chain WHERE seq <= $1', [through.seq]);

  const note = pruneNote(cutoffs, batch.length, maxId, through, o.now ?? Date.now());
  const text = encodeNote(note);
  const seq = head.seq + 1;
  const hash = linkHash(head.hash, seq, EVENT.prune, maxId, note.at, null, sha256(text));
  await db.query('INSERT INTO audit_chain (seq, row_id, kind, hash, ts, note) VALUES ($1, $2, $3, $4, $5, $6)', [seq, maxId, EVENT.prune, hash, note.at, text]);
  await db.query('UPDATE audit_head SET seq = $1, hash = $2', [seq, hash]);
  return { rows: batch.length, compacted, done: batch.length < maxRows };
}
