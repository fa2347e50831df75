/**
 * Valet in front of the fake OpenAI upstream of bench/llm.ts, as deployed (bench/lib/valet.ts): the
 * real composition root with an HS256 issuer, one rule allowing POST /v1/** on the upstream, the
 * SQLite audit log (decision rows durable before forwarding), response scrubbing and pino at its
 * default level writing to /dev/null. What differs is the upstream, by `mode`:
 *
 * - `off`: `plain`, an OpenAI-dialect upstream without `llm:`, so nothing is metered;
 * - `on`: `openai` from the `openai` preset (`llm: openai`): each chat request is read and priced
 *   before forwarding, `stream_options.include_usage` added when the agent did not ask for it, and
 *   the streamed answer passes through the usage meter, which withholds the extra usage chunk;
 * - `budget`: as `on`, and a usage budget (cost, per agent, a day) that every call reserves its
 *   most against before forwarding and settles to what it used afterwards.
 *
 * Run by bench/llm.ts in its own process; argv: <work dir> <upstream origin> <upstream key>
 * <off|on|budget> [log file, instead of /dev/null]. The work dir is created (and removed) by the parent.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { failChild, serveChild } from '../lib/child.js';
import { startBenchGateway } from '../lib/valet.js';

const MODES = ['off', 'on', 'budget'] as const;
type Mode = (typeof MODES)[number];

async function main(): Promise<void> {
  const [workDir, origin, key, modeArg, logFile] = process.argv.slice(2);
  const mode = modeArg as Mode;
  if (!workDir || !origin || !key || !MODES.includes(mode)) throw new Error('usage: valet-llm.ts <work dir> <upstream origin> <upstream key> <off|on|budget> [log file]');
  const name = mode === 'off' ? 'plain' : 'openai';
  const upstream =
    mode === 'off'
      ? { name, origin, dialect: 'openai', credential: { scheme: 'bearer', secret: 'VALET_BENCH_UPSTREAM_KEY' } }
      : // The preset's credential is the secret OPENAI_API_KEY.
        { name, preset: 'openai', origin };
  const files: Record<string, unknown> = {
    'upstreams.yaml': { upstreams: [upstream] },
    'rules.yaml': { rules: [{ id: 'bench-allow', upstream: name, methods: ['POST'], paths: ['/v1/**'], effect: 'allow' }] },
  };
  if (mode === 'budget') files['budgets.yaml'] = { budgets: [{ id: 'bench-cost', upstream: name, usage: 'cost', key: 'agent', window: '1d', limit: 1_000_000 }] };
  const valet = await startBenchGateway({
    workDir,
    logFile,
    files,
    env: { VALET_BENCH_UPSTREAM_KEY: key, OPENAI_API_KEY: key },
    ...(process.env['VALET_BENCH_DURABILITY'] && { gateway: { audit: { durability: process.env['VALET_BENCH_DURABILITY'] } } }),
  });
  const metric = valet.gateway.metrics.registry.getSingleMetric('valet_llm_tokens_total');
  /** Tokens metered so far, by kind (input, output...), as /metrics counts them. */
  const metered = async (): Promise<Record<string, number>> => {
    const out: Record<string, number> = {};
    for (const v of (await metric?.get())?.values ?? []) {
      const kind = String(v.labels['kind']);
      out[kind] = (out[kind] ?? 0) + v.value;
    }
    return out;
  };

  const cpuNow = (): number => {
    const u = process.cpuUsage();
    return u.user + u.system;
  };
  // Garbage-collection pauses of the main thread: what a metered stream's allocations cost at the tail.
  const gc = { count: 0, ms: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.count++;
      gc.ms += e.duration;
    }
  }).observe({ entryTypes: ['gc'] });

  serveChild(
    {
      // CPU time as the request arrives (`cpuUs`) and once the metrics are read (`cpuUsEnd`): the
      // orchestrator measures from one stats' end to the next one's start, without reading the metrics.
      stats: async () => {
        const cpuUs = cpuNow();
        const tokens = await metered();
        return { cpuUs, gcCount: gc.count, gcMs: gc.ms, metered: tokens, cpuUsEnd: cpuNow() };
      },
      onStop: async () => {
        await valet.close();
        // One row per call; the metered ones with the tokens the upstream reported.
        const rows = valet.auditQuery<{ n: number; ok: number; tokens: number | null; metered: number }>(
          'SELECT count(*) AS n, sum(status = 200) AS ok, sum(tokens) AS tokens, count(tokens) AS metered FROM audit_log WHERE upstream = ?',
          name,
        );
        return { auditRows: rows };
      },
    },
    { url: `${valet.gateway.url}/${name}`, token: valet.token, mode, upstream: name },
    // No 1 ms loop-delay sampler: it would wake this process between events.
    { loopDelay: false },
  );
}

main().catch(failChild);
