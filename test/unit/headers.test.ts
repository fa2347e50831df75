import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { requestDigest } from '../../gateway/approvals/digest.js';
import type { CredentialConfig } from '../../gateway/config/types.js';
import {
  STEERING,
  STEERING_PREFIX,
  classifyRequestHeader,
  forwardableRequestHeaders,
  forwardableResponseHeaders,
  upstreamRequestId,
  injectCredential,
  type HeaderList,
} from '../../gateway/proxy/headers.js';
import { createScrubber } from '../../gateway/proxy/scrub.js';
import { upstream } from '../helpers/fixtures.js';

const bearer = upstream({ scheme: 'bearer', secret: 'S' });
const xKey = upstream({ scheme: 'header', header: 'x-api-key', prefix: '', secret: 'S' });
const anth = upstream({ scheme: 'header', header: 'x-api-key', prefix: '', secret: 'S' }, { agentTokenHeader: 'x-api-key' });
const custom = upstream({ scheme: 'header', header: 'x-echo-key', prefix: 'Key ', secret: 'S' }, { agentTokenHeader: 'x-agent-token' });

const TOKEN = 'agent.token.value';
const raw = (...pairs: [string, string][]): string[] => pairs.flat();
const names = (h: HeaderList): string[] => h.map(([n]) => n);

describe('forwardableRequestHeaders', () => {
  it('keeps ordinary headers in order, names lower-cased, duplicates kept', () => {
    const out = forwardableRequestHeaders(
      raw(['Accept', 'application/json'], ['X-Custom', 'a'], ['Content-Type', 'text/plain'], ['x-custom', 'b'], ['User-Agent', 'sdk/1']),
      bearer, TOKEN);
    expect(out).toEqual([
      ['accept', 'application/json'],
      ['x-custom', 'a'],
      ['content-type', 'text/plain'],
      ['x-custom', 'b'],
      ['user-agent', 'sdk/1'],
    ]);
  });

  it.each([
    'Connection',
    'Keep-Alive',
    'Proxy-Connection',
    'Transfer-Encoding',
    'TE',
    'Trailer',
    'Upgrade',
    'Proxy-Authenticate',
    'Proxy-Authorization',
    'Host',
    'Authorization',
    'AUTHORIZATION',
    'Cookie',
    'Forwarded',
    'X-Real-IP',
    'Expect',
    'Content-Length',
    'X-Forwarded-For',
    'X-Forwarded-Host',
    'x-forwarded-proto',
    'X-FORWARDED-PREFIX',
    'Valet-Upstream',
    'valet-anything',
    'HTTP2-Settings',
  ])('drops %s', (name) => {
    const out = forwardableRequestHeaders(raw([name, 'v'], ['X-Keep', 'k']), bearer, TOKEN);
    expect(out).toEqual([['x-keep', 'k']]);
  });

  it('drops HTTP/2 pseudo-headers: they are the request line, never headers upstream', () => {
    const out = forwardableRequestHeaders(
      raw([':method', 'POST'], [':path', '/v1/x'], [':scheme', 'http'], [':authority', 'valet:8080'], [':protocol', 'websocket'], ['content-type', 'application/json']),
      bearer, TOKEN);
    expect(out).toEqual([['content-type', 'application/json']]);
  });

  it('drops every header Connection names, across several Connection headers, any case and spacing', () => {
    const out = forwardableRequestHeaders(
      raw(
        ['Connection', ' X-One ,, x-two'],
        ['connection', 'X-THREE'],
        ['x-one', '1'],
        ['X-Two', '2'],
        ['x-three', '3'],
        ['x-four', '4'],
      ),
      bearer, TOKEN);
    expect(out).toEqual([['x-four', '4']]);
  });

  it('drops the credential header of a header-scheme upstream, every copy and case', () => {
    const out = forwardableRequestHeaders(raw(['X-API-KEY', 'a'], ['x-api-key', 'b'], ['X-Api-Key', 'c'], ['x-other', 'o']), xKey, TOKEN);
    expect(out).toEqual([['x-other', 'o']]);
  });

  it('drops the upstream’s agent-token header', () => {
    expect(forwardableRequestHeaders(raw(['X-Agent-Token', 't'], ['X-Echo-Key', 'k'], ['x-ok', '1']), custom, TOKEN)).toEqual([['x-ok', '1']]);
    expect(forwardableRequestHeaders(raw(['x-api-key', 't']), anth, TOKEN)).toEqual([]);
  });

  it('drops Authorization even when the upstream takes its agent token elsewhere', () => {
    expect(forwardableRequestHeaders(raw(['Authorization', 'Basic YTpi'], ['x-api-key', 't']), anth, TOKEN)).toEqual([]);
    expect(forwardableRequestHeaders(raw(['authorization', 'Bearer x']), custom, TOKEN)).toEqual([]);
  });

  it('drops well-known key headers even for an upstream that does not use them', () => {
    expect(names(forwardableRequestHeaders(raw(['x-api-key', 'k'], ['X-Goog-Api-Key', 'g'], ['private-token', 'p']), bearer, TOKEN))).toEqual([]);
  });

  it('drops any header that carries the agent token', () => {
    expect(names(forwardableRequestHeaders(raw(['x-custom-auth', `Token ${TOKEN}`], ['accept', 'application/json']), bearer, TOKEN))).toEqual(['accept']);
  });

  it('h2c smuggling headers do not pass (Upgrade and what Connection names)', () => {
    const out = forwardableRequestHeaders(
      raw(['Connection', 'Upgrade, HTTP2-Settings'], ['Upgrade', 'h2c'], ['HTTP2-Settings', 'AAMAAABkAAQAAP__']),
      bearer, TOKEN);
    expect(out).toEqual([]);
  });

  it.each([
    // re-routing
    'X-Original-URL', 'x-original-uri', 'X-Rewrite-URL', 'X-REWRITE-PATH', 'X-Envoy-Original-Path', 'x-envoy-upstream-rq-timeout-ms',
    'X-Proxy-URL', 'X-Matched-Path', 'x-invoke-path', 'X-Invoke-Query', 'X-Middleware-Subrequest', 'x-now-route-matches',
    // re-methoding
    'X-HTTP-Method-Override', 'x-http-method', 'X-Method-Override', 'X-Original-Method',
    // re-addressing
    'X-Forwarded-Path', 'X-Forwarded-Uri', 'X-Forwarded-Server', 'X-Forwarded-Scheme', 'X-Forwarded', 'X-Original-Host', 'X-Host',
    'Front-End-Https', 'X-Url-Scheme', 'x-http-host-override',
    // client identity and certificates
    'True-Client-IP', 'X-Client-IP', 'X-Cluster-Client-IP', 'CF-Connecting-IP', 'Fastly-Client-IP', 'X-ProxyUser-Ip',
    'akamai-origin-hop', 'X-ARR-ClientCert', 'X-SSL-Client-Cert', 'X-Client-Cert',
    // proxy chain, httpoxy
    'Via', 'Max-Forwards', 'Proxy',
  ])('drops the request-steering header %s', (name) => {
    expect(forwardableRequestHeaders(raw([name, '/admin'], ['X-Keep', 'k']), bearer, TOKEN)).toEqual([['x-keep', 'k']]);
  });

  it('keeps ordinary headers that merely resemble steering ones', () => {
    const h = raw(['X-Client-Name', 'sdk'], ['X-Forwarded', 'x'], ['X-Original', 'o'], ['x-hostname', 'h'], ['OpenAI-Beta', 'assistants=v2']);
    expect(names(forwardableRequestHeaders(h, bearer, TOKEN))).toEqual(['x-client-name', 'x-original', 'x-hostname', 'openai-beta']);
  });

  it('forwards a steering header the upstream opted in, by exact name and from a prefix family, any case', () => {
    const u = upstream({ scheme: 'bearer', secret: 'S' }, { allowSteeringHeaders: ['x-http-method-override', 'x-forwarded-proto'] });
    const h = raw(['X-HTTP-Method-Override', 'PATCH'], ['x-forwarded-proto', 'https'], ['X-Forwarded-Host', 'evil'], ['X-Method-Override', 'DELETE']);
    expect(forwardableRequestHeaders(h, u, TOKEN)).toEqual([['x-http-method-override', 'PATCH'], ['x-forwarded-proto', 'https']]);
  });

  it('never lets an opt-in bring back a credential, hop-by-hop or Valet header (upstreams built in code too)', () => {
    const u = upstream({ scheme: 'bearer', secret: 'S' }, { allowSteeringHeaders: ['authorization', 'cookie', 'connection', 'host', 'valet-x', 'x-api-key'] });
    const h = raw(['Authorization', 'Bearer a'], ['Cookie', 'c'], ['Host', 'h'], ['Valet-X', 'v'], ['x-api-key', 'k'], ['accept', '*/*']);
    expect(forwardableRequestHeaders(h, u, TOKEN)).toEqual([['accept', '*/*']]);
  });

  it('forward_headers: only the listed names pass, and never a header Valet strips', () => {
    const u = upstream({ scheme: 'bearer', secret: 'S' }, { forwardHeaders: ['content-type', 'accept', 'openai-beta', 'authorization', 'x-original-url', 'accept-encoding'] });
    const h = raw(['Content-Type', 'application/json'], ['Accept', '*/*'], ['X-Custom', 'c'], ['OpenAI-Beta', 'b'], ['User-Agent', 'ua'],
      ['Authorization', 'Bearer x'], ['X-Original-URL', '/admin'], ['Accept-Encoding', 'gzip']);
    expect(forwardableRequestHeaders(h, u, TOKEN)).toEqual([['content-type', 'application/json'], ['accept', '*/*'], ['openai-beta', 'b']]);
  });

  it('forward_headers with an opted-in steering header forwards it; Connection still removes what it names', () => {
    const u = upstream({ scheme: 'bearer', secret: 'S' }, { allowSteeringHeaders: ['x-http-method-override'], forwardHeaders: ['accept', 'x-http-method-override'] });
    expect(forwardableRequestHeaders(raw(['x-http-method-override', 'PUT'], ['accept', 'a']), u, TOKEN)).toEqual([['x-http-method-override', 'PUT'], ['accept', 'a']]);
    expect(forwardableRequestHeaders(raw(['Connection', 'accept'], ['x-http-method-override', 'PUT'], ['accept', 'a']), u, TOKEN)).toEqual([['x-http-method-override', 'PUT']]);
  });

  it('the approval digest, built from the forwardable headers, cannot be changed by steering headers', () => {
    const digest = (h: string[]): string =>
      requestDigest({ upstream: 'api', method: 'GET', path: '/x', query: '', headers: forwardableRequestHeaders(h, bearer, TOKEN), body: new Uint8Array() });
    const plain = digest(raw(['accept', 'a']));
    expect(digest(raw(['accept', 'a'], ['X-HTTP-Method-Override', 'DELETE'], ['X-Original-URL', '/admin'], ['Via', '1.1 p']))).toBe(plain);
    expect(digest(raw(['accept', 'a'], ['x-custom', '1']))).not.toBe(plain);
  });

  it('docs/configuration.md lists exactly the steering names and families in the code', () => {
    const doc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
    const section = doc.slice(doc.indexOf('### Request-steering headers'), doc.indexOf('### Response scrubbing'));
    const listed = (label: string): string[] => [...(section.split(label)[1]?.split('\n- ')[0] ?? '').matchAll(/`([a-z0-9-]+)`/g)].map((m) => m[1] as string);
    expect(listed('**Exact names**').sort()).toEqual([...STEERING].sort());
    expect(listed('**Prefix families**').filter((p) => p.endsWith('-') && !p.startsWith('-')).sort()).toEqual([...STEERING_PREFIX].sort());
  });

  it('classifyRequestHeader says what may be opted in', () => {
    const h = upstream({ scheme: 'header', header: 'x-echo-key', prefix: '', secret: 'S' }, { agentTokenHeader: 'x-agent-token' });
    expect(classifyRequestHeader('x-original-url', h)).toBe('steering');
    expect(classifyRequestHeader('cf-connecting-ip', h)).toBe('steering');
    expect(classifyRequestHeader('x-echo-key', h)).toBe('credential');
    expect(classifyRequestHeader('x-agent-token', h)).toBe('credential');
    expect(classifyRequestHeader('cookie', h)).toBe('credential');
    expect(classifyRequestHeader('proxy-authorization', h)).toBe('hop-by-hop');
    expect(classifyRequestHeader('x-request-id', h)).toBe('valet');
    expect(classifyRequestHeader('valet-approval', h)).toBe('valet');
    expect(classifyRequestHeader('accept', h)).toBe('ordinary');
  });

  it('does not mutate its input', () => {
    const input = raw(['Authorization', 'Bearer t'], ['x-a', '1']);
    const copy = [...input];
    forwardableRequestHeaders(input, bearer, TOKEN);
    expect(input).toEqual(copy);
  });
});

describe('injectCredential', () => {
  const base: HeaderList = [['accept', '*/*']];

  it('bearer: appends exactly one Authorization', () => {
    const out = injectCredential(base, 'a=1', { scheme: 'bearer', secret: 'S' }, () => 'sk-real');
    expect(out).toEqual({ headers: [['accept', '*/*'], ['authorization', 'Bearer sk-real']], rawQuery: 'a=1', secrets: ['sk-real'] });
  });

  it('header: appends the configured header with its prefix', () => {
    const out = injectCredential(base, '', { scheme: 'header', header: 'x-echo-key', prefix: 'Key ', secret: 'S' }, () => 'real');
    expect(out.headers).toEqual([['accept', '*/*'], ['x-echo-key', 'Key real']]);
    expect(out.rawQuery).toBe('');
  });

  it('basic: username:secret, or secret: when no username', () => {
    const withUser = injectCredential([], '', { scheme: 'basic', username: 'svc', secret: 'S' }, () => 'pw');
    expect(withUser.headers).toEqual([['authorization', `Basic ${Buffer.from('svc:pw').toString('base64')}`]]);
    const keyOnly = injectCredential([], '', { scheme: 'basic', username: undefined, secret: 'S' }, () => 'sk_live_1');
    expect(keyOnly.headers).toEqual([['authorization', `Basic ${Buffer.from('sk_live_1:').toString('base64')}`]]);
  });

  it('query: appends param=secret, percent-encoding the secret so it cannot add parameters', () => {
    const cred: CredentialConfig = { scheme: 'query', param: 'key', secret: 'S' };
    expect(injectCredential(base, '', cred, () => 'abc')).toEqual({ headers: base, rawQuery: 'key=abc', secrets: ['abc'] });
    expect(injectCredential(base, 'a=1&b=2', cred, () => 'abc').rawQuery).toBe('a=1&b=2&key=abc');
    const tricky = injectCredential([], 'a=1', cred, () => 'x&key=evil#frag +/=');
    expect(tricky.rawQuery).toBe('a=1&key=x%26key%3Devil%23frag%20%2B%2F%3D');
    expect(new URLSearchParams(tricky.rawQuery).getAll('key')).toEqual(['x&key=evil#frag +/=']);
  });

  it('does not mutate the header list it was given', () => {
    const headers: HeaderList = [['accept', '*/*']];
    injectCredential(headers, '', { scheme: 'bearer', secret: 'S' }, () => 'x');
    expect(headers).toEqual([['accept', '*/*']]);
  });

  it('end to end: agent headers in, exactly one real credential out', () => {
    const agentHeaders = raw(
      ['Authorization', 'Bearer agent-token'],
      ['Connection', 'x-api-key'],
      ['X-Api-Key', 'agent'],
      ['x-api-key', 'agent2'],
      ['Cookie', 'c=1'],
    );
    const out = injectCredential(forwardableRequestHeaders(agentHeaders, xKey, TOKEN), '', xKey.credential, () => 'real');
    expect(out.headers).toEqual([['x-api-key', 'real']]);
  });
});

describe('forwardableResponseHeaders', () => {
  const none = createScrubber([]);
  const VALET = (): string => 'http://valet.test:8080';

  it('passes ordinary headers, arrays (set-cookie) intact', () => {
    const out = forwardableResponseHeaders(
      { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'], 'cache-control': 'no-store', 'x-empty': undefined },
      bearer,
      none,
      VALET,
    );
    expect(out).toEqual({ 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'], 'cache-control': 'no-store' });
  });

  it('drops hop-by-hop headers and every header the upstream’s Connection names', () => {
    const out = forwardableResponseHeaders(
      {
        connection: 'keep-alive, X-Internal',
        'keep-alive': 'timeout=5',
        'transfer-encoding': 'chunked',
        trailer: 'x-t',
        upgrade: 'h2c',
        'proxy-authenticate': 'Basic',
        'proxy-connection': 'keep-alive',
        te: 'trailers',
        'x-internal': 'secret-ish',
        'x-public': 'ok',
      },
      bearer,
      none,
      VALET,
    );
    expect(out).toEqual({ 'x-public': 'ok' });
  });

  it('passes the upstream’s own request id headers through unchanged; drops valet-* headers an upstream sends', () => {
    const out = forwardableResponseHeaders({ 'x-request-id': 'up-123', 'request-id': 'req_9', 'valet-request-id': 'forged', 'valet-anything': 'x', 'content-type': 'text/plain' }, bearer, none, VALET);
    expect(out).toEqual({ 'x-request-id': 'up-123', 'request-id': 'req_9', 'content-type': 'text/plain' });
  });

  it('finds the upstream’s request id under the names APIs use, first wins', () => {
    expect(upstreamRequestId({ 'x-request-id': 'a', 'request-id': 'b' })).toBe('a');
    expect(upstreamRequestId({ 'request-id': 'req_1' })).toBe('req_1');
    expect(upstreamRequestId({ 'x-github-request-id': 'ABCD:1' })).toBe('ABCD:1');
    expect(upstreamRequestId({ 'x-amzn-requestid': 'aws-1' })).toBe('aws-1');
    expect(upstreamRequestId({ 'content-type': 'x' })).toBeNull();
    expect(upstreamRequestId({ 'x-request-id': 'z'.repeat(1000) })).toHaveLength(256);
  });

  it('scrubs every value, array elements included, and the upstream’s request id', () => {
    const s = createScrubber(['sk-real-123456']);
    const b64 = Buffer.from('svc:sk-real-123456').toString('base64');
    const out = forwardableResponseHeaders(
      {
        'x-echo-authorization': 'Bearer sk-real-123456',
        'x-echo-basic': `Basic ${b64}`,
        'set-cookie': ['a=1', 'k=sk-real-123456; Path=/'],
        'x-request-id': 'sk-real-123456',
        'content-type': 'application/json',
      },
      bearer,
      s,
      VALET,
    );
    expect(out).toEqual({
      'x-echo-authorization': 'Bearer [REDACTED]',
      'x-echo-basic': expect.stringContaining('[REDACTED]'),
      'set-cookie': ['a=1', 'k=[REDACTED]; Path=/'],
      'x-request-id': '[REDACTED]',
      'content-type': 'application/json',
    });
    expect(JSON.stringify(out)).not.toContain(b64.slice(4, 16));
  });

  it('with scrubbing off, values other than Location pass unchanged', () => {
    const s = createScrubber(['sk-real-123456']);
    const off = upstream({ scheme: 'bearer', secret: 'S' }, { scrubResponses: false });
    const out = forwardableResponseHeaders({ 'x-echo': 'sk-real-123456', location: '/next?x=sk-real-123456' }, off, s, VALET);
    expect(out).toEqual({ 'x-echo': 'sk-real-123456', location: '/api/next?x=[REDACTED]' });
  });

  it('end to end with agentLocation: the secret never reaches the agent through Location', () => {
    const q = upstream({ scheme: 'query', param: 'key', secret: 'S' });
    const out = forwardableResponseHeaders({ location: 'https://api.example.com/next?page=2&key=sk-real-123' }, q, createScrubber(['sk-real-123']), VALET);
    expect(String(out['location'])).not.toContain('sk-real-123');
    expect(String(out['location'])).toContain('page=2');
  });

  it('rewrites Location, Content-Location and every Link line on the upstream\'s origin; scrubbing off too', () => {
    const off = upstream({ scheme: 'bearer', secret: 'S' }, { scrubResponses: false });
    for (const u of [bearer, off]) {
      const out = forwardableResponseHeaders(
        {
          location: 'https://api.example.com/v1/x',
          'content-location': '/v1/x',
          link: ['<https://api.example.com/v1/x?page=2>; rel="next"', '</v1/x?page=9>; rel="last", <https://other.example/y>; rel="help"'],
        },
        u,
        none,
        VALET,
      );
      expect(out).toEqual({
        location: 'http://valet.test:8080/api/v1/x',
        'content-location': '/api/v1/x',
        link: ['<http://valet.test:8080/api/v1/x?page=2>; rel="next"', '</api/v1/x?page=9>; rel="last", <https://other.example/y>; rel="help"'],
      });
    }
  });

  it('asks for Valet\'s origin at most once, and not at all when nothing links to the upstream', () => {
    let calls = 0;
    const count = (): string => {
      calls++;
      return 'http://v';
    };
    forwardableResponseHeaders({ 'content-type': 'text/plain', location: '/x', link: '<https://other.example/>; rel="a"' }, bearer, none, count);
    expect(calls).toBe(0);
    forwardableResponseHeaders({ location: 'https://api.example.com/a', link: ['<https://api.example.com/b>; rel="next"', '<https://api.example.com/c>; rel="last"'] }, bearer, none, count);
    expect(calls).toBe(1);
  });

  it('scrubs Link parameters while scrubbing is on', () => {
    const out = forwardableResponseHeaders({ link: '</x>; rel="next"; title="sk-real-123456"' }, bearer, createScrubber(['sk-real-123456']), VALET);
    expect(out['link']).toBe('</api/x>; rel="next"; title="[REDACTED]"');
  });
});
