/**
 * Guards against the agent token travelling anywhere but its header: in the path (raw or
 * percent-encoded), in the query (raw, fully or partly percent-encoded, lower-case hex, as a name),
 * in a JSON body (also behind `\u` escapes) or a form body. Each is refused with a coded 400, the
 * upstream receives nothing, and neither the response, the audit row nor any log line holds the
 * token: the recorded path has it replaced by [REDACTED].
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, send, STRIPE_TOOLS_YAML, startStripeGateway, type Sent } from '../integration/policy-support.js';

const pct = (s: string, lower = false): string =>
  [...s].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).map((e) => (lower ? e : e.toUpperCase())).join('');

describe('the agent token outside its header', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      files: { 'tools.yaml': STRIPE_TOOLS_YAML },
      rules: [
        { id: 'transfers', tools: ['stripe.create_transfer'], when: 'args.amount <= 500', effect: 'allow' },
        { id: 'customers', upstream: 'stripe', paths: ['/v1/customers/**', '/v1/files/**'], methods: ['GET'], effect: 'allow' },
      ],
    });
    token = await gw.token({ agent: 'leaky-bot' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  /** Nothing forwarded, a coded 400, and no trace of the token in the response, the audit row or the logs. */
  async function expectContained(r: Sent, forms: string[]): Promise<void> {
    const e = expectRefused(r, 400, 'VALET_ERR_BAD_REQUEST');
    expect(e.message).toMatch(/agent token may not appear/);
    const row = await audit(gw, r);
    expect(row).toMatchObject({ status: 400, error_code: 'VALET_ERR_BAD_REQUEST' });
    const signature = token.split('.')[2] as string;
    const logLines = gw.logs.filter((l) => l.includes(r.id));
    expect(logLines.length).toBeGreaterThan(0);
    for (const text of [r.text, JSON.stringify(row), ...gw.logs]) {
      for (const f of [token, signature, ...forms]) expect(text).not.toContain(f);
    }
  }

  it('in the query: raw, fully and partly percent-encoded (either hex case), among + spaces, as a name', async () => {
    const variants = [
      `q=${token}`,
      `q=${pct(token)}`,
      `q=${pct(token, true)}`,
      `q=%65${token.slice(1)}`,
      `q=${token.slice(0, 30)}${pct(token.slice(30, 40), true)}${token.slice(40)}`,
      `q=a+${token}+b`,
      `${token}=1`,
      `q=%2565${token.slice(1)}`,
    ];
    for (const v of variants) {
      const r = await send(gw, upstream, `/stripe/v1/customers/cus_1?${v}`, { token });
      await expectContained(r, [v]);
    }
  });

  it('in the path: as a segment, percent-encoded, and in a path that is refused for another reason first', async () => {
    for (const path of [`/stripe/v1/customers/${token}`, `/stripe/v1/customers/${pct(token, true)}`, `/stripe/v1/files/x/%65${token.slice(1)}/y`]) {
      const r = await send(gw, upstream, path, { token });
      await expectContained(r, [path.slice('/stripe'.length)]);
      expect((await audit(gw, r)).path).toContain('[REDACTED]');
    }
    // Refused before the token is determined (not canonical, unknown upstream): still never recorded.
    for (const [path, code] of [
      [`/stripe/v1/customers/${token}/%2f`, 'VALET_ERR_BAD_PATH'],
      [`/nowhere/${token}`, 'VALET_ERR_UNKNOWN_UPSTREAM'],
      // Across the 2,048 characters a raw path is cut to in the record: not even a prefix survives.
      [`/nowhere/${'a'.repeat(2020)}/${token}`, 'VALET_ERR_UNKNOWN_UPSTREAM'],
    ] as const) {
      const r = await send(gw, upstream, path, { token });
      expectRefused(r, code === 'VALET_ERR_BAD_PATH' ? 400 : 404, code);
      const row = await audit(gw, r);
      expect(row.path).toContain('[REDACTED]');
      for (const text of [r.text, JSON.stringify(row), ...gw.logs]) expect(text).not.toContain(token.slice(0, 20));
    }
  });

  it('in a JSON body, raw and behind \\u escapes; in a form body, raw and percent-encoded', async () => {
    const escaped = `\\u0065${token.slice(1, 25)}\\u00${token.charCodeAt(25).toString(16)}${token.slice(26)}`;
    const bodies: [string, string][] = [
      [`{"amount":100,"description":"${token}"}`, 'application/json'],
      [`{"amount":100,"description":"${escaped}"}`, 'application/json'],
      [`{"amount":100,"metadata":{"${token}":"k"}}`, 'application/json'],
      [`amount=100&description=${token}`, 'application/x-www-form-urlencoded'],
      [`amount=100&description=${pct(token, true)}`, 'application/x-www-form-urlencoded'],
      [`amount=100&metadata[${pct(token)}]=1`, 'application/x-www-form-urlencoded'],
    ];
    for (const [body, contentType] of bodies) {
      const r = await send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', body, contentType });
      await expectContained(r, [escaped]);
    }
  });

  it('a request without the token elsewhere still passes', async () => {
    expectForwarded(await send(gw, upstream, '/stripe/v1/customers/cus_1?expand=a+b', { token }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', body: '{"amount":100,"description":"eyJ"}', contentType: 'application/json' }));
  });
});
