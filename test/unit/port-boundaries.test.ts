import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The admin plane and the CLI depend on the approvals and secrets ports, never on a driver: the
 * implementation (SQLite or PostgreSQL) is chosen in `approvals/backend.ts` / `secrets/backend.ts`
 * without touching them. These checks read the import specifiers of every file under
 * gateway/admin and gateway/cli.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const GATEWAY = join(ROOT, 'gateway');
const CONSUMERS = ['admin', 'cli'].map((d) => join(GATEWAY, d));
/** Implementations a consumer reaches only through a backend factory. */
const IMPLEMENTATIONS = ['approvals/sqlite', 'secrets/sqlite', 'approvals/postgres', 'secrets/postgres'].map((d) => join(GATEWAY, d));
const DRIVER_HELPERS = new Map([
  [join(GATEWAY, 'sqlite.ts'), 'the SQLite helper (gateway/sqlite.ts)'],
  [join(GATEWAY, 'postgres.ts'), 'the PostgreSQL helper (gateway/postgres.ts)'],
]);

/** Every module specifier in `text`: static imports and re-exports (also type-only, also multi-line) and dynamic `import()`. */
function specifiers(text: string): string[] {
  const found: string[] = [];
  for (const m of text.matchAll(/\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g)) found.push(m[1] as string);
  for (const m of text.matchAll(/\bimport\s*['"]([^'"]+)['"]/g)) found.push(m[1] as string);
  for (const m of text.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) found.push(m[1] as string);
  return found;
}

/** Why `specifier`, imported by `file`, breaks the boundary; undefined when it does not. */
function violation(file: string, specifier: string): string | undefined {
  if (specifier === 'better-sqlite3' || specifier.startsWith('better-sqlite3/')) return 'imports the SQLite driver';
  if (specifier === 'pg' || specifier.startsWith('pg/')) return 'imports the PostgreSQL driver';
  if (!specifier.startsWith('.')) return undefined;
  const target = resolve(dirname(file), specifier).replace(/\.js$/, '.ts');
  const helper = DRIVER_HELPERS.get(target);
  if (helper !== undefined) return `imports ${helper}`;
  const impl = IMPLEMENTATIONS.find((d) => target === d || target.startsWith(`${d}/`));
  return impl === undefined ? undefined : `imports ${relative(GATEWAY, impl)}/ instead of going through its backend factory`;
}

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

function violations(file: string, text: string): string[] {
  return specifiers(text).flatMap((s) => {
    const why = violation(file, s);
    return why === undefined ? [] : [`${relative(ROOT, file)}: '${s}' ${why}`];
  });
}

describe('port boundaries: admin plane and CLI', () => {
  it('no file under gateway/admin or gateway/cli imports a driver (better-sqlite3, pg), its helper, or an approvals/secrets sqlite/ or postgres/ module', () => {
    const all = CONSUMERS.flatMap(files);
    expect(all.length).toBeGreaterThan(10);
    expect(all.flatMap((f) => violations(f, readFileSync(f, 'utf8')))).toEqual([]);
  });

  it('the check sees every form of import', () => {
    const file = join(GATEWAY, 'admin', 'example.ts');
    const text = [
      "import Database from 'better-sqlite3';",
      "import type { Statement } from 'better-sqlite3';",
      "import {\n  openSqliteApprovalStore,\n} from '../approvals/sqlite/store.js';",
      "export { SECRETS_FILE } from '../secrets/sqlite/store.js';",
      "const m = await import('../secrets/sqlite/store.js');",
      "import '../approvals/sqlite/store.js';",
      "import { openPrivateDatabase } from '../sqlite.js';",
      "import pg from 'pg';",
      "import { openPgPool } from '../postgres.js';",
      "import { openPgApprovalStore } from '../approvals/postgres/store.js';",
      "export type { SECRETS_CHANNEL } from '../secrets/postgres/store.js';",
      // Allowed: the ports and the factories.
      "import type { ApprovalStore } from '../approvals/port.js';",
      "import { openSecretBackend } from '../secrets/backend.js';",
      "import { readFileSync } from 'node:fs';",
    ].join('\n');
    expect(violations(file, text)).toHaveLength(11);
    expect(violations(join(GATEWAY, 'cli', 'x.ts'), "import { x } from '../approvals/backend.js';")).toEqual([]);
  });
});
