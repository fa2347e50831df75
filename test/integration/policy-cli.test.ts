import { execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError } from '../../gateway/errors.js';
import { startGateway } from '../../gateway/main.js';
import { listeningPort, runCli, spawnCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, devIssuer, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { send, STRIPE_SECRET, STRIPE_TOOLS_YAML, stripeUpstream } from './policy-support.js';

/** An allow that holds only on a production gateway, and one that reads a context data file. */
const RULES = `rules:
  - id: prod-balance
    upstream: stripe
    methods: [GET]
    paths: [/v1/balance]
    environments: [production]
    effect: allow
  - id: own-customer
    upstream: stripe
    tools: [stripe.get_customer]
    when: has(ctx.customer_owner) && ctx.customer_owner == agent.id
    effect: allow
`;

const contexts = (file: string): string => `contexts:
  - name: customer_owner
    key: args.customer_id
    tools: [stripe.get_customer]
    file: ${file}
`;

const TESTS = `tests:
  - name: balance is readable
    identity: { agent: ops-bot }
    request: { upstream: stripe, method: GET, path: /v1/balance }
    expect: { effect: allow, rule: prod-balance }
`;

/** A directory the policy tools and a gateway both read; `environment: development` in the file. */
function writeConfig(dir: string, origin: string): void {
  mkdirSync(join(dir, 'data'), { recursive: true });
  writeFileSync(
    join(dir, 'gateway.yaml'),
    stringify({ gateway: { environment: 'development', listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } } }, issuers: [devIssuer] }),
  );
  writeFileSync(join(dir, 'upstreams.yaml'), stringify({ upstreams: [stripeUpstream(origin)] }));
  writeFileSync(join(dir, 'tools.yaml'), `${STRIPE_TOOLS_YAML}${contexts('data/owners.json')}`);
  writeFileSync(join(dir, 'rules.yaml'), RULES);
  writeFileSync(join(dir, 'tests.yaml'), TESTS);
  writeFileSync(join(dir, 'data', 'owners.json'), JSON.stringify({ cus_1: 'alice' }));
}

const explain = (dir: string, extra: string[], env: Record<string, string> = {}): ReturnType<typeof runCli> =>
  runCli(['policy', 'explain', '--config', dir, '--agent', 'ops-bot', '--upstream', 'stripe', '--path', '/v1/balance', ...extra], { env });

describe('policy tools run under the environment the gateway would (VALET_ENV, --env)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'valet-policy-cli-'));
    writeConfig(dir, 'http://127.0.0.1:9');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('policy test: the production-only allow passes under VALET_ENV=production and fails under development', async () => {
    const prod = await runCli(['policy', 'test', dir], { env: { VALET_ENV: 'production' } });
    expect(prod.stdout).toContain('ok   balance is readable');
    expect(prod.code).toBe(0);
    const dev = await runCli(['policy', 'test', dir], { env: { VALET_ENV: 'development' } });
    expect(dev.stdout).toContain('FAIL balance is readable');
    expect(dev.code).toBe(1);
    // --env wins over VALET_ENV, as on `valet start`.
    const flag = await runCli(['policy', 'test', dir, '--env', 'production'], { env: { VALET_ENV: 'development' } });
    expect(flag.code).toBe(0);
    // Nothing set: gateway.environment (development) decides.
    expect((await runCli(['policy', 'test', dir])).code).toBe(1);
  });

  it('policy explain: allow under VALET_ENV=production, deny under development; --gateway-env overrides', async () => {
    const prod = await explain(dir, [], { VALET_ENV: 'production' });
    expect(prod.code).toBe(0);
    expect(prod.stdout).toMatch(/decision: allow by prod-balance: .* \(environment production\)/);
    const dev = await explain(dir, [], { VALET_ENV: 'development' });
    expect(dev.stdout).toMatch(/decision: deny by default-deny: .* \(environment development\)/);
    const flag = await explain(dir, ['--gateway-env', 'production', '--format', 'json'], { VALET_ENV: 'development' });
    expect(JSON.parse(flag.stdout)).toMatchObject({ environment: 'production', outcome: { effect: 'allow', rule: 'prod-balance' } });
  });

  it('a bad VALET_ENV is a usage error for the policy tools too', async () => {
    const r = await runCli(['policy', 'test', dir], { env: { VALET_ENV: 'prod' } });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('VALET_ENV must be development, staging or production');
  });
});

describe('context data files are part of the policy', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'valet-policy-data-'));
    writeConfig(dir, 'http://127.0.0.1:9');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const versionOf = async (): Promise<string> => {
    const r = await runCli(['policy', 'check', dir]);
    expect(r.code).toBe(0);
    return /version (sha256:[0-9a-f]{16})/.exec(r.stdout)?.[1] ?? '';
  };

  it('a change to a data file changes the version policy check prints', async () => {
    const before = await versionOf();
    writeFileSync(join(dir, 'data', 'owners.json'), JSON.stringify({ cus_1: 'bob' }));
    const after = await versionOf();
    expect(after).toMatch(/^sha256:/);
    expect(after).not.toBe(before);
  });

  it('a data file that does not parse, is missing, or is not a map fails policy check with its location', async () => {
    writeFileSync(join(dir, 'data', 'owners.json'), '{"cus_1": "alice",');
    const broken = await runCli(['policy', 'check', dir]);
    expect(broken.code).toBe(1);
    expect(broken.stderr).toMatch(/tools\.yaml:\d+:\d+: contexts\[0\]\.file: data\/owners\.json does not parse/);
    writeFileSync(join(dir, 'data', 'owners.json'), '["alice"]');
    expect((await runCli(['policy', 'check', dir])).stderr).toContain('data/owners.json must be a map of key to value');
    rmSync(join(dir, 'data', 'owners.json'));
    expect((await runCli(['policy', 'check', dir])).stderr).toContain('cannot read data/owners.json (ENOENT)');
  });

  it('a data file that does not parse fails start (before any socket is opened)', async () => {
    writeFileSync(join(dir, 'data', 'owners.json'), 'cus_1: [');
    await expect(startGateway({ configDir: dir, dataDir: join(dir, 'state'), env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY } })).rejects.toBeInstanceOf(ConfigError);
  });
});

describe('a running gateway decides with the data file in force', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  const owners = (): string => join(gw.configDir, 'owners.json');
  const customer = async (): Promise<number> => (await send(gw, upstream, '/stripe/v1/customers/cus_1', { token })).status;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [stripeUpstream(upstream.origin)],
      rules: [],
      env: { STRIPE_KEY: STRIPE_SECRET },
      files: { 'tools.yaml': `${STRIPE_TOOLS_YAML}${contexts('owners.json')}`, 'rules.yaml': RULES, 'owners.json': JSON.stringify({ cus_1: 'alice' }) },
    });
    token = await gw.token({ agent: 'bob' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('reload(): a new owner in the data file changes the decision and the policy version', async () => {
    expect(await customer()).toBe(403);
    const before = gw.gateway.policies.status().version;
    writeFileSync(owners(), JSON.stringify({ cus_1: 'bob' }));
    expect(gw.gateway.policies.reload()).toMatchObject({ ok: true });
    expect(gw.gateway.policies.status().version).not.toBe(before);
    expect(await customer()).toBe(200);
  });

  it('a data file that no longer parses is refused: the previous policy stays in force', async () => {
    const before = gw.gateway.policies.status().version;
    writeFileSync(owners(), '{"cus_1": ');
    const r = gw.gateway.policies.reload();
    expect(r.ok).toBe(false);
    expect(gw.gateway.policies.status()).toMatchObject({ version: before, lastError: { message: expect.stringContaining('owners.json does not parse') } });
    expect(await customer()).toBe(200);
  });

  it('POST /api/policy/reload reloads data files; a tenant admin and a non-admin may not', async () => {
    writeFileSync(owners(), JSON.stringify({ cus_1: 'alice' }));
    const post = async (t: string): Promise<{ status: number; body: Record<string, unknown> }> => {
      const res = await request(`${gw.adminUrl}/api/policy/reload`, { method: 'POST', headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' }, body: '{}' });
      return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
    };
    expect((await post(await gw.adminToken(['auditor']))).status).toBe(403);
    expect((await post(await gw.adminToken(['admin'], { tenant: 'acme' }))).status).toBe(403);
    expect(await customer()).toBe(200);
    const ok = await post(await gw.adminToken(['admin']));
    expect(ok).toMatchObject({ status: 200, body: { reloaded: true, version: gw.gateway.policies.status().version } });
    expect(await customer()).toBe(403);
    writeFileSync(owners(), 'not: [valid');
    const refused = await post(await gw.adminToken(['admin']));
    expect(refused).toMatchObject({ status: 409, body: { reloaded: false, error: expect.stringContaining('owners.json') } });
  });
});

describe('valet policy check --strict', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'valet-policy-strict-'));
    writeConfig(dir, 'http://127.0.0.1:9');
    // Shadowed by the unconditional deny before it: a dead rule, so a warning.
    writeFileSync(
      join(dir, 'rules.yaml'),
      `${RULES}  - id: no-balance\n    upstream: stripe\n    paths: [/v1/balance]\n    effect: deny\n  - id: balance-again\n    upstream: stripe\n    paths: [/v1/balance]\n    effect: deny\n`,
    );
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('with warnings: a failure line, not "ok:", and exit 1; without --strict: ok and exit 0', async () => {
    const strict = await runCli(['policy', 'check', dir, '--strict']);
    expect(strict.stderr).toMatch(/^warning: /m);
    expect(strict.stdout).not.toMatch(/^ok:/m);
    expect(strict.stdout).toMatch(/^failed: \d+ warning\(s\) with --strict; /);
    expect(strict.code).toBe(1);
    const lax = await runCli(['policy', 'check', dir]);
    expect(lax.stdout).toMatch(/^ok: /);
    expect(lax.code).toBe(0);
  });
});


/** Rules both sets share: one already dead (shadowed by the deny before it). */
const DEAD_IN_BOTH = `  - { id: no-payouts, upstream: stripe, paths: [/v1/payouts], effect: deny }
  - { id: payouts, upstream: stripe, paths: [/v1/payouts], effect: allow }
`;
/** The base set: it also has a rule the change removes. */
const BASE_RULES = `${RULES}${DEAD_IN_BOTH}  - { id: charges, upstream: stripe, paths: [/v1/charges], effect: allow }
`;
/** The change: a deny that leaves own-customer dead, and no more charges rule. */
const CHANGED_RULES = `${RULES}${DEAD_IN_BOTH}  - { id: no-customers, upstream: stripe, tools: [stripe.get_customer], effect: deny }
`;

describe('valet policy check --against: rules a change leaves dead', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-policy-against-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** Only the newly dead rule is a warning; the one dead before and the removed one are info. */
  const expectChangeReport = (r: Awaited<ReturnType<typeof runCli>>, base: string, removedAt: RegExp): void => {
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings, r.stderr).toEqual([
      expect.stringMatching(new RegExp(`^warning: \\S*rules\\.yaml:\\d+: rule own-customer is newly dead in this change \\(it could match in ${base}\\): shadowed: deny rule no-customers`)),
    ]);
    expect(r.stderr).toMatch(new RegExp(`^info: \\S*rules\\.yaml:\\d+: rule payouts was already dead in ${base}: shadowed: deny rule no-payouts`, 'm'));
    expect(r.stderr).toMatch(removedAt);
    expect(r.stdout).toMatch(/^failed: 1 warning\(s\) with --strict; /);
    expect(r.code).toBe(1);
  };

  it('--against DIR: the newly dead rule warns (and fails --strict); already dead and removed rules are info', async () => {
    const base = join(root, 'base');
    const next = join(root, 'next');
    writeConfig(base, 'http://127.0.0.1:9');
    writeFileSync(join(base, 'rules.yaml'), BASE_RULES);
    writeConfig(next, 'http://127.0.0.1:9');
    writeFileSync(join(next, 'rules.yaml'), CHANGED_RULES);
    const r = await runCli(['policy', 'check', next, '--against', base, '--strict']);
    expectChangeReport(r, base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), /^info: \S*base\/rules\.yaml:\d+: rule charges was removed in this change \(it is in \S+, not in this set\)$/m);
    // Without --against every dead rule is a warning, as before.
    const alone = await runCli(['policy', 'check', next, '--strict']);
    expect(alone.stderr.split('\n').filter((l) => l.startsWith('warning: '))).toEqual([
      expect.stringMatching(/rule own-customer is shadowed: deny rule no-customers/),
      expect.stringMatching(/rule payouts is shadowed: deny rule no-payouts/),
    ]);
    // Against itself a set has nothing newly dead: --strict passes.
    const same = await runCli(['policy', 'check', next, '--against', next, '--strict']);
    expect(same.stderr).not.toMatch(/^warning: /m);
    expect(same.stdout).toMatch(/^ok: /);
    expect(same.code).toBe(0);
  }, 60_000);

  it('--against git:REF: the set as committed at REF, its files named as in the repository', async () => {
    const repo = join(root, 'repo');
    const dir = join(repo, 'policies');
    writeConfig(dir, 'http://127.0.0.1:9');
    writeFileSync(join(dir, 'rules.yaml'), BASE_RULES);
    const git = (...args: string[]): void => void execFileSync('git', ['-C', repo, '-c', 'user.email=t@example.com', '-c', 'user.name=t', ...args], { stdio: 'ignore' });
    git('init', '-q');
    git('add', '.');
    git('commit', '-qm', 'base');
    writeFileSync(join(dir, 'rules.yaml'), CHANGED_RULES);
    const r = await runCli(['policy', 'check', dir, '--against', 'git:HEAD', '--strict']);
    expectChangeReport(r, 'git:HEAD', /^info: \S*repo\/policies\/rules\.yaml:\d+: rule charges was removed in this change \(it is in git:HEAD, not in this set\)$/m);
    expect(r.stderr).not.toContain('valet-candidate-');
    // git:REF:PATH names the directory within the repository; a REF that does not exist fails.
    const path = await runCli(['policy', 'check', dir, '--against', 'git:HEAD:policies']);
    expect(path.stderr).toMatch(/^info: policies\/rules\.yaml:\d+: rule charges was removed in this change/m);
    expect(path.code).toBe(0);
    const missing = await runCli(['policy', 'check', dir, '--against', 'git:no-such-ref']);
    expect(missing.code).toBe(1);
  }, 60_000);
});


describe('valet start: SIGHUP reloads context data files', () => {
  let dir: string;
  let upstream: FakeUpstream;
  let child: ChildProcess | undefined;
  beforeAll(async () => {
    upstream = await startFakeUpstream();
    dir = mkdtempSync(join(tmpdir(), 'valet-policy-hup-'));
    writeConfig(join(dir, 'policies'), upstream.origin);
  });
  afterAll(async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child?.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a new owner written to the data file decides requests after SIGHUP', async () => {
    const env = { VALET_CONFIG: join(dir, 'policies'), VALET_DATA: join(dir, 'data'), VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, STRIPE_KEY: STRIPE_SECRET };
    const started = spawnCli(['start'], { env });
    child = started;
    const port = await listeningPort(started);
    const token = (await runCli(['token', '--agent', 'bob', '--issuer', 'test'], { env })).stdout.trim();
    const status = async (): Promise<number> => {
      const res = await request(`http://127.0.0.1:${port}/stripe/v1/customers/cus_1`, { headers: { authorization: `Bearer ${token}` } });
      await res.body.dump();
      return res.statusCode;
    };
    expect(await status()).toBe(403);
    writeFileSync(join(dir, 'policies', 'data', 'owners.json'), JSON.stringify({ cus_1: 'bob' }));
    started.kill('SIGHUP');
    await expect.poll(status, { timeout: 5_000, interval: 100 }).toBe(200);
    expect(started.exitCode).toBeNull();
  });
});

describe('policy explain: LLM reservations, usage budgets and rules in shadow mode', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'valet-policy-cli-llm-'));
    writeFileSync(join(dir, 'gateway.yaml'), stringify({ issuers: [devIssuer], upstreams: [{ name: 'openai', preset: 'openai', origin: 'http://127.0.0.1:9' }] }));
    writeFileSync(
      join(dir, 'rules.yaml'),
      stringify({
        rules: [
          { id: 'inference', upstream: 'openai', effect: 'allow' },
          { id: 'no-big-models', upstream: 'openai', methods: ['POST'], when: 'args.model == "gpt-4o"', effect: 'deny', mode: 'shadow', reason: 'small models only' },
        ],
        budgets: [
          { id: 'team-spend', upstream: 'openai', usage: 'cost', key: 'team', window: '1d', limit: 5 },
          { id: 'tiny-tokens', upstream: 'openai', usage: 'tokens', key: 'agent', window: '1h', limit: 100 },
        ],
      }),
    );
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('shows what the call reserves of each budget, a budget it can never fit, and the shadow decision', async () => {
    const body = JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a poem about the sea' }], max_tokens: 500 });
    const r = await runCli(['policy', 'explain', '--config', dir, '--agent', 'a1', '--team', 'red', '--upstream', 'openai', '--method', 'POST', '--path', '/v1/chat/completions', '--json', body]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/llm call: model gpt-4o \(priced as gpt-4o\), ~\d+ input tokens, up to 500 output; reserves \d+ tokens/);
    expect(r.stdout).toMatch(/LIMIT budget:cost +team-spend .* takes 0\.00\d+ of 5\.00 per 1d/);
    expect(r.stdout).toMatch(/LIMIT budget:tokens tiny-tokens .* takes \d+ tokens of 100 tokens per 1h/);
    expect(r.stdout).toMatch(/decision: rate_limited by tiny-tokens: this call may spend \d+ tokens, more than the whole budget tiny-tokens/);
    expect(r.stdout).toContain('shadow (not enforced): deny by no-big-models: small models only');
    const json = await runCli(['policy', 'explain', '--config', dir, '--agent', 'a1', '--upstream', 'openai', '--method', 'GET', '--path', '/v1/models', '--format', 'json']);
    const out = JSON.parse(json.stdout) as { llm: unknown; limits: { id: string; applies: boolean; why: string }[]; shadow: { effect: string } };
    expect(out.llm).toBeNull();
    expect(out.limits.map((l) => [l.id, l.applies, l.why])).toEqual([
      ['team-spend', false, 'not a metered LLM call'],
      ['tiny-tokens', false, 'not a metered LLM call'],
    ]);
    expect(out.shadow.effect).toBe('allow');
  });
});
