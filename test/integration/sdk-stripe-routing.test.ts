/**
 * stripe-node fixes its base path to `/v1/` and takes only host, port and protocol: Valet serves
 * the stripe upstream at its root on a listener of its own and under its own host name. The real,
 * unmodified client runs against both routes; the path route `/stripe/...` is checked alongside
 * with plain requests. Policy, canonicalisation and audit are the same on every route.
 */
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import type { LookupFunction } from 'node:net';
import type { ServerResponse } from 'node:http';
import Stripe from 'stripe';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const STRIPE_KEY = 'sk_live_realStripeKey_4c3b2a1f';
const HOST = 'stripe.valet.internal';

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'request-id': 'req_up_stripe', ...headers });
  res.end(JSON.stringify(body));
}

const CUSTOMERS = ['cus_1', 'cus_2', 'cus_3'].map((id) => ({ id, object: 'customer', email: `${id}@example.com` }));

function fakeStripe(req: RecordedRequest, res: ServerResponse): void {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/v1/customers') {
    const after = url.searchParams.get('starting_after');
    const from = after === null ? 0 : CUSTOMERS.findIndex((c) => c.id === after) + 1;
    const data = CUSTOMERS.slice(from, from + 2);
    return json(res, 200, { object: 'list', url: '/v1/customers', has_more: from + 2 < CUSTOMERS.length, data });
  }
  if (req.method === 'POST' && url.pathname === '/v1/customers') {
    const form = new URLSearchParams(req.body.toString());
    return json(res, 200, { id: 'cus_new', object: 'customer', email: form.get('email') });
  }
  if (req.method === 'POST' && url.pathname === '/v1/charges') {
    return json(res, 402, { error: { type: 'card_error', code: 'card_declined', decline_code: 'generic_decline', message: 'Your card was declined.' } }, { 'request-id': 'req_up_card' });
  }
  if (url.pathname === '/v1/moved') {
    res.writeHead(302, { location: `http://${String(req.headers.host)}/v1/customers/cus_1` });
    return void res.end();
  }
  json(res, 404, { error: { type: 'invalid_request_error', message: `no fake for ${req.method} ${url.pathname}` } });
}

/** Resolves every name to 127.0.0.1, as a DNS entry for stripe.valet.internal would. */
const toLoopback = ((_host: string, options: { all?: boolean }, cb: (err: Error | null, address: unknown, family?: number) => void) => {
  if (options.all === true) cb(null, [{ address: '127.0.0.1', family: 4 }]);
  else cb(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

describe('stripe-node through Valet, by its own port and by host name', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  let stripePort: number;
  const agent = new HttpAgent({ keepAlive: false, lookup: toLoopback } as ConstructorParameters<typeof HttpAgent>[0]);

  beforeAll(async () => {
    upstream = await startFakeUpstream(fakeStripe);
    gw = await startTestGateway({
      upstreams: [{ name: 'stripe', origin: upstream.origin, dialect: 'stripe', listen: { port: 0 }, hosts: [HOST], credential: { scheme: 'bearer', secret: 'STRIPE_KEY' } }],
      rules: [
        { id: 'no-refunds', upstream: 'stripe', methods: ['POST'], paths: ['/v1/refunds'], effect: 'deny', reason: 'refunds need a person' },
        { id: 'stripe-ok', upstream: 'stripe', effect: 'allow' },
      ],
      env: { STRIPE_KEY },
    });
    token = await gw.token({ agent: 'billing-bot', tenant: 'acme' });
    stripePort = gw.gateway.upstreamListeners.get('stripe')?.port ?? 0;
    expect(stripePort).toBeGreaterThan(0);
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
    agent.destroy();
  });

  const routes = (): [string, () => Stripe][] => [
    ['its own port', () => new Stripe(token, { host: '127.0.0.1', port: stripePort, protocol: 'http', maxNetworkRetries: 2, httpAgent: agent })],
    ['its host name', () => new Stripe(token, { host: HOST, port: gw.gateway.port, protocol: 'http', maxNetworkRetries: 2, httpAgent: agent })],
  ];

  it.each([0, 1])('route %#: reads with pagination, writes a form body, and raises the upstream’s card error', async (i) => {
    const [, make] = routes()[i] as [string, () => Stripe];
    const stripe = make();
    const before = upstream.requests.length;
    const all = await stripe.customers.list({ limit: 2 }).autoPagingToArray({ limit: 10 });
    expect(all.map((c) => c.id)).toEqual(['cus_1', 'cus_2', 'cus_3']);
    const created = await stripe.customers.create({ email: 'new@example.com' });
    expect(created).toMatchObject({ id: 'cus_new', email: 'new@example.com' });
    const declined = await stripe.charges.create({ amount: 100, currency: 'usd', source: 'tok_visa' }).catch((e: unknown) => e);
    expect(declined).toBeInstanceOf(Stripe.errors.StripeCardError);
    expect((declined as InstanceType<typeof Stripe.errors.StripeCardError>).code).toBe('card_declined');
    expect((declined as InstanceType<typeof Stripe.errors.StripeCardError>).requestId).toBe('req_up_card');
    // The upstream saw the paths stripe-node built, the real key once, never the agent token.
    const seen = upstream.requests.slice(before);
    expect(seen.map((r) => `${r.method} ${new URL(r.url, 'http://x').pathname}`)).toEqual(['GET /v1/customers', 'GET /v1/customers', 'POST /v1/customers', 'POST /v1/charges']);
    for (const r of seen) {
      expect(headerValues(r, 'authorization')).toEqual([`Bearer ${STRIPE_KEY}`]);
      expect(JSON.stringify(r.rawHeaders) + r.body.toString()).not.toContain(token.split('.')[2] as string);
    }
  });

  it.each([0, 1])('route %#: a denial is StripePermissionError with Valet’s message and id, never retried', async (i) => {
    const [, make] = routes()[i] as [string, () => Stripe];
    const rows = (await gw.auditRows()).length;
    const err = await make().refunds.create({ charge: 'ch_1' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Stripe.errors.StripePermissionError);
    const e = err as InstanceType<typeof Stripe.errors.StripePermissionError>;
    expect(e.requestId).toMatch(/^[0-9a-f-]{36}$/);
    // stripe-node puts the request id it was given (Valet's, in request-id) before the message.
    expect(e.message).toBe(`[${e.requestId}] Denied by rule no-refunds: refunds need a person`);
    expect(e.code).toBe('VALET_ERR_POLICY_DENIED');
    // maxNetworkRetries is 2: stripe-should-retry: false kept it to one request, and nothing was forwarded.
    const after = await gw.waitForAudit(rows + 1);
    expect(after.slice(rows)).toHaveLength(1);
    expect(after.at(-1)).toMatchObject({ request_id: e.requestId, upstream: 'stripe', path: '/v1/refunds', rule: 'no-refunds', status: 403 });
    expect(upstream.requests.filter((r) => r.url.startsWith('/v1/refunds'))).toHaveLength(0);
  });

  /** A plain request with a given Host, to the given port. */
  const raw = (port: number, path: string, o: { host?: string; method?: string } = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> =>
    new Promise((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: { host: o.host ?? `127.0.0.1:${port}`, authorization: `Bearer ${token}` } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      });
      req.on('error', reject);
      req.end();
    });

  it('the same request on the three routes is decided, canonicalised and audited alike', async () => {
    const paths = {
      path: await raw(gw.gateway.port, '/stripe/v1/refunds/./', { method: 'POST' }),
      port: await raw(stripePort, '/v1/refunds/./', { method: 'POST' }),
      host: await raw(gw.gateway.port, '/v1/refunds/./', { method: 'POST', host: `${HOST.toUpperCase()}.:${gw.gateway.port}` }),
    };
    const rows = await gw.auditRows();
    for (const [route, r] of Object.entries(paths)) {
      expect(r.status, route).toBe(403);
      const row = rows.find((x) => x.request_id === r.headers['valet-request-id']);
      expect(row, route).toMatchObject({ upstream: 'stripe', path: '/v1/refunds/', rule: 'no-refunds', decision: 'deny' });
    }
    // Canonicalisation refuses the same things on every route.
    for (const port of [gw.gateway.port, stripePort]) expect((await raw(port, port === stripePort ? '/v1/%2e%2e/%2e%2e/etc' : '/stripe/v1/%2e%2e/%2e%2e/etc')).status).toBe(400);
    expect((await raw(gw.gateway.port, '/v1/%2e%2e/%2e%2e/etc', { host: HOST })).status).toBe(400);
  });

  it('redirects on the upstream’s origin point back through the route the agent used', async () => {
    expect((await raw(gw.gateway.port, '/stripe/v1/moved')).headers['location']).toBe(`http://127.0.0.1:${gw.gateway.port}/stripe/v1/customers/cus_1`);
    expect((await raw(stripePort, '/v1/moved')).headers['location']).toBe(`http://127.0.0.1:${stripePort}/v1/customers/cus_1`);
    expect((await raw(gw.gateway.port, '/v1/moved', { host: `${HOST}:${gw.gateway.port}` })).headers['location']).toBe(`http://${HOST}:${gw.gateway.port}/v1/customers/cus_1`);
  });

  it('an unknown host falls back to the path route; hosts and ports are checked at start', async () => {
    expect((await raw(gw.gateway.port, '/v1/customers', { host: 'other.example' })).status).toBe(404);
    const bad = startTestGateway({
      upstreams: [
        { name: 'a', origin: upstream.origin, hosts: ['api.internal'], credential: { scheme: 'bearer', secret: 'K' } },
        { name: 'b', origin: upstream.origin, hosts: ['API.internal'], credential: { scheme: 'bearer', secret: 'K' } },
      ],
      rules: [{ id: 'ok', effect: 'allow' }],
    });
    await expect(bad).rejects.toMatchObject({ code: 'VALET_ERR_CONFIG', message: expect.stringContaining('host "api.internal" already routes to upstream "a"') });
    // A default may not be a credential, Valet's own or a steering header.
    for (const name of ['authorization', 'x-api-key', 'valet-request-id', 'x-forwarded-for', 'connection']) {
      const defaulted = startTestGateway({
        upstreams: [{ name: 'a', origin: upstream.origin, agent_token: { header: 'x-api-key' }, default_headers: { [name]: 'x' }, credential: { scheme: 'bearer', secret: 'K' } }],
        rules: [{ id: 'ok', effect: 'allow' }],
      });
      await expect(defaulted, name).rejects.toMatchObject({ code: 'VALET_ERR_CONFIG', message: expect.stringContaining(`cannot default "${name}"`) });
    }
  });
});
