import { CONTENT_TYPES, EXTENSIONS, EXPORT_FORMATS, isExportFormat, publicRow, writeExport } from '../audit/export.js';
import type { AuditFilter, AuditLog } from '../audit/port.js';
import { ValetError } from '../errors.js';
import { tenantScope, type AdminIdentity } from './auth.js';
import type { AdminRoute } from './server.js';

const bad = (message: string): ValetError => new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', message);

/** A time: Unix milliseconds (`since_ms`) or ISO 8601 (`since`). */
function time(query: URLSearchParams, name: 'since' | 'until'): number | undefined {
  const ms = query.get(`${name}_ms`);
  const iso = query.get(name);
  if (ms !== null && ms !== '') {
    const n = Number(ms);
    if (!/^\d+$/.test(ms) || !Number.isSafeInteger(n)) throw bad(`${name}_ms must be a time in milliseconds.`);
    return n;
  }
  if (iso !== null && iso !== '') {
    const t = Date.parse(iso);
    if (!/^\d{4}-\d{2}-\d{2}/.test(iso) || Number.isNaN(t)) throw bad(`${name} must be an ISO 8601 date or date-time.`);
    return t;
  }
  return undefined;
}

function id(query: URLSearchParams, name: string): number | undefined {
  const v = query.get(name);
  if (v === null || v === '') return undefined;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw bad(`${name} must be a cursor returned by this API.`);
  return n;
}

/**
 * The filters `GET /api/audit` and `/api/audit/export` accept, by query parameter: `agent`,
 * `tenant`, `user`, `upstream`, `tool`, `decision` (`allow`, `deny`, `escalate`, `none`), `rule`,
 * `status`, `request_id`, and the time range `since_ms`/`until_ms` (or ISO 8601 `since`/`until`).
 * A tenant admin is pinned to its own tenant.
 */
export function auditFilter(who: AdminIdentity, query: URLSearchParams): Omit<AuditFilter, 'limit'> {
  const text = (name: string): string | undefined => {
    const v = query.get(name);
    return v === null || v === '' ? undefined : v;
  };
  const decision = text('decision');
  if (decision !== undefined && !['allow', 'deny', 'escalate', 'none'].includes(decision)) throw bad('decision must be allow, deny, escalate or none.');
  const status = text('status');
  if (status !== undefined && !/^\d{1,3}$/.test(status)) throw bad('status must be an HTTP status code (0: outcome not recorded).');
  const sinceMs = time(query, 'since');
  const untilMs = time(query, 'until');
  if (sinceMs !== undefined && untilMs !== undefined && sinceMs > untilMs) throw bad('since must not be after until.');
  return {
    agent: text('agent'),
    tenant: tenantScope(who, text('tenant')),
    user: text('user'),
    upstream: text('upstream'),
    tool: text('tool'),
    decision,
    rule: text('rule'),
    status: status === undefined ? undefined : Number(status),
    requestId: text('request_id'),
    sinceMs,
    untilMs,
  };
}

export function auditRoutes(log: AuditLog): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/audit',
      permission: 'audit.read',
      handle: async ({ who, query }) => {
        const limitText = query.get('limit');
        const limit = limitText === null ? 100 : Number(limitText);
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw bad('limit must be an integer from 1 to 1000.');
        // Keyset pagination: `cursor` is the `next_cursor` of the previous page (rows older than it).
        const page = await log.page({ ...auditFilter(who, query), limit, before: id(query, 'cursor') });
        return { json: { rows: page.rows.map(publicRow), next_cursor: page.next === null ? null : String(page.next) } };
      },
    },
    {
      method: 'GET',
      path: '/api/audit/export',
      permission: 'audit.read',
      handle: ({ who, query }) => {
        const format = query.get('format') ?? 'ndjson';
        if (!isExportFormat(format)) throw bad(`format must be one of ${EXPORT_FORMATS.join(', ')}.`);
        const filter = auditFilter(who, query);
        const stamp = new Date().toISOString().replace(/[:.]/g, '-');
        return {
          contentType: CONTENT_TYPES[format],
          headers: { 'content-disposition': `attachment; filename="valet-audit-${stamp}.${EXTENSIONS[format]}"` },
          stream: async (res) => {
            // Rows are read a page at a time and written as the client takes them.
            const columns = await log.columns();
            await writeExport(log.iterate(filter), format, res, { columns });
            res.end();
          },
        };
      },
    },
  ];
}
