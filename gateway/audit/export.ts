import { once } from 'node:events';
import { hostname } from 'node:os';
import type { Writable } from 'node:stream';
import { stringify } from 'csv-stringify';
import { META_COLUMNS } from './chain.js';
import type { AuditRow } from './port.js';

/**
 * Export formats for audit rows. Every writer takes rows one at a time from an iterator and
 * respects the destination's back-pressure, so an export of any size runs in constant memory.
 *
 * - `json`: one JSON array; `ndjson`: one JSON object per line. Rows as stored (times in Unix ms).
 * - `csv`: RFC 4180 via csv-stringify, a header row, a leading `time` column (ISO 8601 of `ts`).
 * - `cef`: ArcSight Common Event Format, one event per line (see {@link cefLine}).
 * - `syslog`: RFC 5424 messages, one per line (see {@link syslogMessage}); shipping over TCP uses
 *   octet-counting framing (RFC 6587), over UDP one message per datagram (RFC 5426).
 */
export const EXPORT_FORMATS = ['json', 'ndjson', 'csv', 'cef', 'syslog'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export const CONTENT_TYPES: Record<ExportFormat, string> = {
  json: 'application/json; charset=utf-8',
  ndjson: 'application/x-ndjson; charset=utf-8',
  csv: 'text/csv; charset=utf-8; header=present',
  cef: 'text/plain; charset=utf-8',
  syslog: 'text/plain; charset=utf-8',
};

export const EXTENSIONS: Record<ExportFormat, string> = { json: 'json', ndjson: 'ndjson', csv: 'csv', cef: 'cef', syslog: 'log' };

export const isExportFormat = (v: string): v is ExportFormat => (EXPORT_FORMATS as readonly string[]).includes(v);

/** Columns no format shows: the sealed request facts are for `valet policy replay`, not for readers of the log. */
export const SEALED_COLUMNS: ReadonlySet<string> = new Set(['facts']);

/** A row without the chain's bookkeeping columns and the sealed facts: what every format shows. */
export function publicRow(r: AuditRow): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) if (!META_COLUMNS.has(k) && !SEALED_COLUMNS.has(k)) out[k] = v;
  return out;
}

export interface SyslogOptions {
  /** HOSTNAME field (default: this machine's name). */
  hostname?: string;
  /** APP-NAME field (default `valet`). */
  appName?: string;
  /** SD-ID of the structured data element: `name@<IANA private enterprise number>`. */
  sdId?: string;
  /** Facility (default 13, "log audit"). */
  facility?: number;
}

/**
 * The SD-ID Valet's structured data goes under. 32473 is the private enterprise number IANA
 * reserves for documentation (RFC 5612); organisations with their own number can pass it.
 */
export const DEFAULT_SD_ID = 'valet@32473';
const PRODUCT_VERSION = '0.1.0';

// ---------------------------------------------------------------------------------------------
// CEF

/** CEF header fields: backslash and pipe are escaped; a header cannot hold a line break. */
export const cefHeader = (v: string): string => v.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/[\r\n]+/g, ' ');

/** CEF extension values: backslash and equals sign are escaped, line breaks written as `\n` / `\r`. */
export const cefValue = (v: string): string =>
  v.replace(/\\/g, '\\\\').replace(/=/g, '\\=').replace(/\r\n|\n/g, '\\n').replace(/\r/g, '\\r');

/** CEF severity 0–10 (and the syslog severity used alongside it). */
function severity(r: AuditRow): { cef: number; syslog: number } {
  if (r.status >= 500 || r.status === 0) return { cef: 7, syslog: 4 }; // warning
  if (r.decision === 'deny' || r.decision === 'escalate' || r.status >= 400) return { cef: 5, syslog: 5 }; // notice
  return { cef: 3, syslog: 6 }; // informational
}

/**
 * One CEF event (ArcSight "Implementing ArcSight CEF", revision 25):
 * `CEF:0|Valet|Valet Gateway|<version>|<class>|<name>|<severity>|<extension>`.
 * The class is `valet:request:<decision>` (`none` when the request was refused before the policy
 * ran). Extension keys come from the CEF key dictionary; Valet-specific values use the custom
 * string/number slots with their `…Label` keys.
 */
export function cefLine(r: AuditRow): string {
  const ext: [string, string | number | null | undefined][] = [
    ['rt', r.ts],
    ['externalId', r.request_id],
    ['cn1', r.id],
    ['cn1Label', 'auditId'],
    ['suser', r.agent],
    ['duser', r.user],
    ['cs1', r.tenant],
    ['cs1Label', r.tenant === null ? null : 'tenant'],
    ['cs2', r.upstream],
    ['cs2Label', r.upstream === null ? null : 'upstream'],
    ['cs3', r.rule],
    ['cs3Label', r.rule === null ? null : 'rule'],
    ['cs4', r.tool],
    ['cs4Label', r.tool === null ? null : 'tool'],
    ['cs5', r.error_code],
    ['cs5Label', r.error_code === null ? null : 'errorCode'],
    ['cs6', r.policy_version],
    ['cs6Label', r.policy_version === null ? null : 'policyVersion'],
    ['requestMethod', r.method],
    ['request', r.path],
    ['act', r.decision ?? 'none'],
    ['reason', r.reason],
    ['outcome', String(r.status)],
    ['cn2', r.upstream_status],
    ['cn2Label', r.upstream_status === null ? null : 'upstreamStatus'],
    ['in', r.bytes_in],
    ['out', r.bytes_out],
    ['cfp1', r.duration_ms],
    ['cfp1Label', 'durationMs'],
    ['flexString1', r.approver],
    ['flexString1Label', r.approver == null ? null : 'approver'],
    ['flexString2', r.approval_id],
    ['flexString2Label', r.approval_id == null ? null : 'approvalId'],
    ['msg', r.args == null ? null : `args ${r.args}`],
  ];
  const extension = ext
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${cefValue(String(v))}`)
    .join(' ');
  const name = `${r.method} ${r.upstream ?? '-'}${r.path}`.slice(0, 512);
  const head = ['CEF:0', 'Valet', 'Valet Gateway', PRODUCT_VERSION, `valet:request:${r.decision ?? 'none'}`, name, String(severity(r).cef)];
  return `${head.map((h, i) => (i === 0 ? h : cefHeader(h))).join('|')}|${extension}`;
}

// ---------------------------------------------------------------------------------------------
// RFC 5424 syslog

/** PRINTUSASCII (33–126) only, at most `max` characters; `-` when empty (the NILVALUE). */
const printable = (v: string, max: number): string => {
  const s = v.replace(/[^\x21-\x7e]/g, '').slice(0, max);
  return s === '' ? '-' : s;
};

/** PARAM-VALUE: `"`, `\` and `]` are escaped with a backslash (RFC 5424 §6.3.3); control characters become spaces. */
export const sdValue = (v: string): string => v.replace(/[\\"\]]/g, (c) => `\\${c}`).replace(/[\x00-\x1f\x7f]/g, ' ');

/** The columns carried as SD-PARAMs, in order (names are valid PARAM-NAMEs: ≤ 32 printable characters). */
const SD_PARAMS: (keyof AuditRow)[] = [
  'id',
  'request_id',
  'agent',
  'tenant',
  'user',
  'upstream',
  'tool',
  'method',
  'path',
  'decision',
  'rule',
  'reason',
  'status',
  'upstream_status',
  'error_code',
  'duration_ms',
  'bytes_in',
  'bytes_out',
  'policy_version',
  'approval_id',
  'approver',
  'args',
  'upstream_request_id',
  'act',
  'rpc',
  'team',
  'model',
  'tokens',
  'cost',
  'usage',
  'shadow',
];

/**
 * One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ELEMENT] MSG`.
 * PRI = facility × 8 + severity (informational for allowed calls, notice for refusals, warning
 * for 5xx and unknown outcomes); TIMESTAMP is the request time in UTC with milliseconds; MSGID is
 * `audit`; the row's columns are SD-PARAMs of one SD-ELEMENT; MSG is a one-line summary, prefixed
 * with the UTF-8 BOM when it is not plain ASCII (§6.4). `msg` replaces the summary (CEF shipping
 * puts the CEF event there, with no structured data).
 */
export function syslogMessage(r: AuditRow, o: SyslogOptions = {}, msg?: string): string {
  const pri = (o.facility ?? 13) * 8 + severity(r).syslog;
  const host = printable(o.hostname ?? hostname(), 255);
  const app = printable(o.appName ?? 'valet', 48);
  let sd = '-';
  if (msg === undefined) {
    const params = SD_PARAMS.filter((k) => r[k] !== null && r[k] !== undefined).map((k) => `${k}="${sdValue(String(r[k]))}"`);
    sd = `[${printable(o.sdId ?? DEFAULT_SD_ID, 32)} ${params.join(' ')}]`;
  }
  const text = msg ?? `${r.method} ${r.upstream ?? '-'}${r.path} ${r.decision ?? 'none'} ${r.status}${r.rule ? ` rule=${r.rule}` : ''}`;
  const body = /^[\x00-\x7f]*$/.test(text) ? text : `\uFEFF${text}`;
  return `<${pri}>1 ${new Date(r.ts).toISOString()} ${host} ${app} - audit ${sd} ${body.replace(/[\r\n]+/g, ' ')}`;
}

// ---------------------------------------------------------------------------------------------
// writing

async function write(out: Writable, chunk: string): Promise<void> {
  if (!out.write(chunk)) await once(out, 'drain');
}

/**
 * Writes every row the (async) iterator yields to `out` in `format`, waiting for `drain` whenever `out`
 * is full and yielding to the event loop every few hundred rows. Returns the number of rows.
 * Does not end `out`.
 */
export async function writeExport(rows: Iterable<AuditRow> | AsyncIterable<AuditRow>, format: ExportFormat, out: Writable, o: SyslogOptions & { columns?: readonly string[] } = {}): Promise<number> {
  let n = 0;
  const breathe = async (): Promise<void> => {
    if (++n % 500 === 0) await new Promise((r) => setImmediate(r));
  };
  if (format === 'csv') {
    let csv: ReturnType<typeof stringify> | undefined;
    let piped: Promise<void> | undefined;
    for await (const r of rows) {
      const row = publicRow(r);
      if (csv === undefined) {
        const columns = ['time', ...(o.columns ?? Object.keys(row)).filter((c) => !META_COLUMNS.has(c) && !SEALED_COLUMNS.has(c))];
        csv = stringify({ header: true, columns, cast: { number: (v) => String(v) } });
        piped = (async () => {
          for await (const chunk of csv as AsyncIterable<Buffer | string>) await write(out, typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
        })();
      }
      if (!csv.write({ time: new Date(r.ts).toISOString(), ...row })) await once(csv, 'drain');
      await breathe();
    }
    if (csv === undefined) {
      // No rows: still a header, so the file says what it would have held.
      if (o.columns !== undefined) await write(out, `${['time', ...o.columns.filter((c) => !META_COLUMNS.has(c) && !SEALED_COLUMNS.has(c))].join(',')}\n`);
      return 0;
    }
    csv.end();
    await piped;
    return n;
  }
  if (format === 'json') await write(out, '[');
  for await (const r of rows) {
    let line: string;
    switch (format) {
      case 'json':
        line = `${n === 0 ? '\n' : ',\n'}${JSON.stringify(publicRow(r))}`;
        break;
      case 'ndjson':
        line = `${JSON.stringify(publicRow(r))}\n`;
        break;
      case 'cef':
        line = `${cefLine(r)}\n`;
        break;
      case 'syslog':
        line = `${syslogMessage(r, o)}\n`;
        break;
    }
    await write(out, line);
    await breathe();
  }
  if (format === 'json') await write(out, n === 0 ? ']\n' : '\n]\n');
  return n;
}
