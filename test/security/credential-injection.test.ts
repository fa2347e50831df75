/**
 * Guards against credential smuggling and credential stripping: an agent that tries to remove,
 * replace or duplicate the credential Valet injects (hop-by-hop `Connection` tricks, its own
 * Authorization / API-key header in any case or repeated, its own credential query parameter), or
 * to steer the upstream with cookies, proxy credentials, forwarding headers, a Host override or
 * Valet's own control headers. The upstream must receive exactly one credential — the real one —
 * and none of the agent's.
 *
 * Every request is written on a raw socket so no client library merges, drops or re-cases headers.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { errorCode, rawRequest, sendRaw, type RawResponse } from './raw-http.js';

const SECRETS = {
  BEARER_KEY: 'real-bearer-secret',
  HEADER_KEY: 'real-header-secret',
  XKEY_KEY: 'real-xkey-secret',
  ANTH_KEY: 'real-anth-secret',
  QUERY_KEY: 'real-query-secret',
  BASIC_KEY: 'real-basic-secret',
  TMPL_KEY: 'real-tmpl-secret',
  ANTH2_KEY: 'real-anth2-secret',
  DD_API_KEY: 'real-dd-api-secret',
  DD_APP_KEY: 'real-dd-app-secret',
  CRLF_KEY: 'real-crlf-secret\r\nx-evil: 1',
};

const AGENT_VALUE = 'agent-supplied-value';

describe('credential injection cannot be stripped, replaced or duplicated', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let port: number;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const origin = upstream.origin;
    gw = await startTestGateway({
      upstreams: [
        { name: 'bearer', origin, credential: { scheme: 'bearer', secret: 'BEARER_KEY' } },
        // Credential in a custom header; the agent authenticates with Authorization: Bearer.
        { name: 'hdr', origin, credential: { scheme: 'header', header: 'X-Echo-Key', prefix: 'Key ', secret: 'HEADER_KEY' } },
        // Credential in x-api-key; the agent authenticates with Authorization: Bearer.
        { name: 'xkey', origin, credential: { scheme: 'header', header: 'x-api-key', secret: 'XKEY_KEY' } },
        // Anthropic-style: the agent's SDK puts its (Valet) token in x-api-key, Valet swaps it.
        {
          name: 'anth',
          origin,
          agent_token: { header: 'x-api-key' },
          credential: { scheme: 'header', header: 'x-api-key', secret: 'ANTH_KEY' },
        },
        { name: 'qry', origin, credential: { scheme: 'query', param: 'key', secret: 'QUERY_KEY' } },
        { name: 'basic', origin, credential: { scheme: 'basic', username: 'svc', secret: 'BASIC_KEY' } },
        // A templated value.
        { name: 'tmpl', origin, credential: { scheme: 'header', header: 'Authorization', value: 'token {secret}', secret: 'TMPL_KEY' } },
        // Several headers, one static; the agent's token arrives in x-api-key (Anthropic style).
        {
          name: 'anth2',
          origin,
          agent_token: { header: 'x-api-key' },
          credential: { scheme: 'headers', secret: 'ANTH2_KEY', headers: { 'x-api-key': '{secret}', 'anthropic-version': '2023-06-01' } },
        },
        // Several secrets.
        {
          name: 'multi',
          origin,
          credential: { scheme: 'headers', headers: { 'dd-api-key': '{secret:DD_API_KEY}', 'dd-application-key': '{secret:DD_APP_KEY}' } },
        },
        // Several secrets, one of them never set.
        {
          name: 'halfset',
          origin,
          credential: { scheme: 'headers', headers: { 'dd-api-key': '{secret:DD_API_KEY}', 'x-other': '{secret:NEVER_SET_KEY}' } },
        },
        // A secret whose value would split headers.
        { name: 'crlf', origin, credential: { scheme: 'headers', secret: 'CRLF_KEY', headers: { 'x-key': '{secret}' } } },
      ],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: SECRETS,
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

  /** Sends one raw GET and returns the gateway's response. */
  async function send(target: string, headers: [string, string][], hostHeader = true): Promise<RawResponse> {
    const all: [string, string][] = hostHeader ? [['Host', `127.0.0.1:${port}`], ...headers] : headers;
    const { responses } = await sendRaw(port, rawRequest(`GET ${target} HTTP/1.1`, all), { expect: 1, settleMs: 30 });
    expect(responses).toHaveLength(1);
    return responses[0] as RawResponse;
  }

  /** The one request the upstream received for this test; fails if there were zero or several. */
  function onlyForwarded(): RecordedRequest {
    const got = upstream.requests.slice(before);
    expect(got, 'upstream requests for this test').toHaveLength(1);
    return got[0] as RecordedRequest;
  }

  /** Invariants every forwarded request must satisfy, whatever the agent sent. */
  function expectClean(got: RecordedRequest): void {
    expect(headerValues(got, 'host')).toEqual([`127.0.0.1:${upstream.port}`]);
    for (const name of ['cookie', 'proxy-authorization', 'forwarded', 'x-real-ip']) {
      expect(headerValues(got, name), name).toEqual([]);
    }
    for (let i = 0; i < got.rawHeaders.length; i += 2) {
      const name = (got.rawHeaders[i] as string).toLowerCase();
      const value = got.rawHeaders[i + 1] as string;
      expect(name.startsWith('x-forwarded-'), `header ${name} reached the upstream`).toBe(false);
      expect(name.startsWith('valet-'), `header ${name} reached the upstream`).toBe(false);
      expect(value, `header ${name} carries the agent token`).not.toContain(token);
      expect(value, `header ${name} carries an agent-supplied credential`).not.toContain(AGENT_VALUE);
    }
    expect(got.url).not.toContain(token);
    expect(got.url).not.toContain(AGENT_VALUE);
  }

  const bearer = (): [string, string] => ['Authorization', `Bearer ${token}`];

  describe('Connection header cannot strip the injected credential', () => {
    it('Connection: authorization on a bearer upstream', async () => {
      const res = await send('/bearer/v1/x', [bearer(), ['Connection', 'authorization']]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
      expectClean(got);
    });

    it('Connection: Authorization (any case) on a basic upstream', async () => {
      const res = await send('/basic/v1/x', [['Connection', 'keep-alive, AUTHORIZATION'], bearer()]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Basic ${Buffer.from(`svc:${SECRETS.BASIC_KEY}`).toString('base64')}`]);
      expectClean(got);
    });

    it('Connection: x-api-key, x-echo-key on a header-scheme upstream (x-echo-key)', async () => {
      const res = await send('/hdr/v1/x', [bearer(), ['Connection', 'x-api-key, x-echo-key']]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-echo-key')).toEqual([`Key ${SECRETS.HEADER_KEY}`]);
      expect(headerValues(got, 'x-api-key')).toEqual([]);
      expect(headerValues(got, 'authorization')).toEqual([]);
      expectClean(got);
    });

    it('Connection: x-api-key, x-echo-key on a header-scheme upstream (x-api-key, agent token in x-api-key)', async () => {
      const res = await send('/anth/v1/messages', [
        ['x-api-key', token],
        ['Connection', 'x-api-key, x-echo-key'],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.ANTH_KEY]);
      expect(headerValues(got, 'authorization')).toEqual([]);
      expectClean(got);
    });

    it('Connection listing the injected header name, with the agent also sending that header', async () => {
      const res = await send('/hdr/v1/x', [
        bearer(),
        ['X-Echo-Key', AGENT_VALUE],
        ['Connection', 'X-ECHO-KEY'],
        ['x-echo-key', `Key ${AGENT_VALUE}`],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-echo-key')).toEqual([`Key ${SECRETS.HEADER_KEY}`]);
      expectClean(got);
    });

    it('several Connection headers naming the credential, host and content-length', async () => {
      const res = await send('/xkey/v1/x', [
        ['Connection', 'x-api-key'],
        bearer(),
        ['Connection', 'host, content-length, authorization'],
        ['x-api-key', AGENT_VALUE],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.XKEY_KEY]);
      expect(headerValues(got, 'authorization')).toEqual([]);
      expectClean(got);
    });

    it('a header merely named by Connection is not forwarded (the mechanism the attack relies on)', async () => {
      const res = await send('/bearer/v1/x', [bearer(), ['Connection', 'x-hop'], ['x-hop', 'h'], ['x-keep', 'k']]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-hop')).toEqual([]);
      expect(headerValues(got, 'x-keep')).toEqual(['k']);
    });
  });

  describe('agent-supplied credential variants never reach the upstream', () => {
    it('AUTHORIZATION in upper case is the agent token, not forwarded to a header-scheme upstream', async () => {
      const res = await send('/hdr/v1/x', [['AUTHORIZATION', `Bearer ${token}`]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([]);
      expect(headerValues(got, 'x-echo-key')).toEqual([`Key ${SECRETS.HEADER_KEY}`]);
      expectClean(got);
    });

    it('mixed-case aUtHoRiZaTiOn on a bearer upstream is replaced by exactly one real credential', async () => {
      const res = await send('/bearer/v1/x', [['aUtHoRiZaTiOn', `bearer ${token}`]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
      expectClean(got);
    });

    it('Authorization sent twice (same token) yields exactly one real Authorization', async () => {
      const res = await send('/bearer/v1/x', [bearer(), ['authorization', `Bearer ${token}`]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
      expectClean(got);
    });

    it('Authorization twice, the second a Basic credential of the agent, yields exactly one real Authorization', async () => {
      const agentBasic = Buffer.from(`${AGENT_VALUE}:x`).toString('base64');
      const res = await send('/bearer/v1/x', [bearer(), ['Authorization', `Basic ${agentBasic}`]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
      expect(got.rawHeaders.join('\n')).not.toContain(agentBasic);
      expectClean(got);
    });

    it('Authorization twice on a basic upstream yields exactly one real Basic credential', async () => {
      const res = await send('/basic/v1/x', [['Authorization', `Basic ${Buffer.from('svc:agent').toString('base64')}`], bearer()]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`Basic ${Buffer.from(`svc:${SECRETS.BASIC_KEY}`).toString('base64')}`]);
      expectClean(got);
    });

    it('two different agent tokens are refused, nothing forwarded', async () => {
      const other = await gw.token({ agent: 'agent-2' });
      const res = await send('/bearer/v1/x', [bearer(), ['Authorization', `Bearer ${other}`]]);
      expect(res.status).toBe(401);
      expect(errorCode(res)).toBe('VALET_ERR_TOKEN_INVALID');
      expect(upstream.requests.length).toBe(before);
    });

    it('the agent’s own x-api-key to an upstream whose credential is x-api-key is replaced', async () => {
      const res = await send('/xkey/v1/x', [bearer(), ['X-API-KEY', AGENT_VALUE], ['x-api-key', `${AGENT_VALUE}-2`]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.XKEY_KEY]);
      expect(headerValues(got, 'authorization')).toEqual([]);
      expectClean(got);
    });

    it('the agent token in x-api-key (Anthropic style), repeated in odd case, is swapped for one real key', async () => {
      const res = await send('/anth/v1/messages', [
        ['x-api-key', token],
        ['X-Api-Key', token],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.ANTH_KEY]);
      expectClean(got);
    });

    it('an agent Authorization (Basic) next to an x-api-key token never reaches an x-api-key upstream', async () => {
      const agentBasic = Buffer.from(`${AGENT_VALUE}:pw`).toString('base64');
      const res = await send('/anth/v1/messages', [
        ['x-api-key', token],
        ['Authorization', `Basic ${agentBasic}`],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([]);
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.ANTH_KEY]);
      expectClean(got);
    });

    it('a non-token x-api-key next to a Bearer token on the Anthropic-style upstream is refused, not forwarded', async () => {
      const res = await send('/anth/v1/messages', [bearer(), ['x-api-key', AGENT_VALUE]]);
      expect(res.status).toBe(401);
      expect(upstream.requests.length).toBe(before);
    });

    const queryCases: [string, string][] = [
      ['?key=agentvalue', ''],
      ['?a=1&key=agentvalue&b=2', 'a=1&b=2'],
      ['?KEY=agentvalue', ''],
      ['?Key=agentvalue&key=agentvalue2', ''],
      ['?ke%79=agentvalue', ''],
      ['?%4BEY=agentvalue&x=y', 'x=y'],
      ['?key', ''],
    ];
    it.each(queryCases)('query-scheme upstream: %s reaches the upstream with only the real key, once', async (query, kept) => {
      const res = await send(`/qry/v1/x${query}`, [bearer()]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      const url = new URL(got.url, 'http://upstream.invalid');
      expect(url.pathname).toBe('/v1/x');
      const keyParams = [...url.searchParams.entries()].filter(([k]) => k.toLowerCase() === 'key');
      expect(keyParams).toEqual([['key', SECRETS.QUERY_KEY]]);
      expect(got.url).not.toContain('agentvalue');
      const expected = kept === '' ? `key=${SECRETS.QUERY_KEY}` : `${kept}&key=${SECRETS.QUERY_KEY}`;
      expect(got.url).toBe(`/v1/x?${expected}`);
      expect(headerValues(got, 'authorization')).toEqual([]);
      expectClean(got);
    });
  });

  describe('templated and several-header credentials', () => {
    it('a templated value replaces every Authorization the agent sent', async () => {
      // (A second value Valet would read as a token is refused as ambiguous; this one it does not read.)
      const res = await send('/tmpl/v1/x', [bearer(), ['AUTHORIZATION', `Digest ${AGENT_VALUE}`], ['Connection', 'authorization']]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'authorization')).toEqual([`token ${SECRETS.TMPL_KEY}`]);
      expectClean(got);
    });

    it('a static injected header overrides the agent’s copies, whatever their case or Connection tricks', async () => {
      const res = await send('/anth2/v1/messages', [
        ['x-api-key', token],
        ['anthropic-version', '2020-01-01'],
        ['Anthropic-Version', AGENT_VALUE],
        ['Connection', 'anthropic-version, x-api-key'],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'x-api-key')).toEqual([SECRETS.ANTH2_KEY]);
      expect(headerValues(got, 'anthropic-version')).toEqual(['2023-06-01']);
      expectClean(got);
    });

    it('several secrets are each injected once', async () => {
      const res = await send('/multi/v1/x', [bearer(), ['dd-api-key', AGENT_VALUE], ['DD-APPLICATION-KEY', AGENT_VALUE]]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'dd-api-key')).toEqual([SECRETS.DD_API_KEY]);
      expect(headerValues(got, 'dd-application-key')).toEqual([SECRETS.DD_APP_KEY]);
      expectClean(got);
    });

    it('one unresolvable secret of several: 503 VALET_ERR_CREDENTIAL_UNAVAILABLE, nothing forwarded, nothing leaked', async () => {
      const res = await send('/halfset/v1/x', [bearer()]);
      expect(res.status).toBe(503);
      expect(errorCode(res)).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
      expect(res.body).not.toContain(SECRETS.DD_API_KEY);
      expect(upstream.requests.length).toBe(before);
    });

    it('a secret containing CR LF never reaches a header: 503, nothing forwarded', async () => {
      const res = await send('/crlf/v1/x', [bearer()]);
      expect(res.status).toBe(503);
      expect(errorCode(res)).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
      expect(upstream.requests.length).toBe(before);
    });
  });

  describe('steering headers never reach the upstream', () => {
    it('cookies, proxy credentials, forwarding headers and valet-* headers are dropped', async () => {
      const res = await send('/bearer/v1/x', [
        bearer(),
        ['Cookie', `session=${AGENT_VALUE}`],
        ['cookie', 'b=2'],
        ['Proxy-Authorization', `Basic ${AGENT_VALUE}`],
        ['PROXY-AUTHORIZATION', `Bearer ${AGENT_VALUE}`],
        ['X-Forwarded-Host', 'evil.example'],
        ['X-Forwarded-For', '10.0.0.1'],
        ['x-forwarded-proto', 'https'],
        ['X-Forwarded-Port', '443'],
        ['Forwarded', 'for=10.0.0.1;host=evil.example;proto=https'],
        ['X-Real-IP', '10.0.0.1'],
        ['Valet-Upstream', 'evil'],
        ['valet-policy', 'allow'],
        ['VALET-TENANT', 'other'],
        ['X-Custom', 'kept'],
      ]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expectClean(got);
      expect(headerValues(got, 'cookie')).toEqual([]);
      expect(headerValues(got, 'x-custom')).toEqual(['kept']);
      expect(headerValues(got, 'authorization')).toEqual([`Bearer ${SECRETS.BEARER_KEY}`]);
    });

    it('a Host override does not change the upstream Host header', async () => {
      const res = await send('/bearer/v1/x', [['Host', 'evil.example'], bearer()], false);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'host')).toEqual([`127.0.0.1:${upstream.port}`]);
      expectClean(got);
    });

    it('the upstream Host header is the upstream host:port', async () => {
      const res = await send('/hdr/v1/x', [bearer()]);
      expect(res.status).toBe(200);
      const got = onlyForwarded();
      expect(headerValues(got, 'host')).toEqual([`127.0.0.1:${upstream.port}`]);
    });
  });
});
