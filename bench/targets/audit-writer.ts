/**
 * The audit writer under load, through its public API (gateway/audit/writer.ts), exactly as the
 * request path drives it: each simulated request in flight either commits its decision, waits until
 * it is durable (synchronous=FULL, group commit), then hands over its outcome — a forwarded call —
 * or hands over one complete row — a refused call. `concurrency` requests are in flight at any
 * moment, as on a busy gateway.
 *
 * Run by bench/audit.ts in its own process; argv: <data dir> <worker|inline> <concurrency> <refused fraction>.
 * Load starts at once; `stats` reports progress, `stop` drains, closes and counts what is in the database.
 */
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { startAuditWriter } from '../../gateway/audit/sqlite/writer.js';
import { decisionRecord, outcome, rand, refusal } from '../lib/audit-records.js';
import { failChild, serveChild } from '../lib/child.js';
import { Samples } from '../lib/stats.js';

const [dataDir, mode = 'worker', concurrencyArg = '512', refusedArg = '0.15'] = process.argv.slice(2);
if (!dataDir || (mode !== 'worker' && mode !== 'inline')) throw new Error('usage: audit-writer.ts <data dir> <worker|inline> [concurrency] [refused fraction]');
const concurrency = Number(concurrencyArg);
const refusedFraction = Number(refusedArg);

async function main(): Promise<void> {
  const logger = pino({ level: 'warn' });
  const writer = await startAuditWriter({ dataDir: dataDir as string, logger, mode: mode as 'worker' | 'inline', busyTimeoutMs: 5_000 });
  let rows = 0;
  let decisions = 0;
  let failures = 0;
  let stopping = false;
  const latency = new Samples();
  const started = performance.now();

  const loop = async (): Promise<void> => {
    while (!stopping) {
      if (rand() < refusedFraction) {
        writer.record(refusal());
        rows++;
        // A refused request does not wait for the database; let the event loop turn now and then.
        if (rows % 64 === 0) await new Promise((r) => setImmediate(r));
        continue;
      }
      const rec = decisionRecord();
      const t0 = performance.now();
      try {
        await writer.commit(rec);
      } catch {
        failures++;
        continue;
      }
      latency.push(performance.now() - t0);
      decisions++;
      writer.record(outcome(rec));
      rows++;
    }
  };
  const loops = Array.from({ length: concurrency }, loop);

  serveChild(
    {
      stats: () => ({ rows, decisions, failures, pending: writer.pending, head: writer.head.seq, commits: writer.commits, elapsedS: (performance.now() - started) / 1000 }),
      onStop: async () => {
        stopping = true;
        await Promise.all(loops);
        const elapsedS = (performance.now() - started) / 1000;
        const closing = performance.now();
        const commits = writer.commits;
        await writer.close();
        const closeMs = performance.now() - closing;
        const db = openAuditDatabase(dataDir as string, { readonly: true });
        try {
          const count = db.prepare('SELECT count(*) AS n, sum(status = 0) AS open FROM audit_log').get() as { n: number; open: number };
          const events = db.prepare('SELECT count(*) FROM audit_chain').pluck().get() as number;
          return { rows, decisions, failures, elapsedS, closeMs, commits, inDatabase: count.n, withoutOutcome: count.open, events, commitLatency: latency.stats() };
        } finally {
          db.close();
        }
      },
    },
    { url: `file://${dataDir}`, mode, concurrency },
  );
}

main().catch(failChild);
