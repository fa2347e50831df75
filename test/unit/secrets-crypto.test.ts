import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ValetError } from '../../gateway/errors.js';
import {
  associatedData,
  keyMatches,
  masterKeyFromBytes,
  NONCE_BYTES,
  open,
  parseMasterKey,
  seal,
  TAG_BYTES,
  type SecretAddress,
} from '../../gateway/secrets/crypto.js';

const raw = randomBytes(32);
const key = masterKeyFromBytes(raw);
const at: SecretAddress = { tenant: 'acme', name: 'OPENAI_API_KEY', version: 3 };

function expectCorrupt(fn: () => unknown): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown).toBeInstanceOf(ValetError);
  expect((thrown as ValetError).code).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
}

describe('secret store crypto (AES-256-GCM)', () => {
  it('round-trips a value, with a 96-bit nonce and a 128-bit tag, and no plaintext in the ciphertext', () => {
    const sealed = seal(key, 'sk-live-ünïcode-value', at);
    expect(sealed.nonce).toHaveLength(NONCE_BYTES);
    expect(sealed.tag).toHaveLength(TAG_BYTES);
    expect(sealed.ciphertext.includes(Buffer.from('sk-live'))).toBe(false);
    expect(open(key, sealed, at)).toBe('sk-live-ünïcode-value');
  });

  it('uses a fresh nonce every time', () => {
    const a = seal(key, 'same', at);
    const b = seal(key, 'same', at);
    expect(a.nonce.equals(b.nonce)).toBe(false);
    expect(a.ciphertext.equals(b.ciphertext)).toBe(false);
  });

  it('binds the ciphertext to tenant, name and version (associated data)', () => {
    const sealed = seal(key, 'v', at);
    expectCorrupt(() => open(key, sealed, { ...at, tenant: 'other' }));
    expectCorrupt(() => open(key, sealed, { ...at, tenant: null }));
    expectCorrupt(() => open(key, sealed, { ...at, name: 'GITHUB_TOKEN' }));
    expectCorrupt(() => open(key, sealed, { ...at, version: 2 }));
  });

  it('encodes the associated data unambiguously', () => {
    const a = associatedData({ tenant: 'a","b', name: 'C', version: 1 });
    const b = associatedData({ tenant: 'a', name: 'b","C', version: 1 });
    expect(a.equals(b)).toBe(false);
    expect(associatedData({ tenant: null, name: 'X', version: 1 }).equals(associatedData({ tenant: 'null', name: 'X', version: 1 }))).toBe(false);
  });

  it('refuses a flipped ciphertext byte, a flipped tag byte, a truncated or extended tag, a short nonce', () => {
    const sealed = seal(key, 'sk-abcdef', at);
    const flip = (b: Buffer, i = 0): Buffer => {
      const c = Buffer.from(b);
      c[i] = (c[i] as number) ^ 1;
      return c;
    };
    expectCorrupt(() => open(key, { ...sealed, ciphertext: flip(sealed.ciphertext) }, at));
    expectCorrupt(() => open(key, { ...sealed, tag: flip(sealed.tag, 15) }, at));
    expectCorrupt(() => open(key, { ...sealed, nonce: flip(sealed.nonce) }, at));
    for (const n of [0, 4, 8, 12, 15]) expectCorrupt(() => open(key, { ...sealed, tag: sealed.tag.subarray(0, n) }, at));
    expectCorrupt(() => open(key, { ...sealed, tag: Buffer.concat([sealed.tag, Buffer.alloc(1)]) }, at));
    expectCorrupt(() => open(key, { ...sealed, nonce: sealed.nonce.subarray(0, 8) }, at));
    expectCorrupt(() => open(key, { ...sealed, ciphertext: sealed.ciphertext.subarray(1) }, at));
  });

  it('refuses another key', () => {
    const sealed = seal(key, 'v', at);
    expectCorrupt(() => open(masterKeyFromBytes(randomBytes(32)), sealed, at));
  });

  it('derives a stable key check value that tells keys apart and reveals nothing of the key', () => {
    const again = masterKeyFromBytes(Buffer.from(raw));
    expect(again.id).toBe(key.id);
    expect(keyMatches(again, key.check)).toBe(true);
    expect(keyMatches(masterKeyFromBytes(randomBytes(32)), key.check)).toBe(false);
    expect(keyMatches(key, key.check.subarray(0, 16))).toBe(false);
    expect(key.check.includes(raw.subarray(0, 8))).toBe(false);
    expect(key.id).toMatch(/^[0-9a-f]{16}$/);
    // The raw bytes are not reachable from the object.
    expect(JSON.stringify(key)).not.toContain(raw.toString('base64'));
  });

  it('parses a master key as base64, base64url or hex, and names only the source when it is wrong', () => {
    const b64 = raw.toString('base64');
    expect(parseMasterKey(b64, 'X').id).toBe(key.id);
    expect(parseMasterKey(` ${raw.toString('base64url')}\n`, 'X').id).toBe(key.id);
    expect(parseMasterKey(raw.toString('hex'), 'X').id).toBe(key.id);
    expect(parseMasterKey(raw.toString('hex').toUpperCase(), 'X').id).toBe(key.id);
    for (const bad of ['', 'short', randomBytes(16).toString('base64'), randomBytes(31).toString('hex'), randomBytes(33).toString('base64'), `${b64}!`]) {
      let err: unknown;
      try {
        parseMasterKey(bad, 'VALET_MASTER_KEY');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ValetError);
      expect((err as ValetError).code).toBe('VALET_ERR_MASTER_KEY');
      expect((err as ValetError).message).toContain('VALET_MASTER_KEY is not a master key');
      if (bad.length > 4) expect((err as ValetError).message).not.toContain(bad);
    }
  });
});
