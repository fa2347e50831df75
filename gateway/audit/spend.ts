import type { BudgetConfig, Scope } from '../config/types.js';
import type { AuditLog, SpendKey, SpendRow } from './port.js';

/** The counters reported for one budget at most (the fullest first). */
const MAX_COUNTERS = 1_000;

/** Budget keys whose counters the audit log tells apart (a column of its own); the others are reported as their total. */
const COUNTED: Readonly<Record<string, SpendKey>> = { agent: 'agent', team: 'team', tenant: 'tenant', user: 'user', upstream: 'upstream' };

/** Whether ids of this kind are a tenant's own (agents, teams, users), so that spend by them is also split per tenant: two tenants' "bot" are two rows. */
export const perTenant = (by: SpendKey): boolean => by === 'agent' || by === 'team' || by === 'user';

/** A spend row as the admin API and `valet usage` write it (snake_case, as audit rows are): the tenant only when grouped per tenant. */
export function publicSpend(r: SpendRow): Record<string, string | number | null> {
  return {
    key: r.key,
    ...(r.tenant !== undefined && { tenant: r.tenant }),
    calls: r.calls,
    tokens: r.tokens,
    cost: r.cost,
    input: r.input,
    cached: r.cached,
    cache_write: r.cacheWrite,
    output: r.output,
    reasoning: r.reasoning,
  };
}

/** One counter of a usage budget, as the audit log shows it: what the calls in its window settled to. */
export interface CounterSpend {
  /**
   * The counter's agent, team, tenant, user or upstream; null for a `global` budget's one counter,
   * the total of a budget whose counters the log cannot tell apart, or (team, user) the calls of
   * agents without one, each of which spends a counter of its own.
   */
  readonly key: string | null;
  /** Every counter but a `global` one is a tenant's own. */
  readonly tenant: string | null;
  /** Tokens, or cost in the price table's currency. */
  readonly used: number;
  /** `used` as a percentage of the limit (two decimals); null when `used` adds up several counters. */
  readonly percent: number | null;
}

/** A usage budget with the settled spend of its counters over its current window. */
export interface BudgetSpend {
  readonly id: string;
  readonly usage: 'tokens' | 'cost';
  /** The counter key: `agent`, `team`, `tenant`, `user`, `session`, `upstream`, `tool`, `global`, or `cel`. */
  readonly key: string;
  readonly windowMs: number;
  readonly limit: number;
  readonly scope: Scope | undefined;
  readonly upstream: string | undefined;
  /** Calls made since then (ms) are in the window. */
  readonly sinceMs: number;
  /** False for session, tool and CEL keys: the one counter reported is the total of all of them. */
  readonly perCounter: boolean;
  /**
   * The budget also matches on tools, methods, paths, roles, environments or a condition, which
   * the audit log cannot replay: every metered call in its scope is counted, so its counters may hold less.
   */
  readonly approximate: boolean;
  readonly counters: readonly CounterSpend[];
}

/**
 * The usage budgets among `budgets`, each with what its counters hold now according to the audit
 * log: the settled usage (tokens, or cost) of the metered calls in its window (`now - window` to
 * now), narrowed to its scope and upstream, grouped by its key. The counters themselves may differ
 * a little: they hold reservations of calls still running, and a charge leaves them up to a slot
 * (1/60 of the window) after it leaves the window.
 *
 * With `tenant` (a tenant admin's view), budgets scoped to other tenants are left out and only the
 * tenant's calls are counted: a `global` budget then shows the tenant's share of it.
 */
export async function budgetSpend(log: AuditLog, budgets: readonly BudgetConfig[], o: { now: number; tenant?: string | undefined }): Promise<BudgetSpend[]> {
  const out: BudgetSpend[] = [];
  for (const b of budgets) {
    if (b.usage === undefined) continue;
    if (o.tenant !== undefined && b.scope?.tenant !== undefined && b.scope.tenant !== o.tenant) continue;
    const key = typeof b.key === 'string' ? b.key : 'cel';
    const by = COUNTED[key];
    const perCounter = by !== undefined || key === 'global';
    const sinceMs = o.now - b.windowMs;
    const rows = await log.spend({
      sinceMs,
      tenant: o.tenant ?? b.scope?.tenant,
      team: b.scope?.team,
      agent: b.scope?.agent,
      upstream: b.upstream,
      by,
      perTenant: by !== undefined,
      limit: MAX_COUNTERS,
    });
    const usage = b.usage;
    const counters = rows.map((r): CounterSpend => {
      const used = usage === 'tokens' ? r.tokens : r.cost;
      // Agents without a team (or user) spend a counter each: their sum is no one counter's level.
      const single = perCounter && !(r.key === null && (by === 'team' || by === 'user'));
      return { key: r.key, tenant: r.tenant ?? null, used, percent: single ? Math.round((used / b.limit) * 10_000) / 100 : null };
    });
    // The log orders by cost; a token budget's fullest counters come first too.
    counters.sort((x, y) => y.used - x.used);
    const approximate = [b.tools, b.methods, b.paths, b.roles, b.environments, b.when].some((m) => m !== undefined);
    out.push({ id: b.id, usage, key, windowMs: b.windowMs, limit: b.limit, scope: b.scope, upstream: b.upstream, sinceMs, perCounter, approximate, counters });
  }
  return out;
}

/** A budget's spend as the admin API and `valet usage --budgets --format json` write it. */
export function publicBudget(b: BudgetSpend): Record<string, unknown> {
  return {
    id: b.id,
    usage: b.usage,
    key: b.key,
    window_s: b.windowMs / 1000,
    limit: b.limit,
    scope: b.scope ?? null,
    upstream: b.upstream ?? null,
    since_ms: b.sinceMs,
    per_counter: b.perCounter,
    approximate: b.approximate,
    counters: b.counters,
  };
}
