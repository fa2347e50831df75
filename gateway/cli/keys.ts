import { linkSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { privateDir, PRIVATE_FILE_MODE } from '../private-files.js';
import { UsageError } from './usage.js';

export const KEYS_USAGE = `  valet keys init [--dir DIR] [--fleet]    per-install keys, once: DIR/valet_master_key (the secret store's)
                                           and DIR/valet_signing_key (the local-dev issuer's); an existing one is kept.
                                           --fleet adds what every instance of a fleet shares: valet_approval_link_key,
                                           postgres_password (for the PostgreSQL user valet) and pgpass (PGPASSFILE)`;

/**
 * The keys one install needs, each 32 random bytes in base64, read through `NAME_FILE`
 * (`VALET_MASTER_KEY_FILE=DIR/valet_master_key`, `VALET_DEV_SIGNING_KEY_FILE=DIR/valet_signing_key`);
 * named as Docker secrets are, so the same files can be mounted as secrets at `/run/secrets`.
 */
const KEYS = ['valet_master_key', 'valet_signing_key'] as const;

/** With `--fleet`: the approval links' key (one instance checks another's links) and PostgreSQL's password. */
const FLEET_KEYS = ['valet_approval_link_key', 'postgres_password'] as const;

/** The PostgreSQL role the fleet's `pgpass` file is for (docker-compose.yml's fleet profile creates it). */
export const FLEET_PG_USER = 'valet';

/**
 * `valet keys init`: creates the per-install keys in DIR (default `keys`), never replacing one: a
 * new master key could not open the store the old one sealed. Meant for a directory outside the
 * data directory (a volume or a secrets directory of its own), so that a copy of the data is not a
 * copy of the key; the container runs it on first start (docker-compose.yml).
 */
export async function keysCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub !== 'init') throw new UsageError('valet keys init [--dir DIR] [--fleet]');
  let values: { dir: string; fleet: boolean };
  try {
    values = parseArgs({ args: rest, options: { dir: { type: 'string', default: 'keys' }, fleet: { type: 'boolean', default: false } }, strict: true }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { dir } = values;
  privateDir(dir);
  for (const name of values.fleet ? [...KEYS, ...FLEET_KEYS] : KEYS) {
    const file = join(dir, name);
    process.stdout.write(`${createOnce(file) ? 'created' : 'kept   '} ${file}\n`);
  }
  if (values.fleet) {
    // libpq's password file (node-postgres reads it too, through PGPASSFILE): any host, port and
    // database, for the fleet's user. Written from the password file, so the two always agree.
    const password = readFileSync(join(dir, 'postgres_password'), 'utf8').trim();
    const file = join(dir, 'pgpass');
    process.stdout.write(`${createOnce(file, `*:*:*:${FLEET_PG_USER}:${password}\n`) ? 'created' : 'kept   '} ${file}\n`);
  }
}

/** Writes `content` (a new random key by default) to `file` unless one is there; two runs at once cannot both create it. */
function createOnce(file: string, content = `${randomBytes(32).toString('base64')}\n`): boolean {
  const draft = `${file}.${process.pid}.tmp`;
  writeFileSync(draft, content, { mode: PRIVATE_FILE_MODE, flag: 'wx' });
  try {
    // A hard link fails when the name exists: the key appears whole, or not at all.
    linkSync(draft, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    unlinkSync(draft);
  }
}
