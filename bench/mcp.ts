/**
 * MCP benchmark: a `tools/call` round trip made with the official MCP TypeScript SDK (Client +
 * StreamableHTTPClientTransport) against the SDK's own server (McpServer + Streamable HTTP
 * transport, stateful sessions, a tool `echo`), directly and through a real Valet gateway with an
 * upstream of `kind: mcp`, in one interleaved run: direct, Valet, direct, Valet... for SSE and for
 * JSON responses.
 *
 *   npm run bench:mcp                  one run (~2 minutes, see docs/performance.md)
 *   npm run bench:mcp -- --help        every option
 *
 * The MCP server and Valet each run in their own Node process (forked with `node --import tsx`);
 * the clients run in this process. With taskset and at least two CPUs, this process (the load
 * generator) is pinned to CPU 0 and the MCP server and Valet to CPU 1: the clients never take CPU
 * from what they measure, and direct and Valet runs give the server side the same one core.
 * Everything listens on 127.0.0.1 and is torn down at the end, on Ctrl-C and on failure; a
 * watchdog bounds the total run time.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { arch, cpus, loadavg, platform, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { affinity, BenchRun, canPin, MACHINE_CPUS, pin } from './lib/child.js';
import { formatSummary, mainThreadProfiles, summariseProfile } from './lib/cpuprofile.js';
import { formatSync, syncLatency } from './lib/disk.js';
import { gitState } from './lib/git.js';
import { numberOption } from './lib/options.js';
import { bucketQuantile, int, markdownTable, median, ms, Samples, type BucketCounts, type LatencyStats } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';

const HERE = dirname(fileURLToPath(import.meta.url));

/** Other processes using more than this many cores during a measurement make it "noisy". */
const QUIET_CORES = 0.2;

const HELP = `Usage: npm run bench:mcp -- [options]

  --seconds N        seconds per measurement                      (default 4)
  --rounds N         interleaved rounds (direct, Valet, direct...)  (default 3)
  --concurrency N    MCP sessions calling in parallel, one call in flight each,
                     in the throughput phase                       (default 16)
  --rate N           calls/s of the fixed-rate latency phase, spread over the
                     same sessions                                 (default 200)
  --warmup N         seconds of calls per target before round 1, discarded (default 2)
  --modes LIST       sse,json: the server's answer to a POST, an event stream
                     (the SDK's default) or one JSON body (enableJsonResponse)
                                                                   (default sse,json)
  --wait-quiet N     before each measurement wait up to N s until other processes
                     use < ${QUIET_CORES} cores                          (default 0: don't wait)
  --no-pin           leave scheduling to the kernel (default: with taskset, the
                     clients on CPU 0, the MCP server and Valet on CPU 1)
  --valet-log FILE   send Valet's log lines to FILE instead of /dev/null
  --cpu-prof[=DIR]   run Valet under node --cpu-prof and print where its main thread's time
                     went per call through Valet; the profile stays in DIR
  --json FILE        also write the raw results as JSON
  --help`;

const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    concurrency: { type: 'string' },
    rate: { type: 'string' },
    warmup: { type: 'string' },
    modes: { type: 'string' },
    'wait-quiet': { type: 'string' },
    'no-pin': { type: 'boolean', default: false },
    'valet-log': { type: 'string' },
    'cpu-prof': { type: 'string' },
    json: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
  // A bare `--cpu-prof` (no directory) becomes `--cpu-prof=` so parseArgs accepts it.
  args: process.argv.slice(2).map((a) => (a === '--cpu-prof' ? '--cpu-prof=' : a)),
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}

const opts = {
  seconds: numberOption(flags.seconds, 'seconds', 4, 1),
  rounds: numberOption(flags.rounds, 'rounds', 3, 1),
  concurrency: numberOption(flags.concurrency, 'concurrency', 16, 1),
  rate: numberOption(flags.rate, 'rate', 200, 1),
  warmup: numberOption(flags.warmup, 'warmup', 2, 0),
  waitQuiet: numberOption(flags['wait-quiet'], 'wait-quiet', 0, 0),
  settleMs: 500,
};
const MODES = ['sse', 'json'] as const;
type Mode = (typeof MODES)[number];
const modes = (flags.modes ?? 'sse,json').split(',').map((s) => s.trim()).filter(Boolean) as Mode[];
for (const m of modes) {
  if (!(MODES as readonly string[]).includes(m)) {
    console.error(`unknown mode "${m}" in --modes (use ${MODES.join(',')})`);
    process.exit(2);
  }
}
type Route = 'direct' | 'valet';
interface Target {
  readonly mode: Mode;
  readonly route: Route;
}
const label = (t: Target): string => `${t.route === 'direct' ? 'direct' : 'via Valet'}, ${t.mode.toUpperCase()}`;
const keyOf = (t: Target): string => `${t.route}-${t.mode}`;

const SERVER_KEY = `mcp-bench-${randomBytes(12).toString('hex')}`;

// ---------------------------------------------------------------------------------------------
// lifecycle: children, temp dir, watchdog, signals

const clients: Client[] = [];
const budgetS = 90 + (modes.length * 2 * (opts.warmup + 5) + opts.rounds * modes.length * 2 * 2 * (opts.seconds + opts.settleMs / 1000 + opts.waitQuiet + 3)) * 1.5;
const run = new BenchRun({ tmpPrefix: 'valet-bench-mcp-', budgetS, beforeStop: () => Promise.all(clients.map((c) => c.close().catch(() => undefined))) });
const root = run.root;

const sleep = (msec: number): Promise<void> => new Promise((r) => setTimeout(r, msec));
const log = (s: string): void => console.log(s);

// ---------------------------------------------------------------------------------------------
// CPU: whole process trees, from /proc

/** utime + stime of a process (all its threads) and of its children it has waited for, in clock ticks. */
function ticks(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (here offset by 3).
    return Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  } catch {
    return Number.NaN;
  }
}

/** A process and its descendants now living. */
function processTree(pid: number): number[] {
  const out = [pid];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const kids = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      for (const k of kids === '' ? [] : kids.split(' ')) out.push(...processTree(Number(k)));
    }
  } catch {
    // gone, or not Linux
  }
  return out;
}

function systemTicks(): { busy: number; total: number } {
  try {
    const v = (readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
    const busy = user + nice + system + irq + softirq + steal;
    return { busy, total: busy + idle + iowait };
  } catch {
    return { busy: Number.NaN, total: Number.NaN };
  }
}

/** The process trees measured: a name, the root pid, and whether its descendants count too. */
type Groups = Record<string, { readonly pid: number; readonly tree: boolean }>;
interface CpuMark {
  system: { busy: number; total: number };
  groups: Record<string, number>;
}

/** Ticks of each named root's process tree, and of the whole machine. */
function cpuMark(roots: Groups): CpuMark {
  const groups: Record<string, number> = {};
  for (const [name, { pid, tree }] of Object.entries(roots)) groups[name] = (tree ? processTree(pid) : [pid]).reduce((a, p) => a + ticks(p), 0);
  return { system: systemTicks(), groups };
}

/** Cores each group used between two marks, and cores used by everything else. */
function coresBetween(a: CpuMark, b: CpuMark): { byGroup: Record<string, number>; other: number } {
  const wall = (b.system.total - a.system.total) / MACHINE_CPUS;
  const byGroup: Record<string, number> = {};
  let ours = 0;
  for (const [name, t] of Object.entries(b.groups)) {
    const d = t - (a.groups[name] ?? Number.NaN);
    byGroup[name] = d / wall;
    if (!Number.isNaN(d)) ours += d;
  }
  return { byGroup, other: Math.max(0, (b.system.busy - a.system.busy - ours) / wall) };
}

// ---------------------------------------------------------------------------------------------
// pinning

const pinned = !flags['no-pin'] && canPin(2);

// ---------------------------------------------------------------------------------------------
// load

interface PhaseResult {
  ok: number;
  errors: number;
  /** Errors by message (first 120 characters). */
  errorKinds: Record<string, number>;
  durationS: number;
  callsPerS: number;
  latency: LatencyStats;
  /** Fixed rate only: how late the generator started its calls (p99, ms). */
  lagP99?: number;
}

let sequence = 0;

/** One tools/call of `echo`; its result must be the message sent. */
async function call(client: Client): Promise<void> {
  const message = `m${++sequence}`;
  const r = await client.callTool({ name: 'echo', arguments: { message } });
  const first = (r.content as { type?: string; text?: string }[] | undefined)?.[0];
  if (r.isError === true || first?.text !== message) throw new Error(`unexpected result ${JSON.stringify(r).slice(0, 120)}`);
}

function phaseResult(ok: number, errorKinds: Record<string, number>, start: number, samples: Samples): PhaseResult {
  const durationS = (performance.now() - start) / 1000;
  const errors = Object.values(errorKinds).reduce((a, n) => a + n, 0);
  return { ok, errors, errorKinds, durationS, callsPerS: ok / durationS, latency: samples.stats() };
}

const noteError = (kinds: Record<string, number>, err: unknown): void => {
  // fetch() says only "fetch failed": the reason is its cause (ECONNRESET, a timeout...).
  const cause = err instanceof Error && err.cause !== undefined ? ` (${String((err.cause as { code?: unknown }).code ?? err.cause)})` : '';
  const k = `${err instanceof Error ? err.message : String(err)}${cause}`.slice(0, 160);
  kinds[k] = (kinds[k] ?? 0) + 1;
};

/** Closed loop: every session calls again as soon as its previous call returned, for `seconds`. */
async function closedLoop(sessions: readonly Client[], seconds: number): Promise<PhaseResult> {
  const samples = new Samples();
  const errorKinds: Record<string, number> = {};
  let ok = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(
    sessions.map(async (c) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          await call(c);
          samples.push(performance.now() - t0);
          ok++;
        } catch (err) {
          noteError(errorKinds, err);
        }
      }
    }),
  );
  return phaseResult(ok, errorKinds, start, samples);
}

/**
 * Open loop: a call every 1/rate s, whether or not earlier ones returned, round-robin over the
 * sessions (a session carries several calls at once when they overlap). Latency runs from the
 * call being made to its result; each is also added to `pool` (every round of a target together).
 */
async function openLoop(sessions: readonly Client[], rate: number, seconds: number, pool: Samples): Promise<PhaseResult> {
  const samples = new Samples();
  const lags = new Samples();
  const errorKinds: Record<string, number> = {};
  const total = Math.max(1, Math.round(rate * seconds));
  const interval = 1000 / rate;
  let ok = 0;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const fire = (n: number): void => {
    const c = sessions[n % sessions.length] as Client;
    const t0 = performance.now();
    inFlight++;
    call(c)
      .then(() => {
        const dt = performance.now() - t0;
        samples.push(dt);
        pool.push(dt);
        ok++;
      })
      .catch((err: unknown) => noteError(errorKinds, err))
      .finally(() => {
        if (--inFlight === 0) drained?.();
      });
  };
  const start = performance.now();
  let sent = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      const due = Math.min(total, Math.floor((now - start) / interval) + 1);
      while (sent < due) {
        lags.push(now - (start + sent * interval));
        fire(sent);
        sent++;
      }
      if (sent >= total) resolve();
      else setTimeout(tick, Math.max(0, start + sent * interval - performance.now()));
    };
    tick();
  });
  if (inFlight > 0) {
    await Promise.race([new Promise<void>((r) => (drained = r)), sleep(15_000)]);
  }
  if (inFlight > 0) errorKinds['no result within 15 s of the last send'] = inFlight;
  return { ...phaseResult(ok, errorKinds, start, samples), lagP99: lags.stats().p99 };
}

// ---------------------------------------------------------------------------------------------
// main

interface Measured extends PhaseResult {
  round: number;
  /** Cores used per process tree (generator, server, valet) and by everything else. */
  cores: Record<string, number>;
  other: number;
  /** tools/call the server ran during the measurement. */
  serverCalls: number;
  audit?: { waits: number; commits: number; waitP50: number; waitP99: number } | undefined;
}

async function main(): Promise<number> {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  log('# Valet MCP benchmark: tools/call through the official SDK\n');
  log(`machine: ${MACHINE_CPUS} CPUs (${cpu}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, ${platform()} ${release()} ${arch()}`);
  log(`node ${process.version}; load average before start ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  log(`code: ${gitState()}`);
  log(`disk (${tmpdir()}, where Valet's audit log is): ${formatSync(syncLatency(tmpdir()))}`);
  log(
    `workload: tools/call "echo" {"message": "m<n>"} with @modelcontextprotocol/sdk Client + StreamableHTTPClientTransport; ` +
      `modes ${modes.join(', ')}; throughput: ${opts.concurrency} sessions × ${opts.seconds} s; fixed rate: ${opts.rate} calls/s × ${opts.seconds} s; ` +
      `rounds: ${opts.rounds} (direct and Valet alternating); warm-up ${opts.warmup} s per target\n`,
  );

  if (pinned) pin(process.pid, 0);
  const childEnv = { ...process.env };
  delete childEnv['VALET_LOG_LEVEL'];
  delete childEnv['NODE_OPTIONS'];
  const server = await run.fork({ name: 'mcp-server', script: join(HERE, 'targets/mcp-server.ts'), args: [SERVER_KEY], env: childEnv });
  const valetArgs = [join(root, 'valet'), server.ready.url, SERVER_KEY, ...(flags['valet-log'] ? [flags['valet-log']] : [])];
  const cpuProf = flags['cpu-prof'];
  const profileDir = cpuProf === undefined ? undefined : cpuProf === '' ? mkdtempSync(join(tmpdir(), 'valet-bench-mcp-prof-')) : cpuProf;
  const valet = await run.fork({
    name: 'valet',
    script: join(HERE, 'targets/valet-mcp.ts'),
    args: valetArgs,
    env: childEnv,
    execArgv: [...NODE_FLAGS, ...(profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`])],
  });
  if (pinned) {
    pin(server.pid, 1);
    pin(valet.pid, 1);
  }
  // This process without its children (they are the server and Valet); each child with any process it starts.
  const roots: Groups = { generator: { pid: process.pid, tree: false }, server: { pid: server.pid, tree: true }, valet: { pid: valet.pid, tree: true } };
  log(`processes: ${Object.entries(roots).map(([n, { pid }]) => `${n} pid ${pid}${pinned ? ` (CPU ${affinity(pid)})` : ''}`).join(', ')}${pinned ? '' : ' (not pinned)'}`);
  log(`valet: upstream "mcp" (kind: mcp, bearer credential injected), one allow rule, durable audit → SQLite in ${join(root, 'valet', 'data')}\n`);

  const token = String(valet.ready['token']);
  const urlOf = (t: Target): string => `${t.route === 'direct' ? server.ready.url : valet.ready.url}/${t.mode}`;
  // Direct clients present the server's key themselves; through Valet, the agent token (Valet injects the key).
  const authOf = (t: Target): string => `Bearer ${t.route === 'direct' ? SERVER_KEY : token}`;
  const connect = async (t: Target): Promise<Client> => {
    const client = new Client({ name: 'valet-bench', version: '1.0.0' });
    clients.push(client);
    await client.connect(new StreamableHTTPClientTransport(new URL(urlOf(t)), { requestInit: { headers: { authorization: authOf(t) } } }));
    return client;
  };

  const targets: Target[] = modes.flatMap((mode) => (['direct', 'valet'] as const).map((route) => ({ mode, route })));
  /** Calls made through Valet outside measurements (smoke, first calls, warm-up): each has an audit row too. */
  let valetCallsUnmeasured = 0;
  const sessions = new Map<string, Client[]>();
  for (const t of targets) {
    // One after another: every SDK client's initialize has id 0 and no session yet.
    const list: Client[] = [];
    for (let i = 0; i < opts.concurrency; i++) list.push(await connect(t));
    // The first call of each session: through Valet, it also fetches the session's tool list once.
    await Promise.all(list.map((c) => call(c)));
    if (t.route === 'valet') valetCallsUnmeasured += list.length;
    sessions.set(keyOf(t), list);
  }
  const before0 = await server.ask<{ unauthorized: number }>('stats');
  if (before0.unauthorized > 0) throw new Error(`the MCP server refused ${before0.unauthorized} request(s) without its key during set-up`);
  log(`set-up: ${targets.length * opts.concurrency} sessions initialized, each called once`);

  for (const t of targets) {
    if (opts.warmup <= 0) continue;
    const w = await closedLoop(sessions.get(keyOf(t)) as Client[], opts.warmup);
    if (t.route === 'valet') valetCallsUnmeasured += w.ok;
    log(`warm-up     ${label(t).padEnd(17)} ${int(w.callsPerS).padStart(6)} calls/s${w.errors > 0 ? `, ${w.errors} errors` : ''}`);
  }

  /** Waits (up to --wait-quiet seconds) until processes outside the benchmark are nearly idle. */
  const settle = async (): Promise<void> => {
    await sleep(opts.settleMs);
    const deadline = performance.now() + opts.waitQuiet * 1000;
    let waited = false;
    while (performance.now() < deadline) {
      const a = cpuMark(roots);
      await sleep(1_000);
      const other = coresBetween(a, cpuMark(roots)).other;
      if (Number.isNaN(other) || other < QUIET_CORES) break;
      if (!waited) log(`  (waiting for other processes to go quiet: ${other.toFixed(2)} cores busy)`);
      waited = true;
    }
  };

  const measure = async (t: Target, round: number, run: () => Promise<PhaseResult>): Promise<Measured> => {
    await settle();
    const [s0, v0] = await Promise.all([server.ask<{ calls: number }>('stats'), valet.ask<{ auditWait: BucketCounts; auditCommit: BucketCounts }>('stats')]);
    const c0 = cpuMark(roots);
    const r = await run();
    const c1 = cpuMark(roots);
    const [s1, v1] = await Promise.all([server.ask<{ calls: number }>('stats'), valet.ask<{ auditWait: BucketCounts; auditCommit: BucketCounts }>('stats')]);
    const u = coresBetween(c0, c1);
    const audit =
      t.route === 'valet'
        ? {
            waits: v1.auditWait.count - v0.auditWait.count,
            commits: v1.auditCommit.count - v0.auditCommit.count,
            waitP50: bucketQuantile(v0.auditWait, v1.auditWait, 0.5),
            waitP99: bucketQuantile(v0.auditWait, v1.auditWait, 0.99),
          }
        : undefined;
    return { ...r, round, cores: u.byGroup, other: u.other, serverCalls: s1.calls - s0.calls, audit };
  };

  const results = new Map<string, { throughput: Measured[]; fixed: Measured[] }>(targets.map((t) => [keyOf(t), { throughput: [], fixed: [] }]));
  const fixedLatencies = new Map<string, Samples>(targets.map((t) => [keyOf(t), new Samples()]));
  const perCall = (m: Measured, group: string): number => (((m.cores[group] ?? Number.NaN) * m.durationS) / Math.max(1, m.ok)) * 1e6;
  const cpuLine = (m: Measured): string =>
    `cores: ${Object.entries(m.cores).map(([n, v]) => `${n} ${v.toFixed(2)}`).join(', ')}, other ${m.other.toFixed(2)}${m.other >= QUIET_CORES ? ' NOISY' : ''}; ` +
    `µs/call: ${Object.keys(m.cores).map((n) => `${n} ${int(perCall(m, n))}`).join(', ')}` +
    (m.audit === undefined ? '' : `; audit waits ${int(m.audit.waits)} (p50 ≤ ${m.audit.waitP50} ms, p99 ≤ ${m.audit.waitP99} ms), commits ${int(m.audit.commits)}`);
  const errLine = (m: Measured): string => (m.errors === 0 ? '' : `\n            ERRORS ${m.errors}: ${JSON.stringify(m.errorKinds)}`);

  for (let round = 1; round <= opts.rounds; round++) {
    log(`\n## round ${round}/${opts.rounds}`);
    // Direct first in odd rounds, Valet first in even ones: neither always runs right after the other.
    const order = (mode: Mode): Target[] => (round % 2 === 1 ? ['direct', 'valet'] : ['valet', 'direct']).map((route) => ({ mode, route: route as Route }));
    for (const mode of modes) {
      for (const t of order(mode)) {
        const m = await measure(t, round, () => closedLoop(sessions.get(keyOf(t)) as Client[], opts.seconds));
        results.get(keyOf(t))?.throughput.push(m);
        log(`throughput  ${label(t).padEnd(17)} ${int(m.callsPerS).padStart(6)} calls/s  p50 ${ms(m.latency.p50)} ms  p99 ${ms(m.latency.p99)} ms  (server ran ${m.serverCalls} of ${m.ok})\n            ${cpuLine(m)}${errLine(m)}`);
      }
    }
    for (const mode of modes) {
      for (const t of order(mode)) {
        const m = await measure(t, round, () => openLoop(sessions.get(keyOf(t)) as Client[], opts.rate, opts.seconds, fixedLatencies.get(keyOf(t)) as Samples));
        results.get(keyOf(t))?.fixed.push(m);
        log(
          `fixed-rate  ${label(t).padEnd(17)} ${int(m.callsPerS).padStart(6)} calls/s  p50 ${ms(m.latency.p50)} ms  p99 ${ms(m.latency.p99)} ms  p99.9 ${ms(m.latency.p999)} ms  ` +
            `max ${ms(m.latency.max)} ms  send lag p99 ${ms(m.lagP99 ?? Number.NaN)} ms  (server ran ${m.serverCalls} of ${m.ok})\n            ${cpuLine(m)}${errLine(m)}`,
        );
      }
    }
  }

  // ---- shut down; count Valet's audit rows
  const stopped = await run.cleanup();
  const valetStop = stopped['valet'] as { auditRows?: { all: number; echo: number } } | undefined;
  const serverStop = stopped['mcp-server'] as { unauthorized?: number } | undefined;

  // ---- validity
  const problems: string[] = [];
  const warnings: string[] = [];
  let valetCalls = valetCallsUnmeasured;
  for (const t of targets) {
    const r = results.get(keyOf(t)) as { throughput: Measured[]; fixed: Measured[] };
    for (const m of [...r.throughput, ...r.fixed]) {
      if (m.errors > 0) problems.push(`${label(t)} (round ${m.round}): ${m.errors} failed calls ${JSON.stringify(m.errorKinds)}`);
      if (m.serverCalls !== m.ok) problems.push(`${label(t)} (round ${m.round}): ${m.ok} results but the server ran the tool ${m.serverCalls} times`);
      if (m.other >= QUIET_CORES) warnings.push(`${label(t)} (round ${m.round}): other processes used ${m.other.toFixed(2)} cores`);
      if (m.lagP99 !== undefined && m.lagP99 > 5) warnings.push(`${label(t)} (round ${m.round}): the fixed-rate generator ran late (send lag p99 ${ms(m.lagP99)} ms)`);
      if (t.route === 'valet') valetCalls += m.ok;
    }
  }
  if ((serverStop?.unauthorized ?? 0) > 0) problems.push(`the MCP server refused ${serverStop?.unauthorized} request(s) that lacked its key`);
  const echoRows = valetStop?.auditRows?.echo ?? -1;
  if (echoRows < valetCalls) problems.push(`valet: ${echoRows} audit rows of mcp.echo for ${valetCalls} calls`);
  else log(`\nvalet audit log: ${int(echoRows)} rows of mcp.echo for ${int(valetCalls)} calls through Valet (${int(valetStop?.auditRows?.all ?? 0)} rows in all: initialize, notifications, calls)`);

  // ---- report
  const medianOf = (xs: Measured[], f: (m: Measured) => number): number => median(xs.map(f));
  const pooled = (t: Target): LatencyStats => (fixedLatencies.get(keyOf(t)) as Samples).stats();
  const rowsOf = (t: Target): { throughput: Measured[]; fixed: Measured[] } => results.get(keyOf(t)) as { throughput: Measured[]; fixed: Measured[] };
  const us = (v: number): string => (Number.isNaN(v) ? 'n/a' : int(v));
  const plus = (v: number): string => (Number.isNaN(v) ? 'n/a' : `${v >= 0 ? '+' : ''}${ms(v)}`);
  const roundsNote = opts.rounds > 1 ? `, median of ${opts.rounds} rounds` : '';

  log(`\n## Throughput — ${opts.concurrency} sessions, one call in flight each, ${opts.seconds} s${roundsNote}\n`);
  log(
    markdownTable(
      ['target', 'calls/s', 'vs direct', 'p50 ms', 'p99 ms', 'Valet CPU µs/call', 'server CPU µs/call', 'client CPU µs/call', 'Valet cores', 'errors'],
      targets.map((t) => {
        const r = rowsOf(t).throughput;
        const direct = rowsOf({ mode: t.mode, route: 'direct' }).throughput;
        const cps = medianOf(r, (m) => m.callsPerS);
        return [
          label(t),
          int(cps),
          t.route === 'direct' ? '—' : `${(cps / medianOf(direct, (m) => m.callsPerS)).toFixed(2)}×`,
          ms(medianOf(r, (m) => m.latency.p50)),
          ms(medianOf(r, (m) => m.latency.p99)),
          t.route === 'direct' ? '—' : us(medianOf(r, (m) => perCall(m, 'valet'))),
          us(medianOf(r, (m) => perCall(m, 'server'))),
          us(medianOf(r, (m) => perCall(m, 'generator'))),
          t.route === 'direct' ? '—' : medianOf(r, (m) => m.cores['valet'] ?? Number.NaN).toFixed(2),
          String(r.reduce((a, m) => a + m.errors, 0)),
        ];
      }),
    ),
  );

  log(`\n## Latency — ${opts.rate} calls/s open loop over ${opts.concurrency} sessions, ${opts.seconds} s × ${opts.rounds} rounds, percentiles over every call\n`);
  log(
    markdownTable(
      ['target', 'calls', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'added p50', 'added p99', 'added p99.9', 'Valet CPU µs/call', 'errors'],
      targets.map((t) => {
        const r = rowsOf(t).fixed;
        const l = pooled(t);
        const d = pooled({ mode: t.mode, route: 'direct' });
        const isDirect = t.route === 'direct';
        return [
          label(t),
          int(l.count),
          ms(l.p50),
          ms(l.p99),
          ms(l.p999),
          ms(l.max),
          isDirect ? '—' : plus(l.p50 - d.p50),
          isDirect ? '—' : plus(l.p99 - d.p99),
          isDirect ? '—' : plus(l.p999 - d.p999),
          isDirect ? '—' : us(medianOf(r, (m) => perCall(m, 'valet'))),
          String(r.reduce((a, m) => a + m.errors, 0)),
        ];
      }),
    ),
  );
  log(
    `\n"added" is via Valet minus direct, same mode. CPU µs/call is the process tree's CPU time (all threads, /proc) over the calls it served;\n` +
      `"client" is this process (the SDK clients and the generator), "server" the MCP server process. ` +
      (pinned ? 'Pinned: the clients on CPU 0, the MCP server and Valet on CPU 1.' : 'Not pinned.'),
  );

  if (problems.length > 0) {
    log('\nINVALID RUN — failures were observed, the figures above are not trustworthy:');
    for (const p of problems) log(`- ${p}`);
  } else {
    log('\nvalidity: every call returned its own message; the server ran the tool once per call; every Valet call has an audit row; the server never saw a request without its key');
  }
  if (warnings.length > 0) {
    log('\nwarnings (figures may be disturbed):');
    for (const w of warnings) log(`- ${w}`);
  }
  if (profileDir !== undefined) {
    const files = mainThreadProfiles(profileDir);
    if (files.length === 0) log(`\n(no main-thread .cpuprofile was written to ${profileDir})`);
    for (const f of files) {
      log(`\n## CPU profile of Valet's main thread, per call through Valet: ${f}\n`);
      log('```');
      log(formatSummary(summariseProfile(f, valetCalls), 25));
      log('```');
    }
  }
  if (flags.json) {
    const fixedPooled = Object.fromEntries(targets.map((t) => [keyOf(t), pooled(t)]));
    writeFileSync(flags.json, `${JSON.stringify({ machine: { cpus: MACHINE_CPUS, cpu, node: process.version }, opts, pinned, results: Object.fromEntries(results), fixedPooled, problems, warnings }, null, 2)}\n`);
  }
  return problems.length > 0 ? 1 : 0;
}

run.finish(main);
