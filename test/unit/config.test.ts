import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import type { UpstreamConfig } from '../../gateway/config/types.js';
import { ConfigError, type ConfigProblem } from '../../gateway/errors.js';

const EXAMPLE_DIR = fileURLToPath(new URL('../../policies/', import.meta.url));

/** A valid gateway + issuer file; tests add the files under test next to it. */
const GATEWAY_YAML = `gateway:
  listen: { host: 127.0.0.1, port: 0 }
issuers:
  - name: dev
    issuer: valet-dev
    audience: valet
    algorithms: [HS256]
    secret: { env: VALET_DEV_SIGNING_KEY }
`;

const UPSTREAMS_YAML = `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
`;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Writes `files` (relative name → YAML text) into a fresh temporary directory. */
function configDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'valet-config-test-'));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

/** Loads `dir`, expecting a ConfigError, and returns its problems. */
function problemsOf(dir: string): readonly ConfigProblem[] {
  try {
    loadConfig(dir);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const e = err as ConfigError;
    expect(e.code).toBe('VALET_ERR_CONFIG');
    for (const p of e.problems) {
      // every problem is located in a real file with a 1-based line and column
      expect(p.line, JSON.stringify(p)).toBeGreaterThan(0);
      expect(p.column, JSON.stringify(p)).toBeGreaterThan(0);
      // and the message names it as file:line:column
      expect(e.message).toContain(`${p.file}:${p.line}:${p.column}: `);
    }
    return e.problems;
  }
  throw new Error(`expected loadConfig(${dir}) to throw ConfigError`);
}

/** The absolute path a problem's `file` refers to. */
const fileOf = (p: ConfigProblem): string => resolve(process.cwd(), p.file);

describe('loadConfig: the shipped example', () => {
  it('loads policies/ without problems', () => {
    const config = loadConfig(EXAMPLE_DIR);
    expect([...config.upstreams.keys()].sort()).toEqual(['anthropic', 'echo', 'github', 'openai', 'postmark', 'stripe']);
    expect(config.issuers.map((i) => i.name)).toEqual(['local-dev']);
    expect(config.rules.map((r) => r.id)).toContain('echo-no-admin');
    expect(config.version).toMatch(/^sha256:[0-9a-f]{16}$/);
    const anthropic = config.upstreams.get('anthropic') as UpstreamConfig;
    expect(anthropic.agentTokenHeader).toBe('x-api-key');
    expect(anthropic.credential).toMatchObject({ scheme: 'header', header: 'x-api-key' });
    // The API version is a default: the SDK's own is kept.
    expect(anthropic.defaultHeaders).toEqual([['anthropic-version', '2023-06-01']]);
    expect(anthropic.dialect).toBe('anthropic');
    // every rule records where it is written
    for (const r of config.rules) expect(`${r.at.file}:${r.at.line}`).toMatch(/^policies\/.+\.yaml:\d+$/);
  });

  it('is deeply frozen: every mutation throws', () => {
    const config = loadConfig(EXAMPLE_DIR);
    const c = config as unknown as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(() => {
      c['dir'] = '/elsewhere';
    }).toThrow(TypeError);
    expect(() => {
      c['gateway'].listen.port = 1;
    }).toThrow(TypeError);
    expect(() => {
      c['gateway'].environment = 'production';
    }).toThrow(TypeError);
    expect(() => c['rules'].push({ id: 'x', effect: 'allow' })).toThrow(TypeError);
    expect(() => {
      c['rules'][0].effect = 'deny';
    }).toThrow(TypeError);
    expect(() => c['issuers'][0].audience.push('other')).toThrow(TypeError);
    expect(() => {
      c['issuers'][0].key.env = 'OTHER';
    }).toThrow(TypeError);
    const upstreams = c['upstreams'] as Map<string, UpstreamConfig>;
    expect(() => upstreams.set('evil', upstreams.get('echo') as UpstreamConfig)).toThrow(TypeError);
    expect(() => upstreams.delete('echo')).toThrow(TypeError);
    expect(() => upstreams.clear()).toThrow(TypeError);
    const echo = upstreams.get('echo') as unknown as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(() => {
      echo['origin'] = 'http://evil.example';
    }).toThrow(TypeError);
    expect(() => {
      echo['credential'].secret = 'OTHER';
    }).toThrow(TypeError);
    expect(() => {
      echo['timeouts'].connectMs = 1;
    }).toThrow(TypeError);
    expect(config.upstreams.size).toBe(6);
    expect(config.upstreams.get('echo')?.origin).toBe('http://127.0.0.1:9999');
  });

  it('a minimal valid directory gets the documented defaults', () => {
    const config = loadConfig(configDir({ 'gateway.yaml': GATEWAY_YAML, 'upstreams.yaml': UPSTREAMS_YAML }));
    expect(config.gateway).toEqual({ environment: 'development', listen: { host: '127.0.0.1', port: 0 }, shutdownGraceMs: 10_000, maxRetryAfterS: 60, maxHeaderBytes: 16_384, maxBodyBytes: 1_048_576, timezone: 'UTC', listener: { headersTimeoutMs: 10_000, bodyIdleTimeoutMs: 30_000, bodyTimeoutMs: 300_000, maxStreamBodyBytes: 67_108_864, maxConnections: 10_000, maxConnectionsPerClient: 256 }, secrets: { sources: [{ kind: 'store' }, { kind: 'env' }], backend: 'sqlite', postgres: { url: undefined } }, admin: { listen: { host: '127.0.0.1', port: 8081 }, audience: 'valet-admin' }, approvals: { backend: 'sqlite', postgres: { url: undefined }, maxPendingPerAgent: 20, maxPendingPerTenant: 200, links: { enabled: true, baseUrl: undefined }, channels: [] }, policy: { requireRegisteredAgents: false, sessions: { header: undefined, ttlMs: 86_400_000 } }, llm: { prices: {}, unknownModel: 'ceiling', approval: undefined, overrun: 'charge', defaultMaxOutput: undefined, opaqueBatchCost: undefined, maxBodyBytes: 33_554_432 }, counters: { backend: 'sqlite', failOpen: false, redis: { url: undefined, prefix: 'valet:' } }, audit: { failOpen: false, backend: 'sqlite', postgres: { url: undefined, schema: undefined, instance: undefined }, writer: 'auto', durability: 'strict', busyTimeoutMs: 1000, retentionDays: undefined, tenantRetentionDays: {}, anchor: { intervalMs: 60_000, command: undefined, url: undefined } } });
    expect(config.upstreams.get('api')).toMatchObject({ agentTokenHeader: 'authorization', agentTokenQuery: undefined, connections: 64 });
    expect(config.rules).toEqual([]);
    expect(config.issuers[0]).toMatchObject({ clockSkewS: 30, maxTtlS: 3600 });
  });

  it('an issuer\'s max_ttl, and one out of range', () => {
    const withTtl = (ttl: string): string => `${GATEWAY_YAML}    max_ttl: ${ttl}\n`;
    expect(loadConfig(configDir({ 'gateway.yaml': withTtl('24h'), 'upstreams.yaml': UPSTREAMS_YAML })).issuers[0]?.maxTtlS).toBe(86_400);
    for (const bad of ['8d', '1500ms']) {
      const problems = problemsOf(configDir({ 'gateway.yaml': withTtl(bad), 'upstreams.yaml': UPSTREAMS_YAML }));
      expect(problems).toMatchObject([{ path: 'issuers[0].max_ttl', message: expect.stringMatching(/1s to 7d/) }]);
    }
  });

  it('listener deadlines, the streamed-body limit and connection caps are read once, as milliseconds and counts', () => {
    const gateway = GATEWAY_YAML.replace(
      'gateway:\n',
      'gateway:\n  timeouts: { headers: 5s, body_idle: 250ms, body: 2m }\n  max_stream_body_bytes: 2097152\n  max_connections: 100\n  max_connections_per_client: 7\n',
    );
    const config = loadConfig(configDir({ 'gateway.yaml': gateway, 'upstreams.yaml': UPSTREAMS_YAML }));
    expect(config.gateway.listener).toEqual({ headersTimeoutMs: 5_000, bodyIdleTimeoutMs: 250, bodyTimeoutMs: 120_000, maxStreamBodyBytes: 2_097_152, maxConnections: 100, maxConnectionsPerClient: 7 });
  });

  it('refuses listener settings that cannot work: a deadline past 24h, a streamed-body limit below max_body_bytes, a zero cap', () => {
    const gateway = GATEWAY_YAML.replace('gateway:\n', 'gateway:\n  timeouts: { body: 30d }\n  max_body_bytes: 65536\n  max_stream_body_bytes: 4096\n');
    expect(problemsOf(configDir({ 'gateway.yaml': gateway, 'upstreams.yaml': UPSTREAMS_YAML })).map((p) => [p.path, p.message])).toEqual([
      ['gateway.timeouts.body', 'must be at most 24h'],
      ['gateway.max_stream_body_bytes', 'max_stream_body_bytes (4096) must be at least max_body_bytes (65536)'],
    ]);
    const zero = GATEWAY_YAML.replace('gateway:\n', 'gateway:\n  max_connections_per_client: 0\n  timeouts: { headers: 0s }\n');
    expect(problemsOf(configDir({ 'gateway.yaml': zero, 'upstreams.yaml': UPSTREAMS_YAML })).map((p) => p.path).sort()).toEqual(['gateway.max_connections_per_client', 'gateway.timeouts.headers']);
  });
});

describe('loadConfig: problems carry file, line, column and key path', () => {
  it('an unknown key', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
    retries: 3
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    const p = problems[0]!;
    expect(fileOf(p)).toBe(join(dir, 'upstreams.yaml'));
    expect(p).toMatchObject({ line: 5, column: 5, path: 'upstreams[0].retries', message: 'unknown key' });
  });

  it('an unknown key nested in a flow mapping', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY, token: x }
`,
    });
    const [p, ...rest] = problemsOf(dir);
    expect(rest).toEqual([]);
    expect(p).toMatchObject({ line: 4, column: 52, path: 'upstreams[0].credential.token', message: 'unknown key' });
  });

  it('a wrong type', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
    connections: many
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'upstreams.yaml'));
    expect(problems[0]).toMatchObject({ line: 5, column: 18, path: 'upstreams[0].connections' });
    expect(problems[0]!.message).toMatch(/integer/);
  });

  it('a wrong type in the gateway section', () => {
    const dir = configDir({ 'gateway.yaml': GATEWAY_YAML.replace('port: 0', 'port: "eighty"'), 'upstreams.yaml': UPSTREAMS_YAML });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'gateway.yaml'));
    expect(problems[0]).toMatchObject({ line: 2, path: 'gateway.listen.port' });
    expect(problems[0]!.column).toBe(GATEWAY_YAML.split('\n')[1]!.indexOf('port') + 7);
  });

  it('a missing required key', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': `upstreams:
  - name: api
    credential: { scheme: bearer, secret: API_KEY }
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'upstreams.yaml'));
    expect(problems[0]).toMatchObject({ line: 2, column: 5, path: 'upstreams[0]' });
    expect(problems[0]!.message).toContain('"origin"');
  });

  it('a duplicate upstream name across two files is reported in the second file', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'a-upstreams.yaml': UPSTREAMS_YAML,
      'b-more.yaml': `# more upstreams
upstreams:
  - name: other
    origin: http://127.0.0.1:10
    credential: { scheme: bearer, secret: OTHER_KEY }
  - name: api
    origin: http://127.0.0.1:11
    credential: { scheme: bearer, secret: API_KEY_2 }
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'b-more.yaml'));
    expect(problems[0]).toMatchObject({ line: 6, column: 11, path: 'upstreams[1].name' });
    expect(problems[0]!.message).toContain('"api"');
  });

  it('a rule naming an unknown upstream', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': UPSTREAMS_YAML,
      'rules.yaml': `rules:
  - id: ok
    upstream: api
    effect: allow
  - id: typo
    upstream: apj
    effect: allow
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'rules.yaml'));
    expect(problems[0]).toMatchObject({ line: 6, column: 15, path: 'rules[1].upstream' });
    expect(problems[0]!.message).toContain('"apj"');
  });

  it('an HS256 issuer with a public_key_file (algorithm confusion)', () => {
    const dir = configDir({
      'gateway.yaml': `issuers:
  - name: corp
    issuer: https://login.example.com/
    audience: valet
    algorithms: [RS256, HS256]
    public_key_file: corp.pem
`,
      'upstreams.yaml': UPSTREAMS_YAML,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'gateway.yaml'));
    expect(problems[0]).toMatchObject({ line: 5, column: 17, path: 'issuers[0].algorithms' });
    expect(problems[0]!.message).toMatch(/HS/);
  });

  it('a "**" in the middle of a path pattern', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': UPSTREAMS_YAML,
      'rules.yaml': `rules:
  - id: r
    upstream: api
    paths:
      - /v1/ok/**
      - /v1/**/admin
    effect: deny
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'rules.yaml'));
    expect(problems[0]).toMatchObject({ line: 6, column: 9, path: 'rules[0].paths[1]' });
    expect(problems[0]!.message).toContain('**');
  });

  it('a YAML syntax error', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': UPSTREAMS_YAML,
      'rules.yaml': `rules:
  - id: r
    upstream: api
    paths: [/a, /b
    effect: allow
`,
    });
    const problems = problemsOf(dir);
    expect(problems.length).toBeGreaterThanOrEqual(1);
    for (const p of problems) expect(fileOf(p)).toBe(join(dir, 'rules.yaml'));
    expect(problems[0]!.line).toBeGreaterThanOrEqual(4);
    expect(problems[0]!.line).toBeLessThanOrEqual(6);
  });

  it('a tab-indented YAML file', () => {
    const dir = configDir({ 'gateway.yaml': GATEWAY_YAML, 'upstreams.yaml': 'upstreams:\n\t- name: api\n' });
    const problems = problemsOf(dir);
    expect(problems.length).toBeGreaterThanOrEqual(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'upstreams.yaml'));
    expect(problems[0]!.line).toBe(2);
  });

  it('a duplicate YAML key', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': UPSTREAMS_YAML,
      'rules.yaml': `rules:
  - id: first
    upstream: api
    effect: allow
    effect: deny
`,
    });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'rules.yaml'));
    expect(problems[0]!.line).toBe(5);
    expect(problems[0]!.message).toMatch(/unique|duplicate/i);
  });

  it('a duplicate top-level section key', () => {
    const dir = configDir({ 'gateway.yaml': GATEWAY_YAML, 'upstreams.yaml': `${UPSTREAMS_YAML}upstreams: []\n` });
    const problems = problemsOf(dir);
    expect(problems).toHaveLength(1);
    expect(fileOf(problems[0]!)).toBe(join(dir, 'upstreams.yaml'));
    expect(problems[0]!.line).toBe(5);
  });
});

describe('loadConfig: every problem is reported at once', () => {
  it('per-file problems in several files (unknown key, wrong type, missing key, YAML error)', () => {
    const dir = configDir({
      'a.yaml': GATEWAY_YAML.replace('algorithms: [HS256]', 'algorithms: [HS256]\n    colour: blue'),
      'b.yaml': `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
    connections: lots
  - name: other
    credential: { scheme: bearer, secret: OTHER_KEY }
`,
      'c.yaml': 'rules: [\n',
    });
    const problems = problemsOf(dir);
    const where = problems.map((p) => `${fileOf(p).slice(dir.length + 1)}:${p.line}:${p.path}`);
    expect(where).toEqual(
      expect.arrayContaining(['a.yaml:8:issuers[0].colour', 'b.yaml:5:upstreams[0].connections', 'b.yaml:6:upstreams[1]']),
    );
    expect(problems.some((p) => fileOf(p) === join(dir, 'c.yaml'))).toBe(true);
  });

  it('cross-file problems (duplicate upstream, unknown upstream, "**" in the middle, HS256 with a public key, duplicate rule id)', () => {
    const dir = configDir({
      'gateway.yaml': `issuers:
  - name: dev
    issuer: valet-dev
    audience: valet
    algorithms: [HS256]
    secret: { env: VALET_DEV_SIGNING_KEY }
  - name: corp
    issuer: corp
    audience: valet
    algorithms: [HS256]
    public_key_file: corp.pem
`,
      'upstreams/one.yaml': UPSTREAMS_YAML,
      'upstreams/two.yaml': UPSTREAMS_YAML,
      'rules.yaml': `rules:
  - id: a
    upstream: nope
    effect: allow
  - id: b
    paths: [/x/**/y]
    effect: deny
  - id: a
    effect: deny
`,
    });
    const problems = problemsOf(dir);
    const where = problems.map((p) => `${fileOf(p).slice(dir.length + 1)}:${p.line}:${p.path}`);
    expect(where).toEqual(
      expect.arrayContaining([
        'gateway.yaml:10:issuers[1].algorithms',
        `${join('upstreams', 'two.yaml')}:2:upstreams[0].name`,
        'rules.yaml:3:rules[0].upstream',
        'rules.yaml:6:rules[1].paths[0]',
        'rules.yaml:8:rules[2].id',
      ]),
    );
    expect(problems).toHaveLength(5);
  });

  it('ConfigError.message lists one line per problem', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
    bogus: 1
    also_bogus: 2
`,
    });
    try {
      loadConfig(dir);
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.problems).toHaveLength(2);
      expect(e.message.split('\n')).toHaveLength(2);
      expect(e.message).toMatch(/upstreams\.yaml:5:5: upstreams\[0\]\.bogus: unknown key/);
      expect(e.message).toMatch(/upstreams\.yaml:6:5: upstreams\[0\]\.also_bogus: unknown key/);
    }
  });
});

describe('loadConfig: directories', () => {
  it('a missing directory is a ConfigError, not a crash', () => {
    expect(() => loadConfig(join(tmpdir(), 'valet-does-not-exist-' + process.pid))).toThrow(ConfigError);
  });

  it('a directory with no YAML files is a ConfigError', () => {
    expect(() => loadConfig(configDir({ 'README.md': '# nothing' }))).toThrow(ConfigError);
  });
});

describe('loadConfig: allow_steering_headers and forward_headers', () => {
  const upstreams = (extra: string): string => `upstreams:
  - name: api
    origin: http://127.0.0.1:9
    agent_token: { header: x-agent-key }
    credential: { scheme: header, header: X-Echo-Key, secret: API_KEY }
${extra}`;

  it('loads both lists lower-cased', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': upstreams('    allow_steering_headers: [X-HTTP-Method-Override, x-forwarded-proto]\n    forward_headers: [Content-Type, accept, x-http-method-override]\n'),
    });
    const api = loadConfig(dir).upstreams.get('api') as UpstreamConfig;
    expect(api.allowSteeringHeaders).toEqual(['x-http-method-override', 'x-forwarded-proto']);
    expect(api.forwardHeaders).toEqual(['content-type', 'accept', 'x-http-method-override']);
  });

  it('defaults: nothing allowed back, no strict list', () => {
    const api = loadConfig(configDir({ 'gateway.yaml': GATEWAY_YAML, 'upstreams.yaml': upstreams('') })).upstreams.get('api') as UpstreamConfig;
    expect(api.allowSteeringHeaders).toEqual([]);
    expect(api.forwardHeaders).toBeUndefined();
  });

  it('refuses to opt in credential, hop-by-hop, Valet-owned and ordinary headers, each located', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': upstreams('    allow_steering_headers: [Authorization, x-api-key, X-Echo-Key, x-agent-key, Cookie, connection, host, valet-approval, accept, x-original-url]\n'),
    });
    const problems = problemsOf(dir);
    const at = (i: number): ConfigProblem | undefined => problems.find((p) => p.path === `upstreams[0].allow_steering_headers[${i}]`);
    for (const i of [0, 1, 2, 3, 4]) expect(at(i)?.message, String(i)).toMatch(/carries a credential/);
    expect(at(5)?.message).toMatch(/describes one hop/);
    expect(at(6)?.message).toMatch(/set or stripped by Valet/);
    expect(at(7)?.message).toMatch(/set or stripped by Valet/);
    expect(at(8)?.message).toMatch(/not a request-steering header/);
    expect(at(9)).toBeUndefined();
    expect(problems).toHaveLength(9);
  });

  it('refuses forward_headers names Valet would strip anyway, and duplicates differing in case', () => {
    const dir = configDir({
      'gateway.yaml': GATEWAY_YAML,
      'upstreams.yaml': upstreams('    forward_headers: [accept, authorization, x-echo-key, te, x-original-url, accept-encoding, Accept]\n'),
    });
    const problems = problemsOf(dir);
    const messages = problems.map((p) => `${p.path}: ${p.message}`).join('\n');
    expect(messages).toMatch(/forward_headers\[1\]: cannot forward "authorization": it carries a credential/);
    expect(messages).toMatch(/forward_headers\[2\]: cannot forward "x-echo-key": it carries a credential/);
    expect(messages).toMatch(/forward_headers\[3\]: cannot forward "te": it describes one hop/);
    expect(messages).toMatch(/forward_headers\[4\]: cannot forward "x-original-url": it is a request-steering header: list it in allow_steering_headers too/);
    expect(messages).toMatch(/forward_headers\[5\]: cannot forward "accept-encoding": it is dropped while scrub_responses is on/);
    expect(messages).toMatch(/forward_headers\[6\]: "accept" is given twice/);
    expect(problems).toHaveLength(6);
  });

  it('refuses a name that is not a header name', () => {
    const dir = configDir({ 'gateway.yaml': GATEWAY_YAML, 'upstreams.yaml': upstreams('    forward_headers: [accept, "bad header"]\n') });
    expect(problemsOf(dir)).toMatchObject([{ path: 'upstreams[0].forward_headers[1]' }]);
  });

});
