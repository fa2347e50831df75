import type { BudgetNotice } from '../approvals/notify.js';
import type { BudgetLevel } from '../policy/compile.js';

/** The levels at which a usage budget's counter is announced, in percent. */
export const THRESHOLDS: readonly number[] = [80, 100];

/** How many counters' last announced levels are remembered; past it the oldest are forgotten (at worst announced again). */
const REMEMBERED = 10_000;

export interface BudgetAlerts {
  /** Levels after a reservation or a settlement: announces each threshold a counter reached, once until it falls below 80 % again. */
  observe(levels: readonly BudgetLevel[]): void;
  /** A call the budget could not hold: the counter is as good as exhausted. */
  refused(level: BudgetLevel): void;
}

/**
 * Budget alerts through the notification channels (signed webhook, Slack). Each instance of a fleet
 * remembers what it announced, so a fleet may announce a threshold once per instance.
 */
export function budgetAlerts(notify: (notice: BudgetNotice) => void): BudgetAlerts {
  // Counter key → the highest threshold announced while it stayed above the lowest.
  const announced = new Map<string, number>();
  const announce = (l: BudgetLevel, threshold: number): void => {
    const id = `${l.windowMs} ${l.key}`;
    const before = announced.get(id) ?? 0;
    if (threshold <= before) return;
    announced.delete(id);
    if (announced.size >= REMEMBERED) announced.delete(announced.keys().next().value as string);
    announced.set(id, threshold);
    notify({ event: 'budget.threshold', budget: l.id, threshold, usage: l.usage, counter: counterOf(l.key), used: l.used, limit: l.limit, windowMs: l.windowMs });
  };
  return {
    observe(levels) {
      for (const l of levels) {
        const percent = l.limit > 0 ? (l.used / l.limit) * 100 : 100;
        const reached = THRESHOLDS.filter((t) => percent >= t).at(-1);
        if (reached === undefined) announced.delete(`${l.windowMs} ${l.key}`);
        else announce(l, reached);
      }
    },
    refused(level) {
      announce(level, 100);
    },
  };
}

/** A counter key's ids after the budget's own (`["budget", id, "team", tenant, team]` → `["team", tenant, team]`). */
function counterOf(key: string): unknown[] {
  try {
    const parts = JSON.parse(key) as unknown[];
    return parts.slice(2);
  } catch {
    return [];
  }
}
