/**
 * Rules in shadow mode: evaluated beside the enforced rules on live traffic, their decision
 * recorded in the audit row and counted when it differs, never enforced.
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
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
  });
});
