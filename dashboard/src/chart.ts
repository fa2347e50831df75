import { h, s } from './dom.js';

export interface Series {
  readonly key: string;
  readonly label: string;
}

export interface Bucket {
  readonly start_ms: number;
  readonly [key: string]: number;
}

/** How a chart writes its values; by default they are counts (whole numbers). */
export interface ChartOptions {
  /** Values are amounts (a cost): grid steps may be fractions. */
  readonly fractional?: boolean;
  /** How a value is written on the axis and in tooltips. */
  readonly format?: (v: number) => string;
  /** The chart's accessible name. */
  readonly label?: string;
}

const W = 900;
const H = 240;
const PAD = { left: 44, right: 8, top: 10, bottom: 26 };

/** A "nice" step (1, 2 or 5 × 10^k) so the four grid lines fall on round numbers; a count's is whole. */
function niceStep(n: number, fractional: boolean): number {
  if (n <= 0 || (!fractional && n <= 1)) return 1;
  const p = 10 ** Math.floor(Math.log10(n));
  const f = n / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

function label(ms: number, span: number): string {
  const d = new Date(ms);
  return span > 2 * 86_400_000 ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric', hour: '2-digit' }) : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/**
 * A stacked bar chart as inline SVG (no chart library, nothing fetched). Colours come from the
 * stylesheet by series key (`.series-allow`), so the CSP needs no inline style; each bar has a
 * `<title>` for its exact counts.
 */
export function stackedBars(buckets: readonly Bucket[], series: readonly Series[], bucketMs: number, o: ChartOptions = {}): SVGElement {
  const format = o.format ?? String;
  const step = niceStep(Math.max(0, ...buckets.map((b) => series.reduce((sum, x) => sum + (b[x.key] ?? 0), 0))) / 4, o.fractional ?? false);
  const max = step * 4;
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const bw = plotW / Math.max(1, buckets.length);
  const y = (v: number): number => PAD.top + plotH - (v / max) * plotH;
  const grid = [0, 1, 2, 3, 4].map((i) => {
    const v = i * step;
    return s('g', { class: 'grid' }, s('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }), s('text', { x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v)));
  });
  const bars = buckets.map((b, i) => {
    let acc = 0;
    const x = PAD.left + i * bw;
    const total = series.reduce((sum, x2) => sum + (b[x2.key] ?? 0), 0);
    const tip = `${new Date(b.start_ms).toLocaleString()} – ${new Date(b.start_ms + bucketMs).toLocaleTimeString()}\n${series.map((x2) => `${x2.label}: ${format(b[x2.key] ?? 0)}`).join('\n')}`;
    return s(
      'g',
      { class: 'bar' },
      s('title', {}, tip),
      // An invisible full-height target so thin bars still show their tooltip.
      s('rect', { class: 'hit', x, y: PAD.top, width: bw, height: plotH }),
      total === 0
        ? null
        : series.map((x2) => {
            const v = b[x2.key] ?? 0;
            if (v === 0) return null;
            const top = y(acc + v);
            const rect = s('rect', { class: `series-${x2.key}`, x: x + bw * 0.1, y: top, width: Math.max(1, bw * 0.8), height: y(acc) - top });
            acc += v;
            return rect;
          }),
    );
  });
  const span = buckets.length * bucketMs;
  const last = buckets.length - 1;
  const ticks =
    buckets.length === 0
      ? []
      : [0, Math.floor(buckets.length / 2), last].map((i) =>
          s('text', { class: 'axis', x: PAD.left + (i === last ? i + 1 : i) * bw, y: H - 8, 'text-anchor': i === 0 ? 'start' : i === last ? 'end' : 'middle' }, label(i === last ? (buckets[i] as Bucket).start_ms + bucketMs : (buckets[i] as Bucket).start_ms, span)),
        );
  return s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${o.label ?? 'Requests by decision'}, ${buckets.length} buckets` }, grid, bars, ticks);
}

export function legend(series: readonly Series[], totals: Record<string, number>, format: (v: number) => string = String): HTMLElement {
  return h(
    'ul',
    { class: 'legend' },
    series.map((x) => h('li', { 'data-series': x.key }, h('span', { class: `swatch series-${x.key}` }), `${x.label}: `, h('strong', null, format(totals[x.key] ?? 0)))),
  );
}
