import type { NamedSecretSource } from './source.js';

export type { SecretSource } from './source.js';

const UNSAFE = /[\r\n\0]/;

/**
 * Secrets from environment variables, read once at start. A value containing CR, LF or NUL could
 * split headers, so it is treated as missing. Environment variables are shared by all tenants.
 */
export function envSecretSource(names: Iterable<string>, env: NodeJS.ProcessEnv = process.env): NamedSecretSource & { missing: string[] } {
  const values = new Map<string, string>();
  const missing: string[] = [];
  for (const name of new Set(names)) {
    const v = env[name];
    if (v === undefined || v === '' || UNSAFE.test(v)) missing.push(name);
    else values.set(name, v);
  }
  return { label: 'env', missing, get: (name) => values.get(name), has: (name) => values.has(name) };
}
