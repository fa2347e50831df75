/**
 * Rules in shadow mode: evaluated beside the enforced rules on live traffic, their decision
 * recorded in the audit row and counted when it differs, never enforced.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startGateway } from '../../gateway/main.js';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { backendEnv } from '../helpers/backends.js';
import { DEV_SIGNING_KEY, devIssuer, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

describe('rules in shadow mode', () => {
  let api: FakeUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    api = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [{ name: 'api', origin: api.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }],
      rules: [
        { id: 'api-allow', upstream: 'api', effect: 'allow' },
        { id: 'no-deletes-candidate', upstream: 'api', methods: ['DELETE'], effect: 'deny', mode: 'shadow', reason: 'deletes would be refused' },
        { id: 'big-orders-candidate', upstream: 'api', paths: ['/v1/orders'], when: 'args.amount > 100', effect: 'escalate', mode: 'shadow', approval: { group: 'ops' } },
      ],
      env: { API_KEY: 'sk-shadow-api-key' },
    });
  });
  afterAll(async () => {
    await gw.close();
    await api.close();
  });

  const send = async (method: 'GET' | 'DELETE' | 'POST', path: string, body?: unknown): Promise<number> => {
    const res = await request(`${gw.url}/api${path}`, {
      method,
      headers: { authorization: `Bearer ${await gw.token()}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    await res.body.dump();
    return res.statusCode;
  };

  it('the enforced decision applies; the shadow one is recorded, counted when it differs, and reads arguments', async () => {
    expect(await send('DELETE', '/v1/items/7')).toBe(200);
    expect(await send('GET', '/v1/items/7')).toBe(200);
    expect(await send('POST', '/v1/orders', { amount: 500 })).toBe(200);
    expect(await send('POST', '/v1/orders', { amount: 5 })).toBe(200);
    expect(api.requests).toHaveLength(4);
    const rows = await gw.waitForAudit(4);
    const shadow = rows.map((r) => ({ decision: r.decision, rule: r.rule, shadow: JSON.parse(r.shadow ?? 'null') as { effect: string; rules: string[] } }));
    expect(shadow.map((s) => s.decision)).toEqual(['allow', 'allow', 'allow', 'allow']);
    expect(shadow.map((s) => s.shadow.effect)).toEqual(['deny', 'allow', 'escalate', 'allow']);
    expect(shadow[0]?.shadow.rules).toEqual(['no-deletes-candidate']);
    expect(shadow[2]?.shadow.rules).toEqual(['big-orders-candidate']);
    const metrics = await (await request(`${gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${await gw.adminToken(['viewer'])}` } })).body.text();
    expect(metrics).toContain('valet_policy_shadow_disagreements_total{enforced="allow",shadow="deny"} 1');
    expect(metrics).toContain('valet_policy_shadow_disagreements_total{enforced="allow",shadow="escalate"} 1');
    // The admin API lists the disagreements, grouped, from the audit log.
    const res = await request(`${gw.adminUrl}/api/policy/shadow`, { headers: { authorization: `Bearer ${await gw.adminToken(['auditor'])}` } });
    expect(res.statusCode).toBe(200);
    const body = (await res.body.json()) as { disagreements: { enforced: string; shadow: string; rules: string[]; calls: number; example_request_id: string }[] };
    const byShadow = Object.fromEntries(body.disagreements.map((d) => [d.shadow, d]));
    expect(body.disagreements).toHaveLength(2);
    expect(byShadow['deny']).toMatchObject({ enforced: 'allow', rules: ['no-deletes-candidate'], calls: 1, example_request_id: rows[0]?.request_id });
    expect(byShadow['escalate']).toMatchObject({ enforced: 'allow', rules: ['big-orders-candidate'], calls: 1 });
  });
});

describe('a candidate policy directory in shadow', () => {
  it('decides nothing; its decisions and version are recorded beside the enforced ones', async () => {
    const api = await startFakeUpstream();
    const candidate = mkdtempSync(join(tmpdir(), 'valet-candidate-'));
    const upstreams = [{ name: 'api', origin: api.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }];
    writeFileSync(join(candidate, 'gateway.yaml'), stringify({ issuers: [devIssuer], upstreams }));
    writeFileSync(join(candidate, 'rules.yaml'), stringify({ rules: [{ id: 'api-reads-only', upstream: 'api', methods: ['GET'], effect: 'allow' }] }));
    const gw = await startTestGateway({ upstreams, rules: [{ id: 'api-allow', upstream: 'api', effect: 'allow' }], env: { API_KEY: 'sk-shadow-api-key' } });
    await gw.close({ keep: true });
    const again = await startGateway({ configDir: gw.configDir, dataDir: gw.dataDir, env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, API_KEY: 'sk-shadow-api-key', ...gw.backendEnv }, shadowConfigDir: candidate, logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
    try {
      const token = await gw.token();
      for (const method of ['GET', 'POST'] as const) {
        const res = await request(`${again.url}/api/v1/things`, { method, headers: { authorization: `Bearer ${token}` } });
        await res.body.dump();
        expect(res.statusCode).toBe(200);
      }
      await again.audit.flush();
      const rows = [];
      for await (const r of again.auditLog.iterate({})) rows.push(r);
      const shadows = rows.map((r) => JSON.parse(r.shadow ?? 'null') as { effect: string; rules: string[]; version: string });
      expect(shadows.map((s) => s.effect)).toEqual(['allow', 'deny']);
      expect(shadows[1]?.rules).toEqual(['default-deny']);
      expect(shadows[0]?.version).toMatch(/^sha256:/);
      expect(shadows[0]?.version).not.toBe(rows[0]?.policy_version);
      expect(api.requests).toHaveLength(2);
    } finally {
      await again.close();
      await api.close();
      rmSync(gw.root, { recursive: true, force: true });
      rmSync(candidate, { recursive: true, force: true });
    }
  });
});

describe('a candidate from git in shadow (--shadow git:REF)', () => {
  it('evaluates the configuration as committed at REF beside the working copy in force', async () => {
    const api = await startFakeUpstream();
    const repo = mkdtempSync(join(tmpdir(), 'valet-candidate-git-'));
    const dir = join(repo, 'policies');
    mkdirSync(dir);
    const upstreams = [{ name: 'api', origin: api.origin, credential: { scheme: 'bearer', secret: 'API_KEY' } }];
    writeFileSync(join(dir, 'gateway.yaml'), stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } } }, issuers: [devIssuer], upstreams }));
    writeFileSync(join(dir, 'rules.yaml'), stringify({ rules: [{ id: 'api-reads-only', upstream: 'api', methods: ['GET'], effect: 'allow' }] }));
    const git = (...args: string[]): void => void execFileSync('git', ['-C', repo, '-c', 'user.email=t@example.com', '-c', 'user.name=t', ...args], { stdio: 'ignore' });
    git('init', '-q');
    git('add', '.');
    git('commit', '-qm', 'reads only');
    // The working copy, in force, allows everything; the committed one is the candidate.
    writeFileSync(join(dir, 'rules.yaml'), stringify({ rules: [{ id: 'api-allow', upstream: 'api', effect: 'allow' }] }));
    const data = join(repo, 'data');
    const gw = await startGateway({ configDir: dir, dataDir: data, env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, API_KEY: 'sk-shadow-api-key', ...backendEnv(data) }, shadowConfigDir: 'git:HEAD', logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
    try {
      const token = await mintAgentToken(gw.config.issuers[0]!, new TextEncoder().encode(DEV_SIGNING_KEY), { agent: 'agent-1', ttlSeconds: 300 });
      const res = await request(`${gw.url}/api/v1/things`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      await gw.audit.flush();
      const rows = [];
      for await (const r of gw.auditLog.iterate({})) rows.push(r);
      expect(rows.map((r) => [r.decision, JSON.parse(r.shadow ?? 'null')?.effect])).toEqual([['allow', 'deny']]);
    } finally {
      await gw.close();
      await api.close();
      rmSync(repo, { recursive: true, force: true });
    }
  });
});
