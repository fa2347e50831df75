import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERRORS, RETRYABLE } from '../../gateway/errors.js';

const DOC = fileURLToPath(new URL('../../docs/errors.md', import.meta.url));

interface DocRow {
  code: string;
  status: number;
  line: number;
}

/** Rows of the markdown table that document a code: `| VALET_ERR_X | 400 | ... |`. */
function documentedRows(text: string): DocRow[] {
  const rows: DocRow[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line.startsWith('| VALET_ERR_') && !line.startsWith('| `VALET_ERR_')) return;
    const cells = line
      .split('|')
      .slice(1, -1)
      .map((c) => c.trim().replace(/^`(.*)`$/, '$1'));
    rows.push({ code: cells[0] ?? '', status: Number(cells[1]), line: i + 1 });
  });
  return rows;
}

describe('docs/errors.md documents exactly the codes in ERRORS', () => {
  it('docs/errors.md exists', () => {
    expect(existsSync(DOC), `${DOC} is missing`).toBe(true);
  });

  const rows = (): DocRow[] => (existsSync(DOC) ? documentedRows(readFileSync(DOC, 'utf8')) : []);

  it.each(Object.entries(ERRORS))('%s is documented with its HTTP status', (code, { status }) => {
    const found = rows().filter((r) => r.code === code);
    expect(found, `${code} has no row in docs/errors.md`).toHaveLength(1);
    expect(found[0]!.status, `docs/errors.md:${found[0]!.line}`).toBe(status);
  });

  it('names no code that is not in ERRORS, and no code twice', () => {
    const documented = rows();
    expect(documented.length).toBeGreaterThan(0);
    const unknown = documented.filter((r) => !(r.code in ERRORS)).map((r) => `docs/errors.md:${r.line}: ${r.code}`);
    expect(unknown).toEqual([]);
    const codes = documented.map((r) => r.code);
    expect(codes.filter((c, i) => codes.indexOf(c) !== i)).toEqual([]);
  });

  it('the row parser reads the documented table format', () => {
    expect(documentedRows('| Code | Status |\n|---|---|\n| VALET_ERR_BAD_PATH | 400 | The path… |\n| `VALET_ERR_INTERNAL` | 500 | x |\n')).toEqual([
      { code: 'VALET_ERR_BAD_PATH', status: 400, line: 3 },
      { code: 'VALET_ERR_INTERNAL', status: 500, line: 4 },
    ]);
  });

  it('the retry signals paragraph names exactly the codes a retry may get past', () => {
    const text = readFileSync(DOC, 'utf8');
    const paragraph = text.slice(text.indexOf('**Retry signals.**'), text.indexOf('\n- ', text.indexOf('**Retry signals.**')));
    const named = paragraph.slice(0, paragraph.indexOf('and `false`')).match(/VALET_ERR_[A-Z_]+/g) ?? [];
    expect(new Set(named)).toEqual(RETRYABLE);
  });
});
