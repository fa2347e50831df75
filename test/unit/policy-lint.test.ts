/**
 * `valet policy check`'s lints beyond dead rules: call sequences that can never hold, budgets
 * smaller than every call an escalation rule escalates, and what a change does to dead rules
 * (`--against`). Each check has a case it must find and a near miss it must not.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import type { Config } from '../../gateway/config/types.js';
import { compareDeadRules, findSequenceProblems, findWastedApprovals, policyCheckReport } from '../../gateway/policy/lint.js';

const HEAD = `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams:
  - { name: gh, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }
  - { name: pay, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }
tools:
  - { name: gh.get_pr, upstream: gh, method: GET, path: "/repos/{owner}/{repo}/pulls/{number}", args: { verbose: bool } }
  - { name: gh.merge_pr, upstream: gh, method: PUT, path: "/repos/{owner}/{repo}/pulls/{number}/merge" }
  - { name: gh.get_issue, upstream: gh, method: GET, path: "/repos/{owner}/{repo}/issues/{number}" }
  - { name: pay.transfer, upstream: pay, method: POST, path: /v1/transfers, args: { amount: int, currency: string } }
`;

/** A configuration loaded from one file: the issuer, upstreams and tools above, then `body`. */
function configOf(body: string, gateway = ''): Config {
  const dir = mkdtempSync(join(tmpdir(), 'valet-lint-'));
  try {
    writeFileSync(join(dir, 'all.yaml'), `${gateway}${HEAD}${body}`);
    return loadConfig(dir);
  } catch (err) {
    throw new Error(`test configuration does not load: ${(err as Error).message}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A location as written in a message, without the temporary directory before the file name. */
const plain = (text: string): string => text.replace(/[^\s(]*valet-lint-[A-Za-z0-9]+\//g, '');

const problems = (c: Config): string[] => findSequenceProblems(c).map((p) => `${p.id}${p.never ? ' (never)' : ''}: ${plain(p.problem)}`);

const MERGE_AFTER_READ = `  - id: merge-after-read
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_pr, same: [owner, repo, number], within: 1h }]
    effect: allow
`;

describe('sequences: a required tool no rule lets through', () => {
  it('warns when only a deny names the required tool', () => {
    const c = configOf(`rules:
${MERGE_AFTER_READ}  - { id: no-pr-reads, tools: [gh.get_pr], effect: deny }
`);
    expect(problems(c)).toEqual(['merge-after-read (never): requires a call of gh.get_pr that can never succeed: no allow or escalate rule lets gh.get_pr through']);
    expect(plain(findSequenceProblems(c)[0]?.at ?? '')).toMatch(/^all\.yaml:\d+$/);
  });

  it('does not warn when an allow without tools lets the tool through by upstream and method', () => {
    const c = configOf(`rules:
${MERGE_AFTER_READ}  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
`);
    expect(problems(c)).toEqual([]);
  });

  it('does not count an allow whose methods or paths the tool can never have', () => {
    const c = configOf(`rules:
${MERGE_AFTER_READ}  - { id: gh-posts, upstream: gh, methods: [POST], effect: allow }
  - { id: gh-issues, upstream: gh, paths: ["/repos/*/*/issues/**"], effect: allow }
`);
    expect(problems(c)).toEqual([expect.stringContaining('merge-after-read (never): requires a call of gh.get_pr that can never succeed')]);
    const fits = configOf(`rules:
${MERGE_AFTER_READ}  - { id: gh-pulls, upstream: gh, paths: ["/repos/*/*/pulls/*"], effect: allow }
`);
    expect(problems(fits)).toEqual([]);
  });

  it('warns when the only allow of the required tool is for another tenant', () => {
    const c = configOf(`rules:
  - id: merge-after-read
    scope: { tenant: acme }
    tools: [gh.merge_pr]
    requires: [gh.get_pr]
    effect: allow
  - { id: globex-reads, scope: { tenant: globex }, tools: [gh.get_pr], effect: allow }
`);
    expect(problems(c)).toEqual(['merge-after-read (never): requires a call of gh.get_pr that can never succeed: no allow or escalate rule that can apply to its tenant and agent lets gh.get_pr through']);
  });
});

describe('sequences: no call can come first', () => {
  it('warns on a rule that requires its own tool, with no other rule letting a first call through', () => {
    const c = configOf(`rules:
  - { id: merge-twice, tools: [gh.merge_pr], requires: [gh.merge_pr], effect: allow }
`);
    expect(problems(c)).toEqual([
      'merge-twice (never): requires a call of gh.merge_pr that can never come first: every rule that lets it through (merge-twice) requires an earlier call of gh.merge_pr (a cycle: none of them can be called first)',
    ]);
  });

  it('does not warn when another rule lets a first call through', () => {
    const c = configOf(`rules:
  - { id: merge-twice, tools: [gh.merge_pr], when: 'args.owner == "acme"', requires: [gh.merge_pr], effect: allow }
  - { id: merge-others, tools: [gh.merge_pr], effect: allow }
`);
    expect(problems(c)).toEqual([]);
  });

  it('warns on a cycle of two tools, each allowed only after the other', () => {
    const c = configOf(`rules:
  - { id: pr-after-issue, tools: [gh.get_pr], requires: [gh.get_issue], effect: allow }
  - { id: issue-after-pr, tools: [gh.get_issue], requires: [gh.get_pr], effect: allow }
`);
    expect(problems(c)).toEqual([
      'pr-after-issue (never): requires a call of gh.get_issue that can never come first: every rule that lets it through (issue-after-pr) requires an earlier call of gh.get_pr (a cycle: none of them can be called first)',
      'issue-after-pr (never): requires a call of gh.get_pr that can never come first: every rule that lets it through (pr-after-issue) requires an earlier call of gh.get_issue (a cycle: none of them can be called first)',
    ]);
  });

  it('does not warn when one tool of the cycle can be called first', () => {
    const c = configOf(`rules:
  - { id: pr-after-issue, tools: [gh.get_pr], requires: [gh.get_issue], effect: allow }
  - { id: issue-after-pr, tools: [gh.get_issue], requires: [gh.get_pr], effect: allow }
  - { id: issues-open, tools: [gh.get_issue], effect: escalate, approval: { group: ops } }
`);
    expect(problems(c)).toEqual([]);
  });
});

describe('sequences: a call both required and forbidden', () => {
  it('warns when the same tool is required and blocked, without `same` or with the same `same`', () => {
    const c = configOf(`rules:
  - { id: read-then-merge, tools: [gh.merge_pr], requires: [gh.get_pr], blocked_by: [gh.get_pr], effect: allow }
  - id: same-pr
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_pr, same: [number], within: 1h }]
    blocked_by: [{ tool: gh.get_pr, same: [number] }]
    effect: allow
  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
`);
    expect(problems(c)).toEqual([
      'read-then-merge (never): needs and forbids the same earlier call: it requires gh.get_pr and is blocked by gh.get_pr, and every call the first needs is one the second forbids',
      'same-pr (never): needs and forbids the same earlier call: it requires gh.get_pr with the same number within 1h and is blocked by gh.get_pr with the same number, and every call the first needs is one the second forbids',
    ]);
  });

  it('does not warn when some required call escapes the block (a narrower `same`, a shorter `within`)', () => {
    const c = configOf(`rules:
  - id: other-pr
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_pr, same: [number] }]
    blocked_by: [{ tool: gh.get_pr, same: [number, owner] }]
    effect: allow
  - id: not-too-recent
    tools: [gh.merge_pr]
    requires: [gh.get_pr]
    blocked_by: [{ tool: gh.get_pr, within: 10m }]
    effect: allow
  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
`);
    expect(problems(c)).toEqual([]);
  });
});

describe('sequences: steps that do not do what they say', () => {
  it('warns when `within` is longer than gateway.policy.sessions.ttl, not when shorter', () => {
    const gateway = 'gateway: { policy: { sessions: { ttl: 1h } } }\n';
    const c = configOf(`rules:
  - id: merge-after-read
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_pr, within: 2h }]
    blocked_by: [{ tool: gh.get_issue, within: 30m }]
    effect: allow
  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
`, gateway);
    expect(problems(c)).toEqual([
      'merge-after-read: requires gh.get_pr within 2h, longer than gateway.policy.sessions.ttl (1h): a session idle that long is forgotten sooner, with its calls',
    ]);
  });

  it('warns on a `same` argument the tool does not have, when it declares its arguments', () => {
    const c = configOf(`rules:
  - id: merge-after-read
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_pr, same: [number, pull_number, verbose] }]
    effect: allow
  - id: merge-after-issue
    tools: [gh.merge_pr]
    requires: [{ tool: gh.get_issue, same: [anything] }]
    effect: allow
  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
`);
    // get_issue declares no arguments: its body and query could hold any, so nothing is said.
    expect(problems(c)).toEqual([
      "merge-after-read: requires gh.get_pr with the same pull_number, which gh.get_pr does not have (not a path parameter of /repos/{owner}/{repo}/pulls/{number}, not among its declared args): the earlier call's value is always absent",
    ]);
  });
});

const TRANSFERS = (when: string, budget = ''): string => `rules:
  - { id: transfers, tools: [pay.transfer], effect: allow }
  - id: big-transfers
    tools: [pay.transfer]
    when: '${when}'
    effect: escalate
    approval: { group: finance }
budgets:
  - id: payments-daily
    upstream: pay
    sum: args.amount
    limit: 500000
    window: 1d
    key: agent
${budget}`;

describe('budgets smaller than every call an escalation rule escalates', () => {
  it('warns when the rule bounds the budget\'s sum from below by its whole limit', () => {
    const c = configOf(TRANSFERS('args.currency == "usd" && args.amount > 1000000'));
    expect(findWastedApprovals(c).map((b) => ({ ...b, at: plain(b.at), problem: plain(b.problem) }))).toEqual([
      {
        id: 'payments-daily',
        rule: 'big-transfers',
        at: expect.stringMatching(/^all\.yaml:\d+$/),
        problem: expect.stringMatching(
          /^budget payments-daily \(limit 500000 per 1d\) is smaller than any call rule big-transfers \(all\.yaml:\d+\) escalates \(args\.amount > 1000000\): an approved call would still be refused$/,
        ),
      },
    ]);
  });

  it('reads `N < X` and `N <= X` too, and compares the sum whatever its spacing', () => {
    expect(findWastedApprovals(configOf(TRANSFERS('600000 <= args . amount')))).toHaveLength(1);
    expect(findWastedApprovals(configOf(TRANSFERS('500000 < (args.amount)')))).toHaveLength(1);
  });

  it('does not warn when a call the rule escalates can fit: a bound at the limit, below it, or not at the top level', () => {
    expect(findWastedApprovals(configOf(TRANSFERS('args.amount >= 500000')))).toEqual([]);
    expect(findWastedApprovals(configOf(TRANSFERS('args.amount > 100000')))).toEqual([]);
    expect(findWastedApprovals(configOf(TRANSFERS('args.amount > 1000000 || args.currency == "eur"')))).toEqual([]);
    expect(findWastedApprovals(configOf(TRANSFERS('args.amount < 1000000')))).toEqual([]);
  });

  it('does not warn when the budget may not apply to every escalated call (its own condition, another scope, another sum)', () => {
    const budgets = (extra: string): Config =>
      configOf(TRANSFERS('args.amount > 1000000').replace(/budgets:[\s\S]*$/, `budgets:\n  - { id: b, tools: [pay.transfer], sum: args.amount, limit: 500000, window: 1d, key: agent, ${extra} }\n`));
    expect(findWastedApprovals(budgets('when: \'args.currency == "usd"\''))).toEqual([]);
    expect(findWastedApprovals(budgets('scope: { team: payments }'))).toEqual([]);
    expect(findWastedApprovals(budgets('methods: [PUT]'))).toEqual([]);
    expect(findWastedApprovals(configOf(TRANSFERS('args.amount > 1000000').replace('sum: args.amount', 'sum: args.amount / 100')))).toEqual([]);
    // The same budget without any of these: found.
    expect(findWastedApprovals(budgets('methods: [POST]'))).toHaveLength(1);
  });
});

describe('--against: what a change does to dead rules', () => {
  const BASE = `rules:
  - { id: reads, upstream: gh, methods: [GET], effect: allow }
  - { id: pr-reads, tools: [gh.get_pr], effect: allow }
  - { id: no-gh, upstream: gh, effect: deny }
  - { id: merges, upstream: gh, methods: [PUT], effect: allow }
  - { id: old-rule, upstream: pay, effect: allow }
`;

  it('tells rules newly dead from those already dead, and lists removed rules', () => {
    const base = configOf(BASE);
    // `reads` and `merges` are shadowed by no-gh in both; `pay-all` and `new-dead` by the new no-pay.
    const next = configOf(`rules:
  - { id: reads, upstream: gh, methods: [GET], effect: allow }
  - { id: no-gh, upstream: gh, effect: deny }
  - { id: merges, upstream: gh, methods: [PUT], effect: allow }
  - { id: pay-all, upstream: pay, effect: allow }
  - { id: no-pay, upstream: pay, effect: deny }
  - { id: new-dead, upstream: pay, methods: [POST], effect: allow }
`);
    const change = compareDeadRules(base, next);
    expect(change.newlyDead.map((d) => [d.id, d.existed])).toEqual([
      ['pay-all', false],
      ['new-dead', false],
    ]);
    expect(change.alreadyDead.map((d) => d.id)).toEqual(['reads', 'merges']);
    expect(change.removed.map((r) => r.id)).toEqual(['pr-reads', 'old-rule']);
  });

  it('reports a rule that could match before and cannot now as newly dead, with why; an unchanged dead rule only as info', () => {
    const base = configOf(`rules:
${MERGE_AFTER_READ}  - { id: gh-reads, upstream: gh, methods: [GET], effect: allow }
  - { id: no-pay, upstream: pay, effect: deny }
  - { id: pay-all, upstream: pay, effect: allow }
`);
    const next = configOf(`rules:
${MERGE_AFTER_READ}  - { id: no-pay, upstream: pay, effect: deny }
  - { id: pay-all, upstream: pay, effect: allow }
`);
    const lines = policyCheckReport(next, { label: 'git:main', config: base }).map((l) => ({ ...l, text: plain(l.text) }));
    expect(lines.filter((l) => l.level === 'warning').map((l) => l.text)).toEqual([
      expect.stringMatching(
        /^all\.yaml:\d+: rule merge-after-read is newly dead in this change \(it could match in git:main\): requires a call of gh\.get_pr that can never succeed: no allow or escalate rule lets gh\.get_pr through$/,
      ),
    ]);
    expect(lines.filter((l) => l.level === 'info').map((l) => l.text)).toEqual([
      expect.stringMatching(/^all\.yaml:\d+: rule pay-all was already dead in git:main: shadowed: deny rule no-pay/),
      expect.stringMatching(/^all\.yaml:\d+: rule gh-reads was removed in this change \(it is in git:main, not in this set\)$/),
    ]);
    // Against itself, nothing is new: no warnings at all.
    expect(policyCheckReport(base, { label: 'base', config: base }).filter((l) => l.level === 'warning')).toEqual([]);
  });

  it('without a base set, every dead rule and every sequence problem is a warning, as before', () => {
    const c = configOf(`rules:
${MERGE_AFTER_READ}  - { id: no-pay, upstream: pay, effect: deny }
  - { id: pay-all, upstream: pay, effect: allow }
`);
    expect(policyCheckReport(c).map((l) => `${l.level}: ${plain(l.text).replace(/^all\.yaml:\d+: /, '')}`)).toEqual([
      expect.stringMatching(/^warning: rule pay-all is shadowed: deny rule no-pay \(all\.yaml:\d+\) matches every request it matches$/),
      'warning: rule merge-after-read requires a call of gh.get_pr that can never succeed: no allow or escalate rule lets gh.get_pr through',
    ]);
  });
});
