import { hash } from 'node:crypto';
import { parseBatchRef } from './facts.js';
import type { Anchor, VerifyProblem, VerifyResult } from './port.js';

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

/**
 * One `["name",value]` pair of {@link encodeRow} (`prefix` is `["name",`), or '' for NULL:
 * `JSON.stringify` output, made faster for strings and numbers. The writers encode a row in such
 * pieces, so that a completion re-encodes only the columns its outcome changed.
 */
export function fragment(prefix: string, v: unknown): string {
  if (v === null || v === undefined) return '';
  const json = typeof v === 'string' ? jsonString(v) : typeof v === 'number' && Number.isFinite(v) ? String(v) : JSON.stringify(v);
  return `${prefix}${json}]`;
}

/** Where a digest column's value is: an index into a row's content values, or one of these two. */
const DIGEST_ID = -1;
const DIGEST_LOGGED_AT = -2;

/** How a writer encodes a row's content from its values: each digest column's `["name",` prefix and where its value is. */
export type DigestPlan = readonly { readonly prefix: string; readonly at: number }[];

/** The plan for `digestColumns` (sorted by name) over rows whose content values are in `contentColumns` order. */
export function digestPlan(digestColumns: readonly string[], contentColumns: readonly string[]): DigestPlan {
  return digestColumns.map((name) => ({ prefix: `[${JSON.stringify(name)},`, at: name === 'id' ? DIGEST_ID : name === 'logged_at' ? DIGEST_LOGGED_AT : contentColumns.indexOf(name) }));
}

/**
 * {@link encodeRow} of the row these values make, without building the row, in pieces: one
 * fragment per digest column ('' where NULL). `reuse`: a row written before (a decision) whose
 * fragments stand for the columns whose values are the same.
 */
export function rowFragments(plan: DigestPlan, values: readonly unknown[], id: number, loggedAt: number, reuse?: { readonly values: readonly unknown[]; readonly parts: readonly string[] }): string[] {
  const parts = new Array<string>(plan.length);
  for (let i = 0; i < plan.length; i++) {
    const p = plan[i] as { prefix: string; at: number };
    if (p.at === DIGEST_ID) parts[i] = fragment(p.prefix, id);
    else if (p.at === DIGEST_LOGGED_AT) parts[i] = fragment(p.prefix, loggedAt);
    else parts[i] = reuse !== undefined && reuse.values[p.at] === values[p.at] ? (reuse.parts[i] as string) : fragment(p.prefix, values[p.at]);
  }
  return parts;
}

/** {@link encodeRow}'s string from its fragments, in digest column order. */
export function joinFragments(parts: readonly string[]): string {
  let s = '[';
  for (const p of parts) {
    if (p === '') continue;
    s += s.length === 1 ? p : `,${p}`;
  }
  return `${s}]`;
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

/** An event at the front of the chain, as compaction reads it. */
export interface FrontEvent {
  readonly seq: number;
  readonly kind: number;
  readonly hash: Buffer;
  readonly ts: number | null;
}

/**
 * How far compaction may cut the chain: through the longest run, right after the checkpoint, of
 * stubs of pruned rows and earlier prune events (a live event, one with a time, ends the run).
 */
export function compactable(checkpoint: { readonly seq: number; readonly hash: Buffer }, front: readonly FrontEvent[]): { through: { seq: number; hash: Buffer }; compacted: number } {
  let through = { seq: checkpoint.seq, hash: checkpoint.hash };
  let compacted = 0;
  for (const e of front) {
    if (e.seq !== through.seq + 1) break;
    if (e.kind !== EVENT.prune && e.ts === null) break;
    through = { seq: e.seq, hash: e.hash };
    compacted++;
  }
  return { through, compacted };
}

/** The note a prune event carries: what was deleted and where the chain now starts. */
export function pruneNote(
  cutoffs: { readonly defaultBefore: number | null; readonly tenantBefore: Record<string, number | null> },
  rows: number,
  maxId: number,
  through: { readonly seq: number; readonly hash: Buffer },
  at: number,
): PruneNote {
  return {
    v: 1,
    at,
    default_before: cutoffs.defaultBefore,
    tenant_before: cutoffs.tenantBefore,
    rows,
    max_id: maxId,
    through_seq: through.seq === 0 ? null : through.seq,
    through_hash: through.seq === 0 ? null : through.hash.toString('hex'),
  };
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

/** For each prune event (by seq), the cutoff any later prune applies to a tenant: stubs need a later prune covering them. */
export function pruneCoverage(prunes: { seq: number; note: PruneNote | undefined }[]): (seq: number, tenant: string | null, ts: number) => boolean {
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

/** One event of the chain as verify reads it. */
export interface ChainEvent {
  seq: number;
  kind: number;
  row_id: number;
  hash: Buffer;
  ts: number | null;
  tenant: string | null;
  digest: Buffer | null;
  note: string | null;
}

/** A problem verify found; `position` orders the report (defaults to the event's seq). */
export type ChainProblem = { seq: number | null; rowId: number | null; requestId: string | null; message: string; position?: number };

/**
 * The walk `valet audit verify` makes over the retained chain, whatever stores it: fed each event
 * in seq order with its row (undefined when the row is gone), it checks the links, the rows'
 * digests, the order of first events, gaps, and that every removed row is covered by a prune.
 * The store reads; this decides.
 */
export class ChainWalk {
  count = 0;
  pruned = 0;
  liveRecords = 0;
  lastSeq: number;
  lastHash: Buffer;
  /** Decision events still waiting for their outcome event: row id → (seq, stored digest). */
  readonly awaiting = new Map<number, { seq: number; digest: Buffer }>();
  private expected: number;
  private prev: Buffer | undefined;
  private lastFirstRow = 0;

  constructor(
    checkpoint: { readonly seq: number; readonly hash: Buffer },
    private readonly columns: readonly string[],
    private readonly covered: (seq: number, tenant: string | null, ts: number) => boolean,
    private readonly problem: (p: ChainProblem) => void,
  ) {
    this.expected = checkpoint.seq + 1;
    this.prev = checkpoint.hash;
    this.lastSeq = checkpoint.seq;
    this.lastHash = checkpoint.hash;
  }

  event(e: ChainEvent, row: RowValues | undefined): void {
    const problem = this.problem;
    this.count++;
    if (e.seq !== this.expected) {
      const expected = this.expected;
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
      this.prev = undefined;
    }
    this.expected = e.seq + 1;
    this.lastSeq = e.seq;
    this.lastHash = e.hash;

    let digest: Buffer | undefined;
    let ts: number | null = null;
    let tenant: string | null = null;
    let requestId: string | null = null;
    const isFirst = e.kind === EVENT.decision || e.kind === EVENT.record;
    if (e.kind === EVENT.prune) {
      digest = sha256(e.note ?? '');
      ts = e.ts;
    } else if (e.kind === EVENT.decision || e.kind === EVENT.outcome || e.kind === EVENT.record) {
      if (row !== undefined) {
        ts = row['ts'] as number;
        tenant = (row['tenant'] as string | null) ?? null;
        requestId = (row['request_id'] as string | null) ?? null;
        if (e.kind === EVENT.decision) {
          if (e.digest === null) {
            problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id}: its decision event lacks the stored digest (the event was altered)` });
          } else {
            digest = e.digest;
            this.awaiting.set(e.row_id, { seq: e.seq, digest: e.digest });
          }
        } else {
          digest = rowDigest(row, this.columns);
          if (e.kind === EVENT.outcome && !this.awaiting.delete(e.row_id)) {
            problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id}: an outcome event with no decision event before it (inserted, or moved)` });
          }
        }
        if (isFirst) this.liveRecords++;
      } else if (e.ts !== null && e.digest !== null) {
        // A stub: retention deleted the row and kept what proves which row it was.
        this.pruned++;
        digest = e.digest;
        ts = e.ts;
        tenant = e.tenant;
        if (e.kind === EVENT.decision) this.awaiting.set(e.row_id, { seq: e.seq, digest: e.digest });
        if (e.kind === EVENT.outcome) this.awaiting.delete(e.row_id);
        if (!this.covered(e.seq, tenant, ts)) {
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
        if (e.row_id <= this.lastFirstRow) {
          problem({ seq: e.seq, rowId: e.row_id, requestId, message: `row ${e.row_id} is out of order (after row ${this.lastFirstRow}): rows were reordered or renumbered` });
        }
        this.lastFirstRow = Math.max(this.lastFirstRow, e.row_id);
      }
    } else {
      problem({ seq: e.seq, rowId: e.row_id, requestId: null, message: `event ${e.seq} has an unknown kind ${e.kind} (inserted or altered)` });
    }

    if (digest !== undefined && this.prev !== undefined) {
      const link = linkHash(this.prev, e.seq, e.kind, e.row_id, ts, tenant, digest);
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
    this.prev = e.hash;
  }
}

/**
 * A row whose `facts` refer to a sealed batch of facts (gateway/audit/facts.ts, `v2`): its place in
 * the chain covers the reference, and the reference carries the batch's digest, so the batch must
 * be there and unchanged. `digests`: each stored batch's digest, by id. The problem, or undefined.
 */
export function factsRefProblem(row: { id: number; request_id: string | null; facts: string; seq: number | null }, digests: ReadonlyMap<number, string>): ChainProblem | undefined {
  const ref = parseBatchRef(row.facts);
  const at = { seq: row.seq, rowId: row.id, requestId: row.request_id };
  if (ref === undefined) return { ...at, message: `row ${row.id}'s request facts are not a reference to a sealed batch (malformed)` };
  const digest = digests.get(ref.batchId);
  if (digest === undefined) return { ...at, message: `row ${row.id}'s sealed request facts are gone: batch ${ref.batchId} is missing (deleted)` };
  if (digest !== ref.digest) return { ...at, message: `row ${row.id}'s sealed request facts do not match: batch ${ref.batchId} was altered` };
  return undefined;
}

/** Verify's findings, in report order once sorted: `problem` takes what the walk and the checks report. */
export function problemList(): { problems: VerifyProblem[]; problem: (p: ChainProblem) => void } {
  const problems: VerifyProblem[] = [];
  return { problems, problem: (p) => void problems.push({ position: p.position ?? p.seq ?? Number.MAX_SAFE_INTEGER, ...p }) };
}

/** The anchored seqs whose stored hash the anchor check reads: past the checkpoint, within the chain. */
export function anchorSeqs(anchors: readonly Anchor[], checkpoint: ChainHead, lastSeq: number): number[] {
  return [...new Set(anchors.filter((a) => a.seq > checkpoint.seq && a.seq <= lastSeq).map((a) => a.seq))];
}

/**
 * The head must have reached every anchored point, with the same hash there. `stored`: the hash
 * of each seq {@link anchorSeqs} named (a missing one is a gap the walk reports).
 */
export function checkAnchors(
  anchors: readonly Anchor[],
  checkpoint: ChainHead,
  lastSeq: number,
  stored: ReadonlyMap<number, Buffer>,
  problem: (p: ChainProblem) => void,
): VerifyResult['anchors'] {
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
    const hash = a.seq === checkpoint.seq ? checkpoint.hash : stored.get(a.seq);
    checked++;
    if (hash === undefined) continue; // the gap is reported by the walk
    if (hash.toString('hex') !== a.hash) {
      problem({ seq: a.seq, rowId: null, requestId: null, message: `event ${a.seq} differs from ${where}: the chain was rewritten up to that point` });
    }
  }
  return { checked, beforeCheckpoint, latest };
}

/** What verify reports, from what the walk and the checks found. */
export function verifyResult(o: {
  problems: VerifyProblem[];
  rows: number;
  events: number;
  checkpoint: ChainHead;
  last: ChainHead;
  incomplete: number;
  pruned: number;
  anchors: VerifyResult['anchors'];
}): VerifyResult {
  o.problems.sort((a, b) => a.position - b.position);
  const head = o.events === 0 ? o.checkpoint : o.last;
  return {
    ok: o.problems.length === 0,
    rows: o.rows,
    events: o.events,
    head: { seq: head.seq, hash: head.hash.toString('hex') },
    checkpoint: { seq: o.checkpoint.seq, hash: o.checkpoint.hash.toString('hex') },
    incomplete: o.incomplete,
    pruned: o.pruned,
    anchors: o.anchors,
    problems: o.problems,
  };
}
