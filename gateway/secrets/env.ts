/** Where upstream credentials come from; later sources (encrypted store, files) share this shape. */
export interface SecretSource {
  /** The current value of a secret, or undefined when it is not available. */
  get(name: string, tenant: string | undefined): string | undefined;
}

const UNSAFE = /[\r\n\0]/;

/**
 * Secrets from environment variables, read once at start. A value containing CR, LF or NUL could
 * split headers, so it is treated as missing.
 */
export function envSecretSource(names: Iterable<string>, env: NodeJS.ProcessEnv = process.env): SecretSource & { missing: string[] } {
  const values = new Map<string, string>();
  const missing: string[] = [];
  for (const name of new Set(names)) {
    const v = env[name];
    if (v === undefined || v === '' || UNSAFE.test(v)) missing.push(name);
    else values.set(name, v);
  }
  return { missing, get: (name) => values.get(name) };
}
