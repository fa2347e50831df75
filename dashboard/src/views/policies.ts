import type { View } from '../context.js';
import { badge, empty, fill, h, time } from '../dom.js';

interface PolicyStatus {
  version: string;
  loaded_at: string;
  last_reload_error: { at: string; message: string } | null;
}

interface Rule {
  id: string;
  effect: string;
  mode: 'enforce' | 'shadow';
  description: string | null;
  reason: string | null;
  scope: { tenant?: string; team?: string; agent?: string } | null;
  upstream: string | null;
  tools: string[] | null;
  methods: string[] | null;
  paths: string[] | null;
  roles: string[] | null;
  environments: string[] | null;
  when: string | null;
  approval: { group: string; mode: string; timeout_s: number } | null;
  at: string;
}

interface Shadow {
  shadow: string | null;
  disagreements: { enforced: string; shadow: string; rules: string[]; calls: number; last: string; example_request_id: string }[];
}

interface Tests {
  passed: number;
  failed: number;
  results: { name: string; at: string; passed: boolean; expected: string; actual: string; reason: string }[];
}

const list = (v: readonly string[] | null): string => (v === null ? 'any' : v.join(', '));

/** The policy in force: version and reloads, every rule with where it is written, and the policy tests run against it. */
export const policiesView: View = {
  id: 'policies',
  title: 'Policies',
  permission: 'policy.read',
  mount(ctx, el) {
    const statusEl = h('section', { class: 'card', id: 'policy-status' }, h('p', { class: 'muted' }, 'Loading…'));
    const testsEl = h('section', { class: 'card', id: 'policy-tests' }, h('h3', null, 'Policy tests'), h('p', { class: 'muted' }, 'Running…'));
    const rulesEl = h('section', { class: 'card', id: 'policy-rules' }, h('h3', null, 'Rules'), h('p', { class: 'muted' }, 'Loading…'));
    const shadowEl = h('section', { class: 'card', id: 'policy-shadow' }, h('h3', null, 'Shadow disagreements'), h('p', { class: 'muted' }, 'Loading…'));
    fill(el, h('div', { class: 'view-head' }, h('h2', null, 'Policies')), statusEl, testsEl, shadowEl, rulesEl);

    void ctx.api.get<Shadow>('/api/policy/shadow').then(
      (s) =>
        fill(
          shadowEl,
          h('h3', null, 'Shadow disagreements (7 days)'),
          h('p', { class: 'muted' }, 'Where the rules in shadow mode, or the candidate set, would have decided otherwise than the rules in force. Recorded, never enforced.'),
          s.disagreements.length === 0
            ? empty('No disagreements: no rule is in shadow mode, or the shadow decisions all agreed.')
            : h(
                'table',
                { class: 'rows' },
                h('thead', null, h('tr', null, ['Enforced', 'Shadow', 'Shadow rules', 'Calls', 'Latest', 'Example request'].map((c) => h('th', null, c)))),
                h(
                  'tbody',
                  null,
                  s.disagreements.map((d) =>
                    h('tr', null, h('td', null, badge(d.enforced)), h('td', null, badge(d.shadow)), h('td', null, d.rules.map((r) => h('code', { class: 'pill' }, r))), h('td', null, String(d.calls)), h('td', null, time(d.last)), h('td', null, h('code', { class: 'small' }, d.example_request_id))),
                  ),
                ),
              ),
        ),
      (err: Error) => fill(shadowEl, h('h3', null, 'Shadow disagreements'), h('p', { class: 'error' }, err.message)),
    );

    void ctx.api.get<PolicyStatus>('/api/policy').then(
      (s) =>
        fill(
          statusEl,
          h(
            'dl',
            { class: 'facts' },
            h('dt', null, 'Version'),
            h('dd', null, h('code', null, s.version)),
            h('dt', null, 'Loaded'),
            h('dd', null, time(s.loaded_at)),
            h('dt', null, 'Last reload'),
            h('dd', null, s.last_reload_error === null ? 'no refused reload' : h('div', { class: 'error reload-error' }, h('strong', null, 'Refused '), time(s.last_reload_error.at), h('pre', null, s.last_reload_error.message), 'The previous policy stays in force.')),
          ),
        ),
      (err: Error) => fill(statusEl, h('p', { class: 'error' }, err.message)),
    );

    void ctx.api.get<Tests>('/api/policy/tests').then(
      (t) =>
        fill(
          testsEl,
          h('h3', null, 'Policy tests ', h('span', { class: t.failed > 0 ? 'badge badge-deny' : 'badge badge-allow' }, `${t.passed} passed, ${t.failed} failed`)),
          t.results.length === 0
            ? empty('This configuration has no policy tests (tests: beside the rules).')
            : h(
                'table',
                { class: 'rows' },
                h('thead', null, h('tr', null, ['', 'Test', 'Expected', 'Actual', 'Reason', 'Where'].map((c) => h('th', null, c)))),
                h(
                  'tbody',
                  null,
                  t.results.map((r) =>
                    h(
                      'tr',
                      { class: r.passed ? undefined : 'failed' },
                      h('td', null, r.passed ? h('span', { class: 'pass', title: 'passed' }, '✓') : h('span', { class: 'fail', title: 'failed' }, '✗')),
                      h('td', null, r.name),
                      h('td', null, r.expected),
                      h('td', null, r.actual),
                      h('td', { class: 'muted' }, r.reason),
                      h('td', null, h('code', { class: 'small' }, r.at)),
                    ),
                  ),
                ),
              ),
        ),
      (err: Error) => fill(testsEl, h('h3', null, 'Policy tests'), h('p', { class: 'error' }, err.message)),
    );

    void ctx.api.get<{ rules: Rule[] }>('/api/policy/rules').then(
      ({ rules }) =>
        fill(
          rulesEl,
          h('h3', null, `Rules (${rules.length})`),
          h('p', { class: 'muted' }, 'Every matching rule is considered; the most restrictive effect wins (deny > escalate > allow); no match is deny.'),
          h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'rows rules' },
              h('thead', null, h('tr', null, ['Rule', 'Effect', 'Upstream', 'Tools', 'Methods', 'Paths', 'Roles', 'Scope', 'When', 'Where'].map((c) => h('th', null, c)))),
              h(
                'tbody',
                null,
                rules.map((r) =>
                  h(
                    'tr',
                    { 'data-rule': r.id },
                    h('td', null, h('code', null, r.id), r.description || r.reason ? h('div', { class: 'muted small' }, r.description ?? r.reason) : null),
                    h('td', null, badge(r.effect), r.mode === 'shadow' ? h('span', { class: 'pill', title: 'evaluated and recorded, never enforced' }, 'shadow') : null, r.approval ? h('div', { class: 'muted small' }, `${r.approval.group}, ${r.approval.mode}, ${r.approval.timeout_s} s`) : null),
                    h('td', null, r.upstream ?? (r.tools ? '(by tool)' : 'any')),
                    h('td', null, list(r.tools)),
                    h('td', null, list(r.methods)),
                    h('td', null, r.paths === null ? 'any' : r.paths.map((p) => h('code', { class: 'pill' }, p))),
                    h('td', null, list(r.roles), r.environments ? h('div', { class: 'muted small' }, `env: ${r.environments.join(', ')}`) : null),
                    h('td', null, r.scope === null ? '—' : Object.entries(r.scope).map(([k, v]) => `${k}=${String(v)}`).join(' ')),
                    h('td', null, r.when ? h('code', { class: 'cel' }, r.when) : '—'),
                    h('td', null, h('code', { class: 'small' }, r.at)),
                  ),
                ),
              ),
            ),
          ),
        ),
      (err: Error) => fill(rulesEl, h('h3', null, 'Rules'), h('p', { class: 'error' }, err.message)),
    );
    return () => undefined;
  },
};
