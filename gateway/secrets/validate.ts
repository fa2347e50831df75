import { ValetError } from '../errors.js';
import { SECRET_NAME, UNSAFE_VALUE } from './source.js';

/**
 * What every secret store checks before it writes, whatever keeps the values: names, tenants,
 * values and the `NAME=value` import format. Messages name the secret, never quote its value.
 */

/** Names starting with this belong to the gateway's own settings (`VALET_DEV_SIGNING_KEY`, ...). */
const RESERVED_PREFIX = 'VALET_';
const MAX_VALUE_BYTES = 65_536;
const TENANT = /^[^\x00-\x1f\x7f]{1,256}$/;

/** `secret NAME (shared)` / `secret NAME (tenant T)`, for messages. */
export const describeSecret = (name: string, tenant: string | null): string => `secret ${name} (${tenant === null ? 'shared' : `tenant ${tenant}`})`;

/** The coded error for a secret that does not exist. */
export const secretNotFound = (name: string, tenant: string | null): ValetError =>
  new ValetError('VALET_ERR_SECRET_NOT_FOUND', `${describeSecret(name, tenant)} does not exist`);

/** Refuses a name that is not like an environment variable's, or is one of the gateway's own `VALET_*` settings. */
export function checkName(name: string): void {
  if (!SECRET_NAME.test(name)) {
    throw new ValetError('VALET_ERR_SECRET_INVALID', 'a secret name is a letter or _ followed by up to 127 letters, digits or _ (like an environment variable)');
  }
  if (name.startsWith(RESERVED_PREFIX)) {
    throw new ValetError('VALET_ERR_SECRET_INVALID', `names starting with ${RESERVED_PREFIX} are the gateway's own settings, not upstream credentials`);
  }
}

/** Refuses a tenant that is empty, longer than 256 characters or holds a control character. */
export function checkTenant(tenant: string | null): void {
  if (tenant !== null && !TENANT.test(tenant)) {
    throw new ValetError('VALET_ERR_SECRET_INVALID', 'a tenant is 1 to 256 characters without control characters');
  }
}

/** Refuses a value that is empty, too long, or holds CR, LF, NUL or another control character. Never quotes it. */
export function checkValue(value: string, name: string): void {
  if (value === '') throw new ValetError('VALET_ERR_SECRET_INVALID', `the value of ${name} is empty`);
  if (Buffer.byteLength(value, 'utf8') > MAX_VALUE_BYTES) {
    throw new ValetError('VALET_ERR_SECRET_INVALID', `the value of ${name} is longer than ${MAX_VALUE_BYTES} bytes`);
  }
  if (UNSAFE_VALUE.test(value)) {
    throw new ValetError(
      'VALET_ERR_SECRET_INVALID',
      `the value of ${name} contains a control character (CR, LF, NUL, ...), which could split the header it is sent in`,
    );
  }
}

const LINE = /^([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)$/;

/**
 * Parses the secrets.example format: one `NAME=value` per line; blank lines and lines starting
 * with `#` are ignored; spaces around the line and around `=` are ignored; everything after `=`
 * is the value, except that one pair of matching surrounding quotes (`"..."` or `'...'`) is
 * removed. No escapes, no variable expansion. `VALET_*` names are gateway settings and are
 * skipped. Every problem is reported (by line number, never quoting the value) in one error.
 */
export function parseSecretsFile(text: string): { entries: { name: string; value: string; line: number }[]; skipped: string[] } {
  const entries: { name: string; value: string; line: number }[] = [];
  const skipped: string[] = [];
  const problems: string[] = [];
  const firstLine = new Map<string, number>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const n = i + 1;
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = LINE.exec(line);
    if (!m) {
      problems.push(`line ${n}: expected NAME=value`);
      return;
    }
    const name = m[1] as string;
    let value = m[2] as string;
    if (value.length >= 2 && (value[0] === '"' || value[0] === "'") && value.endsWith(value[0])) value = value.slice(1, -1);
    const first = firstLine.get(name);
    if (first !== undefined) {
      problems.push(`line ${n}: ${name} is already set on line ${first}`);
      return;
    }
    firstLine.set(name, n);
    if (name.startsWith(RESERVED_PREFIX)) {
      skipped.push(name);
      return;
    }
    try {
      checkName(name);
      checkValue(value, name);
    } catch (err) {
      problems.push(`line ${n}: ${(err as Error).message}`);
      return;
    }
    entries.push({ name, value, line: n });
  });
  if (problems.length > 0) throw new ValetError('VALET_ERR_SECRET_INVALID', `nothing was imported:\n  ${problems.join('\n  ')}`);
  if (entries.length === 0) throw new ValetError('VALET_ERR_SECRET_INVALID', 'nothing to import: no NAME=value lines');
  return { entries, skipped };
}
