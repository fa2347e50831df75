import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ANCHOR_FILE, ANCHOR_KEY_ENV, createAnchorer, readAnchors } from '../../gateway/audit/anchor.js';

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

const hash = (n: number): string => n.toString(16).padStart(64, '0');

describe('audit anchors', () => {
  it('appends the head when it moved, signs it with the key, copies it to a command, and resumes after a restart', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-anchor-'));
    const copy = join(dir, 'copied.ndjson');
    let head = { seq: 0, hash: hash(0) };
    const settings = { intervalMs: 3_600_000, command: ['sh', '-c', `cat >> '${copy}'`], url: undefined };
    const env = { [ANCHOR_KEY_ENV]: 'a-key-kept-outside-the-data-directory' };
    const logger = pino({ level: 'silent' });
    const a = createAnchorer({ dataDir: dir, head: () => head, settings, env, logger });
    await a.anchor(); // nothing written yet: no anchor
    head = { seq: 5, hash: hash(5) };
    await a.anchor();
    await a.anchor(); // unchanged: no second line
    head = { seq: 9, hash: hash(9) };
    await a.close(); // the final head at shutdown
    const file = join(dir, ANCHOR_FILE);
    const read = readAnchors(file, env[ANCHOR_KEY_ENV]);
    expect(read.problems).toEqual([]);
    expect(read.anchors.map((x) => [x.seq, x.hash])).toEqual([
      [5, hash(5)],
      [9, hash(9)],
    ]);
    expect(readFileSync(copy, 'utf8')).toBe(readFileSync(file, 'utf8'));
    expect(readFileSync(file, 'utf8')).toMatch(/^\{"seq":5,"hash":"[0-9a-f]{64}","at":\d+,"mac":"[0-9a-f]{64}"\}\n/);

    // A restarted gateway with the same head writes nothing new.
    const b = createAnchorer({ dataDir: dir, head: () => head, settings: { ...settings, command: undefined }, env, logger });
    await b.close();
    expect(readAnchors(file, undefined).anchors).toHaveLength(2);
  });
});
