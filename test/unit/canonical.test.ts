import { describe, expect, it } from 'vitest';
import { ValetError } from '../../gateway/errors.js';
import { canonicalQuery, canonicalTarget } from '../../gateway/server/canonical.js';
import { hostName } from '../../gateway/server/pipeline.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ValetError);
    return (err as ValetError).code;
  }
  return undefined;
}

describe('canonicalTarget', () => {
  it.each([
    ['/api/v1/things', 'api', '/v1/things', '/v1/things', ''],
    ['/api', 'api', '/', '/', ''],
    ['/api/', 'api', '/', '/', ''],
    ['/api?x=1', 'api', '/', '/', 'x=1'],
    ['/api/a/b/', 'api', '/a/b/', '/a/b/', ''],
    ['/api/a/./b', 'api', '/a/b', '/a/b', ''],
    ['/api/a/x/../b', 'api', '/a/b', '/a/b', ''],
    ['/api/a/%2E/b', 'api', '/a/b', '/a/b', ''],
    ['/api/a/x/%2e%2E/b', 'api', '/a/b', '/a/b', ''],
    ['/api/caf%C3%A9', 'api', '/café', '/caf%C3%A9', ''],
    ['/api/caf%c3%a9', 'api', '/café', '/caf%C3%A9', ''],
    ['/api/café', 'api', '/café', '/caf%C3%A9', ''],
    ['/api/%61dmin/y', 'api', '/admin/y', '/admin/y', ''],
    ['/api/a%20b', 'api', '/a b', '/a%20b', ''],
    ['/api/a?b=c/d&e', 'api', '/a', '/a', 'b=c/d&e'],
    ['/api/a?', 'api', '/a', '/a', ''],
    ['/my-api_2/x', 'my-api_2', '/x', '/x', ''],
    ['/api/a/..', 'api', '/', '/', ''],
  ])('%s → upstream %s, path %s, forwarded %s, query %s', (raw, upstream, path, forwardPath, rawQuery) => {
    expect(canonicalTarget(raw)).toEqual({ upstream, mount: `/${upstream}`, path, forwardPath, rawQuery });
    // The same target on the upstream's own listener or host: the path below the prefix, decided alike.
    const below = raw.slice(1 + upstream.length);
    expect(canonicalTarget(below.startsWith('/') ? below : `/${below}`, upstream)).toEqual({ upstream, mount: '', path, forwardPath, rawQuery });
  });

  it.each(['/../x', '/a/../../x', '/a%2Fb', '/a%zz', '//x', '/a/%2e%2e/%2e%2e/x'])('%j is refused on an upstream’s own route too', (raw) => {
    expect(codeOf(() => canonicalTarget(raw, 'api'))).toBe('VALET_ERR_BAD_PATH');
  });

  it('the forwarded path decodes to exactly the policy path (round trip)', () => {
    for (const raw of ['/api/a/./b', '/api/caf%C3%A9/x', '/api/%7Euser/a%2Bb', '/api/a:b@c', "/api/it's(1)*!"]) {
      const t = canonicalTarget(raw);
      expect(t.forwardPath.split('/').map(decodeURIComponent).join('/')).toBe(t.path);
      // and canonicalising the forwarded form is a fixed point
      expect(canonicalTarget(`/${t.upstream}${t.forwardPath}`).forwardPath).toBe(t.forwardPath);
    }
  });

  it.each([
    '/api/../x',
    '/api/a/../../x',
    '/api/%2e%2e/x',
    '/api/.%2E/x',
    '/api/a%2fb',
    '/api/a%2Fb',
    '/api/a%5cb',
    '/api/a%5Cb',
    '/api/a\\b',
    '/api/a%00b',
    '/api/a%0ab',
    '/api/a%7fb',
    '/api/a b',
    '/api/a\tb',
    '/api/a\u0000b',
    '/api/a#b',
    '/api/%252e%252e/x',
    '/api/a%25b',
    '/api/a//b',
    '/api//',
    '//evil.example/x',
    '/api/a%zzb',
    '/api/a%',
    '/api/a%2',
    '/api/%c0%ae',
    '/api/%c0%af',
    '/api/%ed%a0%80',
    '/api/%ff',
    '/api/x?%zz',
  ])('%j is refused as a bad path', (raw) => {
    expect(codeOf(() => canonicalTarget(raw))).toBe('VALET_ERR_BAD_PATH');
  });

  it.each(['http://evil.example/api/x', 'api/x', '*', ''])('%j (not origin-form) is refused as a bad request', (raw) => {
    expect(codeOf(() => canonicalTarget(raw))).toBe('VALET_ERR_BAD_REQUEST');
  });

  it.each(['/', '/API/x', '/1api/x', '/a%70i/x', '/.well-known/x', '/../x', `/${'a'.repeat(64)}/x`])(
    '%j names no valid upstream',
    (raw) => {
      expect(codeOf(() => canonicalTarget(raw))).toBe('VALET_ERR_UNKNOWN_UPSTREAM');
    },
  );

  it('error details never echo the raw target', () => {
    try {
      canonicalTarget('/api/secret-token-abc/%2e%2e/%2e%2e/x');
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('secret-token-abc');
    }
  });
});

describe('canonicalQuery', () => {
  const none = new Set<string>();

  it('an empty query gives nothing', () => {
    expect(canonicalQuery('', none)).toEqual({ query: {}, rawQuery: '', removed: {} });
  });

  it('form-decodes names and values for policy, forwards the raw pairs unchanged', () => {
    const q = canonicalQuery('a=1&b=x+y&c=%2F%26&a=2&flag&&d=', none);
    expect(q.query).toEqual({ a: ['1', '2'], b: ['x y'], c: ['/&'], flag: [''], d: [''] });
    expect(q.rawQuery).toBe('a=1&b=x+y&c=%2F%26&a=2&flag&d=');
    expect(q.removed).toEqual({});
  });

  it('removes the named parameters case-insensitively and by decoded name, keeping their values', () => {
    const q = canonicalQuery('a=1&key=agent1&KEY=agent2&Ke%79=agent3&%4B%45%59=agent4&b=2&key', new Set(['key']));
    expect(q.rawQuery).toBe('a=1&b=2');
    expect(q.query).toEqual({ a: ['1'], b: ['2'] });
    expect(q.removed).toEqual({ key: ['agent1', 'agent2', 'agent3', 'agent4', ''] });
  });

  it('removes several names at once', () => {
    const q = canonicalQuery('api_key=x&token=y&z=1', new Set(['api_key', 'token']));
    expect(q.rawQuery).toBe('z=1');
    expect(q.removed).toEqual({ api_key: ['x'], token: ['y'] });
  });

  it('does not treat look-alike names as the credential', () => {
    const q = canonicalQuery('keys=1&mykey=2&key_=3', new Set(['key']));
    expect(q.rawQuery).toBe('keys=1&mykey=2&key_=3');
    expect(q.removed).toEqual({});
  });

  it('the result objects have no prototype (no __proto__ pollution)', () => {
    const q = canonicalQuery('__proto__=x&constructor=y', none);
    expect(Object.getPrototypeOf(q.query)).toBeNull();
    expect(q.query['__proto__']).toEqual(['x']);
    expect(q.query['constructor']).toEqual(['y']);
    expect(({} as Record<string, unknown>)['x']).toBeUndefined();
  });

  it.each(['a=%zz', 'a=%', '%c0%ae=1', 'a=%ff'])('%j is refused as a bad request', (raw) => {
    expect(codeOf(() => canonicalQuery(raw, none))).toBe('VALET_ERR_BAD_REQUEST');
  });
});

describe('hostName: the Host value an upstream is routed by', () => {
  it.each([
    ['stripe.valet.internal', 'stripe.valet.internal'],
    ['Stripe.Valet.Internal:8080', 'stripe.valet.internal'],
    ['stripe.valet.internal.', 'stripe.valet.internal'],
    ['stripe.valet.internal.:80', 'stripe.valet.internal'],
    ['[::1]:8080', '[::1]'],
    ['', ''],
  ])('%j → %j', (host, name) => {
    expect(hostName(host)).toBe(name);
  });
  it('no Host at all routes by path', () => {
    expect(hostName(undefined)).toBe('');
  });
});
