import { ApiError, download, type Query } from '../api.js';
import type { Context, View } from '../context.js';
import { badge, empty, field, fill, h, time } from '../dom.js';

/** An audit row as `GET /api/audit` returns it; newer gateways may add columns, shown in the detail. */
export interface AuditRow {
  id: number;
  ts: number | string;
  request_id: string;
  agent: string | null;
  tenant: string | null;
  user: string | null;
  upstream: string | null;
  tool: string | null;
  method: string;
  path: string;
  decision: string | null;
  rule: string | null;
  reason: string | null;
  status: number;
  upstream_status: number | null;
  error_code: string | null;
  duration_ms: number;
  [column: string]: unknown;
}

interface AuditPage {
  rows: AuditRow[];
  /** Pass back as `cursor` for the next (older) page; null on the last page. */
  next_cursor?: string | null;
}

interface Explanation {
  request_id: string;
  recorded: { decision: string | null; rule: string | null; reason: string | null; status: number; error_code: string | null; tool: string | null; policy_version: string | null };
  policy_version: string;
  same_version: boolean;
  not_recorded: string[];
  not_replayable: string | null;
  replay: {
    decision: { effect: string; rules: string[]; reason: string };
    tool: string | null;
    agrees: boolean;
    trace: { id: string; effect: string; principal: string; matched: boolean; why: string; at: string; needs: string[] }[];
  } | null;
}

const PAGE = 50;
/** Filters by their API name, in form order. */
const TEXT_FILTERS = [
  ['agent', 'Agent'],
  ['tenant', 'Tenant'],
  ['user', 'User'],
  ['upstream', 'Upstream'],
  ['tool', 'Tool'],
  ['rule', 'Rule'],
  ['status', 'Status'],
  ['request_id', 'Request id'],
] as const;
const RANGES: readonly [string, number][] = [
  ['15 min', 15 * 60_000],
  ['1 h', 3_600_000],
  ['24 h', 86_400_000],
  ['7 d', 7 * 86_400_000],
];

/** `YYYY-MM-DDTHH:MM` in local time, as a datetime-local input holds it. */
function localInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

/**
 * The audit explorer: filters, pages of rows (newest first), the detail of one request with its
 * decision explained rule by rule, and export of what the filters select.
 */
export const auditView: View = {
  id: 'audit',
  title: 'Audit log',
  permission: 'audit.read',
  mount(ctx, el, params) {
    const inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();
    const text = (name: string, label: string): HTMLElement => {
      const input = h('input', { type: 'text', name, value: params.get(name) ?? '', autocomplete: 'off' });
      if (name === 'status') input.setAttribute('inputmode', 'numeric');
      if (name === 'tenant' && ctx.who.tenant !== null) {
        input.value = ctx.who.tenant;
        input.disabled = true;
      }
      inputs.set(name, input);
      return field(label, input);
    };
    const decision = h(
      'select',
      { name: 'decision' },
      [
        ['', 'any'],
        ['allow', 'allow'],
        ['deny', 'deny'],
        ['escalate', 'escalate'],
        ['none', 'none (refused before the policy)'],
      ].map(([value, label]) => h('option', { value }, label)),
    );
    decision.value = params.get('decision') ?? '';
    inputs.set('decision', decision);
    const since = h('input', { type: 'datetime-local', name: 'since' });
    const until = h('input', { type: 'datetime-local', name: 'until' });
    if (params.get('since_ms')) since.value = localInput(Number(params.get('since_ms')));
    if (params.get('until_ms')) until.value = localInput(Number(params.get('until_ms')));

    const table = h('div', { class: 'table-wrap', id: 'audit-results' });
    const detail = h('aside', { class: 'detail card', id: 'audit-detail', hidden: true });
    const pager = h('div', { class: 'pager' });
    const summary = h('span', { class: 'muted' });

    let cursors: (string | undefined)[] = [undefined];
    let rows: AuditRow[] = [];
    let selected: string | undefined;

    const filters = (): Query => {
      const q: Query = {};
      for (const [name, input] of inputs) if (!input.disabled && input.value.trim() !== '') q[name] = input.value.trim();
      if (since.value) q['since_ms'] = new Date(since.value).getTime();
      if (until.value) q['until_ms'] = new Date(until.value).getTime();
      return q;
    };

    // Loads overlap (filters change while a page is on its way): only the latest one may render.
    let latest = 0;
    const load = async (page: number): Promise<void> => {
      const cursor = cursors[page];
      const mine = ++latest;
      let result: AuditPage;
      try {
        result = await ctx.api.get<AuditPage>('/api/audit', { ...filters(), limit: PAGE, cursor });
      } catch (err) {
        if (mine !== latest) return;
        fill(table, h('p', { class: 'error' }, (err as Error).message));
        fill(pager);
        return;
      }
      if (mine !== latest) return;
      rows = result.rows;
      cursors = cursors.slice(0, page + 1);
      const next = result.next_cursor ?? undefined;
      if (next !== undefined) cursors.push(next);
      summary.textContent = rows.length === 0 ? 'No rows match.' : `Rows ${page * PAGE + 1}–${page * PAGE + rows.length}${next === undefined ? '' : ' (more older)'}`;
      renderTable();
      fill(
        pager,
        h('button', { type: 'button', disabled: page === 0, on: { click: () => void load(page - 1) } }, '← Newer'),
        h('button', { type: 'button', disabled: next === undefined, on: { click: () => void load(page + 1) } }, 'Older →'),
      );
    };

    const renderTable = (): void => {
      if (rows.length === 0) return fill(table, empty('No audit rows match these filters.'));
      fill(
        table,
        h(
          'table',
          { class: 'rows' },
          // Columns marked `opt` make room for the detail panel when it is open.
          h('thead', null, h('tr', null, [['Time'], ['Agent'], ['Tenant'], ['User', 'opt'], ['Upstream'], ['Request'], ['Tool', 'opt'], ['Decision'], ['Rule'], ['Status'], ['ms', 'opt']].map(([c, cls]) => h('th', { class: cls }, c)))),
          h(
            'tbody',
            null,
            rows.map((r) =>
              h(
                'tr',
                {
                  class: r.request_id === selected ? 'selected' : undefined,
                  'data-request-id': r.request_id,
                  tabindex: 0,
                  on: {
                    click: () => void showDetail(r),
                    keydown: (e) => {
                      if (e.key === 'Enter') void showDetail(r);
                    },
                  },
                },
                h('td', { class: 'nowrap' }, time(r.ts, 'short')),
                h('td', null, r.agent ?? '—'),
                h('td', null, r.tenant ?? '—'),
                h('td', { class: 'opt' }, r.user ?? '—'),
                h('td', null, r.upstream ?? '—'),
                h('td', { class: 'req' }, h('span', { class: 'method' }, r.method), ' ', h('code', null, r.path)),
                h('td', { class: 'opt' }, r.tool ?? ''),
                h('td', null, badge(r.decision)),
                h('td', null, r.rule ? h('code', null, r.rule) : ''),
                h('td', { class: r.status >= 400 ? 'status bad' : 'status' }, String(r.status)),
                h('td', { class: 'num opt' }, r.duration_ms.toFixed(1)),
              ),
            ),
          ),
        ),
      );
    };

    const showDetail = async (r: AuditRow): Promise<void> => {
      selected = r.request_id;
      renderTable();
      detail.hidden = false;
      const explainEl = h('div', { class: 'explain' }, h('p', { class: 'muted' }, 'Explaining…'));
      const close = (): void => {
        detail.hidden = true;
        selected = undefined;
        renderTable();
      };
      fill(
        detail,
        h('div', { class: 'detail-head' }, h('h3', null, 'Request ', h('code', { class: 'small' }, r.request_id)), h('button', { type: 'button', class: 'link', on: { click: close } }, 'Close')),
        h(
          'p',
          { class: 'summary' },
          badge(r.decision),
          ' ',
          h('span', { class: 'method' }, r.method),
          ' ',
          h('code', null, r.path),
          ` on ${r.upstream ?? '?'}`,
          r.tool ? ` (tool ${r.tool})` : '',
          ` by ${r.agent ?? 'an unauthenticated caller'}`,
          r.tenant ? ` of ${r.tenant}` : '',
          r.user ? ` for user ${r.user}` : '',
          ` · status ${r.status}`,
          r.error_code ? ` ${r.error_code}` : '',
          ` · ${r.duration_ms.toFixed(1)} ms · `,
          time(r.ts),
        ),
        h('h4', null, 'Decision explained'),
        explainEl,
        h(
          'details',
          { class: 'all-fields' },
          h('summary', null, 'Every recorded field'),
          h(
            'dl',
            { class: 'facts' },
            Object.entries(r)
              .filter(([k]) => k !== 'id')
              .map(([k, v]) => [h('dt', null, k), h('dd', null, k === 'ts' || (k.endsWith('_at') && typeof v === 'number') ? time(v as number) : v === null ? '—' : String(v))]),
          ),
        ),
      );
      try {
        const e = await ctx.api.get<Explanation>(`/api/audit/${encodeURIComponent(r.request_id)}/explain`);
        if (selected === r.request_id) fill(explainEl, explanation(e));
      } catch (err) {
        fill(explainEl, h('p', { class: 'error' }, (err as Error).message));
      }
    };

    const exportAs = async (format: string): Promise<void> => {
      try {
        const { blob, filename } = await ctx.api.blob('/api/audit/export', { ...filters(), format });
        download(blob, filename ?? `valet-audit.${format}`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404 && err.code === 'VALET_ERR_ADMIN_NOT_FOUND') {
          ctx.notify('This gateway has no export endpoint; saved this page as JSON instead.', 'error');
          exportPage();
        } else ctx.notify(`Export failed: ${(err as Error).message}`, 'error');
      }
    };
    const exportPage = (): void => download(new Blob([JSON.stringify(rows, null, 2)], { type: 'application/json' }), 'valet-audit-page.json');

    const apply = (): void => {
      cursors = [undefined];
      detail.hidden = true;
      selected = undefined;
      void load(0);
    };
    const form = h(
      'form',
      {
        class: 'filters card',
        id: 'audit-filters',
        on: {
          submit: (e) => {
            e.preventDefault();
            apply();
          },
        },
      },
      h(
        'div',
        { class: 'filter-grid' },
        field('From', since),
        field('To', until),
        TEXT_FILTERS.map(([name, label]) => text(name, label)),
        field('Decision', decision),
      ),
      h(
        'div',
        { class: 'filter-actions' },
        h('button', { type: 'submit', class: 'primary' }, 'Apply'),
        h(
          'button',
          {
            type: 'button',
            on: {
              click: () => {
                for (const input of inputs.values()) if (!input.disabled) input.value = '';
                since.value = '';
                until.value = '';
                apply();
              },
            },
          },
          'Reset',
        ),
        h('span', { class: 'muted' }, 'Last:'),
        RANGES.map(([label, ms]) =>
          h(
            'button',
            {
              type: 'button',
              class: 'chip',
              on: {
                click: () => {
                  since.value = localInput(Date.now() - ms);
                  until.value = '';
                  apply();
                },
              },
            },
            label,
          ),
        ),
        h('span', { class: 'spacer' }),
        h('span', { class: 'muted' }, 'Export:'),
        ['ndjson', 'csv', 'json'].map((f) => h('button', { type: 'button', class: 'chip', on: { click: () => void exportAs(f) } }, f.toUpperCase())),
        h('button', { type: 'button', class: 'chip', on: { click: exportPage } }, 'This page'),
      ),
    );
    fill(el, h('div', { class: 'view-head' }, h('h2', null, 'Audit log'), summary), form, h('div', { class: 'split' }, h('div', { class: 'results' }, table, pager), detail));
    apply();
    return () => undefined;
  },
};

function explanation(e: Explanation): HTMLElement {
  const rec = e.recorded;
  const parts: HTMLElement[] = [
    h(
      'p',
      { class: 'recorded' },
      'Recorded: ',
      badge(rec.decision),
      rec.rule ? [' by ', h('code', null, rec.rule)] : null,
      rec.reason ? ` — ${rec.reason}` : null,
      rec.error_code ? [' ', h('code', null, rec.error_code)] : null,
    ),
  ];
  if (e.replay === null) {
    parts.push(h('p', { class: 'muted' }, `No rule-by-rule explanation: ${e.not_replayable ?? 'not replayable'}.`));
    return h('div', null, parts);
  }
  const r = e.replay;
  parts.push(
    h(
      'div',
      { class: 'notice honest' },
      h(
        'p',
        null,
        'Replayed against the policy in force now (',
        h('code', null, e.policy_version),
        e.same_version ? ', the same version that decided it).' : [', not ', h('code', null, rec.policy_version ?? 'unknown'), ' which decided it: rules may have changed).'],
      ),
      h('p', null, 'The audit log does not store: ', e.not_recorded.join('; '), '. Rules whose outcome depends on these are marked ', h('span', { class: 'badge badge-unknown' }, 'not re-evaluable'), ' — for them the recorded decision, rule and reason above are what happened.'),
    ),
    h(
      'p',
      null,
      'Replay: ',
      badge(r.decision.effect),
      ' by ',
      h('code', null, r.decision.rules.join(', ')),
      ` — ${r.decision.reason}`,
      r.agrees ? h('span', { class: 'agree' }, ' (agrees with the record)') : h('span', { class: 'disagree' }, ' (differs from the record: see the marked rules)'),
    ),
    h(
      'table',
      { class: 'trace' },
      h('thead', null, h('tr', null, ['Rule', 'Effect', 'Outcome', 'Why'].map((c) => h('th', null, c)))),
      h(
        'tbody',
        null,
        r.trace.map((t) =>
          h(
            'tr',
            { class: t.matched ? 'matched' : undefined, 'data-rule': t.id },
            h('td', null, h('code', null, t.id), h('div', { class: 'muted small' }, t.at, t.principal === 'user' ? ' · for the user' : '')),
            h('td', null, badge(t.effect)),
            h('td', null, t.needs.length > 0 ? h('span', { class: 'badge badge-unknown', title: `depends on ${t.needs.join(', ')}` }, 'not re-evaluable') : t.matched ? 'matched' : 'no match'),
            h('td', null, t.why, t.needs.length > 0 ? h('span', { class: 'muted' }, ` (needs ${t.needs.join(', ')})`) : null),
          ),
        ),
      ),
    ),
  );
  if (r.trace.length === 0) parts.push(h('p', { class: 'muted' }, 'No rule applies to this upstream: default deny.'));
  return h('div', null, parts);
}
