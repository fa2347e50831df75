import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { startAuditWriter } from '../../gateway/audit/sqlite/writer.js';
import { record } from '../helpers/audit.js';

describe('audit writer: each commit is reported with its duration (valet_audit_commit_seconds)', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  for (const mode of ['worker', 'inline'] as const) {
    it(`${mode}: one report per transaction, before what is in it is answered`, async () => {
      dir = mkdtempSync(join(tmpdir(), `valet-commits-${mode}-`));
      const reported: number[] = [];
      const writer = await startAuditWriter({ dataDir: dir, logger: pino({ level: 'silent' }), mode, onCommit: (s) => reported.push(s) });
      try {
        const recs = Array.from({ length: 20 }, () => record({}));
        // The worker journals decisions and writes each call's row once it ends; inline, each decision is a row.
        await Promise.all(recs.map((r) => writer.commit(r)));
        for (const r of recs) writer.record({ ...r, status: 200 });
        await writer.flush();
        // Every row is committed; the worker's reports arrive as messages after its commit.
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
