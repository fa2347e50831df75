/**
 * The official SDKs, unmodified, pointed at Valet with nothing changed but the base URL and the
 * key (the agent token): reads, writes, streams, pagination, an upstream error and Valet's own
 * refusals, which each SDK must raise as its usual typed error, with Valet's message, code and
 * request id, and must not retry. A fake upstream on 127.0.0.1 checks the real key arrived exactly
 * once and the agent token never did.
 */
import type { ServerResponse } from 'node:http';
import Anthropic from '@anthropic-ai/sdk';
import { Octokit } from '@octokit/rest';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sdkTraffic } from '../helpers/sdk.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const KEYS = { openai: 'sk-proj-real-openai-1f2e3d4c', anthropic: 'sk-ant-real-anthropic-9a8b7c', github: 'ghp_realGithubToken0123456789' };

/** JSON with the upstream's own request id, as the real APIs send it. */
function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

function sse(res: ServerResponse, events: string[]): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'x-request-id': 'req_up_stream' });
  for (const e of events) res.write(e);
  res.end();
}

/** The three APIs' endpoints the tests call, faked on one server. */
function fakeApis(req: RecordedRequest, res: ServerResponse): void {
  const url = new URL(req.url, 'http://x');
  const body = req.body.length > 0 ? (JSON.parse(req.body.toString()) as Record<string, unknown>) : {};
  // OpenAI
  if (url.pathname === '/v1/models' && req.headers['authorization'] !== undefined && !req.headers['anthropic-version']) {
    return json(res, 200, { object: 'list', data: [{ id: 'gpt-x', object: 'model', created: 1, owned_by: 'test' }] }, { 'x-request-id': 'req_up_models' });
  }
  if (url.pathname === '/v1/chat/completions') {
    if (body['model'] === 'missing-model') {
      return json(res, 404, { error: { message: 'The model `missing-model` does not exist', type: 'invalid_request_error', param: null, code: 'model_not_found' } }, { 'x-request-id': 'req_up_404' });
    }
    if (body['stream'] === true) {
      return sse(res, [
        `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'gpt-x', choices: [{ index: 0, delta: { content: 'Hel' }, finish_reason: null }] })}\n\n`,
        `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'gpt-x', choices: [{ index: 0, delta: { content: 'lo' }, finish_reason: 'stop' }] })}\n\n`,
        'data: [DONE]\n\n',
      ]);
    }
    return json(res, 200, { id: 'c0', object: 'chat.completion', created: 1, model: 'gpt-x', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }] }, { 'x-request-id': 'req_up_chat' });
  }
  if (url.pathname === '/v1/batches') {
    const after = url.searchParams.get('after');
    const data = after === null ? [{ id: 'batch_1', object: 'batch' }] : [{ id: 'batch_2', object: 'batch' }];
    return json(res, 200, { object: 'list', data, first_id: data[0]?.id, last_id: data[0]?.id, has_more: after === null });
  }
  if (url.pathname === '/v1/embeddings') return json(res, 200, { object: 'list', data: [{ object: 'embedding', index: 0, embedding: [0.1] }], model: 'e', usage: { prompt_tokens: 1, total_tokens: 1 } });
  // Anthropic
  if (url.pathname === '/v1/messages') {
    if (body['model'] === 'overloaded-model') {
      res.writeHead(529, { 'content-type': 'application/json', 'request-id': 'req_up_529', 'x-should-retry': 'false' });
      return void res.end(JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
    }
    if (body['stream'] === true) {
      return sse(res, [
        `event: message_start\ndata: ${JSON.stringify({ type: 'message_start', message: { id: 'm1', type: 'message', role: 'assistant', model: 'claude-x', content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 3, output_tokens: 0 } } })}\n\n`,
        `event: content_block_start\ndata: ${JSON.stringify({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } })}\n\n`,
        `event: content_block_delta\ndata: ${JSON.stringify({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } })}\n\n`,
        `event: content_block_stop\ndata: ${JSON.stringify({ type: 'content_block_stop', index: 0 })}\n\n`,
        `event: message_delta\ndata: ${JSON.stringify({ type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 1 } })}\n\n`,
        `event: message_stop\ndata: ${JSON.stringify({ type: 'message_stop' })}\n\n`,
      ]);
    }
    return json(res, 200, { id: 'm0', type: 'message', role: 'assistant', model: 'claude-x', content: [{ type: 'text', text: 'Hi' }], stop_reason: 'end_turn', stop_sequence: null, usage: { input_tokens: 3, output_tokens: 1 } }, { 'request-id': 'req_up_msg' });
  }
  if (url.pathname === '/v1/models') {
    const after = url.searchParams.get('after_id');
    const page = after === null ? { data: [{ type: 'model', id: 'claude-a', display_name: 'A', created_at: '2026-01-01T00:00:00Z' }], has_more: true, first_id: 'claude-a', last_id: 'claude-a' } : { data: [{ type: 'model', id: 'claude-b', display_name: 'B', created_at: '2026-01-01T00:00:00Z' }], has_more: false, first_id: 'claude-b', last_id: 'claude-b' };
    return json(res, 200, page, { 'request-id': 'req_up_models' });
  }
  // GitHub
  if (url.pathname === '/repos/acme/widgets/issues' && req.method === 'GET') {
    const page = Number(url.searchParams.get('page') ?? '1');
    // GitHub's Link names its own origin; Valet rewrites it to point back through Valet.
    const link = page === 1 ? { link: `<http://${String(req.headers.host)}/repos/acme/widgets/issues?page=2>; rel="next"` } : {};
    return json(res, 200, [{ id: page, number: page, title: `issue ${page}` }], { 'x-github-request-id': `GH:${page}`, ...link });
  }
  if (url.pathname === '/repos/acme/widgets/issues' && req.method === 'POST') return json(res, 201, { id: 9, number: 9, title: body['title'] });
  if (url.pathname === '/repos/acme/missing') return json(res, 404, { message: 'Not Found', documentation_url: 'https://docs.github.com/rest' }, { 'x-github-request-id': 'GH:404' });
  json(res, 404, { error: 'no fake for this path' });
}

describe('official SDKs through Valet', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  const { fetch: countingFetch, sentTo, received } = sdkTraffic(() => upstream);

  /** The real key exactly once, in the credential's header; the agent token nowhere. */
  function expectKeyOnce(r: RecordedRequest, header: string, value: string): void {
    expect(headerValues(r, header)).toEqual([value]);
    const all = JSON.stringify(r.rawHeaders) + r.url + r.body.toString();
    expect(all.split(KEYS.openai).length + all.split(KEYS.anthropic).length + all.split(KEYS.github).length - 3).toBe(1);
    expect(all).not.toContain(token.split('.')[2] as string);
  }

  beforeAll(async () => {
    upstream = await startFakeUpstream(fakeApis);
    gw = await startTestGateway({
      // The shipped presets, with the origin pointed at the fake (and one default changed).
      upstreams: [
        { name: 'openai', preset: 'openai', origin: upstream.origin },
        // Only for a request without one: the SDK's own version is never replaced.
        { name: 'anthropic', preset: 'anthropic', origin: upstream.origin, default_headers: { 'anthropic-version': '2099-01-01' } },
        { name: 'github', preset: 'github', origin: upstream.origin },
      ],
      rules: [
        { id: 'no-files', upstream: 'openai', paths: ['/v1/files', '/v1/files/**'], effect: 'deny', reason: 'agents may not read uploaded files' },
        { id: 'no-batches', upstream: 'anthropic', paths: ['/v1/messages/batches', '/v1/messages/batches/**'], effect: 'deny', reason: 'batches are not for agents' },
        { id: 'no-repo-delete', upstream: 'github', methods: ['DELETE'], paths: ['/repos/*/*'], effect: 'deny', reason: 'repositories are never deleted by agents' },
        { id: 'allow-rest', effect: 'allow' },
      ],
      files: {
        'limits.yaml': 'rate_limits:\n  - id: one-embedding-an-hour\n    upstream: openai\n    paths: [/v1/embeddings]\n    limit: 1\n    window: 1h\n    key: agent\n',
      },
      env: { OPENAI_API_KEY: KEYS.openai, ANTHROPIC_API_KEY: KEYS.anthropic, GITHUB_TOKEN: KEYS.github },
    });
    token = await gw.token({ agent: 'sdk-agent', tenant: 'acme' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  describe('openai', () => {
    const client = (): OpenAI => new OpenAI({ apiKey: token, baseURL: `${gw.url}/openai/v1`, maxRetries: 3, fetch: countingFetch });

    it('reads, writes and streams; the upstream sees the real key once and its own request id reaches the SDK', async () => {
      const models = await client().models.list();
      expect(models.data.map((m) => m.id)).toEqual(['gpt-x']);
      const chat = await client().chat.completions.create({ model: 'gpt-x', messages: [{ role: 'user', content: 'hi' }] }).withResponse();
      expect(chat.data.choices[0]?.message.content).toBe('Hi');
      expect(chat.request_id).toBe('req_up_chat');
      let text = '';
      for await (const chunk of await client().chat.completions.create({ model: 'gpt-x', messages: [{ role: 'user', content: 'hi' }], stream: true })) text += chunk.choices[0]?.delta.content ?? '';
      expect(text).toBe('Hello');
      for (const r of received('/v1/chat/completions')) expectKeyOnce(r, 'authorization', `Bearer ${KEYS.openai}`);
    });

    it('pages a cursor list', async () => {
      const ids: string[] = [];
      for await (const b of client().batches.list()) ids.push(b.id);
      expect(ids).toEqual(['batch_1', 'batch_2']);
      expect(received('/v1/batches').map((r) => new URL(r.url, 'http://x').searchParams.get('after'))).toEqual([null, 'batch_1']);
    });

    it('an upstream error is the SDK’s typed error with the upstream’s message and request id', async () => {
      const err = await client().chat.completions.create({ model: 'missing-model', messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.NotFoundError);
      expect((err as InstanceType<typeof OpenAI.NotFoundError>).message).toContain('does not exist');
      expect((err as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('model_not_found');
      expect((err as InstanceType<typeof OpenAI.NotFoundError>).requestID).toBe('req_up_404');
    });

    it('a denial is PermissionDeniedError with Valet’s message, code and request id, sent once (no retry)', async () => {
      const before = sentTo('/openai/v1/files');
      const err = await client().files.list().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.PermissionDeniedError);
      const e = err as InstanceType<typeof OpenAI.PermissionDeniedError>;
      expect(e.status).toBe(403);
      expect(e.message).toBe('403 Denied by rule no-files: agents may not read uploaded files');
      expect(e.code).toBe('VALET_ERR_POLICY_DENIED');
      expect(e.requestID).toMatch(/^[0-9a-f-]{36}$/);
      expect(e.headers?.get('valet-request-id')).toBe(e.requestID);
      expect(sentTo('/openai/v1/files') - before).toBe(1);
      expect(received('/v1/files')).toHaveLength(0);
    });

    it('a rate limit beyond the retry-after cap is RateLimitError at once, not retried (an hour’s wait would hang the SDK)', async () => {
      await client().embeddings.create({ model: 'e', input: 'one' });
      const before = sentTo('/openai/v1/embeddings');
      const started = Date.now();
      const err = await client().embeddings.create({ model: 'e', input: 'two' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.RateLimitError);
      expect((err as InstanceType<typeof OpenAI.RateLimitError>).code).toBe('VALET_ERR_RATE_LIMITED');
      expect(sentTo('/openai/v1/embeddings') - before).toBe(1);
      expect(Date.now() - started).toBeLessThan(5_000);
    });

    it('a missing token is AuthenticationError, not retried', async () => {
      const before = sentTo('/openai/v1/models');
      const anonymous = new OpenAI({ apiKey: 'not-a-valet-token', baseURL: `${gw.url}/openai/v1`, maxRetries: 3, fetch: countingFetch });
      const err = await anonymous.models.list().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OpenAI.AuthenticationError);
      expect((err as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('VALET_ERR_TOKEN_INVALID');
      expect(sentTo('/openai/v1/models') - before).toBe(1);
    });
  });

  describe('@anthropic-ai/sdk', () => {
    const client = (): Anthropic => new Anthropic({ apiKey: token, baseURL: `${gw.url}/anthropic`, maxRetries: 3, fetch: countingFetch });

    it('writes, streams and pages; the SDK’s anthropic-version arrives unchanged and the real key once', async () => {
      const msg = await client().messages.create({ model: 'claude-x', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }).withResponse();
      expect(msg.data.content[0]).toMatchObject({ type: 'text', text: 'Hi' });
      expect(msg.request_id).toBe('req_up_msg');
      const stream = client().messages.stream({ model: 'claude-x', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] });
      expect(await stream.finalText()).toBe('Hello');
      const ids: string[] = [];
      for await (const m of client().models.list()) ids.push(m.id);
      expect(ids).toEqual(['claude-a', 'claude-b']);
      for (const r of received('/v1/messages')) {
        expectKeyOnce(r, 'x-api-key', KEYS.anthropic);
        expect(headerValues(r, 'anthropic-version')).toEqual(['2026-10-21']); // the SDK's own
      }
    });

    it('a request without anthropic-version gets the upstream’s default_headers value', async () => {
      const res = await fetch(`${gw.url}/anthropic/v1/messages`, { method: 'POST', headers: { 'x-api-key': token, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'claude-x', max_tokens: 1, messages: [] }) });
      expect(res.status).toBe(200);
      expect(headerValues(received('/v1/messages').at(-1)!, 'anthropic-version')).toEqual(['2099-01-01']);
    });

    it('an upstream error passes through: the SDK’s own error class, message and request id', async () => {
      const err = await client().messages.create({ model: 'overloaded-model', max_tokens: 1, messages: [{ role: 'user', content: 'x' }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(Anthropic.APIError);
      expect((err as InstanceType<typeof Anthropic.APIError>).status).toBe(529);
      expect((err as InstanceType<typeof Anthropic.APIError>).message).toContain('Overloaded');
      expect((err as InstanceType<typeof Anthropic.APIError>).requestID).toBe('req_up_529');
    });

    it('a denial is PermissionDeniedError with Valet’s message and request id, sent once', async () => {
      const before = sentTo('/anthropic/v1/messages/batches');
      const err = await client().messages.batches.list().then(
        (p) => p,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Anthropic.PermissionDeniedError);
      const e = err as InstanceType<typeof Anthropic.PermissionDeniedError>;
      expect(e.message).toContain('Denied by rule no-batches: batches are not for agents');
      expect(e.message).toContain('permission_error');
      expect(e.requestID).toMatch(/^[0-9a-f-]{36}$/);
      expect(e.headers?.get('valet-request-id')).toBe(e.requestID);
      expect(sentTo('/anthropic/v1/messages/batches') - before).toBe(1);
    });
  });

  describe('@octokit/rest', () => {
    const client = (): Octokit => new Octokit({ auth: token, baseUrl: `${gw.url}/github`, request: { fetch: countingFetch } });

    it('reads with pagination and writes; the upstream sees the real token once', async () => {
      const octokit = client();
      const issues = await octokit.paginate(octokit.rest.issues.listForRepo, { owner: 'acme', repo: 'widgets' });
      expect(issues.map((i) => i.number)).toEqual([1, 2]);
      const created = await octokit.rest.issues.create({ owner: 'acme', repo: 'widgets', title: 'from an agent' });
      expect(created.data.number).toBe(9);
      for (const r of received('/repos/acme/widgets/issues')) expectKeyOnce(r, 'authorization', `Bearer ${KEYS.github}`);
    });

    it('an upstream 404 and a denial are RequestErrors with their messages; the denial is sent once', async () => {
      const missing = await client().rest.repos.get({ owner: 'acme', repo: 'missing' }).catch((e: unknown) => e);
      expect(missing).toMatchObject({ name: 'HttpError', status: 404 });
      expect((missing as Error).message).toContain('Not Found');
      const before = sentTo('/github/repos/acme/widgets');
      const denied = await client().rest.repos.delete({ owner: 'acme', repo: 'widgets' }).catch((e: unknown) => e);
      expect(denied).toMatchObject({ name: 'HttpError', status: 403 });
      expect((denied as Error).message).toContain('Denied by rule no-repo-delete: repositories are never deleted by agents');
      expect(sentTo('/github/repos/acme/widgets') - before).toBe(1);
      expect(upstream.requests.filter((r) => r.method === 'DELETE')).toHaveLength(0);
    });
  });
});
