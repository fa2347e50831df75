import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import {
  audit,
  expectForwarded,
  expectRefused,
  form,
  json,
  send,
  STRIPE_SECRET,
  STRIPE_TOOLS_YAML,
  type SendOptions,
  startStripeGateway,
} from './policy-support.js';

const MAX_BODY = 1024;

describe('tools and arguments (Stripe-like upstream)', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      gateway: { max_body_bytes: MAX_BODY },
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        {
          id: 'small-usd-transfers',
          tools: ['stripe.create_transfer'],
          when: 'args.amount <= 500 && args.currency == "usd"',
          effect: 'allow',
        },
        { id: 'one-customer', tools: ['stripe.get_customer'], when: 'args.customer_id == "cus_123"', effect: 'allow' },
      ],
    });
    token = await gw.token({ agent: 'payments-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const transfer = (o: Omit<SendOptions, 'token' | 'method'>, query = '') =>
    send(gw, upstream, `/stripe/v1/transfers${query}`, { token, method: 'POST', ...o });

  it('allows a form-encoded transfer within the condition and forwards the exact bytes', async () => {
    const body = 'amount=100&currency=usd';
    const r = await transfer(form(body));
    const got = expectForwarded(r);
    expect(got.method).toBe('POST');
    expect(got.url).toBe('/v1/transfers');
    expect(got.body.equals(Buffer.from(body))).toBe(true);
    expect(got.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(got.headers['content-length']).toBe(String(body.length));
    expect(await audit(gw, r)).toMatchObject({
      decision: 'allow',
      rule: 'small-usd-transfers',
      tool: 'stripe.create_transfer',
      status: 200,
      bytes_in: body.length,
    });
  });

  it('allows a JSON transfer and forwards the body byte for byte (not re-serialised)', async () => {
    const body = '{ "amount" : 100,\n  "currency":"usd" }';
    const r = await transfer({ body, contentType: 'application/json' });
    const got = expectForwarded(r);
    expect(got.body.toString('utf8')).toBe(body);
    expect(await audit(gw, r)).toMatchObject({ decision: 'allow', rule: 'small-usd-transfers', tool: 'stripe.create_transfer' });
  });

  it('a chunked JSON body (no Content-Length) is read, decided on and forwarded intact', async () => {
    const body = '{"amount":250,"currency":"usd"}';
    const r = await transfer({ body: Readable.from([Buffer.from(body.slice(0, 9)), Buffer.from(body.slice(9))]), contentType: 'application/json' });
    const got = expectForwarded(r);
    expect(got.body.toString('utf8')).toBe(body);
    expect(got.headers['transfer-encoding']).toBeUndefined();
    expect(got.headers['content-length']).toBe(String(body.length));
  });

  it('the boundary 500 is allowed; 501 (form and JSON) falls to default-deny and is not forwarded', async () => {
    expectForwarded(await transfer(form('amount=500&currency=usd')));
    for (const o of [form('amount=501&currency=usd'), json({ amount: 501, currency: 'usd' }), json({ amount: 100, currency: 'eur' })]) {
      const r = await transfer(o);
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('default-deny');
      expect(e.reason).toContain('stripe.create_transfer');
      expect(await audit(gw, r)).toMatchObject({ decision: 'deny', rule: 'default-deny', tool: 'stripe.create_transfer', status: 403 });
    }
  });

  it('a declared int given as a JSON string ("999") is refused with a reason naming the argument', async () => {
    // Even a string that would pass the condition after conversion ("100") must be refused: JSON must already be typed.
    for (const amount of ['999', '100']) {
      const r = await transfer(json({ amount, currency: 'usd' }));
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule).toBe('small-usd-transfers');
      expect(e.reason).toMatch(/argument "amount" must be an integer/);
      expect(e.message).toContain('amount');
    }
  });

  it('a JSON float or a huge number for a declared int is refused', async () => {
    for (const body of ['{"amount":100.5,"currency":"usd"}', '{"amount":9007199254740994,"currency":"usd"}']) {
      const r = await transfer({ body, contentType: 'application/json' });
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.reason, body).toMatch(/amount/);
    }
    // Numbers that are not exactly a double are ambiguous, whatever their declared type.
    for (const body of ['{"amount":1e400,"currency":"usd"}', '{"amount":-9007199254740993,"currency":"usd"}']) {
      const r = await transfer({ body, contentType: 'application/json' });
      expect(expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST').message, body).toMatch(/not exactly a double/);
    }
  });

  // Ambiguity is refused outright (400), before any rule is evaluated, whichever copy would pass.
  it('a duplicate JSON key is refused, whichever copy would pass', async () => {
    for (const body of ['{"amount":100000,"amount":100,"currency":"usd"}', '{"amount":100,"amount":100000,"currency":"usd"}']) {
      const r = await transfer({ body, contentType: 'application/json' });
      const e = expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
      expect(e.message).toMatch(/repeats the key "amount"/);
      expect(await audit(gw, r)).toMatchObject({ decision: null, status: 400, error_code: 'VALET_ERR_BAD_REQUEST' });
    }
  });

  it('a duplicate nested JSON key is refused too', async () => {
    const r = await transfer({ body: '{"amount":100,"currency":"usd","metadata":{"a":1,"a":2}}', contentType: 'application/json' });
    expect(expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST').message).toMatch(/repeats the key "a"/);
  });

  it('a duplicate form key is refused, whichever copy would pass', async () => {
    for (const body of ['amount=100000&amount=100&currency=usd', 'amount=100&currency=usd&amount=100000']) {
      const r = await transfer(form(body));
      const e = expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
      expect(e.message).toMatch(/repeats the key "amount"/);
    }
  });

  it('an argument given in both the query and the body is refused as ambiguous', async () => {
    for (const o of [form('amount=100&currency=usd'), json({ amount: 100, currency: 'usd' })]) {
      const r = await transfer(o, '?amount=100');
      const e = expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
      expect(e.message).toMatch(/"amount" is given in both the query and the body/);
    }
  });

  it('a query argument alone is converted by its declared type and decided on', async () => {
    expectForwarded(await transfer(form('currency=usd'), '?amount=100'));
    const r = await transfer(form('currency=usd'), '?amount=100000');
    expect(expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });

  it('unparseable JSON is refused', async () => {
    for (const body of ['{"amount":100,', '{"amount":100,"currency":"usd",}', '[{"amount":100}]', '{"amount":100 /* c */,"currency":"usd"}']) {
      const r = await transfer({ body, contentType: 'application/json' });
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.rule, body).toBe('small-usd-transfers');
      expect(e.reason, body).toMatch(/JSON body is (malformed|not an object)/);
    }
  });

  it('a text/plain body to a tool whose rule reads args is refused (the body cannot be read as arguments)', async () => {
    for (const contentType of ['text/plain', 'application/octet-stream']) {
      const r = await transfer({ body: 'amount=100&currency=usd', contentType });
      const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
      expect(e.reason).toMatch(/neither JSON nor form-encoded/);
    }
  });

  it('a body over gateway.max_body_bytes is 413 and nothing is forwarded (Content-Length and chunked)', async () => {
    const big = JSON.stringify({ amount: 100, currency: 'usd', pad: 'x'.repeat(MAX_BODY) });
    const r1 = await transfer({ body: big, contentType: 'application/json' });
    expectRefused(r1, 413, 'VALET_ERR_BODY_TOO_LARGE');
    expect(await audit(gw, r1)).toMatchObject({ status: 413, error_code: 'VALET_ERR_BODY_TOO_LARGE' });

    const chunks = [Buffer.from(big.slice(0, 600)), Buffer.from(big.slice(600))];
    const r2 = await transfer({ body: Readable.from(chunks), contentType: 'application/json' });
    expectRefused(r2, 413, 'VALET_ERR_BODY_TOO_LARGE');

    // Exactly at the limit is still read.
    const exact = `{"amount":100,"currency":"usd","pad":"${'y'.repeat(MAX_BODY - 40)}"}`;
    expect(Buffer.byteLength(exact)).toBe(MAX_BODY);
    expectForwarded(await transfer({ body: exact, contentType: 'application/json' }));
  });

  it('a path parameter is visible to conditions as args.customer_id', async () => {
    const ok = await send(gw, upstream, '/stripe/v1/customers/cus_123', { token });
    expect(expectForwarded(ok).url).toBe('/v1/customers/cus_123');
    expect(await audit(gw, ok)).toMatchObject({ decision: 'allow', rule: 'one-customer', tool: 'stripe.get_customer' });

    const other = await send(gw, upstream, '/stripe/v1/customers/cus_999', { token });
    expect(expectRefused(other, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });

  it('a path parameter cannot also be supplied through the query', async () => {
    const r = await send(gw, upstream, '/stripe/v1/customers/cus_999?customer_id=cus_123', { token });
    const e = expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
    expect(e.message).toMatch(/"customer_id" is given in both the path and the query/);
  });
});

describe('a rule naming tools of two upstreams reads arguments on both', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startTestGateway({
      upstreams: [
        { name: 'alpha', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'STRIPE_KEY' } },
        { name: 'beta', origin: upstream.origin, credential: { scheme: 'bearer', secret: 'STRIPE_KEY' } },
      ],
      // Neither tool declares args: only the rule's condition tells the gateway to read bodies.
      files: {
        'tools.yaml': `tools:
  - { name: alpha.pay, upstream: alpha, method: POST, path: /pay }
  - { name: beta.pay, upstream: beta, method: POST, path: /pay }
`,
      },
      rules: [{ id: 'small-payments', tools: ['alpha.pay', 'beta.pay'], when: 'args.amount <= 500', effect: 'allow' }],
      env: { STRIPE_KEY: STRIPE_SECRET },
    });
    token = await gw.token({ agent: 'payments-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  for (const name of ['alpha', 'beta']) {
    it(`${name}: amount 100 is allowed, 100000 is denied`, async () => {
      const ok = await send(gw, upstream, `/${name}/pay`, { token, method: 'POST', ...json({ amount: 100 }) });
      expectForwarded(ok);
      const no = await send(gw, upstream, `/${name}/pay`, { token, method: 'POST', ...json({ amount: 100000 }) });
      expect(expectRefused(no, 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    });
  }
});

describe('the body policy reads is the body the upstream reads', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
        { id: 'no-large-transfers', tools: ['stripe.create_transfer'], when: 'has(args.amount) && args.amount > 500', effect: 'deny' },
      ],
    });
    token = await gw.token({ agent: 'payments-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('controls: a large transfer is denied, a small one forwarded', async () => {
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...form('amount=100000&currency=usd') }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe(
      'no-large-transfers',
    );
    expectForwarded(await send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...form('amount=100&currency=usd') }));
  });

  it('a Content-Encoding: gzip body cannot slip a large transfer past the deny (policy cannot read it)', async () => {
    const r = await send(gw, upstream, '/stripe/v1/transfers', {
      token,
      method: 'POST',
      body: gzipSync('amount=100000&currency=usd'),
      contentType: 'application/x-www-form-urlencoded',
      headers: { 'content-encoding': 'gzip' },
    });
    expect(r.forwarded, 'a body the policy could not read was forwarded').toHaveLength(0);
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
  });

  it('two Content-Type headers (JSON for the gateway, form for the upstream) are refused, not forwarded', async () => {
    // As JSON: amount 100. As a form: amount=100000.
    const body = '{"amount":100,"currency":"usd","memo":"&amount=100000&"}';
    const before = upstream.requests.length;
    const head = await new Promise<string>((resolve, reject) => {
      const u = new URL(gw.url);
      const socket = connect(Number(u.port), u.hostname, () => {
        socket.write(
          'POST /stripe/v1/transfers HTTP/1.1\r\nHost: valet\r\n' +
            `Authorization: Bearer ${token}\r\n` +
            'Content-Type: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n' +
            `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
      });
      let out = '';
      socket.on('data', (d: Buffer) => (out += d.toString('latin1')));
      socket.on('end', () => resolve(out));
      socket.on('error', reject);
    });
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]);
    expect(upstream.requests.length - before, 'an ambiguously typed body was forwarded').toBe(0);
    expect(status).toBeGreaterThanOrEqual(400);
    expect(status).toBeLessThan(500);
  });
});
