/**
 * The two load shapes the benchmark applies to a target.
 *
 * - `maxThroughput`: autocannon, closed loop — N connections, each sending its next request as soon
 *   as the previous response is complete. Measures the most requests per second the target
 *   sustains, and latency under saturation.
 * - `fixedRate`: an open-loop generator — requests are started on a fixed schedule (e.g. one every
 *   millisecond for 1,000 req/s) whether or not earlier ones have finished, over a keep-alive pool
 *   large enough that a slow response never holds the next request back. Measures latency at a
 *   load well below saturation.
 *
 * Latencies are taken per response with sub-millisecond resolution (autocannon's own histogram
 * records whole milliseconds, too coarse for a 2 ms budget).
 */
import { performance } from 'node:perf_hooks';
import autocannon from 'autocannon';
import { Pool } from 'undici';
import { Samples, type LatencyStats } from './stats.js';

export interface Workload {
  /** Full URL requests are sent to. */
  url: string;
  body: string;
  headers: Record<string, string>;
}

/** A chat-style JSON request body serialising to exactly `size` bytes (the benchmarks' workload). */
export function jsonBody(size: number): string {
  const base = { model: 'bench-model', temperature: 0.2, messages: [{ role: 'user', content: '' }] };
  const empty = JSON.stringify(base).length;
  const first = base.messages[0] as { content: string };
  first.content = 'x'.repeat(Math.max(0, size - empty));
  const s = JSON.stringify(base);
  if (Buffer.byteLength(s) !== size) throw new Error(`body is ${Buffer.byteLength(s)} bytes, wanted ${size}`);
  return s;
}

export interface RunResult {
  /** Responses with a 2xx status (only these count as throughput and latency samples). */
  ok: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  statusCodes: Record<string, number>;
  durationS: number;
  /** 2xx responses per second. */
  rps: number;
  latency: LatencyStats;
}

export interface FixedRateResult extends RunResult {
  /** Requests the schedule called for, and how late (ms) the generator started them. */
  scheduled: number;
  lagP99: number;
  lagMax: number;
  /**
   * The latency of the requests started after the run's first second: apart from `latency`, so a
   * tail that only a target's first second after a pause carries (new connections, caches and a
   * CPU another process just used) is told from one that lasts.
   */
  latencyAfterFirstSecond: LatencyStats;
}

/**
 * Closed-loop saturation run with autocannon. Given several workloads (one per instance of a
 * fleet), one autocannon per workload runs at the same time with the connections split evenly
 * between them, and the counts and latency samples are pooled.
 */
export async function maxThroughput(w: Workload | readonly Workload[], o: { connections: number; seconds: number }): Promise<RunResult> {
  const targets = Array.isArray(w) ? (w as readonly Workload[]) : [w as Workload];
  const samples = new Samples();
  const runs = targets.map((t, i) => {
    const instance = autocannon({
      url: t.url,
      method: 'POST',
      body: t.body,
      headers: t.headers,
      // Remainder connections go to the first targets, so the total is exactly `connections`.
      connections: Math.max(1, Math.floor(o.connections / targets.length) + (i < o.connections % targets.length ? 1 : 0)),
      pipelining: 1,
      duration: o.seconds,
      timeout: 10,
    });
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) samples.push(responseTime);
    });
    return instance;
  });
  const results = await Promise.all(runs);
  const statusCodes: Record<string, number> = {};
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  let durationS = 0;
  for (const r of results) {
    for (const [code, { count }] of Object.entries(r.statusCodeStats)) statusCodes[code] = (statusCodes[code] ?? 0) + count;
    ok += r['2xx'];
    non2xx += r.non2xx;
    errors += r.errors;
    timeouts += r.timeouts;
    durationS = Math.max(durationS, r.duration);
  }
  return { ok, non2xx, errors, timeouts, statusCodes, durationS, rps: ok / durationS, latency: samples.stats() };
}

/**
 * Open-loop run at `rate` requests per second for `seconds`. Each request's latency runs from the
 * moment the generator hands it to the client pool (so time spent queued for a connection counts)
 * to the last byte of the response body.
 */
export async function fixedRate(w: Workload | readonly Workload[], o: { rate: number; seconds: number; connections: number }): Promise<FixedRateResult> {
  const targets = (Array.isArray(w) ? (w as readonly Workload[]) : [w as Workload]).map((t) => {
    const url = new URL(t.url);
    return {
      path: `${url.pathname}${url.search}`,
      headers: t.headers,
      body: Buffer.from(t.body),
      pool: new Pool(url.origin, { connections: o.connections, pipelining: 1, keepAliveTimeout: 30_000 }),
    };
  });
  const total = Math.max(1, Math.round(o.rate * o.seconds));
  const interval = 1000 / o.rate;
  const latencies = new Samples();
  const afterFirstSecond = new Samples();
  const lags = new Samples();
  const statusCodes: Record<string, number> = {};
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  let inFlight = 0;
  let drained: (() => void) | undefined;

  const fire = (n: number): void => {
    // Round-robin over the targets, as a load balancer in front of a fleet would.
    const { pool, path, headers, body } = targets[n % targets.length] as (typeof targets)[number];
    const t0 = performance.now();
    inFlight++;
    pool
      .request({ method: 'POST', path, headers, body, headersTimeout: 10_000, bodyTimeout: 10_000 })
      .then(async (res) => {
        await res.body.text();
        const dt = performance.now() - t0;
        statusCodes[res.statusCode] = (statusCodes[res.statusCode] ?? 0) + 1;
        if (res.statusCode >= 200 && res.statusCode < 300) {
          ok++;
          latencies.push(dt);
          if (n >= o.rate) afterFirstSecond.push(dt);
        } else {
          non2xx++;
        }
      })
      .catch((err: { code?: string }) => {
        errors++;
        if (err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') timeouts++;
      })
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
    await Promise.race([
      new Promise<void>((r) => {
        drained = r;
      }),
      new Promise<void>((r) => setTimeout(r, 15_000).unref()),
    ]);
  }
  const durationS = (performance.now() - start) / 1000;
  await Promise.all(targets.map((t) => t.pool.destroy()));
  const lag = lags.stats();
  return {
    ok,
    non2xx,
    errors: errors + inFlight,
    timeouts,
    statusCodes,
    durationS,
    rps: ok / durationS,
    latency: latencies.stats(),
    latencyAfterFirstSecond: afterFirstSecond.stats(),
    scheduled: total,
    lagP99: lag.p99,
    lagMax: lag.max,
  };
}
