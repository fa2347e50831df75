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
}

/** Closed-loop saturation run with autocannon. */
export async function maxThroughput(w: Workload, o: { connections: number; seconds: number }): Promise<RunResult> {
  const samples = new Samples();
  const instance = autocannon({
    url: w.url,
    method: 'POST',
    body: w.body,
    headers: w.headers,
    connections: o.connections,
    pipelining: 1,
    duration: o.seconds,
    timeout: 10,
  });
  instance.on('response', (_client, statusCode, _bytes, responseTime) => {
    if (statusCode >= 200 && statusCode < 300) samples.push(responseTime);
  });
  const r = await instance;
  const statusCodes: Record<string, number> = {};
  for (const [code, { count }] of Object.entries(r.statusCodeStats)) statusCodes[code] = count;
  return {
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    statusCodes,
    durationS: r.duration,
    rps: r['2xx'] / r.duration,
    latency: samples.stats(),
  };
}

/**
 * Open-loop run at `rate` requests per second for `seconds`. Each request's latency runs from the
 * moment the generator hands it to the client pool (so time spent queued for a connection counts)
 * to the last byte of the response body.
 */
export async function fixedRate(w: Workload, o: { rate: number; seconds: number; connections: number }): Promise<FixedRateResult> {
  const url = new URL(w.url);
  const path = `${url.pathname}${url.search}`;
  const pool = new Pool(url.origin, { connections: o.connections, pipelining: 1, keepAliveTimeout: 30_000 });
  const body = Buffer.from(w.body);
  const total = Math.max(1, Math.round(o.rate * o.seconds));
  const interval = 1000 / o.rate;
  const latencies = new Samples();
  const lags = new Samples();
  const statusCodes: Record<string, number> = {};
  let ok = 0;
  let non2xx = 0;
  let errors = 0;
  let timeouts = 0;
  let inFlight = 0;
  let drained: (() => void) | undefined;

  const fire = (): void => {
    const t0 = performance.now();
    inFlight++;
    pool
      .request({ method: 'POST', path, headers: w.headers, body, headersTimeout: 10_000, bodyTimeout: 10_000 })
      .then(async (res) => {
        await res.body.text();
        const dt = performance.now() - t0;
        statusCodes[res.statusCode] = (statusCodes[res.statusCode] ?? 0) + 1;
        if (res.statusCode >= 200 && res.statusCode < 300) {
          ok++;
          latencies.push(dt);
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
        fire();
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
  await pool.destroy();
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
    scheduled: total,
    lagP99: lag.p99,
    lagMax: lag.max,
  };
}
