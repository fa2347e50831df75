import type { ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeUpstream, type FakeUpstream, type RecordedRequest } from './upstream.js';

/** What the fake reports it used: every API's usage fields are derived from these. */
export interface FakeUsage {
  input: number;
  cached: number;
  cacheWrite: number;
  output: number;
  reasoning: number;
}

export interface LlmBehaviour {
  /** Reported usage (output: the number of words streamed; reasoning is reported, not streamed). */
  usage: FakeUsage;
  /** Waited for after the response head, before the first event: holds calls in flight. */
  gate?: Promise<void>;
  /** Destroy the connection after this many content events (a stream cut short). */
  cutAfter?: number;
  /** After this many content events, an error event in the API's shape, then the end (an error after headers). */
  errorAfter?: number;
  /** The model written in responses (default: the request's). */
  model?: string;
  /** Milliseconds between writes; every event is also split in two writes. */
  pauseMs?: number;
}

export interface FakeLlm {
  readonly upstream: FakeUpstream;
  readonly origin: string;
  readonly requests: RecordedRequest[];
  behaviour: LlmBehaviour;
  close(): Promise<void>;
}

export const DEFAULT_USAGE: FakeUsage = { input: 1200, cached: 200, cacheWrite: 0, output: 12, reasoning: 0 };

/**
 * A fake LLM provider on 127.0.0.1:0 that answers OpenAI (chat, responses, embeddings), Anthropic
 * (messages), Gemini (generateContent, streamGenerateContent) and Cohere (v2 chat) requests the way
 * the real APIs do — SSE streams with usage where each API puts it, events split across TCP writes
 * — reporting the usage in `behaviour`.
 */
export async function startFakeLlm(behaviour: Partial<LlmBehaviour> = {}): Promise<FakeLlm> {
  const fake: { behaviour: LlmBehaviour } = { behaviour: { usage: DEFAULT_USAGE, ...behaviour } };
  const upstream = await startFakeUpstream((req, res) => void answer(req, res, fake.behaviour).catch(() => res.destroy()));
  return {
    upstream,
    origin: upstream.origin,
    requests: upstream.requests,
    get behaviour() {
      return fake.behaviour;
    },
    set behaviour(b: LlmBehaviour) {
      fake.behaviour = b;
    },
    close: () => upstream.close(),
  };
}

type Body = Record<string, unknown>;

async function answer(req: RecordedRequest, res: ServerResponse, b: LlmBehaviour): Promise<void> {
  const body = (req.body.length > 0 ? JSON.parse(req.body.toString('utf8')) : {}) as Body;
  const path = (req.url.split('?')[0] ?? '').replace(/\/+$/, '');
  const sse = req.url.includes('alt=sse');
  const model = b.model ?? (typeof body['model'] === 'string' ? body['model'] : (/models\/([^:/]+)/.exec(path)?.[1] ?? 'model'));
  const u = b.usage;
  const words = Array.from({ length: u.output }, (_, i) => `w${i} `);
  if (path.endsWith('/chat/completions') || path.endsWith('/completions')) return openaiChat(res, body, model, u, words, b);
  if (path.endsWith('/responses')) return openaiResponses(res, body, model, u, words, b);
  if (path.endsWith('/embeddings')) {
    return json(res, { object: 'list', data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2] }], model, usage: { prompt_tokens: u.input, total_tokens: u.input } });
  }
  if (path.endsWith('/v1/messages')) return anthropic(res, body, model, u, words, b);
  if (path.includes(':generateContent') || path.includes(':streamGenerateContent')) return gemini(res, path.includes(':stream'), sse, model, u, words, b);
  if (path.endsWith('/v2/chat')) return cohere(res, body, model, u, words, b);
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end('{"error":"not a route of the fake"}');
}

function json(res: ServerResponse, value: unknown): void {
  const text = JSON.stringify(value);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Streams SSE events, each split across two writes; honours the gate, cuts and errors. */
async function stream(res: ServerResponse, b: LlmBehaviour, content: string[], tail: string[], error: string): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  if (b.gate !== undefined) await b.gate;
  const write = async (event: string): Promise<void> => {
    const half = Math.max(1, Math.floor(event.length / 2));
    res.write(event.slice(0, half));
    await sleep(b.pauseMs ?? 1);
    res.write(event.slice(half));
    await sleep(b.pauseMs ?? 1);
  };
  for (const [i, event] of content.entries()) {
    if (b.cutAfter !== undefined && i === b.cutAfter) {
      res.destroy();
      return;
    }
    if (b.errorAfter !== undefined && i === b.errorAfter) {
      await write(error);
      res.end();
      return;
    }
    await write(event);
  }
  for (const event of tail) await write(event);
  res.end();
}

const data = (value: unknown): string => `data: ${JSON.stringify(value)}\n\n`;
const named = (event: string, value: unknown): string => `event: ${event}\ndata: ${JSON.stringify(value)}\n\n`;

function openaiUsage(u: FakeUsage): Body {
  return {
    prompt_tokens: u.input + u.cached,
    completion_tokens: u.output + u.reasoning,
    total_tokens: u.input + u.cached + u.output + u.reasoning,
    prompt_tokens_details: { cached_tokens: u.cached },
    completion_tokens_details: { reasoning_tokens: u.reasoning },
  };
}

async function openaiChat(res: ServerResponse, body: Body, model: string, u: FakeUsage, words: string[], b: LlmBehaviour): Promise<void> {
  const id = 'chatcmpl-fake';
  const created = 1_700_000_000;
  if (body['stream'] !== true) {
    return json(res, { id, object: 'chat.completion', created, model, choices: [{ index: 0, message: { role: 'assistant', content: words.join('') }, finish_reason: 'stop' }], usage: openaiUsage(u) });
  }
  const withUsage = (body['stream_options'] as Body | undefined)?.['include_usage'] === true;
  const chunk = (delta: Body, finish: string | null): string => data({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish }], ...(withUsage && { usage: null }) });
  const content = [chunk({ role: 'assistant', content: '' }, null), ...words.map((w) => chunk({ content: w }, null))];
  const tail = [chunk({}, 'stop'), ...(withUsage ? [data({ id, object: 'chat.completion.chunk', created, model, choices: [], usage: openaiUsage(u) })] : []), 'data: [DONE]\n\n'];
  return stream(res, b, content, tail, data({ error: { message: 'The server had an error while processing your request.', type: 'server_error' } }));
}

async function openaiResponses(res: ServerResponse, body: Body, model: string, u: FakeUsage, words: string[], b: LlmBehaviour): Promise<void> {
  const usage = {
    input_tokens: u.input + u.cached,
    input_tokens_details: { cached_tokens: u.cached },
    output_tokens: u.output + u.reasoning,
    output_tokens_details: { reasoning_tokens: u.reasoning },
    total_tokens: u.input + u.cached + u.output + u.reasoning,
  };
  const text = words.join('');
  const response = (status: string, withUsage: boolean): Body => ({
    id: 'resp_fake',
    object: 'response',
    created_at: 1_700_000_000,
    status,
    model,
    output: status === 'completed' ? [{ id: 'msg_fake', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text, annotations: [] }] }] : [],
    usage: withUsage ? usage : null,
  });
  if (body['stream'] !== true) return json(res, response('completed', true));
  let seq = 0;
  const ev = (type: string, rest: Body): string => named(type, { type, sequence_number: seq++, ...rest });
  const content = [ev('response.created', { response: response('in_progress', false) }), ...words.map((w) => ev('response.output_text.delta', { item_id: 'msg_fake', output_index: 0, content_index: 0, delta: w }))];
  const tail = [ev('response.output_text.done', { item_id: 'msg_fake', output_index: 0, content_index: 0, text }), ev('response.completed', { response: response('completed', true) })];
  return stream(res, b, content, tail, ev('error', { code: 'server_error', message: 'The server had an error.', param: null }));
}

async function anthropic(res: ServerResponse, body: Body, model: string, u: FakeUsage, words: string[], b: LlmBehaviour): Promise<void> {
  const usage = { input_tokens: u.input, cache_creation_input_tokens: u.cacheWrite, cache_read_input_tokens: u.cached, output_tokens: u.output };
  const message = { id: 'msg_fake', type: 'message', role: 'assistant', model, stop_sequence: null };
  if (body['stream'] !== true) return json(res, { ...message, content: [{ type: 'text', text: words.join('') }], stop_reason: 'end_turn', usage });
  const content = [
    named('message_start', { type: 'message_start', message: { ...message, content: [], stop_reason: null, usage: { ...usage, output_tokens: 1 } } }),
    named('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    named('ping', { type: 'ping' }),
    ...words.map((w) => named('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w } })),
  ];
  const tail = [
    named('content_block_stop', { type: 'content_block_stop', index: 0 }),
    named('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: u.output } }),
    named('message_stop', { type: 'message_stop' }),
  ];
  return stream(res, b, content, tail, named('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
}

async function gemini(res: ServerResponse, streamed: boolean, sse: boolean, model: string, u: FakeUsage, words: string[], b: LlmBehaviour): Promise<void> {
  const usageMetadata = (output: number): Body => ({
    promptTokenCount: u.input + u.cached,
    candidatesTokenCount: output,
    cachedContentTokenCount: u.cached,
    thoughtsTokenCount: u.reasoning,
    totalTokenCount: u.input + u.cached + output + u.reasoning,
  });
  const chunk = (text: string, output: number, finish?: string): Body => ({
    candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0, ...(finish !== undefined && { finishReason: finish }) }],
    usageMetadata: usageMetadata(output),
    modelVersion: model,
  });
  if (!streamed) return json(res, chunk(words.join(''), u.output, 'STOP'));
  if (!sse) {
    // Without alt=sse: one JSON array, its elements streamed as they come.
    const parts = words.map((w, i) => `${i === 0 ? '[' : ','}${JSON.stringify(chunk(w, i + 1, i === words.length - 1 ? 'STOP' : undefined))}`);
    res.writeHead(200, { 'content-type': 'application/json' });
    for (const p of parts) {
      res.write(p);
      await sleep(b.pauseMs ?? 1);
    }
    res.end(']');
    return;
  }
  const content = words.map((w, i) => data(chunk(w, i + 1, i === words.length - 1 ? 'STOP' : undefined)));
  return stream(res, b, content, [], data({ error: { code: 503, message: 'The model is overloaded.', status: 'UNAVAILABLE' } }));
}

async function cohere(res: ServerResponse, body: Body, model: string, u: FakeUsage, words: string[], b: LlmBehaviour): Promise<void> {
  const usage = { billed_units: { input_tokens: u.input, output_tokens: u.output }, tokens: { input_tokens: u.input, output_tokens: u.output } };
  if (body['stream'] !== true) return json(res, { id: 'c-fake', finish_reason: 'COMPLETE', message: { role: 'assistant', content: [{ type: 'text', text: words.join('') }] }, usage });
  const content = [named('message-start', { type: 'message-start', id: 'c-fake', delta: { message: { role: 'assistant' } } }), ...words.map((w) => named('content-delta', { type: 'content-delta', index: 0, delta: { message: { content: { text: w } } } }))];
  const tail = [named('message-end', { type: 'message-end', delta: { finish_reason: 'COMPLETE', usage } })];
  return stream(res, b, content, tail, named('error', { type: 'error', message: 'internal error' }));
}
