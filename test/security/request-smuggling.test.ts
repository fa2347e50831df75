/**
 * Guards against HTTP request smuggling (CL.TE / TE.CL / TE.TE desync): a request whose framing two
 * parsers could read differently — Content-Length with Transfer-Encoding, repeated Content-Length,
 * obfuscated or non-final chunked encodings, repeated Host — must be refused with a 400 before
 * anything is forwarded, and a request hidden inside a body must never surface as a separate
 * upstream request.
 *
 * Raw sockets only: an HTTP client would refuse to produce most of these messages. Node's own
 * parser rejects some of them before Valet sees them; either Valet's coded 400 or Node's 400 is
 * fine — what matters is a 400 and zero upstream requests.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { errorCode, rawRequest, sendRaw } from './raw-http.js';

describe('request smuggling', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let port: number;
  let before = 0;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'api-allow', upstream: 'api', effect: 'allow' },
        { id: 'api-no-admin', upstream: 'api', paths: ['/admin/**'], effect: 'deny' },
      ],
      env: { API_KEY: 'real-secret-value' },
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

  const host = (): [string, string] => ['Host', `127.0.0.1:${port}`];
  const auth = (): [string, string] => ['Authorization', `Bearer ${token}`];
  /** A complete, valid, authenticated request an attacker tries to smuggle past the first one. */
  const smuggled = (path = '/api/smuggled'): string => rawRequest(`GET ${path} HTTP/1.1`, [host(), auth()]);

  /** A chunked body whose single chunk is the smuggled request. */
  const chunkedSmuggle = (): string => `${Buffer.byteLength(smuggled()).toString(16)}\r\n${smuggled()}\r\n0\r\n\r\n`;
  /** A Content-Length covering only the chunk-size line: a CL reader then sees the smuggled request next. */
  const sizeLineLength = (): string => String(Buffer.byteLength(smuggled()).toString(16).length + 2);

  /** Waits long enough for anything the gateway might still forward to reach the upstream. */
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

  interface FramingCase {
    name: string;
    headers: () => [string, string][];
    body: () => string;
  }

  const framing: FramingCase[] = [
    {
      name: 'CL.TE: Content-Length and Transfer-Encoding: chunked',
      headers: () => [host(), auth(), ['Content-Length', '6'], ['Transfer-Encoding', 'chunked']],
      body: () => `0\r\n\r\n${smuggled()}`,
    },
    {
      name: 'TE.CL: Transfer-Encoding: chunked then Content-Length',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'chunked'], ['Content-Length', sizeLineLength()]],
      body: () => chunkedSmuggle(),
    },
    {
      name: 'two Content-Length headers with different values',
      headers: () => [host(), auth(), ['Content-Length', '0'], ['Content-Length', String(smuggled().length)]],
      body: () => smuggled(),
    },
    {
      name: 'two Content-Length headers with the same value',
      headers: () => [host(), auth(), ['Content-Length', '5'], ['Content-Length', '5']],
      body: () => 'hello',
    },
    {
      name: 'Content-Length list "5, 5"',
      headers: () => [host(), auth(), ['Content-Length', '5, 5']],
      body: () => 'hello',
    },
    {
      name: 'Transfer-Encoding: gzip, chunked',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'gzip, chunked']],
      body: () => '5\r\nhello\r\n0\r\n\r\n',
    },
    {
      name: 'Transfer-Encoding: xchunked',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'xchunked']],
      body: () => '5\r\nhello\r\n0\r\n\r\n',
    },
    {
      name: 'Transfer-Encoding: chunked, identity (chunked not final)',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'chunked, identity']],
      body: () => '5\r\nhello\r\n0\r\n\r\n',
    },
    {
      name: 'Transfer-Encoding twice',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'chunked'], ['Transfer-Encoding', 'chunked']],
      body: () => '5\r\nhello\r\n0\r\n\r\n',
    },
    {
      name: 'Transfer-Encoding with whitespace before the colon',
      headers: () => [host(), auth(), ['Transfer-Encoding ', 'chunked']],
      body: () => '5\r\nhello\r\n0\r\n\r\n',
    },
    {
      name: 'Transfer-Encoding with Content-Length: 0 (TE.0)',
      headers: () => [host(), auth(), ['Content-Length', '0'], ['Transfer-Encoding', 'chunked']],
      body: () => chunkedSmuggle(),
    },
    {
      name: 'CL.TE with obfuscated Transfer-Encoding: xchunked',
      headers: () => [host(), auth(), ['Content-Length', sizeLineLength()], ['Transfer-Encoding', 'xchunked']],
      body: () => chunkedSmuggle(),
    },
    {
      name: 'CL.TE with Transfer-Encoding: identity',
      headers: () => [host(), auth(), ['Content-Length', sizeLineLength()], ['Transfer-Encoding', 'identity']],
      body: () => chunkedSmuggle(),
    },
    {
      name: 'CL.TE with Transfer-Encoding: "chunked " (trailing space)',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'chunked '], ['Content-Length', sizeLineLength()]],
      body: () => chunkedSmuggle(),
    },
    {
      name: 'Transfer-Encoding: xchunked, smuggled request as the body',
      headers: () => [host(), auth(), ['Transfer-Encoding', 'xchunked']],
      body: () => smuggled(),
    },
    {
      name: 'signed Content-Length',
      headers: () => [host(), auth(), ['Content-Length', '+5']],
      body: () => 'hello',
    },
    {
      name: 'two Host headers',
      headers: () => [host(), ['Host', 'evil.example'], auth()],
      body: () => '',
    },
    {
      name: 'two Host headers, the same value',
      headers: () => [host(), host(), auth()],
      body: () => '',
    },
  ];

  it.each(framing)('$name → 400, nothing forwarded', async (c) => {
    const { responses, raw } = await sendRaw(port, rawRequest('POST /api/upload HTTP/1.1', c.headers(), c.body()), {
      expect: 1,
      settleMs: 200,
    });
    await settle();
    expect(responses.length, raw).toBeGreaterThanOrEqual(1);
    expect(responses[0]!.status).toBe(400);
    // Node's parser and Valet both answer with a coded JSON body.
    expect(['VALET_ERR_BAD_REQUEST', 'VALET_ERR_BAD_PATH']).toContain(errorCode(responses[0]));
    expect(upstream.requests.slice(before).map((r) => r.url)).toEqual([]);
  });

  // h2c / WebSocket upgrade smuggling: if the upgrade reached the upstream and it switched protocols,
  // the agent would hold a raw tunnel past every later policy check.
  it.each([
    ['h2c', [['Upgrade', 'h2c'], ['HTTP2-Settings', 'AAMAAABkAAQAAP__'], ['Connection', 'Upgrade, HTTP2-Settings']]],
    ['websocket', [['Upgrade', 'websocket'], ['Connection', 'Upgrade'], ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='], ['Sec-WebSocket-Version', '13']]],
  ] as [string, [string, string][]][])('an Upgrade: %s request never switches protocols upstream', async (_name, upgrade) => {
    const req = rawRequest('GET /api/tunnel HTTP/1.1', [host(), auth(), ...upgrade]);
    const { responses, raw } = await sendRaw(port, req, { expect: 1, settleMs: 100 });
    await settle();
    expect(raw.startsWith('HTTP/1.1 101')).toBe(false);
    expect(responses.length).toBeGreaterThanOrEqual(1);
    for (const got of upstream.requests.slice(before)) {
      expect(got.headers['upgrade']).toBeUndefined();
      expect(got.headers['http2-settings']).toBeUndefined();
      expect(String(got.headers['connection'] ?? '').toLowerCase()).not.toContain('upgrade');
    }
  });

  describe('a request hidden in a body is not forwarded as a separate request', () => {
    it('Content-Length body containing a full request', async () => {
      const hidden = smuggled();
      const first = rawRequest(
        'POST /api/upload HTTP/1.1',
        [host(), auth(), ['Content-Type', 'text/plain'], ['Content-Length', String(Buffer.byteLength(hidden))]],
        hidden,
      );
      const { responses } = await sendRaw(port, first, { expect: 1, settleMs: 300 });
      await settle();
      expect(responses.map((r) => r.status)).toEqual([200]);
      const got = upstream.requests.slice(before);
      expect(got.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /upload']);
      expect(got[0]!.body.toString('latin1')).toBe(hidden);
    });

    it('chunked body containing a full request', async () => {
      const hidden = smuggled();
      const body = `${Buffer.byteLength(hidden).toString(16)}\r\n${hidden}\r\n0\r\n\r\n`;
      const first = rawRequest('POST /api/upload HTTP/1.1', [host(), auth(), ['Transfer-Encoding', 'chunked']], body);
      const { responses } = await sendRaw(port, first, { expect: 1, settleMs: 300 });
      await settle();
      expect(responses.map((r) => r.status)).toEqual([200]);
      const got = upstream.requests.slice(before);
      expect(got.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /upload']);
      expect(got[0]!.body.toString('latin1')).toBe(hidden);
      // Upstream framing is the gateway's own: one message, never the agent's bytes re-parsed.
      expect(got[0]!.headers['content-length'] ?? got[0]!.headers['transfer-encoding']).toBeDefined();
    });

    it('a chunk-extension or trailer cannot end the body early', async () => {
      const hidden = smuggled();
      const body = `${Buffer.byteLength(hidden).toString(16)};ext="0\r\n\r\n"\r\n${hidden}\r\n0\r\n\r\n`;
      const first = rawRequest('POST /api/upload HTTP/1.1', [host(), auth(), ['Transfer-Encoding', 'chunked']], body);
      const { responses } = await sendRaw(port, first, { expect: 1, settleMs: 300 });
      await settle();
      expect(responses.length).toBeGreaterThanOrEqual(1);
      const got = upstream.requests.slice(before);
      expect(got.map((r) => r.url)).not.toContain('/smuggled');
      expect(got.length).toBeLessThanOrEqual(1);
      if (responses[0]!.status === 200) expect(got[0]!.body.toString('latin1')).toBe(hidden);
      else expect(responses[0]!.status).toBe(400);
    });

    it('a genuinely pipelined second request is authenticated and policy-checked on its own', async () => {
      const first = rawRequest('POST /api/upload HTTP/1.1', [host(), auth(), ['Content-Length', '5']], 'hello');
      const denied = rawRequest('GET /api/admin/x HTTP/1.1', [host(), auth()]);
      const anonymous = rawRequest('GET /api/open HTTP/1.1', [host(), ['Connection', 'close']]);
      const { responses } = await sendRaw(port, first + denied + anonymous, { expect: 3, settleMs: 200 });
      await settle();
      expect(responses.map((r) => r.status)).toEqual([200, 403, 401]);
      expect(errorCode(responses[1])).toBe('VALET_ERR_POLICY_DENIED');
      expect(errorCode(responses[2])).toBe('VALET_ERR_TOKEN_MISSING');
      const got = upstream.requests.slice(before);
      expect(got.map((r) => `${r.method} ${r.url}`)).toEqual(['POST /upload']);
      expect(got[0]!.body.toString()).toBe('hello');
    });
  });
});
