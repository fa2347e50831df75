import { createHmac, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Signs the JWS signing input (`header.payload`) and returns the raw signature bytes. */
export type Signer = (input: Buffer) => Buffer;

export const b64url = (v: unknown): string =>
  Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * A compact JWS built by hand, so a test can produce headers and algorithms a well-behaved signer
 * refuses to emit (`alg: none`, an embedded `jwk`, HS256 keyed with a public key...).
 * `signer: null` leaves the signature empty.
 */
export function craftJwt(header: Record<string, unknown>, payload: Record<string, unknown>, signer: Signer | null): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  const sig = signer === null ? '' : signer(Buffer.from(input)).toString('base64url');
  return `${input}.${sig}`;
}

export const hs256 =
  (secret: string | Buffer): Signer =>
  (input) =>
    createHmac('sha256', secret).update(input).digest();

export const rs256 =
  (privateKey: KeyObject): Signer =>
  (input) =>
    sign('sha256', input, privateKey);

/** ES256 signatures are the raw r‖s pair (JWA §3.4), not DER. */
export const es256 =
  (privateKey: KeyObject): Signer =>
  (input) =>
    sign('sha256', input, { key: privateKey, dsaEncoding: 'ieee-p1363' });

export const nowS = (): number => Math.floor(Date.now() / 1000);

/** Standard agent-token claims; `extra` overrides or adds. */
export function claims(o: { iss: string; aud: string | string[]; sub?: string; ttl?: number; extra?: Record<string, unknown> }): Record<string, unknown> {
  const now = nowS();
  return {
    iss: o.iss,
    aud: o.aud,
    sub: o.sub ?? 'agent-1',
    iat: now,
    exp: now + (o.ttl ?? 300),
    jti: randomUUID(),
    ...o.extra,
  };
}

export interface KeyDir {
  readonly dir: string;
  /** Writes `content` to `<dir>/<name>` and returns the absolute path. */
  write(name: string, content: string): string;
  cleanup(): void;
}

/** A temporary directory for key files referenced by absolute path from issuer config. */
export function tempKeyDir(): KeyDir {
  const dir = mkdtempSync(join(tmpdir(), 'valet-keys-'));
  return {
    dir,
    write(name, content) {
      const path = join(dir, name);
      writeFileSync(path, content);
      return path;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export const rsaKeyPair = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('rsa', { modulusLength: 2048 });
export const ecKeyPair = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });

export const publicPem = (k: KeyObject): string => k.export({ format: 'pem', type: 'spki' }).toString();
