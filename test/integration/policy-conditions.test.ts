import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestGateway } from '../helpers/gateway.js';
import { sleep } from '../helpers/http.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { audit, expectForwarded, expectRefused, send, startStripeGateway } from './policy-support.js';

/** Far from UTC and not a whole number of hours away: its hour always differs from UTC's. */
const TZ = 'Asia/Kathmandu';

const TOOLS_YAML = `tools:
  - { name: stripe.list_charges, upstream: stripe, method: GET, path: /v1/charges }
  - { name: stripe.get_balance, upstream: stripe, method: GET, path: /v1/balance }
  - { name: stripe.list_payouts, upstream: stripe, method: GET, path: /v1/payouts }
`;

const hourIn = (timeZone: string, at: number): number =>
  Number(new Intl.DateTimeFormat('en-US', { timeZone, hour: '2-digit', hourCycle: 'h23' }).format(at));

/** Waits until neither zone's hour changes in the next few seconds, so rules written now stay true. */
async function awayFromHourBoundaries(): Promise<void> {
  for (;;) {
    const now = Date.now();
    const later = now + 5_000;
    if (hourIn(TZ, now) === hourIn(TZ, later) && hourIn('UTC', now) === hourIn('UTC', later)) return;
    await sleep(1_000);
  }
}

describe('time and history conditions', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let localHour: number;
  let utcHour: number;

  beforeAll(async () => {
    await awayFromHourBoundaries();
    localHour = hourIn(TZ, Date.now());
    utcHour = hourIn('UTC', Date.now());
    upstream = await startFakeUpstream();
    gw = await startStripeGateway(upstream, {
      gateway: { timezone: TZ },
      files: { 'tools.yaml': TOOLS_YAML },
      rules: [
        { id: 'twice-an-hour', tools: ['stripe.list_charges'], when: 'history.calls_last_hour < 2', effect: 'allow' },
        { id: 'first-use-only', tools: ['stripe.get_balance'], when: 'history.first_use', effect: 'allow' },
        { id: 'any-hour', tools: ['stripe.list_payouts'], when: 'time.hour >= 0', effect: 'allow' },
        { id: 'local-hour', upstream: 'stripe', paths: ['/v1/local-hour'], when: `time.hour == ${localHour}`, effect: 'allow' },
        { id: 'utc-hour', upstream: 'stripe', paths: ['/v1/utc-hour'], when: `time.hour == ${utcHour}`, effect: 'allow' },
        {
          id: 'time-fields',
          upstream: 'stripe',
          paths: ['/v1/time-fields'],
          when: 'time.minute >= 0 && time.minute < 60 && time.weekday >= 0 && time.weekday <= 6 && time.date.matches("^[0-9]{4}-[0-9]{2}-[0-9]{2}$") && time.unix > 1700000000',
          effect: 'allow',
        },
      ],
    });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('history.calls_last_hour < 2: allowed twice, then denied; counted per agent', async () => {
    const token = await gw.token({ agent: 'historian' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token }));
    const r = await send(gw, upstream, '/stripe/v1/charges', { token });
    const e = expectRefused(r, 403, 'VALET_ERR_POLICY_DENIED');
    expect(e.rule).toBe('default-deny');
    expect(await audit(gw, r)).toMatchObject({ decision: 'deny', tool: 'stripe.list_charges' });
    // A denied call is not a call: still denied, and another agent starts from zero.
    expectRefused(await send(gw, upstream, '/stripe/v1/charges', { token }), 403, 'VALET_ERR_POLICY_DENIED');
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: await gw.token({ agent: 'newcomer' }) }));
  });

  it('history is per tenant: the same agent id in another tenant starts from zero', async () => {
    const acme = await gw.token({ agent: 'namesake', tenant: 'acme' });
    const globex = await gw.token({ agent: 'namesake', tenant: 'globex' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: acme }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: acme }));
    expectRefused(await send(gw, upstream, '/stripe/v1/charges', { token: acme }), 403, 'VALET_ERR_POLICY_DENIED');
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token: globex }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: globex }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: acme }));
  });

  it('history is per tool: calls of one tool do not count against another', async () => {
    const token = await gw.token({ agent: 'tool-hopper' });
    for (let i = 0; i < 3; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/payouts', { token }));
    expectForwarded(await send(gw, upstream, '/stripe/v1/charges', { token }));
  });

  it('history.first_use is true only on the first call', async () => {
    const token = await gw.token({ agent: 'first-timer' });
    const first = await send(gw, upstream, '/stripe/v1/balance', { token });
    expectForwarded(first);
    expect(await audit(gw, first)).toMatchObject({ decision: 'allow', rule: 'first-use-only' });
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/balance', { token }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
    expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: await gw.token({ agent: 'second-timer' }) }));
  });

  it('history conditions hold under concurrency: of 20 parallel first calls exactly one is the first use', async () => {
    const token = await gw.token({ agent: 'stampede' });
    const before = upstream.requests.length;
    const results = await Promise.all(Array.from({ length: 20 }, () => send(gw, upstream, '/stripe/v1/balance', { token })));
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(results.filter((r) => r.status === 403)).toHaveLength(19);
    expect(upstream.requests.length - before).toBe(1);

    const token2 = await gw.token({ agent: 'stampede-2' });
    const burst = await Promise.all(Array.from({ length: 20 }, () => send(gw, upstream, '/stripe/v1/charges', { token: token2 })));
    expect(burst.filter((r) => r.status === 200)).toHaveLength(2);
  });

  it('time.hour >= 0 evaluates (always true) with a configured time zone', async () => {
    const r = await send(gw, upstream, '/stripe/v1/payouts', { token: await gw.token({ agent: 'clock-watcher' }) });
    expectForwarded(r);
    expect(await audit(gw, r)).toMatchObject({ decision: 'allow', rule: 'any-hour' });
  });

  it('time.hour is the hour in gateway.timezone, not UTC', async () => {
    expect(localHour).not.toBe(utcHour);
    const token = await gw.token({ agent: 'clock-watcher' });
    expectForwarded(await send(gw, upstream, '/stripe/v1/local-hour', { token }));
    expect(expectRefused(await send(gw, upstream, '/stripe/v1/utc-hour', { token }), 403, 'VALET_ERR_POLICY_DENIED').rule).toBe('default-deny');
  });

  it('time.minute, weekday, date and unix are present and well-formed', async () => {
    expectForwarded(await send(gw, upstream, '/stripe/v1/time-fields', { token: await gw.token({ agent: 'clock-watcher' }) }));
  });
});
