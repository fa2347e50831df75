/**
 * Compression with scrubbing on: the agent's Accept-Encoding reaches the upstream as far as Valet
 * can decode, scrub and encode again (gzip, br); the body is scrubbed and sent in the coding the
 * upstream used, streams stay event by event, and a coding the agent did not ask for is undone.
 */
import { brotliCompressSync, brotliDecompressSync, constants, createGzip, gunzipSync, gzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const SECRET = 'sk-compress-me-4f3e2d1c0b';

describe('compressed responses are scrubbed and stay compressed', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let releaseStream: (() => void) | undefined;

  beforeAll(async () => {
    upstream = await startFakeUpstream((req, res) => {
      const wants = String(req.headers['accept-encoding'] ?? '');
      const body = Buffer.from(JSON.stringify({ echoed: `Bearer ${SECRET}`, filler: 'x'.repeat(2000) }));
      if (req.url === '/sse') {
        // Two events; the second only after the test has seen the first arrive.
        const gz = createGzip({ flush: constants.Z_SYNC_FLUSH });
        res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip' });
        gz.pipe(res);
        gz.write(`data: first ${SECRET}\n\n`);
        releaseStream = () => gz.end('data: second\n\n');
        return;
      }
      if (req.url === '/always-gzip') {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
        return void res.end(gzipSync(body));
      }
      if (wants.includes('br')) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'br' });
        return void res.end(brotliCompressSync(body));
      }
      if (wants.includes('gzip')) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', vary: 'Accept-Encoding' });
        return void res.end(gzipSync(body));
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
    });
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [{ id: 'ok', effect: 'allow' }],
      env: { API_KEY: SECRET },
    });
    token = await gw.token();
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const get = async (path: string, acceptEncoding?: string) => {
    const res = await request(`${gw.url}/api${path}`, { headers: { authorization: `Bearer ${token}`, ...(acceptEncoding !== undefined && { 'accept-encoding': acceptEncoding }) } });
    return { status: res.statusCode, headers: res.headers, raw: Buffer.from(await res.body.arrayBuffer()) };
  };

  it.each([
    ['gzip', 'gzip', (b: Buffer) => gunzipSync(b)],
    ['br', 'br', (b: Buffer) => brotliDecompressSync(b)],
    ['gzip, deflate, br;q=0.9', 'gzip, br', (b: Buffer) => brotliDecompressSync(b)],
  ])('Accept-Encoding %j: the upstream is asked for %j; the body comes back in its coding, scrubbed', async (accept, asked, decode) => {
    const r = await get('/json', accept);
    expect(r.status).toBe(200);
    expect(headerValues(upstream.requests.at(-1)!, 'accept-encoding')).toEqual([asked]);
    expect(r.headers['content-encoding']).toBe(asked.includes('br') ? 'br' : 'gzip');
    expect(String(r.headers['vary'])).toMatch(/accept-encoding/i);
    const text = decode(r.raw).toString();
    expect(text).toContain('[REDACTED]');
    expect(text).not.toContain(SECRET);
    expect(r.raw.toString('latin1')).not.toContain(SECRET);
  });

  it.each([[undefined], ['identity'], ['zstd'], ['gzip;q=0, br;q=0']])('Accept-Encoding %j: identity is asked for and sent', async (accept) => {
    const r = await get('/json', accept);
    expect(headerValues(upstream.requests.at(-1)!, 'accept-encoding')).toEqual(['identity']);
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(r.raw.toString()).toContain('[REDACTED]');
  });

  it('an upstream that compresses unasked is decoded and sent as identity', async () => {
    const r = await get('/always-gzip', 'identity');
    expect(r.headers['content-encoding']).toBeUndefined();
    expect(r.raw.toString()).toContain('"echoed":"Bearer [REDACTED]"');
  });

  it('a gzipped event stream reaches the agent event by event, scrubbed', async () => {
    const res = await request(`${gw.url}/api/sse`, { headers: { authorization: `Bearer ${token}`, 'accept-encoding': 'gzip' } });
    expect(res.headers['content-encoding']).toBe('gzip');
    const { createGunzip } = await import('node:zlib');
    const gunzip = createGunzip();
    res.body.pipe(gunzip);
    let text = '';
    const first = await new Promise<string>((resolve) => {
      gunzip.on('data', (c: Buffer) => {
        text += c.toString();
        if (text.includes('\n\n')) resolve(text);
      });
    });
    // The first event arrived while the upstream was still holding the second back.
    expect(first).toContain('data: first [REDACTED]');
    releaseStream?.();
    await new Promise((r) => gunzip.once('end', r));
    expect(text).toContain('data: second');
    expect(text).not.toContain(SECRET);
  });
});
