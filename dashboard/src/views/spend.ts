import { legend, stackedBars, type Series } from '../chart.js';
import { poll, type View } from '../context.js';
import { empty, fill, h, time } from '../dom.js';

/** A group's metered calls (`GET /api/usage`). */
interface SpendRow {
  key: string | null;
  /** Present when grouped by agent, team or user (their ids are a tenant's own). */
  tenant?: string | null;
  start_ms?: number;
  calls: number;
  tokens: number;
  cost: number;
  input: number;
  cached: number;
  cache_write: number;
  output: number;
  reasoning: number;
}

interface Usage {
  currency: string;
  rows: SpendRow[];
  truncated: boolean;
}

/** A usage budget with its counters over its window (`GET /api/budgets`). */
interface Budget {
  id: string;
  usage: 'tokens' | 'cost';
  key: string;
  window_s: number;
  limit: number;
  since_ms: number;
  per_counter: boolean;
  approximate: boolean;
  counters: { key: string | null; tenant: string | null; used: number; percent: number | null }[];
}

type By = 'agent' | 'team' | 'model';
type Metric = 'cost' | 'tokens';

const METRICS: readonly { value: Metric; label: string }[] = [
  { value: 'cost', label: 'Cost' },
  { value: 'tokens', label: 'Tokens' },
];

const GROUPINGS: readonly { by: By; label: string }[] = [
  { by: 'agent', label: 'Agent' },
  { by: 'team', label: 'Team' },
  { by: 'model', label: 'Model' },
];

const RANGES: readonly { label: string; span: number; bucket: number }[] = [
  { label: '24 h', span: 86_400_000, bucket: 3_600_000 },
  { label: '7 d', span: 7 * 86_400_000, bucket: 6 * 3_600_000 },
  { label: '30 d', span: 30 * 86_400_000, bucket: 86_400_000 },
];

/** Groups drawn in colours of their own (`.series-s0`…); the rest are stacked as one. */
const TOP = 7;
/** Counters shown per budget, the fullest first. */
const COUNTERS_SHOWN = 10;

/** The row's group as one string: the tenant is part of an agent's or team's identity for an organisation-wide admin. */
function groupOf(r: Pick<SpendRow, 'key' | 'tenant'>, by: string, withTenant: boolean): string {
  const name = r.key ?? `(no ${by})`;
  return withTenant && r.tenant !== undefined ? `${name} · ${r.tenant ?? 'no tenant'}` : name;
}

/** An amount of money: cents, or up to six decimals below 1 (one LLM call often costs a fraction of a cent). */
function amountText(v: number): string {
  return v.toLocaleString(undefined, { minimumFractionDigits: v === 0 ? 0 : 2, maximumFractionDigits: v !== 0 && Math.abs(v) < 1 ? 6 : 2 });
}

const cost = (v: number, currency: string): string => `${amountText(v)} ${currency}`;

const tokens = (v: number): string => v.toLocaleString();

/** "1 d", "6 h", "30 min", "45 s". */
function windowText(s: number): string {
  for (const [unit, size] of [['d', 86_400], ['h', 3_600], ['min', 60]] as const) if (s % size === 0) return `${s / size} ${unit}`;
  return `${s} s`;
}

/**
 * What LLM calls spent, from the audit log: cost (or tokens) over time stacked by agent, team or
 * model, a table of the groups with their tokens by kind and cost, and each usage budget's
 * counters against its limit over its window. Refreshes every 30 s.
 */
export const spendView: View = {
  id: 'spend',
  title: 'Spend',
  permission: 'audit.read',
  mount(ctx, el) {
    let range = RANGES[1] as (typeof RANGES)[number];
    let by: By = 'agent';
    let metric: Metric = 'cost';
    const withTenant = ctx.who.tenant === null;
    const chart = h('div', { class: 'chart-wrap', id: 'spend-chart' });
    const table = h('div', { class: 'table-wrap', id: 'spend-table' });
    const budgets = h('div', { id: 'budget-list' });
    const controls = h('div', { class: 'range' });

    const chips = <T>(options: readonly { value: T; label: string }[], current: T, pick: (v: T) => void, name: string): HTMLElement =>
      h(
        'div',
        { class: 'range', role: 'group', 'aria-label': name },
        options.map((o) =>
          h(
            'button',
            { type: 'button', class: o.value === current ? 'chip active' : 'chip', 'aria-pressed': o.value === current ? 'true' : 'false', 'data-choice': o.label, on: { click: () => pick(o.value) } },
            o.label,
          ),
        ),
      );
    /** Applies a choice, then redraws the controls and the data. */
    const change = (apply: () => void): void => {
      apply();
      renderControls();
      void refresh();
    };
    const renderControls = (): void =>
      fill(
        controls,
        chips(GROUPINGS.map((g) => ({ value: g.by, label: g.label })), by, (v) => change(() => (by = v)), 'Group by'),
        chips(METRICS, metric, (v) => change(() => (metric = v)), 'Measure'),
        chips(RANGES.map((r) => ({ value: r, label: r.label })), range, (v) => change(() => (range = v)), 'Period'),
      );

    const drawChart = (usage: Usage, totals: SpendRow[], since: number): void => {
      // The currency is said once above the chart: amounts alone fit the axis.
      const format = metric === 'cost' ? amountText : tokens;
      // The costliest groups get a colour each; the rest are stacked as "other".
      const top = totals.slice(0, TOP).map((r) => groupOf(r, by, withTenant));
      const series: Series[] = [...top.map((label, i) => ({ key: `s${i}`, label })), ...(totals.length > TOP ? [{ key: 'other', label: 'Other' }] : [])];
      const keyOf = new Map(top.map((label, i) => [label, `s${i}`]));
      const count = Math.ceil(range.span / range.bucket);
      const buckets: { start_ms: number; [series: string]: number }[] = Array.from({ length: count }, (_v, i) => ({ start_ms: since + i * range.bucket }));
      const sums: Record<string, number> = {};
      for (const r of usage.rows) {
        const slot = buckets[Math.floor(((r.start_ms ?? since) - since) / range.bucket)];
        if (slot === undefined) continue;
        const key = keyOf.get(groupOf(r, by, withTenant)) ?? 'other';
        slot[key] = (slot[key] ?? 0) + r[metric];
        sums[key] = (sums[key] ?? 0) + r[metric];
      }
      fill(
        chart,
        series.length === 0
          ? empty('No LLM call in this period.')
          : [h('p', { class: 'hint' }, metric === 'cost' ? `Cost in ${usage.currency}, by ${by}` : `Tokens, by ${by}`), legend(series, sums, format), stackedBars(buckets, series, range.bucket, { fractional: metric === 'cost', format, label: `${metric === 'cost' ? 'Cost' : 'Tokens'} by ${by}` })],
      );
    };

    const drawTable = (rows: SpendRow[], currency: string, truncated: boolean): void => {
      const tenantColumn = withTenant && by !== 'model';
      fill(
        table,
        rows.length === 0
          ? empty('No LLM call in this period.')
          : [
              h(
                'table',
                { class: 'rows' },
                h(
                  'thead',
                  null,
                  h('tr', null, [GROUPINGS.find((g) => g.by === by)?.label ?? by, ...(tenantColumn ? ['Tenant'] : []), 'Calls', 'Tokens', 'Input', 'Cached', 'Cache writes', 'Output', 'Reasoning', `Cost`].map((c) => h('th', null, c))),
                ),
                h(
                  'tbody',
                  null,
                  rows.map((r) =>
                    h(
                      'tr',
                      { 'data-key': r.key ?? '', 'data-tenant': r.tenant ?? undefined },
                      h('td', null, r.key ?? h('span', { class: 'muted' }, `(no ${by})`)),
                      tenantColumn ? h('td', null, r.tenant ?? '—') : null,
                      [r.calls, r.tokens, r.input, r.cached, r.cache_write, r.output, r.reasoning].map((v) => h('td', { class: 'num' }, tokens(v))),
                      h('td', { class: 'num cost', title: `${r.cost} ${currency}` }, cost(r.cost, currency)),
                    ),
                  ),
                ),
              ),
              truncated ? h('p', { class: 'hint' }, 'Only the costliest groups are listed.') : null,
            ],
      );
    };

    const drawBudgets = (list: Budget[], currency: string): void => {
      const amount = (b: Budget, v: number): string => (b.usage === 'cost' ? cost(v, currency) : `${tokens(v)} tokens`);
      fill(
        budgets,
        list.length === 0
          ? empty('No usage budget is configured (budgets with usage: tokens or cost).')
          : list.map((b) =>
              h(
                'div',
                { class: 'budget', 'data-budget': b.id },
                h(
                  'p',
                  { class: 'budget-head' },
                  h('strong', null, b.id),
                  h('span', { class: 'muted small' }, ` — ${amount(b, b.limit)} per ${b.key === 'cel' ? 'CEL key' : b.key} in any ${windowText(b.window_s)}; this window since `, time(b.since_ms, 'short')),
                ),
                b.approximate ? h('p', { class: 'hint' }, 'This budget also matches on tools, paths, roles or a condition the audit log cannot replay: every LLM call in its scope is counted here, so its counters may hold less.') : null,
                b.counters.length === 0
                  ? h('p', { class: 'muted small' }, 'Nothing spent in this window.')
                  : h(
                      'table',
                      { class: 'burn' },
                      h(
                        'tbody',
                        null,
                        b.counters.slice(0, COUNTERS_SHOWN).map((c) =>
                          h(
                            'tr',
                            { 'data-counter': c.key ?? '' },
                            h('td', null, c.key ?? (b.per_counter ? (b.key === 'global' ? 'everyone' : `(no ${b.key})`) : `all ${b.key} counters together`), withTenant && c.tenant !== null ? h('span', { class: 'muted' }, ` · ${c.tenant}`) : null),
                            h(
                              'td',
                              { class: 'meter' },
                              c.percent === null
                                ? null
                                : // Amber from 80 % (the first alert), red once full (a meter's high region starts above `high`).
                                  h('meter', { min: 0, max: b.limit, low: b.limit * 0.8, high: b.limit * 0.999, optimum: 0, value: Math.min(c.used, b.limit), title: `${c.percent} %` }),
                            ),
                            h('td', { class: 'num' }, `${amount(b, c.used)}${c.percent === null ? '' : ` of ${amount(b, b.limit)}`}`),
                            h('td', { class: 'num percent' }, c.percent === null ? '' : `${c.percent} %`),
                          ),
                        ),
                      ),
                    ),
                b.counters.length > COUNTERS_SHOWN ? h('p', { class: 'hint' }, `and ${b.counters.length - COUNTERS_SHOWN} more counters`) : null,
              ),
            ),
      );
    };

    const refresh = async (): Promise<void> => {
      // Buckets aligned to their size, so bars do not shift on each refresh.
      const until = Math.ceil(Date.now() / range.bucket) * range.bucket;
      const since = until - range.span;
      try {
        const [series, totals, budgetList] = await Promise.all([
          ctx.api.get<Usage>('/api/usage', { by, since_ms: since, until_ms: until, bucket_ms: range.bucket }),
          ctx.api.get<Usage>('/api/usage', { by, since_ms: since, until_ms: until }),
          ctx.api.get<{ currency: string; budgets: Budget[] }>('/api/budgets'),
        ]);
        // The table is ordered by cost; ordering by tokens when they are measured keeps chart and table in step.
        const rows = metric === 'cost' ? totals.rows : [...totals.rows].sort((a, b) => b.tokens - a.tokens);
        drawChart(series, rows, since);
        drawTable(rows, totals.currency, totals.truncated);
        drawBudgets(budgetList.budgets, budgetList.currency);
      } catch (err) {
        fill(chart, h('p', { class: 'error' }, (err as Error).message));
      }
    };

    renderControls();
    fill(
      el,
      h('div', { class: 'view-head' }, h('h2', null, 'Spend'), controls),
      h('section', { class: 'card' }, h('h3', null, 'LLM spend over time'), chart),
      h('section', { class: 'card' }, h('h3', null, 'By group'), table),
      h('section', { class: 'card' }, h('h3', null, 'Usage budgets'), h('p', { class: 'hint' }, 'What each counter settled to over its window, from the audit log, against the limit.'), budgets),
    );
    return poll(30_000, refresh);
  },
};
