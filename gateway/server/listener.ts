import type { IncomingMessage, OutgoingHttpHeaders, Server, ServerResponse } from 'node:http';
import {
  constants,
  createServer as createHttp2Server,
  Http2ServerRequest,
  Http2ServerResponse,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { Socket } from 'node:net';
import type { ReadableOptions } from 'node:stream';

/** What an HTTP/2 client sends before anything else, cleartext with prior knowledge included (RFC 9113 §3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * Response headers that describe one connection (RFC 9113 §8.2.2): HTTP/2 has none, and Node
 * refuses to send them (ERR_HTTP2_INVALID_CONNECTION_HEADERS).
 */
const CONNECTION_SPECIFIC: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings', 'te']);

/**
 * Response headers Node sends at most once on HTTP/2 (its `kSingleValueHeaders`); HTTP/1 passes an
 * upstream's repeated copies on, HTTP/2 keeps the first rather than fail the whole response.
 */
const SINGLE_VALUE: ReadonlySet<string> = new Set([
  'access-control-allow-credentials',
  'access-control-max-age',
  'age',
  'content-encoding',
  'content-language',
  'content-length',
  'content-location',
  'content-md5',
  'content-range',
  'content-type',
  'date',
  'etag',
  'expires',
  'last-modified',
  'location',
  'retry-after',
  'tk',
  'x-content-type-options',
]);

/** How the HTTP/2 side of a data-plane port is held to the same limits as its HTTP/1 side. */
export interface Http2Limits {
  /** The HTTP/1 `maxHeaderSize`: the most header bytes a request may carry (RFC 9113 §6.5.2 counting). */
  readonly maxHeaderBytes: number;
  /** A new connection's first request must be complete this soon (HTTP/1's `headersTimeout`). */
  readonly headersTimeoutMs: number;
  /** A session with no request in flight is closed (GOAWAY) after this long (HTTP/1's `keepAliveTimeout`). */
  readonly keepAliveTimeoutMs: number;
  /** Requests one session may have in flight at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
}

/** The HTTP/2 sessions of one data-plane port, for shutdown. */
export interface Http2Sessions {
  /** Shutdown began: connections not yet sniffed are dropped, sessions get GOAWAY and finish the requests they have. */
  drain(): void;
  /** The grace period is over: every session left is destroyed. */
  destroyAll(): void;
}

export type AgentRequestListener = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * Makes a data-plane HTTP/1.1 server accept HTTP/2 cleartext with prior knowledge (h2c) on the
 * same port: each new connection is read until its first bytes tell the HTTP/2 preface from
 * anything else, put back (`unshift`), and handed to an HTTP/2 server or to the HTTP/1.1 server's
 * own connection handling. A connection that sends less than that and stalls is dropped at the
 * headers deadline, as HTTP/1 drops one that never completes its head (HTTP/1's own deadline runs
 * from the hand-over, which the first byte or two of a request line already decide).
 *
 * HTTP/2 requests reach `onRequest` through Node's compatibility API, which stands in for
 * IncomingMessage/ServerResponse; where the two differ (framing, pseudo-headers, hang-ups), the
 * request path asks {@link isHttp2}. Must be called on a server that only has Node's own
 * `connection` listener (listeners added later still run before the protocol is chosen).
 */
export function acceptHttp2(server: Server, limits: Http2Limits, onRequest: AgentRequestListener): Http2Sessions {
  const own = server.listeners('connection');
  if (own.length !== 1) throw new TypeError('acceptHttp2 needs a server with only its own connection listener');
  const http1 = own[0] as (socket: Socket) => void;
  server.removeListener('connection', http1);

  const h2 = createHttp2Server(
    {
      settings: { maxConcurrentStreams: limits.maxConcurrentStreams, maxHeaderListSize: limits.maxHeaderBytes },
      // HTTP/1 drops headers past 2,000; the header bytes are bounded anyway.
      maxHeaderListPairs: 2_000,
      Http2ServerRequest: AgentHttp2Request,
      Http2ServerResponse: AgentHttp2Response,
    },
    (req, res) => {
      // Until a client acknowledges its SETTINGS, Node does not hold it to maxHeaderListSize: this does.
      if (headerListSize(req.rawHeaders) > limits.maxHeaderBytes) {
        req.stream.close(constants.NGHTTP2_ENHANCE_YOUR_CALM);
        return;
      }
      // The compatibility classes are built to be used as these; see isHttp2 for where they differ.
      onRequest(req as unknown as IncomingMessage, res as unknown as ServerResponse);
    },
  );
  // A protocol error ends its session (GOAWAY); nothing to answer or audit.
  h2.on('sessionError', () => undefined);

  let draining = false;
  const sniffing = new Set<Socket>();
  const sessions = new Set<ServerHttp2Session>();

  h2.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    let open = 0;
    const close = (): void => session.close();
    let idle = setTimeout(close, limits.headersTimeoutMs);
    session.on('stream', (stream: ServerHttp2Stream) => {
      open++;
      clearTimeout(idle);
      stream.once('close', () => {
        if (--open === 0 && !session.closed) idle = setTimeout(close, limits.keepAliveTimeoutMs);
      });
    });
    session.once('close', () => {
      clearTimeout(idle);
      sessions.delete(session);
    });
    if (draining) session.close();
  });

  server.on('connection', (socket: Socket) => {
    if (socket.destroyed) return;
    if (draining) {
      socket.destroy();
      return;
    }
    sniffing.add(socket);
    let seen: Buffer = Buffer.alloc(0);
    const deadline = setTimeout(() => socket.destroy(), limits.headersTimeoutMs);
    const done = (): void => {
      clearTimeout(deadline);
      sniffing.delete(socket);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onError);
      socket.off('close', done);
    };
    // Before a protocol is known there is nobody to answer: a reset or half-close just ends it.
    const onError = (): void => {
      done();
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const preface = seen.compare(PREFACE, 0, n, 0, n) === 0;
      if (preface && seen.length < PREFACE.length) return;
      done();
      socket.pause();
      socket.unshift(seen);
      if (preface) {
        // The HTTP/2 session takes up what was put back itself.
        h2.emit('connection', socket);
      } else {
        // HTTP/1 reads the socket natively from here on; what was put back flows to it on resume.
        http1.call(server, socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onError);
    socket.once('close', done);
  });

  return {
    drain(): void {
      draining = true;
      for (const socket of sniffing) socket.destroy();
      for (const session of sessions) session.close();
    },
    destroyAll(): void {
      for (const socket of sniffing) socket.destroy();
      for (const session of sessions) session.destroy();
    },
  };
}

/** Whether a request came over HTTP/2 (through Node's compatibility API). */
export function isHttp2(req: IncomingMessage): boolean {
  return req.httpVersionMajor === 2;
}

/**
 * Whether an HTTP/2 request declared that no body follows, by ending its stream with the HEADERS
 * frame (RFC 9113 §8.1). Otherwise a body follows: of `content-length` bytes when given (Node resets
 * a stream whose DATA frames disagree with it), else of a length known at its end.
 */
export function endedWithHeaders(req: IncomingMessage): boolean {
  return (req as unknown as Http2ServerRequest).stream?.endAfterHeaders === true;
}

/**
 * Ends what a request came over once its response has been written, so the agent stops sending a
 * body nobody will read: the connection for HTTP/1, only the request's stream for HTTP/2
 * (RST_STREAM NO_ERROR, RFC 9113 §8.1), leaving the session's other requests alone.
 */
export function closeAfterResponse(req: IncomingMessage): void {
  if (isHttp2(req)) closeStream((req as unknown as Http2ServerRequest).stream);
  else req.socket.destroySoon();
}

/** How long a finished response may take to leave (its END_STREAM sent) before its stream is reset anyway. */
const END_STREAM_WAIT_MS = 2_000;

/** Resets a stream with NO_ERROR once its response is out, unless the agent already finished its side. */
function closeStream(stream: ServerHttp2Stream): void {
  const until = Date.now() + END_STREAM_WAIT_MS;
  let turns = 0;
  const check = (): void => {
    if (stream.closed || stream.destroyed || stream.state.remoteClose === 1) return;
    // Node reports a response finished before nghttp2 has sent its END_STREAM (usually a turn or two
    // later); a reset sent before that would cut the response short.
    if (stream.state.localClose !== 1 && Date.now() < until) {
      if (++turns < 16) setImmediate(check);
      else setTimeout(check, 10);
      return;
    }
    stream.close(constants.NGHTTP2_NO_ERROR);
  };
  if (stream.writableFinished) check();
  else stream.once('finish', check);
}

/** Header bytes as HTTP/2 counts them (RFC 9113 §6.5.2): each name and value, plus 32 per field. */
function headerListSize(rawHeaders: readonly string[]): number {
  let size = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) size += Buffer.byteLength(rawHeaders[i] as string) + Buffer.byteLength(rawHeaders[i + 1] as string) + 32;
  return size;
}

/** `Host` is what the request path routes by and builds links from; an HTTP/2 agent sends `:authority` instead. */
class AgentHttp2Request extends Http2ServerRequest {
  constructor(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, options: ReadableOptions, rawHeaders: readonly string[]) {
    super(stream, headers, options, rawHeaders);
    const authority = headers[':authority'];
    if (headers.host === undefined && authority !== undefined) headers.host = authority;
  }
}

/**
 * A response that can be written as an HTTP/1 one is: connection-specific headers are left out
 * (`Connection: close` becomes a reset of this stream alone once the response is out), and a
 * header Node sends only once keeps its first value.
 */
class AgentHttp2Response extends Http2ServerResponse {
  override setHeader(name: string, value: number | string | readonly string[]): void {
    if (!CONNECTION_SPECIFIC.has(name.toLowerCase())) super.setHeader(name, value);
  }

  override writeHead(statusCode: number, headers?: OutgoingHttpHeaders): this;
  override writeHead(statusCode: number, statusMessage: string, headers?: OutgoingHttpHeaders): this;
  override writeHead(statusCode: number, a?: string | OutgoingHttpHeaders, b?: OutgoingHttpHeaders): this {
    const given = typeof a === 'object' ? a : b;
    if (given === undefined || Array.isArray(given)) return super.writeHead(statusCode, given);
    const headers: OutgoingHttpHeaders = {};
    let close = false;
    for (const [key, value] of Object.entries(given)) {
      const name = key.toLowerCase();
      if (CONNECTION_SPECIFIC.has(name)) {
        if (name === 'connection' && /(^|,)\s*close\s*(,|$)/i.test(String(value))) close = true;
        continue;
      }
      headers[name] = Array.isArray(value) && SINGLE_VALUE.has(name) ? value[0] : value;
    }
    super.writeHead(statusCode, headers);
    if (close) closeStream(this.stream);
    return this;
  }
}
