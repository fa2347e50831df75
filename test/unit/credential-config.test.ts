import { forwardableRequestHeaders } from '../../gateway/proxy/headers.js';
/**
 * Credential injection schemes as configured: the templated `value`, the several-header `headers`
 * scheme, several secrets per upstream, `scrub_responses`, and every mistake reported with
 * file:line:column by the loader.
 */
import { describe, expect, it } from 'vitest';
import { parseTemplate, secretNames } from '../../gateway/config/credential.js';
import { loadConfig } from '../../gateway/config/load.js';
import type { UpstreamConfig } from '../../gateway/config/types.js';
import type { ConfigProblem } from '../../gateway/errors.js';
import { upstreamConfigs } from '../helpers/upstream-config.js';

const configs = upstreamConfigs();

/** One upstream named `api` with this credential (a YAML flow or block mapping, indented 4). */
const upstreamYaml = (credential: string, extra = ''): string =>
  `upstreams:\n  - name: api\n    origin: http://127.0.0.1:9\n    credential: ${credential}\n${extra}`;

const load = (yaml: string): UpstreamConfig => configs.load(yaml, 'api');
const problems = (yaml: string): ConfigProblem[] => configs.problems(yaml);

describe('templated values', () => {
  it('header + value: "token {secret}" is one templated header', () => {
    const u = load(upstreamYaml('{ scheme: header, header: Authorization, value: "token {secret}", secret: GH_TOKEN }'));
    expect(u.credential).toEqual({ scheme: 'headers', headers: [{ name: 'authorization', value: ['token ', { secret: 'GH_TOKEN' }] }] });
    expect(secretNames(u.credential)).toEqual(['GH_TOKEN']);
  });

  it('headers: a secret header plus a static one (Anthropic)', () => {
    const u = load(
      upstreamYaml(`
      scheme: headers
      secret: ANTHROPIC_API_KEY
      headers:
        X-Api-Key: "{secret}"
        anthropic-version: "2023-06-01"`),
    );
    expect(u.credential).toEqual({
      scheme: 'headers',
      headers: [
        { name: 'x-api-key', value: [{ secret: 'ANTHROPIC_API_KEY' }] },
        { name: 'anthropic-version', value: ['2023-06-01'] },
      ],
    });
    expect(secretNames(u.credential)).toEqual(['ANTHROPIC_API_KEY']);
  });

  it('several secrets: each {secret:NAME} is listed once, in order of first use', () => {
    const u = load(
      upstreamYaml(`
      scheme: headers
      headers:
        dd-api-key: "{secret:DD_API_KEY}"
        dd-application-key: "{secret:DD_APP_KEY}"
        x-both: "{secret:DD_APP_KEY}/{secret:DD_API_KEY}"`),
    );
    expect(secretNames(u.credential)).toEqual(['DD_API_KEY', 'DD_APP_KEY']);
  });

  it('the older schemes keep their shape, and list their one secret', () => {
    expect(load(upstreamYaml('{ scheme: bearer, secret: K }')).credential).toEqual({ scheme: 'bearer', secret: 'K' });
    const header = load(upstreamYaml('{ scheme: header, header: X-Key, prefix: "Key ", secret: K }')).credential;
    expect(header).toEqual({ scheme: 'header', header: 'x-key', prefix: 'Key ', secret: 'K' });
    expect(secretNames(header)).toEqual(['K']);
    expect(secretNames(load(upstreamYaml('{ scheme: query, param: key, secret: Q }')).credential)).toEqual(['Q']);
  });

  it('parseTemplate: literal text, {secret}, {secret:NAME}, and the errors', () => {
    expect(parseTemplate('Bearer {secret}!', 'S')).toEqual({ template: ['Bearer ', { secret: 'S' }, '!'] });
    expect(parseTemplate('{secret:A}:{secret:B}', undefined)).toEqual({ template: [{ secret: 'A' }, ':', { secret: 'B' }] });
    expect(parseTemplate('plain', undefined)).toEqual({ template: ['plain'] });
    expect(parseTemplate('{secret}', undefined)).toMatchObject({ error: expect.stringContaining('"secret"') });
    expect(parseTemplate('{secret:1BAD}', 'S')).toMatchObject({ error: expect.stringContaining('unknown placeholder') });
    expect(parseTemplate('{token}', 'S')).toMatchObject({ error: expect.stringContaining('unknown placeholder "{token}"') });
    expect(parseTemplate('a{secret', 'S')).toMatchObject({ error: expect.stringContaining('without "}"') });
    expect(parseTemplate('a}b', 'S')).toMatchObject({ error: expect.stringContaining('without "{"') });
  });
});

describe('scrub_responses', () => {
  it('is on by default and can be turned off per upstream', () => {
    expect(load(upstreamYaml('{ scheme: bearer, secret: K }')).scrubResponses).toBe(true);
    expect(load(upstreamYaml('{ scheme: bearer, secret: K }', '    scrub_responses: false\n')).scrubResponses).toBe(false);
  });

  it('must be a boolean', () => {
    const [p, ...rest] = problems(upstreamYaml('{ scheme: bearer, secret: K }', '    scrub_responses: sometimes\n'));
    expect(rest).toEqual([]);
    expect(p).toMatchObject({ line: 5, path: 'upstreams[0].scrub_responses', message: 'must be boolean' });
  });
});

describe('mistakes are reported with file, line and column', () => {
  const cases: [string, string, Partial<ConfigProblem>][] = [
    ['a typo in a placeholder', '{ scheme: header, header: authorization, value: "token {secert}", secret: K }', { line: 4, path: 'upstreams[0].credential.value', message: 'unknown placeholder "{secert}"; write {secret} or {secret:NAME}' }],
    ['an unbalanced brace', '{ scheme: headers, headers: { x-k: "{secret:K" } }', { line: 4, path: 'upstreams[0].credential.headers.x-k' }],
    ['{secret} without "secret"', '{ scheme: headers, headers: { x-k: "{secret}" } }', { line: 4, path: 'upstreams[0].credential.headers.x-k' }],
    ['a "secret" nothing uses', '{ scheme: headers, secret: K, headers: { x-k: "{secret:OTHER}" } }', { line: 4, path: 'upstreams[0].credential.secret', message: '"K" is not used: write {secret} in a value' }],
    ['no secret at all', '{ scheme: headers, headers: { x-version: "1" } }', { line: 4, path: 'upstreams[0].credential', message: 'no header uses a secret: add {secret} or {secret:NAME} to a value' }],
    ['the same header twice, in two cases', '{ scheme: headers, secret: K, headers: { X-K: "{secret}", x-k: "{secret}" } }', { line: 4, path: 'upstreams[0].credential.headers.x-k', message: 'header "x-k" is given twice (header names ignore case)' }],
    ['a header Valet sets itself', '{ scheme: headers, secret: K, headers: { x-k: "{secret}", Content-Length: "1" } }', { line: 4, path: 'upstreams[0].credential.headers.Content-Length' }],
    ['a header scheme on Host', '{ scheme: header, header: host, secret: K }', { line: 4, path: 'upstreams[0].credential.header' }],
    ['both prefix and value', '{ scheme: header, header: x-k, prefix: "a ", value: "b {secret}", secret: K }', { line: 4, path: 'upstreams[0].credential.prefix', message: 'give "prefix" or "value", not both' }],
    ['headers under another scheme', '{ scheme: bearer, secret: K, headers: { x-k: "{secret}" } }', { line: 4, path: 'upstreams[0].credential.headers', message: 'not used by scheme "bearer"' }],
    ['value under the bearer scheme', '{ scheme: bearer, secret: K, value: "x {secret}" }', { line: 4, path: 'upstreams[0].credential.value', message: 'not used by scheme "bearer"' }],
    ['bearer without its secret', '{ scheme: bearer }', { line: 4, path: 'upstreams[0].credential', message: 'missing required key "secret"' }],
    ['headers without headers', '{ scheme: headers, secret: K }', { line: 4, path: 'upstreams[0].credential' }],
    ['an empty headers map', '{ scheme: headers, headers: {} }', { line: 4, path: 'upstreams[0].credential.headers' }],
    ['an invalid header name', '{ scheme: headers, headers: { "bad name": "{secret:K}" } }', { line: 4, path: 'upstreams[0].credential.headers.bad name', message: '"bad name" is not a valid name here' }],
    ['CR LF in a value', '{ scheme: headers, headers: { x-k: "{secret:K}\\r\\nx-evil: 1" } }', { line: 4, path: 'upstreams[0].credential.headers.x-k' }],
    ['NUL in a value', '{ scheme: header, header: x-k, value: "{secret}\\0", secret: K }', { line: 4, path: 'upstreams[0].credential.value' }],
  ];
  it.each(cases)('%s', (_name, credential, expected) => {
    const list = problems(upstreamYaml(credential));
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject(expected);
    expect(list[0]!.column).toBeGreaterThan(0);
  });
});

describe('the shipped example', () => {
  it('anthropic sends x-api-key from its secret; anthropic-version only when the SDK sent none', () => {
    const anthropic = loadConfig('policies').upstreams.get('anthropic') as UpstreamConfig;
    expect(anthropic.credential).toEqual({ scheme: 'header', header: 'x-api-key', prefix: '', secret: 'ANTHROPIC_API_KEY' });
    expect(anthropic.defaultHeaders).toEqual([['anthropic-version', '2023-06-01']]);
    const sent = forwardableRequestHeaders(['x-api-key', 'agent-token', 'anthropic-version', '2026-10-21'], anthropic, 'agent-token');
    expect(sent).toEqual([['anthropic-version', '2026-10-21']]);
    expect(forwardableRequestHeaders(['x-api-key', 'agent-token'], anthropic, 'agent-token')).toEqual([['anthropic-version', '2023-06-01']]);
    expect(anthropic.scrubResponses).toBe(true);
  });
});
