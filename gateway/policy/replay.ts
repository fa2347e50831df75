import type { Config } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { Effect } from '../types.js';
import { compilePolicy, type EvaluationInput, type Policy } from './compile.js';
import type { HistoryStore } from './counters.js';
import { memoryCounterStore } from './counters.js';
import type { RecordedFacts } from './facts.js';
import type { SessionStore } from './sessions.js';

/**
 * `valet policy replay`: recorded decisions decided again under a candidate policy, and the
 * difference, counted and rendered. Pure: rows come in, a report comes out; the CLI reads the audit
 * log and opens the sealed facts (gateway/cli/replay.ts).
 *
 * The baseline is what the rules in force decided, as recorded with the facts; the candidate's rules
 * decide the recorded input again. Rate limits and budgets are not charged: replay compares rules.
 */

/** What replay reads of an audit row (an AuditRow has all of it). */
export interface ReplayRow {
  readonly id: number;
  readonly ts: number;
  readonly request_id: string;
  readonly agent: string | null;
  readonly tenant: string | null;
  readonly upstream: string | null;
  readonly tool: string | null;
  readonly method: string;
  readonly path: string;
  readonly decision: string | null;
  /** Set for MCP messages: their tool comes from the message, not from a route. */
  readonly rpc: string | null;
  readonly facts: string | null;
}

/** An effect and the rules that produced it. */
export interface Verdict {
  readonly effect: Effect;
  readonly rules: readonly string[];
}

/** One row's replay: decided again (from the recorded rules' decision to the candidate's), or why it could not be. */
export type ReplayOutcome =
  | { readonly kind: 'replayed'; readonly from: Verdict; readonly to: Verdict }
  | { readonly kind: 'undecided' }
  | { readonly kind: 'not_replayable'; readonly reason: string };

/** A request shown as an example of a change. */
export interface ReplayExample {
  readonly request_id: string;
  readonly time: string;
  readonly agent: string | null;
  readonly tenant: string | null;
  readonly upstream: string | null;
  readonly method: string;
  readonly path: string;
  readonly tool: string | null;
}

/** Requests that went from one verdict to another. */
export interface ReplayGroup {
  readonly from: Verdict;
  readonly to: Verdict;
  readonly count: number;
  /** The first {@link MAX_EXAMPLES}, newest first. */
  readonly examples: readonly ReplayExample[];
}

export interface ReplayTransition {
  readonly from: Effect;
  readonly to: Effect;
  readonly count: number;
}

/** Thresholds a replay is held to: more changes than these fail it. */
export interface ReplayThresholds {
  /** Changed rows, as a number, or as a percentage of the replayed rows. */
  readonly maxChanged?: { readonly count: number } | { readonly percent: number } | undefined;
  /** Changes that newly allow: deny or escalate → allow, deny → escalate. */
  readonly maxWidened?: number | undefined;
}

export interface ReplayReport {
  readonly candidate: string;
  readonly window: { readonly since: string | null; readonly until: string | null };
  /** Rows read from the audit log (window and filters). */
  readonly considered: number;
  /** Rows decided again. */
  readonly replayed: number;
  /** Rows refused before the rules ran (no token, unknown upstream...): no decision to replay. */
  readonly undecided: number;
  readonly not_replayable: { readonly count: number; readonly reasons: readonly { readonly reason: string; readonly count: number; readonly example: string }[] };
  /** Replayed rows whose effect changed. */
  readonly changed: number;
  /** Changed rows that the candidate allows more: deny/escalate → allow, deny → escalate. */
  readonly widened: number;
  /** Replayed rows whose effect stayed and whose deciding rules changed. */
  readonly rules_changed: number;
  readonly transitions: readonly ReplayTransition[];
  /** Effect changes, grouped by (from effect and rules → to effect and rules), most frequent first. */
  readonly changes: readonly ReplayGroup[];
  /** Same effect, other rules, grouped the same way. */
  readonly rule_changes: readonly ReplayGroup[];
  /** The thresholds crossed, in words; empty when within them. */
  readonly crossed: readonly string[];
  readonly thresholds: { readonly max_changed: string | null; readonly max_widened: number | null };
}

export const MAX_EXAMPLES = 3;

/** The history store replay compiles the candidate with: it tells which requests a `history` condition may read (see {@link replayer}). */
function replayHistory(): HistoryStore {
  const none = (): never => {
    throw new Error('history is taken from the recorded facts');
  };
  return { shared: true, record: () => undefined, summary: none, read: async () => ({ summary: { calls_last_hour: 0n, calls_last_day: 0n, first_use: true }, version: '' }) };
}

/**
 * The session store replay compiles the candidate with: reading tells which session marks the
 * candidate's sequence rules ask about for a request (the names are kept in `asked`); the marks
 * themselves come from the recorded facts.
 */
function replaySessions(): SessionStore & { asked: readonly string[] } {
  const store = {
    shared: true,
    asked: [] as readonly string[],
    read: async (_session: string, names: readonly string[], now: number) => {
      store.asked = names;
      return { set: {}, now };
    },
    mark: () => undefined,
  };
  return store;
}

/**
 * Decides recorded rows again under `candidate` (a loaded configuration; compiled here with counters
 * of its own, never charged). `open` gives a row's recorded facts, or throws a ValetError saying why
 * it cannot (no key, another key, altered).
 */
export function replayer(candidate: Config, open: (row: ReplayRow) => RecordedFacts): { readonly version: string; replay(row: ReplayRow): Promise<ReplayOutcome> } {
  const sessions = replaySessions();
  const policy = compilePolicy(candidate, { counters: memoryCounterStore(), history: replayHistory(), sessions });
  return {
    version: policy.version,
    async replay(row) {
      if (row.decision === null) return { kind: 'undecided' };
      if (row.facts === null) return { kind: 'not_replayable', reason: 'no facts recorded (written before facts were recorded, or by a gateway without a master key)' };
      let recorded: RecordedFacts;
      try {
        recorded = open(row);
      } catch (err) {
        if (err instanceof ValetError) return { kind: 'not_replayable', reason: err.message };
        throw err;
      }
      try {
        return { kind: 'replayed', from: recorded.decision, to: await decide(policy, candidate, sessions, row, recorded) };
      } catch (err) {
        if (err instanceof NotReplayable) return { kind: 'not_replayable', reason: err.message };
        throw err;
      }
    },
  };
}

/** The candidate's verdict on recorded facts; throws {@link NotReplayable} when the record cannot tell it. */
async function decide(policy: Policy, candidate: Pick<Config, 'upstreams' | 'contexts'>, sessions: { readonly asked: readonly string[] }, row: ReplayRow, recorded: RecordedFacts): Promise<Verdict> {
  const { input } = recorded;
  const facts = input.facts;
  // The candidate has no such upstream: the gateway would refuse the request before any rule (404).
  if (!candidate.upstreams.has(facts.upstream)) return { effect: 'deny', rules: ['VALET_ERR_UNKNOWN_UPSTREAM'] };
  let identity: EvaluationInput['identity'];
  try {
    identity = policy.resolveIdentity(input.identity);
  } catch (err) {
    // The candidate's agent registry refuses the identity: nothing would be decided or forwarded.
    if (err instanceof ValetError && err.code === 'VALET_ERR_IDENTITY_REFUSED') return { effect: 'deny', rules: [err.code] };
    throw err;
  }
  // A route: the tool (and so the arguments' names and types) is the one the set in force matched.
  if (row.rpc === null && (policy.matchTool(facts.upstream, facts.method, facts.path)?.tool.name ?? undefined) !== facts.tool) {
    throw new NotReplayable('the candidate maps the route to another tool (its arguments were read for the recorded one)');
  }
  if (policy.readsArgs(facts.upstream)) {
    if (recorded.argsOmitted) throw new NotReplayable('the arguments were larger than 64 KiB and not recorded, and the candidate reads arguments');
    if (!recorded.argsRead) throw new NotReplayable('the arguments were not read when recorded (no rule of the set in force read them), and the candidate reads them');
  }
  const base = {
    identity,
    facts,
    environment: input.environment,
    now: input.now,
    ...(input.history !== undefined && { history: input.history }),
    ...(input.session !== undefined && { session: input.session }),
  };
  if (input.history === undefined && policy.resolveHistory(base) !== undefined) {
    throw new NotReplayable('a history condition of the candidate applies and no history was recorded');
  }
  // A sequence rule of the candidate applies: the session marks it asks about must all have been read when recorded.
  if (policy.resolveSession(base) !== undefined && sessions.asked.some((name) => input.session?.set[name] === undefined)) {
    throw new NotReplayable("a sequence rule of the candidate asks about earlier calls of the session that were not recorded");
  }
  // Recorded context values win; a context of the candidate that the record lacks is looked up now.
  let context = input.context;
  const wanted = candidate.contexts.filter((c) => (c.upstream === undefined || c.upstream === facts.upstream) && (c.tools === undefined || (facts.tool !== undefined && c.tools.includes(facts.tool))));
  if (wanted.some((c) => !(c.name in context))) context = { ...(await policy.resolveContext(base)), ...context };
  const decision = policy.evaluate({ ...input, ...base, context });
  return { effect: decision.effect, rules: decision.rules };
}

/** A row that cannot be decided again, and why. */
class NotReplayable extends Error {}

/** Whether going from `from` to `to` lets more through. */
export function widens(from: Effect, to: Effect): boolean {
  return (to === 'allow' && from !== 'allow') || (from === 'deny' && to === 'escalate');
}

const sameRules = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && [...a].sort().join('\n') === [...b].sort().join('\n');
const groupKey = (from: Verdict, to: Verdict): string => JSON.stringify([from.effect, from.rules, to.effect, to.rules]);

/** Adds up replay outcomes into a {@link ReplayReport}; deterministic for the same rows in the same order. */
export class ReplayTally {
  private considered = 0;
  private replayed = 0;
  private undecided = 0;
  private readonly notReplayable = new Map<string, { count: number; example: string }>();
  private readonly transitions = new Map<string, ReplayTransition>();
  private readonly changes = new Map<string, { from: Verdict; to: Verdict; count: number; examples: ReplayExample[] }>();
  private readonly ruleChanges = new Map<string, { from: Verdict; to: Verdict; count: number; examples: ReplayExample[] }>();
  private widened = 0;

  add(row: ReplayRow, outcome: ReplayOutcome): void {
    this.considered++;
    if (outcome.kind === 'undecided') {
      this.undecided++;
      return;
    }
    if (outcome.kind === 'not_replayable') {
      const r = this.notReplayable.get(outcome.reason);
      if (r === undefined) this.notReplayable.set(outcome.reason, { count: 1, example: row.request_id });
      else r.count++;
      return;
    }
    this.replayed++;
    const { from, to } = outcome;
    let groups: Map<string, { from: Verdict; to: Verdict; count: number; examples: ReplayExample[] }>;
    if (from.effect !== to.effect) {
      const key = `${from.effect} ${to.effect}`;
      const t = this.transitions.get(key);
      this.transitions.set(key, { from: from.effect, to: to.effect, count: (t?.count ?? 0) + 1 });
      if (widens(from.effect, to.effect)) this.widened++;
      groups = this.changes;
    } else if (!sameRules(from.rules, to.rules)) {
      groups = this.ruleChanges;
    } else return;
    const key = groupKey(from, to);
    let g = groups.get(key);
    if (g === undefined) groups.set(key, (g = { from: { effect: from.effect, rules: [...from.rules] }, to: { effect: to.effect, rules: [...to.rules] }, count: 0, examples: [] }));
    g.count++;
    if (g.examples.length < MAX_EXAMPLES) g.examples.push(exampleOf(row));
  }

  /** The report, with the thresholds it is held to. */
  report(o: { candidate: string; since: number | undefined; until: number | undefined; thresholds: ReplayThresholds }): ReplayReport {
    const changed = [...this.changes.values()].reduce((n, g) => n + g.count, 0);
    const rulesChanged = [...this.ruleChanges.values()].reduce((n, g) => n + g.count, 0);
    const byCount = <T extends { count: number }>(key: (t: T) => string) => (a: T, b: T): number => b.count - a.count || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);
    const groups = (m: Map<string, { from: Verdict; to: Verdict; count: number; examples: ReplayExample[] }>): ReplayGroup[] =>
      [...m.values()].sort(byCount((g) => groupKey(g.from, g.to)));
    const crossed: string[] = [];
    const t = o.thresholds;
    if (t.maxChanged !== undefined) {
      if ('count' in t.maxChanged && changed > t.maxChanged.count) crossed.push(`${changed} changed, more than --max-changed ${t.maxChanged.count}`);
      if ('percent' in t.maxChanged && changed > 0 && (changed * 100) / Math.max(this.replayed, 1) > t.maxChanged.percent) {
        crossed.push(`${percent(changed, this.replayed)} changed, more than --max-changed ${t.maxChanged.percent}%`);
      }
    }
    if (t.maxWidened !== undefined && this.widened > t.maxWidened) crossed.push(`${this.widened} newly allowed, more than --max-widened ${t.maxWidened}`);
    return {
      candidate: o.candidate,
      window: { since: o.since === undefined ? null : new Date(o.since).toISOString(), until: o.until === undefined ? null : new Date(o.until).toISOString() },
      considered: this.considered,
      replayed: this.replayed,
      undecided: this.undecided,
      not_replayable: {
        count: [...this.notReplayable.values()].reduce((n, r) => n + r.count, 0),
        reasons: [...this.notReplayable].map(([reason, r]) => ({ reason, count: r.count, example: r.example })).sort(byCount((r) => r.reason)),
      },
      changed,
      widened: this.widened,
      rules_changed: rulesChanged,
      transitions: [...this.transitions.values()].sort(byCount((x) => `${x.from} ${x.to}`)),
      changes: groups(this.changes),
      rule_changes: groups(this.ruleChanges),
      crossed,
      thresholds: {
        max_changed: t.maxChanged === undefined ? null : 'count' in t.maxChanged ? String(t.maxChanged.count) : `${t.maxChanged.percent}%`,
        max_widened: t.maxWidened ?? null,
      },
    };
  }
}

function exampleOf(r: ReplayRow): ReplayExample {
  return { request_id: r.request_id, time: new Date(r.ts).toISOString(), agent: r.agent, tenant: r.tenant, upstream: r.upstream, method: r.method, path: r.path, tool: r.tool };
}

/** `n` of `of` as a percentage with one decimal (`0 %` of nothing). */
export function percent(n: number, of: number): string {
  return `${of === 0 ? 0 : Math.round((n * 1000) / of) / 10} %`;
}

// ---------------------------------------------------------------------------------------------
// rendering

const verdictText = (v: Verdict): string => `${v.effect} by ${v.rules.join(', ')}`;
const arrow = '→';

/** Columns padded to their widest cell, two spaces apart; control characters (a terminal's escapes) shown as `?`. */
function aligned(cells: readonly (readonly string[])[], indent = ''): string {
  const rows = cells.map((r) => r.map((c) => c.replace(/[\x00-\x1f\x7f-\x9f]/g, '?')));
  const widths = (rows[0] ?? []).map((_c, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => `${indent}${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ')}`.trimEnd()).join('\n');
}

/** One line on the thresholds: crossed (which), within, or none set. */
export function verdictLine(r: ReplayReport): string {
  if (r.crossed.length > 0) return `FAILED: ${r.crossed.join('; ')}`;
  const set = [r.thresholds.max_changed === null ? '' : `--max-changed ${r.thresholds.max_changed}`, r.thresholds.max_widened === null ? '' : `--max-widened ${r.thresholds.max_widened}`].filter(Boolean);
  return set.length === 0 ? 'ok: no thresholds set' : `ok: within ${set.join(', ')}`;
}

function summaryLine(r: ReplayReport): string {
  return (
    `${r.considered} recorded request(s) considered, ${r.replayed} replayed: ${r.changed} changed (${percent(r.changed, r.replayed)}), ${r.widened} newly allowed; ` +
    `${r.rules_changed} decided by other rules with the same effect; ${r.not_replayable.count} not replayable; ${r.undecided} refused before the rules ran`
  );
}

function windowText(r: ReplayReport): string {
  return `${r.window.since ?? 'the first row'} to ${r.window.until ?? 'now'}`;
}

/** Aligned plain text for a terminal. */
export function renderReplayTable(r: ReplayReport): string {
  const out: string[] = [`candidate ${r.candidate}, requests recorded from ${windowText(r)}`, summaryLine(r)];
  if (r.transitions.length > 0) out.push('', aligned([['FROM', 'TO', 'REQUESTS'], ...r.transitions.map((t) => [t.from, t.to, String(t.count)])]));
  const groups = (title: string, list: readonly ReplayGroup[]): void => {
    if (list.length === 0) return;
    out.push('', title);
    for (const g of list) {
      out.push(`  ${verdictText(g.from)} ${arrow} ${verdictText(g.to)}: ${g.count}`);
      out.push(aligned([['REQUEST', 'TIME', 'AGENT', 'TENANT', 'METHOD', 'PATH', 'TOOL'], ...g.examples.map((e) => [e.request_id, e.time, e.agent ?? '-', e.tenant ?? '-', e.method, `/${e.upstream ?? '-'}${e.path}`, e.tool ?? '-'])], '    '));
    }
  };
  groups('CHANGED', r.changes);
  groups('SAME EFFECT, OTHER RULES', r.rule_changes);
  if (r.not_replayable.reasons.length > 0) {
    out.push('', 'NOT REPLAYABLE', aligned([['REQUESTS', 'EXAMPLE', 'REASON'], ...r.not_replayable.reasons.map((x) => [String(x.count), x.example, x.reason])], '  '));
  }
  out.push('', verdictLine(r));
  return `${out.join('\n')}\n`;
}

/** Text in a Markdown table cell or a summary line: nothing in it can close the cell, start markup or inject HTML. */
function md(text: string | null): string {
  if (text === null || text === '') return '–';
  // Markdown's escapes first: the entities written next hold `&`, `#` and `;`, which must stay as they are.
  return text
    .replace(/[\\`*_[\]~]/g, (c) => `\\${c}`)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/\|/g, '&#124;')
    .replace(/[\r\n]+/g, ' ');
}

/** Text inside HTML (a `<summary>`: Markdown is not read there, so only HTML escapes apply). */
const html = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const htmlVerdict = (v: Verdict): string => `<b>${v.effect}</b> (${v.rules.map((r) => `<code>${html(r)}</code>`).join(', ')})`;

/** A Markdown document for a pull-request comment: summary, transitions, one collapsed section per group, the verdict. */
export function renderReplayMarkdown(r: ReplayReport): string {
  const out: string[] = [`## Policy replay: ${md(r.candidate)}`, '', `Requests recorded from ${md(windowText(r))}, decided again by the candidate's rules.`, '', `${summaryLine(r)}.`];
  if (r.transitions.length > 0) {
    out.push('', '| From | To | Requests |', '| --- | --- | ---: |', ...r.transitions.map((t) => `| ${t.from} | ${t.to} | ${t.count} |`));
  }
  const groups = (title: string, list: readonly ReplayGroup[]): void => {
    if (list.length === 0) return;
    out.push('', `### ${title}`);
    for (const g of list) {
      out.push(
        '',
        '<details>',
        `<summary>${htmlVerdict(g.from)} ${arrow} ${htmlVerdict(g.to)}: ${g.count} request(s)</summary>`,
        '',
        '| Request | Time | Agent | Tenant | Method | Path | Tool |',
        '| --- | --- | --- | --- | --- | --- | --- |',
        ...g.examples.map((e) => `| ${md(e.request_id)} | ${md(e.time)} | ${md(e.agent)} | ${md(e.tenant)} | ${md(e.method)} | ${md(`/${e.upstream ?? ''}${e.path}`)} | ${md(e.tool)} |`),
        '',
        '</details>',
      );
    }
  };
  groups('Changed', r.changes);
  groups('Same effect, other rules', r.rule_changes);
  if (r.not_replayable.reasons.length > 0) {
    out.push('', '### Not replayable', '', '| Reason | Requests | Example |', '| --- | ---: | --- |', ...r.not_replayable.reasons.map((x) => `| ${md(x.reason)} | ${x.count} | ${md(x.example)} |`));
  }
  out.push('', `**Verdict:** ${r.crossed.length > 0 ? '❌' : '✅'} ${md(verdictLine(r))}`);
  return `${out.join('\n')}\n`;
}

/** The report as JSON (two-space indented). */
export function renderReplayJson(r: ReplayReport): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
