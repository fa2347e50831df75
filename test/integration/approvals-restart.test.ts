import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openApprovalBackend } from '../../gateway/approvals/backend.js';
import { newApprovalId } from '../../gateway/approvals/service.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { admin, call, payGateway, startReceivers, waitForApproval, type Receivers } from './approvals-support.js';

describe('approvals across a restart', () => {
  let upstream: FakeUpstream;
  let rx: Receivers;
  let first: TestGateway;
  let second: TestGateway | undefined;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    rx = await startReceivers();
    first = await startTestGateway(payGateway(upstream, rx));
  });
  afterAll(async () => {
    await first?.close();
    await second?.close();
    await upstream?.close();
    await rx?.close();
  });

  it('held requests are answered and aborted at shutdown; async approvals survive; nothing runs twice or late', async () => {
    const token = await first.token({ agent: 'restart-bot', tenant: 'acme' });
    const approver = await first.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
    const pendingAsync = (await call(first.url, '/pay/v1/async/a1', { token, body: { n: 1 } })).json.approval.id as string;
    const approvedAsync = (await call(first.url, '/pay/v1/async/a2', { token, body: { n: 2 } })).json.approval.id as string;
    expect((await admin(first, approver, `/api/approvals/${approvedAsync}/approve`, { reason: 'before restart' })).status).toBe(200);

    // A held request is waiting when the gateway stops: it is answered (503) and its approval aborted.
    const held = call(first.url, '/pay/v1/hold/h1', { token, body: { n: 3 } });
    const h1 = await waitForApproval(first, approver, (a) => a.path === '/v1/hold/h1' && a.status === 'pending');
    const closing = first.close({ keep: true });
    const answer = await held;
    await closing;
    expect(answer.status).toBe(503);
    expect(answer.json.error.code).toBe('VALET_ERR_SHUTTING_DOWN');

    // A crash leaves a pending held approval behind (nobody could answer it), recorded as this instance's.
    const store = await openApprovalBackend({ dataDir: first.dataDir, postgresUrl: first.backendEnv['VALET_POSTGRES_URL'], env: first.backendEnv });
    const crashed = newApprovalId();
    const now = Date.now();
    await store.insert(
      {
        id: crashed,
        requestId: 'crashed-request',
        mode: 'hold',
        status: 'pending',
        agent: 'restart-bot',
        tenant: 'acme',
        user: null,
        upstream: 'pay',
        tool: null,
        method: 'POST',
        path: '/v1/hold/h2',
        args: {},
        argsNote: null,
        rule: 'hold-transfers',
        reason: 'transfers need a person',
        group: 'finance',
        timeoutMs: 20_000,
        createdAt: now,
        expiresAt: now + 20_000,
        digest: '0'.repeat(64),
        resolver: null,
        resolutionReason: null,
        resolvedAt: null,
        consumedAt: null,
        consumedRequestId: null,
        policyVersion: null,
      },
      { perAgent: 100, perTenant: 100 },
      now,
    );
    await store.close();

    second = await startTestGateway({ ...payGateway(upstream, rx), root: first.root });
    const approver2 = await second.adminToken(['approver'], { subject: 'fiona', groups: ['finance'] });
    const token2 = await second.token({ agent: 'restart-bot', tenant: 'acme' });
    const get = async (id: string): Promise<Record<string, unknown>> => (await admin(second as TestGateway, approver2, `/api/approvals/${id}`)).json.approval;

    expect(await get(h1.id)).toMatchObject({ status: 'aborted', resolution_reason: 'the gateway is shutting down' });
    expect(await get(crashed)).toMatchObject({ status: 'aborted', resolution_reason: 'the gateway restarted while the request was held' });
    expect((await admin(second, approver2, `/api/approvals/${crashed}/approve`, {})).status).toBe(409);
    expect(await get(pendingAsync)).toMatchObject({ status: 'pending' });
    expect(await get(approvedAsync)).toMatchObject({ status: 'approved', resolver: 'fiona' });

    // The async approvals work on the new process, once each.
    expect((await admin(second, approver2, `/api/approvals/${pendingAsync}/approve`, {})).status).toBe(200);
    const r1 = await call(second.url, '/pay/v1/async/a1', { token: token2, body: { n: 1 }, headers: { 'valet-approval': pendingAsync } });
    expect(r1.status, r1.text).toBe(200);
    const r2 = await call(second.url, '/pay/v1/async/a2', { token: token2, body: { n: 2 }, headers: { 'valet-approval': approvedAsync } });
    expect(r2.status, r2.text).toBe(200);
    expect((await call(second.url, '/pay/v1/async/a2', { token: token2, body: { n: 2 }, headers: { 'valet-approval': approvedAsync } })).status).toBe(409);
    expect(upstream.requests.map((r) => r.url).sort()).toEqual(['/v1/async/a1', '/v1/async/a2']);

    // The audit log of both processes is one log; the shutdown refusal is in it.
    const rows = (await second.auditRows());
    expect(rows.find((r) => r.approval_id === h1.id && r.error_code === 'VALET_ERR_SHUTTING_DOWN')).toMatchObject({ status: 503 });
    expect(rows.find((r) => r.request_id === r2.headers['valet-request-id'])).toMatchObject({ approval_id: approvedAsync, approver: 'fiona', approval_reason: 'before restart' });
  });
});
