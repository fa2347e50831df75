import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { BoundCounter, BoundHistogram } from '../../gateway/admin/bound-metrics.js';

/** The same observations through prom-client's own metrics, in a registry of their own: the text must match. */
function both(): { mine: Registry; theirs: Registry } {
  return { mine: new Registry(), theirs: new Registry() };
}

describe('bound metrics', () => {
  it('write exactly what prom-client writes for the same counts and observations', async () => {
    const { mine, theirs } = both();
    const buckets = [0.001, 0.005, 0.01, 0.1, 1];
    const h = new BoundHistogram('t_seconds', 'A histogram.', ['upstream', 'decision'], buckets, mine);
    const ph = new Histogram({ name: 't_seconds', help: 'A histogram.', labelNames: ['upstream', 'decision'], buckets, registers: [theirs] });
    const c = new BoundCounter('t_total', 'A counter.', ['upstream', 'status'], mine);
    const pc = new Counter({ name: 't_total', help: 'A counter.', labelNames: ['upstream', 'status'], registers: [theirs] });
    // Values on, between, below and above the bounds, in two series each.
    const values = [0, 0.001, 0.0010001, 0.004, 0.005, 0.05, 0.1, 0.99, 1, 1.5, 30];
    for (const [i, v] of values.entries()) {
      const labels = { upstream: i % 2 === 0 ? 'a' : 'b', decision: 'allow' };
      h.series(labels).observe(v);
      ph.observe(labels, v);
      c.series({ upstream: labels.upstream, status: String(200 + (i % 3)) }).inc();
      pc.inc({ upstream: labels.upstream, status: String(200 + (i % 3)) });
    }
    expect(await mine.metrics()).toBe(await theirs.metrics());
  });

  it('keep one series per label set, and count nothing that is not a finite number', async () => {
    const { mine } = both();
    const h = new BoundHistogram('u_seconds', 'U.', ['x'], [1], mine);
    expect(h.series({ x: 'a' })).toBe(h.series({ x: 'a' }));
    h.series({ x: 'a' }).observe(Number.NaN);
    h.series({ x: 'a' }).observe(Number.POSITIVE_INFINITY);
    h.series({ x: 'a' }).observe(2);
    const text = await mine.metrics();
    expect(text).toContain('u_seconds_count{x="a"} 1');
    expect(text).toContain('u_seconds_sum{x="a"} 2');
    expect(text).toContain('u_seconds_bucket{le="1",x="a"} 0');
    expect(text).toContain('u_seconds_bucket{le="+Inf",x="a"} 1');
    mine.resetMetrics();
    expect(await mine.metrics()).not.toContain('u_seconds_count');
  });
});
