import { mkdtempSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DecisionJournal, JOURNAL_DIR, readJournal } from '../../gateway/audit/sqlite/journal.js';

const errors: unknown[] = [];
const dirs: string[] = [];
const dataDir = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'valet-journal-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  expect(errors.splice(0)).toEqual([]);
});
const segments = (d: string): string[] => readdirSync(join(d, JOURNAL_DIR)).sort();
const op = (id: string, pad = ''): unknown[] => [1, 1_700_000_000_000, id, 'agent', pad];

describe('decision journal', () => {
  it('writes the decisions of a turn once they are awaited, in order, and reads them back', async () => {
    const d = dataDir();
    const j = new DecisionJournal(d, (e) => errors.push(e));
    const a = j.append(op('a'));
    const b = j.append(op('b'));
    // Nothing is written until the turn ends.
    expect(readJournal(d).ops).toEqual([]);
    await Promise.all([j.written(), j.written()]);
    expect(readJournal(d).ops.map((o) => o[2])).toEqual(['a', 'b']);
    j.append(op('c'));
    await j.durable();
    expect(readJournal(d).ops.map((o) => o[2])).toEqual(['a', 'b', 'c']);
    expect(a).toBe(b);
    expect(j.unsettled).toBe(3);
    j.close();
    // Unsettled decisions keep their segment for the next start.
    expect(segments(d)).toHaveLength(1);
  });

  it('deletes a segment once every decision in it has its row, and only then', async () => {
    const d = dataDir();
    const j = new DecisionJournal(d, (e) => errors.push(e));
    // Past 8 MiB a new segment starts.
    const big = 'x'.repeat(64 * 1024);
    const ids: number[] = [];
    for (let i = 0; i < 130; i++) ids.push(j.append(op(`r${i}`, big)));
    await j.written();
    const first = ids[0] as number;
    expect(new Set(ids).size).toBe(1);
    j.append(op('next'));
    await j.written();
    expect(segments(d)).toHaveLength(2);
    for (const id of ids.slice(0, -1)) j.settle(id);
    expect(segments(d)).toHaveLength(2);
    j.settle(first);
    await new Promise((r) => setTimeout(r, 50));
    expect(segments(d)).toHaveLength(1);
    expect(readJournal(d).ops.map((o) => o[2])).toEqual(['next']);
    j.close();
  });

  it('a torn last line (a power loss mid-write) is skipped; segments are read oldest first', () => {
    const d = dataDir();
    const j = new DecisionJournal(d, (e) => errors.push(e));
    j.close();
    rmSync(join(d, JOURNAL_DIR), { recursive: true });
    const fresh = new DecisionJournal(d, (e) => errors.push(e));
    fresh.close();
    writeFileSync(join(d, JOURNAL_DIR, '2.ndjson'), `${JSON.stringify(op('second'))}\n`);
    writeFileSync(join(d, JOURNAL_DIR, '10.ndjson'), `${JSON.stringify(op('third'))}\n{"torn`);
    appendFileSync(join(d, JOURNAL_DIR, '1.ndjson'), `${JSON.stringify(op('first'))}\n`);
    const r = readJournal(d);
    expect(r.ops.map((o) => o[2])).toEqual(['first', 'second', 'third']);
    expect(r.files.map((f) => f.slice(f.lastIndexOf('/') + 1))).toEqual(['1.ndjson', '2.ndjson', '10.ndjson']);
    // A new journal continues after the highest segment number.
    const next = new DecisionJournal(d, (e) => errors.push(e));
    next.append(op('fourth'));
    next.close();
    expect(segments(d)).toContain('11.ndjson');
  });

  it('close writes what was appended; a closed journal refuses decisions', async () => {
    const d = dataDir();
    const j = new DecisionJournal(d, (e) => errors.push(e));
    j.append(op('a'));
    const waiting = [j.written(), j.durable()];
    j.close();
    // Closed before the turn ended: the line is written at close, and the wait for it ends.
    expect((await Promise.allSettled(waiting))[0]).toEqual({ status: 'fulfilled', value: undefined });
    expect(() => j.append(op('b'))).toThrow(/closed/);
    expect(readJournal(d).ops.map((o) => o[2])).toEqual(['a']);
  });
});
