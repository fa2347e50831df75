/**
 * LLM metering benchmark: what Valet's usage meter adds to a streamed chat completion. A fake
 * OpenAI upstream streams `--events` one-token chunks, one every `--interval-ms`, each stamped with
 * the time it was written; the client reads them directly and through three Valet processes that
 * differ only in metering, in one interleaved run:
 *
 * - direct: the client talks to the upstream itself (the reference);
 * - metering off: Valet with an OpenAI-dialect upstream without `llm:`;
 * - metering on: Valet with the `openai` preset (`llm: openai`): the request is read and priced,
 *   `stream_options.include_usage` is added, and the answer passes through the meter, which holds
 *   each SSE event until its blank line and withholds the usage chunk it asked for;
 * - metering + budget: as on, with a usage budget every call reserves against and settles.
 *
 * Every Valet has the same features otherwise: JWT, one allow rule, the audit decision row durable
 * before forwarding, response scrubbing, metrics, pino at 'info' to /dev/null.
 *
 * The client makes one request at a time (this measures added latency, not throughput) and records
 * time to first byte (request start → the first event's bytes) and, for every event, its arrival
 * minus the upstream's stamp: the same monotonic clock in both processes (bench/lib/sse.ts). By
 * default the targets take turns request by request, the order rotating with every pass, so that
 * bursts of other load on a shared machine fall on every target alike. Around each request the
 * target's Valet reports its CPU time (all threads), garbage collections and the tokens it metered.
 *
 *   npm run bench:llm                  one run (~2 minutes, see docs/performance.md)
 *   npm run bench:llm -- --help        every option
 *
 * With taskset and two CPUs the client and the upstream are pinned to CPU 0 and every Valet to
 * CPU 1 (with three or more, the upstream gets CPU 2). Everything listens on 127.0.0.1 and is torn
 * down at the end, on Ctrl-C and on failure; a watchdog bounds the run time.
 */
import { buildGateway, builtGatewayIsCurrent } from './lib/build.js';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { arch, cpus, loadavg, platform, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Client } from 'undici';
import { affinity, BenchRun, canPin, MACHINE_CPUS, pin, type BenchChild } from './lib/child.js';
import { snapshot, usageBetween } from './lib/cpu.js';
import { formatSummary, mainThreadProfiles, summariseProfile } from './lib/cpuprofile.js';
import { gitState } from './lib/git.js';
import { numberOption } from './lib/options.js';
import { monoMs, PROMPT_TOKENS, STREAM_MODEL, StreamReader, type StreamRead } from './lib/sse.js';
import { int, markdownTable, median, ms, Samples, type LatencyStats } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';

const HERE = dirname(fileURLToPath(import.meta.url));

/** Other processes using more than this many cores during a measurement make it "noisy". */
const QUIET_CORES = 0.2;
/** The goal: metering adds at most this much per event at p99 (ms). */
const GOAL_P99_MS = 0.05;

const HELP = `Usage: npm run bench:llm -- [options]

  --events N          content events per stream, one token each           (default 100)
  --interval-ms N     ms between two events (0: as fast as the upstream can)  (default 2)
  --requests N        sequential streamed requests per target per round    (default 20)
  --rounds N          rounds                                                (default 5)
  --interleave MODE   request: in each round, one request per target in turn, the order
                      rotating with every pass, so bursts of other load hit every target
                      alike; block: each target's requests in a row, the order of the
                      targets rotating from round to round                  (default request)
  --warmup N          requests per target before round 1, discarded        (default 10)
  --targets LIST      direct,bare,off,on,budget   (default direct,off,on,budget); bare: the
                      bare undici pass-through of npm run bench, the one hop with nothing done
  --prompt-bytes N    size of the user message (tokenized by Valet when metering) (default 1000)
  --include-usage     the client asks for usage itself (stream_options.include_usage),
                      so Valet neither adds it nor holds events back to strip the chunk
  --wait-quiet N      before each measurement wait up to N s until other processes
                      use < ${QUIET_CORES} cores                                 (default 0: don't wait)
  --no-pin            leave scheduling to the kernel (default: with taskset, the client
                      and the upstream on CPU 0, every Valet on CPU 1)
  --valet-log FILE    send the Valets' log lines to FILE instead of /dev/null
  --cpu-prof[=DIR]    run each Valet under node --cpu-prof and print where its main thread's
                      time went per request; the profiles stay in DIR/<target>
  --durability LEVEL  the Valets' gateway.audit.durability: strict (default), crash or async
  --from-source       run Valet's TypeScript sources through tsx instead of building dist/ first
  --json FILE         also write the raw results as JSON
  --strict            exit 1 when the goal (≤ ${GOAL_P99_MS * 1000} µs per event at p99) is missed
  --help`;

const { values: flags } = parseArgs({
  options: {
    events: { type: 'string' },
    'interval-ms': { type: 'string' },
    requests: { type: 'string' },
    rounds: { type: 'string' },
    warmup: { type: 'string' },
    targets: { type: 'string' },
    interleave: { type: 'string' },
    'prompt-bytes': { type: 'string' },
    'include-usage': { type: 'boolean', default: false },
    'wait-quiet': { type: 'string' },
    'no-pin': { type: 'boolean', default: false },
    'valet-log': { type: 'string' },
    'cpu-prof': { type: 'string' },
    json: { type: 'string' },
    durability: { type: 'string' },
    'from-source': { type: 'boolean', default: false },
    strict: { type: 'boolean', default: false },
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
  events: numberOption(flags.events, 'events', 100, 1),
  intervalMs: numberOption(flags['interval-ms'], 'interval-ms', 2, 0),
  requests: numberOption(flags.requests, 'requests', 20, 1),
  rounds: numberOption(flags.rounds, 'rounds', 5, 1),
  warmup: numberOption(flags.warmup, 'warmup', 10, 0),
  promptBytes: numberOption(flags['prompt-bytes'], 'prompt-bytes', 1000, 1),
  includeUsage: flags['include-usage'],
  waitQuiet: numberOption(flags['wait-quiet'], 'wait-quiet', 0, 0),
  interleave: (flags.interleave ?? 'request') as 'request' | 'block',
  settleMs: 300,
};
if (opts.interleave !== 'request' && opts.interleave !== 'block') {
  console.error(`unknown --interleave "${String(opts.interleave)}" (use request or block)`);
  process.exit(2);
}

const TARGET_IDS = ['direct', 'bare', 'off', 'on', 'budget'] as const;
type TargetId = (typeof TARGET_IDS)[number];
const LABELS: Record<TargetId, string> = { direct: 'direct', bare: 'bare undici proxy', off: 'Valet, metering off', on: 'Valet, metering on', budget: 'Valet, metering + budget' };
const chosen = new Set((flags.targets ?? 'direct,off,on,budget').split(',').map((s) => s.trim()).filter(Boolean));
for (const t of chosen) {
  if (!(TARGET_IDS as readonly string[]).includes(t)) {
    console.error(`unknown target "${t}" in --targets (use ${TARGET_IDS.join(',')})`);
    process.exit(2);
  }
}
const targetIds = TARGET_IDS.filter((t) => chosen.has(t));

const UPSTREAM_KEY = `sk-bench-${randomBytes(12).toString('hex')}`;
const PATH = '/v1/chat/completions';

/** The request every target gets: a chat completion, streamed, with a user message of about `bytes`. */
function requestBody(bytes: number, includeUsage: boolean): string {
  const words = 'Please count slowly from one to one hundred, one number per line, and say nothing else at all. ';
  const content = words.repeat(Math.ceil(bytes / words.length)).slice(0, bytes);
  return JSON.stringify({
    model: STREAM_MODEL,
    messages: [
      { role: 'system', content: 'You are a careful assistant.' },
      { role: 'user', content },
    ],
    stream: true,
    ...(includeUsage && { stream_options: { include_usage: true } }),
    max_tokens: 4096,
    temperature: 0,
  });
}
const BODY = requestBody(opts.promptBytes, opts.includeUsage);

// ---------------------------------------------------------------------------------------------
// lifecycle

const streamS = (opts.events * opts.intervalMs) / 1000 + 0.05;
const totalRequests = targetIds.length * (opts.warmup + 1 + opts.rounds * opts.requests);
const budgetS = 90 + (totalRequests * streamS + opts.rounds * targetIds.length * (opts.settleMs / 1000 + opts.waitQuiet + 2)) * 2;
const clients: Client[] = [];
const run = new BenchRun({ tmpPrefix: 'valet-bench-llm-', budgetS, beforeStop: () => Promise.all(clients.map((c) => c.close().catch(() => undefined))) });

const sleep = (msec: number): Promise<void> => new Promise((r) => setTimeout(r, msec));
const log = (s: string): void => console.log(s);

// ---------------------------------------------------------------------------------------------
// the client

interface Target {
  readonly id: TargetId;
  readonly label: string;
  readonly client: Client;
  readonly path: string;
  readonly headers: Record<string, string>;
  /** The process that serves it: the upstream for direct, else its Valet. */
  readonly server: BenchChild;
  /** Whether the request the upstream sees asks for usage. */
  readonly upstreamUsage: boolean;
  /** Usage-only chunks the client should see per stream. */
  readonly clientUsage: number;
}

interface StreamResult {
  status: number;
  ttfbMs: number;
  read: StreamRead;
  error?: string;
}

/**
 * One streamed request: TTFB into `ttfb`, every content event's delay into `delays`, and those of
 * the events after the first (which arrives with the response's start) into `later`.
 */
async function stream(t: Target, ttfb: readonly Samples[], delays: readonly Samples[], later: readonly Samples[]): Promise<StreamResult> {
  const reader = new StreamReader((d, i) => {
    for (const s of delays) s.push(d);
    if (i > 0) for (const s of later) s.push(d);
  });
  const t0 = monoMs();
  let first = Number.NaN;
  try {
    const res = await t.client.request({ method: 'POST', path: t.path, headers: t.headers, body: BODY });
    if (res.statusCode !== 200) {
      const text = await res.body.text();
      return { status: res.statusCode, ttfbMs: Number.NaN, read: reader.read, error: text.slice(0, 200) };
    }
    await new Promise<void>((resolve, reject) => {
      res.body.on('data', (chunk: Buffer) => {
        const now = monoMs();
        if (Number.isNaN(first)) first = now;
        reader.write(chunk, now);
      });
      res.body.once('end', resolve);
      res.body.once('error', reject);
    });
    const ttfbMs = first - t0;
    for (const s of ttfb) s.push(ttfbMs);
    return { status: 200, ttfbMs, read: reader.end() };
  } catch (err) {
    return { status: 0, ttfbMs: Number.NaN, read: reader.read, error: String(err).slice(0, 200) };
  }
}

/** What is wrong with one stream's result, if anything. */
function check(t: Target, r: StreamResult): string | undefined {
  if (r.status !== 200) return `status ${r.status}: ${r.error ?? ''}`;
  if (r.read.problems.length > 0) return r.read.problems.join('; ');
  if (r.read.content !== opts.events) return `${r.read.content} of ${opts.events} content events`;
  if (r.read.usage !== t.clientUsage) return `${r.read.usage} usage chunks reached the client, expected ${t.clientUsage}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// main

interface UpstreamStats {
  requests: number;
  unauthorized: number;
  withUsage: number;
  events: number;
  aborted: number;
  bad: number;
  cpuUs: number;
}
/** What a target's serving process reports: its CPU time, and (a Valet) the tokens it metered by kind. */
interface ServerStats {
  /** CPU time (all threads, µs) when the stats request arrived, and when the answer was ready (a Valet). */
  cpuUs: number;
  cpuUsEnd?: number;
  /** Garbage collections of the main thread so far, and their total pause. */
  gcCount?: number;
  gcMs?: number;
  metered?: Record<string, number>;
}

/** One target's requests in one round. */
interface Measured {
  target: TargetId;
  round: number;
  requests: number;
  failures: string[];
  ttfb: LatencyStats;
  delay: LatencyStats;
  /** CPU of the target's Valet (all threads) from just before to just after each of its requests, µs per request; NaN for direct. */
  valetCpuUsPerRequest: number;
  /** Its Valet's garbage collections per request, and their pause (ms) per request. */
  gcPerRequest: number;
  gcMsPerRequest: number;
  /** Cores used by processes outside the benchmark during the stretch of requests this was part of. */
  other: number;
}

/** A stretch of requests between two pauses: one target's (block) or a whole round's (request). */
interface Segment {
  round: number;
  requests: number;
  /** Requests the upstream saw, how many asked for usage, and how many should have. */
  upstreamRequests: number;
  upstreamWithUsage: number;
  expectedWithUsage: number;
  upstreamCpuUsPerRequest: number;
  other: number;
}

async function main(): Promise<number> {
  const pinned = !flags['no-pin'] && canPin(2);
  const clientCpu = 0;
  const proxyCpu = 1;
  const upstreamCpu = MACHINE_CPUS >= 3 ? 2 : 0;
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  log('# Valet LLM metering benchmark: a streamed chat completion, metering on and off\n');
  log(`machine: ${MACHINE_CPUS} CPUs (${cpu}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, ${platform()} ${release()} ${arch()}`);
  log(`node ${process.version}; load average before start ${loadavg().map((l) => l.toFixed(2)).join(' ')}; ${new Date().toISOString()}`);
  log(`code: ${gitState()}`);
  log(
    `workload: POST ${PATH} (${Buffer.byteLength(BODY)} B, model ${STREAM_MODEL}, stream: true${opts.includeUsage ? ', include_usage asked for by the client' : ', no stream_options'}); ` +
      `${opts.events} one-token events, one every ${opts.intervalMs} ms; ${opts.requests} sequential requests per target per round, ${opts.rounds} rounds, ` +
      `${opts.interleave === 'request' ? 'targets taking turns request by request' : 'each target\'s requests in a row'}; ${opts.warmup} warm-up requests per target\n`,
  );

  if (pinned) pin(process.pid, clientCpu);
  const childEnv = { ...process.env };
  delete childEnv['VALET_LOG_LEVEL']; // Valet logs at its default level, 'info'.
  delete childEnv['NODE_OPTIONS'];
  const durability = flags.durability ?? 'strict';
  if (!['strict', 'crash', 'async'].includes(durability)) throw new Error(`--durability ${durability}: use strict, crash or async`);
  childEnv['VALET_BENCH_DURABILITY'] = durability;
  if (flags['from-source']) childEnv['VALET_BENCH_FROM_SOURCE'] = '1';
  else if (!builtGatewayIsCurrent()) buildGateway();
  const upstream = await run.fork({ name: 'upstream', script: join(HERE, 'targets/sse-upstream.ts'), args: [`Bearer ${UPSTREAM_KEY}`, String(opts.events), String(opts.intervalMs)], env: childEnv });
  if (pinned) pin(upstream.pid, upstreamCpu);
  const cpuProf = flags['cpu-prof'];
  const profileDir = cpuProf === undefined ? undefined : cpuProf === '' ? mkdtempSync(join(tmpdir(), 'valet-bench-llm-prof-')) : cpuProf;
  const valets = new Map<TargetId, BenchChild>();
  const bare = targetIds.includes('bare') ? await run.fork({ name: 'bare-proxy', script: join(HERE, 'targets/bare-proxy.ts'), args: [upstream.ready.url], env: childEnv, ...(pinned && { cpu: proxyCpu }) }) : undefined;
  for (const id of targetIds) {
    if (id === 'direct' || id === 'bare') continue;
    const args = [join(run.root, id), upstream.ready.url, UPSTREAM_KEY, id, ...(flags['valet-log'] ? [flags['valet-log']] : [])];
    const execArgv = [...NODE_FLAGS, ...(profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, id)}`])];
    const v = await run.fork({ name: `valet-${id}`, script: join(HERE, 'targets/valet-llm.ts'), args, env: childEnv, execArgv, ...(pinned && { cpu: proxyCpu }) });
    valets.set(id, v);
  }
  const names = new Map<number, string>([
    [process.pid, 'client'],
    [upstream.pid, 'upstream'],
    ...[...valets].map(([id, v]): [number, string] => [v.pid, `valet-${id}`]),
    ...(bare === undefined ? [] : [[bare.pid, 'bare'] as [number, string]]),
  ]);
  log(`processes: ${[...names].map(([pid, n]) => `${n} pid ${pid}${pinned ? ` (CPU ${affinity(pid)})` : ''}`).join(', ')}${pinned ? '' : ' (not pinned)'}`);
  log(`valets: JWT (HS256), one allow rule, durable audit → SQLite in ${run.root}/<target>/data, scrubbing on, pino 'info' → ${flags['valet-log'] ?? '/dev/null'}\n`);

  const targets: Target[] = targetIds.map((id) => {
    const v = valets.get(id);
    const proxy = id === 'bare' ? bare : v;
    const url = new URL(proxy === undefined ? upstream.ready.url : proxy.ready.url);
    const client = new Client(url.origin, { pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: 30_000, bodyTimeout: 30_000 });
    clients.push(client);
    const metered = id === 'on' || id === 'budget';
    return {
      id,
      label: LABELS[id],
      client,
      path: `${url.pathname.replace(/\/$/, '')}${PATH}`,
      // Direct and through the bare proxy, the client holds the upstream's key; through Valet, an agent token (Valet injects the key).
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${v === undefined ? UPSTREAM_KEY : String(v.ready['token'])}` },
      server: proxy ?? upstream,
      upstreamUsage: opts.includeUsage || metered,
      clientUsage: opts.includeUsage ? 1 : 0,
    };
  });

  // Smoke check and warm-up: every stream complete and as expected.
  for (const t of targets) {
    for (let i = 0; i < 1 + opts.warmup; i++) {
      const r = await stream(t, [], [], []);
      const bad = check(t, r);
      if (bad !== undefined) throw new Error(`${t.label}, ${i === 0 ? 'first request' : `warm-up request ${i}`}: ${bad}`);
    }
    log(`warm-up     ${t.label.padEnd(24)} ${1 + opts.warmup} requests, every stream complete`);
  }

  const settle = async (): Promise<void> => {
    await sleep(opts.settleMs);
    const deadline = performance.now() + opts.waitQuiet * 1000;
    let waited = false;
    while (performance.now() < deadline) {
      const a = snapshot([...names.keys()]);
      await sleep(1_000);
      const other = usageBetween(a, snapshot([...names.keys()]), names).other;
      if (Number.isNaN(other) || other < QUIET_CORES) break;
      if (!waited) log(`  (waiting for other processes to go quiet: ${other.toFixed(2)} cores busy)`);
      waited = true;
    }
  };

  const pooledTtfb = new Map<TargetId, Samples>(targets.map((t) => [t.id, new Samples()]));
  const pooledDelay = new Map<TargetId, Samples>(targets.map((t) => [t.id, new Samples()]));
  const pooledLater = new Map<TargetId, Samples>(targets.map((t) => [t.id, new Samples()]));
  const measured: Measured[] = [];
  const segments: Segment[] = [];
  const us = (v: number): string => (Number.isNaN(v) ? 'n/a' : int(v * 1000));

  /** Runs `schedule` (one request each, in order) after a pause; records each target's share. */
  const runSegment = async (round: number, schedule: readonly Target[]): Promise<void> => {
    await settle();
    const inSegment = targets.filter((t) => schedule.includes(t));
    const per = new Map(inSegment.map((t) => [t.id, { ttfb: new Samples(), delay: new Samples(), failures: [] as string[], requests: 0, cpuUs: 0, gc: 0, gcMs: 0 }]));
    const u0 = await upstream.ask<UpstreamStats>('stats');
    const c0 = snapshot([...names.keys()]);
    for (const t of schedule) {
      const mine = per.get(t.id) as NonNullable<ReturnType<typeof per.get>>;
      // The CPU time and garbage collections of the target's Valet, read right before and right after its request.
      const valet = valets.get(t.id);
      const v0 = await valet?.ask<ServerStats>('stats');
      const r = await stream(t, [mine.ttfb, pooledTtfb.get(t.id) as Samples], [mine.delay, pooledDelay.get(t.id) as Samples], [pooledLater.get(t.id) as Samples]);
      const v1 = await valet?.ask<ServerStats>('stats');
      if (v0 !== undefined && v1 !== undefined) {
        mine.cpuUs += v1.cpuUs - (v0.cpuUsEnd ?? v0.cpuUs);
        mine.gc += (v1.gcCount ?? 0) - (v0.gcCount ?? 0);
        mine.gcMs += (v1.gcMs ?? 0) - (v0.gcMs ?? 0);
      }
      mine.requests++;
      const bad = check(t, r);
      if (bad !== undefined) mine.failures.push(bad);
    }
    const c1 = snapshot([...names.keys()]);
    const u1 = await upstream.ask<UpstreamStats>('stats');
    const other = usageBetween(c0, c1, names).other;
    segments.push({
      round,
      requests: schedule.length,
      upstreamRequests: u1.requests - u0.requests,
      upstreamWithUsage: u1.withUsage - u0.withUsage,
      expectedWithUsage: schedule.filter((t) => t.upstreamUsage).length,
      upstreamCpuUsPerRequest: (u1.cpuUs - u0.cpuUs) / schedule.length,
      other,
    });
    for (const t of inSegment) {
      const mine = per.get(t.id) as NonNullable<ReturnType<typeof per.get>>;
      const m: Measured = {
        target: t.id,
        round,
        requests: mine.requests,
        failures: mine.failures,
        ttfb: mine.ttfb.stats(),
        delay: mine.delay.stats(),
        valetCpuUsPerRequest: valets.has(t.id) ? mine.cpuUs / mine.requests : Number.NaN,
        gcPerRequest: valets.has(t.id) ? mine.gc / mine.requests : Number.NaN,
        gcMsPerRequest: valets.has(t.id) ? mine.gcMs / mine.requests : Number.NaN,
        other,
      };
      measured.push(m);
      log(
        `${t.label.padEnd(24)} TTFB p50 ${ms(m.ttfb.p50)} p99 ${ms(m.ttfb.p99)} ms; per event p50 ${us(m.delay.p50)} p99 ${us(m.delay.p99)} p99.9 ${us(m.delay.p999)} max ${us(m.delay.max)} µs ` +
          `(${int(m.delay.count)} events)${Number.isNaN(m.valetCpuUsPerRequest) ? '' : `; Valet CPU ${int(m.valetCpuUsPerRequest)} µs/request`}` +
          (m.failures.length > 0 ? `\n    FAILURES ${m.failures.length}: ${m.failures.slice(0, 3).join(' | ')}` : ''),
      );
    }
    log(`  ${schedule.length} requests; other processes ${other.toFixed(2)} cores${other >= QUIET_CORES ? ' NOISY' : ''}`);
  };

  const rotated = (k: number): Target[] => targets.map((_, i) => targets[(i + k) % targets.length] as Target);
  for (let round = 1; round <= opts.rounds; round++) {
    if (opts.interleave === 'request') {
      // Target after target, request by request; the order rotates with every pass, so no target always follows the same one.
      log(`\n## round ${round}/${opts.rounds}: ${opts.requests} passes over ${targets.map((t) => t.id).join(', ')} (order rotated each pass)`);
      await runSegment(round, Array.from({ length: opts.requests }, (_, i) => rotated(round - 1 + i)).flat());
    } else {
      // Each target's requests in a row; the order of the targets rotates from round to round.
      const order = rotated(round - 1);
      log(`\n## round ${round}/${opts.rounds}: ${order.map((t) => t.id).join(', ')}`);
      for (const t of order) await runSegment(round, Array.from({ length: opts.requests }, () => t));
    }
  }

  // ---- what each Valet metered in all (a call's usage is counted as its relay ends), then shut down
  await sleep(500);
  const meteredInAll = new Map<TargetId, Record<string, number>>();
  for (const [id, v] of valets) meteredInAll.set(id, (await v.ask<ServerStats>('stats')).metered ?? {});
  const stopped = await run.cleanup();

  // ---- validity
  const problems: string[] = [];
  const warnings: string[] = [];
  for (const m of measured) {
    const where = `${LABELS[m.target]} (round ${m.round})`;
    if (m.failures.length > 0) problems.push(`${where}: ${m.failures.length} bad streams, e.g. ${m.failures[0]}`);
    if (m.delay.count !== m.requests * opts.events) problems.push(`${where}: ${m.delay.count} events timed, expected ${m.requests * opts.events}`);
  }
  for (const g of segments) {
    if (g.upstreamRequests !== g.requests) problems.push(`round ${g.round}: the upstream saw ${g.upstreamRequests} requests for ${g.requests}`);
    if (g.upstreamWithUsage !== g.expectedWithUsage) problems.push(`round ${g.round}: ${g.upstreamWithUsage} requests reached the upstream asking for usage, expected ${g.expectedWithUsage}`);
    if (g.other >= QUIET_CORES) warnings.push(`round ${g.round}, ${g.requests} requests: other processes used ${g.other.toFixed(2)} cores`);
  }
  const up = stopped['upstream'] as { unauthorized?: number; aborted?: number; bad?: number } | undefined;
  if ((up?.unauthorized ?? 0) > 0) problems.push(`the upstream saw ${up?.unauthorized} request(s) without its key`);
  if ((up?.bad ?? 0) > 0 || (up?.aborted ?? 0) > 0) problems.push(`the upstream refused ${up?.bad} request(s) and saw ${up?.aborted} stream(s) left before the end`);
  for (const [id, v] of valets) {
    const rows = (stopped[v.name] as { auditRows?: { n: number; ok: number; metered: number } } | undefined)?.auditRows;
    const calls = 1 + opts.warmup + opts.rounds * opts.requests;
    const tokens = meteredInAll.get(id) ?? {};
    const output = tokens['output'] ?? 0;
    const input = tokens['input'] ?? 0;
    if (id === 'off' && output + input !== 0) problems.push(`${LABELS[id]}: metered ${output + input} tokens with metering off`);
    if (id !== 'off' && (output !== calls * opts.events || input !== calls * PROMPT_TOKENS)) {
      problems.push(`${LABELS[id]}: metered ${output} output and ${input} input tokens; the upstream reported ${calls * opts.events} and ${calls * PROMPT_TOKENS}`);
    }
    if (rows === undefined || rows.ok !== calls) problems.push(`${LABELS[id]}: ${rows?.ok ?? 'no'} audit rows with status 200 for ${calls} calls`);
    else if (rows.metered !== (id === 'off' ? 0 : calls)) problems.push(`${LABELS[id]}: ${rows.metered} audit rows with tokens for ${calls} calls`);
  }

  // ---- report
  const ttfbOf = (id: TargetId): LatencyStats => (pooledTtfb.get(id) as Samples).stats();
  const delayOf = (id: TargetId): LatencyStats => (pooledDelay.get(id) as Samples).stats();
  const laterOf = (id: TargetId): LatencyStats => (pooledLater.get(id) as Samples).stats();
  const rowsOf = (id: TargetId): Measured[] => measured.filter((m) => m.target === id);
  const signed = (v: number, scale: number, digits = 0): string =>
    Number.isNaN(v) ? 'n/a' : `${v >= 0 ? '+' : '−'}${digits === 0 ? int(Math.abs(v * scale)) : Math.abs(v * scale).toFixed(digits)}`;
  const has = (id: TargetId): boolean => targetIds.includes(id);
  /** Mean over every request: each round weighted by its requests. */
  const mean = (rows: readonly Measured[], f: (m: Measured) => number): number =>
    rows.reduce((a, m) => a + f(m) * m.requests, 0) / Math.max(1, rows.reduce((a, m) => a + m.requests, 0));

  log(`\n## Per target — ${opts.rounds} rounds × ${opts.requests} requests × ${opts.events} events, percentiles over all of them\n`);
  log(
    markdownTable(
      ['target', 'requests', 'events', 'TTFB p50 ms', 'TTFB p99 ms', 'TTFB p99.9 ms', 'event p50 µs', 'event p90 µs', 'event p99 µs', 'event p99.9 µs', 'event max µs', 'p99 µs, events 2–N', 'Valet CPU µs/request', 'Valet GCs/request', 'GC ms/request'],
      targetIds.map((id) => {
        const tt = ttfbOf(id);
        const d = delayOf(id);
        return [
          LABELS[id],
          int(tt.count),
          int(d.count),
          ms(tt.p50),
          ms(tt.p99),
          ms(tt.p999),
          us(d.p50),
          us(d.p90),
          us(d.p99),
          us(d.p999),
          us(d.max),
          us(laterOf(id).p99),
          !valets.has(id) ? '—' : int(median(rowsOf(id).map((m) => m.valetCpuUsPerRequest))),
          !valets.has(id) ? '—' : mean(rowsOf(id), (m) => m.gcPerRequest).toFixed(1),
          !valets.has(id) ? '—' : mean(rowsOf(id), (m) => m.gcMsPerRequest).toFixed(2),
        ];
      }),
    ),
  );
  log(
    `\nevent: arrival at the client minus the upstream's stamp when it wrote the event (one monotonic clock). Valet CPU: the target's Valet process,\n` +
      `all threads, from just before to just after each request (what its timers did meanwhile included), median of the rounds; GCs: its main thread's\n` +
      `garbage collections in the same windows, mean per request, and their total pause. The upstream used ${int(median(segments.map((g) => g.upstreamCpuUsPerRequest)))} µs per request. ` +
      `TTFB p99.9 over ${opts.rounds * opts.requests} requests is their maximum or close to it.`,
  );

  let goal: boolean | undefined;
  let goalLater: boolean | undefined;
  let goalRounds: boolean | undefined;
  const deltas: string[][] = [];
  for (const id of ['on', 'budget'] as const) {
    if (!has(id) || !has('off')) continue;
    const on = delayOf(id);
    const off = delayOf('off');
    const roundDiffs = (f: (s: LatencyStats) => number): number[] =>
      measured
        .filter((m) => m.target === id)
        .map((m) => f(m.delay) - f((measured.find((x) => x.target === 'off' && x.round === m.round) as Measured).delay));
    const perRound = (f: (s: LatencyStats) => number): string => roundDiffs(f).map((d) => signed(d, 1000)).join(' / ');
    const cpuOn = median(rowsOf(id).map((m) => m.valetCpuUsPerRequest));
    const cpuOff = median(rowsOf('off').map((m) => m.valetCpuUsPerRequest));
    deltas.push([
      `${id} − off`,
      int(on.count),
      signed(on.p50 - off.p50, 1000),
      signed(on.p90 - off.p90, 1000),
      signed(on.p99 - off.p99, 1000),
      signed(on.p999 - off.p999, 1000),
      signed(laterOf(id).p99 - laterOf('off').p99, 1000),
      perRound((s) => s.p50),
      perRound((s) => s.p99),
      signed(median(roundDiffs((s) => s.p99)), 1000),
      signed(ttfbOf(id).p50 - ttfbOf('off').p50, 1, 2),
      signed(ttfbOf(id).p99 - ttfbOf('off').p99, 1, 2),
      signed((cpuOn - cpuOff) / opts.events, 1, 1),
    ]);
    if (id === 'on') {
      goal = on.p99 - off.p99 <= GOAL_P99_MS;
      goalLater = laterOf(id).p99 - laterOf('off').p99 <= GOAL_P99_MS;
      goalRounds = median(roundDiffs((x) => x.p99)) <= GOAL_P99_MS;
    }
  }
  // Valet against no proxy and against the least a proxy hop costs.
  for (const [a, b] of [['off', 'direct'], ['bare', 'direct'], ['off', 'bare']] as const) {
    if (!has(a) || !has(b)) continue;
    const v = delayOf(a);
    const d = delayOf(b);
    deltas.push([
      `${a} − ${b}`,
      int(v.count),
      signed(v.p50 - d.p50, 1000),
      signed(v.p90 - d.p90, 1000),
      signed(v.p99 - d.p99, 1000),
      signed(v.p999 - d.p999, 1000),
      signed(laterOf(a).p99 - laterOf(b).p99, 1000),
      '',
      '',
      '',
      signed(ttfbOf(a).p50 - ttfbOf(b).p50, 1, 2),
      signed(ttfbOf(a).p99 - ttfbOf(b).p99, 1, 2),
      '',
    ]);
  }
  if (deltas.length > 0) {
    log(`\n## What metering adds — per event and to TTFB\n`);
    log(
      markdownTable(
        ['difference', 'events', 'event p50 µs', 'event p90 µs', 'event p99 µs', 'event p99.9 µs', 'p99 µs, events 2–N', 'p50 per round µs', 'p99 per round µs', 'p99, median of rounds', 'TTFB p50 ms', 'TTFB p99 ms', 'Valet CPU µs/event'],
        deltas,
      ),
    );
    log(
      `\nevents 2–N: every event but each stream's first, which comes with the response's start (its head, and the meter set up). ` +
        `Valet CPU µs/event: the difference in Valet's CPU per request (medians of the rounds) over ${opts.events} events, the request's reading and pricing included.`,
    );
  }
  if (goal !== undefined) {
    log(
      `\ngoal: metering adds ≤ ${GOAL_P99_MS * 1000} µs per event at p99 — all events pooled: ${goal ? 'met' : 'NOT MET'}; ` +
        `the events after each stream's first: ${goalLater === true ? 'met' : 'NOT MET'}; the median of the rounds' differences: ${goalRounds === true ? 'met' : 'NOT MET'}` +
        `${warnings.length > 0 && (goal || goalLater === true || goalRounds === true) ? ' (in a run with warnings below)' : ''}`,
    );
  }

  if (problems.length > 0) {
    log('\nINVALID RUN — failures were observed, the figures above are not trustworthy:');
    for (const p of problems) log(`- ${p}`);
  } else {
    log(
      '\nvalidity: every stream had every event in order and [DONE]; usage chunks reached the client only when it asked; every metered request reached the upstream asking for usage; ' +
        'Valet metered exactly the tokens reported, and nothing with metering off; every call has an audit row; the upstream never saw a request without its key',
    );
  }
  if (warnings.length > 0) {
    log('\nwarnings (figures may be disturbed):');
    for (const w of warnings) log(`- ${w}`);
  }
  if (profileDir !== undefined) {
    for (const id of valets.keys()) {
      const files = existsSync(join(profileDir, id)) ? mainThreadProfiles(join(profileDir, id)) : [];
      if (files.length === 0) log(`\n(no main-thread .cpuprofile was written to ${join(profileDir, id)})`);
      for (const f of files) {
        log(`\n## CPU profile of ${LABELS[id]}'s main thread, per request (${opts.events} events each): ${f}\n`);
        log('```');
        log(formatSummary(summariseProfile(f, 1 + opts.warmup + opts.rounds * opts.requests), 25));
        log('```');
      }
    }
  }
  log(`\nload average at the end ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (flags.json) {
    const pooled = Object.fromEntries(targetIds.map((id) => [id, { ttfb: ttfbOf(id), delay: delayOf(id), afterFirst: laterOf(id) }]));
    writeFileSync(flags.json, `${JSON.stringify({ machine: { cpus: MACHINE_CPUS, cpu, node: process.version }, opts, pinned, measured, pooled, problems, warnings }, null, 2)}\n`);
  }
  if (problems.length > 0) return 1;
  return flags.strict && goal === false ? 1 : 0;
}

run.finish(main);
