import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { usableCpus } from '../../gateway/cpus.js';
import { writerMode } from '../../gateway/audit/sqlite/writer.js';

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
  it('auto: inline on one CPU unless every commit fsyncs (strict); a thread with two or more', () => {
    expect(writerMode('auto', 'crash', 1)).toBe('inline');
    expect(writerMode('auto', 'async', 1)).toBe('inline');
    expect(writerMode('auto', 'strict', 1)).toBe('worker');
    for (const d of ['strict', 'crash', 'async'] as const) expect(writerMode('auto', d, 2)).toBe('worker');
  });
});
