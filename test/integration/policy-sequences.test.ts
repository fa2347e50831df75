/**
 * Call sequences within an agent's session: `requires` (a successful earlier call, on the same
 * arguments) and `blocked_by` (an earlier call rules this one out), and counts per session — under
 * concurrency, across sessions, agents and tenants, with the session from the token or a header.
 * Run on both projects: sessions in counters.db (embedded) and in Redis (shared).
 */
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const TOOLS = `tools:
  - { name: gh.get_pr, upstream: gh, method: GET, path: "/repos/{owner}/{repo}/pulls/{number}" }
  - { name: gh.merge_pr, upstream: gh, method: PUT, path: "/repos/{owner}/{repo}/pulls/{number}/merge" }
  - { name: gh.read_secret, upstream: gh, method: GET, path: "/secrets/{name}" }
  - { name: gh.post_comment, upstream: gh, method: POST, path: "/repos/{owner}/{repo}/issues/{number}/comments" }
rate_limits:
  - { id: comments-per-session, tools: [gh.post_comment], limit: 5, window: 1h, key: session }
`;

describe('call sequences in a session', () => {
  let gh: FakeUpstream;
  let gw: TestGateway;
  beforeAll(async () => {
    // Pull request 404 does not exist: reading it fails, which satisfies nothing.
    gh = await startFakeUpstream((req, res) => {
      const missing = req.url.includes('/pulls/404');
      res.writeHead(missing ? 404 : 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(missing ? { message: 'Not Found' } : { ok: true }));
    });
    gw = await startTestGateway({
      upstreams: [{ name: 'gh', origin: gh.origin, credential: { scheme: 'bearer', secret: 'GH_TOKEN' } }],
      rules: [
        { id: 'gh-read', upstream: 'gh', methods: ['GET'], effect: 'allow' },
        { id: 'merge-after-review', tools: ['gh.merge_pr'], requires: [{ tool: 'gh.get_pr', same: ['owner', 'repo', 'number'] }], effect: 'allow' },
        { id: 'no-comments-after-secrets', tools: ['gh.post_comment'], blocked_by: ['gh.read_secret'], effect: 'allow' },
      ],
      gateway: { policy: { sessions: { header: 'valet-session' } } },
      files: { 'tools.yaml': TOOLS },
      env: { GH_TOKEN: 'ghp_sequence_suite_token' },
    });
  });
  afterAll(async () => {
    await gw.close();
    await gh.close();
  });

  interface Reply {
    status: number;
    body: { error?: { code: string; rule?: string; message: string } };
  }
  const call = async (token: string, method: 'GET' | 'PUT' | 'POST', path: string, headers: Record<string, string> = {}): Promise<Reply> => {
    const res = await request(`${gw.url}/gh${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...headers, ...(method !== 'GET' && { 'content-type': 'application/json' }) },
      ...(method !== 'GET' && { body: '{}' }),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Reply['body'] };
  };
  const forwarded = (path: string): number => gh.requests.filter((r) => r.url === path).length;

  it('a merge needs a successful read of the same pull request earlier in the session', async () => {
    const t = await gw.token({ agent: 'merger', tenant: 'acme', session: 's-merge' });
    const refused = await call(t, 'PUT', '/repos/acme/api/pulls/7/merge');
    expect(refused.status).toBe(403);
    expect(refused.body.error).toMatchObject({ code: 'VALET_ERR_POLICY_DENIED', rule: 'merge-after-review' });
    expect(refused.body.error?.message).toContain('requires a successful call of gh.get_pr with the same owner, repo, number earlier in this session');
    // A read the upstream refused satisfies nothing.
    expect((await call(t, 'GET', '/repos/acme/api/pulls/404')).status).toBe(404);
    expect((await call(t, 'PUT', '/repos/acme/api/pulls/404/merge')).status).toBe(403);
    expect((await call(t, 'GET', '/repos/acme/api/pulls/7')).status).toBe(200);
    // 20 merges at once after the read: all pass; a merge of another pull request does not.
    const merges = await Promise.all(Array.from({ length: 20 }, () => call(t, 'PUT', '/repos/acme/api/pulls/7/merge')));
    expect(merges.map((m) => m.status)).toEqual(Array(20).fill(200));
    expect((await call(t, 'PUT', '/repos/acme/api/pulls/8/merge')).status).toBe(403);
    expect((await call(t, 'PUT', '/repos/acme/web/pulls/7/merge')).status).toBe(403);
    expect(forwarded('/repos/acme/api/pulls/7/merge')).toBe(20);
    expect(forwarded('/repos/acme/api/pulls/404/merge') + forwarded('/repos/acme/api/pulls/8/merge')).toBe(0);
    const rows = await gw.auditRows();
    const denied = rows.filter((r) => r.path === '/repos/acme/api/pulls/8/merge');
    expect(denied).toHaveLength(1);
    expect(denied[0]).toMatchObject({ decision: 'deny', rule: 'merge-after-review', agent: 'merger', tenant: 'acme' });
  });

  it('what one session did counts in no other: another session, another agent, another tenant', async () => {
    const reader = await gw.token({ agent: 'merger', tenant: 'acme', session: 's-read' });
    expect((await call(reader, 'GET', '/repos/acme/api/pulls/21')).status).toBe(200);
    const sameSession = await gw.token({ agent: 'merger', tenant: 'acme', session: 's-read' });
    expect((await call(sameSession, 'PUT', '/repos/acme/api/pulls/21/merge')).status).toBe(200);
    for (const other of [
      { agent: 'merger', tenant: 'acme', session: 's-other' },
      { agent: 'other-bot', tenant: 'acme', session: 's-read' },
      { agent: 'merger', tenant: 'globex', session: 's-read' },
      // No sid: the token's jti is its session, a new one.
      { agent: 'merger', tenant: 'acme' },
    ]) {
      expect((await call(await gw.token(other), 'PUT', '/repos/acme/api/pulls/21/merge')).status, JSON.stringify(other)).toBe(403);
    }
    // A token without sid is a session of its own, kept across its calls.
    const single = await gw.token({ agent: 'merger', tenant: 'acme' });
    expect((await call(single, 'GET', '/repos/acme/api/pulls/22')).status).toBe(200);
    expect((await call(single, 'PUT', '/repos/acme/api/pulls/22/merge')).status).toBe(200);
  });

  it('a call blocked by an earlier one is refused however many are sent at once', async () => {
    const t = await gw.token({ agent: 'commenter', tenant: 'acme', session: 's-blocked' });
    expect((await call(t, 'POST', '/repos/acme/api/issues/1/comments')).status).toBe(200);
    expect((await call(t, 'GET', '/secrets/deploy-key')).status).toBe(200);
    const before = forwarded('/repos/acme/api/issues/2/comments');
    const after = await Promise.all(Array.from({ length: 20 }, () => call(t, 'POST', '/repos/acme/api/issues/2/comments')));
    expect(after.map((r) => r.status)).toEqual(Array(20).fill(403));
    expect(after[0]?.body.error).toMatchObject({ rule: 'no-comments-after-secrets' });
    expect(after[0]?.body.error?.message).toContain('blocked by a call of gh.read_secret earlier in this session');
    expect(forwarded('/repos/acme/api/issues/2/comments')).toBe(before);
    // Another session of the same agent is not blocked.
    expect((await call(await gw.token({ agent: 'commenter', tenant: 'acme', session: 's-clean' }), 'POST', '/repos/acme/api/issues/2/comments')).status).toBe(200);
  });

  it('counts per session hold exactly under concurrency, per session and per tenant', async () => {
    const send = async (o: { agent: string; tenant: string; session: string }): Promise<number[]> => {
      const t = await gw.token(o);
      const replies = await Promise.all(Array.from({ length: 12 }, () => call(t, 'POST', '/repos/acme/api/issues/3/comments')));
      return replies.map((r) => r.status);
    };
    const [a, b, c] = await Promise.all([
      send({ agent: 'counter', tenant: 'acme', session: 'c-1' }),
      send({ agent: 'counter', tenant: 'acme', session: 'c-2' }),
      send({ agent: 'counter', tenant: 'globex', session: 'c-1' }),
    ]);
    for (const statuses of [a, b, c]) {
      expect(statuses.filter((s) => s === 200)).toHaveLength(5);
      expect(statuses.filter((s) => s === 429)).toHaveLength(7);
    }
  });

  it('a session named by header stays within the agent: another header value is another session', async () => {
    const t = await gw.token({ agent: 'header-bot', tenant: 'acme' });
    expect((await call(t, 'GET', '/repos/acme/api/pulls/31', { 'valet-session': 'task-a' })).status).toBe(200);
    expect((await call(t, 'PUT', '/repos/acme/api/pulls/31/merge', { 'valet-session': 'task-b' })).status).toBe(403);
    expect((await call(t, 'PUT', '/repos/acme/api/pulls/31/merge', { 'valet-session': 'task-a' })).status).toBe(200);
    // Another agent naming the same session meets nothing of it.
    const other = await gw.token({ agent: 'header-bot-2', tenant: 'acme' });
    expect((await call(other, 'PUT', '/repos/acme/api/pulls/31/merge', { 'valet-session': 'task-a' })).status).toBe(403);
    const bad = await call(t, 'GET', '/repos/acme/api/pulls/31', { 'valet-session': 'a b' });
    expect(bad.status).toBe(400);
    expect(bad.body.error?.code).toBe('VALET_ERR_BAD_REQUEST');
    // The header is Valet's: it is not forwarded.
    expect(gh.requests.some((r) => r.headers['valet-session'] !== undefined)).toBe(false);
  });
});
