import { describe, expect, it } from 'vitest';
import type { CredentialConfig, UpstreamConfig } from '../../gateway/config/types.js';
import { scrubLocation } from '../../gateway/proxy/location.js';
import { createScrubber } from '../../gateway/proxy/scrub.js';

function upstream(credential: CredentialConfig, agentTokenQuery?: string): UpstreamConfig {
  return {
    name: 'api',
    origin: 'https://api.example.com',
    agentTokenHeader: 'authorization',
    agentTokenQuery,
    credential,
    timeouts: { connectMs: 1000, headersMs: 1000, bodyMs: 1000 },
    connections: 1,
  };
}

const bearer = upstream({ scheme: 'bearer', secret: 'S' });
const query = upstream({ scheme: 'query', param: 'key', secret: 'S' }, 'valet_token');
const SECRET = 'sk-live-abc123';
// A realistic base64-style key: contains characters that percent-encoding changes.
const B64_SECRET = 'wJalr/XUtnFE+MI/K7MDENG=';

describe('scrubLocation', () => {
  it('leaves an ordinary relative Location relative and unchanged', () => {
    expect(scrubLocation('/v1/next?page=2#top', bearer, createScrubber([SECRET]))).toBe('/v1/next?page=2#top');
  });

  it('leaves an ordinary absolute Location absolute', () => {
    expect(scrubLocation('https://cdn.example.net/file?x=1', bearer, createScrubber([SECRET]))).toBe('https://cdn.example.net/file?x=1');
  });

  it('removes userinfo', () => {
    const out = scrubLocation('https://user:pass@api.example.com/x', bearer, createScrubber([SECRET]));
    expect(out).toBe('https://api.example.com/x');
  });

  it('removes the credential query parameter and the agent-token query parameter', () => {
    const out = scrubLocation('/v1/next?page=2&key=other-value&valet_token=agent', query, createScrubber([SECRET]));
    expect(out).toBe('/v1/next?page=2');
  });

  it('redacts the secret in plain form, anywhere', () => {
    for (const loc of [`/cb/${SECRET}`, `https://api.example.com/x?sig=${SECRET}`, `https://${SECRET}.example.com/`, `/x#${SECRET}`]) {
      expect(scrubLocation(loc, bearer, createScrubber([SECRET])), loc).not.toContain(SECRET);
    }
  });

  it('redacts the secret in userinfo (e.g. a basic-auth redirect)', () => {
    const out = scrubLocation(`https://${SECRET}:@api.example.com/x`, bearer, createScrubber([SECRET]));
    expect(out).not.toContain(SECRET);
    expect(out).toBe('https://api.example.com/x');
  });

  it('redacts the secret URL-encoded (upper-case hex)', () => {
    const loc = `https://api.example.com/x?next=${encodeURIComponent(B64_SECRET)}`;
    expect(loc).toContain('%2F');
    const out = scrubLocation(loc, bearer, createScrubber([B64_SECRET]));
    expect(out).not.toContain(encodeURIComponent(B64_SECRET));
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
  });

  it('redacts the secret URL-encoded with lower-case hex (equivalent per RFC 3986 §2.1)', () => {
    const lower = encodeURIComponent(B64_SECRET).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    const out = scrubLocation(`https://api.example.com/x?next=${lower}`, bearer, createScrubber([B64_SECRET]));
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
  });

  it('redacts the secret in base64 form', () => {
    const b64 = Buffer.from(SECRET).toString('base64');
    const out = scrubLocation(`/x?state=${b64}`, bearer, createScrubber([SECRET]));
    expect(out).not.toContain(b64);
  });

  it('the credential parameter is removed even when its value is not the secret verbatim', () => {
    const out = scrubLocation(`https://api.example.com/x?key=${encodeURIComponent(B64_SECRET)}&a=1`, query, createScrubber([B64_SECRET]));
    expect(decodeURIComponent(out)).not.toContain(B64_SECRET);
    expect(new URL(out).searchParams.get('a')).toBe('1');
    expect(new URL(out).searchParams.has('key')).toBe(false);
  });

  it('works without a secret (credential unavailable)', () => {
    expect(scrubLocation('https://u:p@api.example.com/x?key=1&b=2', query, createScrubber([]))).toBe('https://api.example.com/x?b=2');
  });

  it('returns an unparseable Location as is, but still redacted', () => {
    const out = scrubLocation(`http://[bad/${SECRET}`, bearer, createScrubber([SECRET]));
    expect(out).not.toContain(SECRET);
  });
});
