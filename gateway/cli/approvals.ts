import { parseArgs, type ParseArgsConfig } from 'node:util';
import { request } from 'undici';
import { ValetError, type ErrorCode } from '../errors.js';
import { UsageError } from './usage.js';

/**
 * `valet approvals list|show|approve|deny`: a thin client of the admin API
 * (`VALET_ADMIN_URL`, default http://127.0.0.1:8081), identified by `VALET_ADMIN_TOKEN`.
 */
export const APPROVALS_USAGE = `  valet approvals list [--status pending|approved|denied|expired|aborted|consumed|all] [--agent A] [--tenant T] [--limit N] [--format table|json]
  valet approvals show ID [--format table|json]
  valet approvals approve ID [--reason R]
  valet approvals deny ID --reason R          (VALET_ADMIN_URL, default http://127.0.0.1:8081; VALET_ADMIN_TOKEN)`;

const options = {
  status: { type: 'string', default: 'pending' },
  agent: { type: 'string' },
  tenant: { type: 'string' },
  limit: { type: 'string' },
  reason: { type: 'string' },
  format: { type: 'string', default: 'table' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

interface Approval {
  id: string;
  status: string;
  mode: string;
  agent: string;
  tenant: string | null;
  user: string | null;
  upstream: string;
  tool: string | null;
  method: string;
  path: string;
  args: unknown;
  rule: string;
  reason: string;
  group: string;
  created_at: string;
  expires_at: string;
  resolver: string | null;
  resolution_reason: string | null;
  [k: string]: unknown;
}

const say = (text: string): void => void process.stdout.write(`${text}\n`);

async function api<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const base = (process.env['VALET_ADMIN_URL'] ?? 'http://127.0.0.1:8081').replace(/\/+$/, '');
  const token = process.env['VALET_ADMIN_TOKEN'];
  if (token === undefined || token.trim() === '') {
    throw new UsageError('set VALET_ADMIN_TOKEN to an admin token (e.g. `valet token --admin --subject you --role approver --group finance`)');
  }
  let res;
  try {
    res = await request(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token.trim()}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? null : JSON.stringify(body),
      headersTimeout: 30_000,
      bodyTimeout: 30_000,
    });
  } catch (err) {
    throw new Error(`cannot reach the admin API at ${base} (${(err as { code?: string }).code ?? (err as Error).message}); is the gateway running? Set VALET_ADMIN_URL.`);
  }
  const text = await res.body.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`the admin API answered ${res.statusCode} with something that is not JSON`);
  }
  if (res.statusCode >= 400) {
    const e = (parsed as { error?: { code?: string; message?: string } }).error;
    if (e?.code !== undefined && e.code.startsWith('VALET_ERR_')) throw new ValetError(e.code as ErrorCode, e.message);
    throw new Error(`the admin API answered ${res.statusCode}`);
  }
  return parsed as T;
}

function table(rows: Approval[]): string {
  const columns: [string, (a: Approval) => string][] = [
    ['ID', (a) => a.id],
    ['STATUS', (a) => a.status],
    ['MODE', (a) => a.mode],
    ['AGENT', (a) => a.agent],
    ['TENANT', (a) => a.tenant ?? '-'],
    ['CALL', (a) => `${a.method} ${a.upstream} ${a.path}`],
    ['RULE', (a) => a.rule],
    ['GROUP', (a) => a.group],
    ['EXPIRES', (a) => a.expires_at],
  ];
  const cells = rows.map((r) => columns.map(([, f]) => f(r).replace(/[\r\n\t]/g, ' ')));
  const widths = columns.map(([h], i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]): string => c.map((v, i) => v.padEnd(widths[i] as number)).join('  ').trimEnd();
  return [line(columns.map(([h]) => h)), ...cells.map(line)].join('\n');
}

function details(a: Approval): string {
  const lines = [
    `approval   ${a.id} (${a.status}, ${a.mode})`,
    `agent      ${a.agent}${a.tenant !== null ? ` (tenant ${a.tenant})` : ''}${a.user !== null ? ` for user ${a.user}` : ''}`,
    `call       ${a.method} ${a.upstream} ${a.path}${a.tool !== null ? ` (tool ${a.tool})` : ''}`,
    `rule       ${a.rule}: ${a.reason}`,
    `group      ${a.group}`,
    `expires    ${a.expires_at}`,
    `arguments  ${JSON.stringify(a.args)}`,
  ];
  if (a.resolver !== null) lines.push(`decided by ${a.resolver}${a.resolution_reason !== null ? `: ${a.resolution_reason}` : ''}`);
  return lines.join('\n');
}

export async function approvalsCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.format !== 'table' && values.format !== 'json') throw new UsageError('--format must be table or json');
  const id = (): string => {
    if (positionals.length !== 1) throw new UsageError(`valet approvals ${sub} needs one approval ID`);
    return encodeURIComponent(positionals[0] as string);
  };
  switch (sub) {
    case 'list': {
      if (positionals.length > 0) throw new UsageError('valet approvals list takes no arguments');
      const q = new URLSearchParams();
      if (values.status !== 'all') q.set('status', values.status);
      if (values.agent !== undefined) q.set('agent', values.agent);
      if (values.tenant !== undefined) q.set('tenant', values.tenant);
      if (values.limit !== undefined) q.set('limit', values.limit);
      const r = await api<{ approvals: Approval[] }>('GET', `/api/approvals?${q.toString()}`);
      say(values.format === 'json' ? JSON.stringify(r.approvals, null, 2) : r.approvals.length === 0 ? `no ${values.status === 'all' ? '' : `${values.status} `}approvals` : table(r.approvals));
      return;
    }
    case 'show': {
      const r = await api<{ approval: Approval }>('GET', `/api/approvals/${id()}`);
      say(values.format === 'json' ? JSON.stringify(r.approval, null, 2) : details(r.approval));
      return;
    }
    case 'approve':
    case 'deny': {
      const target = id();
      if (sub === 'deny' && (values.reason === undefined || values.reason.trim() === '')) throw new UsageError('valet approvals deny needs --reason');
      const r = await api<{ approval: Approval }>('POST', `/api/approvals/${target}/${sub}`, values.reason === undefined ? {} : { reason: values.reason });
      say(values.format === 'json' ? JSON.stringify(r.approval, null, 2) : `${r.approval.id} ${r.approval.status} by ${r.approval.resolver ?? '?'}`);
      return;
    }
    default:
      throw new UsageError('valet approvals list|show|approve|deny');
  }
}
