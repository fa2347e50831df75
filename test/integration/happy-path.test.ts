import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, header, requestIdOf, sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const SECRETS = {
  BEARER_KEY: 'sk-bearer-4f1c9a7e2b6d',
  HEADER_KEY: 'hdr-secret-8e3a5b1c',
  BASIC_KEY: 'basic-secret-77aa19',
  QUERY_KEY: 'q-secret/with+chars=',
};

/** Everything the upstream received, as one string to search for leaks. */
const everything = (r: RecordedRequest): string => [r.method, r.url, ...r.rawHeaders, r.body.toString('latin1')].join('\n');

describe('happy path', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  const sseWrites: number[] = [];
  const timers: NodeJS.Timeout[] = [];

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      const path = req.url.split('?')[0];
      if (path === '/v1/created') {
        res.writeHead(201, {
          'content-type': 'application/vnd.test+json',
          'x-custom': 'custom-value',
          'x-request-id': 'upstream-id-123',
          'set-cookie': ['a=1; Path=/', 'b=2; Path=/'],
        });
        res.end(JSON.stringify({ created: true, id: 42 }));
        return;
      }
      if (path === '/v1/sse') {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        let n = 0;
        const tick = (): void => {
          sseWrites.push(performance.now());
          res.write(`data: ${n}\n\n`);
          n++;
          if (n < 5) timers.push(setTimeout(tick, 100));
          // After the last event the connection is held open, like a live stream.
        };
        tick();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true }));
    });
    const origin = upstream.origin;
    gw = await startTestGateway({
      upstreams: [
        { name: 'bearer', origin, credential: { scheme: 'bearer', secret: 'BEARER_KEY' } },
        { name: 'hdr', origin, credential: { scheme: 'header', header: 'X-Api-Key', prefix: 'Token ', secret: 'HEADER_KEY' } },
        { name: 'basic', origin, credential: { scheme: 'basic', username: 'svc', secret: 'BASIC_KEY' } },
        { name: 'query', origin, credential: { scheme: 'query', param: 'key', secret: 'QUERY_KEY' } },
      ],
      rules: [
        { id: 'allow-all', effect: 'allow' },
        { id: 'no-admin', upstream: 'bearer', paths: ['/admin/**'], effect: 'deny', reason: 'admin is off limits' },
      ],
      env: SECRETS,
    });
  });
  afterAll(async () => {
    for (const t of timers) clearTimeout(t);
    await gw?.close();
    await upstream?.close();
  });

  async function call(
    path: string,
    token: string,
    opts: { method?: 'GET' | 'POST' | 'PUT'; headers?: Record<string, string>; body?: string } = {},
  ): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string; got: RecordedRequest }> {
    const before = upstream.requests.length;
    const res = await request(`${gw.url}${path}`, {
      method: opts.method ?? 'GET',
      headers: { authorization: `Bearer ${token}`, ...opts.headers },
      body: opts.body ?? null,
    });
    const text = await res.body.text();
    expect(upstream.requests.length).toBe(before + 1);
    return { status: res.statusCode, headers: res.headers, text, got: upstream.requests.at(-1) as RecordedRequest };
  }

  function expectNoToken(got: RecordedRequest, token: string): void {
    const all = everything(got);
    expect(all).not.toContain(token);
    // Not even the signature part on its own.
    expect(all).not.toContain(token.split('.')[2] as string);
  }

  it('bearer: the real credential arrives exactly once and the agent token never does', async () => {
    const token = await gw.token();
    const { status, got } = await call('/bearer/v1/things', token, { headers: { 'Proxy-Authorization': `Bearer ${token}` } });
    expect(status).toBe(200);
    expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
    expect(everything(got).split(SECRETS.BEARER_KEY)).toHaveLength(2);
    expectNoToken(got, token);
  });

  it('header: the real credential arrives exactly once, replacing any agent-supplied copy', async () => {
    const token = await gw.token();
    const { status, got } = await call('/hdr/v1/things', token, { headers: { 'x-api-key': 'agent-supplied-value', 'X-API-KEY': 'another' } });
    expect(status).toBe(200);
    expect(headerValues(got, 'x-api-key')).toEqual([`Token ${SECRETS.HEADER_KEY}`]);
    expect(headerValues(got, 'authorization')).toEqual([]);
    expect(everything(got).split(SECRETS.HEADER_KEY)).toHaveLength(2);
    expect(everything(got)).not.toContain('agent-supplied-value');
    expectNoToken(got, token);
  });

  it('basic: the real credential arrives exactly once as user:secret', async () => {
    const token = await gw.token();
    const { status, got } = await call('/basic/v1/things', token);
    expect(status).toBe(200);
    const expected = `Basic ${Buffer.from(`svc:${SECRETS.BASIC_KEY}`).toString('base64')}`;
    expect(headerValues(got, 'authorization')).toEqual([expected]);
    expectNoToken(got, token);
  });

  it('query: the real credential arrives exactly once; an agent-supplied copy of the parameter is dropped', async () => {
    const token = await gw.token();
    const { status, got } = await call('/query/v1/things?a=1&key=agent-guess&b=two%20words', token);
    expect(status).toBe(200);
    const url = new URL(got.url, 'http://x');
    expect(url.pathname).toBe('/v1/things');
    expect(url.searchParams.getAll('key')).toEqual([SECRETS.QUERY_KEY]);
    expect(url.searchParams.get('a')).toBe('1');
    expect(url.searchParams.get('b')).toBe('two words');
    expect(got.url).not.toContain('agent-guess');
    expect(headerValues(got, 'authorization')).toEqual([]);
    expectNoToken(got, token);
  });

  it('method, raw query and JSON body arrive intact', async () => {
    const token = await gw.token();
    const payload = JSON.stringify({ model: 'm-1', messages: [{ role: 'user', content: 'héllo ✓' }], n: 3 });
    const { status, got } = await call('/bearer/v1/chat/completions?a=1&b=x+y&c=%2Fslash&c=dup', token, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trace': 't-1' },
      body: payload,
    });
    expect(status).toBe(200);
    expect(got.method).toBe('POST');
    expect(got.url).toBe('/v1/chat/completions?a=1&b=x+y&c=%2Fslash&c=dup');
    expect(got.body.toString('utf8')).toBe(payload);
    expect(headerValues(got, 'content-type')).toEqual(['application/json']);
    expect(headerValues(got, 'content-length')).toEqual([String(Buffer.byteLength(payload))]);
    expect(headerValues(got, 'x-trace')).toEqual(['t-1']);
    expectNoToken(got, token);
  });

  it('a chunked, streamed request body arrives intact and is counted in the audit row', async () => {
    const token = await gw.token();
    const parts = ['{"stream":', '[1,2,3', ',4,5]', ',"end":"✓"}'];
    const expected = parts.join('');
    const before = upstream.requests.length;
    const { status, requestId } = await new Promise<{ status: number; requestId: string }>((resolve, reject) => {
      const req = httpRequest(`${gw.url}/bearer/v1/upload`, {
        method: 'PUT',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, requestId: String(res.headers['valet-request-id']) }));
      });
      req.on('error', reject);
      void (async () => {
        for (const p of parts) {
          req.write(p);
          await sleep(30);
        }
        req.end();
      })();
    });
    expect(status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
    const got = upstream.requests.at(-1) as RecordedRequest;
    expect(got.method).toBe('PUT');
    expect(got.body.toString('utf8')).toBe(expected);
    // Still arriving when it was forwarded: it went on as a stream.
    expect(headerValues(got, 'transfer-encoding')).toEqual(['chunked']);
    expectNoToken(got, token);
    const row = await auditRowFor(gw, requestId);
    expect(row.bytes_in).toBe(Buffer.byteLength(expected));
  });

  it('a chunked request body that arrived whole before forwarding is sent with its length', async () => {
    const token = await gw.token();
    const body = '{"whole":"✓","n":[1,2,3]}';
    const size = Buffer.byteLength(body);
    const before = upstream.requests.length;
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(new URL(gw.url).port), '127.0.0.1');
      let text = '';
      socket.on('data', (d) => {
        text += d.toString('latin1');
        if (/\r\n\r\n[\s\S]*"ok":true/.test(text)) socket.end();
      });
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      // Headers and the whole chunked body in one write.
      socket.write(
        `POST /bearer/v1/whole HTTP/1.1\r\nHost: valet\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
          `${size.toString(16)}\r\n${body}\r\n0\r\n\r\n`,
      );
    });
    expect(answer.startsWith('HTTP/1.1 200')).toBe(true);
    expect(upstream.requests.length).toBe(before + 1);
    const got = upstream.requests.at(-1) as RecordedRequest;
    expect(got.body.toString('utf8')).toBe(body);
    expect(headerValues(got, 'content-length')).toEqual([String(size)]);
    expect(headerValues(got, 'transfer-encoding')).toEqual([]);
    expectNoToken(got, token);
  });

  it('passes the response status, headers and body back', async () => {
    const token = await gw.token();
    const { status, headers, text } = await call('/bearer/v1/created', token);
    expect(status).toBe(201);
    expect(header(headers, 'content-type')).toBe('application/vnd.test+json');
    expect(header(headers, 'x-custom')).toBe('custom-value');
    expect(headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/']);
    expect(JSON.parse(text)).toEqual({ created: true, id: 42 });
    // The upstream's own id passes through untouched (SDKs report it); Valet's is in valet-request-id; the row keeps both.
    expect(header(headers, 'x-request-id')).toBe('upstream-id-123');
    const id = requestIdOf(headers);
    expect(id).not.toBe('upstream-id-123');
    const row = await auditRowFor(gw, id);
    expect(row).toMatchObject({ status: 201, upstream_status: 201, decision: 'allow', upstream: 'bearer', path: '/v1/created', upstream_request_id: 'upstream-id-123' });
    expect(row.bytes_out).toBe(Buffer.byteLength(text));
  });

  it('puts X-Request-Id on every response, equal to the audit row and to the error body', async () => {
    const token = await gw.token();
    const cases: { path: string; auth?: string; status: number; code?: string }[] = [
      { path: '/bearer/v1/ok', auth: `Bearer ${token}`, status: 200 },
      { path: '/bearer/v1/ok', status: 401, code: 'VALET_ERR_TOKEN_MISSING' },
      { path: '/bearer/v1/ok', auth: 'Bearer not.a.token', status: 401, code: 'VALET_ERR_TOKEN_INVALID' },
      { path: '/bearer/admin/users', auth: `Bearer ${token}`, status: 403, code: 'VALET_ERR_POLICY_DENIED' },
      { path: '/nowhere/v1/ok', auth: `Bearer ${token}`, status: 404, code: 'VALET_ERR_UNKNOWN_UPSTREAM' },
      { path: '/bearer/v1//double', auth: `Bearer ${token}`, status: 400, code: 'VALET_ERR_BAD_PATH' },
    ];
    const seen = new Set<string>();
    for (const c of cases) {
      const res = await request(`${gw.url}${c.path}`, { headers: c.auth ? { authorization: c.auth } : {} });
      const text = await res.body.text();
      expect(res.statusCode, c.path).toBe(c.status);
      const id = requestIdOf(res.headers);
      expect(seen.has(id)).toBe(false);
      seen.add(id);
      if (c.code) expectErrorBody(text, c.code, id);
      const row = await auditRowFor(gw, id);
      expect(row.status).toBe(c.status);
      expect(row.error_code).toBe(c.code ?? null);
    }
  });

  it('puts X-Request-Id (and an audit row) even on a request the HTTP parser rejects', async () => {
    // A header line without a colon is malformed HTTP/1.1; Node rejects it before the pipeline runs.
    const raw = await new Promise<string>((resolve, reject) => {
      const s = connect(gw.gateway.port, '127.0.0.1');
      let data = '';
      s.on('data', (c: Buffer) => (data += c.toString('latin1')));
      s.on('end', () => resolve(data));
      s.on('close', () => resolve(data));
      s.on('error', reject);
      s.write('GET /bearer/v1/ok HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n');
    });
    const [head = '', body = ''] = raw.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 400/);
    const m = /^x-request-id:\s*(\S+)\s*$/im.exec(head);
    expect(m, 'x-request-id on the parser-error response').not.toBeNull();
    const id = (m as RegExpExecArray)[1] as string;
    expect((JSON.parse(body) as { error: { request_id: unknown } }).error.request_id).toBe(id);
    await auditRowFor(gw, id);
  });

  it('streams server-sent events to the client event by event', async () => {
    const token = await gw.token();
    sseWrites.length = 0;
    const res = await request(`${gw.url}/bearer/v1/sse`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.statusCode).toBe(200);
    expect(header(res.headers, 'content-type')).toBe('text/event-stream');
    const id = requestIdOf(res.headers);
    const arrivals: number[] = [];
    const events: string[] = [];
    let buf = '';
    for await (const chunk of res.body) {
      buf += (chunk as Buffer).toString('utf8');
      let i: number;
      while ((i = buf.indexOf('\n\n')) !== -1) {
        events.push(buf.slice(0, i));
        arrivals.push(performance.now());
        buf = buf.slice(i + 2);
      }
      if (events.length >= 5) break; // the upstream holds the stream open; the client hangs up
    }
    expect(events).toEqual(['data: 0', 'data: 1', 'data: 2', 'data: 3', 'data: 4']);
    expect(sseWrites).toHaveLength(5);
    // The first event reached the client before the upstream wrote the last one...
    expect(arrivals[0] as number).toBeLessThan(sseWrites[4] as number);
    // ...and every event arrived before the upstream got two events further (≥ 200 ms of slack).
    for (let n = 0; n < 3; n++) expect(arrivals[n] as number, `event ${n}`).toBeLessThan(sseWrites[n + 2] as number);
    const row = await auditRowFor(gw, id);
    expect(row.status).toBe(200);
    expect(row.error_code).toBe('VALET_ERR_CLIENT_CLOSED'); // the client hung up on a live stream
    expect(row.bytes_out).toBeGreaterThanOrEqual('data: 0\n\n'.length * 5);
  });
});
