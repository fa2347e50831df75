import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { verifyChain } from '../../gateway/audit/sqlite/chain.js';
import { AUDIT_FILE, openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { MAX_UNWRITTEN, startAuditWriter } from '../../gateway/audit/sqlite/writer.js';
import { record } from '../helpers/audit.js';

/**
 * The WAL header's checkpoint sequence number (bytes 12–15, big-endian): SQLite increments it each
 * time the WAL starts over from its beginning, whatever the file's size does. Undefined while the
 * file does not exist or has no header yet.
 */
function walGeneration(file: string): number | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const header = Buffer.alloc(32);
    return readSync(fd, header, 0, 32, 0) === 32 ? header.readUInt32BE(12) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

describe('audit writer: the WAL stays bounded under sustained load', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it.each(['worker', 'inline'] as const)('%s: commits go on and the WAL starts over again and again, truncated back to its limit', async (mode) => {
    dir = mkdtempSync(join(tmpdir(), 'valet-wal-'));
    const limit = 1024 * 1024;
    const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), walLimitBytes: limit, mode });
    const wal = join(dir, `${AUDIT_FILE}-wal`);
    // What is watched: how many times the WAL started over (its header), how often the file shrank
    // back (journal_size_limit), and the largest it got. The load runs until the WAL has started
    // over five times and shrunk twice, however slow the machine, or 30 s.
    const generations = new Set<number>();
    let shrinks = 0;
    let previous = 0;
    let largest = 0;
    let mostUnwritten = 0;
    let enough = false;
    const sampler = setInterval(() => {
      mostUnwritten = Math.max(mostUnwritten, writer.pending);
      const generation = walGeneration(wal);
      if (generation !== undefined) generations.add(generation);
      try {
        const size = statSync(wal).size;
        if (size < previous) shrinks++;
        largest = Math.max(largest, size);
        previous = size;
      } catch {
        // not created yet
      }
      enough = generations.size > 5 && shrinks >= 2;
    }, 10);
    let rows = 0;
    const until = Date.now() + 30_000;
    // Many agents and users: every commit dirties pages all over the indexes, as on a busy gateway.
    // Sixty-four callers keep the writer committing back to back, so the checkpointer thread alone
    // never catches up: without the writer's own checkpoint past the limit the WAL would never
    // start over (inline, after a pause in which the checkpointer copies most of it). Records cost these callers nothing, so they outrun the writer thread: past
    // MAX_UNWRITTEN rows not yet written, a decision waits, and each commit stays bounded.
    const loop = async (n: number): Promise<void> => {
      while (!enough && Date.now() < until) {
        const rec = record({ agent: `agent-${(n * 7 + rows) % 300}`, user: `user-${rows % 997}@example.com`, tool: `tool_${rows % 50}` });
        await writer.commit(rec);
        writer.record({ ...rec, status: 200, upstreamStatus: 200, durationMs: 3, bytesOut: 100 });
        rows++;
      }
    };
    await Promise.all(Array.from({ length: 64 }, (_, i) => loop(i)));
    clearInterval(sampler);
    await writer.close();

    expect(generations.size).toBeGreaterThan(5);
    expect(shrinks).toBeGreaterThanOrEqual(2);
    // Each commit holds the rows of every call that ended since the last one (thousands at full
    // speed, several MB of index pages), so the file passes the limit by about a commit before the
    // next one starts it over; it never holds what all the commits appended.
    expect(largest).toBeGreaterThan(0);
    expect(largest).toBeLessThan(64 * limit);
    // Rows waiting for the writer: the bound, plus what the 64 callers had in hand when it was reached.
    expect(mostUnwritten).toBeLessThanOrEqual(MAX_UNWRITTEN + 2 * 64);

    const db = openAuditDatabase(dir, { readonly: true });
    try {
      expect(db.prepare('SELECT count(*) FROM audit_log WHERE status = 200').pluck().get()).toBe(rows);
      expect(verifyChain(db).ok).toBe(true);
    } finally {
      db.close();
    }
  }, 60_000);
});
