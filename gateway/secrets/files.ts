import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SECRET_NAME, UNSAFE_VALUE, type NamedSecretSource } from './source.js';

/** Largest secret file read; anything bigger is not a credential. */
const MAX_FILE_BYTES = 65_536;

export interface FileSourceOptions {
  /** Re-read a file at most this often (ms); mounted secrets (Docker, Kubernetes) change in place. */
  readonly refreshMs?: number;
}

/**
 * Secrets mounted as files, one per secret: `<dir>/<NAME>` (Docker and Kubernetes secrets,
 * `/run/secrets`). One trailing newline (LF or CRLF) is removed. A file that is missing, empty,
 * larger than 64 KiB, not UTF-8, or contains a control character counts as missing. Each file is
 * read on first use and again at most once per `refreshMs`, so a rotated mount is picked up
 * without a restart. Files are shared by all tenants.
 */
export function fileSecretSource(dir: string, options: FileSourceOptions = {}): NamedSecretSource {
  const refreshMs = options.refreshMs ?? 1_000;
  const cache = new Map<string, { value: string | undefined; readAt: number }>();
  const get = (name: string): string | undefined => {
    const now = Date.now();
    let hit = cache.get(name);
    if (hit === undefined || now - hit.readAt >= refreshMs) {
      hit = { value: readSecretFile(dir, name), readAt: now };
      cache.set(name, hit);
    }
    return hit.value;
  };
  return { label: `files:${dir}`, get, has: (name) => get(name) !== undefined };
}

function readSecretFile(dir: string, name: string): string | undefined {
  // Names are checked by the configuration schema too; this keeps `..` and `/` out regardless.
  if (!SECRET_NAME.test(name)) return undefined;
  const path = join(dir, name);
  let bytes: Buffer;
  try {
    const stat = statSync(path);
    if (!stat.isFile() || stat.size > MAX_FILE_BYTES) return undefined;
    bytes = readFileSync(path);
  } catch {
    return undefined;
  }
  if (bytes.length > MAX_FILE_BYTES) return undefined;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  } finally {
    bytes.fill(0);
  }
  if (text.endsWith('\r\n')) text = text.slice(0, -2);
  else if (text.endsWith('\n')) text = text.slice(0, -1);
  return text === '' || UNSAFE_VALUE.test(text) ? undefined : text;
}
