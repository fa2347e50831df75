import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { AUDIT_FILE, openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { completionDelayMs, MAX_UNWRITTEN, startAuditWriter } from '../../gateway/audit/sqlite/writer.js';
import { record } from '../helpers/audit.js';
import { verifyChain } from '../../gateway/audit/sqlite/chain.js';

// Each test's data directory, removed after it.
let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

describe('audit writer: each commit is reported with its duration (valet_audit_commit_seconds)', () => {
  for (const mode of ['worker', 'inline'] as const) {
    it(`${mode}: one report per transaction, before what is in it is answered`, async () => {
      dir = mkdtempSync(join(tmpdir(), `valet-commits-${mode}-`));
      const reported: number[] = [];
      const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), mode, onCommit: (s) => reported.push(s) });
      try {
        const recs = Array.from({ length: 20 }, () => record({}));
        // Both journal the decisions and write each call's row once it ends.
        await Promise.all(recs.map((r) => writer.commit(r)));
        for (const r of recs) writer.record({ ...r, status: 200 });
        await writer.flush();
        // Every row is committed; the reports arrive as messages after each commit.
        await expect.poll(() => reported.length).toBeGreaterThanOrEqual(1);
        expect(reported.length).toBeGreaterThanOrEqual(1);
        expect(reported.length).toBe(writer.commits);
        for (const s of reported) {
          expect(s).toBeGreaterThan(0);
          expect(s).toBeLessThan(30);
        }
      } finally {
        await writer.close();
      }
    });
  }
});

/** Once what is gathered is written, how long (ms) one more completed row waits until it is committed. */
async function loneRowWaits(writer: Awaited<ReturnType<typeof startAuditWriter>>): Promise<number> {
  await expect.poll(() => writer.pending, { timeout: 5_000, interval: 2 }).toBe(0);
  const before = writer.commits;
  const sent = performance.now();
  writer.record({ ...record({}), status: 200 });
  await expect.poll(() => writer.commits, { timeout: 5_000, interval: 2 }).toBe(before + 1);
  return performance.now() - sent;
}

describe('audit writer: completed rows gather longer under load (completionDelayMs)', () => {
  it('10 ms below 3,000 rows a second, 50 ms from there', () => {
    expect(completionDelayMs(0)).toBe(10);
    expect(completionDelayMs(2_999)).toBe(10);
    expect(completionDelayMs(3_000)).toBe(50);
    expect(completionDelayMs(50_000)).toBe(50);
  });

  it('50 ms too at any rate once the event loop was busy 80 % of the time or more (a CPU saturated below 3,000 rows a second)', () => {
    expect(completionDelayMs(100, 0.79)).toBe(10);
    expect(completionDelayMs(100, 0.8)).toBe(50);
    expect(completionDelayMs(2_000, 1)).toBe(50);
    expect(completionDelayMs(3_000, 0)).toBe(50);
  });

  it('inline: a batch gathered while the event loop was saturated makes the next lone row wait the longer delay', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-writer-'));
    const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), mode: 'inline', durability: 'crash' });
    try {
      // One row, far below 3,000 a second, while the loop does nothing but work for 40 ms.
      writer.record({ ...record({}), status: 200 });
      const until = performance.now() + 40;
      while (performance.now() < until);
      expect(await loneRowWaits(writer)).toBeGreaterThanOrEqual(45);
    } finally {
      await writer.close();
    }
  });

  for (const mode of ['worker', 'inline'] as const) {
    it(`${mode}: after a burst, a lone completed row waits for the longer delay (timers never fire early); every row is written once`, async () => {
      dir = mkdtempSync(join(tmpdir(), 'valet-writer-'));
      const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), mode, durability: 'crash' });
      try {
        // A burst (thousands of rows a second): the batch that carries it sets the next delay to 50 ms.
        for (let i = 0; i < 400; i++) writer.record({ ...record({}), status: 200 });
        // A timer never fires early: the lone row waited the busy delay, not the light one.
        expect(await loneRowWaits(writer)).toBeGreaterThanOrEqual(45);
        // That batch gathered one row in 50 ms: the next lone row waits the light delay (not asserted: a timer may fire late).
        const quiet = writer.commits;
        writer.record({ ...record({}), status: 200 });
        await expect.poll(() => writer.commits, { timeout: 5_000, interval: 2 }).toBe(quiet + 1);
        // Every row is there, once.
        await writer.flush();
        const db = new Database(join(dir, AUDIT_FILE), { readonly: true });
        try {
          expect((db.prepare('SELECT count(*) AS n FROM audit_log').get() as { n: number }).n).toBe(402);
        } finally {
          db.close();
        }
      } finally {
        await writer.close();
      }
    });
  }
});

describe('audit writer: rows not yet written are bounded (MAX_UNWRITTEN)', () => {
  it('past the bound a decision waits until the writer has caught up, then goes on; its row and every other are written', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-unwritten-'));
    const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), busyTimeoutMs: 20_000 });
    // Another connection holds the write lock: the writer's commits wait in SQLite's busy handler.
    const other = new Database(join(dir, AUDIT_FILE));
    other.exec('BEGIN IMMEDIATE');
    let locked = true;
    try {
      const before = record({});
      await writer.commit(before); // under the bound: journaled, goes on at once
      writer.record({ ...before, status: 200 });
      for (let i = 0; i < MAX_UNWRITTEN; i++) writer.record({ ...record({}), status: 200 });
      expect(writer.pending).toBeGreaterThanOrEqual(MAX_UNWRITTEN);

      const waiting = record({ tool: 'waits' });
      let settled: string | undefined;
      const going = writer.commit(waiting).then(
        () => (settled = 'resolved'),
        () => (settled = 'rejected'),
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(settled).toBeUndefined();

      other.exec('COMMIT');
      locked = false;
      await going;
      expect(settled).toBe('resolved');
      writer.record({ ...waiting, status: 201 });
      await writer.flush();
      await expect.poll(() => writer.pending).toBe(0);
    } finally {
      if (locked) other.exec('ROLLBACK');
      other.close();
      await writer.close();
    }
    const db = openAuditDatabase(dir, { readonly: true });
    try {
      expect(db.prepare('SELECT count(*) FROM audit_log').pluck().get()).toBe(MAX_UNWRITTEN + 2);
      expect(db.prepare("SELECT status FROM audit_log WHERE tool = 'waits'").pluck().get()).toBe(201);
    } finally {
      db.close();
    }
  }, 60_000);
});

describe('audit writer: retention prune through the writer, on its thread and inline', () => {
  for (const mode of ['worker', 'inline'] as const) {
    it(`${mode}: deletes every row past the cutoff in chunks, keeps the rest, and the chain still verifies`, async () => {
      dir = mkdtempSync(join(tmpdir(), `valet-prune-${mode}-`));
      const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), mode });
      const day = 86_400_000;
      const old = Date.now() - 40 * day;
      try {
        // More old rows than one chunk holds on either placement (500 on a thread, 50 inline).
        for (let i = 0; i < 620; i++) writer.record({ ...record({ ts: old + i }), status: 200 });
        for (let i = 0; i < 30; i++) writer.record({ ...record({}), status: 200 });
        await writer.flush();
        const result = await writer.prune({ defaultBefore: Date.now() - 30 * day, tenantBefore: {} });
        expect(result).toMatchObject({ rows: 620, done: true });
        await writer.flush();
      } finally {
        await writer.close();
      }
      const db = openAuditDatabase(dir, { readonly: true });
      try {
        expect(db.prepare('SELECT count(*) FROM audit_log').pluck().get()).toBe(30);
        expect(db.prepare('SELECT count(*) FROM audit_log WHERE ts < ?').pluck().get(Date.now() - 30 * day)).toBe(0);
        expect(verifyChain(db).ok).toBe(true);
      } finally {
        db.close();
      }
    });
  }
});
