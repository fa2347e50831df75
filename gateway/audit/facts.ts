import { createCipheriv, createDecipheriv, randomFillSync } from 'node:crypto';
import { ValetError } from '../errors.js';
import type { MasterKey } from '../secrets/crypto.js';
import type { AuditRecord } from '../types.js';
import { FACTS_AT, FACTS_PLAIN_AT, REQUEST_ID_AT } from './protocol.js';

/**
 * The sealed `facts` column of an audit row: what a decision was made on (see
 * gateway/policy/facts.ts), encrypted with AES-256-GCM under a key derived from the master key for
 * this purpose alone, and bound to the row's request id (the associated data), so a ciphertext
 * copied into another row does not open. Stored as text: `v1.<key id>.<base64url(nonce | ciphertext | tag)>`.
 */

const VERSION = 'v1';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const AD_LABEL = 'valet-audit-facts/v1';
const KEY_ID = /^[0-9a-f]{16}$/;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

const associatedData = (requestId: string): Buffer => Buffer.from(JSON.stringify([AD_LABEL, requestId]), 'utf8');

/** Random nonces drawn from the system's generator 256 at a time: one call per nonce costs more than the sealing itself. */
const NONCES = 256;
let pool = Buffer.alloc(0);
let drawn = NONCES;
function nextNonce(): Buffer {
  if (drawn === NONCES) {
    // A new buffer each time: nonces handed out earlier stay as they were.
    pool = randomFillSync(Buffer.allocUnsafe(NONCE_BYTES * NONCES));
    drawn = 0;
  }
  return pool.subarray(NONCE_BYTES * drawn, NONCE_BYTES * ++drawn);
}

/** What sealing and opening facts need of the master key (a worker thread is handed only this). */
export type FactsKey = Pick<MasterKey, 'id' | 'facts'>;

/** Seals `plain` (the facts as JSON) for the row of `requestId`, with a fresh random nonce. */
export function sealFacts(key: FactsKey, requestId: string, plain: string): string {
  const nonce = nextNonce();
  const cipher = createCipheriv('aes-256-gcm', key.facts, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(associatedData(requestId));
  // The plaintext is a JS string already (it cannot be wiped): no copy of it is made to wipe.
  const sealed = Buffer.concat([nonce, cipher.update(plain, 'utf8'), cipher.final(), cipher.getAuthTag()]);
  return `${VERSION}.${key.id}.${sealed.toString('base64url')}`;
}

/**
 * Opens what {@link sealFacts} sealed for the row of `requestId`. Throws
 * `VALET_ERR_AUDIT_FACTS_UNREADABLE` when the text is malformed, was sealed under another master
 * key (the message gives both key ids), or fails authentication: a changed byte, another row's
 * facts, a wrong key with a forged id. The message never holds any of the sealed text.
 */
export function openFacts(key: FactsKey, requestId: string, text: string): string {
  const [version, keyId, body, ...rest] = text.split('.');
  if (version !== VERSION || keyId === undefined || body === undefined || rest.length > 0 || !KEY_ID.test(keyId) || !BASE64URL.test(body)) {
    throw unreadable('not sealed request facts (malformed)');
  }
  if (keyId !== key.id) throw unreadable(`sealed under master key ${keyId}, not this one (${key.id})`);
  const sealed = Buffer.from(body, 'base64url');
  if (sealed.length < NONCE_BYTES + TAG_BYTES) throw unreadable('not sealed request facts (truncated)');
  let plain: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key.facts, sealed.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAAD(associatedData(requestId));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    plain = Buffer.concat([decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES)), decipher.final()]);
  } catch {
    throw unreadable('failed authentication: altered, or sealed for another request');
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(plain);
  } catch {
    throw unreadable('not UTF-8 once opened');
  } finally {
    plain.fill(0);
  }
}

const unreadable = (why: string): ValetError => new ValetError('VALET_ERR_AUDIT_FACTS_UNREADABLE', `The request facts cannot be opened: ${why}.`);

/** What every audit writer logs when a row's facts could not be sealed (with the request id and the cipher's message). */
export const SEAL_FAILED = 'could not seal the request facts; the audit row has none';

/**
 * Seals a packed record's `factsPlain` into its `facts` and clears it, as every audit writer does
 * before a row is stored: the plaintext is never written anywhere. Without a key, or when sealing
 * fails, the row has no facts (`onError` is told why, never what).
 */
export function sealPackedFacts(op: unknown[], key: FactsKey | undefined, onError: (requestId: string, err: unknown) => void): void {
  const plain = op[FACTS_PLAIN_AT];
  if (plain === null || plain === undefined) return;
  op[FACTS_PLAIN_AT] = null;
  const sealed = sealOrNull(key, String(op[REQUEST_ID_AT]), plain, onError);
  if (sealed !== null) op[FACTS_AT] = sealed;
}

/** {@link sealPackedFacts} for a record object (the PostgreSQL writer's). */
export function sealRecordFacts(rec: AuditRecord, key: FactsKey | undefined, onError: (requestId: string, err: unknown) => void): void {
  const plain = rec.factsPlain;
  if (plain === null) return;
  rec.factsPlain = null;
  const sealed = sealOrNull(key, rec.requestId, plain, onError);
  if (sealed !== null) rec.facts = sealed;
}

function sealOrNull(key: FactsKey | undefined, requestId: string, plain: unknown, onError: (requestId: string, err: unknown) => void): string | null {
  if (key === undefined || typeof plain !== 'string') return null;
  try {
    return sealFacts(key, requestId, plain);
  } catch (err) {
    onError(requestId, err);
    return null;
  }
}
