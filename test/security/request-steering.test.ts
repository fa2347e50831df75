/**
 * Request-steering headers: an agent allowed `GET /public/x` adds headers that frameworks, proxies
 * and CDNs read to re-route (`X-Original-URL`, `X-Rewrite-URL`, `X-Envoy-Original-Path`), re-method
 * (`X-HTTP-Method-Override` and relatives) or re-address (`X-Forwarded-Host`, `X-Host`, client-IP
 * headers) a request. Policy decided on one route and method; the upstream must not be told another.
 * Also: an upstream's explicit opt-in brings one such header back, and `forward_headers` forwards
 * only the names it lists.
 *
 * Requests are written on a raw socket so no client library merges, drops or re-cases headers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';
import { rawRequest, sendRaw, type RawResponse } from './raw-http.js';

/** One header of each family, in the letter cases SDKs and attackers use. */
const STEERING: [string, string][] = [
  ['X-Original-URL', '/admin/delete-all'],
  ['x-rewrite-url', '/admin/delete-all'],
  ['X-ORIGINAL-URI', '/admin'],
  ['X-Envoy-Original-Path', '/admin'],
  ['x-envoy-upstream-rq-timeout-ms', '1'],
  ['X-HTTP-Method-Override', 'DELETE'],
  ['X-Http-Method', 'DELETE'],
  ['x-method-override', 'DELETE'],
  ['X-Original-Method', 'DELETE'],
  ['X-Forwarded-Host', 'evil.example'],
  ['X-Forwarded-Prefix', '/admin'],
  ['X-Host', 'evil.example'],
  ['X-Original-Host', 'evil.example'],
  ['Front-End-Https', 'on'],
  ['X-Middleware-Subrequest', 'middleware:middleware:middleware:middleware:middleware'],
  ['x-invoke-path', '/admin'],
  ['X-Matched-Path', '/admin'],
  ['True-Client-IP', '10.0.0.1'],
  ['CF-Connecting-IP', '10.0.0.1'],
  ['Fastly-Client-IP', '10.0.0.1'],
  ['X-Client-IP', '10.0.0.1'],
  ['X-SSL-Client-Cert', 'forged'],
  ['Via', '1.1 internal-proxy'],
  ['Max-Forwards', '0'],
  ['Proxy', 'http://evil.example:3128'],
];

describe('request-steering headers never reach the upstream unless the upstream opts in', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let port: number;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const origin = upstream.origin;
    const credential = { scheme: 'bearer', secret: 'API_KEY' };
    gw = await startTestGateway({
      upstreams: [
        { name: 'open', origin, credential },
        { name: 'override', origin, credential, allow_steering_headers: ['X-HTTP-Method-Override', 'x-forwarded-proto'] },
        { name: 'strict', origin, credential, forward_headers: ['content-type', 'Accept', 'user-agent', 'openai-beta'] },
      ],
      rules: [{ id: 'public-reads', effect: 'allow', methods: ['GET'], paths: ['/public/**'] }],
      env: { API_KEY: 'real-api-key' },
    });
    token = await gw.token();
    port = gw.gateway.port;
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  let before = 0;
  beforeEach(() => {
    before = upstream.requests.length;
  });

  async function get(target: string, headers: [string, string][]): Promise<RecordedRequest> {
    const all: [string, string][] = [['Host', `127.0.0.1:${port}`], ['Authorization', `Bearer ${token}`], ...headers];
    const { responses } = await sendRaw(port, rawRequest(`GET ${target} HTTP/1.1`, all), { expect: 1, settleMs: 30 });
    expect((responses[0] as RawResponse).status).toBe(200);
    const got = upstream.requests.slice(before);
    expect(got, 'upstream requests').toHaveLength(1);
    return got[0] as RecordedRequest;
  }

  it('strips every family of steering header, any letter case; the upstream sees the policy-checked method and path', async () => {
    const got = await get('/open/public/x', [...STEERING, ['Accept', 'application/json']]);
    expect(got.method).toBe('GET');
    expect(got.url).toBe('/public/x');
    for (const [name] of STEERING) expect(headerValues(got, name), name).toEqual([]);
    expect(headerValues(got, 'accept')).toEqual(['application/json']);
    expect(headerValues(got, 'authorization')).toEqual(['Bearer real-api-key']);
  });

  it('an opted-in steering header is forwarded, in any case; the others of its kind are still stripped', async () => {
    const got = await get('/override/public/x', [...STEERING, ['x-http-method-override', 'PATCH'], ['X-Forwarded-Proto', 'https']]);
    expect(headerValues(got, 'x-http-method-override')).toEqual(['DELETE', 'PATCH']);
    expect(headerValues(got, 'x-forwarded-proto')).toEqual(['https']);
    for (const name of ['x-http-method', 'x-method-override', 'x-original-url', 'x-forwarded-host', 'x-forwarded-prefix', 'true-client-ip']) {
      expect(headerValues(got, name), name).toEqual([]);
    }
  });

  it('forward_headers: only the listed agent headers pass, plus what Valet adds', async () => {
    const got = await get('/strict/public/x', [
      ...STEERING,
      ['Accept', 'application/json'],
      ['OpenAI-Beta', 'assistants=v2'],
      ['User-Agent', 'sdk/1.0'],
      ['X-Custom-Debug', '1'],
      ['Cookie', 'session=agent'],
      ['Accept-Language', 'de'],
    ]);
    const names = new Set<string>();
    for (let i = 0; i < got.rawHeaders.length; i += 2) names.add((got.rawHeaders[i] as string).toLowerCase());
    // host and connection belong to undici's hop; authorization, x-request-id and accept-encoding are Valet's.
    expect([...names].sort()).toEqual(['accept', 'accept-encoding', 'authorization', 'connection', 'host', 'openai-beta', 'user-agent', 'x-request-id']);
    expect(headerValues(got, 'accept-encoding')).toEqual(['identity']);
    expect(headerValues(got, 'authorization')).toEqual(['Bearer real-api-key']);
  });
});

describe('opting in a header Valet never forwards is a configuration error', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it.each([
    ['authorization', 'carries a credential'],
    ['X-Echo-Key', 'carries a credential'],
    ['cookie', 'carries a credential'],
    ['connection', 'describes one hop'],
    ['transfer-encoding', 'describes one hop'],
  ])('%s', async (name, why) => {
    // A gateway that fails to start leaves its directory to the caller.
    const root = mkdtempSync(join(tmpdir(), 'valet-steering-'));
    dirs.push(root);
    const start = startTestGateway({
      root,
      upstreams: [
        {
          name: 'api',
          origin: 'http://127.0.0.1:9',
          credential: { scheme: 'header', header: 'x-echo-key', secret: 'API_KEY' },
          allow_steering_headers: [name],
        },
      ],
      rules: [],
      env: { API_KEY: 'k' },
    });
    await expect(start).rejects.toMatchObject({ code: 'VALET_ERR_CONFIG', message: expect.stringContaining(why) });
  });
});
