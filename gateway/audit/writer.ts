import type { Logger } from 'pino';
import type { AuditRecord } from '../types.js';
import { INSERT_SQL, toRow, type AuditDatabase } from './store.js';

/** Takes audit records off the request path and writes them in batched transactions. */
export interface AuditWriter {
  record(r: AuditRecord): void;
  /** Writes everything queued so far. */
  flush(): void;
  /** Rows waiting to be written. */
  readonly pending: number;
  /** Flushes and stops the timer; the database stays open for the caller to close. */
  close(): void;
}

export interface AuditWriterOptions {
  logger: Logger;
  flushIntervalMs?: number;
  maxBatch?: number;
}

export function createAuditWriter(db: AuditDatabase, o: AuditWriterOptions): AuditWriter {
  const insert = db.prepare(INSERT_SQL);
  const maxBatch = o.maxBatch ?? 500;
  let queue: unknown[][] = [];
  let scheduled = false;
  const writeBatch = db.transaction((rows: unknown[][]) => {
    for (const row of rows) insert.run(row);
  });

  const flush = (): void => {
    scheduled = false;
    while (queue.length > 0) {
      const batch = queue.slice(0, maxBatch);
      try {
        writeBatch(batch);
        queue = queue.slice(batch.length);
      } catch (err) {
        // Keep the rows and try again on the next tick; the error names no row content.
        o.logger.error({ err: { code: (err as { code?: string }).code, message: (err as Error).message } }, 'audit write failed');
        schedule();
        return;
      }
    }
  };
  const timer = setInterval(() => {
    if (queue.length > 0) flush();
  }, o.flushIntervalMs ?? 20);
  timer.unref();
  const schedule = (): void => {
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush).unref();
    }
  };

  return {
    record(r) {
      queue.push(toRow(r));
      if (queue.length >= maxBatch) schedule();
    },
    flush,
    get pending() {
      return queue.length;
    },
    close() {
      clearInterval(timer);
      flush();
    },
  };
}
