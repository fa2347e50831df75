import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { sleep } from '../helpers/http.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, send, type Sent, startStripeGateway } from './policy-support.js';

const INITIAL_RULES = [{ id: 'customers', upstream: 'stripe', methods: ['GET'], paths: ['/v1/customers/**'], effect: 'allow' }];

/** Adds reads of /v1/charges. */
const WITH_CHARGES = `rules:
  - id: customers
    upstream: stripe
    methods: [GET]
    paths: [/v1/customers/**]
    effect: allow
  - id: charges
    upstream: stripe
    methods: [GET]
    paths: [/v1/charges]
    effect: allow
`;

/** Would drop the charges rule, but its CEL does not compile (line 9). */
const BROKEN_CEL = `rules:
  - id: customers
    upstream: stripe
    methods: [GET]
    paths: [/v1/customers/**]
    effect: allow
  - id: big
    upstream: stripe
    when: args.amount <=
    effect: allow
`;

/** Would drop the charges rule, but has an unknown key (line 7). */
const UNKNOWN_KEY = `rules:
  - id: customers
    upstream: stripe
    methods: [GET]
    paths: [/v1/customers/**]
    effect: allow
    colour: red
`;

describe('hot reload', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let v1: string;
  let v2: string;

  const rulesFile = (): string => join(gw.configDir, 'rules.yaml');
  const charges = (): Promise<Sent> => send(gw, upstream, '/stripe/v1/charges', { token });

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, { rules: INITIAL_RULES });
    token = await gw.token({ agent: 'reloader' });
    v1 = gw.gateway.policies.status().version;
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('before: charges are denied under the initial policy, and audit rows carry its version', async () => {
    expect(v1).toBe(gw.gateway.config.version);
    expect(v1).toMatch(/^sha256:[0-9a-f]{16}$/);
    const r = await charges();
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expect(await audit(gw, r)).toMatchObject({ policy_version: v1, decision: 'deny' });
  });

  it('a new rules file + reload(): the new decision applies and audit rows record the new policy_version', async () => {
    writeFileSync(rulesFile(), WITH_CHARGES);
    const result = gw.gateway.policies.reload();
    expect(result.ok).toBe(true);
    v2 = (result as { version: string }).version;
    expect(v2).toMatch(/^sha256:[0-9a-f]{16}$/);
    expect(v2).not.toBe(v1);
    expect(gw.gateway.policies.status()).toMatchObject({ version: v2, lastError: undefined });

    const r = await charges();
    expectForwarded(r);
    expect(await audit(gw, r)).toMatchObject({ policy_version: v2, decision: 'allow', rule: 'charges' });
    expect(gw.logs.some((l) => l.includes('policy reloaded') && l.includes(v2))).toBe(true);
  });

  it('invalid CEL: reload refused with file:line, status().lastError set, the previous policy still decides', async () => {
    writeFileSync(rulesFile(), BROKEN_CEL);
    const result = gw.gateway.policies.reload();
    expect(result.ok).toBe(false);
    const error = (result as { error: string }).error;
    expect(error).toMatch(/rules\.yaml:9:\d+: rules\[1\]\.when: /);
    const status = gw.gateway.policies.status();
    expect(status.version).toBe(v2);
    expect(status.lastError?.message).toBe(error);
    expect(status.lastError?.at).toBeGreaterThan(0);

    // The refused set would have dropped the charges rule; the one in force still allows it.
    const r = await charges();
    expectForwarded(r);
    expect(await audit(gw, r)).toMatchObject({ policy_version: v2, rule: 'charges' });
  });

  it('an unknown key: reload refused with file:line, the previous policy still decides', async () => {
    writeFileSync(rulesFile(), UNKNOWN_KEY);
    const result = gw.gateway.policies.reload();
    expect(result.ok).toBe(false);
    const error = (result as { error: string }).error;
    expect(error).toMatch(/rules\.yaml:7:\d+: rules\[0\]\.colour: unknown key/);
    expect(gw.gateway.policies.status().lastError?.message).toBe(error);
    expect(gw.gateway.policies.status().version).toBe(v2);
    const r = await charges();
    expectForwarded(r);
    expect(await audit(gw, r)).toMatchObject({ policy_version: v2 });
  });

  it('changing the gateway section is refused (needs a restart); the policy in force stays', async () => {
    const gatewayFile = join(gw.configDir, 'gateway.yaml');
    const original = readFileSync(gatewayFile, 'utf8');
    try {
      writeFileSync(rulesFile(), WITH_CHARGES);
      writeFileSync(gatewayFile, original.replace('shutdown_grace_ms: 5000', 'shutdown_grace_ms: 6000'));
      const result = gw.gateway.policies.reload();
      expect(result.ok).toBe(false);
      expect((result as { error: string }).error).toMatch(/restart/);
    } finally {
      writeFileSync(gatewayFile, original);
    }
    expectForwarded(await charges());
  });

  it('after a refused reload, a good reload clears status().lastError (even when it restores the policy in force)', async () => {
    // rules.yaml now holds WITH_CHARGES again: the set in force (v2).
    const result = gw.gateway.policies.reload();
    expect(result).toEqual({ ok: true, version: v2 });
    expect(gw.gateway.policies.status().lastError).toBeUndefined();
  });

  it('a reload that tightens the policy applies at once', async () => {
    writeFileSync(rulesFile(), `rules:\n  - { id: customers, upstream: stripe, methods: [GET], paths: [/v1/customers/**], effect: allow }\n`);
    const result = gw.gateway.policies.reload();
    expect(result.ok).toBe(true);
    const v3 = (result as { version: string }).version;
    expect(v3).not.toBe(v2);
    const r = await charges();
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expect(await audit(gw, r)).toMatchObject({ policy_version: v3 });
    expect(gw.gateway.policies.status().lastError).toBeUndefined();
  });
});

describe('hot reload: file watcher', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, { rules: INITIAL_RULES, watch: true });
    token = await gw.token({ agent: 'watcher' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  /** Polls `check` every 50 ms for up to `ms`; returns how long it took, or fails. */
  async function within(ms: number, check: () => Promise<boolean> | boolean): Promise<number> {
    const started = Date.now();
    while (Date.now() - started < ms) {
      if (await check()) return Date.now() - started;
      await sleep(50);
    }
    throw new Error(`not within ${ms} ms`);
  }

  it('a changed rules file is picked up within ~2 s without calling reload()', async () => {
    const v1 = gw.gateway.policies.status().version;
    expectRefused(await send(gw, upstream, '/stripe/v1/charges', { token }), 403, 'VALET_ERR_POLICY_DENIED');

    writeFileSync(join(gw.configDir, 'rules.yaml'), WITH_CHARGES);
    await within(2_000, async () => (await send(gw, upstream, '/stripe/v1/charges', { token })).status === 200);
    expect(gw.gateway.policies.status().version).not.toBe(v1);
    expect(upstream.requests.filter((r) => r.url === '/v1/charges')).toHaveLength(1);
  });

  it('a new file in the directory is picked up too', async () => {
    writeFileSync(join(gw.configDir, 'more-rules.yaml'), `rules:\n  - { id: payouts, upstream: stripe, methods: [GET], paths: [/v1/payouts], effect: allow }\n`);
    await within(2_000, async () => (await send(gw, upstream, '/stripe/v1/payouts', { token })).status === 200);
  });

  it('a broken file written while watching is refused; the policy in force keeps deciding', async () => {
    const before = gw.gateway.policies.status().version;
    writeFileSync(join(gw.configDir, 'rules.yaml'), BROKEN_CEL);
    await within(2_000, () => gw.gateway.policies.status().lastError !== undefined);
    expect(gw.gateway.policies.status().lastError?.message).toMatch(/rules\.yaml:9:\d+/);
    expect(gw.gateway.policies.status().version).toBe(before);
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token }));
  });
});
