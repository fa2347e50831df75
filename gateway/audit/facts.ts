import { createCipheriv, createDecipheriv, hash, randomBytes } from 'node:crypto';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { ValetError } from '../errors.js';
import type { MasterKey } from '../secrets/crypto.js';

/**
 * The sealed request facts of audit rows: what a decision was made on (see
 * gateway/policy/facts.ts), encrypted with AES-256-GCM under a key derived from the master key for
 * this purpose alone. Two forms, both read:
 *
 * - `v1`, one row's facts in its own `facts` column: `v1.<key id>.<base64url(nonce | ciphertext | tag)>`,
 *   bound to the row's request id (the associated data), so a ciphertext copied into another row
 *   does not open.
 * - `v2`, the facts of every row one commit writes for one tenant, sealed once as a *batch*
 *   (`audit_facts.sealed`: `v2.<key id>.<base64url(nonce | ciphertext | tag)>`; the plaintext is
 *   one line per row, `<request id as JSON>\t<facts>`, compressed with raw DEFLATE), and in each
 *   row's `facts` column a reference, `v2.<batch id>.<line>.<digest>`, where the digest is the
 *   SHA-256 (base64url) of the batch's stored text. The row's place in the hash chain covers the
 *   reference, and the reference covers the batch: `valet audit verify` finds a changed or deleted
 *   batch without the key. Opening checks the digest, authenticates the batch, and checks that the
 *   line names the row's request id. One cipher set-up and a fraction of the bytes per commit,
 *   instead of one of each per row (the facts of a batch are nearly alike).
 */

const VERSION = 'v1';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const AD_LABEL = 'valet-audit-facts/v1';
const KEY_ID = /^[0-9a-f]{16}$/;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

const associatedData = (requestId: string): Buffer => Buffer.from(JSON.stringify([AD_LABEL, requestId]), 'utf8');

/** What sealing and opening facts need of the master key (a worker thread is handed only this). */
export type FactsKey = Pick<MasterKey, 'id' | 'facts'>;

/**
 * Opens a `v1` text (what gateways before `v2` sealed, one per row) for the row of `requestId`. Throws
 * `VALET_ERR_AUDIT_FACTS_UNREADABLE` when the text is malformed, was sealed under another master
 * key (the message gives both key ids), or fails authentication: a changed byte, another row's
 * facts, a wrong key with a forged id. The message never holds any of the sealed text.
 */
export function openFacts(key: FactsKey, requestId: string, text: string): string {
  const plain = decrypt(key, text, VERSION, associatedData(requestId), { not: 'not sealed request facts', failed: 'failed authentication: altered, or sealed for another request' });
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(plain);
  } catch {
    throw unreadable('not UTF-8 once opened');
  } finally {
    plain.fill(0);
  }
}

/**
 * The plaintext bytes of a sealed text, `<version>.<key id>.<base64url(nonce | ciphertext | tag)>`,
 * authenticated with `ad`. Refusals say what is wrong (`words` name the text), never what it holds.
 */
function decrypt(key: FactsKey, text: string, version: string, ad: Buffer, words: { readonly not: string; readonly failed: string }): Buffer {
  const [v, keyId, body, ...rest] = text.split('.');
  if (v !== version || keyId === undefined || body === undefined || rest.length > 0 || !KEY_ID.test(keyId) || !BASE64URL.test(body)) throw unreadable(`${words.not} (malformed)`);
  if (keyId !== key.id) throw unreadable(`sealed under master key ${keyId}, not this one (${key.id})`);
  const sealed = Buffer.from(body, 'base64url');
  if (sealed.length < NONCE_BYTES + TAG_BYTES) throw unreadable(`${words.not} (truncated)`);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key.facts, sealed.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAAD(ad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    return Buffer.concat([decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
  } catch {
    throw unreadable(words.failed);
  }
}

const BATCH_VERSION = 'v2';
const BATCH_AD = Buffer.from('valet-audit-facts/v2', 'utf8');
/**
 * A tenant's batch is closed once its facts reach this many characters and the next row starts
 * another: a commit that drains a backlog (thousands of rows, each up to 64 KiB of arguments) seals
 * several batches of a few MiB rather than one too large to hold or open.
 */
const BATCH_CHARS = 4 * 1024 * 1024;
/** A batch larger than this once inflated is refused: no writer makes one (see BATCH_CHARS), and inflating more would be a decompression bomb. */
const MAX_BATCH_PLAIN_BYTES = 64 * 1024 * 1024;
const BATCH_REF = /^v2\.([1-9][0-9]{0,15})\.(0|[1-9][0-9]{0,8})\.([A-Za-z0-9_-]{43})$/;

/** A batch's stored text and its digest (SHA-256, base64url), which each of its rows' references carries. */
export interface SealedBatch {
  readonly text: string;
  readonly digest: string;
}

/** The digest a reference carries of its batch's stored text. */
export const batchDigest = (text: string): string => hash('sha256', text, 'base64url');

/**
 * Seals the facts of several rows as one batch (see the module comment): `entries` are
 * `[request id, facts]`, each line in that order. Throws what the cipher or the compressor throws.
 */
export function sealFactsBatch(key: FactsKey, entries: readonly (readonly [requestId: string, plain: string])[]): SealedBatch {
  let plain = '';
  for (const [requestId, facts] of entries) plain += `${JSON.stringify(requestId)}\t${facts}\n`;
  const packed = deflateRawSync(Buffer.from(plain, 'utf8'), { level: 1 });
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key.facts, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(BATCH_AD);
  const sealed = Buffer.concat([nonce, cipher.update(packed), cipher.final(), cipher.getAuthTag()]);
  packed.fill(0);
  const text = `${BATCH_VERSION}.${key.id}.${sealed.toString('base64url')}`;
  return { text, digest: batchDigest(text) };
}

/** One tenant's sealed batch in a commit: `at`, the positions of its rows among the commit's, in the order of its lines. */
export interface TenantBatch {
  readonly at: number[];
  readonly sealed: SealedBatch;
}

/**
 * The facts of a commit's `count` rows sealed one batch per tenant (more when a tenant's facts pass
 * {@link BATCH_CHARS}), as both writers do before they write the rows. `row(i)` gives row i's
 * tenant, request id and facts, or undefined when it has none. A batch that cannot be sealed is
 * left out: its rows get no facts, and `failed` is told each of their request ids and why (the
 * cipher's message, never the facts).
 */
export function sealByTenant(
  key: FactsKey,
  count: number,
  row: (i: number) => readonly [tenant: unknown, requestId: string, plain: string] | undefined,
  failed: (requestId: string, err: unknown) => void,
): TenantBatch[] {
  type Group = { at: number[]; entries: [string, string][]; chars: number };
  const groups: Group[] = [];
  const open = new Map<unknown, Group>();
  for (let i = 0; i < count; i++) {
    const r = row(i);
    if (r === undefined) continue;
    let group = open.get(r[0]);
    if (group === undefined || group.chars >= BATCH_CHARS) {
      group = { at: [], entries: [], chars: 0 };
      open.set(r[0], group);
      groups.push(group);
    }
    group.at.push(i);
    group.entries.push([r[1], r[2]]);
    group.chars += r[2].length;
  }
  const batches: TenantBatch[] = [];
  for (const { at, entries } of groups) {
    try {
      batches.push({ at, sealed: sealFactsBatch(key, entries) });
    } catch (err) {
      for (const [requestId] of entries) failed(requestId, err);
    }
  }
  return batches;
}

/** A row's reference to line `line` of batch `batchId` (see the module comment). */
export const batchRef = (batchId: number, line: number, digest: string): string => `${BATCH_VERSION}.${batchId}.${line}.${digest}`;

/** The parts of a row's `v2` reference; undefined when `text` is not one. */
export function parseBatchRef(text: string): { batchId: number; line: number; digest: string } | undefined {
  const m = BATCH_REF.exec(text);
  return m === null ? undefined : { batchId: Number(m[1]), line: Number(m[2]), digest: m[3] as string };
}

/** How many of these rows refer to each batch: what retention releases when it deletes them, and (its keys) the batches a replay page needs. */
export function batchRefCounts(rows: readonly { readonly facts?: unknown }[]): Map<number, number> {
  const counts = new Map<number, number>();
  for (const row of rows) {
    const ref = typeof row.facts === 'string' ? parseBatchRef(row.facts) : undefined;
    if (ref !== undefined) counts.set(ref.batchId, (counts.get(ref.batchId) ?? 0) + 1);
  }
  return counts;
}

/** Whether a `facts` column holds a reference to a batch rather than facts of its own. */
const isBatchRef = (text: string): boolean => text.startsWith(`${BATCH_VERSION}.`);

/** Opened batches a {@link FactsOpener} keeps for the rows after (a replay page of 500 rows spans a few). */
const OPENED_BATCHES = 32;

/**
 * Opens the facts of audit rows in either form, for `valet policy replay`. A `v2` row's batch is
 * looked up with `batch` (its stored text, or undefined when it is gone), opened once and kept for
 * the rows after it (the {@link OPENED_BATCHES} most recent).
 */
export class FactsOpener {
  private readonly opened = new Map<string, string[]>();

  constructor(
    private readonly key: FactsKey,
    private readonly batch: (batchId: number) => string | undefined,
  ) {}

  /**
   * The facts (JSON) of the row of `requestId` whose `facts` column is `text`; throws
   * `VALET_ERR_AUDIT_FACTS_UNREADABLE`, never quoting the facts, and naming no batch or line (a
   * replay report groups its rows by the message; `valet audit verify` names them).
   */
  open(requestId: string, text: string): string {
    if (!isBatchRef(text)) return openFacts(this.key, requestId, text);
    const ref = parseBatchRef(text);
    if (ref === undefined) throw unreadable('not a reference to a sealed batch (malformed)');
    let lines = this.opened.get(ref.digest);
    if (lines === undefined) {
      const stored = this.batch(ref.batchId);
      if (stored === undefined) throw unreadable('its sealed batch is missing (deleted)');
      if (batchDigest(stored) !== ref.digest) throw unreadable("its sealed batch does not match the row's digest (altered)");
      lines = openBatch(this.key, stored);
      if (this.opened.size >= OPENED_BATCHES) this.opened.delete(this.opened.keys().next().value as string);
      this.opened.set(ref.digest, lines);
    }
    const line = lines[ref.line];
    const tab = line === undefined ? -1 : line.indexOf('\t');
    if (line === undefined || tab < 0) throw unreadable('its line of the sealed batch does not exist');
    let named: unknown;
    try {
      named = JSON.parse(line.slice(0, tab));
    } catch {
      named = undefined;
    }
    if (named !== requestId) throw unreadable("its line of the sealed batch is another request's");
    return line.slice(tab + 1);
  }
}

/** A batch's lines, opened (authenticated, inflated, decoded); the plaintext's bytes are wiped once decoded. */
function openBatch(key: FactsKey, text: string): string[] {
  const packed = decrypt(key, text, BATCH_VERSION, BATCH_AD, { not: 'its batch is not sealed request facts', failed: 'its batch failed authentication: altered' });
  let plain: Buffer;
  try {
    plain = inflateRawSync(packed, { maxOutputLength: MAX_BATCH_PLAIN_BYTES });
  } catch {
    throw unreadable('its batch does not inflate');
  } finally {
    packed.fill(0);
  }
  try {
    const lines = new TextDecoder('utf-8', { fatal: true }).decode(plain).split('\n');
    lines.pop(); // after the last line's newline
    return lines;
  } catch {
    throw unreadable('its batch is not UTF-8 once opened');
  } finally {
    plain.fill(0);
  }
}

const unreadable = (why: string): ValetError => new ValetError('VALET_ERR_AUDIT_FACTS_UNREADABLE', `The request facts cannot be opened: ${why}.`);

/** What every audit writer logs when a row's facts could not be sealed (with the request id and the cipher's message). */
export const SEAL_FAILED = 'could not seal the request facts; the audit row has none';
