import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import { findDeadRules } from '../../gateway/policy/lint.js';
import { runPolicyTests } from '../../gateway/policy/testing.js';

describe('the shipped example policies', () => {
  it('pass their own policy tests', async () => {
    const results = await runPolicyTests(loadConfig('policies'));
    expect(results.length).toBeGreaterThanOrEqual(20);
    expect(results.filter((r) => !r.passed)).toEqual([]);
  });

  it('have no dead rules', () => {
    expect(findDeadRules(loadConfig('policies'))).toEqual([]);
  });
});

describe('policy tests can fail', () => {
  it('a wrong expectation is reported with file, line, expected and actual', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-ptest-'));
    writeFileSync(
      join(dir, 'all.yaml'),
      `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams: [{ name: api, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }]
rules: [{ id: reads, upstream: api, methods: [GET], effect: allow }]
tests:
  - name: post is allowed
    identity: { agent: a }
    request: { upstream: api, method: POST, path: /x }
    expect: { effect: allow }
`,
    );
    const [r] = await runPolicyTests(loadConfig(dir));
    rmSync(dir, { recursive: true, force: true });
    expect(r).toMatchObject({ passed: false, expected: 'allow', actual: 'deny by default-deny' });
    expect(r?.at).toMatch(/all\.yaml:5$/);
  });
});

describe('policy tests agree with the gateway on ambiguous requests', () => {
  it('a body whose keys differ only in case is refused as the gateway refuses it: a deny by VALET_ERR_BAD_REQUEST', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-ptest-'));
    writeFileSync(
      join(dir, 'all.yaml'),
      `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams: [{ name: api, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }]
tools: [{ name: api.pay, upstream: api, method: POST, path: /pay, args: { amount: int } }]
rules: [{ id: small, tools: [api.pay], when: "args.amount <= 500", effect: allow }]
tests:
  - name: amount and Amount
    identity: { agent: a }
    request: { upstream: api, method: POST, path: /pay, json: { amount: 100, Amount: 100000 } }
    expect: { effect: deny, rule: VALET_ERR_BAD_REQUEST }
  - name: one amount
    identity: { agent: a }
    request: { upstream: api, method: POST, path: /pay, json: { amount: 100 } }
    expect: { effect: allow }
`,
    );
    const results = await runPolicyTests(loadConfig(dir));
    rmSync(dir, { recursive: true, force: true });
    expect(results.map((r) => [r.name, r.passed, r.actual])).toEqual([
      ['amount and Amount', true, 'deny by VALET_ERR_BAD_REQUEST'],
      ['one amount', true, 'allow by small'],
    ]);
  });
});

describe('dead rules', () => {
  it('finds shadowed and unreachable rules', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-dead-'));
    writeFileSync(
      join(dir, 'all.yaml'),
      `issuers: [{ name: d, issuer: d, audience: v, algorithms: [HS256], secret: { env: K } }]
upstreams: [{ name: api, origin: "http://127.0.0.1:1", credential: { scheme: bearer, secret: K } }]
tools: [{ name: api.create, upstream: api, method: POST, path: /things }]
rules:
  - { id: no-delete, upstream: api, methods: [DELETE], effect: deny }
  - { id: delete-things, upstream: api, methods: [DELETE], paths: ["/things/*"], effect: allow }
  - { id: get-create, tools: [api.create], methods: [GET], effect: allow }
  - { id: conditional-deny, upstream: api, when: 'args.x == "1"', effect: deny }
  - { id: reads, upstream: api, methods: [GET], effect: allow }
`,
    );
    const dead = findDeadRules(loadConfig(dir));
    rmSync(dir, { recursive: true, force: true });
    expect(dead.map((d) => d.id)).toEqual(['delete-things', 'get-create']);
    expect(dead[0]?.why).toContain('shadowed: deny rule no-delete');
    expect(dead[1]?.why).toContain('unreachable');
  });
});
