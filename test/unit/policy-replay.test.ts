/**
 * Replay's decisions about single rows (what it decides again, what it cannot and why) and its
 * report: counts, order, thresholds, and Markdown that a hostile path or agent id cannot break.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import type { Config } from '../../gateway/config/types.js';
import { ValetError } from '../../gateway/errors.js';
import type { EvaluationInput } from '../../gateway/policy/compile.js';
import type { RecordedFacts } from '../../gateway/policy/facts.js';
import { renderReplayMarkdown, renderReplayTable, replayer, ReplayTally, widens, type ReplayOutcome, type ReplayRow } from '../../gateway/policy/replay.js';

const CANDIDATE = `issuers:
  - { name: t, issuer: t, audience: valet, algorithms: [HS256], secret: { env: T_KEY } }
upstreams:
  - { name: api, origin: "http://127.0.0.1:9", credential: { scheme: bearer, secret: K } }
  - { name: plain, origin: "http://127.0.0.1:9", credential: { scheme: bearer, secret: K } }
  - { name: hist, origin: "http://127.0.0.1:9", credential: { scheme: bearer, secret: K } }
  - { name: ctx, origin: "http://127.0.0.1:9", credential: { scheme: bearer, secret: K } }
tools:
  - { name: api.pay, upstream: api, method: POST, path: /v1/pay, args: { amount: int } }
  - { name: api.review, upstream: api, method: GET, path: /v1/review }
  - { name: api.merge, upstream: api, method: POST, path: /v1/merge }
agents:
  - { id: registered, tenant: acme }
rules:
  - { id: small-pay, tools: [api.pay], when: "args.amount <= 10", effect: allow }
  - { id: merge-after-review, tools: [api.merge], requires: [api.review], effect: allow }
  - { id: plain-reads, upstream: plain, methods: [GET], effect: allow }
  - { id: hist-first, upstream: hist, when: "history.first_use", effect: deny }
  - { id: hist-allow, upstream: hist, effect: allow }
  - { id: ctx-owner, upstream: ctx, when: "has(ctx.owner) && ctx.owner == agent.id", effect: allow }
contexts:
  - { name: owner, key: request.path, upstream: ctx, file: owners.json }
`;

let dir: string;
let config: Config;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'valet-replay-unit-'));
  writeFileSync(join(dir, 'policy.yaml'), CANDIDATE);
  writeFileSync(join(dir, 'owners.json'), JSON.stringify({ '/mine': 'bot' }));
  config = loadConfig(dir);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let nextId = 1;
function row(o: Partial<ReplayRow> = {}): ReplayRow {
  const id = nextId++;
  return { id, ts: 1_795_950_978_000 + id, request_id: `req-${id}`, agent: 'bot', tenant: null, upstream: 'api', tool: null, method: 'GET', path: '/x', decision: 'allow', rpc: null, facts: 'sealed', ...o };
}

function recorded(facts: Partial<EvaluationInput['facts']>, o: { argsRead?: boolean; argsOmitted?: boolean; input?: Partial<EvaluationInput>; from?: RecordedFacts['decision'] } = {}): RecordedFacts {
  return {
    input: {
      identity: { agent: 'bot', tenant: undefined, team: undefined, roles: [], environment: undefined, user: undefined, userRoles: [], issuer: 't', tokenId: undefined, expiresAt: 0 },
      facts: { upstream: 'api', method: 'GET', path: '/x', forwardPath: '/x', rawQuery: '', query: {}, tool: undefined, args: {}, argsError: undefined, ...facts },
      environment: 'development',
      now: 1_795_950_978_000,
      context: {},
      ...o.input,
    },
    decision: o.from ?? { effect: 'allow', rules: ['old'] },
    argsRead: o.argsRead ?? true,
    argsOmitted: o.argsOmitted ?? false,
  };
}

/** Replays one row whose facts open to `facts`. */
async function replayOne(facts: RecordedFacts | Error, r: Partial<ReplayRow> = {}): Promise<ReplayOutcome> {
  const replay = replayer(config, () => {
    if (facts instanceof Error) throw facts;
    return facts;
  });
  return replay.replay(row(r));
}

describe('replaying one row', () => {
  it('decides the recorded input with the candidate rules, arguments and time as recorded', async () => {
    const pay = { upstream: 'api', method: 'POST', path: '/v1/pay', tool: 'api.pay' };
    expect(await replayOne(recorded({ ...pay, args: { amount: 5n } }))).toEqual({ kind: 'replayed', from: { effect: 'allow', rules: ['old'] }, to: { effect: 'allow', rules: ['small-pay'] } });
    expect(await replayOne(recorded({ ...pay, args: { amount: 50n } }))).toMatchObject({ kind: 'replayed', to: { effect: 'deny', rules: ['default-deny'] } });
  });

  it('is not replayable, saying why, when the record cannot tell what the candidate reads', async () => {
    const pay = { upstream: 'api', method: 'POST', path: '/v1/pay', tool: 'api.pay', args: { amount: 5n } };
    expect(await replayOne(recorded(pay, { argsRead: false }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('arguments were not read when recorded') });
    expect(await replayOne(recorded({ ...pay, args: {} }, { argsOmitted: true }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('larger than 64 KiB') });
    // The route maps to a tool now that it did not map to when recorded.
    expect(await replayOne(recorded({ ...pay, tool: undefined }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('another tool') });
    // ...which does not apply to MCP messages, whose tool comes from the message.
    expect(await replayOne(recorded({ upstream: 'plain', tool: 'plain.x' }), { rpc: '{"method":"tools/call"}' })).toMatchObject({ kind: 'replayed', to: { effect: 'allow' } });
    expect(await replayOne(recorded({ upstream: 'hist' }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('no history was recorded') });
    expect(await replayOne(new ValetError('VALET_ERR_AUDIT_FACTS_UNREADABLE', 'sealed under another key'))).toEqual({ kind: 'not_replayable', reason: 'sealed under another key' });
    expect(await replayOne(recorded({}), { facts: null })).toEqual({ kind: 'not_replayable', reason: expect.stringMatching(/^no facts recorded/) });
    expect(await replayOne(recorded({}), { decision: null, facts: null })).toEqual({ kind: 'undecided' });
    // Arguments not read do not matter where the candidate does not read them.
    expect(await replayOne(recorded({ upstream: 'plain' }, { argsRead: false, argsOmitted: true }))).toMatchObject({ kind: 'replayed', to: { effect: 'allow', rules: ['plain-reads'] } });
  });

  it('uses the recorded history and context; looks up a context the record lacks', async () => {
    const first = { calls_last_hour: 0n, calls_last_day: 0n, first_use: true };
    expect(await replayOne(recorded({ upstream: 'hist' }, { input: { history: first } }))).toMatchObject({ to: { effect: 'deny', rules: ['hist-first'] } });
    expect(await replayOne(recorded({ upstream: 'hist' }, { input: { history: { ...first, first_use: false } } }))).toMatchObject({ to: { effect: 'allow', rules: ['hist-allow'] } });
    // Recorded: wins over the candidate's file. Not recorded: looked up in it.
    expect(await replayOne(recorded({ upstream: 'ctx', path: '/mine' }, { input: { context: { owner: 'someone-else' } } }))).toMatchObject({ to: { effect: 'deny' } });
    expect(await replayOne(recorded({ upstream: 'ctx', path: '/mine' }))).toMatchObject({ to: { effect: 'allow', rules: ['ctx-owner'] } });
  });

  it("uses the recorded session marks for the candidate's call sequences; not replayable when they were not read", async () => {
    const merge = { upstream: 'api', method: 'POST', path: '/v1/merge', tool: 'api.merge' };
    const identity = { ...recorded({}).input.identity, session: 'run-1' };
    const session = (at: number | null) => ({ set: { 'ok api.review': at }, now: 1_795_950_978_000 });
    expect(await replayOne(recorded(merge, { input: { identity, session: session(1_795_950_970_000) } }))).toMatchObject({ to: { effect: 'allow', rules: ['merge-after-review'] } });
    expect(await replayOne(recorded(merge, { input: { identity, session: session(null) } }))).toMatchObject({ to: { effect: 'deny', rules: ['merge-after-review'] } });
    expect(await replayOne(recorded(merge, { input: { identity } }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('sequence rule') });
    expect(await replayOne(recorded(merge, { input: { identity, session: { set: { 'called other.tool': 1 }, now: 1 } } }))).toEqual({ kind: 'not_replayable', reason: expect.stringContaining('sequence rule') });
  });

  it("the gateway's own refusals under the candidate: an upstream it lacks, an identity its registry refuses", async () => {
    expect(await replayOne(recorded({ upstream: 'gone' }))).toMatchObject({ to: { effect: 'deny', rules: ['VALET_ERR_UNKNOWN_UPSTREAM'] } });
    const identity = { ...recorded({}).input.identity, agent: 'registered', tenant: 'globex' };
    expect(await replayOne(recorded({ upstream: 'plain' }, { input: { identity } }))).toMatchObject({ to: { effect: 'deny', rules: ['VALET_ERR_IDENTITY_REFUSED'] } });
  });
});

describe('the replay report', () => {
  const v = (effect: 'allow' | 'deny' | 'escalate', ...rules: string[]) => ({ effect, rules });
  const tally = (): ReplayTally => {
    const t = new ReplayTally();
    const add = (n: number, from: ReturnType<typeof v>, to: ReturnType<typeof v>, r: Partial<ReplayRow> = {}): void => {
      for (let i = 0; i < n; i++) t.add(row(r), { kind: 'replayed', from, to });
    };
    add(5, v('allow', 'a'), v('allow', 'a'));
    add(2, v('deny', 'd'), v('allow', 'a'), { path: '/x|y<script>`*', agent: 'evil|agent\nnext' });
    add(2, v('allow', 'a'), v('deny', 'z'));
    add(1, v('deny', 'd'), v('escalate', 'e'));
    add(1, v('allow', 'a'), v('allow', 'b', 'a'));
    add(1, v('allow', 'a', 'b'), v('allow', 'b', 'a'));
    t.add(row(), { kind: 'not_replayable', reason: 'why' });
    t.add(row(), { kind: 'undecided' });
    return t;
  };

  it('counts changes, newly allowed ones and rule-only changes; sorts by count, then keys', () => {
    const r = tally().report({ candidate: 'sha256:c', since: 0, until: undefined, thresholds: {} });
    expect(r).toMatchObject({ considered: 14, replayed: 12, undecided: 1, changed: 5, widened: 3, rules_changed: 1, not_replayable: { count: 1 }, crossed: [] });
    expect(r.transitions).toEqual([
      { from: 'allow', to: 'deny', count: 2 },
      { from: 'deny', to: 'allow', count: 2 },
      { from: 'deny', to: 'escalate', count: 1 },
    ]);
    expect(r.changes.map((g) => g.count)).toEqual([2, 2, 1]);
    expect(r.rule_changes).toHaveLength(1);
    expect(widens('escalate', 'allow')).toBe(true);
    expect(widens('allow', 'escalate')).toBe(false);
  });

  it('thresholds: a count, a share of the replayed rows, newly allowed', () => {
    const crossed = (thresholds: Parameters<ReplayTally['report']>[0]['thresholds']) => tally().report({ candidate: 'c', since: undefined, until: undefined, thresholds }).crossed;
    expect(crossed({ maxChanged: { count: 5 }, maxWidened: 3 })).toEqual([]);
    expect(crossed({ maxChanged: { count: 4 } })).toEqual(['5 changed, more than --max-changed 4']);
    expect(crossed({ maxChanged: { percent: 50 } })).toEqual([]);
    expect(crossed({ maxChanged: { percent: 40 } })).toEqual(['41.7 % changed, more than --max-changed 40%']);
    expect(crossed({ maxWidened: 2 })).toEqual(['3 newly allowed, more than --max-widened 2']);
  });

  it('Markdown: agent-controlled text cannot close a cell, start markup or inject HTML; the table text is aligned', () => {
    const r = tally().report({ candidate: 'c', since: undefined, until: undefined, thresholds: { maxWidened: 0 } });
    const md = renderReplayMarkdown(r);
    expect(md).not.toContain('<script>');
    expect(md).not.toContain('x|y');
    expect(md).toContain('/x&#124;y&lt;script&gt;\\`\\*');
    expect(md).toContain('evil&#124;agent next');
    expect(md).toContain('**Verdict:** ❌ FAILED: 3 newly allowed, more than --max-widened 0');
    for (const line of md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| ---'))) expect(line.split(/(?<!\\)\|/).length, line).toBe(line.startsWith('| Reason') || line.startsWith('| why') ? 5 : line.startsWith('| From') || /^\| (allow|deny|escalate) \|/.test(line) ? 5 : 9);
    expect(renderReplayMarkdown(r)).toBe(md);
    const text = renderReplayTable(r);
    expect(text).toContain('FAILED: 3 newly allowed');
    expect(text).toMatch(/FROM +TO +REQUESTS\nallow +deny +2\n/);
  });
});
