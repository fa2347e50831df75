/**
 * The response meter: for every metered API, that usage read from a response is the same however
 * the body is split into chunks (whole, byte by byte, in two at every offset, at random offsets,
 * with multi-byte UTF-8 and JSON escapes in the text), that bytes pass unchanged except the usage
 * chunk Valet asked for, that a cut ends each API's stream with its own end events between events,
 * and that a response which reports nothing, stops short, fails or is not what it claims is
 * estimated from the text actually delivered. A stream that is not cut is read lazily: only its
 * events that may carry usage are parsed as they pass, the others kept and read only when needed.
 */
import { crc32 } from 'node:zlib';
import { countTokens } from 'gpt-tokenizer';
import { describe, expect, it, vi } from 'vitest';
import { EventStreamDecoder } from '../../../gateway/llm/eventstream.js';
import { JsonScanner, type JsonRecord } from '../../../gateway/llm/json-scan.js';
import { createMeter, MAX_KEPT, type ResponseMeter } from '../../../gateway/llm/meter.js';
import { SseSplitter } from '../../../gateway/llm/sse.js';
import type { LlmApi, LlmFamily, LlmRequest, Metered, Usage } from '../../../gateway/llm/types.js';

// ---------------------------------------------------------------------------------------------
// Helpers

const SSE = 'text/event-stream';
const JSON_TYPE = 'application/json';
const EVENT_STREAM = 'application/vnd.amazon.eventstream';
const REQUEST_INPUT = 777;

function request(api: LlmApi, family: LlmFamily, extra: Partial<LlmRequest> = {}): LlmRequest {
  return { route: { family, api }, model: 'asked-model', stream: true, maxOutput: undefined, inputTokens: REQUEST_INPUT, calls: 1, addUsage: false, opaque: false, ...extra };
}

interface MeterCase {
  readonly status?: number;
  readonly headers?: Record<string, string | string[] | undefined>;
  readonly cutAfter?: number;
}

function meter(req: LlmRequest, contentType: string | undefined, c: MeterCase = {}): ResponseMeter {
  return createMeter(req, { status: c.status ?? 200, contentType, headers: c.headers ?? {} }, c.cutAfter === undefined ? {} : { cutAfter: c.cutAfter });
}

function usage(input: number, cached: number, cacheWrite: number, output: number, reasoning: number): Usage {
  return { input, cached, cacheWrite, output, reasoning };
}

/** Feeds `chunks` through the meter's transform; resolves with everything it let through. */
async function pass(m: ResponseMeter, chunks: readonly Buffer[], end = true): Promise<Buffer> {
  const t = m.transform;
  const out: Buffer[] = [];
  t.on('data', (b: Buffer) => out.push(b));
  const ended = new Promise<void>((resolve, reject) => {
    t.once('end', resolve);
    t.once('error', reject);
  });
  for (const c of chunks) t.write(c);
  if (!end) {
    await new Promise((r) => setImmediate(r));
    return Buffer.concat(out);
  }
  t.end();
  await ended;
  return Buffer.concat(out);
}

function lcg(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

function splitAt(body: Buffer, offsets: readonly number[]): Buffer[] {
  const chunks: Buffer[] = [];
  let last = 0;
  for (const o of [...offsets].sort((a, b) => a - b)) {
    chunks.push(body.subarray(last, o));
    last = o;
  }
  chunks.push(body.subarray(last));
  return chunks.filter((c) => c.length > 0);
}

/** Every way a test feeds a body: byte by byte, in two at every offset, and at random offsets. */
function feeds(body: Buffer, randoms = 30): Buffer[][] {
  const all: Buffer[][] = [[...body].map((b) => Buffer.from([b]))];
  for (let i = 1; i < body.length; i++) all.push(splitAt(body, [i]));
  const rnd = lcg(body.length);
  for (let r = 0; r < randoms; r++) {
    const n = 1 + Math.floor(rnd() * 12);
    all.push(splitAt(body, Array.from({ length: n }, () => Math.floor(rnd() * body.length))));
  }
  return all;
}

/**
 * Checks a body whole and under every feed: what goes on (`expected`, the body itself by default)
 * and what was metered.
 */
async function everyFeed(body: Buffer, make: () => ResponseMeter, check: (r: Metered) => void, expected: Buffer = body): Promise<void> {
  const w = make();
  const whole = w.whole(body);
  expect(whole.equals(expected)).toBe(true);
  if (expected === body) expect(whole).toBe(body);
  check(w.result());
  for (const chunks of feeds(body)) {
    const m = make();
    const out = await pass(m, chunks);
    if (!out.equals(expected)) expect(out.toString()).toBe(expected.toString());
    check(m.result());
  }
}

const json = (v: unknown): string => JSON.stringify(v);

interface SseEvent {
  readonly event?: string;
  readonly data: string;
}

function sseEvent(e: SseEvent, eol = '\n'): string {
  return `${e.event === undefined ? '' : `event: ${e.event}${eol}`}data: ${e.data}${eol}${eol}`;
}

function sseBody(events: readonly SseEvent[], eol = '\n'): Buffer {
  return Buffer.from(events.map((e) => sseEvent(e, eol)).join(''));
}

/** A plain SSE reader (the spec's), to check what an agent would see. */
function parseSse(text: string): { event: string; data: string }[] {
  const events: { event: string; data: string }[] = [];
  let event = '';
  let data: string[] = [];
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data.length > 0) events.push({ event, data: data.join('\n') });
      event = '';
      data = [];
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
  }
  return events;
}

/** Text deltas of one token each (a space and a common word), so that counting them is exact. */
const WORDS = [' one', ' two', ' three', ' four', ' five', ' six', ' seven', ' eight', ' nine', ' ten', ' eleven', ' twelve'];

/** Multi-byte UTF-8, surrogate pairs and JSON escapes, to be split everywhere. */
const TEXT = ['Grüße', ', 世界', '! 🌍 ', '"quoted" \\ back\nslash', ' Ça va?'];

// ---------------------------------------------------------------------------------------------
// Fixtures, in the providers' shapes

const CHAT_ID = 'chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG';
const CHAT_MODEL = 'gpt-4o-2024-08-06';

function chatChunk(delta: Record<string, unknown>, finish: string | null = null): string {
  return json({
    id: CHAT_ID,
    object: 'chat.completion.chunk',
    created: 1741570283,
    model: CHAT_MODEL,
    service_tier: 'default',
    system_fingerprint: 'fp_fc9f1d7035',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    usage: null,
  });
}

const CHAT_USAGE_CHUNK = json({
  id: CHAT_ID,
  object: 'chat.completion.chunk',
  created: 1741570283,
  model: CHAT_MODEL,
  service_tier: 'default',
  system_fingerprint: 'fp_fc9f1d7035',
  choices: [],
  usage: {
    prompt_tokens: 1117,
    completion_tokens: 346,
    total_tokens: 1463,
    prompt_tokens_details: { cached_tokens: 1024, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 320, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
  },
});
const CHAT_USAGE = usage(93, 1024, 0, 26, 320);

function chatEvents(texts: readonly string[], withUsage = true): SseEvent[] {
  return [
    { data: chatChunk({ role: 'assistant', content: '', refusal: null }) },
    ...texts.map((t) => ({ data: chatChunk({ content: t }) })),
    { data: chatChunk({ tool_calls: [{ index: 0, id: 'call_abc', type: 'function', function: { name: 'get_weather', arguments: '' } }] }) },
    { data: chatChunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":"Zürich"}' } }] }) },
    { data: chatChunk({}, 'stop') },
    ...(withUsage ? [{ data: CHAT_USAGE_CHUNK }] : []),
    { data: '[DONE]' },
  ];
}

const CHAT_JSON = Buffer.from(
  JSON.stringify(
    {
      id: 'chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT',
      object: 'chat.completion',
      created: 1741569952,
      model: 'gpt-4.1-2025-04-14',
      choices: [{ index: 0, message: { role: 'assistant', content: TEXT.join(''), refusal: null, annotations: [] }, logprobs: null, finish_reason: 'stop' }],
      usage: {
        prompt_tokens: 19,
        completion_tokens: 10,
        total_tokens: 29,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
      },
      service_tier: 'default',
    },
    null,
    2,
  ),
);

function groqChunk(delta: Record<string, unknown>, finish: string | null, xGroq?: Record<string, unknown>): string {
  return json({
    id: 'chatcmpl-5ba6f5b0-3d2a-4b4e-9f1e-8c1f0b2b1c3d',
    object: 'chat.completion.chunk',
    created: 1730241104,
    model: 'llama-3.1-8b-instant',
    system_fingerprint: 'fp_179b0f92c9',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(xGroq === undefined ? {} : { x_groq: xGroq }),
  });
}

const GROQ_STREAM = sseBody([
  { data: groqChunk({ role: 'assistant', content: '' }, null, { id: 'req_01jbd6g2qdfw2adyrt2az8hz4w' }) },
  { data: groqChunk({ content: 'Hi' }, null) },
  { data: groqChunk({ content: ' there' }, null) },
  {
    data: groqChunk({}, 'stop', {
      id: 'req_01jbd6g2qdfw2adyrt2az8hz4w',
      usage: { queue_time: 0.018, prompt_tokens: 18, prompt_time: 0.0009, completion_tokens: 7, completion_time: 0.0058, total_tokens: 25, total_time: 0.0067 },
    }),
  },
  { data: '[DONE]' },
]);

function completionChunk(text: string, finish: string | null): string {
  return json({ id: 'cmpl-AW7', object: 'text_completion', created: 1732124432, choices: [{ text, index: 0, logprobs: null, finish_reason: finish }], model: 'gpt-3.5-turbo-instruct', usage: null });
}

const COMPLETIONS_STREAM = sseBody([
  ...WORDS.slice(0, 8).map((w) => ({ data: completionChunk(w, null) })),
  { data: completionChunk('', 'stop') },
  { data: json({ id: 'cmpl-AW7', object: 'text_completion', created: 1732124432, choices: [], model: 'gpt-3.5-turbo-instruct', usage: { prompt_tokens: 5, completion_tokens: 8, total_tokens: 13 } }) },
  { data: '[DONE]' },
]);

const RESP_ID = 'resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654';
const RESP_MODEL = 'gpt-4.1-2025-04-14';

function responseObject(status: string, output: unknown[], u: unknown): Record<string, unknown> {
  return {
    id: RESP_ID,
    object: 'response',
    created_at: 1741290958,
    status,
    error: null,
    incomplete_details: null,
    instructions: 'You are a helpful assistant.',
    max_output_tokens: null,
    model: RESP_MODEL,
    output,
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: 'medium', summary: null },
    store: true,
    temperature: 1.0,
    text: { format: { type: 'text' } },
    tool_choice: 'auto',
    tools: [],
    top_p: 1.0,
    truncation: 'disabled',
    usage: u,
    user: null,
    metadata: {},
  };
}

const RESP_USAGE_JSON = { input_tokens: 2037, input_tokens_details: { cached_tokens: 1920 }, output_tokens: 1186, output_tokens_details: { reasoning_tokens: 1152 }, total_tokens: 3223 };
const RESP_USAGE = usage(117, 1920, 0, 34, 1152);

function responsesEvents(texts: readonly string[], end = true): SseEvent[] {
  const message = { id: 'msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654', type: 'message', status: 'in_progress', role: 'assistant', content: [] };
  let seq = 0;
  const ev = (type: string, rest: Record<string, unknown>): SseEvent => ({ event: type, data: json({ type, sequence_number: seq++, ...rest }) });
  const events: SseEvent[] = [
    ev('response.created', { response: responseObject('in_progress', [], null) }),
    ev('response.in_progress', { response: responseObject('in_progress', [], null) }),
    ev('response.output_item.added', { output_index: 0, item: message }),
    ev('response.content_part.added', { item_id: message.id, output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } }),
    ...texts.map((t) => ev('response.output_text.delta', { item_id: message.id, output_index: 0, content_index: 0, delta: t, logprobs: [] })),
    ev('response.output_text.done', { item_id: message.id, output_index: 0, content_index: 0, text: texts.join(''), logprobs: [] }),
    ev('response.content_part.done', { item_id: message.id, output_index: 0, content_index: 0, part: { type: 'output_text', text: texts.join(''), annotations: [] } }),
  ];
  if (end) {
    const done = { ...message, status: 'completed', content: [{ type: 'output_text', text: texts.join(''), annotations: [] }] };
    events.push(ev('response.output_item.done', { output_index: 0, item: done }));
    events.push(ev('response.completed', { response: responseObject('completed', [done], RESP_USAGE_JSON) }));
  }
  return events;
}

const RESPONSES_JSON = Buffer.from(
  JSON.stringify(
    responseObject(
      'completed',
      [
        { id: 'rs_1', type: 'reasoning', summary: [{ type: 'summary_text', text: 'Thinking about it.' }] },
        { id: 'msg_1', type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: TEXT.join(''), annotations: [] }] },
      ],
      RESP_USAGE_JSON,
    ),
    null,
    2,
  ),
);

const ANTHROPIC_MODEL = 'claude-sonnet-4-5-20250929';

function anthropicEvents(texts: readonly string[], opts: { deltaUsage?: Record<string, unknown>; end?: boolean } = {}): SseEvent[] {
  const ev = (type: string, rest: Record<string, unknown>): SseEvent => ({ event: type, data: json({ type, ...rest }) });
  const events: SseEvent[] = [
    ev('message_start', {
      message: {
        id: 'msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY',
        type: 'message',
        role: 'assistant',
        content: [],
        model: ANTHROPIC_MODEL,
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 12, cache_creation_input_tokens: 2048, cache_read_input_tokens: 4096, output_tokens: 1 },
      },
    }),
    ev('content_block_start', { index: 0, content_block: { type: 'thinking', thinking: '' } }),
    ev('content_block_delta', { index: 0, delta: { type: 'thinking_delta', thinking: 'Let me think.' } }),
    ev('content_block_delta', { index: 0, delta: { type: 'signature_delta', signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds' } }),
    ev('content_block_stop', { index: 0 }),
    ev('content_block_start', { index: 1, content_block: { type: 'text', text: '' } }),
    { event: 'ping', data: '{"type": "ping"}' },
    ...texts.map((t) => ev('content_block_delta', { index: 1, delta: { type: 'text_delta', text: t } })),
  ];
  if (opts.end === false) return events;
  return [
    ...events,
    ev('content_block_stop', { index: 1 }),
    ev('content_block_start', { index: 2, content_block: { type: 'tool_use', id: 'toolu_01T1x1fJ34qAmk2tNTrN7Up6', name: 'get_weather', input: {} } }),
    ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: '{"location": "San Fra' } }),
    ev('content_block_delta', { index: 2, delta: { type: 'input_json_delta', partial_json: 'ncisco, CA"}' } }),
    ev('content_block_stop', { index: 2 }),
    ev('message_delta', { delta: { stop_reason: 'tool_use', stop_sequence: null }, usage: opts.deltaUsage ?? { output_tokens: 503 } }),
    ev('message_stop', {}),
  ];
}

const ANTHROPIC_JSON = Buffer.from(
  json({
    id: 'msg_013Zva2CMHLNnXjNJJKqJ2EF',
    type: 'message',
    role: 'assistant',
    model: ANTHROPIC_MODEL,
    content: [
      { type: 'text', text: TEXT.join('') },
      { type: 'tool_use', id: 'toolu_01', name: 'get_weather', input: { location: 'San Francisco, CA' } },
    ],
    stop_reason: 'tool_use',
    stop_sequence: null,
    usage: { input_tokens: 2095, cache_creation_input_tokens: 0, cache_read_input_tokens: 100, output_tokens: 503, service_tier: 'standard' },
  }),
);

const GEMINI_MODEL = 'gemini-2.5-flash';

function geminiChunk(text: string, candidates: number | undefined, finish?: string): Record<string, unknown> {
  return {
    candidates: [{ content: { parts: [{ text }], role: 'model' }, ...(finish === undefined ? {} : { finishReason: finish }), index: 0 }],
    usageMetadata: {
      promptTokenCount: 1200,
      ...(candidates === undefined ? {} : { candidatesTokenCount: candidates }),
      totalTokenCount: 1200 + (candidates ?? 0) + 71,
      cachedContentTokenCount: 1000,
      toolUsePromptTokenCount: 15,
      thoughtsTokenCount: 71,
      promptTokensDetails: [{ modality: 'TEXT', tokenCount: 1200 }],
    },
    modelVersion: GEMINI_MODEL,
    responseId: 'mGBNaKXQBc6Jz7IP7cHjiAs',
  };
}

function geminiChunks(texts: readonly string[], finish = true): Record<string, unknown>[] {
  return texts.map((t, i) => geminiChunk(t, 4 * (i + 1), finish && i === texts.length - 1 ? 'STOP' : undefined));
}

/** What Gemini streams without `alt=sse`: a JSON array, written element by element. */
function geminiArray(chunks: readonly Record<string, unknown>[]): Buffer {
  return Buffer.from(`[${chunks.map((c) => JSON.stringify(c, null, 2)).join('\n,\r\n')}\n]`);
}

function geminiSse(chunks: readonly Record<string, unknown>[]): Buffer {
  return sseBody(
    chunks.map((c) => ({ data: json(c) })),
    '\r\n',
  );
}

// promptTokenCount 1200 − cached 1000 + toolUse 15; candidates of the last chunk; thoughts 71.
const GEMINI_USAGE = (candidates: number): Usage => usage(215, 1000, 0, candidates, 71);

function cohereEvents(texts: readonly string[], end = true): SseEvent[] {
  const ev = (type: string, rest: Record<string, unknown>): SseEvent => ({ event: type, data: json({ type, ...rest }) });
  const events: SseEvent[] = [
    ev('message-start', { id: '29f14a5a-11de-4cae-9800-25e4747408ea', delta: { message: { role: 'assistant', content: [], tool_plan: '', tool_calls: [], citations: [] } } }),
    ev('content-start', { index: 0, delta: { message: { content: { type: 'text', text: '' } } } }),
    ...texts.map((t) => ev('content-delta', { index: 0, delta: { message: { content: { text: t } } }, logprobs: null })),
  ];
  if (!end) return events;
  return [
    ...events,
    ev('content-end', { index: 0 }),
    ev('message-end', { delta: { finish_reason: 'COMPLETE', usage: { billed_units: { input_tokens: 3, output_tokens: 10 }, tokens: { input_tokens: 69, output_tokens: 10 }, cached_tokens: 0 } } }),
  ];
}

const COHERE_JSON = Buffer.from(
  json({
    id: 'c14c80c3-18eb-4519-9460-6c92edd8cfb4',
    finish_reason: 'COMPLETE',
    message: { role: 'assistant', content: [{ type: 'text', text: TEXT.join('') }] },
    usage: { billed_units: { input_tokens: 5, output_tokens: 418 }, tokens: { input_tokens: 71, output_tokens: 418 } },
  }),
);

/** One AWS event-stream message, CRCs and all. */
function esMessage(headers: Record<string, string>, payload: string | Buffer): Buffer {
  const hs = Buffer.concat(
    Object.entries(headers).map(([k, v]) => {
      const name = Buffer.from(k);
      const value = Buffer.from(v);
      const h = Buffer.alloc(4 + name.length + value.length);
      h[0] = name.length;
      name.copy(h, 1);
      h[1 + name.length] = 7;
      h.writeUInt16BE(value.length, 2 + name.length);
      value.copy(h, 4 + name.length);
      return h;
    }),
  );
  const p = Buffer.from(payload);
  const total = 12 + hs.length + p.length + 4;
  const message = Buffer.alloc(total);
  message.writeUInt32BE(total, 0);
  message.writeUInt32BE(hs.length, 4);
  message.writeUInt32BE(crc32(message.subarray(0, 8)), 8);
  hs.copy(message, 12);
  p.copy(message, 12 + hs.length);
  message.writeUInt32BE(crc32(message.subarray(0, total - 4)), total - 4);
  return message;
}

const esEvent = (type: string, payload: Record<string, unknown>): Buffer =>
  esMessage({ ':event-type': type, ':content-type': 'application/json', ':message-type': 'event' }, json({ ...payload, p: 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123' }));

function converseStream(texts: readonly string[], end = true): Buffer[] {
  const messages = [esEvent('messageStart', { role: 'assistant' }), ...texts.map((t) => esEvent('contentBlockDelta', { contentBlockIndex: 0, delta: { text: t } }))];
  if (!end) return messages;
  return [
    ...messages,
    esEvent('contentBlockStart', { contentBlockIndex: 1, start: { toolUse: { toolUseId: 'tooluse_1', name: 'get_weather' } } }),
    esEvent('contentBlockDelta', { contentBlockIndex: 1, delta: { toolUse: { input: '{"city":"Paris"}' } } }),
    esEvent('contentBlockStop', { contentBlockIndex: 1 }),
    esEvent('messageStop', { stopReason: 'tool_use' }),
    esEvent('metadata', { usage: { inputTokens: 22, outputTokens: 51, totalTokens: 373, cacheReadInputTokens: 200, cacheWriteInputTokens: 100 }, metrics: { latencyMs: 609 } }),
  ];
}

const invokeChunk = (native: Record<string, unknown>): Buffer => esEvent('chunk', { bytes: Buffer.from(json(native)).toString('base64') });

const INVOKE_STREAM = Buffer.concat([
  invokeChunk({ type: 'message_start', message: { id: 'msg_bdrk_01', type: 'message', role: 'assistant', model: 'claude-3-5-sonnet-20241022', content: [], usage: { input_tokens: 16, output_tokens: 1 } } }),
  invokeChunk({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
  ...TEXT.map((t) => invokeChunk({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: t } })),
  invokeChunk({ type: 'content_block_stop', index: 0 }),
  invokeChunk({ type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 12 } }),
  invokeChunk({ type: 'message_stop', 'amazon-bedrock-invocationMetrics': { inputTokenCount: 16, outputTokenCount: 12, invocationLatency: 534, firstByteLatency: 420 } }),
]);

const tokensOf = (texts: readonly string[]): number => countTokens(texts.join(''));

// ---------------------------------------------------------------------------------------------

describe('OpenAI chat completions', () => {
  const body = sseBody(chatEvents(TEXT));
  const delivered = [...TEXT, '{"city":"Zürich"}'];

  it('reads the usage chunk whatever the chunking, passing every byte', async () => {
    await everyFeed(
      body,
      () => meter(request('chat', 'openai'), SSE),
      (r) => expect(r).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true }),
    );
  });

  it('takes out exactly the usage chunk Valet asked for, whatever the line ends and chunking', async () => {
    for (const eol of ['\n', '\r\n', '\r']) {
      const events = chatEvents(TEXT);
      const full = sseBody(events, eol);
      const without = sseBody(
        events.filter((e) => e.data !== CHAT_USAGE_CHUNK),
        eol,
      );
      expect(without.length).toBeLessThan(full.length);
      await everyFeed(
        full,
        () => meter(request('chat', 'openai', { addUsage: true }), SSE),
        (r) => expect(r).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true }),
        without,
      );
    }
  });

  it('keeps a chunk the agent asked for, and one that carries a choice as well as usage', async () => {
    // Mistral: usage rides on the last chunk with its finish reason.
    const mistral = sseBody([
      { data: json({ id: 'cmpl-e5cc70bb28c444948073e77776eb30ef', object: 'chat.completion.chunk', created: 1702256327, model: 'mistral-small-latest', choices: [{ index: 0, delta: { role: 'assistant', content: 'Bonjour' }, finish_reason: null }] }) },
      { data: json({ id: 'cmpl-e5cc70bb28c444948073e77776eb30ef', object: 'chat.completion.chunk', created: 1702256327, model: 'mistral-small-latest', choices: [{ index: 0, delta: { content: '' }, finish_reason: 'stop' }], usage: { prompt_tokens: 10, total_tokens: 13, completion_tokens: 3 } }) },
      { data: '[DONE]' },
    ]);
    const m = meter(request('chat', 'openai', { addUsage: true }), SSE);
    expect((await pass(m, [mistral])).equals(mistral)).toBe(true);
    expect(m.result()).toEqual({ usage: usage(10, 0, 0, 3, 0), source: 'reported', model: 'mistral-small-latest', complete: true });
  });

  it('passes an Azure content-filter chunk (choices empty, no usage) in addUsage mode', async () => {
    const filter = json({ choices: [], created: 0, id: '', model: '', object: '', prompt_filter_results: [{ prompt_index: 0, content_filter_results: { hate: { filtered: false, severity: 'safe' } } }] });
    const events = [{ data: filter }, ...chatEvents(['Hi'])];
    const m = meter(request('chat', 'openai', { addUsage: true }), SSE);
    const out = await pass(m, [sseBody(events)]);
    expect(out.toString()).toBe(sseBody(events.filter((e) => e.data !== CHAT_USAGE_CHUNK)).toString());
    expect(m.result().usage).toEqual(CHAT_USAGE);
  });

  it('reads Groq usage under x_groq', async () => {
    await everyFeed(
      GROQ_STREAM,
      () => meter(request('chat', 'openai', { addUsage: true }), SSE),
      (r) => expect(r).toEqual({ usage: usage(18, 0, 0, 7, 0), source: 'reported', model: 'llama-3.1-8b-instant', complete: true }),
    );
  });

  it('reads a whole completion', async () => {
    await everyFeed(
      CHAT_JSON,
      () => meter(request('chat', 'openai', { stream: false }), 'application/json; charset=utf-8'),
      (r) => expect(r).toEqual({ usage: usage(19, 0, 0, 10, 0), source: 'reported', model: 'gpt-4.1-2025-04-14', complete: true }),
    );
  });

  it('reads legacy completions, and withholds their usage chunk too', async () => {
    const without = Buffer.from(COMPLETIONS_STREAM.toString().replace(/data: \{[^\n]*"choices":\[\],[^\n]*\n\n/, ''));
    expect(without.length).toBeLessThan(COMPLETIONS_STREAM.length);
    await everyFeed(
      COMPLETIONS_STREAM,
      () => meter(request('chat', 'openai', { addUsage: true }), SSE),
      (r) => expect(r).toEqual({ usage: usage(5, 0, 0, 8, 0), source: 'reported', model: 'gpt-3.5-turbo-instruct', complete: true }),
      without,
    );
  });

  it('estimates a stream cut short from the text of the events delivered', async () => {
    const events = chatEvents(TEXT);
    // Stop in the middle of the fourth content event: three were delivered.
    const before = events.slice(0, 4).map((e) => sseEvent(e)).join('');
    const cutInside = Buffer.from(before + sseEvent(events[4] as SseEvent).slice(0, 40));
    for (const chunks of [[cutInside], splitAt(cutInside, [7, 100, 333])]) {
      const m = meter(request('chat', 'openai'), SSE);
      await pass(m, chunks, false);
      expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(TEXT.slice(0, 3)), 0), source: 'estimated', model: CHAT_MODEL, complete: false });
    }
  });

  it('estimates a stream that never reports usage, counting tool arguments too', async () => {
    await everyFeed(
      sseBody(chatEvents(TEXT, false)),
      () => meter(request('chat', 'openai'), SSE),
      (r) => expect(r).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(delivered), 0), source: 'estimated', model: CHAT_MODEL, complete: true }),
    );
  });

  it('keeps reported usage when [DONE] is missing, taking the larger output', async () => {
    const events = chatEvents(TEXT).slice(0, -1);
    const m = meter(request('chat', 'openai'), SSE);
    await pass(m, [sseBody(events)], false);
    expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'estimated', model: CHAT_MODEL, complete: false });
    // A usage report smaller than what was delivered does not win.
    const small = json({ id: CHAT_ID, object: 'chat.completion.chunk', created: 1, model: CHAT_MODEL, choices: [], usage: { prompt_tokens: 5, completion_tokens: 1 } });
    const m2 = meter(request('chat', 'openai'), SSE);
    await pass(m2, [sseBody([...chatEvents(TEXT, false).slice(0, -1), { data: small }])], false);
    expect(m2.result()).toEqual({ usage: usage(5, 0, 0, tokensOf(delivered), 0), source: 'estimated', model: CHAT_MODEL, complete: false });
  });

  it('truncated whole completion: estimates from the text up to where it stopped', async () => {
    const text = CHAT_JSON.toString();
    const at = text.indexOf('back') + 2;
    const m = meter(request('chat', 'openai', { stream: false }), JSON_TYPE);
    await pass(m, splitAt(Buffer.from(text.slice(0, at)), [50, 200]), false);
    expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, countTokens('Grüße, 世界! 🌍 "quoted" \\ ba'), 0), source: 'estimated', model: 'gpt-4.1-2025-04-14', complete: false });
  });
});

describe('OpenAI Responses', () => {
  it('reads response.completed, and skips the events it does not need', async () => {
    await everyFeed(
      sseBody(responsesEvents(TEXT)),
      () => meter(request('responses', 'openai'), SSE),
      (r) => expect(r).toEqual({ usage: RESP_USAGE, source: 'reported', model: RESP_MODEL, complete: true }),
    );
  });

  it('reads response.incomplete and response.failed as ends', async () => {
    for (const [type, status] of [
      ['response.incomplete', 'incomplete'],
      ['response.failed', 'failed'],
    ] as const) {
      const events = responsesEvents(WORDS.slice(0, 3), false);
      events.push({ event: type, data: json({ type, sequence_number: 99, response: responseObject(status, [], status === 'failed' ? null : RESP_USAGE_JSON) }) });
      const m = meter(request('responses', 'openai'), SSE);
      await pass(m, [sseBody(events)]);
      expect(m.result()).toEqual(
        status === 'failed'
          ? { usage: usage(REQUEST_INPUT, 0, 0, 3, 0), source: 'estimated', model: RESP_MODEL, complete: true }
          : { usage: RESP_USAGE, source: 'reported', model: RESP_MODEL, complete: true },
      );
    }
  });

  it('reads a whole response', async () => {
    await everyFeed(
      RESPONSES_JSON,
      () => meter(request('responses', 'openai', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: RESP_USAGE, source: 'reported', model: RESP_MODEL, complete: true }),
    );
  });

  it('estimates a stream that stopped before its end', async () => {
    const m = meter(request('responses', 'openai'), SSE);
    await pass(m, [sseBody(responsesEvents(TEXT, false))], false);
    expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(TEXT), 0), source: 'estimated', model: RESP_MODEL, complete: false });
  });
});

describe('embeddings', () => {
  const vector = (seed: number): number[] => Array.from({ length: 64 }, (_, i) => Number((Math.sin(seed * 100 + i) * 0.05).toFixed(9)));

  it('reads OpenAI usage past the vectors', async () => {
    const body = Buffer.from(
      json({
        object: 'list',
        data: [0, 1].map((i) => ({ object: 'embedding', index: i, embedding: vector(i) })),
        model: 'text-embedding-3-small',
        usage: { prompt_tokens: 8, total_tokens: 8 },
      }),
    );
    await everyFeed(
      body,
      () => meter(request('embeddings', 'openai', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: usage(8, 0, 0, 0, 0), source: 'reported', model: 'text-embedding-3-small', complete: true }),
    );
  });

  it("reads Cohere's billed units", async () => {
    const body = Buffer.from(
      json({
        id: 'da6e531f-54c6-4a73-bf92-f60566d8d753',
        embeddings: { float: [vector(3)] },
        texts: ['hello world'],
        meta: { api_version: { version: '2' }, billed_units: { input_tokens: 2 } },
        response_type: 'embeddings_by_type',
      }),
    );
    await everyFeed(
      body,
      () => meter(request('embeddings', 'cohere', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: usage(2, 0, 0, 0, 0), source: 'reported', model: undefined, complete: true }),
    );
  });

  it('estimates Gemini embeddings, which report nothing, from the request', async () => {
    for (const body of [json({ embedding: { values: vector(1) } }), json({ embeddings: [{ values: vector(1) }, { values: vector(2) }] })]) {
      const m = meter(request('embeddings', 'gemini', { stream: false }), JSON_TYPE);
      expect(m.whole(Buffer.from(body)).toString()).toBe(body);
      expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, 0, 0), source: 'estimated', model: undefined, complete: true });
    }
  });
});

describe('Anthropic messages', () => {
  it('reads message_start and the cumulative message_delta', async () => {
    await everyFeed(
      sseBody(anthropicEvents(TEXT)),
      () => meter(request('messages', 'anthropic'), SSE),
      (r) => expect(r).toEqual({ usage: usage(12, 4096, 2048, 503, 0), source: 'reported', model: ANTHROPIC_MODEL, complete: true }),
    );
  });

  it('lets any field of message_delta usage override message_start', async () => {
    const body = sseBody(anthropicEvents(TEXT, { deltaUsage: { input_tokens: 20, cache_creation_input_tokens: null, cache_read_input_tokens: 4000, output_tokens: 600, server_tool_use: { web_search_requests: 1 } } }));
    const m = meter(request('messages', 'anthropic'), SSE);
    expect(m.whole(body)).toBe(body);
    expect(m.result().usage).toEqual(usage(20, 4000, 2048, 600, 0));
  });

  it('reads a whole message', async () => {
    await everyFeed(
      ANTHROPIC_JSON,
      () => meter(request('messages', 'anthropic', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: usage(2095, 100, 0, 503, 0), source: 'reported', model: ANTHROPIC_MODEL, complete: true }),
    );
  });

  it('keeps the reported input of a stream cut short, output from the text delivered', async () => {
    const m = meter(request('messages', 'anthropic'), SSE);
    await pass(m, [sseBody(anthropicEvents(TEXT, { end: false }))], false);
    expect(m.result()).toEqual({ usage: usage(12, 4096, 2048, tokensOf(['Let me think.', ...TEXT]), 0), source: 'estimated', model: ANTHROPIC_MODEL, complete: false });
  });

  it('counts an error event as no end', async () => {
    const events = [...anthropicEvents(WORDS.slice(0, 2), { end: false }), { event: 'error', data: json({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }) }];
    const m = meter(request('messages', 'anthropic'), SSE);
    await pass(m, [sseBody(events)]);
    expect(m.result()).toEqual({ usage: usage(12, 4096, 2048, tokensOf(['Let me think.', ...WORDS.slice(0, 2)]), 0), source: 'estimated', model: ANTHROPIC_MODEL, complete: false });
  });
});

describe('Gemini generateContent', () => {
  const chunks = geminiChunks(TEXT);

  it('reads the last usageMetadata of an alt=sse stream', async () => {
    await everyFeed(
      geminiSse(chunks),
      () => meter(request('generate', 'gemini'), 'text/event-stream; charset=utf-8'),
      (r) => expect(r).toEqual({ usage: GEMINI_USAGE(20), source: 'reported', model: GEMINI_MODEL, complete: true }),
    );
  });

  it('reads the last element of a streamed JSON array', async () => {
    await everyFeed(
      geminiArray(chunks),
      () => meter(request('generate', 'gemini'), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: GEMINI_USAGE(20), source: 'reported', model: GEMINI_MODEL, complete: true }),
    );
  });

  it('reads a whole response', async () => {
    const body = Buffer.from(JSON.stringify(geminiChunk(TEXT.join(''), 420, 'STOP'), null, 2));
    await everyFeed(
      body,
      () => meter(request('generate', 'gemini', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: GEMINI_USAGE(420), source: 'reported', model: GEMINI_MODEL, complete: true }),
    );
  });

  it('keeps the cumulative report of a stream cut short, or the delivered text when larger', async () => {
    for (const body of [geminiSse(geminiChunks(WORDS.slice(0, 6), false)), geminiArray(geminiChunks(WORDS.slice(0, 6), false)).subarray(0, -2)]) {
      const m = meter(request('generate', 'gemini'), body[0] === 0x5b ? JSON_TYPE : SSE);
      await pass(m, [body], false);
      expect(m.result()).toEqual({ usage: GEMINI_USAGE(24), source: 'estimated', model: GEMINI_MODEL, complete: false });
    }
    // A report that lags behind the text delivered: the text wins.
    const lagging = [TEXT.join(''), WORDS.join('')].map((text, i) => ({
      candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0 }],
      usageMetadata: { promptTokenCount: 30, candidatesTokenCount: i + 1, thoughtsTokenCount: 2, totalTokenCount: 33 + i },
      modelVersion: GEMINI_MODEL,
    }));
    const m = meter(request('generate', 'gemini'), SSE);
    await pass(m, [geminiSse(lagging)], false);
    expect(m.result().usage).toEqual(usage(30, 0, 0, tokensOf([TEXT.join(''), WORDS.join('')]) - 2, 2));
  });
});

describe('Cohere v2 chat', () => {
  it('reads message-end, preferring tokens to billed units', async () => {
    await everyFeed(
      sseBody(cohereEvents(TEXT)),
      () => meter(request('cohere-chat', 'cohere'), SSE),
      (r) => expect(r).toEqual({ usage: usage(69, 0, 0, 10, 0), source: 'reported', model: undefined, complete: true }),
    );
  });

  it('reads a whole response', async () => {
    await everyFeed(
      COHERE_JSON,
      () => meter(request('cohere-chat', 'cohere', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: usage(71, 0, 0, 418, 0), source: 'reported', model: undefined, complete: true }),
    );
  });

  it('falls back to billed units, and estimates a stream cut short', async () => {
    const billed = Buffer.from(json({ id: 'x', finish_reason: 'COMPLETE', message: { role: 'assistant', content: [] }, usage: { billed_units: { input_tokens: 5, output_tokens: 7 } } }));
    const m = meter(request('cohere-chat', 'cohere', { stream: false }), JSON_TYPE);
    m.whole(billed);
    expect(m.result().usage).toEqual(usage(5, 0, 0, 7, 0));
    const cut = meter(request('cohere-chat', 'cohere'), SSE);
    await pass(cut, [sseBody(cohereEvents(TEXT, false))], false);
    expect(cut.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(TEXT), 0), source: 'estimated', model: undefined, complete: false });
  });
});

describe('Bedrock', () => {
  it('reads a whole Converse response', async () => {
    const body = Buffer.from(
      json({
        metrics: { latencyMs: 451 },
        output: { message: { content: [{ text: TEXT.join('') }], role: 'assistant' } },
        stopReason: 'end_turn',
        usage: { inputTokens: 12, outputTokens: 5, totalTokens: 317, cacheReadInputTokens: 200, cacheWriteInputTokens: 100 },
      }),
    );
    await everyFeed(
      body,
      () => meter(request('converse', 'bedrock', { stream: false }), JSON_TYPE),
      (r) => expect(r).toEqual({ usage: usage(12, 200, 100, 5, 0), source: 'reported', model: undefined, complete: true }),
    );
  });

  it('reads InvokeModel usage from its headers', async () => {
    const body = Buffer.from(json({ id: 'msg_bdrk', type: 'message', content: [{ type: 'text', text: 'Hi' }], usage: { input_tokens: 1, output_tokens: 1 } }));
    const m = meter(request('invoke', 'bedrock', { stream: false }), JSON_TYPE, {
      headers: { 'x-amzn-bedrock-input-token-count': '42', 'x-amzn-bedrock-output-token-count': '17', 'x-amzn-bedrock-cache-read-input-token-count': '3', 'x-amzn-requestid': 'abc' },
    });
    expect(m.whole(body)).toBe(body);
    expect(m.result()).toEqual({ usage: usage(42, 3, 0, 17, 0), source: 'reported', model: undefined, complete: true });
    const none = meter(request('invoke', 'bedrock', { stream: false }), JSON_TYPE);
    none.whole(body);
    expect(none.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, 0, 0), source: 'estimated', model: undefined, complete: true });
  });

  it('reads a ConverseStream event stream across every chunk boundary', async () => {
    await everyFeed(
      Buffer.concat(converseStream(TEXT)),
      () => meter(request('converse', 'bedrock'), EVENT_STREAM),
      (r) => expect(r).toEqual({ usage: usage(22, 200, 100, 51, 0), source: 'reported', model: undefined, complete: true }),
    );
  });

  it('reads InvokeModelWithResponseStream chunks and their invocation metrics', async () => {
    await everyFeed(
      INVOKE_STREAM,
      () => meter(request('invoke', 'bedrock'), EVENT_STREAM),
      (r) => expect(r).toEqual({ usage: usage(16, 0, 0, 12, 0), source: 'reported', model: 'claude-3-5-sonnet-20241022', complete: true }),
    );
  });

  it('estimates an event stream that ends in an exception', async () => {
    const body = Buffer.concat([...converseStream(TEXT, false), esMessage({ ':message-type': 'exception', ':exception-type': 'throttlingException', ':content-type': 'application/json' }, json({ message: 'Too many requests' }))]);
    const m = meter(request('converse', 'bedrock'), EVENT_STREAM);
    expect((await pass(m, splitAt(body, [33, 200]))).equals(body)).toBe(true);
    expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(TEXT), 0), source: 'estimated', model: undefined, complete: false });
  });

  it('stops metering, not the bytes, on a malformed or oversized message', async () => {
    const good = converseStream(WORDS.slice(0, 2), false);
    const huge = Buffer.alloc(12);
    huge.writeUInt32BE(0xffffffff, 0);
    for (const bad of [huge, Buffer.from([0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0])]) {
      const body = Buffer.concat([...good, bad, ...converseStream(WORDS.slice(2, 4), true)]);
      const m = meter(request('converse', 'bedrock'), EVENT_STREAM, { cutAfter: 1000 });
      expect((await pass(m, splitAt(body, [5, 180, 400]))).equals(body)).toBe(true);
      expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(WORDS.slice(0, 2)), 0), source: 'estimated', model: undefined, complete: false });
    }
  });
});

describe('batches and failures', () => {
  it('leaves batches to the caller', async () => {
    const body = Buffer.from(json({ id: 'batch_abc123', object: 'batch', endpoint: '/v1/chat/completions', status: 'validating', usage: { input_tokens: 1, output_tokens: 2 } }));
    const m = meter(request('batch', 'openai', { stream: false, opaque: true }), JSON_TYPE);
    expect(m.whole(body)).toBe(body);
    expect(m.result()).toEqual({ usage: usage(0, 0, 0, 0, 0), source: 'estimated', model: undefined, complete: true });
  });

  it('bills nothing for an upstream error, and never withholds or cuts its bytes', async () => {
    const cases: [LlmRequest, string, Buffer][] = [
      [request('chat', 'openai', { addUsage: true }), JSON_TYPE, Buffer.from(json({ error: { message: 'Rate limit reached for gpt-4o', type: 'requests', param: null, code: 'rate_limit_exceeded' } }))],
      [request('messages', 'anthropic'), JSON_TYPE, Buffer.from(json({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }))],
      [request('chat', 'openai', { addUsage: true }), SSE, sseBody(chatEvents(WORDS, false))],
      [request('generate', 'gemini'), JSON_TYPE, Buffer.from(json([{ error: { code: 429, message: 'Resource has been exhausted', status: 'RESOURCE_EXHAUSTED' } }]))],
    ];
    for (const [req, type, body] of cases) {
      for (const status of [400, 429, 500, 503]) {
        const m = meter(req, type, { status, cutAfter: 1 });
        let cuts = 0;
        m.onCut(() => cuts++);
        expect((await pass(m, splitAt(body, [10]))).equals(body)).toBe(true);
        expect(cuts).toBe(0);
        expect(m.result()).toMatchObject({ usage: usage(0, 0, 0, 0, 0), source: 'reported' });
      }
    }
    // An error that does say what it used is billed for it.
    const m = meter(request('chat', 'openai'), SSE, { status: 500 });
    m.whole(sseBody([{ data: CHAT_USAGE_CHUNK }]));
    expect(m.result().usage).toEqual(CHAT_USAGE);
  });

  it('passes malformed JSON unchanged and falls back to estimation', async () => {
    for (const text of ['{"id":"x","usage":{"prompt_tokens":5,,}}', '<html>502 Bad Gateway</html>', '{"choices":[{"message":{"content":"hi"}}]]', '']) {
      const body = Buffer.from(text);
      await everyFeed(
        body,
        () => meter(request('chat', 'openai', { stream: false }), JSON_TYPE),
        (r) => expect(r).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, 0, 0), source: 'estimated', model: undefined, complete: false }),
      );
    }
  });

  it('skips a malformed SSE event and reads the rest', async () => {
    const events = [{ data: '{"choices":[{"delta":{"content":"lost"}}]' }, { data: 'not json at all' }, ...chatEvents(WORDS.slice(0, 3), false)];
    const m = meter(request('chat', 'openai'), SSE);
    const body = sseBody(events);
    expect((await pass(m, [body])).equals(body)).toBe(true);
    expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf([...WORDS.slice(0, 3), '{"city":"Zürich"}']), 0), source: 'estimated', model: CHAT_MODEL, complete: true });
  });

  it('passes an event too large to hold as it comes, and still withholds the usage chunk', async () => {
    const big = chatChunk({ content: 'x'.repeat(3 * 1024 * 1024) });
    const events = [{ data: big }, ...chatEvents(['Hi'])];
    const body = sseBody(events);
    const m = meter(request('chat', 'openai', { addUsage: true }), SSE);
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 65536) chunks.push(body.subarray(i, i + 65536));
    const out = await pass(m, chunks);
    expect(out.equals(sseBody(events.filter((e) => e.data !== CHAT_USAGE_CHUNK)))).toBe(true);
    expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
  });

  it('counts special-token text as text', async () => {
    const m = meter(request('chat', 'openai'), SSE);
    await pass(m, [sseBody([{ data: chatChunk({ content: 'a <|endoftext|> b' }) }])], false);
    expect(m.result().usage.output).toBe(countTokens('a <|endoftext|> b', { disallowedSpecial: new Set() }));
  });
});

// ---------------------------------------------------------------------------------------------
// Cuts

interface CutRun {
  readonly out: Buffer;
  readonly cuts: number;
  readonly result: Metered;
}

async function cutRuns(body: Buffer, make: () => ResponseMeter): Promise<CutRun[]> {
  const runs: CutRun[] = [];
  const w = make();
  let wholeCuts = 0;
  w.onCut(() => wholeCuts++);
  runs.push({ out: w.whole(body), cuts: wholeCuts, result: w.result() });
  for (const chunks of feeds(body, 10).filter((_, i) => i % 7 === 0)) {
    const m = make();
    let cuts = 0;
    m.onCut(() => cuts++);
    const out = await pass(m, chunks);
    runs.push({ out, cuts, result: m.result() });
  }
  return runs;
}

/** The body's bytes up to the end of its first `n` events. */
function prefix(events: readonly SseEvent[], n: number, eol = '\n'): string {
  return events
    .slice(0, n)
    .map((e) => sseEvent(e, eol))
    .join('');
}

describe('cutting a stream after its output passes a limit', () => {
  it('OpenAI chat: a finish chunk with finish_reason "length", then [DONE]', async () => {
    const events = chatEvents(WORDS);
    for (const run of await cutRuns(sseBody(events), () => meter(request('chat', 'openai', { addUsage: true }), SSE, { cutAfter: 5 }))) {
      const text = run.out.toString();
      // The sixth word passed the limit: its event went on whole, then the end.
      const kept = prefix(events, 7);
      expect(text.startsWith(kept)).toBe(true);
      const end = parseSse(text.slice(kept.length));
      expect(end).toEqual([
        { event: '', data: json({ id: CHAT_ID, object: 'chat.completion.chunk', created: 1741570283, model: CHAT_MODEL, choices: [{ index: 0, delta: {}, finish_reason: 'length' }] }) },
        { event: '', data: '[DONE]' },
      ]);
      expect(run.cuts).toBe(1);
      expect(run.result).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, 6, 0), source: 'estimated', model: CHAT_MODEL, complete: false });
    }
  });

  it('legacy completions: a text_completion finish chunk', async () => {
    const m = meter(request('chat', 'openai'), SSE, { cutAfter: 3 });
    const out = parseSse((await pass(m, [COMPLETIONS_STREAM])).toString());
    expect(out.slice(-2)).toEqual([
      { event: '', data: json({ id: 'cmpl-AW7', object: 'text_completion', created: 1732124432, model: 'gpt-3.5-turbo-instruct', choices: [{ index: 0, text: '', finish_reason: 'length' }] }) },
      { event: '', data: '[DONE]' },
    ]);
    expect(out).toHaveLength(6);
  });

  it('Responses: response.incomplete with reason max_output_tokens', async () => {
    const events = responsesEvents(WORDS);
    for (const run of await cutRuns(sseBody(events), () => meter(request('responses', 'openai'), SSE, { cutAfter: 5 }))) {
      const text = run.out.toString();
      const kept = prefix(events, 4 + 6);
      expect(text.startsWith(kept)).toBe(true);
      expect(parseSse(text.slice(kept.length))).toEqual([
        {
          event: 'response.incomplete',
          data: json({
            type: 'response.incomplete',
            response: { id: RESP_ID, object: 'response', status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' }, model: RESP_MODEL, output: [], usage: null },
            sequence_number: 10,
          }),
        },
      ]);
      expect(run.cuts).toBe(1);
      expect(run.result.complete).toBe(false);
    }
  });

  it('Anthropic: content_block_stop, message_delta with stop_reason max_tokens, message_stop', async () => {
    const events = anthropicEvents(WORDS);
    for (const run of await cutRuns(sseBody(events), () => meter(request('messages', 'anthropic'), SSE, { cutAfter: 8 }))) {
      const text = run.out.toString();
      // 'Let me think.' is 4 tokens; the fifth word passes 8.
      const kept = prefix(events, 7 + 5);
      expect(text.startsWith(kept)).toBe(true);
      expect(parseSse(text.slice(kept.length))).toEqual([
        { event: 'content_block_stop', data: json({ type: 'content_block_stop', index: 1 }) },
        { event: 'message_delta', data: json({ type: 'message_delta', delta: { stop_reason: 'max_tokens', stop_sequence: null }, usage: { output_tokens: 9 } }) },
        { event: 'message_stop', data: json({ type: 'message_stop' }) },
      ]);
      expect(run.cuts).toBe(1);
      expect(run.result).toEqual({ usage: usage(12, 4096, 2048, 9, 0), source: 'estimated', model: ANTHROPIC_MODEL, complete: false });
    }
  });

  it('Gemini SSE: a chunk with finishReason MAX_TOKENS, cut on the reported cumulative count', async () => {
    const chunks = geminiChunks(WORDS);
    const events = chunks.map((c) => ({ data: json(c) }));
    for (const run of await cutRuns(geminiSse(chunks), () => meter(request('generate', 'gemini'), SSE, { cutAfter: 10 }))) {
      const text = run.out.toString();
      // Reported candidates 4, 8, 12 (+ 71 thoughts): the first chunk already passes 10.
      const kept = prefix(events, 1, '\r\n');
      expect(text.startsWith(kept)).toBe(true);
      const end = parseSse(text.slice(kept.length));
      expect(end).toHaveLength(1);
      const last = JSON.parse((end[0] as { data: string }).data) as { candidates: { finishReason: string }[]; modelVersion: string; usageMetadata: unknown };
      expect(last.candidates[0]?.finishReason).toBe('MAX_TOKENS');
      expect(last.modelVersion).toBe(GEMINI_MODEL);
      expect(last.usageMetadata).toEqual(chunks[0]?.['usageMetadata']);
      expect(run.cuts).toBe(1);
    }
  });

  it('Gemini JSON array: a MAX_TOKENS element, then the array closed', async () => {
    const chunks = geminiChunks(WORDS).map((c) => ({ ...c, usageMetadata: { promptTokenCount: 1200, totalTokenCount: 1200 } }));
    for (const run of await cutRuns(geminiArray(chunks), () => meter(request('generate', 'gemini'), JSON_TYPE, { cutAfter: 5 }))) {
      const parsed = JSON.parse(run.out.toString()) as Record<string, unknown>[];
      expect(parsed.slice(0, 6)).toEqual(chunks.slice(0, 6));
      expect(parsed).toHaveLength(7);
      expect(parsed[6]).toMatchObject({ candidates: [{ finishReason: 'MAX_TOKENS', index: 0 }], modelVersion: GEMINI_MODEL });
      expect(run.out.toString().startsWith(geminiArray(chunks.slice(0, 6)).subarray(0, -2).toString())).toBe(true);
      expect(run.cuts).toBe(1);
      expect(run.result).toEqual({ usage: usage(1200, 0, 0, 6, 0), source: 'estimated', model: GEMINI_MODEL, complete: false });
    }
  });

  it('Cohere: content-end and message-end with finish_reason MAX_TOKENS', async () => {
    const events = cohereEvents(WORDS);
    for (const run of await cutRuns(sseBody(events), () => meter(request('cohere-chat', 'cohere'), SSE, { cutAfter: 5 }))) {
      const text = run.out.toString();
      const kept = prefix(events, 2 + 6);
      expect(text.startsWith(kept)).toBe(true);
      expect(parseSse(text.slice(kept.length))).toEqual([
        { event: 'content-end', data: json({ type: 'content-end', index: 0 }) },
        { event: 'message-end', data: json({ type: 'message-end', delta: { finish_reason: 'MAX_TOKENS' } }) },
      ]);
      expect(run.cuts).toBe(1);
    }
  });

  it('Bedrock: the stream stops after a whole message, with no end of its own', async () => {
    const messages = converseStream(WORDS);
    for (const run of await cutRuns(Buffer.concat(messages), () => meter(request('converse', 'bedrock'), EVENT_STREAM, { cutAfter: 5 }))) {
      expect(run.out.equals(Buffer.concat(messages.slice(0, 1 + 6)))).toBe(true);
      expect(run.cuts).toBe(1);
      expect(run.result).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, 6, 0), source: 'estimated', model: undefined, complete: false });
    }
  });

  it('does not cut a stream whose output stays under the limit, nor a whole body', async () => {
    const m = meter(request('chat', 'openai'), SSE, { cutAfter: 1000 });
    const body = sseBody(chatEvents(WORDS));
    expect((await pass(m, splitAt(body, [100, 1000]))).equals(body)).toBe(true);
    const whole = meter(request('chat', 'openai', { stream: false }), JSON_TYPE, { cutAfter: 1 });
    expect(whole.whole(CHAT_JSON)).toBe(CHAT_JSON);
  });

  it('calls a listener added after the cut, once', async () => {
    const m = meter(request('chat', 'openai'), SSE, { cutAfter: 1 });
    await pass(m, [sseBody(chatEvents(WORDS))]);
    let calls = 0;
    m.onCut(() => calls++);
    expect(calls).toBe(1);
    expect(m.result()).toEqual(m.result());
  });
});

// ---------------------------------------------------------------------------------------------
// The parts

describe('JsonScanner', () => {
  const scan = (text: string, paths: string[][]): { records: JsonRecord[]; scanner: JsonScanner } => {
    const records: JsonRecord[] = [];
    const scanner = new JsonScanner(paths, (r) => records.push(r));
    for (const chunk of splitAt(Buffer.from(text), [1, 5, 9, 17])) scanner.write(chunk);
    return { records, scanner };
  };

  it('prunes a record to its paths, keeping the containers on the way as they are', () => {
    const { records, scanner } = scan('{"a":1,"choices":[],"usage":{"x":[1,{"y":"\\u00e9\\"z"}]},"b":{"c":"d","e":[{"f":true},{"g":2}]}}', [['usage'], ['choices', '*', 'text'], ['b', 'e', '*', 'f']]);
    expect(records).toEqual([{ choices: [], usage: { x: [1, { y: 'é"z' }] }, b: { e: [{ f: true }, {}] } }]);
    expect(scanner.done).toBe(true);
  });

  it('matches escaped member names, and reads each object of a top-level array as a record', () => {
    const { records, scanner } = scan(' [ {"us\\u0061ge": 3} , 4, [5], {"usage": null} ] ', [['usage']]);
    expect(records).toEqual([{ usage: 3 }, { usage: null }]);
    expect(scanner.isArray).toBe(true);
    expect(scanner.done).toBe(true);
  });

  it('fails on what is not JSON, and leaves out a value past its bound', () => {
    expect(scan('{"a" 1}', [['a']]).scanner.failed).toBe(true);
    expect(scan('{"a":1]', [['a']]).scanner.failed).toBe(true);
    expect(scan('{"a":{"b":1}', [['a']]).scanner.done).toBe(false);
    const big = `{"usage":{"pad":"${'x'.repeat(70 * 1024)}"},"model":"m"}`;
    expect(scan(big, [['usage'], ['model']]).records).toEqual([{ model: 'm' }]);
  });

  it('decodes a kept string cut off midway, even inside an escape', () => {
    for (const [text, expected] of [
      ['{"t":"abc', 'abc'],
      ['{"t":"ab\\', 'ab'],
      ['{"t":"ab\\u00', 'ab'],
      ['{"t":"a\\"b', 'a"b'],
    ] as const) {
      expect(scan(text, [['t']]).scanner.partial()).toEqual({ t: expected });
    }
  });
});

describe('SseSplitter', () => {
  it('splits on every kind of line end and joins data lines, whatever the chunking', () => {
    const text = 'event: a\r\ndata: 1\r\ndata:2\r\n\r\n: comment\n\nid: 7\ndata\n\n' + 'data: x\r\rdata: y\n\n';
    const body = Buffer.from(text);
    for (const chunks of feeds(body, 5)) {
      const events: { event: string; data: string[]; end: number }[] = [];
      let data: string[] = [];
      let offset = 0;
      const splitter = new SseSplitter({
        dataLine: () => data.push(''),
        data: (buf, s, e) => {
          data[data.length - 1] += buf.toString('utf8', s, e);
        },
        boundary: (event, end) => {
          events.push({ event, data, end: offset + end });
          data = [];
        },
        extend: (end) => {
          (events[events.length - 1] as { end: number }).end = offset + end;
        },
      });
      for (const c of chunks) {
        splitter.write(c);
        offset += c.length;
      }
      expect(events.map((e) => [e.event, e.data.join('\n'), e.data.length, text.slice(0, e.end).slice(-2)])).toEqual([
        ['a', '1\n2', 2, '\r\n'],
        ['', '', 0, '\n\n'],
        ['', '', 1, '\n\n'],
        ['', 'x', 1, '\r\r'],
        ['', 'y', 1, '\n\n'],
      ]);
    }
  });
});

describe('EventStreamDecoder', () => {
  it('decodes messages split anywhere, skipping headers of every type', () => {
    const typed = Buffer.concat([esMessage({ ':event-type': 'x' }, '{}')]);
    // Insert a boolean and an int32 header before the string one.
    const extra = Buffer.from([1, 0x62, 0, 1, 0x69, 4, 0, 0, 0, 9]);
    const headersLength = typed.readUInt32BE(4) + extra.length;
    const body = Buffer.concat([typed.subarray(0, 12), extra, typed.subarray(12)]);
    body.writeUInt32BE(body.length, 0);
    body.writeUInt32BE(headersLength, 4);
    for (const chunks of feeds(body, 5)) {
      const got: string[] = [];
      const d = new EventStreamDecoder((m) => got.push(`${m.headers.get(':event-type')}:${m.payload.toString()}`));
      for (const c of chunks) d.write(c);
      expect(got).toEqual(['x:{}']);
      expect(d.failed).toBe(false);
    }
  });
});

describe('a long stream', () => {
  it('meters thousands of events without holding their text once usage is reported', async () => {
    const texts = Array.from({ length: 5000 }, (_, i) => WORDS[i % WORDS.length] as string);
    const body = sseBody(chatEvents(texts));
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 1500) chunks.push(body.subarray(i, i + 1500));
    const m = meter(request('chat', 'openai', { addUsage: true }), SSE, { cutAfter: 1_000_000 });
    const out = await pass(m, chunks);
    expect(out.length).toBe(body.length - sseEvent({ data: CHAT_USAGE_CHUNK }).length);
    expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
  });
});

// ---------------------------------------------------------------------------------------------
// Lazy reading

/** An OpenAI chunk as sent with `stream_options.include_usage`: `"usage":null` in every chunk but the last. */
function chatChunkNullUsage(delta: Record<string, unknown>, finish: string | null = null, space = ''): string {
  return chatChunk(delta, finish).replace('"usage":null', `"usage":${space}null`);
}

/** The first `n` bytes of a body fed as `chunks`, in the same chunks. */
function truncate(chunks: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of chunks) {
    if (at >= n) break;
    out.push(c.subarray(0, Math.min(c.length, n - at)));
    at += c.length;
  }
  return out;
}

/** Counts JSON.parse calls (the meter's and its scanner's) while `run` runs. */
async function parses(run: () => Promise<void>): Promise<number> {
  const spy = vi.spyOn(JSON, 'parse');
  try {
    await run();
    return spy.mock.calls.length;
  } finally {
    spy.mockRestore();
  }
}

describe('reading a stream lazily', () => {
  const texts = Array.from({ length: 40 }, (_, i) => WORDS[i % WORDS.length] as string);
  const content = (space = ''): SseEvent[] => [
    { data: chatChunkNullUsage({ role: 'assistant', content: '' }, null, space) },
    ...texts.map((t) => ({ data: chatChunkNullUsage({ content: t }, null, space) })),
    { data: chatChunkNullUsage({}, 'stop', space) },
  ];

  it('parses only the usage chunk of a stream that reports its usage', async () => {
    for (const addUsage of [false, true]) {
      const events = [...content(), { data: CHAT_USAGE_CHUNK }, { data: '[DONE]' }];
      const body = sseBody(events);
      const m = meter(request('chat', 'openai', { addUsage }), SSE);
      let out: Buffer | undefined;
      const n = await parses(async () => {
        out = await pass(m, splitAt(body, [300, 301, 2000, 5000]));
      });
      // The usage chunk, parsed whole, and nothing of the 42 content chunks.
      expect(n).toBeLessThanOrEqual(2);
      expect(out?.toString()).toBe(addUsage ? sseBody(events.filter((e) => e.data !== CHAT_USAGE_CHUNK)).toString() : body.toString());
      expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
    }
  });

  it('counts the text of a stream cut before its usage, whatever the chunking, reading its events only then', async () => {
    const events = content(' ');
    const body = sseBody(events);
    const expected = { usage: usage(REQUEST_INPUT, 0, 0, tokensOf(texts), 0), source: 'estimated', model: CHAT_MODEL, complete: false };
    for (const chunks of feeds(body, 10).filter((_, i) => i % 97 === 0)) {
      for (const addUsage of [false, true]) {
        const m = meter(request('chat', 'openai', { addUsage }), SSE);
        const during = await parses(async () => {
          const out = await pass(m, chunks);
          expect(out.equals(body)).toBe(true);
        });
        expect(during).toBe(0);
        const after = await parses(async () => {
          expect(m.result()).toEqual(expected);
        });
        expect(after).toBeGreaterThanOrEqual(events.length);
        // Read once: a second call counts the same.
        expect(m.result()).toEqual(expected);
      }
    }
  });

  it('finds the usage chunk across chunk splits, data lines and spacing, and never in text', async () => {
    // Text that talks about usage: its quotes are escaped in JSON, so it carries no `"usage":{`.
    const tricky = chatChunkNullUsage({ content: 'the "usage": {"prompt_tokens": 1} field' });
    // Pretty-printed, the usage object's brace on the next line: a data line per line, which the SSE reader joins with LF.
    const pretty = JSON.stringify(JSON.parse(CHAT_USAGE_CHUNK) as unknown, null, 1).replace('"usage": {', '"usage" :\n {');
    const multiLine = `${pretty
      .split('\n')
      .map((l) => `data: ${l}`)
      .join('\n')}\n\n`;
    const body = Buffer.from(sseBody([...content(), { data: tricky }]).toString() + multiLine + sseEvent({ data: '[DONE]' }));
    const delivered = [...texts, 'the "usage": {"prompt_tokens": 1} field'];
    const stop = body.indexOf('data: {\n');
    for (const chunks of feeds(body, 20).filter((_, i) => i % 13 === 0)) {
      const m = meter(request('chat', 'openai', { addUsage: true }), SSE);
      const out = (await pass(m, chunks)).toString();
      // The usage chunk Valet asked for is taken out: every line of it.
      expect(out).toBe(sseBody([...content(), { data: tricky }, { data: '[DONE]' }]).toString());
      expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
      // The same stream stopped before its usage: the tricky text is text.
      const short = meter(request('chat', 'openai'), SSE);
      await pass(short, truncate(chunks, stop), false);
      expect(short.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(delivered), 0), source: 'estimated', model: CHAT_MODEL, complete: false });
    }
  });

  it('reads a usage chunk the byte check cannot see (an escaped member name) when the stream ends', async () => {
    const escaped = CHAT_USAGE_CHUNK.replace('"usage":', '"us\\u0061ge":');
    const m = meter(request('chat', 'openai'), SSE);
    await pass(m, [sseBody([...content(), { data: escaped }, { data: '[DONE]' }])]);
    expect(m.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
  });

  it('keeps at most MAX_KEPT bytes, then reads the rest as it comes', async () => {
    // Chunks padded with a field the meter never reads: a few of them pass the bound.
    const pad = 'p'.repeat(Math.ceil(MAX_KEPT / 6));
    const padded = (delta: Record<string, unknown>): string => chatChunk(delta).replace('"usage":null', `"usage":null,"pad":"${pad}"`);
    const words = WORDS.slice(0, 10);
    const events = [{ data: padded({ role: 'assistant', content: '' }) }, ...words.map((w) => ({ data: padded({ content: w }) }))];
    const body = sseBody(events);
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 256 * 1024) chunks.push(body.subarray(i, i + 256 * 1024));
    // Cut short: the kept events and those read as they came count alike, in order.
    const m = meter(request('chat', 'openai', { addUsage: true }), SSE);
    const during = await parses(async () => {
      expect((await pass(m, chunks, false)).length).toBeGreaterThan(0);
    });
    // The events past the bound were parsed as they came (each kept value once).
    expect(during).toBeGreaterThan(0);
    expect(m.result()).toEqual({ usage: usage(REQUEST_INPUT, 0, 0, tokensOf(words), 0), source: 'estimated', model: CHAT_MODEL, complete: false });
    // Reported at the end: the usage is read whichever way the events before it were.
    const full = Buffer.concat([body, sseBody([{ data: CHAT_USAGE_CHUNK }, { data: '[DONE]' }])]);
    const m2 = meter(request('chat', 'openai', { addUsage: true }), SSE);
    const out = await pass(m2, [full.subarray(0, 3_000_000), full.subarray(3_000_000)]);
    expect(out.equals(Buffer.concat([body, sseBody([{ data: '[DONE]' }])]))).toBe(true);
    expect(m2.result()).toEqual({ usage: CHAT_USAGE, source: 'reported', model: CHAT_MODEL, complete: true });
  });

  it('Gemini: reads the finished chunk as it comes, and the latest report of a stream cut short', async () => {
    const chunks = geminiChunks(WORDS.slice(0, 8));
    const n = await parses(async () => {
      const m = meter(request('generate', 'gemini'), SSE);
      await pass(m, [geminiSse(chunks)]);
      expect(m.result()).toEqual({ usage: GEMINI_USAGE(32), source: 'reported', model: GEMINI_MODEL, complete: true });
    });
    expect(n).toBeLessThanOrEqual(1);
    // Cut short after a chunk without usageMetadata: the latest report is the one before it.
    const last = { ...geminiChunk(' more', undefined) };
    delete last['usageMetadata'];
    const m = meter(request('generate', 'gemini'), SSE);
    await pass(m, [geminiSse([...geminiChunks(WORDS.slice(0, 5), false), last])], false);
    expect(m.result()).toEqual({ usage: GEMINI_USAGE(20), source: 'estimated', model: GEMINI_MODEL, complete: false });
  });

  it('Anthropic, Responses and Cohere: text deltas are kept, the events that report are read', async () => {
    const cases: [LlmRequest, Buffer][] = [
      [request('messages', 'anthropic'), sseBody(anthropicEvents(texts))],
      [request('responses', 'openai'), sseBody(responsesEvents(texts))],
      [request('cohere-chat', 'cohere'), sseBody(cohereEvents(texts))],
    ];
    for (const [req, body] of cases) {
      const m = meter(req, SSE);
      const n = await parses(async () => {
        await pass(m, splitAt(body, [body.length >> 1]));
      });
      // The scanner parses the values it keeps of the few events it reads; read as they came, the
      // 40 text deltas would take one each.
      expect(n).toBeLessThan(texts.length / 2);
      expect(m.result().source).toBe('reported');
    }
  });
});
