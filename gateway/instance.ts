import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ValetError } from './errors.js';
import { privateDir } from './private-files.js';

/** The file holding this instance's id in its data directory. */
export const INSTANCE_ID_FILE = 'instance-id';
const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * This instance's id, stable across its restarts: `VALET_INSTANCE_ID`, else one generated once into
 * `<dataDir>/instance-id`. A fleet's instances each have their own data directory; what an instance
 * left unfinished when it stopped (held approvals, audit rows in flight) is settled by it alone at
 * its next start, never by another instance.
 */
export function instanceId(dataDir: string, env: NodeJS.ProcessEnv = {}): string {
  const fromEnv = env['VALET_INSTANCE_ID'];
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!INSTANCE_ID.test(fromEnv)) throw new ValetError('VALET_ERR_CONFIG', 'VALET_INSTANCE_ID must be 1 to 128 letters, digits, ".", "_", ":" or "-"');
    return fromEnv;
  }
  const file = join(dataDir, INSTANCE_ID_FILE);
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  privateDir(dataDir);
  const id = `vi_${randomBytes(12).toString('base64url')}`;
  try {
    writeFileSync(file, `${id}\n`, { mode: 0o600, flag: 'wx' });
    return id;
  } catch (err) {
    // Another process of this instance created it first: use theirs.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return readFileSync(file, 'utf8').trim();
    throw err;
  }
}
