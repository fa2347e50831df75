import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { usableCpus } from '../../gateway/cpus.js';
import { writerMode } from '../../gateway/audit/sqlite/writer.js';
import { applyDurability } from '../../gateway/audit/sqlite/durability.js';

const dir = mkdtempSync(join(tmpdir(), 'valet-cpus-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cpuMax = (text: string): string => {
  const f = join(dir, `cpu.max-${Math.random().toString(36).slice(2)}`);
  writeFileSync(f, text);
  return f;
};

describe('usableCpus: affinity, lowered to the cgroup v2 quota rounded up', () => {
  const affinity = availableParallelism();
  it('no quota file, or no quota: the affinity', () => {
    expect(usableCpus(join(dir, 'absent'))).toBe(affinity);
    expect(usableCpus(cpuMax('max 100000\n'))).toBe(affinity);
  });
  it('a quota of one period or less is one CPU; more rounds up, never past the affinity', () => {
    expect(usableCpus(cpuMax('100000 100000\n'))).toBe(1);
    expect(usableCpus(cpuMax('50000 100000\n'))).toBe(1);
    expect(usableCpus(cpuMax('150000 100000\n'))).toBe(Math.min(affinity, 2));
    expect(usableCpus(cpuMax('6400000 100000\n'))).toBe(affinity);
  });
  it('a file it cannot read as a quota is no quota', () => {
    for (const text of ['', 'garbage', '-5 100000', '100000 0', '100000']) expect(usableCpus(cpuMax(text))).toBe(affinity);
  });
});

describe('writerMode: gateway.audit.writer', () => {
  it('thread and inline are taken as written', () => {
    for (const d of ['strict', 'crash', 'async'] as const) {
      expect(writerMode('thread', d, 1)).toBe('worker');
      expect(writerMode('inline', d, 8)).toBe('inline');
    }
  });
  it('auto: inline on one CPU unless each commit is fsynced (strict); a thread with two or more', () => {
    expect(writerMode('auto', 'crash', 1)).toBe('inline');
    expect(writerMode('auto', 'async', 1)).toBe('inline');
    expect(writerMode('auto', 'strict', 1)).toBe('worker');
    for (const d of ['strict', 'crash', 'async'] as const) expect(writerMode('auto', d, 2)).toBe('worker');
  });
});

describe('applyDurability: how a commit becomes durable', () => {
  const open = (): { db: Database.Database; wal: string } => {
    const d = mkdtempSync(join(dir, 'db-'));
    const db = new Database(join(d, 'a.db'));
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (x)');
    return { db, wal: join(d, 'a.db-wal') };
  };
  const synchronous = (db: Database.Database): number => db.pragma('synchronous', { simple: true }) as number;

  it('strict on a thread: the commit fsyncs itself (FULL), nothing after it', () => {
    const { db, wal } = open();
    const s = applyDurability(db, wal, 'strict', () => undefined);
    expect(synchronous(db)).toBe(2);
    expect(s.afterCommit).toBeUndefined();
    s.stop();
    db.close();
  });

  it('strict inline: commits without fsync (NORMAL), then the WAL is fdatasynced off the event loop before the commit counts', async () => {
    const { db, wal } = open();
    const s = applyDurability(db, wal, 'strict', () => undefined, { offThread: true });
    expect(synchronous(db)).toBe(1);
    db.prepare('INSERT INTO t VALUES (1)').run();
    const err = await new Promise<Error | null>((r) => s.afterCommit!(r));
    expect(err).toBeNull();
    s.stop();
    db.close();
  });

  it('strict inline, a WAL that cannot be synced: the commit is reported failed (its decisions stay journaled, calls fail closed)', async () => {
    const { db } = open();
    const s = applyDurability(db, join(dir, 'no-such-dir', 'a.db-wal'), 'strict', () => undefined, { offThread: true });
    const err = await new Promise<Error | null>((r) => s.afterCommit!(r));
    expect((err as NodeJS.ErrnoException).code).toBe('ENOENT');
    s.stop();
    db.close();
  });

  it('crash and async: NORMAL, the WAL fdatasynced from a timer; a commit waits for nothing', () => {
    for (const level of ['crash', 'async'] as const) {
      const { db, wal } = open();
      const s = applyDurability(db, wal, level, () => undefined, { offThread: true });
      expect(synchronous(db)).toBe(1);
      expect(s.afterCommit).toBeUndefined();
      s.stop();
      db.close();
    }
  });
});
