import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Environment } from '../config/types.js';
import { ValetError } from '../errors.js';
import { secretVariable } from '../secrets/variable.js';

/** `<data>/approval-link-key`: 32 random bytes (hex), generated once, mode 0600. */
export const LINK_KEY_FILE = 'approval-link-key';
export const LINK_KEY_ENV = 'VALET_APPROVAL_LINK_KEY';

export type LinkAction = 'approve' | 'deny';

export interface LinkClaims {
  readonly approvalId: string;
  readonly action: LinkAction;
  /** Milliseconds since the epoch. */
  readonly expiresAt: number;
  /** Recorded when the link is used, so that it works once. */
  readonly nonce: string;
}

export interface LinkSigner {
  sign(approvalId: string, action: LinkAction, expiresAt: number): string;
  /** The claims of a well-formed, correctly signed, unexpired token; throws VALET_ERR_APPROVAL_LINK_INVALID otherwise. */
  verify(token: string, now: number): LinkClaims;
}

const TOKEN = /^v1\.([A-Za-z0-9_-]{16,400})\.([A-Za-z0-9_-]{43})$/;

/**
 * Link tokens for notifications: `v1.<payload>.<mac>`, the payload `{i: id, a: action, e: expiry,
 * n: nonce}` in base64url JSON and the MAC HMAC-SHA256 over `v1.<payload>` with the link key. A token
 * names one approval and one action and expires with the approval; it is only a capability to *see*
 * the call and to offer the action: resolving still needs an admin token, and the nonce is recorded
 * when it is used, so each link works once.
 */
export function createLinkSigner(key: Buffer): LinkSigner {
  if (key.length < 32) throw new TypeError('the approval link key must be at least 32 bytes');
  const mac = (text: string): Buffer => createHmac('sha256', key).update(text).digest();
  return {
    sign(approvalId, action, expiresAt) {
      const payload = Buffer.from(JSON.stringify({ i: approvalId, a: action, e: expiresAt, n: randomBytes(16).toString('base64url') })).toString('base64url');
      return `v1.${payload}.${mac(`v1.${payload}`).toString('base64url')}`;
    },
    verify(token, now) {
      const m = TOKEN.exec(token);
      if (m === null) throw invalid('it is malformed');
      const given = Buffer.from(m[2] as string, 'base64url');
      const expected = mac(`v1.${m[1] as string}`);
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid('its signature does not verify');
      let p: { i?: unknown; a?: unknown; e?: unknown; n?: unknown };
      try {
        p = JSON.parse(Buffer.from(m[1] as string, 'base64url').toString('utf8')) as typeof p;
      } catch {
        throw invalid('it is malformed');
      }
      if (typeof p.i !== 'string' || (p.a !== 'approve' && p.a !== 'deny') || typeof p.e !== 'number' || typeof p.n !== 'string') {
        throw invalid('it is malformed');
      }
      if (p.e <= now) throw invalid('it has expired');
      return { approvalId: p.i, action: p.a, expiresAt: p.e, nonce: p.n };
    },
  };
}

function invalid(why: string): ValetError {
  return new ValetError('VALET_ERR_APPROVAL_LINK_INVALID', `This approval link is not valid: ${why}.`);
}

/**
 * The link key: `VALET_APPROVAL_LINK_KEY` or `VALET_APPROVAL_LINK_KEY_FILE` (at least 32 bytes;
 * hex or text; checked by `refuseWeakKey`) when set, else
 * `<data>/approval-link-key`, generated on first use. Every instance that serves links for the
 * same approvals needs the same key.
 */
export function loadLinkKey(dataDir: string, env: NodeJS.ProcessEnv, environment: Environment = 'development'): Buffer {
  const fromEnv = secretVariable(env, LINK_KEY_ENV, environment)?.value;
  if (fromEnv !== undefined) {
    const key = /^[0-9a-fA-F]{64,}$/.test(fromEnv) ? Buffer.from(fromEnv, 'hex') : Buffer.from(fromEnv, 'utf8');
    if (key.length < 32) throw new ValetError('VALET_ERR_CONFIG', `${LINK_KEY_ENV} must be at least 32 bytes`);
    return key;
  }
  const file = join(dataDir, LINK_KEY_FILE);
  try {
    return Buffer.from(readFileSync(file, 'utf8').trim(), 'hex');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = randomBytes(32);
  try {
    writeFileSync(file, `${key.toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    return key;
  } catch (err) {
    // Another process created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return Buffer.from(readFileSync(file, 'utf8').trim(), 'hex');
    throw err;
  }
}
