import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { ERRORS, ValetError } from '../errors.js';
import type { TokenVerifier } from '../auth/verify.js';
import { parseJsonObject } from '../json.js';
import { readAll } from '../read.js';
import { adminIdentity, requirePermission, type AdminIdentity, type Permission } from './auth.js';

/** What a route handler gets: who is asking, the path parameters, the query and the JSON body. */
export interface AdminRequest {
  readonly who: AdminIdentity;
  readonly params: Readonly<Record<string, string>>;
  readonly query: URLSearchParams;
  readonly body: Record<string, unknown>;
  readonly requestId: string;
}

/** A handler's answer: a JSON value (status 200 unless given), or a stream writer for exports. */
export type AdminResult =
  | { status?: number; json: unknown; headers?: Readonly<Record<string, string>> }
  | { stream: (res: ServerResponse) => Promise<void>; contentType: string; headers?: Readonly<Record<string, string>> };

export interface AdminRoute {
  readonly method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** `/api/secrets/:name` — `:x` matches one path segment, percent-decoded. */
  readonly path: string;
  /** `self`: any verified admin-plane identity, acting only for itself (a user connecting their own account). */
  readonly permission: Permission | 'self';
  readonly handle: (req: AdminRequest) => AdminResult | Promise<AdminResult>;
}

/** Unauthenticated probes: `/healthz`, `/readyz`, `/metrics`. They never reveal configuration or data. */
export interface AdminProbe {
  readonly path: string;
  readonly handle: () => { status: number; contentType: string; body: string } | Promise<{ status: number; contentType: string; body: string }>;
}

/** A static file of the dashboard. Public like the probes: it holds code, never data. */
export interface AdminAsset {
  /** 200 unless given. */
  readonly status?: number;
  readonly contentType: string;
  readonly body: Buffer;
  /** Extra response headers (a redirect's `location`, a `set-cookie`). */
  readonly headers?: Readonly<Record<string, string>>;
}

/**
 * A public `POST /api/...` endpoint that authenticates each request itself, by a signature over
 * the raw body (Slack's interactions, the chat callback): no admin token, any media type.
 */
export interface AdminHook {
  readonly path: string;
  readonly handle: (req: { readonly headers: IncomingHttpHeaders; readonly body: Buffer; readonly requestId: string }) => Promise<{ status?: number; json: unknown }>;
}

export interface AdminServerOptions {
  readonly verify: TokenVerifier;
  readonly routes: readonly AdminRoute[];
  readonly probes: readonly AdminProbe[];
  /** Public endpoints under `/api/` that check a signature instead of an admin token. */
  readonly hooks?: readonly AdminHook[];
  /** The dashboard's files by URL path (`/`, `/assets/app.js`); outside `/api/` only. */
  readonly assets?: (path: string, req: IncomingMessage, url: URL) => AdminAsset | undefined | Promise<AdminAsset | undefined>;
  readonly logger: Logger;
  /** Largest JSON body accepted (bytes). */
  readonly maxBodyBytes?: number;
}

const SECURITY_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'content-security-policy': "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'cross-origin-resource-policy': 'same-origin',
} as const;

interface CompiledRoute {
  readonly route: AdminRoute;
  readonly pattern: RegExp;
  readonly names: readonly string[];
}

/**
 * The admin plane's HTTP server: a separate listener from the data plane. Every `/api/` call but
 * the hooks (which check a request signature instead) needs an admin token (`Authorization:
 * Bearer`) with a role that grants the route's permission. No cookie or other ambient credential
 * is ever read, so a page on another site cannot act through a logged-in browser; requests a
 * browser marks as cross-site are refused as well, and writes must be `application/json` (which a
 * cross-site form cannot send).
 */
export function createAdminServer(o: AdminServerOptions): Server {
  const routes: CompiledRoute[] = o.routes.map((route) => {
    const names: string[] = [];
    const source = route.path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/\/:([a-z_]+)/g, (_m, name: string) => {
      names.push(name);
      return '/([^/]+)';
    });
    return { route, pattern: new RegExp(`^${source}$`), names };
  });
  const probes = new Map(o.probes.map((p) => [p.path, p]));
  const hooks = new Map((o.hooks ?? []).map((h) => [h.path, h]));
  const maxBody = o.maxBodyBytes ?? 65_536;

  const handle = async (req: IncomingMessage, res: ServerResponse, requestId: string): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    const method = req.method ?? 'GET';
    const probe = probes.get(url.pathname);
    if (probe !== undefined) {
      if (method !== 'GET' && method !== 'HEAD') throw new ValetError('VALET_ERR_ADMIN_METHOD');
      const r = await probe.handle();
      res.writeHead(r.status, { ...SECURITY_HEADERS, 'content-type': r.contentType, 'content-length': Buffer.byteLength(r.body) });
      res.end(method === 'HEAD' ? undefined : r.body);
      return;
    }
    if (!url.pathname.startsWith('/api/')) {
      // Pages change nothing on HEAD (or on anything but GET): the connect callback acts on GET only.
      const asset = method === 'GET' || method === 'HEAD' ? await o.assets?.(url.pathname, req, url) : undefined;
      if (asset === undefined) throw new ValetError(method === 'GET' || method === 'HEAD' ? 'VALET_ERR_ADMIN_NOT_FOUND' : 'VALET_ERR_ADMIN_METHOD');
      res.writeHead(asset.status ?? 200, { ...SECURITY_HEADERS, ...asset.headers, 'content-type': asset.contentType, 'content-length': asset.body.length });
      res.end(method === 'HEAD' ? undefined : asset.body);
      return;
    }
    refuseCrossSite(req);
    const hook = hooks.get(url.pathname);
    if (hook !== undefined) {
      if (method !== 'POST') throw new ValetError('VALET_ERR_ADMIN_METHOD');
      const r = await hook.handle({ headers: req.headers, body: await readLimited(req, maxBody), requestId });
      sendJson(res, r.status ?? 200, r.json, requestId);
      return;
    }
    const who = await authenticate(req, o.verify);

    let match: { route: AdminRoute; params: Record<string, string> } | undefined;
    let pathKnown = false;
    for (const c of routes) {
      const m = c.pattern.exec(url.pathname);
      if (m === null) continue;
      pathKnown = true;
      if (c.route.method !== method) continue;
      const params: Record<string, string> = {};
      try {
        c.names.forEach((n, i) => (params[n] = decodeURIComponent(m[i + 1] as string)));
      } catch {
        throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', 'A path segment is not valid percent-encoding.');
      }
      match = { route: c.route, params };
      break;
    }
    if (match === undefined) throw new ValetError(pathKnown ? 'VALET_ERR_ADMIN_METHOD' : 'VALET_ERR_ADMIN_NOT_FOUND');
    if (match.route.permission !== 'self') requirePermission(who, match.route.permission);

    let body: Record<string, unknown> = {};
    if (method === 'POST' || method === 'PUT') {
      const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
      if (type !== 'application/json') throw new ValetError('VALET_ERR_ADMIN_MEDIA_TYPE');
      const parsed = parseJsonObject(await readLimited(req, maxBody));
      if (parsed.value === undefined) throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `The request body is not acceptable: ${parsed.error}.`);
      body = parsed.value;
    }
    const result = await match.route.handle({ who, params: match.params, query: url.searchParams, body, requestId });
    if ('stream' in result) {
      res.writeHead(200, { ...SECURITY_HEADERS, ...result.headers, 'content-type': result.contentType, 'x-request-id': requestId });
      await result.stream(res);
      return;
    }
    sendJson(res, result.status ?? 200, result.json, requestId, result.headers);
  };

  return createServer({ maxHeaderSize: 16_384, headersTimeout: 30_000, requestTimeout: 60_000 }, (req, res) => {
    const requestId = randomUUID();
    handle(req, res, requestId).catch((err: unknown) => {
      const e = err instanceof ValetError ? err : new ValetError('VALET_ERR_INTERNAL', undefined, { cause: err });
      if (e.code === 'VALET_ERR_INTERNAL') o.logger.error({ reqId: requestId, err: e.cause }, 'admin request failed');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const headers: Record<string, string> = {};
      if (e.status === 401) headers['www-authenticate'] = 'Bearer realm="valet-admin"';
      sendJson(res, e.status, { error: { code: e.code, message: e.detail ?? ERRORS[e.code].message, request_id: requestId } }, requestId, headers);
    });
  });
}

export function sendJson(res: ServerResponse, status: number, value: unknown, requestId: string, extra: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    ...extra,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-request-id': requestId,
  });
  res.end(body);
}

/** Browsers label requests made by other sites; those never reach a handler. */
function refuseCrossSite(req: IncomingMessage): void {
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') throw new ValetError('VALET_ERR_ADMIN_CROSS_SITE');
  const origin = req.headers['origin'];
  if (origin !== undefined && origin !== 'null') {
    let host: string;
    try {
      host = new URL(origin).host;
    } catch {
      throw new ValetError('VALET_ERR_ADMIN_CROSS_SITE');
    }
    if (host !== req.headers.host) throw new ValetError('VALET_ERR_ADMIN_CROSS_SITE');
  } else if (origin === 'null') {
    throw new ValetError('VALET_ERR_ADMIN_CROSS_SITE');
  }
}

const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i;

async function authenticate(req: IncomingMessage, verify: TokenVerifier): Promise<AdminIdentity> {
  const header = req.headers.authorization;
  const m = header === undefined ? null : BEARER.exec(header);
  if (m === null) throw new ValetError('VALET_ERR_ADMIN_UNAUTHENTICATED');
  try {
    return adminIdentity(await verify(m[1] as string));
  } catch (err) {
    if (err instanceof ValetError && err.status === 401) {
      throw new ValetError('VALET_ERR_ADMIN_UNAUTHENTICATED', (err.detail ?? err.message).replace('agent token', 'admin token'));
    }
    throw err;
  }
}

async function readLimited(req: IncomingMessage, max: number): Promise<Buffer> {
  const tooLarge = (): ValetError => new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `The body exceeds ${max} bytes.`);
  if (Number(req.headers['content-length'] ?? 0) > max) throw tooLarge();
  return readAll(req, { max, tooLarge });
}
