import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { batchRefCounts, FactsOpener } from '../audit/facts.js';
import type { AuditLog } from '../audit/port.js';
import { loadConfig } from '../config/load.js';
import type { Environment } from '../config/types.js';
import { ConfigError, ValetError } from '../errors.js';
import { decodeFacts } from '../policy/facts.js';
import { renderReplayJson, renderReplayMarkdown, renderReplayTable, replayer, ReplayTally, type ReplayThresholds } from '../policy/replay.js';
import type { MasterKey } from '../secrets/crypto.js';
import { resolveMasterKey } from '../secrets/master-key.js';
import { configDirOf, openLog, parse, parseTime } from './audit.js';
import { gatewayEnvironment } from './environment.js';
import { UsageError } from './usage.js';

/**
 * `valet policy replay`: the recorded decisions of a time window decided again under a candidate
 * policy directory, and what would change. Reads the audit log a page at a time (newest first) and
 * opens each row's sealed facts with the master key the gateway uses (never generating one).
 * Exit 0 within the thresholds, 1 past one, 2 for a usage or configuration error.
 */

export const REPLAY_USAGE = `  valet policy replay --candidate DIR [--since 7d] [--until T] [--agent A] [--tenant T] [--upstream U] [--tool T] [--limit N]
                      [--format table|markdown|json] [--max-changed N|P%] [--max-widened N] [--env E]
                                           recorded decisions decided again by the candidate's rules: what changes; exit 1 past a threshold`;

const flags = {
  candidate: { type: 'string' },
  since: { type: 'string', default: '7d' },
  until: { type: 'string' },
  agent: { type: 'string' },
  tenant: { type: 'string' },
  upstream: { type: 'string' },
  tool: { type: 'string' },
  limit: { type: 'string' },
  format: { type: 'string', default: 'table' },
  'max-changed': { type: 'string' },
  'max-widened': { type: 'string' },
  env: { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

/** Rows read from the audit log at a time. */
const PAGE_ROWS = 500;

const env = process.env;

export async function replayCommand(args: string[]): Promise<void> {
  const { values } = parse(args, flags);
  if (values.candidate === undefined) throw new UsageError('valet policy replay needs --candidate DIR');
  const format = values.format;
  if (format !== 'table' && format !== 'markdown' && format !== 'json') throw new UsageError('--format must be table, markdown or json');
  const thresholds: ReplayThresholds = { maxChanged: maxChanged(values['max-changed']), maxWidened: count(values['max-widened'], 'max-widened') };
  const limit = count(values.limit, 'limit');
  if (limit === 0) throw new UsageError('--limit must be at least 1');
  const since = parseTime(values.since, 'since');
  const until = values.until === undefined ? undefined : parseTime(values.until, 'until');
  const environment = gatewayEnvironment(values.env, env);
  // From here on a failure is the configuration's or the deployment's, never a crossed threshold: exit 2.
  let opener: FactsOpener | undefined;
  // The stored batches of sealed facts the current page's rows refer to (read before the page is replayed).
  let batches = new Map<number, string>();
  let replay: ReturnType<typeof replayer>;
  try {
    // Loaded and compiled (CEL type-checked) as `valet start` would.
    replay = replayer(loadConfig(values.candidate, { environment }), (row) => {
      if (opener === undefined) throw new ValetError('VALET_ERR_MASTER_KEY', 'no master key to open the facts with (VALET_MASTER_KEY, VALET_MASTER_KEY_FILE, or <data>/master-key)');
      return decodeFacts(opener.open(row.request_id, row.facts as string));
    });
  } catch (err) {
    return fail(err, 'invalid candidate configuration');
  }
  let log: AuditLog | undefined;
  try {
    const key = factsKey(values.config, values.data, environment);
    if (key !== undefined) opener = new FactsOpener(key, (id) => batches.get(id));
    log = await openLog(values, { readonly: true });
    const tally = new ReplayTally();
    const filter = { agent: values.agent, tenant: values.tenant, upstream: values.upstream, tool: values.tool, sinceMs: since, untilMs: until };
    let left = limit ?? Number.POSITIVE_INFINITY;
    let before: number | undefined;
    while (left > 0) {
      const page = await log.page({ ...filter, limit: Math.min(PAGE_ROWS, left), order: 'desc', before });
      batches = await log.factsBatches([...batchRefCounts(page.rows).keys()]);
      for (const row of page.rows) tally.add(row, await replay.replay(row));
      left -= page.rows.length;
      if (page.next === null) break;
      before = page.next;
    }
    const report = tally.report({ candidate: replay.version, since, until, thresholds });
    process.stdout.write(format === 'markdown' ? renderReplayMarkdown(report) : format === 'json' ? renderReplayJson(report) : renderReplayTable(report));
    if (report.crossed.length > 0) process.exitCode = 1;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    return fail(err, undefined);
  } finally {
    await log?.close();
  }
}

/** Prints a failure that is not a crossed threshold and exits 2 (a configuration's problems one per line). */
function fail(err: unknown, what: string | undefined): void {
  if (err instanceof UsageError) throw err;
  if (err instanceof ConfigError) process.stderr.write(`valet: ${what ?? 'invalid configuration'}\n${err.message}\n`);
  else if (err instanceof ValetError) process.stderr.write(`valet: ${err.code}: ${err.message}\n`);
  else process.stderr.write(`valet: ${(err as NodeJS.ErrnoException).code ? `${(err as NodeJS.ErrnoException).code}: ` : ''}${(err as Error).message}\n`);
  process.exitCode = 2;
}

/**
 * The master key the gateway seals facts with, resolved as it would be (`VALET_MASTER_KEY`,
 * `VALET_MASTER_KEY_FILE`, else outside production `<data>/master-key`), read only: none is
 * generated. undefined when there is none (every row with facts is then not replayable).
 */
function factsKey(configFlag: string | undefined, dataFlag: string | undefined, environment: Environment | undefined): MasterKey | undefined {
  const dir = configDirOf(configFlag);
  const deployed = environment ?? (existsSync(dir) ? loadConfig(dir).gateway.environment : 'development');
  const dataDir = resolve(dataFlag ?? env['VALET_DATA'] ?? 'data');
  return resolveMasterKey({ env, dataDir, environment: deployed, storeIsEmpty: () => true, generate: false })?.key;
}

function count(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,15}$/.test(value)) throw new UsageError(`--${name} must be a whole number`);
  return Number(value);
}

/** `N` (rows) or `P%` (of the replayed rows). */
function maxChanged(value: string | undefined): ReplayThresholds['maxChanged'] {
  if (value === undefined) return undefined;
  const p = /^(\d{1,3}(?:\.\d+)?)%$/.exec(value);
  if (p !== null && Number(p[1]) <= 100) return { percent: Number(p[1]) };
  if (/^\d{1,15}$/.test(value)) return { count: Number(value) };
  throw new UsageError('--max-changed must be a number of requests (10) or a percentage of those replayed (5%)');
}
