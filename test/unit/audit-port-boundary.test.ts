import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const sqliteDir = join(root, 'gateway/audit/sqlite');

/** Every module specifier a file names: static imports and re-exports, dynamic imports, require. */
function specifiers(source: string): string[] {
  const found: string[] = [];
  const patterns = [/\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g, /\bimport\s*['"]([^'"]+)['"]/g, /\b(?:import|require)\s*\(\s*['"]([^'"]+)['"]\s*\)/g];
  for (const p of patterns) for (const m of source.matchAll(p)) found.push(m[1] as string);
  return found;
}

/** The specifiers in `file` that reach a database driver or the SQLite audit implementation. */
function driverImports(file: string, source: string): string[] {
  return specifiers(source).filter((s) => s === 'better-sqlite3' || s.startsWith('better-sqlite3/') || (s.startsWith('.') && resolve(dirname(file), s).startsWith(`${sqliteDir}/`)));
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

describe('the audit port boundary', () => {
  it('finds driver imports in every form a module can name one', () => {
    const file = join(root, 'gateway/admin/example.ts');
    const source = [
      "import Database from 'better-sqlite3';",
      "import type { AuditDatabase } from '../audit/sqlite/store.js';",
      "export { SqliteAuditLog } from '../audit/sqlite/log.js';",
      "import '../audit/sqlite/worker.js';",
      "const m = await import('../audit/sqlite/core.js');",
      "import {\n  pageAudit,\n  iterateAudit,\n} from '../audit/sqlite/store.js';",
      "import type { AuditLog } from '../audit/port.js';",
      "import { openAuditBackend } from '../audit/backend.js';",
    ].join('\n');
    expect(driverImports(file, source)).toEqual([
      'better-sqlite3',
      '../audit/sqlite/store.js',
      '../audit/sqlite/log.js',
      '../audit/sqlite/store.js',
      '../audit/sqlite/worker.js',
      '../audit/sqlite/core.js',
    ]);
  });

  it('admin (API and dashboard server) and CLI modules reach the audit log only through its port and backend factory', () => {
    const files = [...tsFiles(join(root, 'gateway/admin')), ...tsFiles(join(root, 'gateway/cli'))];
    expect(files.length).toBeGreaterThan(10);
    const offenders = files.flatMap((f) => driverImports(f, readFileSync(f, 'utf8')).map((s) => `${relative(root, f)} imports ${s}`));
    expect(offenders).toEqual([]);
  });
});
