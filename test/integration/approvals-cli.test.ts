import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, payGateway, startReceivers, type Receivers } from './approvals-support.js';

describe('valet approvals (a client of the admin API)', () => {
  let upstream: FakeUpstream;
  let rx: Receivers;
  let gw: TestGateway;
  let env: Record<string, string>;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    rx = await startReceivers();
    gw = await startTestGateway(payGateway(upstream, rx));
    env = { VALET_ADMIN_URL: gw.adminUrl, VALET_ADMIN_TOKEN: await gw.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] }) };
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
    await rx?.close();
  });

  it('lists pending approvals, approves with a reason, denies (reason required), reports refusals', async () => {
    const token = await gw.token({ agent: 'cli-bot', tenant: 'acme' });
    const one = (await call(gw.url, '/pay/v1/async/one', { token, body: { n: 1 } })).json.approval.id as string;
    const two = (await call(gw.url, '/pay/v1/async/two', { token, body: { n: 2 } })).json.approval.id as string;

    const list = await runCli(['approvals', 'list'], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^ID\s+STATUS\s+MODE\s+AGENT/);
    expect(list.stdout).toContain(one);
    expect(list.stdout).toContain('POST pay /v1/async/two');

    const approve = await runCli(['approvals', 'approve', one, '--reason', 'checked the invoice'], { env });
    expect(approve.code, approve.stderr).toBe(0);
    expect(approve.stdout.trim()).toBe(`${one} approved by fiona`);
    const shown = (await admin(gw, env['VALET_ADMIN_TOKEN'] as string, `/api/approvals/${one}`)).json.approval;
    expect(shown).toMatchObject({ status: 'approved', resolver: 'fiona', resolution_reason: 'checked the invoice' });

    const noReason = await runCli(['approvals', 'deny', two], { env });
    expect(noReason.code).toBe(2);
    expect(noReason.stderr).toContain('--reason');

    const deny = await runCli(['approvals', 'deny', two, '--reason', 'duplicate', '--format', 'json'], { env });
    expect(deny.code, deny.stderr).toBe(0);
    expect(JSON.parse(deny.stdout)).toMatchObject({ id: two, status: 'denied', resolution_reason: 'duplicate' });

    const again = await runCli(['approvals', 'approve', two], { env });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('VALET_ERR_APPROVAL_RESOLVED');

    const noToken = await runCli(['approvals', 'list'], { env: { VALET_ADMIN_URL: gw.adminUrl } });
    expect(noToken.code).toBe(2);
    expect(noToken.stderr).toContain('VALET_ADMIN_TOKEN');
  }, 90_000);

  it('valet token --admin --group mints an approver token the admin API accepts', async () => {
    const minted = await runCli(['token', '--admin', '--subject', 'gus', '--role', 'approver', '--group', 'finance', '--config', gw.configDir, '--data', gw.dataDir], {
      env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY },
    });
    expect(minted.code, minted.stderr).toBe(0);
    const token = await gw.token({ agent: 'cli-bot-2', tenant: 'acme' });
    const id = (await call(gw.url, '/pay/v1/async/three', { token, body: { n: 3 } })).json.approval.id as string;
    const r = await runCli(['approvals', 'approve', id], { env: { VALET_ADMIN_URL: gw.adminUrl, VALET_ADMIN_TOKEN: minted.stdout.trim() } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`${id} approved by gus`);
  }, 60_000);
});
