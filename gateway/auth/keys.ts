import { createPublicKey, createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createLocalJWKSet, createRemoteJWKSet, type JWTVerifyGetKey } from 'jose';
import { ValetError } from '../errors.js';
import type { Environment, IssuerConfig } from '../config/types.js';
import { secretVariable } from '../secrets/variable.js';

export type VerificationKey = KeyObject | JWTVerifyGetKey;

const MIN_SECRET_BYTES = 32;

/**
 * The HMAC secret of a shared-secret issuer: from its environment variable (or the file its
 * `_FILE` variable names) or, outside production and when the issuer allows it
 * (`generate: true`), from a random key kept in the data directory (mode 0600). Placeholders are
 * refused everywhere; published, example and low-entropy keys in production.
 */
export function sharedSecret(issuer: IssuerConfig, dataDir: string, env: NodeJS.ProcessEnv = process.env, environment: Environment = 'development'): Uint8Array {
  if (issuer.key.kind !== 'secret') throw new TypeError(`issuer ${issuer.name} has no shared secret`);
  const variable = issuer.key.env;
  const configured = secretVariable(env, variable, environment);
  let secret: string;
  if (configured !== undefined) {
    secret = configured.value;
  } else if (issuer.key.generate && environment !== 'production') {
    const file = join(dataDir, `${issuer.name}-signing-key`);
    try {
      secret = readFileSync(file, 'utf8').trim();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      secret = randomBytes(32).toString('base64url');
      // `wx`: two processes starting at once cannot overwrite each other's key.
      try {
        writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        secret = readFileSync(file, 'utf8').trim();
      }
    }
  } else {
    const why = issuer.key.generate ? ' (production never uses a generated signing key)' : '';
    throw new ValetError('VALET_ERR_CONFIG', `issuer "${issuer.name}": environment variable ${variable} (or ${variable}_FILE) is not set${why}`);
  }
  const bytes = new TextEncoder().encode(secret);
  if (bytes.length < MIN_SECRET_BYTES) {
    throw new ValetError('VALET_ERR_CONFIG', `issuer "${issuer.name}": the shared secret must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  return bytes;
}

/** Resolves the key material an issuer's tokens are verified with; done once, at start. */
export function verificationKey(issuer: IssuerConfig, dataDir: string, env: NodeJS.ProcessEnv = process.env, environment: Environment = 'development'): VerificationKey {
  const key = issuer.key;
  switch (key.kind) {
    case 'secret':
      // A KeyObject lets jose reuse the imported key instead of importing raw bytes per call.
      return createSecretKey(sharedSecret(issuer, dataDir, env, environment));
    case 'public_key_file':
      try {
        return createPublicKey(readFileSync(key.path));
      } catch (err) {
        throw new ValetError('VALET_ERR_CONFIG', `issuer "${issuer.name}": cannot read public key ${key.path}`, { cause: err });
      }
    case 'jwks_file':
      try {
        return createLocalJWKSet(JSON.parse(readFileSync(key.path, 'utf8')));
      } catch (err) {
        throw new ValetError('VALET_ERR_CONFIG', `issuer "${issuer.name}": cannot read JWKS file ${key.path}`, { cause: err });
      }
    case 'jwks_url':
      return createRemoteJWKSet(new URL(key.url), { timeoutDuration: 5_000, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
  }
}
