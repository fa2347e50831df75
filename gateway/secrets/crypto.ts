import { createCipheriv, createDecipheriv, createSecretKey, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { ValetError } from '../errors.js';

/**
 * The secret store's cryptography: AES-256-GCM with a random 96-bit nonce and a 128-bit tag, the
 * associated data binding each ciphertext to its tenant, name and version, and a key check value
 * that tells a wrong master key from a damaged ciphertext. Pure functions; no I/O.
 */

export const MASTER_KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

/** A ciphertext as stored: the three parts are kept in separate columns. */
export interface Sealed {
  readonly nonce: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
}

/** Where a ciphertext belongs; any difference makes decryption fail. */
export interface SecretAddress {
  /** `null` for a secret shared by all tenants. */
  readonly tenant: string | null;
  readonly name: string;
  readonly version: number;
}

/**
 * The master key, held only as derived keys: one for AES-256-GCM, one for the key check value, one
 * for the request facts audit rows keep.
 * The raw bytes are not kept, so they cannot leak through this object.
 */
export interface MasterKey {
  /** A short, non-secret fingerprint (16 hex digits of the key check value) for messages. */
  readonly id: string;
  /** HKDF output that proves a key is the one a store was written with, without revealing it. */
  readonly check: Buffer;
  /** @internal the AES-256-GCM key. */
  readonly aead: KeyObject;
  /** @internal the AES-256-GCM key sealing the request facts in audit rows (gateway/audit/facts.ts), apart from the secrets' key. */
  readonly facts: KeyObject;
}

const CHECK_INFO = 'valet/secret-store/key-check/v1';
const AEAD_INFO = 'valet/secret-store/aes-256-gcm/v1';
const FACTS_INFO = 'valet/audit/request-facts/v1';
const AD_LABEL = 'valet-secret/v1';

/** Derives the working keys from 32 raw bytes (HKDF-SHA256, one `info` per purpose). */
export function masterKeyFromBytes(raw: Uint8Array): MasterKey {
  if (raw.length !== MASTER_KEY_BYTES) throw new TypeError(`a master key is ${MASTER_KEY_BYTES} bytes`);
  const derive = (info: string): Buffer => Buffer.from(hkdfSync('sha256', raw, Buffer.alloc(0), info, 32));
  const check = derive(CHECK_INFO);
  const aeadBytes = derive(AEAD_INFO);
  const aead = createSecretKey(aeadBytes);
  aeadBytes.fill(0);
  const factsBytes = derive(FACTS_INFO);
  const facts = createSecretKey(factsBytes);
  factsBytes.fill(0);
  return Object.freeze({ id: check.subarray(0, 8).toString('hex'), check, aead, facts });
}

const HEX = /^[0-9a-fA-F]{64}$/;
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

/**
 * A master key written as 64 hex digits or as base64 / base64url of 32 bytes (what
 * `openssl rand -base64 32` or `openssl rand -hex 32` print). Surrounding whitespace is ignored.
 * `source` names where it came from, for the error message; the value itself is never shown.
 */
export function parseMasterKey(text: string, source: string): MasterKey {
  const t = text.trim();
  let raw: Buffer | undefined;
  if (HEX.test(t)) raw = Buffer.from(t, 'hex');
  else if (BASE64.test(t)) raw = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (raw === undefined || raw.length !== MASTER_KEY_BYTES) {
    throw new ValetError(
      'VALET_ERR_MASTER_KEY',
      `${source} is not a master key: it must be ${MASTER_KEY_BYTES} random bytes written as base64 or hex (for example \`openssl rand -base64 32\`)`,
    );
  }
  try {
    return masterKeyFromBytes(raw);
  } finally {
    raw.fill(0);
  }
}

/** A new random master key, base64-encoded (for the generated development key file). */
export function generateMasterKeyText(): string {
  return randomBytes(MASTER_KEY_BYTES).toString('base64');
}

/** Does this key's check value equal the one a store recorded? (Constant time.) */
export function keyMatches(key: MasterKey, check: Buffer): boolean {
  return check.length === key.check.length && timingSafeEqual(check, key.check);
}

/**
 * The associated data: a JSON array, whose string encoding is unambiguous (no tenant/name split can
 * be shifted), with a label so a ciphertext from another purpose can never verify here.
 */
export function associatedData(a: SecretAddress): Buffer {
  return Buffer.from(JSON.stringify([AD_LABEL, a.tenant, a.name, a.version]), 'utf8');
}

/** Encrypts one secret value for its address with a fresh random nonce. */
export function seal(key: MasterKey, value: string, address: SecretAddress): Sealed {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key.aead, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(associatedData(address));
  const plain = Buffer.from(value, 'utf8');
  const ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
  plain.fill(0);
  return { nonce, ciphertext, tag: cipher.getAuthTag() };
}

/**
 * Decrypts and authenticates one value. Any failure — wrong key, a changed byte, a nonce or tag of
 * the wrong length (a truncated tag would otherwise weaken authentication), another address — is
 * `VALET_ERR_CREDENTIAL_CORRUPT`; which one it was is deliberately not distinguished.
 */
export function open(key: MasterKey, sealed: Sealed, address: SecretAddress): string {
  if (sealed.nonce.length !== NONCE_BYTES || sealed.tag.length !== TAG_BYTES) throw corrupt();
  let plain: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key.aead, sealed.nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(associatedData(address));
    decipher.setAuthTag(sealed.tag);
    plain = Buffer.concat([decipher.update(sealed.ciphertext), decipher.final()]);
  } catch {
    throw corrupt();
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(plain);
  } catch {
    throw corrupt();
  } finally {
    plain.fill(0);
  }
}

const corrupt = (): ValetError => new ValetError('VALET_ERR_CREDENTIAL_CORRUPT');
