/**
 * Slow or unbounded requests: a client that sends its headers or body slowly, or never finishes
 * them, or sends a body larger than the gateway lets through, or opens more connections than its
 * share, must not hold the gateway's connections or memory, and must never get a half-received
 * request forwarded as if it were whole. Raw sockets: an HTTP client would not stall on purpose.
 *
 * The deadlines here are configured short (300 ms, 1 s) so every case finishes in about a second.
 */
import { connect, type Socket } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { errorCode, parseResponses, rawRequest, sendRaw, type RawResponse } from './raw-http.js';

const STREAM_LIMIT = 4096;

/** The paths of the requests the upstream began to receive, and of those it saw cut part-way. */
interface Seen {
  readonly started: string[];
  readonly aborted: string[];
}

function watch(upstream: FakeUpstream): Seen {
  const seen: Seen = { started: [], aborted: [] };
  upstream.server.prependListener('request', (req: IncomingMessage) => {
    seen.started.push(req.url ?? '');
    req.once('close', () => {
      if (!req.complete) seen.aborted.push(req.url ?? '');
    });
  });
  return seen;
}

const count = (paths: readonly string[], path: string): number => paths.filter((p) => p === path).length;

/** A socket that sent `payload` and is kept open; `done` settles when the gateway closes it. */
interface Held {
  readonly socket: Socket;
  readonly done: Promise<{ responses: RawResponse[]; bytes: number }>;
}

function hold(port: number, payload: string, localAddress?: string): Promise<Held> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', ...(localAddress !== undefined && { localAddress }) });
    let buf = Buffer.alloc(0);
    const done = new Promise<{ responses: RawResponse[]; bytes: number }>((settle) => {
      socket.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
      });
      socket.on('error', () => {});
      socket.on('close', () => settle({ responses: parseResponses(buf), bytes: buf.length }));
    });
    socket.once('error', reject);
    socket.once('connect', () => {
      if (payload !== '') socket.write(payload);
      resolve({ socket, done });
    });
  });
}

/** Settles with `p`, or rejects once `ms` have passed: a gateway that never answers fails the test. */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not settled within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

describe('slow and oversized request bodies', () => {
  let upstream: FakeUpstream;
  let seen: Seen;
  let gw: TestGateway;
  let token: string;
  let port: number;
  let before = 0;

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      if (req.url.startsWith('/sse')) {
        // Streams for longer than the body deadline, after the body was received.
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        let n = 0;
        const tick = setInterval(() => {
          res.write(`data: ${n++}\n\n`);
          if (n === 8) {
            clearInterval(tick);
            res.end();
          }
        }, 200);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, bytes: req.body.length }));
    });
    seen = watch(upstream);
    gw = await startTestGateway({
      upstreams: [
        { name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
        { name: 'json', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
      ],
      // Policy reads `json`'s arguments (so its JSON bodies are buffered before forwarding); `api`'s are streamed.
      rules: [
        { id: 'api-allow', upstream: 'api', effect: 'allow' },
        { id: 'json-allow', upstream: 'json', when: '!has(args.blocked)', effect: 'allow' },
      ],
      env: { API_KEY: 'real-secret-value' },
      gateway: {
        timeouts: { headers: '300ms', body_idle: '300ms', body: '1s' },
        max_body_bytes: 1024,
        max_stream_body_bytes: STREAM_LIMIT,
        max_connections_per_client: 1000,
      },
    });
    token = await gw.token();
    port = gw.gateway.port;
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });
  beforeEach(() => {
    before = upstream.requests.length;
  });

  const head = (path: string, headers: [string, string][]): string =>
    rawRequest(`POST ${path} HTTP/1.1`, [['Host', `127.0.0.1:${port}`], ['Authorization', `Bearer ${token}`], ...headers]);

  it('500 connections that stop sending their body get 408 after the idle deadline, while other clients are served', async () => {
    const slow = await Promise.all(
      Array.from({ length: 500 }, (_, i) => hold(port, `${head(`/api/upload/${i}`, [['Content-Type', 'text/plain'], ['Content-Length', '1000']])}x`)),
    );
    const normal = await fetch(`${gw.url}/api/hello`, { headers: { authorization: `Bearer ${token}` } });
    expect(normal.status).toBe(200);
    await normal.arrayBuffer();

    const outcomes = await within(5_000, Promise.all(slow.map((s) => s.done)));
    for (const o of outcomes) {
      expect(o.responses).toHaveLength(1);
      expect(o.responses[0]?.status).toBe(408);
      expect(errorCode(o.responses[0])).toBe('VALET_ERR_REQUEST_TIMEOUT');
      expect(o.responses[0]?.headers).toContainEqual(['connection', 'close']);
    }
    // Only the normal request reached the upstream whole; the slow ones were aborted part-way.
    expect(upstream.requests.slice(before).map((r) => r.url)).toEqual(['/hello']);
    const rows = (await gw.waitForAudit(501)).filter((r) => r.path.startsWith('/upload/'));
    expect(rows).toHaveLength(500);
    for (const r of rows) expect(r).toMatchObject({ status: 408, error_code: 'VALET_ERR_REQUEST_TIMEOUT', bytes_in: 1, upstream_status: null });
  });

  it('a body that keeps dripping is cut at the whole-body deadline; the upstream request is aborted, not completed', async () => {
    const drips = await Promise.all(
      Array.from({ length: 5 }, () => hold(port, `${head('/api/drip', [['Content-Type', 'application/octet-stream'], ['Transfer-Encoding', 'chunked']])}1\r\nx\r\n`)),
    );
    // One byte every 100 ms: never idle for 300 ms, never finished within 1 s.
    const tick = setInterval(() => {
      for (const d of drips) if (!d.socket.destroyed) d.socket.write('1\r\nx\r\n');
    }, 100);
    try {
      const outcomes = await within(4_000, Promise.all(drips.map((d) => d.done)));
      for (const o of outcomes) expect(errorCode(o.responses[0])).toBe('VALET_ERR_REQUEST_TIMEOUT');
    } finally {
      clearInterval(tick);
    }
    expect(upstream.requests.length).toBe(before);
    // The upstream had begun receiving each one (the body was streaming) and saw it cut.
    await expect.poll(() => count(seen.aborted, '/drip')).toBe(5);
  });

  it('a body policy reads (buffered, not forwarded yet) that stops gets 408 and nothing is forwarded', async () => {
    const s = await hold(port, `${head('/json/pay', [['Content-Type', 'application/json'], ['Content-Length', '100']])}{"amount":`);
    const o = await within(3_000, s.done);
    expect(o.responses[0]?.status).toBe(408);
    expect(errorCode(o.responses[0])).toBe('VALET_ERR_REQUEST_TIMEOUT');
    expect(count(seen.started, '/pay')).toBe(0);
  });

  it('a streamed response outlives the body deadline once the body was received', async () => {
    const res = await fetch(`${gw.url}/api/sse`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'text/plain' }, body: 'go' });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text.match(/^data: /gm)).toHaveLength(8);
  });

  for (const [upstreamName, type] of [
    ['api', 'text/plain'],
    ['api', 'application/octet-stream'],
    // JSON that no rule reads is streamed like any opaque body.
    ['api', 'application/json'],
  ] as const) {
    it(`${type}: a Content-Length above max_stream_body_bytes is refused (413) before the body is sent`, async () => {
      const path = `/declared-${type.replace('/', '-')}`;
      // Only the head is sent: the answer cannot wait for the body.
      const r = await sendRaw(port, head(`/${upstreamName}${path}`, [['Content-Type', type], ['Content-Length', String(STREAM_LIMIT + 1)]]), { timeoutMs: 3_000 });
      expect(r.responses[0]?.status).toBe(413);
      expect(errorCode(r.responses[0])).toBe('VALET_ERR_BODY_TOO_LARGE');
      expect(count(seen.started, path)).toBe(0);
    });

    it(`${type}: a chunked body growing past max_stream_body_bytes is refused (413); the upstream never gets it whole`, async () => {
      const path = `/chunked-${type.replace('/', '-')}`;
      const chunk = `3e8\r\n${'a'.repeat(1000)}\r\n`;
      const s = await hold(port, head(`/${upstreamName}${path}`, [['Content-Type', type], ['Transfer-Encoding', 'chunked']]) + chunk);
      // The rest arrives after the first piece went upstream: the body is mid-stream when it breaks the limit.
      await new Promise((r) => setTimeout(r, 50));
      s.socket.write(chunk.repeat(5) + '0\r\n\r\n');
      const o = await within(3_000, s.done);
      expect(o.responses[0]?.status).toBe(413);
      expect(errorCode(o.responses[0])).toBe('VALET_ERR_BODY_TOO_LARGE');
      expect(upstream.requests.length).toBe(before);
      await expect.poll(() => count(seen.aborted, path)).toBe(1);
    });
  }

  it('a streamed body under the limit is forwarded whole', async () => {
    const body = 'b'.repeat(STREAM_LIMIT);
    const r = await sendRaw(port, head('/api/fits', [['Content-Type', 'application/octet-stream'], ['Transfer-Encoding', 'chunked']]) + `${(STREAM_LIMIT).toString(16)}\r\n${body}\r\n0\r\n\r\n`);
    expect(r.responses[0]?.status).toBe(200);
    expect(upstream.requests.at(-1)?.body.toString()).toBe(body);
  });

  it('a refused request\'s unread body is dropped under the same deadlines: the connection goes on, or closes when it stalls', async () => {
    const refused = (body: string): string =>
      rawRequest('POST /api/x HTTP/1.1', [['Host', `127.0.0.1:${port}`], ['Authorization', 'Bearer not-a-token'], ['Content-Type', 'text/plain'], ['Content-Length', String(body.length)]], body);
    const next = rawRequest('GET /api/next HTTP/1.1', [['Host', `127.0.0.1:${port}`], ['Authorization', `Bearer ${token}`], ['Connection', 'close']]);
    const kept = await sendRaw(port, refused('hello') + next, { expect: 2 });
    expect(kept.responses.map((r) => r.status)).toEqual([401, 200]);

    const stalled = await hold(port, `${rawRequest('POST /api/x HTTP/1.1', [['Host', `127.0.0.1:${port}`], ['Authorization', 'Bearer not-a-token'], ['Content-Length', '1000']])}x`);
    const o = await within(3_000, stalled.done);
    expect(o.responses.map((r) => r.status)).toEqual([401]);
  });

  it('a request whose headers never finish gets 408 at the headers deadline; a silent connection is closed', async () => {
    const partial = await hold(port, `GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAuthorization: Bearer ${token}\r\n`);
    const silent = await hold(port, '');
    const [p, q] = await within(3_000, Promise.all([partial.done, silent.done]));
    expect(p.responses[0]?.status).toBe(408);
    expect(errorCode(p.responses[0])).toBe('VALET_ERR_REQUEST_TIMEOUT');
    expect(q.bytes).toBe(0);
    expect(upstream.requests.length).toBe(before);
  });
});

describe('connection caps', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let port: number;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'api-allow', upstream: 'api', effect: 'allow' }],
      env: { API_KEY: 'real-secret-value' },
      gateway: { max_connections_per_client: 3, max_connections: 5 },
    });
    token = await gw.token();
    port = gw.gateway.port;
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const get = (from: string): ReturnType<typeof sendRaw> =>
    sendRaw(port, rawRequest('GET /api/x HTTP/1.1', [['Host', `127.0.0.1:${port}`], ['Authorization', `Bearer ${token}`], ['Connection', 'close']]), {
      localAddress: from,
      timeoutMs: 3_000,
    });
  const connections = (): Promise<number> => new Promise((r, j) => gw.gateway.server.getConnections((err, n) => (err ? j(err) : r(n))));

  it('refuses the N+1th connection from one address and the one past the total, while others are served', async () => {
    const held = await Promise.all([1, 2, 3].map(() => hold(port, '', '127.0.0.1')));
    await expect.poll(connections).toBe(3);
    // The fourth from the same address is dropped without an answer.
    const refused = await get('127.0.0.1');
    expect(refused.responses).toHaveLength(0);
    // Another client is served meanwhile.
    const other = await get('127.0.0.2');
    expect(other.responses[0]?.status).toBe(200);
    await expect.poll(connections).toBe(3);

    // The total: two more from another client fill it; a third client is dropped.
    const more = await Promise.all([1, 2].map(() => hold(port, '', '127.0.0.2')));
    await expect.poll(connections).toBe(5);
    expect((await get('127.0.0.3')).responses).toHaveLength(0);

    // Closed connections give their places back.
    for (const h of [...held, ...more]) h.socket.destroy();
    await expect.poll(connections).toBe(0);
    expect((await get('127.0.0.1')).responses[0]?.status).toBe(200);
    expect(upstream.requests).toHaveLength(2);

    // Each refusal is counted, by the cap that made it.
    const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    expect(metrics).toMatch(/^valet_connections_refused_total\{reason="max_connections_per_client"\} 1$/m);
    expect(metrics).toMatch(/^valet_connections_refused_total\{reason="max_connections"\} 1$/m);
  });
});
