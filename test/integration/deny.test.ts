import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, rawPathRequest, requestIdOf } from '../helpers/http.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const SECRET = 'sk-deny-test-secret-5150';

describe('policy denials and unavailable targets', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [
        { name: 'stripe', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'STRIPE_KEY' } },
        // Its secret is never put in the environment.
        { name: 'nokey', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'MISSING_KEY' } },
      ],
      rules: [
        { id: 'stripe-read', upstream: 'stripe', methods: ['GET'], paths: ['/v1/customers/**', '/v1/balance'], effect: 'allow' },
        { id: 'stripe-write', upstream: 'stripe', methods: ['POST', 'DELETE'], paths: ['/v1/customers/**'], effect: 'allow' },
        { id: 'stripe-no-delete', upstream: 'stripe', methods: ['DELETE'], effect: 'deny', reason: 'agents never delete Stripe objects' },
        { id: 'nokey-all', upstream: 'nokey', effect: 'allow' },
      ],
      env: { STRIPE_KEY: SECRET },
    });
    token = await gw.token({ agent: 'billing-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  async function send(method: 'GET' | 'POST' | 'DELETE', path: string, withToken = true) {
    const before = upstream.requests.length;
    const res = await request(`${gw.url}${path}`, {
      method,
      headers: withToken ? { authorization: `Bearer ${token}`, 'content-type': 'application/json' } : {},
      body: method === 'POST' ? '{"x":1}' : null,
    });
    const text = await res.body.text();
    return { status: res.statusCode, id: requestIdOf(res.headers), text, forwarded: upstream.requests.length - before };
  }

  it('allows what a rule allows (control)', async () => {
    const r = await send('GET', '/stripe/v1/customers/cus_1');
    expect(r.status).toBe(200);
    expect(r.forwarded).toBe(1);
    expect(await auditRowFor(gw, r.id)).toMatchObject({ decision: 'allow', rule: 'stripe-read' });
  });

  it('a matching deny rule wins over an allow and is named in the 403', async () => {
    const r = await send('DELETE', '/stripe/v1/customers/cus_1');
    expect(r.status).toBe(403);
    expect(r.forwarded).toBe(0);
    const body = expectErrorBody(r.text, 'VALET_ERR_POLICY_DENIED', r.id);
    expect(body.error.rule).toBe('stripe-no-delete');
    expect(body.error.reason).toBe('agents never delete Stripe objects');
    expect(body.error.message).toContain('stripe-no-delete');
    expect(body.error.message).toContain('agents never delete Stripe objects');
    expect(r.text).not.toContain(SECRET);
    expect(r.text).not.toContain(token);
    const row = await auditRowFor(gw, r.id);
    expect(row).toMatchObject({
      decision: 'deny',
      rule: 'stripe-no-delete',
      reason: 'agents never delete Stripe objects',
      status: 403,
      error_code: 'VALET_ERR_POLICY_DENIED',
      agent: 'billing-bot',
      upstream: 'stripe',
      method: 'DELETE',
      path: '/v1/customers/cus_1',
      upstream_status: null,
    });
  });

  it('a request no rule matches is denied by default-deny', async () => {
    for (const [method, path] of [
      ['POST', '/stripe/v1/charges'],
      ['GET', '/stripe/v1/balance/extra'],
      ['GET', '/stripe/v2/customers/cus_1'],
    ] as const) {
      const r = await send(method, path);
      expect(r.status, `${method} ${path}`).toBe(403);
      expect(r.forwarded).toBe(0);
      const body = expectErrorBody(r.text, 'VALET_ERR_POLICY_DENIED', r.id);
      expect(body.error.rule).toBe('default-deny');
      expect(body.error.message).toContain('default-deny');
      expect(typeof body.error.reason).toBe('string');
      const row = await auditRowFor(gw, r.id);
      expect(row).toMatchObject({ decision: 'deny', rule: 'default-deny', status: 403, error_code: 'VALET_ERR_POLICY_DENIED' });
    }
  });

  it('dot segments cannot walk out of an allowed prefix into a denied one', async () => {
    const before = upstream.requests.length;
    const res = await rawPathRequest(gw.url, 'GET', '/stripe/v1/customers/../charges/ch_1', { authorization: `Bearer ${token}` });
    expect(res.status).toBe(403);
    expect(upstream.requests.length).toBe(before);
    const body = expectErrorBody(res.text, 'VALET_ERR_POLICY_DENIED', requestIdOf(res.headers));
    expect(body.error.rule).toBe('default-deny');
    expect(await auditRowFor(gw, requestIdOf(res.headers))).toMatchObject({ decision: 'deny', rule: 'default-deny', path: '/v1/charges/ch_1' });
  });

  it('an unknown upstream is 404 VALET_ERR_UNKNOWN_UPSTREAM', async () => {
    for (const withToken of [true, false]) {
      const r = await send('GET', '/nosuch/v1/x', withToken);
      expect(r.status).toBe(404);
      expect(r.forwarded).toBe(0);
      expectErrorBody(r.text, 'VALET_ERR_UNKNOWN_UPSTREAM', r.id);
      const row = await auditRowFor(gw, r.id);
      expect(row).toMatchObject({ status: 404, error_code: 'VALET_ERR_UNKNOWN_UPSTREAM', decision: null });
    }
  });

  it('an upstream whose secret is not set is 503 VALET_ERR_CREDENTIAL_UNAVAILABLE and nothing is forwarded', async () => {
    const r = await send('POST', '/nokey/v1/anything');
    expect(r.status).toBe(503);
    expect(r.forwarded).toBe(0);
    expectErrorBody(r.text, 'VALET_ERR_CREDENTIAL_UNAVAILABLE', r.id);
    const row = await auditRowFor(gw, r.id);
    expect(row).toMatchObject({ status: 503, error_code: 'VALET_ERR_CREDENTIAL_UNAVAILABLE', decision: 'allow', upstream: 'nokey' });
    // The operator was told at start which secret is missing (by name only).
    expect(gw.logs.some((l) => l.includes('MISSING_KEY') && l.includes('"level":40'))).toBe(true);
  });
});
