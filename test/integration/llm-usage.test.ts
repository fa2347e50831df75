/**
 * LLM usage metering and usage budgets, end to end: the official OpenAI, Anthropic and Gemini SDKs
 * pointed at Valet, a fake provider on 127.0.0.1 streaming realistic SSE (usage in the last chunk,
 * in message_delta, events split across TCP writes). What the audit row records must equal what
 * the fake reported; budgets reserve before forwarding and settle after, so concurrent calls never
 * overshoot; cut streams, errors after headers and unknown models are charged as docs/llm.md says.
 */
import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import OpenAI from 'openai';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { DEFAULT_LLM } from '../../gateway/config/types.js';
import { LlmMetering } from '../../gateway/llm/metering.js';
import { METERED_ROUTES, meteredRoute } from '../../gateway/llm/routes.js';
import { presets } from '../../gateway/config/presets.js';
import type { AuditRow } from '../../gateway/audit/port.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeLlm, type FakeLlm, type FakeUsage } from '../helpers/llm.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const KEYS = { OPENAI_API_KEY: 'sk-real-openai-0a1b2c3d', ANTHROPIC_API_KEY: 'sk-ant-real-4e5f6a', GEMINI_API_KEY: 'AIza-real-gemini-7b8c9d', COHERE_API_KEY: 'co-real-0e1f2a' };
const HOOK_SECRET = 'hook-secret-0123456789abcdef';

let fake: FakeLlm;
let hooks: FakeUpstream;
const gateways: TestGateway[] = [];
beforeAll(async () => {
  fake = await startFakeLlm();
  hooks = await startFakeUpstream((_req, res) => {
    res.writeHead(204);
    res.end();
  });
});
afterEach(async () => {
  for (const g of gateways.splice(0)) await g.close();
  fake.behaviour = { usage: { input: 1200, cached: 200, cacheWrite: 0, output: 12, reasoning: 0 } };
  hooks.requests.length = 0;
  fake.requests.length = 0;
});
afterAll(async () => {
  await fake.close();
  await hooks.close();
});

interface Start {
  budgets?: unknown[];
  llm?: Record<string, unknown>;
}

async function start(o: Start = {}): Promise<TestGateway> {
  const gw = await startTestGateway({
    upstreams: ['openai', 'anthropic', 'gemini', 'cohere'].map((name) => ({ name, preset: name, origin: fake.origin })),
    rules: [{ id: 'ok', effect: 'allow' }],
    gateway: {
      approvals: { channels: [{ type: 'webhook', url: `${hooks.origin}/hooks`, secret_env: 'HOOK_SECRET', max_attempts: 1 }] },
      ...(o.llm !== undefined && { llm: o.llm }),
    },
    env: { ...KEYS, HOOK_SECRET },
    ...(o.budgets !== undefined && { files: { 'budgets.yaml': stringify({ budgets: o.budgets }) } }),
  });
  gateways.push(gw);
  return gw;
}

const openai = (gw: TestGateway, token: string): OpenAI => new OpenAI({ baseURL: `${gw.url}/openai/v1`, apiKey: token, maxRetries: 0 });
const usageOf = (row: AuditRow): Record<string, unknown> => JSON.parse(row.usage ?? 'null') as Record<string, unknown>;
/** The newest finished row, once its request is over (a stream's row is completed when its relay ends). */
async function lastRow(gw: TestGateway): Promise<AuditRow> {
  const until = Date.now() + 5_000;
  for (;;) {
    await gw.gateway.audit.flush();
    const all: AuditRow[] = [];
    for await (const row of gw.gateway.auditLog.iterate({})) all.push(row);
    if ((all.length > 0 && all.every((r) => r.status !== 0)) || Date.now() > until) return (await gw.auditRows()).at(-1) as AuditRow;
    await new Promise((r) => setTimeout(r, 20));
  }
}
const total = (u: FakeUsage): number => u.input + u.cached + u.cacheWrite + u.output + u.reasoning;

/** The reservation Valet makes for a chat call, computed the way the gateway does. */
function reservation(path: string, body: unknown, family: 'openai' | 'anthropic' = 'openai'): { tokens: number; cost: number } {
  const route = meteredRoute(family, 'POST', path);
  if (route === undefined) throw new Error(`not metered: ${path}`);
  return new LlmMetering(DEFAULT_LLM).plan(route, body).reserve;
}

describe('usage recorded equals what the provider reported', () => {
  it('OpenAI chat, whole: tokens by kind and their cost at the table price', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 1000, cached: 500, cacheWrite: 0, output: 30, reasoning: 20 } };
    const r = await openai(gw, await gw.token()).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 200 });
    expect(r.usage?.prompt_tokens).toBe(1500);
    const row = await lastRow(gw);
    expect(row.model).toBe('gpt-4o-mini');
    expect(row.tokens).toBe(1550);
    expect(usageOf(row)).toMatchObject({ input: 1000, cached: 500, cache_write: 0, output: 30, reasoning: 20, source: 'reported', complete: true, priced: 'table' });
    // gpt-4o-mini: 0.15 input, 0.075 cached, 0.60 output (reasoning billed as output), per million.
    expect(row.cost).toBeCloseTo((1000 * 0.15 + 500 * 0.075 + 50 * 0.6) / 1e6, 12);
  });

  it('OpenAI chat, streamed without include_usage: Valet asks for usage and takes the extra chunk out again', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 40, cached: 0, cacheWrite: 0, output: 25, reasoning: 0 }, pauseMs: 2 };
    const chunks = [];
    for await (const c of await openai(gw, await gw.token()).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Count' }], stream: true, max_tokens: 100 })) chunks.push(c);
    // The agent sees exactly the chunks it would have without Valet: none is a usage-only chunk.
    expect(chunks.every((c) => c.choices.length === 1)).toBe(true);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(Array.from({ length: 25 }, (_, i) => `w${i} `).join(''));
    const sent = JSON.parse(fake.requests.at(-1)!.body.toString()) as { stream_options?: { include_usage?: boolean } };
    expect(sent.stream_options?.include_usage).toBe(true);
    const row = await lastRow(gw);
    expect(row.tokens).toBe(65);
    expect(usageOf(row)).toMatchObject({ input: 40, output: 25, source: 'reported', complete: true });
  });

  it('OpenAI chat, streamed with include_usage asked for: the usage chunk reaches the agent', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 40, cached: 8, cacheWrite: 0, output: 5, reasoning: 0 } };
    const chunks = [];
    for await (const c of await openai(gw, await gw.token()).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], stream: true, stream_options: { include_usage: true } })) chunks.push(c);
    expect(chunks.at(-1)?.usage?.prompt_tokens).toBe(48);
    expect(usageOf(await lastRow(gw))).toMatchObject({ input: 40, cached: 8, output: 5, source: 'reported' });
  });

  it('OpenAI Responses (streamed) and embeddings', async () => {
    const gw = await start();
    const client = openai(gw, await gw.token());
    fake.behaviour = { usage: { input: 70, cached: 30, cacheWrite: 0, output: 9, reasoning: 64 } };
    const events = [];
    for await (const e of await client.responses.create({ model: 'o4-mini', input: 'Think', stream: true })) events.push(e.type);
    expect(events.at(-1)).toBe('response.completed');
    expect(usageOf(await lastRow(gw))).toMatchObject({ input: 70, cached: 30, output: 9, reasoning: 64, source: 'reported', complete: true });
    fake.behaviour = { usage: { input: 17, cached: 0, cacheWrite: 0, output: 0, reasoning: 0 } };
    await client.embeddings.create({ model: 'text-embedding-3-small', input: 'hello world' });
    const row = await lastRow(gw);
    expect(row.tokens).toBe(17);
    expect(row.cost).toBeCloseTo((17 * 0.02) / 1e6, 12);
  });

  it('Anthropic messages, streamed, with cache reads and writes', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 300, cached: 4000, cacheWrite: 1000, output: 18, reasoning: 0 } };
    const client = new Anthropic({ baseURL: `${gw.url}/anthropic`, apiKey: await gw.token(), maxRetries: 0 });
    const stream = client.messages.stream({ model: 'claude-sonnet-4-20250514', max_tokens: 256, messages: [{ role: 'user', content: 'Hello' }] });
    const message = await stream.finalMessage();
    expect(message.usage.output_tokens).toBe(18);
    const row = await lastRow(gw);
    expect(row.model).toBe('claude-sonnet-4-20250514');
    expect(usageOf(row)).toMatchObject({ input: 300, cached: 4000, cache_write: 1000, output: 18, source: 'reported', complete: true });
    expect(row.tokens).toBe(5318);
    // claude-sonnet-4: 3 input, 0.30 cache read, 3.75 cache write, 15 output.
    expect(row.cost).toBeCloseTo((300 * 3 + 4000 * 0.3 + 1000 * 3.75 + 18 * 15) / 1e6, 12);
  });

  it('Gemini generateContentStream and generateContent', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 90, cached: 10, cacheWrite: 0, output: 14, reasoning: 33 } };
    const ai = new GoogleGenAI({ apiKey: await gw.token(), httpOptions: { baseUrl: `${gw.url}/gemini` } });
    let text = '';
    for await (const chunk of await ai.models.generateContentStream({ model: 'gemini-2.5-flash', contents: 'Hi' })) text += chunk.text ?? '';
    expect(text.split(' ').filter(Boolean)).toHaveLength(14);
    expect(usageOf(await lastRow(gw))).toMatchObject({ input: 90, cached: 10, output: 14, reasoning: 33, source: 'reported' });
    await ai.models.generateContent({ model: 'gemini-2.5-flash', contents: 'Hi' });
    const row = await lastRow(gw);
    expect(row.model).toBe('gemini-2.5-flash');
    expect(row.tokens).toBe(147);
  });

  it('a prompt with a 3 MB image is metered (read whole above max_body_bytes), the image at its allowance', async () => {
    const gw = await start({ budgets: [{ id: 'b', upstream: 'openai', usage: 'tokens', key: 'agent', window: '1h', limit: 100_000 }] });
    fake.behaviour = { usage: { input: 900, cached: 0, cacheWrite: 0, output: 3, reasoning: 0 } };
    const image = `data:image/png;base64,${Buffer.alloc(3 << 20, 7).toString('base64')}`;
    const content = [{ type: 'text' as const, text: 'What is this?' }, { type: 'image_url' as const, image_url: { url: image } }];
    await openai(gw, await gw.token()).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content }], max_tokens: 50 });
    expect(fake.requests.at(-1)?.body.length).toBeGreaterThan(4 << 20);
    const row = await lastRow(gw);
    expect(row.tokens).toBe(903);
    const reserved = (usageOf(row)['reserved'] as { tokens: number }).tokens;
    // 1,600 for the image, a few for the text and framing, 50 of output: not millions for the base64.
    expect(reserved).toBeGreaterThan(1_650);
    expect(reserved).toBeLessThan(1_700);
  });

  it('metrics: valet_llm_tokens_total and valet_llm_cost_total by upstream, model and tenant, never by agent', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 100, cached: 0, cacheWrite: 0, output: 10, reasoning: 0 } };
    await openai(gw, await gw.token({ agent: 'agent-secret-id', tenant: 'acme' })).chat.completions.create({ model: 'gpt-4o-mini-2024-07-18', messages: [{ role: 'user', content: 'x' }] });
    const text = await (await request(`${gw.adminUrl}/metrics`, { headers: { authorization: `Bearer ${await gw.adminToken(['viewer'])}` } })).body.text();
    expect(text).toContain('valet_llm_tokens_total{upstream="openai",model="gpt-4o-mini",tenant="acme",kind="input"} 100');
    expect(text).toContain('valet_llm_tokens_total{upstream="openai",model="gpt-4o-mini",tenant="acme",kind="output"} 10');
    expect(text).toMatch(/valet_llm_cost_total\{upstream="openai",model="gpt-4o-mini",tenant="acme"\} 0\.0000210*\d*/);
    expect(text).not.toContain('agent-secret-id');
  });
});

describe('budgets reserve, then settle', () => {
  const body = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 100, stream: true };

  it('50 concurrent streamed calls against a budget that fits 10: 10 run, 40 are refused up front, no overshoot', async () => {
    const reserve = reservation('/v1/chat/completions', body).tokens;
    const limit = 10 * reserve + Math.floor(reserve / 2);
    const gw = await start({ budgets: [{ id: 'llm-tokens', upstream: 'openai', usage: 'tokens', key: 'agent', window: '1h', limit }] });
    let release = (): void => undefined;
    fake.behaviour = { usage: { input: 6, cached: 0, cacheWrite: 0, output: 20, reasoning: 0 }, gate: new Promise<void>((r) => (release = r)) };
    const client = openai(gw, await gw.token());
    const calls = Array.from({ length: 50 }, async () => {
      try {
        const stream = await client.chat.completions.create({ ...body, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
        let text = '';
        for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
        return { ok: true as const, text };
      } catch (err) {
        return { ok: false as const, err: err as InstanceType<typeof OpenAI.APIError> };
      }
    });
    // The refusals come while the admitted ten are held in flight by the fake.
    while (fake.requests.length < 10) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 100));
    expect(fake.requests.length).toBe(10);
    release();
    const results = await Promise.all(calls);
    const ok = results.filter((r) => r.ok);
    const refused = results.filter((r) => !r.ok);
    expect(ok).toHaveLength(10);
    expect(refused).toHaveLength(40);
    for (const r of refused) {
      if (r.ok) continue;
      expect(r.err.status).toBe(429);
      const error = r.err.error as { code: string; valet: { rule: string; reason: string; retry_after_s: number } };
      expect(error.code).toBe('VALET_ERR_BUDGET_EXCEEDED');
      expect(error.valet.rule).toBe('llm-tokens');
      expect(error.valet.reason).toMatch(/cannot hold this call's \d+ tokens/);
      // Waiting helps (the calls in flight settle): a time is given.
      expect(error.valet.retry_after_s).toBeGreaterThan(0);
    }
    const rows = (await gw.auditRows()).filter((r) => r.upstream === 'openai');
    const spent = rows.reduce((n, r) => n + (r.tokens ?? 0), 0);
    expect(spent).toBe(10 * 26);
    expect(spent).toBeLessThanOrEqual(limit);
    // Settled to 26 tokens each: what the ten did not use is free again at once.
    const after = await client.chat.completions.create({ ...body, stream: false } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect(after.choices).toHaveLength(1);
  });

  it('a call that may spend more than the whole budget is refused with no retry-after; one with an unknowable cost too', async () => {
    const gw = await start({ budgets: [{ id: 'tiny', upstream: 'openai', usage: 'cost', key: 'team', window: '1d', limit: 0.01 }] });
    const res = await request(`${gw.url}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await gw.token({ team: 'red' })}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 100_000 }),
    });
    expect(res.statusCode).toBe(403);
    expect(res.headers['retry-after']).toBeUndefined();
    expect(res.headers['x-should-retry']).toBe('false');
    const error = ((await res.body.json()) as { error: { code: string; message: string } }).error;
    expect(error.code).toBe('VALET_ERR_BUDGET_TOO_SMALL');
    expect(error.message).toContain('more than the whole budget tiny');
    const batch = await request(`${gw.url}/openai/v1/batches`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await gw.token({ team: 'red' })}`, 'content-type': 'application/json' },
      body: JSON.stringify({ input_file_id: 'file-1', endpoint: '/v1/chat/completions', completion_window: '24h' }),
    });
    expect(batch.statusCode).toBe(400);
    expect(((await batch.body.json()) as { error: { code: string } }).error.code).toBe('VALET_ERR_LLM_UNMETERABLE');
    expect(fake.requests.filter((r) => r.url.includes('/batches'))).toHaveLength(0);
  });

  it('announces 80 % and 100 % through the webhook, once each', async () => {
    const reserve = reservation('/v1/chat/completions', { ...body, stream: false }).tokens;
    const gw = await start({ budgets: [{ id: 'alerting', upstream: 'openai', usage: 'tokens', key: 'tenant', window: '1h', limit: 1000 }] });
    expect(reserve).toBeLessThan(200);
    fake.behaviour = { usage: { input: 100, cached: 0, cacheWrite: 0, output: 80, reasoning: 0 } };
    const client = openai(gw, await gw.token({ tenant: 'acme' }));
    for (let i = 0; i < 5; i++) await client.chat.completions.create({ ...body, stream: false } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    // 5 × 180 = 900: past 80 %; the sixth's reservation (over 100) cannot fit.
    await expect(client.chat.completions.create({ ...body, stream: false } as OpenAI.ChatCompletionCreateParamsNonStreaming)).rejects.toMatchObject({ status: 429 });
    const until = Date.now() + 5_000;
    const notices = (): Record<string, unknown>[] =>
      hooks.requests.map((r) => JSON.parse(r.body.toString()) as Record<string, unknown>).filter((n) => n['type'] === 'budget.threshold');
    while (notices().length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    const budgets = notices().map((n) => n['budget'] as Record<string, unknown>);
    expect(budgets.map((b) => b['threshold'])).toEqual([80, 100]);
    expect(budgets[0]).toMatchObject({ id: 'alerting', usage: 'tokens', counter: ['tenant', 'acme'], limit: 1000 });
  });

  it('tokens of every route and preset count: embeddings, Anthropic and Gemini calls spend the same budget', async () => {
    const gw = await start({ budgets: [{ id: 'all-llm', usage: 'tokens', key: 'agent', window: '1h', limit: 100_000 }] });
    fake.behaviour = { usage: { input: 10, cached: 0, cacheWrite: 0, output: 5, reasoning: 0 } };
    const token = await gw.token();
    await openai(gw, token).embeddings.create({ model: 'text-embedding-3-small', input: 'x' });
    await new Anthropic({ baseURL: `${gw.url}/anthropic`, apiKey: token, maxRetries: 0 }).messages.create({ model: 'claude-3-5-haiku-latest', max_tokens: 50, messages: [{ role: 'user', content: 'x' }] });
    await new GoogleGenAI({ apiKey: token, httpOptions: { baseUrl: `${gw.url}/gemini` } }).models.generateContent({ model: 'gemini-2.0-flash', contents: 'x' });
    const rows = await gw.auditRows();
    expect(rows.map((r) => r.tokens)).toEqual([10, 15, 15]);
    expect(rows.every((r) => usageOf(r)['reserved'] !== null)).toBe(true);
  });
});

describe('charged as documented when things go wrong', () => {
  it('a stream the upstream cuts short is charged the input and what was delivered', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 500, cached: 0, cacheWrite: 0, output: 40, reasoning: 0 }, cutAfter: 11 };
    const client = openai(gw, await gw.token());
    const content: string[] = [];
    await expect(async () => {
      for await (const c of await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Tell me a story' }], stream: true, max_tokens: 100 })) content.push(c.choices[0]?.delta.content ?? '');
    }).rejects.toThrow();
    const row = await lastRow(gw);
    const u = usageOf(row);
    expect(u).toMatchObject({ source: 'estimated', complete: false });
    // Ten words were delivered (the first chunk is the role): each w<i> and a space is one or two tokens.
    expect(u['output']).toBeGreaterThanOrEqual(10);
    expect(u['output']).toBeLessThanOrEqual(40);
    // Input was never reported: the estimate from the request.
    expect(u['input']).toBe(reservation('/v1/chat/completions', { model: 'gpt-4o', messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 100 }).tokens - 100);
  });

  it('an error event after the headers: Anthropic reported its input in message_start, output counted from what was delivered', async () => {
    const gw = await start();
    fake.behaviour = { usage: { input: 321, cached: 0, cacheWrite: 0, output: 30, reasoning: 0 }, errorAfter: 8 };
    const client = new Anthropic({ baseURL: `${gw.url}/anthropic`, apiKey: await gw.token(), maxRetries: 0 });
    await expect(client.messages.stream({ model: 'claude-3-5-haiku-20241022', max_tokens: 64, messages: [{ role: 'user', content: 'x' }] }).finalMessage()).rejects.toThrow(/Overloaded/);
    const u = usageOf(await lastRow(gw));
    expect(u).toMatchObject({ input: 321, source: 'estimated', complete: false });
    // message_start, content_block_start and ping, then five text deltas.
    expect(u['output']).toBeGreaterThanOrEqual(5);
    expect(u['output']).toBeLessThanOrEqual(20);
  });

  it('an upstream error status spends nothing and gives the reservation back', async () => {
    const gw = await start({ budgets: [{ id: 'b', upstream: 'openai', usage: 'tokens', key: 'agent', window: '1h', limit: 2_000 }] });
    const token = await gw.token();
    const res = await request(`${gw.url}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 1_500 }),
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    // The first call spent 1412 of 2000: a second reservation of ~1500 does not fit...
    const second = await request(`${gw.url}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 1_500 }),
    });
    expect(second.statusCode).toBe(429);
    await second.body.dump();
    const rows = await gw.auditRows();
    expect(rows.map((r) => r.tokens)).toEqual([1412, 0]);
  });

  it('unknown models: charged at the ceiling by default, refused or escalated when configured so', async () => {
    let gw = await start();
    fake.behaviour = { usage: { input: 1000, cached: 0, cacheWrite: 0, output: 1000, reasoning: 0 } };
    await openai(gw, await gw.token()).chat.completions.create({ model: 'brand-new-model', messages: [{ role: 'user', content: 'x' }], max_tokens: 1000 });
    const row = await lastRow(gw);
    expect(usageOf(row)).toMatchObject({ priced: 'ceiling' });
    const ceiling = gw.gateway.config.gateway.llm === undefined ? undefined : new LlmMetering(gw.gateway.config.gateway.llm).prices.ceiling();
    expect(row.cost).toBeCloseTo((1000 * ceiling!.input + 1000 * ceiling!.output) / 1e6, 9);
    await gw.close();
    gateways.splice(gateways.indexOf(gw), 1);

    gw = await start({ llm: { unknown_model: 'deny' } });
    const before = fake.requests.length;
    await expect(openai(gw, await gw.token()).chat.completions.create({ model: 'brand-new-model', messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({
      status: 403,
      error: { code: 'VALET_ERR_LLM_UNKNOWN_MODEL' },
    });
    // A price in gateway.llm.prices makes it known.
    await gw.close();
    gateways.splice(gateways.indexOf(gw), 1);
    gw = await start({ llm: { unknown_model: 'deny', prices: { 'brand-new-model': { input: 1, output: 2 } } } });
    await openai(gw, await gw.token()).chat.completions.create({ model: 'brand-new-model', messages: [{ role: 'user', content: 'x' }] });
    expect((await lastRow(gw)).cost).toBeCloseTo((1000 * 1 + 1000 * 2) / 1e6, 12);
    expect(fake.requests.length).toBe(before + 1);
    await gw.close();
    gateways.splice(gateways.indexOf(gw), 1);

    gw = await start({ llm: { unknown_model: 'escalate', approval: { group: 'finops', mode: 'async' } } });
    const held = await request(`${gw.url}/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await gw.token()}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'brand-new-model', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(held.statusCode).toBe(202);
    expect(((await held.body.json()) as { approval: { group: string } }).approval.group).toBe('finops');
    expect((await lastRow(gw)).rule).toBe('gateway.llm.unknown_model');
  });

  it('no max_tokens: the model\'s own maximum is reserved', async () => {
    const gw = await start({ budgets: [{ id: 'b', upstream: 'anthropic', usage: 'tokens', key: 'agent', window: '1h', limit: 10_000_000 }] });
    fake.behaviour = { usage: { input: 5, cached: 0, cacheWrite: 0, output: 5, reasoning: 0 } };
    await openai(gw, await gw.token()).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] });
    const plan = new LlmMetering(DEFAULT_LLM).plan(meteredRoute('openai', 'POST', '/v1/chat/completions')!, { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] });
    expect(plan.maxOutput).toBe(new LlmMetering(DEFAULT_LLM).prices.lookup('gpt-4o')!.price.maxOutput);
    // Not under a budget (anthropic only): nothing reserved, usage still recorded.
    expect(usageOf(await lastRow(gw))).toMatchObject({ reserved: null, input: 5, output: 5 });
  });

  it('a model that ignores max_tokens is charged what it used; with overrun: cut its stream is ended cleanly at the reservation', async () => {
    const b = { model: 'gpt-4o', messages: [{ role: 'user' as const, content: 'x' }], max_tokens: 10 };
    let gw = await start({ budgets: [{ id: 'b', upstream: 'openai', usage: 'tokens', key: 'agent', window: '1h', limit: 100_000 }] });
    fake.behaviour = { usage: { input: 5, cached: 0, cacheWrite: 0, output: 60, reasoning: 0 } };
    await openai(gw, await gw.token()).chat.completions.create(b);
    expect((await lastRow(gw)).tokens).toBe(65);
    await gw.close();
    gateways.splice(gateways.indexOf(gw), 1);

    gw = await start({ llm: { overrun: 'cut' } });
    const chunks = [];
    for await (const c of await openai(gw, await gw.token()).chat.completions.create({ ...b, stream: true })) chunks.push(c);
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('length');
    const delivered = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(delivered.split(' ').filter(Boolean).length).toBeLessThan(60);
    const u = usageOf(await lastRow(gw));
    expect(u['output']).toBeLessThanOrEqual(20);
  });
});

describe('no path around a budget', () => {
  it('every metered route of every LLM preset is charged, whatever roles or tenant the agent claims', async () => {
    const llmPresets = [...presets().presets.values()].filter((p) => p.upstream['llm'] !== undefined);
    expect(llmPresets.map((p) => p.id).sort()).toEqual(['anthropic', 'aws-bedrock', 'azure-openai', 'cohere', 'gemini', 'groq', 'mistral', 'openai', 'openrouter']);
    const gw = await startTestGateway({
      upstreams: llmPresets.map((p) => ({ name: p.id, preset: p.id, origin: fake.origin })),
      rules: [{ id: 'ok', effect: 'allow' }],
      env: KEYS,
      files: { 'budgets.yaml': stringify({ budgets: [{ id: 'closed', usage: 'tokens', key: 'global', window: '1h', limit: 1 }] }) },
    });
    gateways.push(gw);
    const token = await gw.token({ roles: ['admin', 'owner'], tenant: 'root' });
    const message = { role: 'user', content: 'x' };
    // Every field any family reads, so that each route finds its input (inline batches included).
    const body = {
      model: 'gpt-4o',
      messages: [message],
      max_tokens: 5,
      input: 'x',
      prompt: 'x',
      contents: [{ parts: [{ text: 'x' }] }],
      requests: [{ custom_id: 'a', params: { model: 'claude-3-5-haiku-latest', max_tokens: 5, messages: [message] }, request: { contents: [{ parts: [{ text: 'x' }] }] } }],
      batch: { input_config: { requests: { requests: [{ request: { contents: [{ parts: [{ text: 'x' }] }] } }] } } },
    };
    let tried = 0;
    for (const p of llmPresets) {
      const family = p.upstream['llm'] === 'openai-compatible' ? 'openai' : (p.upstream['llm'] as keyof typeof METERED_ROUTES);
      for (const route of METERED_ROUTES[family]) {
        const res = await request(`${gw.url}/${p.id}${route.path}`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        const text = await res.body.text();
        expect(res.statusCode, `${p.id} ${route.path}: ${text}`).toBe(route.api === 'batch' && family === 'openai' ? 400 : 403);
        expect(text, `${p.id} ${route.path}`).toMatch(route.api === 'batch' && family === 'openai' ? /VALET_ERR_LLM_UNMETERABLE/ : /VALET_ERR_BUDGET_TOO_SMALL/);
        tried++;
      }
    }
    expect(tried).toBeGreaterThanOrEqual(50);
    expect(fake.requests).toHaveLength(0);
    // Each refusal is audited with the call's model.
    const rows = await gw.auditRows();
    expect(rows).toHaveLength(tried);
    expect(rows.every((r) => r.decision === 'deny' && r.tokens === 0)).toBe(true);
  });
});
