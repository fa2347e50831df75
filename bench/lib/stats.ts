import type { Metric } from 'prom-client';

/** Exact latency statistics from raw samples (milliseconds, sub-millisecond resolution). */
export interface LatencyStats {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** Nearest-rank percentiles over every sample (no histogram bucketing). */
export function latencyStats(samples: ArrayLike<number>, count = samples.length): LatencyStats {
  const sorted = Float64Array.from({ length: count }, (_, i) => samples[i] as number).sort();
  const at = (q: number): number => (count === 0 ? Number.NaN : (sorted[Math.min(count - 1, Math.max(0, Math.ceil(q * count) - 1))] as number));
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count,
    mean: count === 0 ? Number.NaN : sum / count,
    p50: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    p999: at(0.999),
    max: count === 0 ? Number.NaN : (sorted[count - 1] as number),
  };
}

export function median(values: readonly number[]): number {
  const s = [...values].filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

/** A growable Float64 buffer, so hundreds of thousands of samples cost no per-sample allocation. */
export class Samples {
  private buf = new Float64Array(1 << 16);
  length = 0;
  push(v: number): void {
    if (this.length === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.length++] = v;
  }
  stats(): LatencyStats {
    return latencyStats(this.buf, this.length);
  }
}

/** A Prometheus histogram as read from prom-client: cumulative counts per upper bound (`le`, seconds). */
export interface BucketCounts {
  le: number[];
  cumulative: number[];
  count: number;
}

export async function readHistogram(metric: Metric | undefined): Promise<BucketCounts> {
  const h: BucketCounts = { le: [], cumulative: [], count: 0 };
  // Histogram samples carry their series name (`_bucket`, `_sum`, `_count`); prom-client's type omits it.
  for (const v of ((await metric?.get())?.values ?? []) as { metricName?: string; labels: Record<string, string | number | undefined>; value: number }[]) {
    if (v.metricName?.endsWith('_bucket') && v.labels['le'] !== '+Inf') {
      h.le.push(Number(v.labels['le']));
      h.cumulative.push(v.value);
    } else if (v.metricName?.endsWith('_count')) h.count = v.value;
  }
  return h;
}

/**
 * The q-quantile of what a histogram counted between two reads, as the upper bound (ms) of the
 * bucket it falls in: "p99 ≤ 5 ms". Infinity past the last bound, NaN when nothing was counted.
 */
export function bucketQuantile(before: BucketCounts, after: BucketCounts, q: number): number {
  const n = after.count - before.count;
  if (n <= 0) return Number.NaN;
  for (let i = 0; i < after.le.length; i++) {
    if ((after.cumulative[i] as number) - (before.cumulative[i] ?? 0) >= q * n) return (after.le[i] as number) * 1000;
  }
  return Number.POSITIVE_INFINITY;
}

export const ms = (v: number, digits = 2): string => (Number.isNaN(v) ? 'n/a' : v.toFixed(digits));
export const int = (v: number): string => (Number.isNaN(v) ? 'n/a' : Math.round(v).toLocaleString('en-US'));

/** Renders a GitHub-flavoured Markdown table; the first column is left-aligned, the rest right. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, 3, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] as number) : c.padStart(widths[i] as number))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (i === 0 ? ` ${'-'.repeat(w)} ` : ` ${'-'.repeat(w - 1)}: `)).join('|')}|`;
  return [line(header), sep, ...rows.map(line)].join('\n');
}
