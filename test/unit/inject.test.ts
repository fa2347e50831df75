/**
 * Injection of templated and several-header credentials: every secret must resolve to a
 * header-safe value or nothing is built (fail closed), and injected headers replace the agent's.
 */
import { describe, expect, it } from 'vitest';
import type { CredentialConfig } from '../../gateway/config/types.js';
import { ValetError } from '../../gateway/errors.js';
import { forwardableRequestHeaders, injectCredential, valetRequestHeaders, type SecretLookup } from '../../gateway/proxy/headers.js';
import { upstream } from '../helpers/fixtures.js';

const anthropic: CredentialConfig = {
  scheme: 'headers',
  headers: [
    { name: 'x-api-key', value: [{ secret: 'ANTH' }] },
    { name: 'anthropic-version', value: ['2023-06-01'] },
  ],
};
const datadog: CredentialConfig = {
  scheme: 'headers',
  headers: [
    { name: 'dd-api-key', value: [{ secret: 'DD_API' }] },
    { name: 'dd-application-key', value: ['app ', { secret: 'DD_APP' }] },
  ],
};

const from =
  (values: Record<string, string>): SecretLookup =>
  (name) =>
    values[name];

/** The error injectCredential threw, or a failure when it did not throw. */
function thrown(f: () => unknown): ValetError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(ValetError);
    return err as ValetError;
  }
  throw new Error('expected injectCredential to throw');
}

describe('injectCredential: templates and several headers', () => {
  it('a templated value: "token {secret}"', () => {
    const cred: CredentialConfig = { scheme: 'headers', headers: [{ name: 'authorization', value: ['token ', { secret: 'GH' }] }] };
    const out = injectCredential([['accept', '*/*']], '', cred, from({ GH: 'ghp_real' }));
    expect(out).toEqual({ headers: [['accept', '*/*'], ['authorization', 'token ghp_real']], rawQuery: '', secrets: ['ghp_real'] });
  });

  it('a secret header plus a static header (Anthropic)', () => {
    const out = injectCredential([], '', anthropic, from({ ANTH: 'sk-ant-real' }));
    expect(out.headers).toEqual([
      ['x-api-key', 'sk-ant-real'],
      ['anthropic-version', '2023-06-01'],
    ]);
    expect(out.secrets).toEqual(['sk-ant-real']);
  });

  it('several secrets: each resolved once and all reported for scrubbing', () => {
    const asked: string[] = [];
    const out = injectCredential([], '', datadog, (name) => {
      asked.push(name);
      return { DD_API: 'api-real', DD_APP: 'app-real' }[name];
    });
    expect(out.headers).toEqual([
      ['dd-api-key', 'api-real'],
      ['dd-application-key', 'app app-real'],
    ]);
    expect(out.secrets).toEqual(['api-real', 'app-real']);
    expect(asked).toEqual(['DD_API', 'DD_APP']);
  });

  it('one secret of several missing: nothing is built, 503 VALET_ERR_CREDENTIAL_UNAVAILABLE', () => {
    const e = thrown(() => injectCredential([], '', datadog, from({ DD_API: 'api-real' })));
    expect(e.code).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    expect(e.status).toBe(503);
    expect(e.message).not.toContain('api-real');
  });

  it('basic: the base64 token is scrubbed for too (its own base64 would not contain the secret’s)', () => {
    const out = injectCredential([], '', { scheme: 'basic', username: 'svc', secret: 'K' }, from({ K: 'pw-123' }));
    expect(out.secrets).toEqual(['pw-123', Buffer.from('svc:pw-123').toString('base64')]);
  });

  it('an empty secret counts as missing', () => {
    expect(thrown(() => injectCredential([], '', anthropic, from({ ANTH: '' }))).code).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
  });

  // Sources refuse these when a secret is set; injection checks again so that any source fails closed.
  it.each([
    ['CR LF', 'sk-real\r\nx-evil: 1'],
    ['LF', 'sk-real\nx'],
    ['CR', 'sk-real\rx'],
    ['NUL', 'sk-real\0'],
    ['another control character', 'sk-real\x7f'],
    ['a character beyond Latin-1', 'sk-real\u2028'],
  ])('a secret containing %s fails closed for every scheme', (_name, value) => {
    const creds: CredentialConfig[] = [
      anthropic,
      { scheme: 'bearer', secret: 'ANTH' },
      { scheme: 'header', header: 'x-k', prefix: '', secret: 'ANTH' },
      { scheme: 'basic', username: 'u', secret: 'ANTH' },
      { scheme: 'query', param: 'key', secret: 'ANTH' },
    ];
    for (const cred of creds) {
      const e = thrown(() => injectCredential([], '', cred, from({ ANTH: value })));
      expect(e.code, cred.scheme).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    }
  });

  it('a tab and Latin-1 bytes are header-safe and allowed', () => {
    expect(injectCredential([], '', anthropic, from({ ANTH: 'a\tb\u00e9' })).headers[0]).toEqual(['x-api-key', 'a\tb\u00e9']);
  });
});

describe('injected headers replace whatever the agent sent under those names', () => {
  it('every injected name, in any case and any number of copies, is dropped from the agent’s headers', () => {
    const u = upstream(anthropic, { agentTokenHeader: 'x-api-key' });
    const agent = ['x-api-key', 'agent.token', 'Anthropic-Version', '2020-01-01', 'ANTHROPIC-VERSION', 'x', 'accept', 'application/json'];
    const out = injectCredential(forwardableRequestHeaders(agent, u, 'agent.token'), '', u.credential, from({ ANTH: 'real' }));
    expect(out.headers).toEqual([
      ['accept', 'application/json'],
      ['x-api-key', 'real'],
      ['anthropic-version', '2023-06-01'],
    ]);
  });
});

describe('scrubbing changes what Valet asks the upstream for', () => {
  const agent = ['Accept-Encoding', 'gzip, br', 'Range', 'bytes=0-9', 'If-Range', '"e1"', 'accept', '*/*'];

  it('on (the default): no accept-encoding, range or if-range from the agent; Valet asks for identity', () => {
    const u = upstream(anthropic);
    expect(forwardableRequestHeaders(agent, u, 'tok')).toEqual([['accept', '*/*']]);
    expect(valetRequestHeaders(u, 'req-1')).toEqual([
      ['x-request-id', 'req-1'],
      ['accept-encoding', 'identity'],
    ]);
  });

  it('off: the agent’s headers pass as before', () => {
    const u = upstream(anthropic, { scrubResponses: false });
    expect(forwardableRequestHeaders(agent, u, 'tok')).toEqual([
      ['accept-encoding', 'gzip, br'],
      ['range', 'bytes=0-9'],
      ['if-range', '"e1"'],
      ['accept', '*/*'],
    ]);
    expect(valetRequestHeaders(u, 'req-1')).toEqual([['x-request-id', 'req-1']]);
  });
});
