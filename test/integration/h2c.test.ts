/**
 * HTTP/2 cleartext with prior knowledge (h2c) on the data plane, driven by Node's own HTTP/2
 * client (and, where a client would refuse to send it, by hand-made frames): the same port serves
 * HTTP/1.1 and HTTP/2, and an HTTP/2 request goes through the same pipeline — authentication,
 * policy, credential injection, header hygiene, streaming both ways, audit — as an HTTP/1.1 one.
 */
import { connect as connectHttp2, constants, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditRow } from '../../gateway/audit/port.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const SECRET = 'sk-upstream-real-9c1e77a3f0';
const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';

interface H2Response {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request on `session`; `body` pieces are written one by one, `gapMs` apart (no content-length unless given). */
function h2Call(session: ClientHttp2Session, headers: OutgoingHttpHeaders, body?: readonly string[], gapMs = 0): Promise<H2Response> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let status = 0;
    let got: IncomingHttpHeaders = {};
    let text = '';
    req.on('response', (h) => {
      got = h;
      status = Number(h[':status']);
    });
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => resolve({ status, headers: got, body: text }));
    req.on('error', reject);
    if (body === undefined) return;
    if (gapMs === 0) {
      for (const chunk of body) req.write(chunk);
      req.end();
      return;
    }
    void (async () => {
      for (const chunk of body) {
        req.write(chunk);
        await sleep(gapMs);
      }
      req.end();
    })();
  });
}

/** A frame as read off the wire. */
interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, GOAWAY: 7 } as const;

function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK integer with a 7-bit prefix (RFC 7541 §5.1). */
function hpackInt(n: number): Buffer {
  if (n < 127) return Buffer.from([n]);
  const out = [127];
  for (n -= 127; n >= 128; n >>= 7) out.push((n & 0x7f) | 0x80);
  out.push(n);
  return Buffer.from(out);
}

/** A header block of literal fields without indexing, no Huffman coding: exactly what is written. */
function headerBlock(fields: readonly [string, string][]): Buffer {
  return Buffer.concat(fields.flatMap(([n, v]) => [Buffer.from([0]), hpackInt(n.length), Buffer.from(n), hpackInt(Buffer.byteLength(v)), Buffer.from(v)]));
}

/**
 * Speaks HTTP/2 by hand on a new connection: the preface, an empty SETTINGS (never acknowledging
 * the server's), then `frames`; returns every frame received until the server closes or `waitMs` passes.
 */
function rawHttp2(port: number, frames: readonly Buffer[], waitMs = 500): Promise<Frame[]> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const got: Frame[] = [];
    let buf = Buffer.alloc(0);
    const finish = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(got);
    };
    const timer = setTimeout(finish, waitMs);
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9) {
        const length = buf.readUIntBE(0, 3);
        if (buf.length < 9 + length) break;
        got.push({ type: buf[3] as number, flags: buf[4] as number, stream: buf.readUInt32BE(5), payload: buf.subarray(9, 9 + length) });
        buf = buf.subarray(9 + length);
      }
    });
    socket.on('error', finish);
    socket.on('close', finish);
    socket.write(Buffer.concat([Buffer.from(PREFACE, 'latin1'), frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)), ...frames]));
  });
}

const resets = (frames: readonly Frame[]): number[] => frames.filter((f) => f.type === FRAME.RST_STREAM).map((f) => f.payload.readUInt32BE(0));

/** Every header name the upstream received, lower-cased. */
const namesOf = (r: RecordedRequest): string[] => r.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());

describe('HTTP/2 cleartext with prior knowledge (h2c) on the data plane', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let port: number;
  let session: ClientHttp2Session;
  const sseWrites: number[] = [];
  const timers: NodeJS.Timeout[] = [];

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      const path = req.url.split('?')[0];
      if (path === '/v1/sse') {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        let n = 0;
        const tick = (): void => {
          sseWrites.push(performance.now());
          res.write(`data: ${n}\n\n`);
          n++;
          // After the last event the stream is held open, like a live one.
          if (n < 5) timers.push(setTimeout(tick, 100));
        };
        tick();
        return;
      }
      if (path === '/v1/slow') {
        timers.push(setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end('{"slow":true}'), 400));
        return;
      }
      if (path === '/v1/odd-headers') {
        // What an HTTP/1.1 upstream may send that HTTP/2 forbids or sends once: Node adds
        // connection, keep-alive and transfer-encoding (chunked) itself.
        res.setHeader('content-type', ['application/json', 'text/plain']);
        res.setHeader('upgrade', 'h2c');
        res.setHeader('connection', 'keep-alive, x-hop');
        res.setHeader('x-hop', 'named by connection');
        res.setHeader('set-cookie', ['a=1', 'b=2']);
        res.write('{"odd":');
        res.end('true}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': 'up-1' });
      res.end(JSON.stringify({ method: req.method, url: req.url, body: req.body.toString('utf8') }));
    });
    gw = await startTestGateway({
      upstreams: [
        { name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' }, hosts: ['api.valet.test'] },
        { name: 'own', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' }, listen: { port: 0 } },
      ],
      rules: [
        { id: 'allow-all', effect: 'allow' },
        { id: 'no-admin', upstream: 'api', paths: ['/admin/**'], effect: 'deny', reason: 'admin is off limits' },
      ],
      gateway: { max_header_bytes: 4096, max_stream_body_bytes: 65_536, max_body_bytes: 16_384, timeouts: { headers: '1s' } },
      env: { API_KEY: SECRET },
    });
    port = gw.gateway.port;
    session = connectHttp2(gw.url);
  });
  afterAll(async () => {
    for (const t of timers) clearTimeout(t);
    session?.close();
    await gw?.close();
    await upstream?.close();
  });

  const nothingOfTheAgent = (r: RecordedRequest, token: string): void => {
    const seen = [r.method, r.url, ...r.rawHeaders, r.body.toString('latin1')].join('\n');
    expect(seen).not.toContain(token);
    expect(namesOf(r).filter((n) => n.startsWith(':'))).toEqual([]);
    expect(headerValues(r, 'authorization')).toEqual([`Bearer ${SECRET}`]);
  };

  it('GET: forwarded with the real credential, no pseudo-header and no agent token; the answer and its headers come back; audited', async () => {
    const token = await gw.token();
    const res = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/items?limit=2', authorization: `Bearer ${token}`, 'x-agent-header': 'kept' });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ method: 'GET', url: '/v1/items?limit=2', body: '' });
    expect(res.headers['x-request-id']).toBe('up-1');
    const id = res.headers['valet-request-id'] as string;
    const got = upstream.requests.at(-1) as RecordedRequest;
    nothingOfTheAgent(got, token);
    expect(headerValues(got, 'x-agent-header')).toEqual(['kept']);
    expect(headerValues(got, 'host')).toEqual([`127.0.0.1:${upstream.port}`]);
    // A GET whose HEADERS frame ended the stream has no body to frame.
    expect(headerValues(got, 'transfer-encoding')).toEqual([]);
    expect(headerValues(got, 'content-length')).toEqual([]);
    expect(await auditRowFor(gw, id)).toMatchObject({ agent: 'agent-1', upstream: 'api', method: 'GET', path: '/v1/items', decision: 'allow', status: 200, upstream_status: 200, error_code: null, upstream_request_id: 'up-1' });
    expect(gw.logs.some((l) => l.includes(id) && l.includes('"msg":"request"'))).toBe(true);
    const head = await h2Call(session, { ':method': 'HEAD', ':path': '/api/v1/items', authorization: `Bearer ${token}` });
    expect(head).toMatchObject({ status: 200, body: '' });
    expect(head.headers['content-type']).toBe('application/json');
  });

  it('POST: a body streamed in pieces (no content-length) and one with content-length both reach the upstream whole', async () => {
    const token = await gw.token();
    const pieces = ['{"a":', '"streamed ', 'body"}'];
    const streamed = await h2Call(session, { ':method': 'POST', ':path': '/api/v1/upload', authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' }, pieces, 30);
    expect(streamed.status).toBe(200);
    expect(JSON.parse(streamed.body)).toMatchObject({ method: 'POST', body: pieces.join('') });
    const got = upstream.requests.at(-1) as RecordedRequest;
    // Still arriving when it was forwarded: streamed upstream, chunked.
    expect(headerValues(got, 'transfer-encoding')).toEqual(['chunked']);
    nothingOfTheAgent(got, token);
    const body = JSON.stringify({ model: 'm', prompt: 'x'.repeat(3000) });
    const sized = await h2Call(session, { ':method': 'POST', ':path': '/api/v1/chat', authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': String(body.length) }, [body]);
    expect(sized.status).toBe(200);
    expect(JSON.parse(sized.body)).toMatchObject({ body });
    expect(headerValues(upstream.requests.at(-1) as RecordedRequest, 'content-length')).toEqual([String(body.length)]);
    expect(await auditRowFor(gw, sized.headers['valet-request-id'] as string)).toMatchObject({ status: 200, bytes_in: body.length });
  });

  it('streams server-sent events to the agent event by event', async () => {
    const token = await gw.token();
    sseWrites.length = 0;
    const req = session.request({ ':method': 'GET', ':path': '/api/v1/sse', authorization: `Bearer ${token}` });
    const headers = await new Promise<IncomingHttpHeaders>((r) => req.once('response', (h) => r(h)));
    expect(headers[':status']).toBe(200);
    expect(headers['content-type']).toBe('text/event-stream');
    const arrivals: number[] = [];
    const events: string[] = [];
    let buf = '';
    for await (const chunk of req) {
      buf += (chunk as Buffer).toString('utf8');
      let i: number;
      while ((i = buf.indexOf('\n\n')) !== -1) {
        events.push(buf.slice(0, i));
        arrivals.push(performance.now());
        buf = buf.slice(i + 2);
      }
      if (events.length >= 5) break;
    }
    expect(events).toEqual(['data: 0', 'data: 1', 'data: 2', 'data: 3', 'data: 4']);
    expect(arrivals[0] as number).toBeLessThan(sseWrites[4] as number);
    for (let n = 0; n < 3; n++) expect(arrivals[n] as number, `event ${n}`).toBeLessThan(sseWrites[n + 2] as number);
    // Breaking off the loop reset the stream: the agent hung up on a live stream.
    const row = await auditRowFor(gw, headers['valet-request-id'] as string);
    expect(row).toMatchObject({ status: 200, error_code: 'VALET_ERR_CLIENT_CLOSED' });
    expect(row.bytes_out).toBeGreaterThanOrEqual('data: 0\n\n'.length * 5);
  });

  it('serves 20 concurrent streams on one session over one connection', async () => {
    const token = await gw.token();
    const connections: Socket[] = [];
    const onConnection = (s: Socket): number => connections.push(s);
    gw.gateway.server.on('connection', onConnection);
    const one = connectHttp2(gw.url);
    try {
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => h2Call(one, { ':method': 'POST', ':path': `/api/v1/n/${i}`, authorization: `Bearer ${token}`, 'content-type': 'text/plain' }, [`body ${i}`])),
      );
      expect(results.map((r) => r.status)).toEqual(Array.from({ length: 20 }, () => 200));
      expect(results.map((r) => (JSON.parse(r.body) as { url: string; body: string }).body)).toEqual(Array.from({ length: 20 }, (_, i) => `body ${i}`));
      expect(connections).toHaveLength(1);
      const ids = new Set(results.map((r) => r.headers['valet-request-id']));
      expect(ids.size).toBe(20);
    } finally {
      one.close();
      gw.gateway.server.off('connection', onConnection);
    }
  });

  it('a policy deny is the coded error, rendered with its headers; nothing is forwarded; audited', async () => {
    const before = upstream.requests.length;
    const res = await h2Call(session, { ':method': 'GET', ':path': '/api/admin/users', authorization: `Bearer ${await gw.token()}` });
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(res.headers['x-should-retry']).toBe('false');
    const id = res.headers['valet-request-id'] as string;
    expect(res.headers['x-request-id']).toBe(id);
    const body = expectErrorBody(res.body, 'VALET_ERR_POLICY_DENIED', id);
    expect(body.error.message).toContain('Denied by rule no-admin: admin is off limits');
    const missing = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/items' });
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe('Bearer realm="valet"');
    expect(upstream.requests.length).toBe(before);
    expect(await auditRowFor(gw, id)).toMatchObject({ status: 403, decision: 'deny', rule: 'no-admin', error_code: 'VALET_ERR_POLICY_DENIED' });
  });

  it('an agent that resets its stream before the answer is audited as a client hang-up (499); the session goes on', async () => {
    const before = upstream.requests.length;
    const req = session.request({ ':method': 'GET', ':path': '/api/v1/slow?hangup=1', authorization: `Bearer ${await gw.token()}` });
    req.on('error', () => undefined);
    const deadline = Date.now() + 3_000;
    while (upstream.requests.length === before && Date.now() < deadline) await sleep(5);
    req.close(constants.NGHTTP2_CANCEL);
    let rows: AuditRow[] = [];
    while (rows.length === 0 && Date.now() < deadline + 3_000) {
      rows = (await gw.auditRows()).filter((r) => r.path === '/v1/slow' && r.error_code !== null);
      if (rows.length === 0) await sleep(20);
    }
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ status: 499, error_code: 'VALET_ERR_CLIENT_CLOSED', upstream_status: null });
    const next = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/after', authorization: `Bearer ${await gw.token()}` });
    expect(next.status).toBe(200);
  });

  it('connection-specific headers of an HTTP/1.1 upstream never reach the HTTP/2 answer; a repeated single-value header keeps its first value', async () => {
    const res = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/odd-headers', authorization: `Bearer ${await gw.token()}` });
    expect(res.status).toBe(200);
    expect(res.body).toBe('{"odd":true}');
    for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'x-hop']) expect(res.headers[name], name).toBeUndefined();
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers['set-cookie']).toEqual(['a=1', 'b=2']);
  });

  it('a body over max_stream_body_bytes is refused (413) and only its stream is reset; the session goes on', async () => {
    const token = await gw.token();
    const before = upstream.requests.length;
    const big = await h2Call(session, { ':method': 'POST', ':path': '/api/v1/upload', authorization: `Bearer ${token}`, 'content-length': '70000' }, ['x'.repeat(70_000)]).catch((e: unknown) => e);
    // The 413 comes before the body is read; the stream is then reset with NO_ERROR (RFC 9113 §8.1).
    expect(big).toMatchObject({ status: 413 });
    expectErrorBody((big as H2Response).body, 'VALET_ERR_BODY_TOO_LARGE', (big as H2Response).headers['valet-request-id'] as string);
    const chunked = await h2Call(session, { ':method': 'POST', ':path': '/api/v1/upload', authorization: `Bearer ${token}` }, Array.from({ length: 10 }, () => 'y'.repeat(8_192))).catch((e: unknown) => e);
    expect(chunked).toMatchObject({ status: 413 });
    // The streamed one was on its way upstream when it broke the limit: the upstream never got it whole.
    expect(upstream.requests.slice(before).filter((r) => r.body.length >= 65_536)).toEqual([]);
    const next = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/after', authorization: `Bearer ${token}` });
    expect(next.status).toBe(200);
  });

  describe('request framing and headers (hand-made frames)', () => {
    const base = (path: string, token: string): [string, string][] => [
      [':method', 'POST'],
      [':path', path],
      [':scheme', 'http'],
      [':authority', `127.0.0.1:${port}`],
      ['authorization', `Bearer ${token}`],
    ];

    it('transfer-encoding in an HTTP/2 request is refused (RST_STREAM PROTOCOL_ERROR); nothing is forwarded', async () => {
      const before = upstream.requests.length;
      const got = await rawHttp2(port, [
        frame(FRAME.HEADERS, 0x4, 1, headerBlock([...base('/api/v1/te', await gw.token()), ['transfer-encoding', 'chunked']])),
        frame(FRAME.DATA, 0x1, 1, Buffer.from('5\r\nhello\r\n0\r\n\r\n')),
      ]);
      expect(resets(got)).toEqual([constants.NGHTTP2_PROTOCOL_ERROR]);
      expect(got.filter((f) => f.type === FRAME.HEADERS)).toEqual([]);
      await sleep(100);
      expect(upstream.requests.length).toBe(before);
    });

    it('a content-length that disagrees with the DATA frames is refused; the upstream never gets a complete request', async () => {
      const before = upstream.requests.length;
      const token = await gw.token();
      const longer = await rawHttp2(port, [
        frame(FRAME.HEADERS, 0x4, 1, headerBlock([...base('/api/v1/cl-long', token), ['content-length', '10'], ['content-type', 'text/plain']])),
        frame(FRAME.DATA, 0x1, 1, Buffer.from('hello')),
      ]);
      const shorter = await rawHttp2(port, [
        frame(FRAME.HEADERS, 0x4, 1, headerBlock([...base('/api/v1/cl-short', token), ['content-length', '2'], ['content-type', 'text/plain']])),
        frame(FRAME.DATA, 0x1, 1, Buffer.from('hello')),
      ]);
      for (const got of [longer, shorter]) expect(resets(got)).toContain(constants.NGHTTP2_PROTOCOL_ERROR);
      await sleep(200);
      expect(upstream.requests.slice(before).map((r) => r.url)).toEqual([]);
    });

    it('Host that differs from :authority is refused (400)', async () => {
      const before = upstream.requests.length;
      const res = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/items', ':authority': `127.0.0.1:${port}`, host: 'elsewhere.test', authorization: `Bearer ${await gw.token()}` });
      expect(res.status).toBe(400);
      expectErrorBody(res.body, 'VALET_ERR_BAD_REQUEST', res.headers['valet-request-id'] as string);
      expect(upstream.requests.length).toBe(before);
    });

    it('headers over max_header_bytes reset the stream, acknowledged settings or not', async () => {
      const token = await gw.token();
      const big: [string, string][] = Array.from({ length: 8 }, (_, i) => [`x-big-${i}`, 'a'.repeat(600)]);
      const raw = await rawHttp2(port, [frame(FRAME.HEADERS, 0x5, 1, headerBlock([...base('/api/v1/big', token), ...big]))]);
      expect(resets(raw)).toEqual([constants.NGHTTP2_ENHANCE_YOUR_CALM]);
      const viaClient = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/big', authorization: `Bearer ${token}`, ...Object.fromEntries(big) }).catch((e: unknown) => e);
      expect(viaClient).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR' });
      const next = await h2Call(session, { ':method': 'GET', ':path': '/api/v1/after', authorization: `Bearer ${token}` });
      expect(next.status).toBe(200);
    });
  });

  it('HTTP/1.1 still works on the same port; an upstream\'s own port and Host routing (by :authority) take HTTP/2 too', async () => {
    const token = await gw.token();
    const h1 = await request(`${gw.url}/api/v1/h1`, { headers: { authorization: `Bearer ${token}` } });
    expect(h1.statusCode).toBe(200);
    expect(await h1.body.json()).toMatchObject({ url: '/v1/h1' });
    const own = connectHttp2(gw.gateway.upstreamListeners.get('own')?.url as string);
    try {
      const res = await h2Call(own, { ':method': 'GET', ':path': '/v1/at-root', authorization: `Bearer ${token}` });
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body)).toMatchObject({ url: '/v1/at-root' });
      expect(await auditRowFor(gw, res.headers['valet-request-id'] as string)).toMatchObject({ upstream: 'own', path: '/v1/at-root', status: 200 });
    } finally {
      own.close();
    }
    const byHost = await h2Call(session, { ':method': 'GET', ':path': '/v1/by-host', ':authority': `api.valet.test:${port}`, authorization: `Bearer ${token}` });
    expect(byHost.status).toBe(200);
    expect(JSON.parse(byHost.body)).toMatchObject({ url: '/v1/by-host' });
  });

  it('a connection that sends part of the preface and stalls is closed at the headers deadline (1 s)', async () => {
    const started = performance.now();
    const closed = await new Promise<number>((resolve) => {
      const s = connect(port, '127.0.0.1', () => s.write('PRI * HTTP/2.0\r\n'));
      s.on('error', () => undefined);
      s.on('close', () => resolve(performance.now() - started));
    });
    expect(closed).toBeGreaterThanOrEqual(900);
    expect(closed).toBeLessThan(3_000);
  });
});

describe('h2c and graceful shutdown', () => {
  it('a request in flight on an HTTP/2 session finishes; the session gets GOAWAY; close() waits for it', async () => {
    const upstream = await startFakeUpstream((req, res) => {
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end(`done ${req.url}`), 300);
    });
    const gw = await startTestGateway({ upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }], rules: [{ id: 'allow-all', effect: 'allow' }], env: { API_KEY: SECRET } });
    const session = connectHttp2(gw.url);
    const goaway = new Promise<number>((r) => session.once('goaway', (code: number) => r(code)));
    session.on('error', () => undefined);
    try {
      const token = await gw.token();
      const inFlight = h2Call(session, { ':method': 'GET', ':path': '/api/v1/slow', authorization: `Bearer ${token}` });
      while (upstream.requests.length === 0) await sleep(5);
      const closing = gw.gateway.close();
      expect(await goaway).toBe(constants.NGHTTP2_NO_ERROR);
      const res = await inFlight;
      expect(res.status).toBe(200);
      expect(res.body).toBe('done /v1/slow');
      await closing;
      // Read from the closed gateway's data directory.
      const rows = await gw.auditRows();
      expect(rows.map((r) => [r.path, r.status])).toEqual([['/v1/slow', 200]]);
    } finally {
      session.destroy();
      await gw.close();
      await upstream.close();
    }
  });
});
