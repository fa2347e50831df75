import { stringify } from 'csv-stringify/sync';
import { SPEND_KEYS, type SpendKey, type SpendRow } from '../audit/port.js';
import { budgetSpend, perTenant, publicBudget, publicSpend, type BudgetSpend } from '../audit/spend.js';
import { loadConfig } from '../config/load.js';
import { shippedPrices } from '../llm/prices.js';
import { configDirOf, formatTable, openLog, out, parse, parseTime } from './audit.js';
import { UsageError } from './usage.js';

export const SPEND_USAGE = `  valet usage [--since 7d] [--until T] [--by agent|team|tenant|user|model|upstream] [--tenant T] [--format table|json|csv]
                                           LLM calls, tokens (input, cached, cache writes, output, reasoning) and cost per group
  valet usage --budgets [--tenant T] [--format table|json|csv]
                                           each usage budget's counters: settled spend over its window and percent of its limit`;

/** Groups `valet usage` returns at most, the costliest first. */
const MAX_ROWS = 10_000;
const FORMATS = ['table', 'json', 'csv'] as const;
type Format = (typeof FORMATS)[number];

/**
 * `valet usage`: what metered LLM calls spent, from the audit log (read as `valet audit` reads
 * it: SQLite in the data directory, or PostgreSQL), per agent, team, tenant, user, model or
 * upstream; with `--budgets`, the usage budgets of the configuration and what their counters
 * settled to over their windows (as `GET /api/budgets`).
 */
export async function usageCommand(args: string[]): Promise<void> {
  const { values } = parse(args, {
    since: { type: 'string' },
    until: { type: 'string' },
    by: { type: 'string' },
    tenant: { type: 'string' },
    format: { type: 'string', default: 'table' },
    budgets: { type: 'boolean' },
  });
  const format = values.format;
  if (!(FORMATS as readonly string[]).includes(format)) throw new UsageError(`--format must be ${FORMATS.join(', ')}`);
  if (values.budgets) {
    if (values.since !== undefined || values.until !== undefined || values.by !== undefined) throw new UsageError('--budgets reads each budget over its own window: --since, --until and --by do not apply');
    return budgets(values, format as Format);
  }
  const by = (values.by ?? 'agent') as SpendKey;
  if (!SPEND_KEYS.includes(by)) throw new UsageError(`--by must be one of ${SPEND_KEYS.join(', ')}`);
  const sinceMs = parseTime(values.since ?? '7d', 'since');
  const untilMs = values.until === undefined ? undefined : parseTime(values.until, 'until');
  if (untilMs !== undefined && sinceMs >= untilMs) throw new UsageError('--since must be before --until');
  const split = perTenant(by);
  const log = await openLog(values, { readonly: true });
  let rows: SpendRow[];
  let total: SpendRow | undefined;
  try {
    const q = { sinceMs, untilMs, tenant: values.tenant };
    rows = await log.spend({ ...q, by, perTenant: split, limit: MAX_ROWS });
    if (format === 'table') total = (await log.spend({ ...q, limit: 1 }))[0];
  } finally {
    await log.close();
  }
  const currency = shippedPrices().currency;
  if (format === 'json') {
    out(JSON.stringify({ currency, by, since: new Date(sinceMs).toISOString(), until: untilMs === undefined ? null : new Date(untilMs).toISOString(), rows: rows.map(publicSpend) }, null, 2));
  } else if (format === 'csv') {
    process.stdout.write(stringify(rows.map(publicSpend), { header: true, columns: ['key', ...(split ? ['tenant'] : []), 'calls', 'tokens', 'input', 'cached', 'cache_write', 'output', 'reasoning', 'cost'], cast: { number: String } }));
  } else {
    const cells = [...rows, ...(total === undefined ? [] : [{ ...total, key: 'TOTAL', ...(split && { tenant: '' }) }])].map((r) => [
      r.key ?? '-',
      ...(split ? [r.tenant ?? '-'] : []),
      ...[r.calls, r.tokens, r.input, r.cached, r.cacheWrite, r.output, r.reasoning].map(String),
      r.cost.toFixed(6),
    ]);
    out(formatTable([by.toUpperCase(), ...(split ? ['TENANT'] : []), 'CALLS', 'TOKENS', 'INPUT', 'CACHED', 'CACHE_WRITE', 'OUTPUT', 'REASONING', `COST (${currency})`], cells));
  }
  if (rows.length === MAX_ROWS) process.stderr.write(`(only the ${MAX_ROWS} costliest groups are shown)\n`);
}

/** A counter's name in the table: its id, or what a null one stands for. */
function counterName(b: BudgetSpend, key: string | null): string {
  if (key !== null) return key;
  if (!b.perCounter) return '(all)';
  return b.key === 'global' ? '(global)' : `(no ${b.key})`;
}

const BUDGET_COLUMNS = ['budget', 'usage', 'key', 'limit', 'since', 'counter', 'tenant', 'used', 'percent'];

async function budgets(values: { config?: string | undefined; data?: string | undefined; tenant?: string | undefined }, format: Format): Promise<void> {
  const config = loadConfig(configDirOf(values.config));
  const log = await openLog(values, { readonly: true });
  let spend: BudgetSpend[];
  try {
    spend = await budgetSpend(log, config.budgets, { now: Date.now(), tenant: values.tenant });
  } finally {
    await log.close();
  }
  const currency = shippedPrices().currency;
  if (format === 'json') {
    out(JSON.stringify({ currency, budgets: spend.map(publicBudget) }, null, 2));
    return;
  }
  // One line per counter; a percent is left empty where the amount adds up several counters.
  const lines = spend.flatMap((b) => {
    const head = [b.id, b.usage === 'cost' ? `cost (${currency})` : 'tokens', b.key, String(b.limit), new Date(b.sinceMs).toISOString()];
    if (b.counters.length === 0) return [[...head, '(no calls)', '', '0', '0']];
    return b.counters.map((c) => [...head, counterName(b, c.key), c.tenant ?? '', b.usage === 'cost' ? c.used.toFixed(6) : String(c.used), c.percent === null ? '' : String(c.percent)]);
  });
  if (format === 'csv') process.stdout.write(stringify([BUDGET_COLUMNS, ...lines]));
  else out(formatTable(BUDGET_COLUMNS.map((c) => c.toUpperCase()), lines));
  if (spend.length === 0) process.stderr.write('no usage budgets are configured\n');
}
