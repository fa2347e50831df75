import { describe, expect, it } from 'vitest';
import type { CredentialConfig, UpstreamConfig } from '../../gateway/config/types.js';
import { agentLink, agentLocation, agentOrigin } from '../../gateway/proxy/location.js';
import { createScrubber } from '../../gateway/proxy/scrub.js';

function upstream(credential: CredentialConfig, agentTokenQuery?: string): UpstreamConfig {
  return {
    name: 'api',
    origin: 'https://api.example.com',
    agentTokenHeader: 'authorization',
    agentTokenQuery,
    dialect: 'generic',
    listen: undefined,
    hosts: [],
    credential,
    timeouts: { connectMs: 1000, headersMs: 1000, bodyMs: 1000 },
    connections: 1,
  };
}

const bearer = upstream({ scheme: 'bearer', secret: 'S' });
const query = upstream({ scheme: 'query', param: 'key', secret: 'S' }, 'valet_token');
const SECRET = 'sk-live-abc123';
/** Valet's origin as the agent reached it. */
const VALET = (): string => 'http://valet.test:8080';
// A realistic base64-style key: contains characters that percent-encoding changes.
const B64_SECRET = 'wJalr/XUtnFE+MI/K7MDENG=';

describe('agentLocation: scrubbing', () => {
  it('keeps an ordinary root-relative Location root-relative, below the upstream\'s prefix', () => {
    expect(agentLocation('/v1/next?page=2#top', bearer, createScrubber([SECRET]), VALET)).toBe('/api/v1/next?page=2#top');
  });

  it('leaves an ordinary absolute Location absolute', () => {
    expect(agentLocation('https://cdn.example.net/file?x=1', bearer, createScrubber([SECRET]), VALET)).toBe('https://cdn.example.net/file?x=1');
  });

  it('removes userinfo', () => {
    const out = agentLocation('https://user:pass@api.example.com/x', bearer, createScrubber([SECRET]), VALET);
    expect(out).toBe('http://valet.test:8080/api/x');
  });

  it('removes the credential query parameter and the agent-token query parameter', () => {
    const out = agentLocation('/v1/next?page=2&key=other-value&valet_token=agent', query, createScrubber([SECRET]), VALET);
    expect(out).toBe('/api/v1/next?page=2');
  });

  it('redacts the secret in plain form, anywhere', () => {
    for (const loc of [`/cb/${SECRET}`, `https://api.example.com/x?sig=${SECRET}`, `https://${SECRET}.example.com/`, `/x#${SECRET}`]) {
      expect(agentLocation(loc, bearer, createScrubber([SECRET]), VALET), loc).not.toContain(SECRET);
    }
  });

  it('redacts the secret in userinfo (e.g. a basic-auth redirect)', () => {
    const out = agentLocation(`https://${SECRET}:@api.example.com/x`, bearer, createScrubber([SECRET]), VALET);
    expect(out).not.toContain(SECRET);
    expect(out).toBe('http://valet.test:8080/api/x');
  });

  it('redacts the secret URL-encoded (upper-case hex)', () => {
    const loc = `https://api.example.com/x?next=${encodeURIComponent(B64_SECRET)}`;
    expect(loc).toContain('%2F');
    const out = agentLocation(loc, bearer, createScrubber([B64_SECRET]), VALET);
    expect(out).not.toContain(encodeURIComponent(B64_SECRET));
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
  });

  it('redacts the secret URL-encoded with lower-case hex (equivalent per RFC 3986 §2.1)', () => {
    const lower = encodeURIComponent(B64_SECRET).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    const out = agentLocation(`https://api.example.com/x?next=${lower}`, bearer, createScrubber([B64_SECRET]), VALET);
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
  });

  it('redacts the secret in base64 form', () => {
    const b64 = Buffer.from(SECRET).toString('base64');
    const out = agentLocation(`/x?state=${b64}`, bearer, createScrubber([SECRET]), VALET);
    expect(out).not.toContain(b64);
  });

  it('the credential parameter is removed even when its value is not the secret verbatim', () => {
    const out = agentLocation(`https://api.example.com/x?key=${encodeURIComponent(B64_SECRET)}&a=1`, query, createScrubber([B64_SECRET]), VALET);
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
    expect(new URL(out).searchParams.get('a')).toBe('1');
    expect(new URL(out).searchParams.has('key')).toBe(false);
  });

  it('works without a secret (credential unavailable)', () => {
    expect(agentLocation('https://u:p@api.example.com/x?key=1&b=2', query, createScrubber([]), VALET)).toBe('http://valet.test:8080/api/x?b=2');
  });

  it('returns an unparseable Location as is, but still redacted', () => {
    const out = agentLocation(`http://[bad/${SECRET}`, bearer, createScrubber([SECRET]), VALET);
    expect(out).not.toContain(SECRET);
  });
});

describe('agentLocation: URLs on the upstream\'s origin point back through Valet', () => {
  const none = createScrubber([]);
  const at = (loc: string, u: UpstreamConfig = bearer): string => agentLocation(loc, u, none, VALET);

  it.each([
    ['https://api.example.com/repos/x/issues?page=2', 'http://valet.test:8080/api/repos/x/issues?page=2'],
    ['https://API.Example.COM/repos/x', 'http://valet.test:8080/api/repos/x'],
    ['https://api.example.com:443/repos/x', 'http://valet.test:8080/api/repos/x'],
    ['HTTPS://api.example.com', 'http://valet.test:8080/api/'],
    ['//api.example.com/a/b#frag', 'http://valet.test:8080/api/a/b#frag'],
    ['https://api.example.com/%2e%2e/admin', 'http://valet.test:8080/api/admin'],
    ['  https://api.example.com/x\t', 'http://valet.test:8080/api/x'],
  ])('absolute %s', (loc, want) => {
    expect(at(loc)).toBe(want);
  });

  it.each([
    ['/repos/x?page=2', '/api/repos/x?page=2'],
    ['/', '/api/'],
    ['/a/../b', '/api/b'],
  ])('root-relative %s', (loc, want) => {
    expect(at(loc)).toBe(want);
  });

  it.each([
    ['next?page=2', 'next?page=2'],
    ['?page=2', '?page=2'],
    ['#top', '#top'],
    ['../x', '../x'],
  ])('path-relative %s stays relative (it resolves against Valet\'s URL the same way)', (loc, want) => {
    expect(at(loc)).toBe(want);
  });

  it.each([
    'https://cdn.example.net/x?page=2',
    'http://api.example.com/x',
    'https://api.example.com:8443/x',
    'https://api.example.com.evil.net/x',
    'mailto:ops@example.com',
  ])('leaves another origin alone: %s', (loc) => {
    expect(at(loc)).toBe(new URL(loc).href);
  });

  it('a backslash network-path reference to another host is not turned into a Valet path', () => {
    expect(at('/\\evil.example/x')).toBe('https://evil.example/x');
  });

  it('another host never gains a credential, and loses the credential parameter and userinfo', () => {
    const out = agentLocation(`https://u:p@cdn.example.net/x?key=${SECRET}&valet_token=t&a=1`, query, createScrubber([SECRET]), VALET);
    expect(out).toBe('https://cdn.example.net/x?a=1');
  });

  it('path-relative references lose the credential parameter too', () => {
    expect(agentLocation('next?page=2&key=abc#f', query, none, VALET)).toBe('next?page=2#f');
  });

  it('with Valet\'s origin unknown, an absolute URL is scrubbed but left pointing at the upstream', () => {
    expect(agentLocation('https://u:p@api.example.com/x', bearer, none, () => undefined)).toBe('https://api.example.com/x');
  });

  it('an upstream on a non-default port: only that port is its origin', () => {
    const local = { ...bearer, name: 'gh', origin: 'http://127.0.0.1:4567' };
    expect(at('http://127.0.0.1:4567/repositories/1/issues?page=2', local)).toBe('http://valet.test:8080/gh/repositories/1/issues?page=2');
    expect(at('http://127.0.0.1:4568/x', local)).toBe('http://127.0.0.1:4568/x');
    expect(at('http://localhost:4567/x', local)).toBe('http://localhost:4567/x');
  });
});

describe('agentLink', () => {
  const none = createScrubber([]);

  it('rewrites every target in a header with several links, parameters untouched', () => {
    const link = '<https://api.example.com/repositories/1/issues?page=2>; rel="next", <https://API.example.com:443/repositories/1/issues?page=3>; rel="last"';
    expect(agentLink(link, bearer, none, VALET)).toBe(
      '<http://valet.test:8080/api/repositories/1/issues?page=2>; rel="next", <http://valet.test:8080/api/repositories/1/issues?page=3>; rel="last"',
    );
  });

  it('relative and foreign targets; < and > inside quoted parameters are not targets', () => {
    const link = '</repos/x?page=2>; rel="next"; title="a <b> \\"c<d>\\"", <https://docs.example.net/p>; rel="help", <?page=1>; rel="first"';
    expect(agentLink(link, bearer, none, VALET)).toBe(
      '</api/repos/x?page=2>; rel="next"; title="a <b> \\"c<d>\\"", <https://docs.example.net/p>; rel="help", <?page=1>; rel="first"',
    );
  });

  it('scrubs every target: userinfo, credential parameter, secrets', () => {
    const link = `<https://u:${SECRET}@cdn.example.net/x?key=k&a=1>; rel="next", </x?s=${SECRET}>; rel="prev"`;
    const out = agentLink(link, query, createScrubber([SECRET]), VALET);
    expect(out).not.toContain(SECRET);
    expect(out).toContain('<https://cdn.example.net/x?a=1>; rel="next"');
    expect(out).toContain('</api/x?s=');
  });

  it('an unterminated target is left as it is', () => {
    expect(agentLink('<https://api.example.com/x; rel="next"', bearer, none, VALET)).toBe('<https://api.example.com/x; rel="next"');
  });
});

describe('agentOrigin', () => {
  it.each([
    ['valet:8080', 'http://valet:8080'],
    ['Valet.Example.COM', 'http://valet.example.com'],
    ['127.0.0.1:9000', 'http://127.0.0.1:9000'],
    ['[::1]:8080', 'http://[::1]:8080'],
    ['valet_gateway:8080', 'http://valet_gateway:8080'],
  ])('takes a plain Host %s', (host, want) => {
    expect(agentOrigin(host, '10.0.0.5', 8080)).toBe(want);
  });

  it.each(['evil.example/x', 'a@b', 'valet:99999', 'valet:80:80', '', 'x y', 'valet:8080#', '[::1'])('falls back to the listener for Host %j', (host) => {
    expect(agentOrigin(host, '10.0.0.5', 8080)).toBe('http://10.0.0.5:8080');
  });

  it('without Host: the listener address, IPv4-mapped and IPv6 spelled as URLs take them', () => {
    expect(agentOrigin(undefined, '::ffff:127.0.0.1', 8080)).toBe('http://127.0.0.1:8080');
    expect(agentOrigin(undefined, '::1', 8080)).toBe('http://[::1]:8080');
    expect(agentOrigin(undefined, undefined, undefined)).toBeUndefined();
  });
});
