/**
 * Guards against path-confusion attacks: dot segments, encoded slashes and backslashes, NUL,
 * double encoding, empty segments, protocol-relative and absolute-form targets, invalid or overlong
 * UTF-8 escapes — anything that would let the path the policy checks differ from the path the
 * upstream serves (deny-rule bypass, escaping the upstream root, or steering to another host).
 * Ambiguous targets must be refused with a coded 400 and never forwarded; canonical variants must
 * be forwarded exactly as the policy saw them.
 *
 * Requests go over raw sockets so no client resolves `..` or re-encodes anything first.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { errorCode, rawRequest, sendRaw, type RawResponse } from './raw-http.js';

describe('path canonicalisation through the real gateway', () => {
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
        { id: 'api-no-admin', upstream: 'api', paths: ['/admin/**'], effect: 'deny', reason: 'admin is off limits' },
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

  async function get(target: string): Promise<RawResponse> {
    const req = rawRequest(`GET ${target} HTTP/1.1`, [
      ['Host', `127.0.0.1:${port}`],
      ['Authorization', `Bearer ${token}`],
      ['Connection', 'close'],
    ]);
    const { responses } = await sendRaw(port, req, { expect: 1, settleMs: 30 });
    expect(responses, `responses to ${target}`).toHaveLength(1);
    return responses[0] as RawResponse;
  }

  const rejected: [string, string][] = [
    ['dot-dot climbing out of the upstream', '/api/../other/x'],
    ['dot-dot climbing above the root', '/api/a/../../x'],
    ['encoded dot-dot', '/api/%2e%2e/x'],
    ['encoded dot-dot, upper case', '/api/%2E%2E/x'],
    ['half-encoded dot-dot', '/api/.%2e/x'],
    ['encoded slash (lower)', '/api/a%2fb'],
    ['encoded slash (upper)', '/api/a%2Fb'],
    ['encoded backslash', '/api/a%5cb'],
    ['raw backslash', '/api/a\\b'],
    ['encoded NUL', '/api/a%00b'],
    ['encoded control character', '/api/a%0d%0ab'],
    ['double-encoded dot-dot', '/api/%252e%252e/x'],
    ['double-encoded slash', '/api/a%252fb'],
    ['empty segment', '/api/a//b'],
    ['protocol-relative target', '//evil.example/x'],
    ['invalid escape', '/api/a%zzb'],
    ['truncated escape', '/api/a%2'],
    ['overlong UTF-8 dot', '/api/%c0%ae%c0%ae/x'],
    ['overlong UTF-8 slash', '/api/a%c0%afb'],
    ['lone UTF-8 continuation byte', '/api/a%80b'],
    ['absolute-form target', 'http://evil.example/api/x'],
    ['absolute-form target naming the upstream', 'http://127.0.0.1/api/x'],
    ['asterisk-form target', '*'],
  ];

  it.each(rejected)('%s (%s) → 400 with a coded error, nothing forwarded', async (_name, target) => {
    const res = await get(target);
    expect(res.status).toBe(400);
    expect(['VALET_ERR_BAD_PATH', 'VALET_ERR_BAD_REQUEST']).toContain(errorCode(res));
    expect(res.body).not.toContain('real-secret-value');
    expect(upstream.requests.length).toBe(before);
  });

  it('/api/@evil.example/x never leaves the configured upstream', async () => {
    // "@" is a legal path character; what matters is that it cannot act as userinfo and move the
    // request to another host. Either it is refused, or it reaches our upstream verbatim.
    const res = await get('/api/@evil.example/x');
    if (res.status === 400) {
      expect(['VALET_ERR_BAD_PATH', 'VALET_ERR_BAD_REQUEST']).toContain(errorCode(res));
      expect(upstream.requests.length).toBe(before);
      return;
    }
    expect(res.status).toBe(200);
    const got = upstream.requests.slice(before);
    expect(got).toHaveLength(1);
    expect(got[0]!.url).toBe('/@evil.example/x');
    expect(headerValues(got[0]!, 'host')).toEqual([`127.0.0.1:${upstream.port}`]);
  });

  const accepted: [string, string][] = [
    ['/api/a/./b', '/a/b'],
    ['/api/a/x/../b', '/a/b'],
    ['/api/./a/b', '/a/b'],
    ['/api/a/%2e/b', '/a/b'],
    ['/api/a/x/%2e%2e/b', '/a/b'],
    ['/api/caf%C3%A9', '/caf%C3%A9'],
    ['/api/caf%c3%a9', '/caf%C3%A9'],
    ['/api/%61%62c', '/abc'],
    ['/api/a%20b', '/a%20b'],
    ['/api/a/b/', '/a/b/'],
    ['/api/a?x=1&y=%20', '/a?x=1&y=%20'],
  ];

  it.each(accepted)('%s is forwarded as exactly %s', async (target, forwarded) => {
    const rowsBefore = (await gw.waitForAudit(0)).length;
    const res = await get(target);
    expect(res.status).toBe(200);
    const got = upstream.requests.slice(before);
    expect(got).toHaveLength(1);
    expect(got[0]!.url).toBe(forwarded);
    // The audit row records the decoded path the policy evaluated; re-encoding it must give the
    // forwarded path, i.e. policy saw exactly what the upstream got.
    const rows = await gw.waitForAudit(rowsBefore + 1);
    const row = rows[rowsBefore]!;
    expect(row.decision).toBe('allow');
    const forwardedPath = forwarded.split('?')[0]!;
    expect(row.path.split('/').map((s) => encodeURIComponent(s)).join('/')).toBe(forwardedPath);
  });

  const bypasses = [
    '/api/admin/y',
    '/api/admin',
    '/api/admin/',
    '/api/x/../admin/y',
    '/api/%61dmin/y',
    '/api/%61%64%6d%69%6e/y',
    '/api/./admin/y',
    '/api/admin/./y',
    '/api/x/%2e%2e/admin/y',
    '/api/a/b/../../admin/y',
  ];

  it.each(bypasses)('the /admin/** deny rule cannot be bypassed by %s', async (target) => {
    const res = await get(target);
    expect(res.status).toBe(403);
    expect(errorCode(res)).toBe('VALET_ERR_POLICY_DENIED');
    expect(upstream.requests.length).toBe(before);
  });

  // Path parameters: Tomcat, Jetty, Spring and others drop ";…" from a segment before routing, so
  // "/admin;x/y" is served as "/admin/y". The policy must not see a different path from the one the
  // upstream routes: refuse it (400) or deny it (403), never forward it past the deny rule.
  it.each(['/api/admin;x/y', '/api/admin;/y', '/api/admin;jsessionid=1/y'])(
    'the /admin/** deny rule cannot be bypassed by the path parameter in %s',
    async (target) => {
      const res = await get(target);
      expect([400, 403]).toContain(res.status);
      expect(upstream.requests.length).toBe(before);
    },
  );

  // RFC 3986 §2.2: a percent-encoded reserved character is not equivalent to the character itself.
  // Re-encoding must not turn data ("%3B") into a delimiter (";") the upstream then interprets.
  it('an encoded semicolon is not forwarded as a path-parameter delimiter', async () => {
    const res = await get('/api/admin%3Bx/y');
    if (res.status === 400 || res.status === 403) {
      expect(upstream.requests.length).toBe(before);
      return;
    }
    expect(res.status).toBe(200);
    const got = upstream.requests.slice(before);
    expect(got).toHaveLength(1);
    expect(got[0]!.url).toBe('/admin%3Bx/y');
  });

  it('an encoded slash inside "admin/…" is refused, not treated as a single segment', async () => {
    const res = await get('/api/admin%2fy');
    expect(res.status).toBe(400);
    expect(upstream.requests.length).toBe(before);
  });
});
