/**
 * Fleet benchmark: throughput and latency of 1, 2 and 3 Valet instances sharing PostgreSQL (audit
 * log, approvals, secrets) and Redis (counters), against one embedded instance on SQLite, on the
 * same machine in the same run. Every request is charged against a rate limit, so the counters
 * backend (Redis for the fleet) is on every request's path, as is the audit log.
 *
 *   npm run bench:fleet                 10 s per measurement
 *   npm run bench:fleet -- --quick      3 s per measurement
 *   npm run bench:fleet -- --help       every option
 *
 * On a small machine the instances, the load generator, PostgreSQL and Redis share the cores, so
 * the figures show what the shared backends cost per request, not how a fleet scales.
 *
 * PostgreSQL: a fresh random schema on VALET_BENCH_POSTGRES_URL (default
 * postgres://postgres@127.0.0.1:5432/test), dropped at the end. Redis: a random key prefix on
 * VALET_BENCH_REDIS_URL (default redis://127.0.0.1:6379), its keys deleted at the end.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createClient } from '@redis/client';
import pg from 'pg';
import { request } from 'undici';
import { generateMasterKeyText } from '../gateway/secrets/crypto.js';
import { BenchRun, type BenchChild } from './lib/child.js';
import { snapshot, usageBetween } from './lib/cpu.js';
import { fixedRate, maxThroughput, type RunResult, type Workload } from './lib/load.js';
import { numberOption } from './lib/options.js';
import { int, markdownTable, ms } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';
import { formatPerf, PERF_FREQUENCY, PERF_NODE_ARGS, requirePerf, startPerf, summarisePerf, type PerfSummary } from './lib/perf.js';

const HERE = dirname(fileURLToPath(import.meta.url));

const HELP = `Usage: npm run bench:fleet -- [options]

  --quick               3 s measurements, 1 s warm-up
  --seconds N           seconds per measurement              (default 10; --quick 3)
  --connections N       autocannon connections, split evenly over the instances (default 48)
  --rate N              fixed-rate phase, requests/s in total, round-robin (default 500)
  --only LIST           setups to measure, comma-separated, of: sqlite, fleet1, fleet2, fleet3 (default all)
  --perf                record every thread of the first instance of each setup with Linux perf during
                        its saturation run, and print where its CPU went (as npm run bench -- --perf)
  --pg-waits            during each fleet saturation run, sample what the audit writers'
                        PostgreSQL sessions are doing every 20 ms (waiting for the chain lock,
                        running a statement, idle inside a transaction, idle)
  --help

Needs PostgreSQL (VALET_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test) and
Redis (VALET_BENCH_REDIS_URL, default redis://127.0.0.1:6379).`;

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    connections: { type: 'string' },
    rate: { type: 'string' },
    only: { type: 'string' },
    perf: { type: 'boolean', default: false },
    'pg-waits': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}
const opts = {
  seconds: numberOption(flags.seconds, 'seconds', flags.quick ? 3 : 10, 1),
  warmup: flags.quick ? 1 : 3,
  connections: numberOption(flags.connections, 'connections', 48, 3),
  rate: numberOption(flags.rate, 'rate', 500, 1),
};

const PG_URL = process.env['VALET_BENCH_POSTGRES_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env['VALET_BENCH_REDIS_URL'] ?? 'redis://127.0.0.1:6379';
const run = randomBytes(5).toString('hex');
const SCHEMA = `valet_bench_${run}`;
const REDIS_PREFIX = `valet-bench:${run}:`;
/** Far above anything the run sends: every request is counted, none refused. */
const RATE_LIMIT = 1_000_000_000;
const UPSTREAM_SECRET = `sk-bench-${randomBytes(12).toString('hex')}`;
const PATH = '/v1/echo';
const BODY = JSON.stringify({ model: 'bench-model', messages: [{ role: 'user', content: 'x'.repeat(900) }] });

const admin = new pg.Pool({ connectionString: PG_URL, max: 1 });
const redis = createClient({ url: REDIS_URL });
const log = (s: string): void => console.log(s);
const sleep = (msec: number): Promise<void> => new Promise((r) => setTimeout(r, msec));

/** After the instances stopped: the run's schema and Redis keys go. */
async function dropSharedState(): Promise<void> {
  await admin.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`).catch((e: unknown) => console.error(`could not drop schema ${SCHEMA}: ${String(e)}`));
  await admin.end().catch(() => undefined);
  if (redis.isOpen) {
    const keys: string[] = [];
    for await (const batch of redis.scanIterator({ MATCH: `${REDIS_PREFIX}*`, COUNT: 1000 })) keys.push(...batch);
    for (let i = 0; i < keys.length; i += 500) await redis.del(keys.slice(i, i + 500));
    await redis.close();
  }
}
const budgetS = 120 + 4 * (opts.warmup + 2 * opts.seconds + 5) * 1.5;
const bench = new BenchRun({ tmpPrefix: 'valet-bench-fleet-', budgetS, afterStop: dropSharedState });
const { root, children } = bench;

function gitHead(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: join(HERE, '..'), encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'not a git checkout';
  }
}

interface Setup {
  /** Its name for --only. */
  id: string;
  label: string;
  instances: number;
  fleet: boolean;
}
const SETUPS: Setup[] = [
  { id: 'sqlite', label: '1 × SQLite (embedded)', instances: 1, fleet: false },
  { id: 'fleet1', label: '1 × PostgreSQL + Redis', instances: 1, fleet: true },
  { id: 'fleet2', label: '2 × PostgreSQL + Redis', instances: 2, fleet: true },
  { id: 'fleet3', label: '3 × PostgreSQL + Redis', instances: 3, fleet: true },
];
const only = flags.only === undefined ? undefined : flags.only.split(',').map((x) => x.trim());
const unknown = only?.filter((id) => !SETUPS.some((s) => s.id === id)) ?? [];
if (only !== undefined && (unknown.length > 0 || only.length === 0)) {
  console.error(`--only: unknown setup ${unknown.join(', ') || '(none given)'}; setups: ${SETUPS.map((s) => s.id).join(', ')}`);
  process.exit(2);
}
if (flags.perf) requirePerf();
const MEASURED = SETUPS.filter((s) => only === undefined || only.includes(s.id));

interface Row {
  setup: Setup;
  throughput: RunResult;
  fixed: RunResult;
  /** Valet CPU per request, µs, summed over the instances (saturation run). */
  cpuUsPerReq: number;
  /** Cores used by each instance, and by everything outside the benchmark, during the saturation run. */
  coresPerInstance: number[];
  otherCores: number;
  /** With --pg-waits: the audit writers' sessions by state, mean over the samples. */
  waits?: PgWaits | undefined;
  /** With --perf: where the first instance's CPU went during the saturation run. */
  perf?: PerfSummary | undefined;
}

/** Mean number of audit-writer sessions in each state over the samples of one run. */
interface PgWaits {
  samples: number;
  chainLock: number;
  running: number;
  idleInTransaction: number;
  idle: number;
}

/** Samples pg_stat_activity until `stop` is called; the audit writers are `application_name = 'valet-audit'`. */
function samplePgWaits(): { stop(): Promise<PgWaits> } {
  const totals = { samples: 0, chainLock: 0, running: 0, idleInTransaction: 0, idle: 0 };
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const r = await admin.query<{ state: string | null; wait_event_type: string | null; wait_event: string | null }>(
        "SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE application_name = 'valet-audit' AND datname = current_database()",
      );
      totals.samples++;
      for (const row of r.rows) {
        if (row.wait_event_type === 'Lock' && row.wait_event === 'advisory') totals.chainLock++;
        else if (row.state === 'active') totals.running++;
        else if (row.state === 'idle in transaction') totals.idleInTransaction++;
        else totals.idle++;
      }
      await sleep(20);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      const n = Math.max(1, totals.samples);
      return { samples: totals.samples, chainLock: totals.chainLock / n, running: totals.running / n, idleInTransaction: totals.idleInTransaction / n, idle: totals.idle / n };
    },
  };
}

async function startInstances(s: Setup, upstream: string, masterKey: string): Promise<BenchChild[]> {
  const base: NodeJS.ProcessEnv = { ...process.env, VALET_BENCH_RATE_LIMIT: String(RATE_LIMIT) };
  delete base['VALET_LOG_LEVEL'];
  delete base['NODE_OPTIONS'];
  for (const k of ['VALET_POSTGRES_URL', 'VALET_REDIS_URL', 'VALET_MASTER_KEY', 'VALET_INSTANCE_ID']) delete base[k];
  if (s.fleet) {
    Object.assign(base, {
      VALET_POSTGRES_URL: `${PG_URL}?options=${encodeURIComponent(`-c search_path=${SCHEMA}`)}`,
      VALET_REDIS_URL: REDIS_URL,
      VALET_MASTER_KEY: masterKey,
      VALET_BENCH_AUDIT_SCHEMA: SCHEMA,
      VALET_BENCH_REDIS_PREFIX: REDIS_PREFIX,
      VALET_BENCH_FLEET: '1',
    });
  }
  const started: BenchChild[] = [];
  // One at a time: the first instance creates the schema's tables.
  for (let i = 0; i < s.instances; i++) {
    const dir = join(root, `${s.fleet ? 'fleet' : 'sqlite'}-${s.instances}-${i}`);
    const c = await bench.fork({ name: `valet-${i + 1}`, script: join(HERE, 'targets/valet.ts'), args: [dir, upstream, UPSTREAM_SECRET], env: base, execArgv: [...NODE_FLAGS, ...(flags.perf ? PERF_NODE_ARGS : [])], readyTimeoutMs: 30_000 });
    started.push(c);
  }
  return started;
}

async function measureSetup(s: Setup, upstream: BenchChild, masterKey: string): Promise<Row> {
  const valets = await startInstances(s, upstream.ready.url, masterKey);
  const workloads: Workload[] = valets.map((v) => ({
    url: `${v.ready.url}${PATH}`,
    body: BODY,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${String(v.ready['token'])}` },
  }));
  for (const w of workloads) {
    const res = await request(w.url, { method: 'POST', headers: w.headers, body: BODY });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`${s.label}: smoke request got ${res.statusCode} ${text}`);
  }
  await maxThroughput(workloads, { connections: opts.connections, seconds: opts.warmup });
  await sleep(300);
  const names = new Map<number, string>(valets.map((v) => [v.pid, v.name]));
  names.set(process.pid, 'generator');
  names.set(upstream.pid, 'upstream');
  const a = snapshot([...names.keys()]);
  const sampler = flags['pg-waits'] && s.fleet ? samplePgWaits() : undefined;
  const first = valets[0] as BenchChild;
  const recording = flags.perf ? join(root, `${s.id}.perf.data`) : undefined;
  const perf = recording === undefined ? undefined : startPerf(first.pid, recording);
  const throughput = await maxThroughput(workloads, { connections: opts.connections, seconds: opts.seconds });
  await perf?.stop();
  const waits = await sampler?.stop();
  const u = usageBetween(a, snapshot([...names.keys()]), names);
  // The first instance answered its share of the requests: the workloads are split evenly.
  const perfSummary = recording === undefined ? undefined : summarisePerf(recording, first.pid, (throughput.ok + throughput.non2xx) / valets.length);
  await sleep(300);
  const fixed = await fixedRate(workloads, { rate: opts.rate, seconds: opts.seconds, connections: 64 });
  const coresPerInstance = valets.map((v) => u.byProcess[v.name] ?? Number.NaN);
  const cpuUsPerReq = (coresPerInstance.reduce((x, y) => x + y, 0) * throughput.durationS * 1e6) / throughput.ok;
  for (const v of valets) {
    await v.stop(10_000);
    children.splice(children.indexOf(v), 1);
  }
  return { setup: s, throughput, fixed, cpuUsPerReq, coresPerInstance, otherCores: u.other, waits, perf: perfSummary };
}

async function main(): Promise<number> {
  await redis.connect();
  await admin.query(`CREATE SCHEMA ${SCHEMA}`);
  log('# Valet fleet benchmark\n');
  log(`machine: ${availableParallelism()} CPUs (${cpus()[0]?.model ?? 'unknown CPU'}); node ${process.version}; load average before start ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  log(`code: commit ${gitHead()}; ${new Date().toISOString()}`);
  log(`backends: PostgreSQL schema ${SCHEMA}, Redis prefix ${REDIS_PREFIX}; every request is charged against one rate limit (key: agent)`);
  log(
    `workload: POST ${PATH}, ${Buffer.byteLength(BODY)} B JSON; saturation: ${opts.connections} connections split over the instances × ${opts.seconds} s ` +
      `(warm-up ${opts.warmup} s); fixed rate: ${opts.rate} req/s in total, round-robin, × ${opts.seconds} s\n`,
  );

  const upstream = await bench.fork({ name: 'upstream', script: join(HERE, 'targets/upstream.ts'), args: [`Bearer ${UPSTREAM_SECRET}`], env: { ...process.env } });
  const masterKey = generateMasterKeyText();

  const rows: Row[] = [];
  for (const s of MEASURED) {
    log(`- ${s.label} …`);
    rows.push(await measureSetup(s, upstream, masterKey));
  }
  const auditRows = Number((await admin.query<{ n: string }>(`SELECT count(*) AS n FROM ${SCHEMA}.audit_log`)).rows[0]?.n ?? 0);

  log('');
  log(
    markdownTable(
      ['setup', 'req/s', 'p50 ms', 'p99 ms', `p50 ms @ ${opts.rate}/s`, `p99 ms @ ${opts.rate}/s`, 'Valet CPU µs/req', 'cores per instance', 'other cores', 'non-2xx/errors'],
      rows.map((r) => [
        r.setup.label,
        int(r.throughput.rps),
        ms(r.throughput.latency.p50),
        ms(r.throughput.latency.p99),
        ms(r.fixed.latency.p50),
        ms(r.fixed.latency.p99),
        int(r.cpuUsPerReq),
        r.coresPerInstance.map((c) => c.toFixed(2)).join(' / '),
        r.otherCores.toFixed(2),
        `${r.throughput.non2xx + r.fixed.non2xx}/${r.throughput.errors + r.fixed.errors}`,
      ]),
    ),
  );
  log(`\naudit rows written to PostgreSQL by the fleet runs: ${int(auditRows)}`);
  const sampled = rows.filter((r) => r.waits !== undefined);
  if (sampled.length > 0) {
    log('\nAudit writers\' PostgreSQL sessions during the saturation runs (mean sessions per 20 ms sample):\n');
    log(
      markdownTable(
        ['setup', 'samples', 'waiting for the chain lock', 'running a statement', 'idle in transaction', 'idle'],
        sampled.map((r) => {
          const w = r.waits as PgWaits;
          return [r.setup.label, int(w.samples), w.chainLock.toFixed(2), w.running.toFixed(2), w.idleInTransaction.toFixed(2), w.idle.toFixed(2)];
        }),
      ),
    );
  }
  const profiled = rows.filter((r) => r.perf !== undefined);
  if (profiled.length > 0) {
    log(`\n## Where the CPU went (perf, on-CPU samples at ${PERF_FREQUENCY} Hz per thread, each setup's first instance during its saturation run)\n`);
    log(formatPerf(Object.fromEntries(profiled.map((r) => [r.setup.label, r.perf as PerfSummary]))));
  }
  log('"other cores": everything outside Valet, the upstream and the generator (PostgreSQL, Redis and other work on the machine).');
  const bad = rows.filter((r) => r.throughput.non2xx + r.throughput.errors + r.fixed.non2xx + r.fixed.errors > 0);
  if (bad.length > 0) {
    log(`\nINVALID: ${bad.map((r) => r.setup.label).join(', ')} had refused or failed requests`);
    return 1;
  }
  return 0;
}

bench.finish(main);
