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
import { requestId } from '../../gateway/audit/ids.js';
import { openAuditDatabase } from '../../gateway/audit/store.js';
import { startAuditWriter } from '../../gateway/audit/writer.js';
import type { AuditRecord } from '../../gateway/types.js';
import { failChild, serveChild } from '../lib/child.js';
import { Samples } from '../lib/stats.js';

const [dataDir, mode = 'worker', concurrencyArg = '512', refusedArg = '0.15'] = process.argv.slice(2);
if (!dataDir || (mode !== 'worker' && mode !== 'inline')) throw new Error('usage: audit-writer.ts <data dir> <worker|inline> [concurrency] [refused fraction]');
const concurrency = Number(concurrencyArg);
const refusedFraction = Number(refusedArg);

/** A deterministic pseudo-random sequence, so every run writes the same distribution. */
let seed = 0x9e3779b9;
const rand = (): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 0x1_0000_0000;
};
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;

// A population shaped like a multi-tenant deployment: agents belong to one tenant, some calls are
// delegated by a user, most map to a tool, a few rules decide most requests.
const TENANTS = Array.from({ length: 20 }, (_, i) => `tenant-${i}`);
const AGENTS = Array.from({ length: 200 }, (_, i) => ({ agent: `agent-${i}`, tenant: TENANTS[i % TENANTS.length] as string }));
const USERS = Array.from({ length: 1000 }, (_, i) => `user-${i}@example.com`);
const UPSTREAMS = ['openai', 'anthropic', 'github', 'stripe', 'postmark', 'slack', 'jira', 'linear', 'notion', 'salesforce'];
const TOOLS = Array.from({ length: 50 }, (_, i) => `${UPSTREAMS[i % UPSTREAMS.length]}.tool_${i}`);
const RULES = Array.from({ length: 100 }, (_, i) => `rule-${i}`);
const POLICY = 'sha256:4f2a9c0d1e7b3a55';

function decisionRecord(): AuditRecord {
  const a = pick(AGENTS);
  const upstream = pick(UPSTREAMS);
  const hasTool = rand() < 0.6;
  return {
    ts: Date.now(),
    requestId: requestId(),
    agent: a.agent,
    tenant: a.tenant,
    user: rand() < 0.3 ? pick(USERS) : null,
    upstream,
    tool: hasTool ? pick(TOOLS) : null,
    method: rand() < 0.7 ? 'POST' : 'GET',
    path: `/v1/${hasTool ? 'chat/completions' : `items/${Math.floor(rand() * 100_000)}`}`,
    decision: rand() < 0.01 ? 'escalate' : 'allow',
    // Zipf-like: a handful of rules decide most requests.
    rule: RULES[Math.min(RULES.length - 1, Math.floor(-Math.log(1 - rand()) * 8))] as string,
    reason: 'agents may call this tool within their budget',
    status: 0,
    upstreamStatus: null,
    errorCode: null,
    durationMs: 0,
    bytesIn: Math.floor(rand() * 4096),
    bytesOut: 0,
    policyVersion: POLICY,
    approvalId: null,
    approver: null,
    approvalReason: null,
    approvalAt: null,
    args: null,
  };
}

function outcome(rec: AuditRecord): AuditRecord {
  const r = rand();
  const status = r < 0.93 ? 200 : r < 0.97 ? 201 : r < 0.99 ? 502 : 500;
  return { ...rec, status, upstreamStatus: status === 502 ? null : status, errorCode: status === 502 ? 'VALET_ERR_UPSTREAM_UNREACHABLE' : null, durationMs: Math.round(rand() * 900_000) / 1000, bytesOut: Math.floor(rand() * 20_000) };
}

function refusal(): AuditRecord {
  const rec = decisionRecord();
  const r = rand();
  if (r < 0.15) return { ...rec, agent: null, tenant: null, user: null, tool: null, decision: null, rule: null, reason: null, policyVersion: null, status: 401, errorCode: 'VALET_ERR_TOKEN_MISSING', durationMs: 0.2 };
  if (r < 0.25) return { ...rec, decision: 'deny', status: 429, errorCode: 'VALET_ERR_RATE_LIMITED', durationMs: 0.4 };
  return { ...rec, decision: 'deny', rule: 'default-deny', reason: 'no rule allows this request', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED', durationMs: 0.3 };
}

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
