/**
 * More official clients, unmodified, through Valet on their presets: @notionhq/client (Bearer, its
 * own Notion-Version, cursor pagination), @linear/sdk (a bare API key as the whole Authorization,
 * GraphQL) and @google/genai (x-goog-api-key, a `model:method` path, a stream). Each reads, writes
 * and meets a Valet refusal it raises as its usual error, sent once.
 */
import type { ServerResponse } from 'node:http';
import { GoogleGenAI } from '@google/genai';
import { LinearClient } from '@linear/sdk';
import { APIErrorCode, APIResponseError, Client as NotionClient } from '@notionhq/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { sdkTraffic } from '../helpers/sdk.js';
import { headerValues, startFakeUpstream, type FakeUpstream, type RecordedRequest } from '../helpers/upstream.js';

const KEYS = { notion: 'secret_realNotionToken_8a7b6c', linear: 'lin_api_realLinearKey_5d4e3f', gemini: 'AIzaRealGeminiKey_2b1c0d9e' };

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function fakeApis(req: RecordedRequest, res: ServerResponse): void {
  const url = new URL(req.url, 'http://x');
  const body = req.body.length > 0 ? (JSON.parse(req.body.toString()) as Record<string, unknown>) : {};
  // Notion
  if (url.pathname === '/v1/search' && req.method === 'POST') {
    const second = body['start_cursor'] === 'c2';
    return json(res, 200, { object: 'list', results: [{ object: 'page', id: second ? 'p2' : 'p1' }], next_cursor: second ? null : 'c2', has_more: !second, type: 'page_or_database', page_or_database: {} });
  }
  if (url.pathname === '/v1/pages/missing') return json(res, 404, { object: 'error', status: 404, code: 'object_not_found', message: 'Could not find page with ID: missing.' });
  if (url.pathname === '/v1/pages' && req.method === 'POST') return json(res, 200, { object: 'page', id: 'p-new', properties: {} });
  // Linear (GraphQL)
  if (url.pathname === '/graphql') {
    const query = String(body['query'] ?? '');
    if (query.includes('issue(id')) return json(res, 200, { data: null, errors: [{ message: 'Entity not found: Issue', extensions: { type: 'invalid input', code: 'INPUT_ERROR', userPresentableMessage: 'Issue not found' } }] });
    if (query.includes('viewer')) return json(res, 200, { data: { viewer: { id: 'u1', name: 'Agent', email: 'agent@example.com' } } });
    return json(res, 200, { data: {} });
  }
  // Gemini
  if (url.pathname === '/v1beta/models/gemini-x:generateContent') {
    return json(res, 200, { candidates: [{ content: { role: 'model', parts: [{ text: 'Hi' }] }, finishReason: 'STOP', index: 0 }], usageMetadata: { promptTokenCount: 1, candidatesTokenCount: 1, totalTokenCount: 2 } });
  }
  if (url.pathname === '/v1beta/models/missing:generateContent') return json(res, 404, { error: { code: 404, message: 'models/missing is not found', status: 'NOT_FOUND' } });
  if (url.pathname === '/v1beta/models/gemini-x:streamGenerateContent') {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const t of ['Hel', 'lo']) res.write(`data: ${JSON.stringify({ candidates: [{ content: { role: 'model', parts: [{ text: t }] }, index: 0 }] })}\r\n\r\n`);
    return void res.end();
  }
  json(res, 404, { error: { code: 404, message: `no fake for ${req.method} ${url.pathname}`, status: 'NOT_FOUND' } });
}

describe('workspace and model SDKs through Valet presets', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let token: string;
  const { fetch: countingFetch, sentTo, received } = sdkTraffic(() => upstream);

  beforeAll(async () => {
    upstream = await startFakeUpstream(fakeApis);
    gw = await startTestGateway({
      upstreams: [
        { name: 'notion', preset: 'notion', origin: upstream.origin },
        { name: 'linear', preset: 'linear', origin: upstream.origin },
        { name: 'gemini', preset: 'gemini', origin: upstream.origin },
      ],
      rules: [
        { id: 'no-deletes', upstream: 'notion', methods: ['DELETE'], effect: 'deny', reason: 'agents archive, they do not delete' },
        { id: 'no-files', upstream: 'gemini', paths: ['/upload/**', '/v1beta/files', '/v1beta/files/**'], effect: 'deny', reason: 'no uploads' },
        { id: 'no-mutations', upstream: 'linear', when: "has(args.query) && args.query.contains('mutation')", effect: 'deny', reason: 'read-only on Linear' },
        { id: 'ok', effect: 'allow' },
      ],
      files: { 'tools-linear.yaml': 'tools:\n  - name: linear.query\n    upstream: linear\n    method: POST\n    path: /graphql\n    args: { query: string }\n' },
      env: { NOTION_TOKEN: KEYS.notion, LINEAR_API_KEY: KEYS.linear, GEMINI_API_KEY: KEYS.gemini },
    });
    token = await gw.token({ agent: 'workspace-bot', tenant: 'acme' });
  });
  afterAll(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('notion: pages through a search, writes a page; the SDK’s Notion-Version is kept and the real token sent once', async () => {
    const notion = new NotionClient({ auth: token, baseUrl: `${gw.url}/notion`, fetch: countingFetch });
    const pages: string[] = [];
    let cursor: string | undefined;
    do {
      const r = await notion.search({ ...(cursor !== undefined && { start_cursor: cursor }) });
      pages.push(...r.results.map((p) => p.id));
      cursor = r.next_cursor ?? undefined;
    } while (cursor !== undefined);
    expect(pages).toEqual(['p1', 'p2']);
    expect((await notion.pages.create({ parent: { page_id: 'p1' }, properties: {} })).id).toBe('p-new');
    for (const r of [...received('/v1/search'), ...received('/v1/pages')]) {
      expect(headerValues(r, 'authorization')).toEqual([`Bearer ${KEYS.notion}`]);
      expect(headerValues(r, 'notion-version')).toHaveLength(1);
      expect(headerValues(r, 'notion-version')[0]).not.toBe('');
    }
  });

  it('notion, linear, gemini: an upstream error is each SDK’s own error with the upstream’s message', async () => {
    const notion = new NotionClient({ auth: token, baseUrl: `${gw.url}/notion`, fetch: countingFetch });
    const missing = await notion.pages.retrieve({ page_id: 'missing' }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(APIResponseError);
    expect(missing).toMatchObject({ code: APIErrorCode.ObjectNotFound, message: 'Could not find page with ID: missing.' });
    const linear = new LinearClient({ apiKey: token, apiUrl: `${gw.url}/linear/graphql` });
    const issue = await linear.issue('nope').catch((e: unknown) => e);
    expect((issue as Error).message).toContain('Entity not found: Issue');
    const ai = new GoogleGenAI({ apiKey: token, httpOptions: { baseUrl: `${gw.url}/gemini` } });
    const model = await ai.models.generateContent({ model: 'missing', contents: 'x' }).catch((e: unknown) => e);
    expect(model).toMatchObject({ name: 'ApiError', status: 404 });
    expect((model as Error).message).toContain('models/missing is not found');
  });

  it('notion: a denial is APIResponseError restricted_resource with Valet’s message, sent once', async () => {
    const notion = new NotionClient({ auth: token, baseUrl: `${gw.url}/notion`, fetch: countingFetch });
    const before = sentTo('/notion/v1/blocks/b1');
    const err = await notion.blocks.delete({ block_id: 'b1' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(APIResponseError);
    expect((err as APIResponseError).code).toBe(APIErrorCode.RestrictedResource);
    expect((err as APIResponseError).message).toBe('Denied by rule no-deletes: agents archive, they do not delete');
    expect(sentTo('/notion/v1/blocks/b1') - before).toBe(1);
    expect(upstream.requests.filter((r) => r.method === 'DELETE')).toHaveLength(0);
  });

  it('linear: the API key as the whole Authorization value; a query reads, a mutation is refused once', async () => {
    const linear = new LinearClient({ apiKey: token, apiUrl: `${gw.url}/linear/graphql` });
    const viewer = await linear.viewer;
    expect(viewer.name).toBe('Agent');
    expect(headerValues(received('/graphql').at(-1)!, 'authorization')).toEqual([KEYS.linear]);
    const before = received('/graphql').length;
    const err = await linear.createIssue({ teamId: 't1', title: 'from an agent' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toContain('Denied by rule no-mutations: read-only on Linear');
    expect(received('/graphql').length).toBe(before);
  });

  it('gemini: generates and streams with x-goog-api-key; a refused upload is the SDK’s ApiError', async () => {
    const ai = new GoogleGenAI({ apiKey: token, httpOptions: { baseUrl: `${gw.url}/gemini` } });
    const r = await ai.models.generateContent({ model: 'gemini-x', contents: 'hi' });
    expect(r.text).toBe('Hi');
    let text = '';
    for await (const chunk of await ai.models.generateContentStream({ model: 'gemini-x', contents: 'hi' })) text += chunk.text ?? '';
    expect(text).toBe('Hello');
    for (const q of [...received('/v1beta/models/gemini-x:generateContent'), ...received('/v1beta/models/gemini-x:streamGenerateContent')]) {
      expect(headerValues(q, 'x-goog-api-key')).toEqual([KEYS.gemini]);
      expect(JSON.stringify(q.rawHeaders) + q.url).not.toContain(token.split('.')[2] as string);
    }
    const err = await ai.files.list().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ name: 'ApiError', status: 403 });
    expect((err as Error).message).toContain('Denied by rule no-files: no uploads');
  });

  it('the agent token never reached the upstream, in any request of any client', () => {
    expect(upstream.requests.length).toBeGreaterThan(6);
    for (const r of upstream.requests) expect(JSON.stringify(r.rawHeaders) + r.url + r.body.toString('latin1'), r.url).not.toContain(token.split('.')[2] as string);
  });
});
