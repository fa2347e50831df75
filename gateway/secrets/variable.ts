import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Environment } from '../config/types.js';
import { ValetError, type ErrorCode } from '../errors.js';

/**
 * Values published in the Valet repository (the old `secrets.example`, the test suite's fixed
 * key): anyone who read the code knows them, so production refuses them whatever their length.
 */
const PUBLISHED_VALUES: ReadonlySet<string> = new Set([
  'dev-signing-key-fake-0000000000000000000000',
  'test-signing-key-0123456789abcdef0123456789',
]);

/** A placeholder left in by mistake; refused in every environment. */
const PLACEHOLDER = /change[_-]?me/i;

/** Words that mark an example or development value; refused in production. */
const EXAMPLE_WORDS = /fake|example|placeholder|dummy|insecure|not[_-]?a[_-]?secret|do[_-]?not[_-]?use/i;

/**
 * Fewer distinct characters than this is a typed or repeated value, not random key material:
 * 32 random bytes have about 16 distinct hex digits and about 28 distinct base64 characters.
 */
const MIN_DISTINCT_CHARS = 10;

/**
 * Refuses a key Valet relies on (signing key, master key, link or anchor key, webhook secret)
 * when it is a placeholder (everywhere) or, in production, a published, example or low-entropy
 * value. The message names the variable and why, never the value.
 */
export function refuseWeakKey(variable: string, value: string, environment: Environment, code: ErrorCode = 'VALET_ERR_CONFIG'): void {
  if (PLACEHOLDER.test(value)) {
    throw new ValetError(code, `${variable} still holds a placeholder (CHANGE_ME): set a real key, e.g. \`openssl rand -base64 32\``);
  }
  if (environment !== 'production') return;
  const why = PUBLISHED_VALUES.has(value.trim())
    ? 'is a development value published in the Valet repository'
    : EXAMPLE_WORDS.test(value)
      ? 'looks like an example or development value'
      : new Set(value.trim()).size < MIN_DISTINCT_CHARS
        ? 'has too little entropy (too few distinct characters)'
        : undefined;
  if (why !== undefined) {
    throw new ValetError(code, `${variable} ${why}; production needs a random per-install key (e.g. \`openssl rand -base64 32\`)`);
  }
}

export interface SecretVariable {
  readonly value: string;
  /** For messages: `NAME`, or `NAME_FILE (path)`. */
  readonly source: string;
  /** The file it was read from (`NAME_FILE`), if any. */
  readonly file: string | undefined;
}

/**
 * A secret setting from the environment: `NAME`, or the file `NAME_FILE` names (a Docker or
 * Kubernetes secret), trailing line breaks removed. Both set is an error; neither is undefined.
 * The value is checked with {@link refuseWeakKey} before it is returned.
 */
export function secretVariable(
  env: NodeJS.ProcessEnv,
  name: string,
  environment: Environment,
  code: ErrorCode = 'VALET_ERR_CONFIG',
): SecretVariable | undefined {
  const direct = env[name] ?? '';
  const fileVar = `${name}_FILE`;
  const filePath = env[fileVar] ?? '';
  if (direct !== '' && filePath !== '') throw new ValetError(code, `both ${name} and ${fileVar} are set; set one of them`);
  let found: SecretVariable | undefined;
  if (direct !== '') found = { value: direct, source: name, file: undefined };
  else if (filePath !== '') {
    const path = resolve(filePath);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ValetError(code, `cannot read ${fileVar} (${path}): ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    found = { value: text.replace(/[\r\n]+$/, ''), source: `${fileVar} (${path})`, file: path };
  }
  if (found === undefined) return undefined;
  if (found.value === '') throw new ValetError(code, `${found.source} is empty`);
  refuseWeakKey(found.source, found.value, environment, code);
  return found;
}
