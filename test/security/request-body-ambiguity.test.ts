/**
 * Guards against a body (or query) that policy reads one way while the upstream reads the same
 * forwarded bytes another: keys that collide under case folding or Unicode normalisation, numbers
 * a decimal or big-integer parser reads as another value than the double policy compared, lone
 * surrogates, a BOM. Each is refused with a coded 400 before any rule runs and never forwarded;
 * ordinary bodies still pass byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, form, send, STRIPE_TOOLS_YAML, startStripeGateway } from '../integration/policy-support.js';

describe('a request body or query policy reads must have exactly one reading', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        { id: 'small-usd-transfers', tools: ['stripe.create_transfer'], when: 'args.amount <= 500 && args.currency == "usd"', effect: 'allow' },
        // Reads nothing of the body: an ambiguous body must still not pass through it.
        { id: 'charges', upstream: 'stripe', paths: ['/v1/charges'], methods: ['POST'], effect: 'allow' },
      ],
    });
    token = await gw.token({ agent: 'payments-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  const post = (path: string, body: string | Buffer, contentType = 'application/json') =>
    send(gw, upstream, path, { token, method: 'POST', body, contentType });

  const ambiguousJson: [string, string | Buffer, RegExp][] = [
    ['case-folded keys at the top', '{"amount":100,"Amount":100000,"currency":"usd"}', /"amount" and "Amount" that differ only in case/],
    ['upper-case copy', '{"AMOUNT":100000,"amount":100,"currency":"usd"}', /differ only in case or Unicode form/],
    ['case-folded keys nested', '{"amount":100,"currency":"usd","metadata":{"order":"a","Order":"b"}}', /"order" and "Order"/],
    ['case-folded keys in an array of objects', '{"amount":100,"currency":"usd","items":[{"id":1,"ID":2}]}', /"id" and "ID"/],
    ['NFKC collision (fullwidth)', '{"amount":100,"\uFF41mount":100000,"currency":"usd"}', /differ only in case or Unicode form/],
    ['NFC/NFD collision', '{"amount":100,"currency":"usd","metadata":{"caf\u00e9":"a","cafe\u0301":"b"}}', /differ only in case or Unicode form/],
    ['a big integer', '{"amount":9007199254740993,"currency":"usd"}', /9007199254740993 which is not exactly a double/],
    ['a long decimal', '{"amount":500.00000000000000001,"currency":"usd"}', /not exactly a double/],
    ['1e400', '{"amount":1e400,"currency":"usd"}', /not exactly a double/],
    ['negative zero', '{"amount":-0,"currency":"usd"}', /not exactly a double/],
    ['a lone surrogate', '{"amount":100,"currency":"usd","description":"\\ud800"}', /lone UTF-16 surrogate/],
    ['__proto__', '{"amount":100,"currency":"usd","__proto__":{"amount":100000}}', /__proto__/],
    ['a BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"amount":100,"currency":"usd"}')]), /byte order mark/],
    ['invalid UTF-8', Buffer.concat([Buffer.from('{"amount":100,"currency":"usd","d":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]), /not valid UTF-8/],
  ];

  for (const [name, body, reason] of ambiguousJson) {
    it(`JSON: ${name} is refused with 400 and not forwarded`, async () => {
      const r = await post('/stripe/v1/transfers', body);
      expect(expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST').message).toMatch(reason);
      expect(await audit(gw, r)).toMatchObject({ status: 400, error_code: 'VALET_ERR_BAD_REQUEST', decision: null });
    });
  }

  it('form: keys differing in case, at the top and in bracket notation, are refused', async () => {
    for (const body of ['amount=100&Amount=100000&currency=usd', 'amount=100&currency=usd&metadata[order]=a&metadata[Order]=b', 'amount=100&currency=usd&metadata[x]=a&Metadata[y]=b']) {
      const r = await post('/stripe/v1/transfers', body, 'application/x-www-form-urlencoded');
      expect(expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST').message, body).toMatch(/differ only in case or Unicode form/);
    }
  });

  it('query and body: "Amount" in the query and "amount" in the body are refused; so are two query spellings', async () => {
    const r = await send(gw, upstream, '/stripe/v1/transfers?Amount=100000', { token, method: 'POST', ...form('amount=100&currency=usd') });
    expect(expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST').message).toMatch(/"Amount" \(query\) and "amount" \(body\)/);
    const q = await send(gw, upstream, '/stripe/v1/transfers?amount=100&AMOUNT=100000', { token, method: 'POST', ...form('currency=usd') });
    expect(expectRefused(q, 400, 'VALET_ERR_BAD_REQUEST').message).toMatch(/differ only in case or Unicode form/);
  });

  it('an ambiguous body is refused even where the matching rule reads no arguments', async () => {
    const r = await post('/stripe/v1/charges', '{"amount":100,"Amount":100000}');
    expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
  });

  it('ordinary bodies still pass, byte for byte', async () => {
    for (const [body, type] of [
      ['{"amount":100,"currency":"usd","metadata":{"Order":"a","other":"b"},"rate":0.1,"fee":1.50,"n":1e2}', 'application/json'],
      ['{"amount":500,"currency":"usd","a":{"Amount":1},"b":{"amount":2},"s":"\\ud83d\\ude00 caf\u00e9"}', 'application/json'],
      ['amount=100&currency=usd&metadata[Order]=a&metadata[other]=b&items[]=x&items[]=y', 'application/x-www-form-urlencoded'],
    ] as const) {
      const got = expectForwarded(await post('/stripe/v1/transfers', body, type));
      expect(got.body.toString('utf8')).toBe(body);
    }
    expectForwarded(await post('/stripe/v1/charges', '{"amount":100,"currency":"usd"}'));
  });
});
