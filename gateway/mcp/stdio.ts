import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { DEFAULT_INHERITED_ENV_VARS, StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  isInitializeRequest,
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  type JSONRPCMessage,
  type JSONRPCRequest,
  type ProgressToken,
  type RequestId,
} from '@modelcontextprotocol/sdk/types.js';
import { readAll } from '../read.js';

/**
 * A local stdio MCP server served as MCP Streamable HTTP on a loopback port, so that the rest of
 * Valet treats it exactly like an HTTP MCP upstream (origin `http://127.0.0.1:PORT`).
 *
 * The bridge is a transport-level relay between the SDK's `StreamableHTTPServerTransport` and
 * `StdioClientTransport`: every JSON-RPC message passes through unchanged in both directions,
 * server-initiated requests and notifications included. It is not an MCP `Server`, so it knows
 * nothing of tools and never answers on the child's behalf, except with errors when the child is
 * gone.
 *
 * Sessions: one child process per MCP session. A stdio server is written for one client, keeps
 * per-client state (subscriptions, log level, whatever its tools hold) and may use its process
 * for caches; one process shared by several agents or tenants would leak that state between
 * them. A child lives exactly as long as its session: it is started by `initialize`, and the
 * session ends when the child exits (its pending requests get JSON-RPC errors; the client must
 * initialize again), on `DELETE`, when it has been idle too long, or on `close()`.
 */

/** Error codes of JSON-RPC responses the bridge writes itself (the MCP SDK's values). */
const CONNECTION_CLOSED = -32000;
const SESSION_NOT_FOUND = -32001;
const PARSE_ERROR = -32700;

/** The variables a child takes from Valet's own environment, when set: what programs need to run. */
export const BASE_ENV_KEYS: readonly string[] = ['PATH', 'HOME', 'LANG'];

/** Longest stderr line logged (characters); the rest of the line is dropped. */
const MAX_LOG_LINE = 2000;
/** Env values shorter than this are not redacted from log lines: they would shred every line. */
const MIN_REDACTED_LENGTH = 4;
/** Largest POST body read before a session exists (the SDK transport's own default bound). */
const MAX_INIT_BODY = 4 * 1024 * 1024;

export interface StdioServerConfig {
  readonly command: string;
  readonly args: readonly string[];
  /** The child's environment on top of {@link BASE_ENV_KEYS}; values are secrets and never logged. */
  readonly env: Readonly<Record<string, string>>;
  readonly cwd?: string;
}

/** What the bridge logs through: pino's `Logger` fits. */
export interface BridgeLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export interface StdioBridgeOptions {
  readonly logger: BridgeLogger;
  /** Most sessions (hence children) alive at once; more are refused with 503. Default 16. */
  readonly maxSessions?: number;
  /**
   * A session with no HTTP request and no message either way for this long is ended, pending
   * requests included (a request silent that long is stuck, and its client may be long gone).
   * An open GET stream alone is not activity. Default 10 min.
   */
  readonly idleMs?: number;
  /**
   * Time between SIGTERM and SIGKILL when a child is stopped. Default 2 s. (The SDK transport's
   * own shutdown, which closes stdin and runs alongside, escalates to SIGKILL by 4 s anyway.)
   */
  readonly killGraceMs?: number;
  /**
   * The bridge never restarts a child (the session's state died with it; the client initializes
   * again). After a child fails to start or exits before answering `initialize`, new sessions are
   * refused with 503 for this long, so a client retrying in a loop does not drive a crash loop.
   * Default 1 s; 0 turns it off.
   */
  readonly restartBackoffMs?: number;
  /** The URL path of the MCP endpoint. Default `/mcp`. */
  readonly path?: string;
}

export interface StdioBridge {
  /** `http://127.0.0.1:PORT`. */
  readonly origin: string;
  /** The MCP endpoint's path, e.g. `/mcp`. */
  readonly path: string;
  /**
   * Every request must carry `Authorization: Bearer <token>`. The port is reachable by any local
   * process, agents included; without this a local agent could talk to the child (and use the
   * secrets in its environment) past Valet's policy. Inject it as this upstream's credential.
   */
  readonly token: string;
  /** Live sessions with their child's pid (for operators and tests). */
  sessions(): readonly { readonly id: string; readonly pid: number }[];
  /** Ends every session (children get SIGTERM, then SIGKILL after the grace period) and the listener. */
  close(): Promise<void>;
}

interface Session {
  readonly child: StdioClientTransport;
  readonly http: StreamableHTTPServerTransport;
  id: string | undefined;
  pid: number | undefined;
  /** Requests of the client the child has not answered, with their progress token. */
  readonly pending: Map<RequestId, ProgressToken | undefined>;
  /** Progress token → the request it reports on, so progress travels on that request's stream. */
  readonly progress: Map<ProgressToken, RequestId>;
  initializeId: RequestId | undefined;
  /** The child answered `initialize`. */
  ready: boolean;
  idle: NodeJS.Timeout | undefined;
  /** The child's start (spawn), once asked for; sets `pid`. */
  started: Promise<void> | undefined;
  ended: Promise<void> | undefined;
  readonly exited: Promise<void>;
  hasExited: boolean;
}

/**
 * Starts the bridge for the stdio MCP server `name` on 127.0.0.1 (a free port). Children are
 * started per session, on `initialize`, not here: a command that does not exist is reported to
 * the first client that initializes (and logged), so one broken server does not stop the gateway.
 */
export async function startStdioBridge(name: string, config: StdioServerConfig, o: StdioBridgeOptions): Promise<StdioBridge> {
  if (typeof config.command !== 'string' || config.command === '') throw new TypeError('stdio: command must be a non-empty string');
  const maxSessions = positiveInteger(o.maxSessions ?? 16, 'maxSessions');
  const idleMs = positiveInteger(o.idleMs ?? 600_000, 'idleMs');
  const killGraceMs = positiveInteger(o.killGraceMs ?? 2000, 'killGraceMs');
  const backoffMs = o.restartBackoffMs ?? 1000;
  if (!Number.isInteger(backoffMs) || backoffMs < 0) throw new TypeError('stdio: restartBackoffMs must be an integer >= 0');
  const path = o.path ?? '/mcp';
  if (!path.startsWith('/')) throw new TypeError('stdio: path must start with /');

  const { logger } = o;
  const token = randomBytes(32).toString('base64url');
  const expectedAuth = Buffer.from(`Bearer ${token}`);
  const env = childEnv(config.env);
  const redact = redactor(Object.values(config.env));
  const keep = MAX_LOG_LINE + Math.max(0, ...Object.values(config.env).map((v) => v.length));
  const live = new Set<Session>();
  const byId = new Map<string, Session>();
  let backoffUntil = 0;
  let closing = false;

  const fields = (s: Session | undefined, extra?: Record<string, unknown>): Record<string, unknown> => ({
    upstream: name,
    ...(s?.pid !== undefined && { pid: s.pid }),
    ...(s?.id !== undefined && { session: s.id }),
    ...extra,
  });
  const clean = (text: string): string => truncate(redact(text), MAX_LOG_LINE);

  /**
   * Relays a message to the client, on the stream of `relatedRequestId` when given (the GET
   * stream when that one is gone); failures are logged, never thrown.
   */
  const toClient = (s: Session, message: JSONRPCMessage, relatedRequestId?: RequestId): void => {
    s.http.send(message, relatedRequestId === undefined ? undefined : { relatedRequestId }).catch((err: unknown) => {
      if (relatedRequestId !== undefined) return toClient(s, message);
      logger.info(fields(s, { error: clean(String(err)) }), 'mcp stdio: message to the client dropped');
    });
  };

  /** Answers a pending request of the client with an error, once. */
  const fail = (s: Session, id: RequestId, message: string): void => {
    if (!settle(s, id)) return;
    toClient(s, { jsonrpc: '2.0', id, error: { code: CONNECTION_CLOSED, message } });
  };

  /** Forgets a pending request; false when it was not pending. */
  const settle = (s: Session, id: RequestId): boolean => {
    if (!s.pending.has(id)) return false;
    const progressToken = s.pending.get(id);
    s.pending.delete(id);
    if (progressToken !== undefined) s.progress.delete(progressToken);
    return true;
  };

  const touch = (s: Session): void => {
    s.idle?.refresh();
  };

  const noteStartFailure = (): void => {
    if (backoffMs > 0) backoffUntil = Date.now() + backoffMs;
  };

  /** Stops the child: stdin closed and SIGTERM at once, SIGKILL after the grace period. */
  const stopChild = async (s: Session): Promise<void> => {
    await s.started?.catch(() => undefined);
    if (s.hasExited || s.pid === undefined) return;
    const pid = s.pid;
    void s.child.close().catch(() => undefined);
    signal(pid, 'SIGTERM');
    if (await within(s.exited, killGraceMs)) return;
    logger.warn(fields(s), 'mcp stdio: server ignored SIGTERM; killing it');
    signal(pid, 'SIGKILL');
    await within(s.exited, killGraceMs);
  };

  /** Ends a session once: its pending requests get `reason` as an error, its streams and child end. */
  const endSession = (s: Session, reason: string): Promise<void> => {
    s.ended ??= (async () => {
      if (s.idle !== undefined) clearTimeout(s.idle);
      live.delete(s);
      if (s.id !== undefined) byId.delete(s.id);
      for (const id of [...s.pending.keys()]) fail(s, id, reason);
      await s.http.close().catch(() => undefined);
      await stopChild(s);
    })();
    return s.ended;
  };

  const newSession = (): Session => {
    let exited!: () => void;
    const child = new StdioClientTransport({ command: config.command, args: [...config.args], env, stderr: 'pipe', ...(config.cwd !== undefined && { cwd: config.cwd }) });
    const http = new StreamableHTTPServerTransport({
      sessionIdGenerator: randomUUID,
      onsessioninitialized: (id) => {
        s.id = id;
        byId.set(id, s);
        s.idle = setTimeout(() => {
          logger.info(fields(s), 'mcp stdio: idle session ended');
          void endSession(s, `MCP session idle for ${idleMs} ms; initialize again`);
        }, idleMs);
        s.idle.unref();
      },
    });
    const s: Session = {
      child,
      http,
      id: undefined,
      pid: undefined,
      pending: new Map(),
      progress: new Map(),
      initializeId: undefined,
      ready: false,
      idle: undefined,
      started: undefined,
      ended: undefined,
      exited: new Promise<void>((resolve) => (exited = resolve)),
      hasExited: false,
    };

    const stderr = child.stderr;
    if (stderr instanceof Readable) {
      forEachLine(stderr, keep, (line) => logger.info(fields(s, { stderr: clean(line) }), 'mcp stdio: server stderr'));
    }

    http.onmessage = (message): void => {
      touch(s);
      if (isJSONRPCRequest(message)) {
        const progressToken = message.params?._meta?.progressToken;
        s.pending.set(message.id, progressToken);
        if (progressToken !== undefined) s.progress.set(progressToken, message.id);
        if (isInitializeRequest(message)) s.initializeId = message.id;
      } else if (isJSONRPCNotification(message) && message.method === 'notifications/cancelled') {
        // The server will not answer a cancelled request, and the client expects nothing more.
        const requestId = message.params?.['requestId'];
        if (typeof requestId === 'string' || typeof requestId === 'number') settle(s, requestId);
      }
      child.send(message).catch((err: unknown) => {
        logger.warn(fields(s, { error: clean(String(err)) }), 'mcp stdio: message to the server failed');
        if (isJSONRPCRequest(message)) fail(s, message.id, `MCP server "${name}" is not running; initialize again`);
      });
    };
    http.onerror = (err): void => logger.info(fields(s, { error: clean(err.message) }), 'mcp stdio: client request refused');
    http.onclose = (): void => void endSession(s, 'MCP session closed');

    child.onmessage = (message): void => {
      touch(s);
      if (isJSONRPCResultResponse(message) || isJSONRPCErrorResponse(message)) {
        const id = message.id;
        if (id === undefined || !settle(s, id)) {
          logger.info(fields(s), 'mcp stdio: server answered a request that is not pending (cancelled or unknown); dropped');
          return;
        }
        if (id === s.initializeId) {
          s.ready = true;
          if (isJSONRPCResultResponse(message)) backoffUntil = 0;
        }
        toClient(s, message);
        return;
      }
      // Over stdio, what a server sends while handling a request (progress, log messages, a
      // sampling or elicitation request) is no longer tied to that request. A native server would
      // send it on the request's stream, and clients may not have their GET stream open yet (the
      // SDK's opens it in the background), so it goes on the stream of the request its progress
      // token names, else of the newest pending request (same session, same client), else on GET.
      const progressToken = isJSONRPCNotification(message) && message.method === 'notifications/progress' ? message.params?.['progressToken'] : undefined;
      const named = typeof progressToken === 'string' || typeof progressToken === 'number' ? s.progress.get(progressToken) : undefined;
      toClient(s, message, named ?? newest(s.pending));
    };
    child.onerror = (err): void => {
      // Before the child runs, its error is the start failure that openSession reports.
      if (s.pid !== undefined) logger.warn(fields(s, { error: clean(err.message) }), 'mcp stdio: server transport error');
    };
    child.onclose = (): void => {
      s.hasExited = true;
      exited();
      if (s.pid === undefined) return; // never started: reported by openSession
      if (s.ended !== undefined) {
        logger.info(fields(s), 'mcp stdio: server stopped');
        return;
      }
      if (!s.ready) noteStartFailure();
      logger.warn(fields(s, { ready: s.ready }), s.ready ? 'mcp stdio: server exited; session ended' : 'mcp stdio: server exited before answering initialize');
      void endSession(s, `MCP server "${name}" exited; initialize a new session`);
    };
    return s;
  };

  /** `initialize` without a session: start a child, then let the SDK transport take the request. */
  const openSession = async (req: IncomingMessage, res: ServerResponse, body: unknown, initId: RequestId | null): Promise<void> => {
    if (closing) return replyError(res, 503, initId, CONNECTION_CLOSED, 'MCP bridge is shutting down');
    if (live.size >= maxSessions) {
      logger.warn(fields(undefined, { sessions: live.size }), 'mcp stdio: session refused; too many sessions');
      return replyError(res, 503, initId, CONNECTION_CLOSED, `MCP server "${name}" has too many sessions (${maxSessions}); retry later`, { 'retry-after': '1' });
    }
    const wait = backoffUntil - Date.now();
    if (wait > 0) {
      const retryAfter = String(Math.ceil(wait / 1000));
      return replyError(res, 503, initId, CONNECTION_CLOSED, `MCP server "${name}" failed to start recently; retry later`, { 'retry-after': retryAfter });
    }
    const s = newSession();
    live.add(s);
    s.started = s.child.start().then(() => {
      s.pid = s.child.pid ?? undefined;
    });
    try {
      await s.started;
    } catch (err) {
      live.delete(s);
      s.hasExited = true;
      noteStartFailure();
      const code = (err as NodeJS.ErrnoException).code;
      logger.error(fields(s, { command: config.command, code, error: clean(String(err)) }), 'mcp stdio: server could not be started');
      return replyError(res, 502, initId, CONNECTION_CLOSED, `MCP server "${name}" could not be started: ${startFailure(code)}`);
    }
    logger.info(fields(s, { command: config.command }), 'mcp stdio: server started');
    // close() ran while the child was starting; it waited for the start and stops the child.
    if (s.ended !== undefined) return replyError(res, 503, initId, CONNECTION_CLOSED, 'MCP bridge is shutting down');
    try {
      await s.http.start();
      await s.http.handleRequest(req, res, body);
    } finally {
      // Refused by the transport (headers, media type): no session will ever reach this child.
      if (s.id === undefined) await endSession(s, 'initialize refused');
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (url.pathname !== path) return replyError(res, 404, null, CONNECTION_CLOSED, 'Not found');
    const auth = Buffer.from(req.headers.authorization ?? '');
    if (auth.length !== expectedAuth.length || !timingSafeEqual(auth, expectedAuth)) {
      return replyError(res, 401, null, CONNECTION_CLOSED, 'Unauthorized', { 'www-authenticate': 'Bearer' });
    }
    const sessionId = req.headers['mcp-session-id'];
    if (typeof sessionId === 'string') {
      const s = byId.get(sessionId);
      if (s === undefined) return replyError(res, 404, null, SESSION_NOT_FOUND, 'Session not found');
      touch(s);
      return s.http.handleRequest(req, res);
    }
    if (req.method !== 'POST') return replyError(res, 400, null, CONNECTION_CLOSED, 'Bad Request: Mcp-Session-Id header is required');
    const body = await readJson(req);
    if (body === TOO_LARGE) return replyError(res, 413, null, CONNECTION_CLOSED, 'Request body too large', { connection: 'close' });
    if (body === INVALID) return replyError(res, 400, null, PARSE_ERROR, 'Parse error: Invalid JSON');
    const init = (Array.isArray(body) ? body : [body]).find((m: unknown): m is JSONRPCRequest => isJSONRPCRequest(m) && isInitializeRequest(m));
    if (init === undefined) return replyError(res, 400, null, CONNECTION_CLOSED, 'Bad Request: Mcp-Session-Id header is required');
    return openSession(req, res, body, init.id);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      logger.error(fields(undefined, { error: clean(String(err)) }), 'mcp stdio: request failed');
      if (!res.headersSent) replyError(res, 500, null, CONNECTION_CLOSED, 'Internal error');
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  logger.info({ upstream: name, port, command: config.command }, 'mcp stdio: bridge listening');

  return {
    origin: `http://127.0.0.1:${port}`,
    path,
    token,
    sessions: () => [...byId.values()].flatMap((s) => (s.id !== undefined && s.pid !== undefined ? [{ id: s.id, pid: s.pid }] : [])),
    close: async (): Promise<void> => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all([...live].map((s) => endSession(s, 'MCP bridge is shutting down')));
      server.closeAllConnections();
      await closed;
    },
  };
}

/** The most recently sent of `pending`'s requests. */
function newest(pending: ReadonlyMap<RequestId, unknown>): RequestId | undefined {
  let last: RequestId | undefined;
  for (const id of pending.keys()) last = id;
  return last;
}

function positiveInteger(v: number, what: string): number {
  if (!Number.isInteger(v) || v <= 0) throw new TypeError(`stdio: ${what} must be a positive integer`);
  return v;
}

/**
 * The child's environment: {@link BASE_ENV_KEYS} from ours, then the configured variables. The
 * SDK adds its own inherited list (USER, SHELL, ...) under whatever it is given; those keys are
 * set to undefined here, which Node's spawn leaves out, so the child sees exactly this set and
 * nothing of Valet's environment (master keys, database URLs).
 */
function childEnv(configured: Readonly<Record<string, string>>): Record<string, string> {
  const env: Record<string, string | undefined> = {};
  for (const key of DEFAULT_INHERITED_ENV_VARS) env[key] = undefined;
  for (const key of BASE_ENV_KEYS) env[key] = process.env[key];
  Object.assign(env, configured);
  return env as Record<string, string>;
}

/** Replaces every configured value (longest first) in a text by `[REDACTED]`. */
function redactor(values: readonly string[]): (text: string) => string {
  const secrets = [...new Set(values)].filter((v) => v.length >= MIN_REDACTED_LENGTH).sort((a, b) => b.length - a.length);
  return (text) => secrets.reduce((t, v) => t.replaceAll(v, '[REDACTED]'), text);
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…[truncated]`;
}

/**
 * Calls `onLine` for each line of `stream`, keeping the first `keep` characters of a line. `keep`
 * exceeds the logged length by the longest secret, so a secret that starts within the logged part
 * is whole when it is redacted, and an endless line cannot grow a buffer.
 */
function forEachLine(stream: Readable, keep: number, onLine: (line: string) => void): void {
  let line = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const parts = chunk.split('\n');
    parts.forEach((part, i) => {
      if (line.length < keep) line += part.slice(0, keep - line.length);
      if (i < parts.length - 1) {
        if (line.trim() !== '') onLine(line.replace(/\r$/, ''));
        line = '';
      }
    });
  });
  stream.on('end', () => {
    if (line.trim() !== '') onLine(line);
  });
}

function startFailure(code: string | undefined): string {
  switch (code) {
    case 'ENOENT':
      return 'command not found';
    case 'EACCES':
      return 'command not executable (permission denied)';
    default:
      return code ?? 'spawn failed';
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Whether `p` settles within `ms`. */
async function within(p: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const TOO_LARGE = Symbol('too large');
const INVALID = Symbol('invalid');

/** What {@link readAll} rejects with past {@link MAX_INIT_BODY}: told apart by identity, never shown. */
const BODY_TOO_LARGE = new Error('too large');
const INIT_BODY_LIMIT = { max: MAX_INIT_BODY, tooLarge: () => BODY_TOO_LARGE };

/** The request body as JSON, read up to {@link MAX_INIT_BODY} bytes. */
async function readJson(req: IncomingMessage): Promise<unknown> {
  let body: Buffer;
  try {
    body = await readAll(req, INIT_BODY_LIMIT);
  } catch (err) {
    if (err === BODY_TOO_LARGE) return TOO_LARGE;
    throw err;
  }
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch {
    return INVALID;
  }
}

function replyError(res: ServerResponse, status: number, id: RequestId | null, code: number, message: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', id, error: { code, message } }));
}
