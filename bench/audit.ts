/**
 * Audit log benchmark: how many rows per second the writer makes durable, what that costs a
 * request through the gateway, how fast filtered queries answer over a million rows, and how fast
 * export and verification read them back.
 *
 *   npm run bench:audit                 full run (60 s sustained writer run; see docs/audit.md)
 *   npm run bench:audit -- --quick      smoke check (a few seconds per phase, 100,000 query rows)
 *   npm run bench:audit -- --help       every option
 *
 * Phases, each server under test in its own Node process (bench/lib/child.ts):
 *  1. writer: bench/targets/audit-writer.ts drives the writer API the way the request path does —
 *     `concurrency` requests in flight, each committing its decision and waiting until it is
 *     durable (the decision journal fdatasynced; inline: its row, synchronous=FULL), then handing
 *     over its outcome; a share of requests are refused
 *     and write one complete row without waiting. Rows/s, per-second minimum, group-commit size,
 *     decision latency; at the end every submitted row must be in the database, complete.
 *  1b. ceiling: the writer's SQL statements alone, in the same schema, with the same mix and
 *     commit size, every value computed beforehand: the most rows per second SQLite itself
 *     commits here, with no JavaScript, hashing or thread hand-off in the way.
 *  2. inline: the same with the writer on the request thread instead of its own (the choice
 *     gateway/audit/writer.ts makes is measured here).
 *  3. gateway: the real gateway (bench/targets/valet.ts) with a local upstream, under autocannon
 *     and at a fixed rate, writer thread vs inline; audit rows must equal requests answered.
 *  4. query: filtered queries over the phase-1 database (topped up to --rows), as the CLI and the
 *     admin API run them; then export (NDJSON, CSV) and `verify` over every row.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { arch, availableParallelism, cpus, loadavg, platform, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import Database from 'better-sqlite3';
import { EVENT, sha256 } from '../gateway/audit/chain.js';
import { ADD_EVENT_SQL, AuditCore, insertRowSql, recordColumns } from '../gateway/audit/sqlite/core.js';
import { verifyChain } from '../gateway/audit/sqlite/chain.js';
import { writeExport } from '../gateway/audit/export.js';
import { requestId } from '../gateway/audit/ids.js';
import { newAuditRecord } from '../gateway/server/pipeline.js';
import type { AuditFilter } from '../gateway/audit/port.js';
import { AUDIT_FILE, iterateAudit, openAuditDatabase, pageAudit } from '../gateway/audit/sqlite/store.js';
import type { AuditRecord } from '../gateway/types.js';
import { decisionRecord, outcome, rand, refusal } from './lib/audit-records.js';
import { BenchRun } from './lib/child.js';
import { snapshot, usageBetween } from './lib/cpu.js';
import { formatSync, syncLatency } from './lib/disk.js';
import { gitState } from './lib/git.js';
import { fixedRate, maxThroughput, type RunResult, type Workload } from './lib/load.js';
import { numberOption } from './lib/options.js';
import { int, markdownTable, median, ms, type LatencyStats } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const PHASES = ['writer', 'ceiling', 'inline', 'gateway', 'query'] as const;
type Phase = (typeof PHASES)[number];

const HELP = `Usage: npm run bench:audit -- [options]

  --quick               smoke check: 5 s writer run, 3 s elsewhere, 100,000 query rows
  --seconds N           sustained writer run, seconds                (default 60; --quick 5)
  --inline-seconds N    inline writer run, seconds                   (default 15; --quick 3)
  --gateway-seconds N   each gateway measurement, seconds            (default 10; --quick 3)
  --concurrency N       requests in flight in the writer runs        (default 512)
  --refused F           share of requests refused before forwarding  (default 0.15)
  --connections N       autocannon connections in the gateway runs   (default 100)
  --rate N              fixed-rate gateway run, requests/s            (default 500)
  --ceiling-rows N      rows the SQLite ceiling phase writes          (default 300000; --quick 50000)
  --ceiling-indexes K   the ceiling phase's query indexes: schema (as shipped), none (no
                        secondary index), bucketed (each filter index keyed (id >> 10, column)
                        first: a design that was measured and not adopted)   (default schema)
  --ceiling-page-size N the ceiling database's page size in bytes     (default SQLite's, 4096)
  --rows N              rows the query phase runs over               (default 1000000; --quick 100000)
  --only LIST           phases: ${PHASES.join(',')}                (default all)
  --json FILE           also write the raw results as JSON
  --strict              exit 1 when a goal is missed (invalid runs always exit 1)
  --help`;

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    'inline-seconds': { type: 'string' },
    'gateway-seconds': { type: 'string' },
    concurrency: { type: 'string' },
    refused: { type: 'string' },
    connections: { type: 'string' },
    rate: { type: 'string' },
    rows: { type: 'string' },
    'ceiling-rows': { type: 'string' },
    'ceiling-indexes': { type: 'string' },
    'ceiling-page-size': { type: 'string' },
    only: { type: 'string' },
    json: { type: 'string' },
    strict: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}
const quick = flags.quick;
const opts = {
  seconds: numberOption(flags.seconds, 'seconds', quick ? 5 : 60, 1),
  inlineSeconds: numberOption(flags['inline-seconds'], 'inline-seconds', quick ? 3 : 15, 1),
  gatewaySeconds: numberOption(flags['gateway-seconds'], 'gateway-seconds', quick ? 3 : 10, 1),
  concurrency: numberOption(flags.concurrency, 'concurrency', 512, 1),
  refused: numberOption(flags.refused, 'refused', 0.15, 0),
  connections: numberOption(flags.connections, 'connections', 100, 1),
  rate: numberOption(flags.rate, 'rate', 500, 1),
  rows: numberOption(flags.rows, 'rows', quick ? 100_000 : 1_000_000, 1000),
  ceilingRows: numberOption(flags['ceiling-rows'], 'ceiling-rows', quick ? 50_000 : 300_000, 1000),
  ceilingIndexes: flags['ceiling-indexes'] ?? 'schema',
  ceilingPageSize: flags['ceiling-page-size'] === undefined ? undefined : numberOption(flags['ceiling-page-size'], 'ceiling-page-size', 4096, 512),
};
if (!['schema', 'none', 'bucketed'].includes(opts.ceilingIndexes)) {
  console.error(`unknown --ceiling-indexes "${opts.ceilingIndexes}" (use schema, none or bucketed)`);
  process.exit(2);
}
const only = new Set((flags.only ?? PHASES.join(',')).split(',').map((s) => s.trim()));
for (const p of only) {
  if (!(PHASES as readonly string[]).includes(p)) {
    console.error(`unknown phase "${p}" in --only (use ${PHASES.join(',')})`);
    process.exit(2);
  }
}
const run = (p: Phase): boolean => only.has(p);

const budgetS = 120 + opts.seconds + opts.inlineSeconds + 6 * opts.gatewaySeconds + opts.rows / 5_000;
const bench = new BenchRun({ tmpPrefix: 'valet-bench-audit-', budgetS });
const root = bench.root;
const log = (s: string): void => console.log(s);
const sleep = (msec: number): Promise<void> => new Promise((r) => setTimeout(r, msec));

// ---------------------------------------------------------------------------------------------
// phases 1 and 2: the writer on its own

interface WriterStats {
  rows: number;
  decisions: number;
  failures: number;
  pending: number;
  head: number;
  elapsedS: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
}
interface WriterFinal {
  rows: number;
  decisions: number;
  failures: number;
  elapsedS: number;
  closeMs: number;
  commits: number;
  inDatabase: number;
  withoutOutcome: number;
  events: number;
  commitLatency: LatencyStats;
}
interface WriterResult {
  mode: 'worker' | 'inline';
  seconds: number;
  final: WriterFinal;
  /** Durable rows per second over the whole run, drain at the end included. */
  rate: number;
  perSecond: number[];
  maxPending: number;
  loopP99: number;
  loopMax: number;
  cores: number;
  problems: string[];
}

async function writerRun(mode: 'worker' | 'inline', seconds: number, dir: string): Promise<WriterResult> {
  const child = await bench.fork({ name: `audit-writer-${mode}`, script: join(HERE, 'targets/audit-writer.ts'), args: [dir, mode, String(opts.concurrency), String(opts.refused)] });
  const perSecond: number[] = [];
  let last = await child.ask<WriterStats>('stats');
  const c0 = snapshot([child.pid]);
  let maxPending = 0;
  const loops: number[] = [];
  let loopMax = 0;
  for (let s = 0; s < seconds; s++) {
    await sleep(1000);
    const st = await child.ask<WriterStats>('stats');
    perSecond.push((st.rows - last.rows) / (st.elapsedS - last.elapsedS));
    maxPending = Math.max(maxPending, st.pending);
    loops.push(st.loopDelayP99Ms);
    loopMax = Math.max(loopMax, st.loopDelayMaxMs);
    last = st;
    if (s % 10 === 9 || s === seconds - 1) log(`  ${mode} ${s + 1}/${seconds} s: ${int(perSecond.at(-1) as number)} rows/s, ${int(st.rows)} rows, pending ${st.pending}`);
  }
  const cores = usageBetween(c0, snapshot([child.pid]), new Map([[child.pid, 'writer']])).byProcess['writer'] ?? Number.NaN;
  const final = (await child.stop(120_000)) as WriterFinal;
  const problems: string[] = [];
  if (final.failures > 0) problems.push(`${mode}: ${final.failures} decision(s) could not be written`);
  if (final.inDatabase !== final.rows) problems.push(`${mode}: ${final.rows} rows submitted, ${final.inDatabase} in the database`);
  if (final.withoutOutcome !== 0) problems.push(`${mode}: ${final.withoutOutcome} row(s) without their outcome`);
  return {
    mode,
    seconds,
    final,
    rate: final.inDatabase / (final.elapsedS + final.closeMs / 1000),
    perSecond,
    maxPending,
    loopP99: median(loops),
    loopMax,
    cores,
    problems,
  };
}

// ---------------------------------------------------------------------------------------------
// phase 1b: what SQLite alone commits

interface CeilingResult {
  rows: number;
  eventsPerCommit: number;
  commits: number;
  /** Rows per second of transaction time, and the thread's CPU per row (µs). */
  rate: number;
  cpuUsPerRow: number;
  wallUsPerRow: number;
}

/**
 * The writer's statements (gateway/audit/core.ts) on a fresh database: insert a row and its chain
 * event per decision or refused request, update the row and add an outcome event per completion,
 * `eventsPerCommit` events per transaction, the writer-run mix (`refused` share, outcomes
 * `concurrency` requests behind their decisions). Parameters, hashes included, are made before
 * each transaction's clock starts. Checkpoints run on the same connection (automatic), as in the
 * inline writer.
 */
function sqlCeiling(dir: string, eventsPerCommit: number, rows: number): CeilingResult {
  if (opts.ceilingPageSize !== undefined) {
    // Set before the first table exists, on the file openAuditDatabase then opens.
    mkdirSync(dir, { recursive: true });
    const fresh = new Database(join(dir, AUDIT_FILE));
    fresh.pragma(`page_size = ${opts.ceilingPageSize}`);
    fresh.pragma('journal_mode = WAL');
    fresh.close();
  }
  const db = openAuditDatabase(dir);
  try {
    db.pragma('cache_size = -32768');
    const filterIndexes = (db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_log' AND sql IS NOT NULL").all() as { name: string; sql: string }[]).filter(
      (i) => !['audit_log_ts', 'audit_log_request_id', 'audit_log_approval_id'].includes(i.name),
    );
    if (opts.ceilingIndexes !== 'schema') {
      for (const i of filterIndexes) db.exec(`DROP INDEX ${i.name}`);
      if (opts.ceilingIndexes === 'none') db.exec('DROP INDEX audit_log_ts; DROP INDEX audit_log_request_id; DROP INDEX audit_log_approval_id;');
      else for (const i of filterIndexes) db.exec(`CREATE INDEX ${i.name} ON audit_log (id >> 10, ${i.name.replace('audit_log_', '')})${/ WHERE .*$/s.exec(i.sql)?.[0] ?? ''}`);
    }
    const columns = recordColumns(db);
    const keys = columns.map((c) => c.key as keyof AuditRecord);
    const insert = db.prepare(insertRowSql(columns.map((c) => c.name)));
    const addEvent = db.prepare(ADD_EVENT_SQL);
    const complete = db.prepare('UPDATE audit_log SET status = ?, upstream_status = ?, error_code = ?, duration_ms = ?, bytes_out = ?, outcome_seq = ? WHERE id = ?');
    type Op = { insert: unknown[] | null; update: unknown[] | null; event: unknown[] };
    const tx = db.transaction((ops: Op[]) => {
      for (const op of ops) {
        if (op.insert) insert.run(op.insert);
        else complete.run(op.update as unknown[]);
        addEvent.run(op.event);
      }
    }).immediate;
    const open: { id: number; rec: AuditRecord }[] = [];
    let id = 0;
    let seq = 0;
    let done = 0;
    let commits = 0;
    let wallMs = 0;
    let cpuUs = 0;
    while (done < rows) {
      const ops: Op[] = [];
      while (ops.length < eventsPerCommit) {
        const refused = rand() < opts.refused;
        const rec = refused ? refusal() : decisionRecord();
        id++;
        seq++;
        const kind = refused ? EVENT.record : EVENT.decision;
        ops.push({ insert: [...keys.map((k) => rec[k] ?? null), id, Date.now(), seq], update: null, event: [seq, id, kind, sha256(`${seq}`), refused ? null : sha256(`${id}`)] });
        if (refused) done++;
        else open.push({ id, rec });
        if (open.length > opts.concurrency) {
          const o = open.shift() as { id: number; rec: AuditRecord };
          const r = outcome(o.rec);
          seq++;
          ops.push({ insert: null, update: [r.status, r.upstreamStatus, r.errorCode, r.durationMs, r.bytesOut, seq, o.id], event: [seq, o.id, EVENT.outcome, sha256(`${seq}`), null] });
          done++;
        }
      }
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      tx(ops);
      wallMs += performance.now() - t0;
      const c = process.cpuUsage(c0);
      cpuUs += c.user + c.system;
      commits++;
    }
    return { rows: done, eventsPerCommit, commits, rate: done / (wallMs / 1000), cpuUsPerRow: cpuUs / done, wallUsPerRow: (wallMs * 1000) / done };
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------------------------
// phase 3: through the gateway

interface GatewayResult {
  mode: 'worker' | 'inline';
  throughput: RunResult;
  fixed: RunResult & { lagP99: number };
  answered: number;
  auditRows: number;
  loopP99: number;
  /** Cores the gateway process used during the throughput run, and processes outside the benchmark. */
  valetCores: number;
  otherCores: number;
  problems: string[];
}

async function gatewayRun(mode: 'worker' | 'inline'): Promise<GatewayResult> {
  const secret = `sk-bench-${randomBytes(8).toString('hex')}`;
  const upstream = await bench.fork({ name: 'upstream', script: join(HERE, 'targets/upstream.ts'), args: [`Bearer ${secret}`] });
  const env: NodeJS.ProcessEnv = { ...process.env, VALET_BENCH_AUDIT_WRITER: mode };
  delete env['VALET_LOG_LEVEL'];
  const valet = await bench.fork({ name: `valet-${mode}`, script: join(HERE, 'targets/valet.ts'), args: [join(root, `gateway-${mode}`), upstream.ready.url, secret], env, execArgv: [...NODE_FLAGS] });
  const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'x'.repeat(900) }] });
  const w: Workload = { url: `${valet.ready.url}/v1/echo`, body, headers: { 'content-type': 'application/json', authorization: `Bearer ${String(valet.ready['token'])}` } };
  const smoke = await request(w.url, { method: 'POST', headers: w.headers, body });
  await smoke.body.text();
  if (smoke.statusCode !== 200) throw new Error(`gateway smoke request: ${smoke.statusCode}`);
  await maxThroughput(w, { connections: opts.connections, seconds: 1 }).then((r) => (warm = r.ok + r.non2xx));
  await valet.ask('stats');
  const names = new Map([
    [process.pid, 'generator'],
    [upstream.pid, 'upstream'],
    [valet.pid, 'valet'],
  ]);
  const c0 = snapshot([...names.keys()]);
  const throughput = await maxThroughput(w, { connections: opts.connections, seconds: opts.gatewaySeconds });
  const cpu = usageBetween(c0, snapshot([...names.keys()]), names);
  const s1 = await valet.ask<{ loopDelayP99Ms: number }>('stats');
  await sleep(500);
  const fixed = await fixedRate(w, { rate: opts.rate, seconds: opts.gatewaySeconds, connections: 64 });
  const stopped = (await valet.stop(30_000)) as { auditRows?: number };
  await upstream.stop();
  const answered = 1 + warm + throughput.ok + throughput.non2xx + fixed.ok + fixed.non2xx;
  const auditRows = stopped.auditRows ?? -1;
  const problems: string[] = [];
  if (throughput.non2xx + throughput.errors + fixed.non2xx + fixed.errors > 0) problems.push(`gateway ${mode}: non-2xx or errors ${JSON.stringify({ ...throughput.statusCodes })}`);
  if (auditRows < answered) problems.push(`gateway ${mode}: ${auditRows} audit rows for ${answered} answered requests`);
  return { mode, throughput, fixed, answered, auditRows, loopP99: s1.loopDelayP99Ms, valetCores: cpu.byProcess['valet'] ?? Number.NaN, otherCores: cpu.other, problems };
}
let warm = 0;

// ---------------------------------------------------------------------------------------------
// phase 4: queries, export, verify

interface QueryTiming {
  name: string;
  rows: number;
  firstMs: number;
  medianMs: number;
  maxMs: number;
}

/** The same names bench/targets/audit-writer.ts uses, so the queries below find rows of both. */
const UPSTREAMS = ['openai', 'anthropic', 'github', 'stripe', 'postmark', 'slack', 'jira', 'linear', 'notion', 'salesforce'];

function topUp(dir: string, target: number): number {
  const core = new AuditCore(dir);
  try {
    let have = core.db.prepare('SELECT count(*) FROM audit_log').pluck().get() as number;
    const start = performance.now();
    const tenants = 20;
    while (have < target) {
      const n = Math.min(5_000, target - have);
      const ops = Array.from({ length: n }, (_, i) => {
        const k = have + i;
        const agent = k % 200;
        const refused = k % 7 === 0;
        return {
          op: 'final' as const,
          rec: {
            ...newAuditRecord(requestId(), 'POST', `/v1/items/${k}`),
            agent: `agent-${agent}`,
            tenant: `tenant-${agent % tenants}`,
            user: k % 3 === 0 ? `user-${k % 1000}@example.com` : null,
            upstream: UPSTREAMS[k % 10] as string,
            tool: k % 5 < 3 ? `${UPSTREAMS[k % 50 % UPSTREAMS.length] as string}.tool_${k % 50}` : null,
            decision: refused ? ('deny' as const) : k % 100 === 1 ? ('escalate' as const) : ('allow' as const),
            rule: `rule-${Math.min(99, Math.floor(-Math.log(1 - ((k * 7919) % 1000) / 1000) * 8))}`,
            reason: 'agents may call this tool within their budget',
            status: refused ? 403 : k % 111 === 0 ? 500 : 200,
            upstreamStatus: refused ? null : 200,
            errorCode: refused ? 'VALET_ERR_POLICY_DENIED' : null,
            durationMs: 1.5,
            bytesIn: 1024,
            bytesOut: 2048,
            policyVersion: 'sha256:4f2a9c0d1e7b3a55',
          },
        };
      });
      core.apply(ops);
      have += n;
      if (have % 100_000 < 5_000) process.stdout.write(`  topped up to ${int(have)} rows (${int(have / ((performance.now() - start) / 1000))} rows/s)\n`);
    }
    core.db.pragma('optimize');
    return have;
  } finally {
    core.close();
  }
}

interface QueryResult {
  rows: number;
  timings: QueryTiming[];
  exportNdjson: number;
  exportCsv: number;
  verify: { rowsPerS: number; ok: boolean; seconds: number; problems: string[] };
}

async function queryPhase(dir: string): Promise<QueryResult> {
  const rows = topUp(dir, opts.rows);
  const db = openAuditDatabase(dir, { readonly: true });
  const first = db.prepare('SELECT id, logged_at FROM audit_log ORDER BY id LIMIT 1').get() as { id: number; logged_at: number };
  const last = db.prepare('SELECT id, logged_at, request_id FROM audit_log ORDER BY id DESC LIMIT 1').get() as { id: number; logged_at: number; request_id: string };
  const mid = db.prepare('SELECT id, request_id, logged_at FROM audit_log WHERE id >= ? ORDER BY id LIMIT 1').get(Math.floor((first.id + last.id) / 2)) as { id: number; request_id: string; logged_at: number };
  const span = last.logged_at - first.logged_at;
  const queries: [string, Omit<AuditFilter, 'limit'>][] = [
    ['newest 100, no filter', {}],
    ['tenant', { tenant: 'tenant-3' }],
    ['agent', { agent: 'agent-17' }],
    ['user', { user: 'user-42@example.com' }],
    ['upstream', { upstream: 'stripe' }],
    ['tool', { tool: 'github.tool_2' }],
    ['decision = deny', { decision: 'deny' }],
    ['decision = escalate (rare)', { decision: 'escalate' }],
    ['status = 500 (rare)', { status: 500 }],
    ['rule', { rule: 'rule-20' }],
    ['request id', { requestId: mid.request_id }],
    ['tenant + agent', { tenant: 'tenant-17', agent: 'agent-17' }],
    ['tenant + decision = deny', { tenant: 'tenant-5', decision: 'deny' }],
    ['tenant + last 10% of the time', { tenant: 'tenant-5', sinceMs: last.logged_at - span / 10 }],
    ['time window in the middle', { sinceMs: mid.logged_at, untilMs: mid.logged_at + span / 20 }],
    ['tenant + user + time window', { tenant: 'tenant-2', user: 'user-42@example.com', sinceMs: first.logged_at, untilMs: mid.logged_at }],
    ['page at the middle (cursor)', { before: mid.id }],
    ['agent of another tenant (no match)', { tenant: 'tenant-0', agent: 'agent-1' }],
    ['status 200 + deny (no match)', { status: 200, decision: 'deny' }],
    ['status 403 + allow (no match)', { status: 403, decision: 'allow' }],
  ];
  const timings: QueryTiming[] = [];
  for (const [name, f] of queries) {
    const times: number[] = [];
    let n = 0;
    for (let i = 0; i < 6; i++) {
      // Each run as the admin API runs it: a fresh statement, the time bounds searched again.
      const t0 = performance.now();
      n = pageAudit(db, { ...f, limit: 100 }).rows.length;
      times.push(performance.now() - t0);
    }
    timings.push({ name, rows: n, firstMs: times[0] as number, medianMs: median(times.slice(1)), maxMs: Math.max(...times.slice(1)) });
  }
  const sink = (): Writable => new Writable({ write: (_c, _e, cb) => cb() });
  const exportRate = async (format: 'ndjson' | 'csv'): Promise<number> => {
    const t0 = performance.now();
    const n = await writeExport(iterateAudit(db, {}), format, sink());
    return n / ((performance.now() - t0) / 1000);
  };
  try {
    const exportNdjson = await exportRate('ndjson');
    const exportCsv = await exportRate('csv');
    const t0 = performance.now();
    const v = verifyChain(db, { maxProblems: 10 });
    const seconds = (performance.now() - t0) / 1000;
    return { rows, timings, exportNdjson, exportCsv, verify: { rowsPerS: v.rows / seconds, ok: v.ok, seconds, problems: v.problems.map((p) => p.message) } };
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Two reference costs on this machine, to scale the figures by: SHA-256 of 200 bytes (the chain
 * hashes ~4 such inputs per forwarded request) and one insert into an unindexed SQLite table.
 */
function calibrate(): { sha256Us: number; insertUs: number } {
  const input = 'x'.repeat(200);
  let t0 = performance.now();
  for (let i = 0; i < 50_000; i++) sha256(input);
  const sha256Us = ((performance.now() - t0) * 1000) / 50_000;
  const db = new Database(':memory:');
  db.exec('CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c TEXT, d INTEGER)');
  const ins = db.prepare('INSERT INTO t (b, c, d) VALUES (?, ?, ?)');
  t0 = performance.now();
  db.transaction(() => {
    for (let i = 0; i < 50_000; i++) ins.run('agent-1', '/v1/chat/completions', i);
  })();
  const insertUs = ((performance.now() - t0) * 1000) / 50_000;
  db.close();
  return { sha256Us, insertUs };
}

async function main(): Promise<number> {
  log('# Valet audit log benchmark\n');
  log(`machine: ${availableParallelism()} CPUs (${cpus()[0]?.model ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, ${platform()} ${release()} ${arch()}`);
  log(`node ${process.version}; load average before start ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  log(`code: ${gitState()}; data in ${root} (${execFileSync('df', ['-h', '--output=source,fstype', root], { encoding: 'utf8' }).split('\n')[1]?.trim() ?? '?'})`);
  const cal = calibrate();
  log(`calibration: SHA-256 of 200 B ${cal.sha256Us.toFixed(2)} µs; SQLite insert into an unindexed in-memory table ${cal.insertUs.toFixed(2)} µs`);
  log(`disk: ${formatSync(syncLatency(root))}`);
  log(
    `durability: WAL, synchronous=FULL (every commit fsyncs); writer runs: ${opts.concurrency} requests in flight, ${Math.round(opts.refused * 100)}% refused before forwarding\n`,
  );
  const problems: string[] = [];
  const results: Record<string, unknown> = { opts };
  const writerDir = join(root, 'writer');
  let worker: WriterResult | undefined;
  let inline: WriterResult | undefined;

  if (run('writer')) {
    log(`## 1. writer thread, ${opts.seconds} s sustained`);
    worker = await writerRun('worker', opts.seconds, writerDir);
    problems.push(...worker.problems);
    results['writer'] = worker;
  }
  if (run('ceiling')) {
    // The writer run's commit size when there was one, else what 512 requests in flight make.
    const perCommit = worker ? Math.max(1, Math.round(worker.final.events / Math.max(1, worker.final.commits))) : 2 * opts.concurrency;
    log(
      `## 1b. SQLite alone: the writer's statements, ${int(opts.ceilingRows)} rows, ${int(perCommit)} events per commit` +
        (opts.ceilingIndexes === 'schema' ? '' : `, query indexes: ${opts.ceilingIndexes}`) +
        (opts.ceilingPageSize === undefined ? '' : `, page size ${opts.ceilingPageSize}`),
    );
    const c = sqlCeiling(join(root, 'ceiling'), perCommit, opts.ceilingRows);
    results['ceiling'] = c;
    log(`  ${int(c.rate)} rows/s: ${c.wallUsPerRow.toFixed(1)} µs per row in transactions (${c.cpuUsPerRow.toFixed(1)} µs of CPU), ${int(c.commits)} commits, every value made beforehand\n`);
  }
  if (run('inline')) {
    log(`## 2. inline writer (on the request thread), ${opts.inlineSeconds} s`);
    inline = await writerRun('inline', opts.inlineSeconds, join(root, 'inline'));
    problems.push(...inline.problems);
    results['inline'] = inline;
  }
  const writers = [worker, inline].filter((w): w is WriterResult => w !== undefined);
  if (writers.length > 0) {
    log(`\n### Writer: durable rows per second (${opts.concurrency} in flight)\n`);
    log(
      markdownTable(
        ['writer', 'seconds', 'rows', 'rows/s', 'min rows/s (1 s)', 'events per commit', 'decision p50 ms', 'decision p99 ms', 'request-thread loop delay p99/max ms', 'CPU cores', 'CPU µs/row', 'lost'],
        writers.map((w) => [
          w.mode === 'worker' ? 'own thread (default)' : 'inline',
          String(w.seconds),
          int(w.final.inDatabase),
          int(w.rate),
          int(Math.min(...w.perSecond.slice(1))),
          int(w.final.events / Math.max(1, w.final.commits)),
          ms(w.final.commitLatency.p50),
          ms(w.final.commitLatency.p99),
          `${ms(w.loopP99, 1)} / ${ms(w.loopMax, 1)}`,
          Number.isNaN(w.cores) ? 'n/a' : w.cores.toFixed(2),
          Number.isNaN(w.cores) ? 'n/a' : int((w.cores / (w.final.rows / w.final.elapsedS)) * 1e6),
          String(w.final.rows - w.final.inDatabase + w.final.withoutOutcome + w.final.failures),
        ]),
      ),
    );
    log(
      `\n"rows/s" counts rows in the database at the end (complete, with outcome) over the run plus the final drain. An event is a decision,\n` +
        `an outcome or a refused request's row; each commit is one fsync. "CPU" is the writer process, both threads (load generation included).`,
    );
  }

  if (run('gateway')) {
    log(`\n## 3. through the gateway: autocannon ${opts.connections} connections ${opts.gatewaySeconds} s, then ${opts.rate} req/s for ${opts.gatewaySeconds} s`);
    const g: GatewayResult[] = [];
    for (const mode of ['worker', 'inline'] as const) g.push(await gatewayRun(mode));
    for (const r of g) problems.push(...r.problems);
    results['gateway'] = g;
    log('');
    log(
      markdownTable(
        ['writer', 'max req/s', 'p50 ms', 'p99 ms', 'gateway CPU µs/req', `p50 ms at ${opts.rate}/s`, `p99 ms at ${opts.rate}/s`, 'gateway loop delay p99 ms', 'other load (cores)', 'answered', 'audit rows'],
        g.map((r) => [
          r.mode === 'worker' ? 'own thread (default)' : 'inline',
          int(r.throughput.rps),
          ms(r.throughput.latency.p50),
          ms(r.throughput.latency.p99),
          Number.isNaN(r.valetCores) ? 'n/a' : int((r.valetCores / r.throughput.rps) * 1e6),
          ms(r.fixed.latency.p50),
          ms(r.fixed.latency.p99),
          ms(r.loopP99, 1),
          Number.isNaN(r.otherCores) ? 'n/a' : r.otherCores.toFixed(2),
          int(r.answered),
          int(r.auditRows),
        ]),
      ),
    );
  }

  if (run('query')) {
    log(`\n## 4. queries over ${int(opts.rows)} rows (LIMIT 100, newest first, as GET /api/audit runs them)`);
    const dir = run('writer') ? writerDir : join(root, 'query');
    const q = await queryPhase(dir);
    results['query'] = q;
    log('');
    log(markdownTable(['query', 'rows', 'first ms', 'median ms', 'max ms', '< 100 ms'], q.timings.map((t) => [t.name, String(t.rows), ms(t.firstMs), ms(t.medianMs), ms(t.maxMs), t.maxMs < 100 ? 'yes' : 'NO'])));
    log(`\nexport: NDJSON ${int(q.exportNdjson)} rows/s, CSV ${int(q.exportCsv)} rows/s (formatting to a null sink, paged reads)`);
    log(`verify: ${int(q.rows)} rows in ${q.verify.seconds.toFixed(1)} s (${int(q.verify.rowsPerS)} rows/s): ${q.verify.ok ? 'ok' : `FAILED ${q.verify.problems.join('; ')}`}`);
    if (!q.verify.ok) problems.push('verify failed on the benchmark database');
  }

  log('\n## Goals\n');
  let goalsMet = true;
  if (worker) {
    const ok = worker.rate >= 20_000 && worker.seconds >= 60 && worker.problems.length === 0;
    goalsMet &&= ok;
    log(`- ${ok ? 'PASS' : worker.seconds < 60 ? 'n/a (run shorter than 60 s)' : 'FAIL'}: ≥ 20,000 rows/s sustained for 60 s, synchronous=FULL, zero loss — ${int(worker.rate)} rows/s over ${worker.seconds} s, ${int(worker.final.inDatabase)} of ${int(worker.final.rows)} rows written`);
  }
  const ceiling = results['ceiling'] as CeilingResult | undefined;
  if (ceiling) {
    const what = opts.ceilingIndexes === 'schema' && opts.ceilingPageSize === undefined ? 'this schema' : 'the variant of phase 1b';
    log(`- the most ${what} commits here with no JavaScript in the way (phase 1b): ${int(ceiling.rate)} rows/s${ceiling.rate < 20_000 ? ' — below the goal on its own' : ''}`);
  }
  const q = results['query'] as QueryResult | undefined;
  if (q) {
    const slow = q.timings.filter((t) => t.maxMs >= 100);
    const ok = slow.length === 0 && q.rows >= 1_000_000;
    goalsMet &&= ok;
    log(`- ${ok ? 'PASS' : q.rows < 1_000_000 ? 'n/a (fewer than 1,000,000 rows)' : 'FAIL'}: filtered queries over ${int(q.rows)} rows < 100 ms — slowest ${ms(Math.max(...q.timings.map((t) => t.maxMs)))} ms${slow.length ? ` (${slow.map((t) => t.name).join(', ')})` : ''}`);
  }
  if (problems.length > 0) {
    log('\nINVALID RUN:');
    for (const p of problems) log(`- ${p}`);
  } else {
    log('\nvalidity: no row lost, every decision written, every forwarded request audited, the chain verifies');
  }
  if (flags.json) {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(flags.json, `${JSON.stringify({ ...results, problems, goalsMet }, null, 2)}\n`);
  }
  if (problems.length > 0) return 1;
  return flags.strict && !goalsMet ? 1 : 0;
}

bench.finish(main);
