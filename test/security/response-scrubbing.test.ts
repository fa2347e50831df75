import { brotliDecompressSync, gunzipSync } from 'node:zlib';
/**
 * An upstream that echoes the credential Valet injected — in a JSON body, in response headers,
 * base64- or URL-encoded, compressed, or split across the chunks of an event stream — must never
 * hand it to the agent; nor may the audit log or the log lines carry it. Everything runs through
 * real sockets against a fake upstream on 127.0.0.1.
 */
import { request as httpRequest, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, requestIdOf, sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';
import { WHOLE_BODY_MAX } from '../../gateway/proxy/response.js';

const SECRETS = {
  BEARER_KEY: 'sk-live-Scrub7ubValue0123456789abcdef',
  // Changes under percent-encoding and base64 has '+' and '/': the awkward forms.
  AWKWARD_KEY: 'wJalr/XUtnFE+MI K7MDENG=bPxR?fiCY&EXAMPLE',
  BASIC_KEY: 'basic-secret-77aa19-Zq0',
  DD_API_KEY: 'dd-api-secret-5f5f5f5f',
  DD_APP_KEY: 'dd-app-secret-a0a0a0a0',
  RAW_KEY: 'raw-passthrough-secret-9911',
};
const ALL = Object.values(SECRETS);

interface AgentResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Each chunk as it arrived, with its arrival time. */
  chunks: { at: number; data: string }[];
}

/** A GET through node:http with `agent: false`, recording each chunk as it arrives. */
function get(url: string, headers: Record<string, string>, onChunk?: (text: string) => void, method = 'GET'): Promise<AgentResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      const chunks: { at: number; data: string }[] = [];
      const all: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        all.push(c);
        chunks.push({ at: Date.now(), data: c.toString('utf8') });
        onChunk?.(Buffer.concat(all).toString('utf8'));
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(all), chunks }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Every secret in every form an upstream might echo it in, as the agent must never see it. */
function expectNoSecret(text: string): void {
  for (const secret of ALL) {
    expect(text).not.toContain(secret);
    expect(text).not.toContain(encodeURIComponent(secret));
    // Any 12-character stretch of the secret's base64 would be a (partial) leak.
    const b64 = Buffer.from(secret).toString('base64');
    for (let i = 2; i + 12 <= b64.length - 2; i += 4) expect(text).not.toContain(b64.slice(i, i + 12));
  }
}

const headersText = (h: IncomingHttpHeaders): string => JSON.stringify(h);

describe('response scrubbing', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let agentGotEvent1: () => void = () => undefined;
  const timeline: { what: string; at: number }[] = [];

  beforeAll(async () => {
    upstream = await startFakeUpstream((req: RecordedRequest, res: ServerResponse) => {
      const path = req.url.split('?')[0] ?? '';
      const auth = String(req.headers['authorization'] ?? '');
      const echo = JSON.stringify({ url: req.url, headers: req.headers });
      switch (path) {
        case '/json':
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(echo) });
          res.end(echo);
          return;
        case '/large': {
          // Past WHOLE_BODY_MAX: streamed, with a copy of the credential straddling the 64 KiB mark.
          const at = WHOLE_BODY_MAX - 7;
          const large = Buffer.concat([Buffer.alloc(at, 'a'), Buffer.from(auth), Buffer.alloc(10_000, 'b')]);
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': large.length });
          res.end(large);
          return;
        }
        case '/truncated':
          // Declares more than it sends, then drops the connection.
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': 5000 });
          res.write(`{"partial":"${auth}`);
          setTimeout(() => res.socket?.destroy(), 20);
          return;
        case '/header':
          res.writeHead(401, {
            'content-type': 'text/plain',
            'x-echo-authorization': auth,
            'www-authenticate': `Bearer error="invalid_token", token="${auth.replace(/^Bearer /, '')}"`,
            'set-cookie': ['a=1', `k=${encodeURIComponent(auth)}`],
            'x-request-id': auth,
            location: `/retry?auth=${encodeURIComponent(auth)}`,
          });
          res.end('no');
          return;
        case '/base64':
          res.writeHead(200, { 'content-type': 'text/plain' });
          res.end(
            [
              Buffer.from(echo).toString('base64'),
              Buffer.from(`x${echo}`).toString('base64url'),
              Buffer.from(`xy${auth}`).toString('base64'),
              encodeURIComponent(Buffer.from(`{"a":"${auth}"}`).toString('base64')),
            ].join('\n'),
          );
          return;
        case '/urlencoded':
          res.writeHead(200, { 'content-type': 'application/x-www-form-urlencoded' });
          res.end(
            [
              `next=${encodeURIComponent(auth)}`,
              `lower=${encodeURIComponent(auth).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase())}`,
              new URLSearchParams({ form: auth }).toString(),
            ].join('&'),
          );
          return;
        case '/sse': {
          // The secret is split across two writes; event 2 waits until the agent has event 1.
          res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
          const cut = 14;
          res.write(`data: {"echo":"${auth.slice(0, cut)}`);
          setTimeout(() => {
            res.write(`${auth.slice(cut)}"}\n\n`);
            timeline.push({ what: 'upstream sent event 1', at: Date.now() });
            const gotIt = new Promise<void>((r) => {
              agentGotEvent1 = r;
            });
            void Promise.race([gotIt, sleep(3000)]).then(() => {
              timeline.push({ what: 'upstream sends event 2', at: Date.now() });
              res.end(`data: {"again":"${auth}"}\n\n`);
            });
          }, 40);
          return;
        }
        case '/gzip':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
          res.end(gzipSync(echo));
          return;
        case '/br':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'br' });
          res.end(brotliCompressSync(echo));
          return;
        case '/zstd':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'zstd' });
          res.end(echo);
          return;
        case '/stacked':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip, br' });
          res.end(echo);
          return;
        case '/bad-gzip':
          res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
          res.end(`not gzip at all ${auth}`);
          return;
        default:
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(echo) });
          res.end(echo);
      }
    });
    const origin = upstream.origin;
    gw = await startTestGateway({
      upstreams: [
        { name: 'bearer', origin, credential: { scheme: 'bearer', secret: 'BEARER_KEY' } },
        { name: 'awkward', origin, credential: { scheme: 'bearer', secret: 'AWKWARD_KEY' } },
        { name: 'basic', origin, credential: { scheme: 'basic', username: 'svc', secret: 'BASIC_KEY' } },
        {
          name: 'multi',
          origin,
          credential: { scheme: 'headers', headers: { authorization: 'DD {secret:DD_API_KEY}:{secret:DD_APP_KEY}' } },
        },
        { name: 'raw', origin, scrub_responses: false, credential: { scheme: 'bearer', secret: 'RAW_KEY' } },
      ],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: SECRETS,
    });
    token = await gw.token();
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  let before = 0;
  beforeEach(() => {
    before = upstream.requests.length;
  });

  const bearer = (): Record<string, string> => ({ authorization: `Bearer ${token}` });

  describe.each(['bearer', 'awkward', 'basic', 'multi'])('upstream %s', (name) => {
    it('a JSON body echoing the injected Authorization: the agent gets [REDACTED], valid JSON, the Content-Length of what it got', async () => {
      const r = await get(`${gw.url}/${name}/json`, bearer());
      expect(r.status).toBe(200);
      const text = r.body.toString('utf8');
      expectNoSecret(text);
      const parsed = JSON.parse(text) as { headers: Record<string, string> };
      expect(parsed.headers['authorization']).toContain('[REDACTED]');
      // Not the upstream's length: the scrubbed body's.
      expect(r.headers['content-length']).toBe(String(r.body.length));
      expect(r.headers['transfer-encoding']).toBeUndefined();
    });

    it('a body larger than WHOLE_BODY_MAX streams (chunked, no Content-Length), scrubbed across the chunk boundaries', async () => {
      const r = await get(`${gw.url}/${name}/large`, bearer());
      expect(r.status).toBe(200);
      expectNoSecret(r.body.toString('latin1'));
      expect(r.body.toString('latin1')).toContain('[REDACTED]');
      expect(r.headers['content-length']).toBeUndefined();
      expect(r.headers['transfer-encoding']).toBe('chunked');
    });

    it('headers echoing it (custom, WWW-Authenticate, Set-Cookie, x-request-id, Location)', async () => {
      const r = await get(`${gw.url}/${name}/header`, bearer());
      expect(r.status).toBe(401);
      expectNoSecret(headersText(r.headers));
      expect(r.headers['x-echo-authorization']).toContain('[REDACTED]');
      expect(r.headers['x-request-id']).toContain('[REDACTED]');
      expect(r.headers['set-cookie']?.[0]).toBe('a=1');
      expect(String(r.headers['location'])).toContain('[REDACTED]');
      requestIdOf(r.headers as Record<string, string>);
    });

    it('base64 (standard and URL-safe, any alignment, inside longer base64, percent-encoded)', async () => {
      const r = await get(`${gw.url}/${name}/base64`, bearer());
      const text = r.body.toString('utf8');
      expectNoSecret(text);
      expect(text).toContain('[REDACTED]');
    });

    it('URL-encoded (upper- and lower-case hex, + for space)', async () => {
      const r = await get(`${gw.url}/${name}/urlencoded`, bearer());
      const text = r.body.toString('utf8');
      expectNoSecret(text);
      expect(text).toContain('[REDACTED]');
    });

    it('gzip and br bodies the upstream sent despite identity: decompressed, scrubbed, sent plain', async () => {
      for (const coding of ['gzip', 'br']) {
        const r = await get(`${gw.url}/${name}/${coding}`, bearer());
        expect(r.status).toBe(200);
        expect(r.headers['content-encoding']).toBeUndefined();
        const text = r.body.toString('utf8');
        expectNoSecret(text);
        expect(JSON.parse(text)).toMatchObject({ headers: { 'accept-encoding': 'identity' } });
      }
    });

    it('gzip and br bodies for an agent that takes them: decoded, scrubbed, encoded again', async () => {
      for (const coding of ['gzip', 'br']) {
        const r = await get(`${gw.url}/${name}/${coding}`, { ...bearer(), 'accept-encoding': 'gzip, br' });
        expect(r.status).toBe(200);
        expect(r.headers['content-encoding']).toBe(coding);
        expectNoSecret(r.body.toString('latin1'));
        const text = (coding === 'gzip' ? gunzipSync(r.body) : brotliDecompressSync(r.body)).toString('utf8');
        expectNoSecret(text);
        expect(JSON.parse(text)).toMatchObject({ headers: { 'accept-encoding': 'gzip, br' } });
      }
    });
  });

  it('an event stream split mid-secret arrives event by event, scrubbed', async () => {
    const agentEvent1 = new Promise<number>((resolveEvent) => {
      void get(`${gw.url}/bearer/sse`, bearer(), (soFar) => {
        if (soFar.includes('\n\n')) {
          resolveEvent(Date.now());
          agentGotEvent1();
        }
      }).then((r) => {
        responses.push(r);
      });
    });
    const responses: AgentResponse[] = [];
    const event1At = await agentEvent1;
    for (let i = 0; i < 100 && responses.length === 0; i++) await sleep(20);
    const r = responses[0] as AgentResponse;
    expect(r.headers['content-type']).toBe('text/event-stream');
    const sent2 = timeline.find((t) => t.what === 'upstream sends event 2')?.at as number;
    expect(event1At, 'the agent had event 1 before the upstream sent event 2').toBeLessThanOrEqual(sent2);
    expect(sent2 - event1At).toBeLessThan(2500); // it was the agent's event 1 that released event 2, not the timeout
    const text = r.body.toString('utf8');
    expectNoSecret(text);
    expect(text).toBe('data: {"echo":"Bearer [REDACTED]"}\n\ndata: {"again":"Bearer [REDACTED]"}\n\n');
  });

  it('Valet asks only for codings it can scrub through that the agent takes, and drops Range / If-Range', async () => {
    await get(`${gw.url}/bearer/json`, { ...bearer(), 'accept-encoding': 'deflate, zstd', range: 'bytes=0-9', 'if-range': '"e"' });
    expect(headerValues(upstream.requests.at(-1) as RecordedRequest, 'accept-encoding')).toEqual(['identity']);
    await get(`${gw.url}/bearer/json`, { ...bearer(), 'accept-encoding': 'gzip, deflate, br', range: 'bytes=0-9', 'if-range': '"e"' });
    const got = upstream.requests.at(-1) as RecordedRequest;
    expect(headerValues(got, 'accept-encoding')).toEqual(['gzip, br']);
    expect(headerValues(got, 'range')).toEqual([]);
    expect(headerValues(got, 'if-range')).toEqual([]);
  });

  it.each(['zstd', 'stacked'])('a %s-encoded response is refused with 502 VALET_ERR_UPSTREAM_ENCODING, nothing of it forwarded', async (path) => {
    const r = await get(`${gw.url}/bearer/${path}`, bearer());
    expect(r.status).toBe(502);
    const body = JSON.parse(r.body.toString('utf8')) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('VALET_ERR_UPSTREAM_ENCODING');
    expectNoSecret(r.body.toString('utf8'));
    const row = await auditRowFor(gw, requestIdOf(r.headers as Record<string, string>));
    expect(row).toMatchObject({ status: 502, upstream_status: 200, error_code: 'VALET_ERR_UPSTREAM_ENCODING' });
  });

  it('a small body the upstream cuts short: a coded 502 before anything is sent, none of the partial body', async () => {
    const r = await get(`${gw.url}/bearer/truncated`, bearer());
    expect(r.status).toBe(502);
    const text = r.body.toString('utf8');
    expect(text).not.toContain('partial');
    expect((JSON.parse(text) as { error: { code: string } }).error.code).toBe('VALET_ERR_UPSTREAM_UNREACHABLE');
    const row = await auditRowFor(gw, requestIdOf(r.headers as Record<string, string>));
    expect(row).toMatchObject({ status: 502, upstream_status: 200, error_code: 'VALET_ERR_UPSTREAM_UNREACHABLE' });
  });

  it('a body that is not the gzip it claims cuts the connection; nothing unscrubbed is sent', async () => {
    const outcome = await get(`${gw.url}/bearer/bad-gzip`, bearer()).then(
      (r) => r.body.toString('latin1'),
      (err: Error) => `error: ${err.message}`,
    );
    expectNoSecret(outcome);
    const rows = await gw.waitForAudit(1);
    expect(rows.at(-1)?.error_code).toBe('VALET_ERR_UPSTREAM_UNREACHABLE');
  });

  it('HEAD: no body to scrub, no Content-Length claimed', async () => {
    const r = await get(`${gw.url}/bearer/json`, bearer(), undefined, 'HEAD');
    expect(r.status).toBe(200);
    expect(r.body.length).toBe(0);
    expect(r.headers['content-length']).toBeUndefined();
  });

  it('scrub_responses: false passes the body byte for byte, with its Content-Length and the agent’s Accept-Encoding', async () => {
    const r = await get(`${gw.url}/raw/json`, { ...bearer(), 'accept-encoding': 'gzip' });
    const text = r.body.toString('utf8');
    expect(text).toContain(SECRETS.RAW_KEY);
    expect(r.headers['content-length']).toBe(String(r.body.length));
    expect(headerValues(upstream.requests[before] as RecordedRequest, 'accept-encoding')).toEqual(['gzip']);
    // Location hygiene is not part of that switch.
    const h = await get(`${gw.url}/raw/header`, bearer());
    expect(String(h.headers['location'])).not.toContain(encodeURIComponent(SECRETS.RAW_KEY));
    expect(h.headers['x-echo-authorization']).toBe(`Bearer ${SECRETS.RAW_KEY}`);
  });

  it('the audit log and the log lines never contain a secret', async () => {
    const rows = await gw.waitForAudit(10);
    expect(rows.length).toBeGreaterThanOrEqual(10);
    const scrubbed = [...rows.map((r) => JSON.stringify(r)), ...gw.logs].join('\n');
    expectNoSecret(scrubbed);
  });
});
