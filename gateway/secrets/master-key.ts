import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import type { Environment } from '../config/types.js';
import { ValetError } from '../errors.js';
import { generateMasterKeyText, parseMasterKey, type MasterKey } from './crypto.js';
import { secretVariable } from './variable.js';

/** The development master key Valet generates when none is configured: `<data>/master-key`. */
export const GENERATED_KEY_FILE = 'master-key';

export interface ResolvedMasterKey {
  readonly key: MasterKey;
  /** Where it came from, for messages: `VALET_MASTER_KEY`, a file path, or the generated file. */
  readonly source: string;
  /** True when it came from `<data>/master-key` (generated now or earlier), not from explicit configuration. */
  readonly generated: boolean;
  /** True when this call created `<data>/master-key`. */
  readonly created: boolean;
}

export interface MasterKeyOptions {
  readonly env: NodeJS.ProcessEnv;
  readonly dataDir: string;
  readonly environment: Environment;
  /** Whether the secret store holds no secret yet; only then may a key be generated. */
  readonly storeIsEmpty: () => boolean;
  /** Create `<data>/master-key` when nothing is configured (false for read-only commands). */
  readonly generate: boolean;
}

/**
 * The master key, from (in order) `VALET_MASTER_KEY`, `VALET_MASTER_KEY_FILE`, or — outside
 * production only — `<data>/master-key`, which is generated (mode 0600) when the store is still
 * empty. It is never stored in the database. A placeholder is refused everywhere; in production
 * so are published or low-entropy keys and a key file inside the data directory. Returns
 * undefined only when `generate` is false and there is nothing to use.
 */
export function resolveMasterKey(o: MasterKeyOptions): ResolvedMasterKey | undefined {
  const configured = secretVariable(o.env, 'VALET_MASTER_KEY', o.environment, 'VALET_ERR_MASTER_KEY');
  if (configured !== undefined) {
    if (configured.file !== undefined && o.environment === 'production' && isInside(resolve(o.dataDir), configured.file)) {
      // A key beside the data it encrypts is lost or leaked with it (one volume, one backup).
      throw new ValetError(
        'VALET_ERR_MASTER_KEY',
        `VALET_MASTER_KEY_FILE (${configured.file}) is inside the data directory; in production keep the master key apart from the secrets it protects (a Docker secret such as /run/secrets/valet_master_key)`,
      );
    }
    const key = parseMasterKey(configured.value, configured.source);
    return { key, source: configured.file ?? 'VALET_MASTER_KEY', generated: false, created: false };
  }

  const file = join(o.dataDir, GENERATED_KEY_FILE);
  if (o.environment === 'production') {
    throw new ValetError(
      'VALET_ERR_MASTER_KEY',
      'no master key: production requires VALET_MASTER_KEY or VALET_MASTER_KEY_FILE (a generated key file is for development only)',
    );
  }
  let text: string | undefined;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw unreadable(file, err);
  }
  if (text !== undefined) return { key: parseMasterKey(text, file), source: file, generated: true, created: false };
  if (!o.storeIsEmpty()) {
    throw new ValetError(
      'VALET_ERR_MASTER_KEY',
      'no master key: the secret store holds secrets but neither VALET_MASTER_KEY nor VALET_MASTER_KEY_FILE is set',
    );
  }
  if (!o.generate) return undefined;
  mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
  // `wx`: two processes starting at once cannot overwrite each other's key.
  try {
    writeFileSync(file, `${generateMasterKeyText()}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw unreadable(file, err);
    return { key: readKeyFile(file, file), source: file, generated: true, created: false };
  }
  return { key: readKeyFile(file, file), source: file, generated: true, created: true };
}

/** A master key from a file (`VALET_MASTER_KEY_FILE`, `--new-key-file`): base64 or hex text. */
export function readKeyFile(path: string, label: string): MasterKey {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw unreadable(label, err);
  }
  return parseMasterKey(text, label);
}

function isInside(dir: string, path: string): boolean {
  const rel = relative(dir, path);
  return rel === '' || (!rel.startsWith('..') && !rel.startsWith('/'));
}

function unreadable(label: string, err: unknown): ValetError {
  return new ValetError('VALET_ERR_MASTER_KEY', `cannot read the master key from ${label} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
}
