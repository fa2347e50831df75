import { createWriteStream, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { ANCHOR_FILE, ANCHOR_KEY_ENV, readAnchors } from '../audit/anchor.js';
import { openAuditBackend, postgresSettings } from '../audit/backend.js';
import { cefLine, EXPORT_FORMATS, isExportFormat, publicRow, syslogMessage, writeExport, type ExportFormat } from '../audit/export.js';
import { retentionCutoffs } from '../audit/retention.js';
import { ship } from '../audit/ship.js';
import type { Anchor, AuditFilter, AuditLog, AuditRow } from '../audit/port.js';
import { loadConfig } from '../config/load.js';
import { DEFAULT_AUDIT } from '../config/types.js';
import { secretVariable } from '../secrets/variable.js';
import { UsageError } from './usage.js';

export const AUDIT_USAGE = `  valet audit [FILTERS] [--limit N] [--cursor ID] [--format table|json|ndjson|csv|cef|syslog]
                                           newest rows first (default 20); --cursor continues after a page
  valet audit verify [--anchor FILE] [--format text|json]
                                           check the hash chain and every row; exit 1 naming the first bad one
  valet audit export --format json|ndjson|csv|cef|syslog [FILTERS] [--output FILE]
                                           every matching row, oldest first, streamed
  valet audit ship --to tcp://HOST:PORT|udp://HOST:PORT [--format syslog|cef] [--cursor-file F] [--once]
                       [--interval 1s] [--hostname H] [--sd-id ID] [FILTERS]
                                           RFC 5424 syslog to a collector, following the log; resumes from the cursor file
  valet audit prune [--days N] [--tenant-days TENANT=N]... [--dry-run]
                                           delete old rows (default: gateway.audit.retention_days), chain stays verifiable
    FILTERS: --agent A --tenant T --user U --upstream U --tool T --decision allow|deny|escalate|none --rule R
             --status N --request-id ID --since T --until T   (T: 15m, 2h, 7d ago; or an ISO 8601 date/time)`;

const filterFlags = {
  agent: { type: 'string' },
  tenant: { type: 'string' },
  user: { type: 'string' },
  upstream: { type: 'string' },
  tool: { type: 'string' },
  decision: { type: 'string' },
  rule: { type: 'string' },
  status: { type: 'string' },
  'request-id': { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

const common = {
  config: { type: 'string' },
  data: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

type Parsed<O extends NonNullable<ParseArgsConfig['options']>> = ReturnType<typeof parseArgs<{ args: string[]; options: typeof common & O; allowPositionals: false; strict: true }>>;

/** Parses a command's flags with `--config`, `--data` and `--help`; a mistake is a {@link UsageError}. */
export function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O): Parsed<O> {
  try {
    return parseArgs({ args, options: { ...common, ...options }, allowPositionals: false, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

const env = process.env;
const dataDirOf = (v: string | undefined): string => resolve(v ?? env['VALET_DATA'] ?? 'data');
/** The configuration directory a command reads: `--config`, else `VALET_CONFIG`, else `policies`. */
export const configDirOf = (v: string | undefined): string => v ?? env['VALET_CONFIG'] ?? 'policies';
/** Writes a line to stdout. */
export const out = (text: string): void => void process.stdout.write(`${text}\n`);

/** `15m`, `2h`, `7d` (that long ago), an ISO 8601 date or date-time, or Unix milliseconds. */
export function parseTime(value: string, name: string, now = Date.now()): number {
  const rel = /^(\d+)(s|m|h|d)$/.exec(value);
  if (rel) return now - Number(rel[1]) * { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[rel[2] as 's' | 'm' | 'h' | 'd'];
  if (/^\d{12,}$/.test(value)) return Number(value);
  const t = /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(t)) throw new UsageError(`--${name} must be a duration ago (15m, 2h, 7d), an ISO 8601 date/time, or Unix milliseconds`);
  return t;
}

function integer(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer from ${min} to ${max}`);
  return n;
}

type FilterValues = { [K in keyof typeof filterFlags]?: string | undefined };

function filterOf(v: FilterValues): Omit<AuditFilter, 'limit'> {
  if (v.decision !== undefined && !['allow', 'deny', 'escalate', 'none'].includes(v.decision)) {
    throw new UsageError('--decision must be allow, deny, escalate or none');
  }
  return {
    agent: v.agent,
    tenant: v.tenant,
    user: v.user,
    upstream: v.upstream,
    tool: v.tool,
    decision: v.decision,
    rule: v.rule,
    status: integer(v.status, 'status', 0, 999),
    requestId: v['request-id'],
    sinceMs: v.since === undefined ? undefined : parseTime(v.since, 'since'),
    untilMs: v.until === undefined ? undefined : parseTime(v.until, 'until'),
  };
}

/**
 * The audit log through the backend the gateway uses: PostgreSQL when `VALET_POSTGRES_URL` is set or
 * the configuration (read when `--config` or `VALET_CONFIG` names it) says `gateway.audit.backend:
 * postgres`; else the SQLite database in the data directory. A usage error when there is none yet.
 */
export async function openLog(values: { data?: string | undefined; config?: string | undefined }, access: { readonly: boolean; busyTimeoutMs?: number }): Promise<AuditLog> {
  const dir = dataDirOf(values.data);
  const named = values.config ?? env['VALET_CONFIG'];
  const settings = named !== undefined ? (loadConfig(named).gateway.audit ?? DEFAULT_AUDIT) : DEFAULT_AUDIT;
  let postgres: ReturnType<typeof postgresSettings>;
  try {
    postgres = postgresSettings(settings, env);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const log = await openAuditBackend({ dataDir: dir, postgres, ...access });
  if (log === undefined) throw new UsageError(postgres ? 'no audit log in that PostgreSQL schema (has the gateway run there?)' : `no audit database in ${dir} (has the gateway run there?)`);
  return log;
}

export async function auditCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'verify':
      return verify(rest);
    case 'export':
      return exportRows(rest);
    case 'ship':
      return shipRows(rest);
    case 'prune':
      return prune(rest);
    default:
      if (sub !== undefined && !sub.startsWith('-')) throw new UsageError(`unknown audit command "${sub}"`);
      return query(args);
  }
}

/** Columns padded to their widest cell, two spaces apart, the header first. */
export function formatTable(header: readonly string[], cells: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: readonly string[]): string => c.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...cells.map(line)].join('\n');
}

const TABLE: [keyof AuditRow, string][] = [
  ['ts', 'TIME'],
  ['request_id', 'REQUEST'],
  ['agent', 'AGENT'],
  ['tenant', 'TENANT'],
  ['upstream', 'UPSTREAM'],
  ['method', 'METHOD'],
  ['path', 'PATH'],
  ['decision', 'DECISION'],
  ['rule', 'RULE'],
  ['status', 'STATUS'],
  ['upstream_status', 'UPSTREAM_STATUS'],
  ['duration_ms', 'MS'],
];

async function query(args: string[]): Promise<void> {
  const { values } = parse(args, { ...filterFlags, limit: { type: 'string', default: '20' }, cursor: { type: 'string' }, format: { type: 'string', default: 'table' } });
  const format = values.format;
  if (format !== 'table' && !isExportFormat(format)) throw new UsageError(`--format must be table or one of ${EXPORT_FORMATS.join(', ')}`);
  const log = await openLog(values, { readonly: true });
  let page;
  try {
    page = await log.page({ ...filterOf(values), limit: integer(values.limit, 'limit', 1, 100_000) ?? 20, before: integer(values.cursor, 'cursor', 1, Number.MAX_SAFE_INTEGER) });
  } finally {
    await log.close();
  }
  if (format === 'table') {
    const cells = page.rows.map((r) => TABLE.map(([k]) => (k === 'ts' ? new Date(r.ts).toISOString() : r[k] === null ? '-' : k === 'status' && r.status === 0 ? '?' : String(r[k]))));
    out(formatTable(TABLE.map(([, h]) => h), cells));
  } else if (format === 'json') {
    out(JSON.stringify(page.rows.map(publicRow), null, 2));
  } else if (format === 'csv') {
    await writeExport(page.rows, 'csv', process.stdout);
  } else {
    for (const r of page.rows) out(format === 'ndjson' ? JSON.stringify(publicRow(r)) : format === 'cef' ? cefLine(r) : syslogMessage(r));
  }
  if (page.next !== null) process.stderr.write(`(more: --cursor ${page.next})\n`);
}

async function verify(args: string[]): Promise<void> {
  const { values } = parse(args, { anchor: { type: 'string' }, format: { type: 'string', default: 'text' } });
  if (values.format !== 'text' && values.format !== 'json') throw new UsageError('--format must be text or json');
  const dir = dataDirOf(values.data);
  const anchorFile = values.anchor ?? (existsSync(join(dir, ANCHOR_FILE)) ? join(dir, ANCHOR_FILE) : undefined);
  if (values.anchor !== undefined && !existsSync(values.anchor)) throw new UsageError(`--anchor: no such file ${values.anchor}`);
  // Checked as at start: a verifier must not accept anchors signed with a placeholder key.
  const key = secretVariable(env, ANCHOR_KEY_ENV, 'development')?.value;
  let anchors: Anchor[] = [];
  let anchorProblems: string[] = [];
  if (anchorFile !== undefined) ({ anchors, problems: anchorProblems } = readAnchors(anchorFile, key));
  const log = await openLog(values, { readonly: true });
  let result;
  try {
    result = await log.verify({ anchors });
  } finally {
    await log.close();
  }
  const ok = result.ok && anchorProblems.length === 0;
  if (values.format === 'json') {
    out(JSON.stringify({ ...result, ok, anchor_file: anchorFile ?? null, anchor_problems: anchorProblems }, null, 2));
  } else {
    const anchorNote =
      anchorFile === undefined
        ? 'no anchor file (truncation of the newest rows cannot be detected)'
        : `${result.anchors.checked} anchor(s) checked from ${anchorFile}${key ? ' (signatures verified)' : ''}` +
          (result.anchors.beforeCheckpoint > 0 ? `, ${result.anchors.beforeCheckpoint} older than the retained chain` : '');
    const summary =
      `${result.rows} row(s), events ${result.checkpoint.seq + 1}–${result.head.seq}, head ${result.head.hash.slice(0, 16)}…; ` +
      `${result.incomplete} without an outcome (in flight, or the gateway stopped); ${result.pruned} pruned; ${anchorNote}`;
    if (ok) {
      out(`ok: ${summary}`);
    } else {
      const list = [...anchorProblems.map((p) => `anchor: ${p}`), ...result.problems.map((p) => `${p.seq !== null ? `event ${p.seq}: ` : ''}${p.message}${p.requestId ? ` (request ${p.requestId})` : ''}`)];
      out(`FAILED: ${list.length} problem(s); the first:\n  ${list[0]}`);
      if (list.length > 1) out(`then:\n${list.slice(1, 20).map((l) => `  ${l}`).join('\n')}${list.length > 20 ? `\n  ... and ${list.length - 20} more` : ''}`);
      out(`checked: ${summary}`);
    }
  }
  if (!ok) process.exitCode = 1;
}

async function exportRows(args: string[]): Promise<void> {
  const { values } = parse(args, { ...filterFlags, format: { type: 'string' }, output: { type: 'string', short: 'o' } });
  const format = values.format;
  if (format === undefined || !isExportFormat(format)) throw new UsageError(`--format must be one of ${EXPORT_FORMATS.join(', ')}`);
  const log = await openLog(values, { readonly: true });
  const dest: Writable = values.output === undefined ? process.stdout : createWriteStream(values.output, { mode: 0o600 });
  try {
    const columns = await log.columns();
    const n = await writeExport(log.iterate(filterOf(values)), format as ExportFormat, dest, { columns });
    if (values.output !== undefined) {
      await new Promise<void>((r, j) => dest.end((err?: Error | null) => (err ? j(err) : r())));
      process.stderr.write(`${n} row(s) written to ${values.output}\n`);
    }
  } finally {
    await log.close();
  }
}

async function shipRows(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...filterFlags,
    to: { type: 'string' },
    format: { type: 'string', default: 'syslog' },
    'cursor-file': { type: 'string' },
    once: { type: 'boolean' },
    interval: { type: 'string', default: '1s' },
    hostname: { type: 'string' },
    'sd-id': { type: 'string' },
  });
  if (values.to === undefined) throw new UsageError('valet audit ship needs --to tcp://HOST:PORT or udp://HOST:PORT');
  let to: URL;
  try {
    to = new URL(values.to);
  } catch {
    throw new UsageError('--to must be tcp://HOST:PORT or udp://HOST:PORT');
  }
  if ((to.protocol !== 'tcp:' && to.protocol !== 'udp:') || to.port === '') throw new UsageError('--to must be tcp://HOST:PORT or udp://HOST:PORT');
  if (values.format !== 'syslog' && values.format !== 'cef') throw new UsageError('--format must be syslog or cef');
  if (values.since !== undefined || values.until !== undefined) throw new UsageError('ship follows the log: --since and --until do not apply');
  if (values['sd-id'] !== undefined && !/^[\x21-\x7e]{1,32}$/.test(values['sd-id'])) throw new UsageError('--sd-id must be 1 to 32 printable characters');
  const interval = /^(\d+)(ms|s)$/.exec(values.interval);
  if (!interval) throw new UsageError('--interval looks like 500ms or 2s');
  const log = await openLog(values, { readonly: true });
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await ship(log, {
      to,
      format: values.format,
      cursorFile: values['cursor-file'],
      filter: filterOf(values),
      syslog: { ...(values.hostname !== undefined && { hostname: values.hostname }), ...(values['sd-id'] !== undefined && { sdId: values['sd-id'] }) },
      intervalMs: Number(interval[1]) * (interval[2] === 's' ? 1000 : 1),
      once: values.once ?? false,
      signal: stop.signal,
      log: (m) => process.stderr.write(`valet: ${m}\n`),
    });
    process.stderr.write(`${r.shipped} row(s) shipped; cursor at event ${r.cursor}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await log.close();
  }
}

async function prune(args: string[]): Promise<void> {
  const { values } = parse(args, { days: { type: 'string' }, 'tenant-days': { type: 'string', multiple: true }, 'dry-run': { type: 'boolean' } });
  let settings = { retentionDays: integer(values.days, 'days', 1, 36_500), tenantRetentionDays: {} as Record<string, number | null> };
  if (values.days === undefined && values['tenant-days'] === undefined) {
    const audit = loadConfig(configDirOf(values.config)).gateway.audit ?? DEFAULT_AUDIT;
    settings = { retentionDays: audit.retentionDays, tenantRetentionDays: { ...audit.tenantRetentionDays } };
  }
  for (const td of values['tenant-days'] ?? []) {
    const m = /^(.+)=(\d+|keep)$/.exec(td);
    if (!m) throw new UsageError('--tenant-days takes TENANT=DAYS (or TENANT=keep)');
    settings.tenantRetentionDays[m[1] as string] = m[2] === 'keep' ? null : (integer(m[2], 'tenant-days', 1, 36_500) as number);
  }
  const cutoffs = retentionCutoffs(settings);
  if (cutoffs === undefined) {
    out('nothing to prune: no retention is configured (gateway.audit.retention_days) or given (--days)');
    return;
  }
  const dryRun = values['dry-run'] ?? false;
  // Writing, it waits up to 10 s for the gateway's writer between the small transactions it takes.
  const log = await openLog(values, dryRun ? { readonly: true } : { readonly: false, busyTimeoutMs: 10_000 });
  let r;
  try {
    r = await log.prune(cutoffs, { dryRun });
  } finally {
    await log.close();
  }
  out(dryRun ? `would delete ${r.rows} row(s)` : `deleted ${r.rows} row(s); ${r.compacted} chain event(s) compacted`);
}
