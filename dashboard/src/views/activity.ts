import { poll, type View } from '../context.js';
import { empty, fill, h, time } from '../dom.js';
import { legend, stackedBars, type Bucket, type Series } from '../chart.js';

interface Stats {
  since_ms: number;
  until_ms: number;
  bucket_ms: number;
  totals: Record<string, number>;
  buckets: Bucket[];
}

interface Agent {
  agent: string;
  tenant: string | null;
  last_seen: string;
  requests: number;
  decisions: { allow: number; deny: number; escalate: number; none: number };
  errors: number;
}

const SERIES: readonly Series[] = [
  { key: 'allow', label: 'Allowed' },
  { key: 'escalate', label: 'Escalated' },
  { key: 'deny', label: 'Denied' },
  { key: 'none', label: 'Refused before policy' },
];

const RANGES: readonly { label: string; span: number; bucket: number }[] = [
  { label: '1 h', span: 3_600_000, bucket: 60_000 },
  { label: '24 h', span: 86_400_000, bucket: 30 * 60_000 },
  { label: '7 d', span: 7 * 86_400_000, bucket: 4 * 3_600_000 },
];

/** Requests over time by decision (inline SVG), and every agent seen with its counts. Refreshes every 10 s. */
export const activityView: View = {
  id: 'activity',
  title: 'Agents & activity',
  permission: 'audit.read',
  mount(ctx, el) {
    let range = RANGES[1] as (typeof RANGES)[number];
    const chart = h('div', { class: 'chart-wrap', id: 'activity-chart' });
    const agents = h('div', { class: 'table-wrap', id: 'agent-list' });
    const buttons = h('div', { class: 'range' });
    const renderButtons = (): void =>
      fill(
        buttons,
        RANGES.map((r) =>
          h(
            'button',
            {
              type: 'button',
              class: r === range ? 'chip active' : 'chip',
              on: {
                click: () => {
                  range = r;
                  renderButtons();
                  void refresh();
                },
              },
            },
            r.label,
          ),
        ),
      );
    const refresh = async (): Promise<void> => {
      // Buckets aligned to their size, so bars do not shift on each refresh.
      const until = Math.ceil(Date.now() / range.bucket) * range.bucket;
      const since = until - range.span;
      try {
        const [stats, seen] = await Promise.all([
          ctx.api.get<Stats>('/api/stats', { since_ms: since, until_ms: until, bucket_ms: range.bucket }),
          ctx.api.get<{ agents: Agent[] }>('/api/agents', { since_ms: since }),
        ]);
        fill(chart, legend(SERIES, stats.totals), stackedBars(stats.buckets, SERIES, stats.bucket_ms));
        fill(
          agents,
          seen.agents.length === 0
            ? empty('No agent has made a request in this period.')
            : h(
                'table',
                { class: 'rows' },
                h('thead', null, h('tr', null, ['Agent', 'Tenant', 'Last seen', 'Requests', 'Allowed', 'Escalated', 'Denied', 'Other', '5xx'].map((c) => h('th', null, c)))),
                h(
                  'tbody',
                  null,
                  seen.agents.map((a) =>
                    h(
                      'tr',
                      { 'data-agent': a.agent },
                      h('td', null, h('a', { href: `#/audit?${new URLSearchParams({ agent: a.agent, ...(a.tenant !== null && ctx.who.tenant === null && { tenant: a.tenant }) }).toString()}`, title: 'Show its audit rows' }, a.agent)),
                      h('td', null, a.tenant ?? '—'),
                      h('td', null, time(a.last_seen, true)),
                      h('td', { class: 'num' }, String(a.requests)),
                      h('td', { class: 'num' }, String(a.decisions.allow)),
                      h('td', { class: 'num' }, String(a.decisions.escalate)),
                      h('td', { class: 'num' }, String(a.decisions.deny)),
                      h('td', { class: 'num' }, String(a.decisions.none)),
                      h('td', { class: 'num' }, String(a.errors)),
                    ),
                  ),
                ),
              ),
        );
      } catch (err) {
        fill(chart, h('p', { class: 'error' }, (err as Error).message));
      }
    };
    renderButtons();
    fill(
      el,
      h('div', { class: 'view-head' }, h('h2', null, 'Agents & activity'), buttons),
      h('section', { class: 'card' }, h('h3', null, 'Requests by decision'), chart),
      h('section', { class: 'card' }, h('h3', null, 'Agents seen'), agents),
    );
    return poll(10_000, refresh);
  },
};
