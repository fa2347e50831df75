/**
 * What each metered API's responses say about usage, read from pruned JSON values (see
 * json-scan.ts): an SSE event's data, an AWS event-stream message's payload, or a record of a JSON
 * body. One reader per response; it writes what it finds to the response's {@link Tally}.
 */
import type { JsonPath, JsonRecord } from './json-scan.js';
import type { LlmRequest, Usage } from './types.js';

/** What a response has shown so far. Readers write it; the meter turns it into a result. */
export interface Tally {
  /** The latest usage the response reported (a stream's reports are cumulative, or partial until the last). */
  usage: Usage | undefined;
  /** The API's last usage report was seen: no output follows, delivered text is no longer kept. */
  final: boolean;
  /** The API's end was seen. */
  complete: boolean;
  model: string | undefined;
  /** Output text delivered to the agent. */
  text(text: string | undefined): void;
  /** Output tokens delivered so far: reported where the API says, else counted from the text. */
  output(): number;
}

/** How a stream is framed when Valet writes its own end into it. */
export type Framing = 'sse' | 'array';

/** Reads one API's responses; holds what it needs between events (ids, the open content block). */
export interface Reader {
  /** The paths each value is pruned to. */
  readonly paths: readonly JsonPath[];
  /** Whether an SSE event of this name ('' for none) needs reading at all: a cheap check before any parsing. */
  wants(event: string): boolean;
  /** One value read whole; `event` is the SSE event or event-stream message type ('' for none). Returns true to withhold it. */
  read(value: JsonRecord, event: string): boolean;
  /** The API's own clean end of the stream after a cut ('' when Valet has none to write). */
  end(framing: Framing): string;
  /**
   * How the SSE events of a stream that is not to be cut are read lazily (see {@link Lazy});
   * undefined: every wanted event is read as it comes.
   */
  readonly lazy?: Lazy;
}

// What the meter does with an SSE event of a stream it does not cut (see Lazy).
/** Read it now: it may carry usage, the model, or the API's end. */
export const READ = 0;
/** Keep its data unread: only its text matters, and only if the stream reports no final usage. */
export const KEEP = 1;
/** KEEP, and should the stream end without its final report, read the latest such event for the report so far (text aside). */
export const LATEST = 2;
/** Nothing in it is needed. */
export const SKIP = 3;
/** Decide from its data: {@link Lazy.marks}, {@link Lazy.byData}. */
export const CHECK = 4;

/** A JSON member name looked for in an event's data, as bytes (no parsing); `value`: the first character its value must have. */
export interface Mark {
  readonly name: string;
  readonly value?: string;
}

/**
 * Lazy reading of a stream: most events carry nothing but a piece of text, needed only when the
 * stream never reports its final usage (it was cut short, or its API reports none). Such events
 * are kept as they came and read only then; the few that may carry usage, the model or the end are
 * read as they come. Whether an event is one of those is decided from its name or by looking for
 * a few member names in its bytes: a false positive costs a read, never a wrong count.
 */
export interface Lazy {
  /** By the event's name ('' for none), before its data: READ, KEEP, LATEST, SKIP, or CHECK. */
  byName(event: string): number;
  /** The member names a CHECK event's data is searched for. */
  readonly marks: readonly Mark[];
  /** A CHECK event, by the marks found in its data (bit i: `marks[i]`): READ, KEEP or LATEST. */
  byData(found: number): number;
}

type Rec = Readonly<Record<string, unknown>>;

function rec(v: unknown): Rec | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Rec) : undefined;
}

function list(v: unknown): readonly unknown[] {
  return Array.isArray(v) ? v : [];
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

/** A token count: a non-negative integer, 0 when absent or nonsense. */
function n(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.floor(v) : 0;
}

function usage(input: number, cached: number, cacheWrite: number, output: number, reasoning: number): Usage {
  return { input: Math.max(0, input), cached, cacheWrite, output: Math.max(0, output), reasoning };
}

/** Text that may be a string or a list of parts (`[{type: 'text', text}]`, Mistral's thinking chunks). */
function textOf(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) return undefined;
  let s = '';
  for (const part of v) {
    const p = rec(part);
    s += (textOf(p?.text) ?? '') + (textOf(p?.thinking) ?? '');
  }
  return s;
}

function setModel(t: Tally, v: unknown): void {
  if (typeof v === 'string' && v !== '') t.model = v;
}

/** `prompt_tokens` includes cached tokens and `completion_tokens` reasoning ones. */
function openaiUsage(u: Rec): Usage {
  const cached = n(rec(u['prompt_tokens_details'])?.['cached_tokens']);
  const reasoning = n(rec(u['completion_tokens_details'])?.['reasoning_tokens']);
  return usage(n(u['prompt_tokens']) - cached, cached, 0, n(u['completion_tokens']) - reasoning, reasoning);
}

function responsesUsage(u: Rec): Usage {
  const cached = n(rec(u['input_tokens_details'])?.['cached_tokens']);
  const reasoning = n(rec(u['output_tokens_details'])?.['reasoning_tokens']);
  return usage(n(u['input_tokens']) - cached, cached, 0, n(u['output_tokens']) - reasoning, reasoning);
}

/** Anthropic's `input_tokens` already leaves out the cache reads and writes. */
function anthropicUsage(u: Rec): Usage {
  return usage(n(u['input_tokens']), n(u['cache_read_input_tokens']), n(u['cache_creation_input_tokens']), n(u['output_tokens']), 0);
}

/** `promptTokenCount` includes the cached content; tool-use prompts are counted apart from it. */
function geminiUsage(u: Rec): Usage {
  const cached = n(u['cachedContentTokenCount']);
  return usage(n(u['promptTokenCount']) - cached + n(u['toolUsePromptTokenCount']), cached, 0, n(u['candidatesTokenCount']), n(u['thoughtsTokenCount']));
}

/** `tokens` is what the model used; `billed_units` what Cohere bills, when that is all there is. */
function cohereUsage(u: Rec): Usage | undefined {
  const t = rec(u['tokens']) ?? rec(u['billed_units']);
  return t === undefined ? undefined : usage(n(t['input_tokens']), 0, 0, n(t['output_tokens']), 0);
}

/** Bedrock's names for input, cache reads, cache writes and output: Converse's `usage`, InvokeModel's metrics. */
const CONVERSE_USAGE = ['inputTokens', 'cacheReadInputTokens', 'cacheWriteInputTokens', 'outputTokens'] as const;
const INVOKE_METRICS = ['inputTokenCount', 'cacheReadInputTokenCount', 'cacheWriteInputTokenCount', 'outputTokenCount'] as const;

/** Bedrock's input count leaves out the cache reads and writes, as Anthropic's does. */
function bedrockUsage(u: Rec, names: readonly [string, string, string, string]): Usage {
  return usage(n(u[names[0]]), n(u[names[1]]), n(u[names[2]]), n(u[names[3]]), 0);
}

/**
 * InvokeModel (not streamed) reports usage in response headers only: the body is the model's own
 * format. Undefined when the headers are missing.
 */
export function bedrockHeaderUsage(headers: Readonly<Record<string, string | string[] | undefined>>): Usage | undefined {
  const h = (name: string): number | undefined => {
    const v = headers[`x-amzn-bedrock-${name}`];
    const s = Array.isArray(v) ? v[0] : v;
    return s !== undefined && /^\d{1,12}$/.test(s.trim()) ? Number(s.trim()) : undefined;
  };
  const input = h('input-token-count');
  const output = h('output-token-count');
  if (input === undefined && output === undefined) return undefined;
  return usage(input ?? 0, h('cache-read-input-token-count') ?? 0, h('cache-write-input-token-count') ?? 0, output ?? 0, 0);
}

const sse = (event: string, data: unknown): string => `${event === '' ? '' : `event: ${event}\n`}data: ${JSON.stringify(data)}\n\n`;

/**
 * OpenAI chat completions and legacy completions (and the many APIs shaped like them), streamed
 * (`choices[].delta`) or whole (`choices[].message`). Usage comes in its own chunk (`choices: []`),
 * in the last chunk (Mistral), or under `x_groq` (Groq).
 */
function chat(request: LlmRequest, t: Tally): Reader {
  let id = '';
  let created: number | undefined;
  let object = '';
  /** Choices seen without a finish reason yet: each gets one after a cut. */
  const open = new Set<number>();
  return {
    paths: [
      ['id'], ['object'], ['created'], ['model'], ['usage'], ['x_groq', 'usage'],
      ['choices', '*', 'index'], ['choices', '*', 'finish_reason'], ['choices', '*', 'text'],
      ['choices', '*', 'delta', 'content'], ['choices', '*', 'delta', 'reasoning_content'], ['choices', '*', 'delta', 'reasoning'], ['choices', '*', 'delta', 'refusal'],
      ['choices', '*', 'delta', 'tool_calls', '*', 'function', 'arguments'],
      ['choices', '*', 'message', 'content'], ['choices', '*', 'message', 'reasoning_content'], ['choices', '*', 'message', 'reasoning'], ['choices', '*', 'message', 'refusal'],
      ['choices', '*', 'message', 'tool_calls', '*', 'function', 'arguments'],
    ],
    // After the last report only [DONE] is left, unless the usage chunk Valet asked for is still to come.
    wants: () => !t.final || request.addUsage,
    // Usage is an object only in the chunk that reports it (`"usage":null` elsewhere), Groq's under
    // `x_groq`; every chunk names the model, so the latest is read should the stream stop short.
    lazy: { byName: () => CHECK, marks: [{ name: 'usage', value: '{' }], byData: (found) => (found === 0 ? LATEST : READ) },
    read(v) {
      id = str(v['id']) ?? id;
      if (typeof v['created'] === 'number') created = v['created'];
      object = str(v['object']) ?? object;
      setModel(t, v['model']);
      for (const c of list(v['choices'])) {
        const choice = rec(c);
        if (choice === undefined) continue;
        const m = rec(choice['delta']) ?? rec(choice['message']);
        t.text(textOf(choice['text']));
        t.text(textOf(m?.['content']));
        t.text(textOf(m?.['reasoning_content']));
        t.text(textOf(m?.['reasoning']));
        t.text(str(m?.['refusal']));
        for (const call of list(m?.['tool_calls'])) t.text(str(rec(rec(call)?.['function'])?.['arguments']));
        const index = n(choice['index']);
        if (typeof choice['finish_reason'] === 'string') open.delete(index);
        else open.add(index);
      }
      const own = rec(v['usage']);
      const u = own ?? rec(rec(v['x_groq'])?.['usage']);
      if (u === undefined) return false;
      t.usage = openaiUsage(u);
      t.final = true;
      // Only the chunk Valet asked for on the agent's behalf, and only when it is nothing but usage.
      return request.addUsage && own !== undefined && Array.isArray(v['choices']) && v['choices'].length === 0;
    },
    end() {
      const legacy = object === 'text_completion';
      const indices = open.size > 0 ? [...open] : [0];
      const chunk = {
        id,
        object: legacy ? 'text_completion' : 'chat.completion.chunk',
        created: created ?? Math.floor(Date.now() / 1000),
        model: t.model ?? request.model,
        choices: indices.map((index) => (legacy ? { index, text: '', finish_reason: 'length' } : { index, delta: {}, finish_reason: 'length' })),
      };
      return `${sse('', chunk)}data: [DONE]\n\n`;
    },
  };
}

/** Text deltas of the Responses API; other delta events (audio) are not text. */
const RESPONSES_TEXT = new Set([
  'response.output_text.delta',
  'response.refusal.delta',
  'response.reasoning_text.delta',
  'response.reasoning_summary_text.delta',
  'response.function_call_arguments.delta',
  'response.custom_tool_call_input.delta',
]);
const RESPONSES_END = new Set(['response.completed', 'response.incomplete', 'response.failed']);
const RESPONSES_LIFECYCLE = new Set(['response.created', 'response.in_progress', ...RESPONSES_END]);

/**
 * OpenAI Responses: a whole response object, or a stream whose end event carries the response
 * with its usage. Other events (output items, done events repeating the text) are not read.
 */
function responses(request: LlmRequest, t: Tally): Reader {
  let id = '';
  let sequence: number | undefined;
  return {
    paths: [
      ['type'], ['sequence_number'], ['delta'], ['response', 'id'], ['response', 'model'], ['response', 'usage'],
      ['id'], ['model'], ['usage'], ['output', '*', 'content', '*', 'text'], ['output', '*', 'arguments'], ['output', '*', 'summary', '*', 'text'],
    ],
    wants: (event) => event === '' || RESPONSES_LIFECYCLE.has(event) || (RESPONSES_TEXT.has(event) && !t.final),
    lazy: { byName: (event) => (RESPONSES_TEXT.has(event) ? KEEP : READ), marks: [], byData: () => READ },
    read(v, event) {
      const type = str(v['type']) ?? event;
      if (typeof v['sequence_number'] === 'number') sequence = v['sequence_number'];
      if (type === '') {
        id = str(v['id']) ?? id;
        setModel(t, v['model']);
        for (const item of list(v['output'])) {
          const it = rec(item);
          for (const part of list(it?.['content'])) t.text(str(rec(part)?.['text']));
          for (const part of list(it?.['summary'])) t.text(str(rec(part)?.['text']));
          t.text(str(it?.['arguments']));
        }
        const u = rec(v['usage']);
        if (u !== undefined) {
          t.usage = responsesUsage(u);
          t.final = true;
        }
        return false;
      }
      const r = rec(v['response']);
      if (r !== undefined) {
        id = str(r['id']) ?? id;
        setModel(t, r['model']);
      }
      if (RESPONSES_TEXT.has(type)) t.text(str(v['delta']));
      else if (RESPONSES_END.has(type)) {
        const u = rec(r?.['usage']);
        if (u !== undefined) t.usage = responsesUsage(u);
        t.final = true;
        t.complete = true;
      }
      return false;
    },
    end() {
      const event: Record<string, unknown> = {
        type: 'response.incomplete',
        response: { id, object: 'response', status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' }, model: t.model ?? request.model, output: [], usage: null },
      };
      if (sequence !== undefined) event['sequence_number'] = sequence + 1;
      return sse('response.incomplete', event);
    },
  };
}

/** Anthropic events read as they come by a lazy stream: usage (start, delta), the end, a whole message, or unnamed. */
const ANTHROPIC_READ = new Set(['', 'message_start', 'message_delta', 'message_stop', 'message']);

/**
 * Anthropic messages: a whole message, or a stream whose `message_start` reports the input and
 * whose `message_delta` reports the cumulative output (and, in newer versions, any field again).
 */
function anthropic(t: Tally): Reader {
  let reported: Record<string, unknown> = {};
  let open: number | undefined;
  return {
    paths: [
      ['type'], ['index'], ['model'], ['usage'], ['message', 'model'], ['message', 'usage'],
      ['delta', 'text'], ['delta', 'thinking'], ['delta', 'partial_json'],
      ['content', '*', 'text'], ['content', '*', 'thinking'], ['content', '*', 'input'],
    ],
    wants: (event) => event !== 'ping',
    // Block starts and stops matter only to a cut; an event without a name is read to be safe.
    lazy: { byName: (event) => (event === 'content_block_delta' ? KEEP : ANTHROPIC_READ.has(event) ? READ : SKIP), marks: [], byData: () => READ },
    read(v, event) {
      switch (str(v['type']) ?? event) {
        case 'message': {
          setModel(t, v['model']);
          for (const block of list(v['content'])) {
            const b = rec(block);
            t.text(str(b?.['text']));
            t.text(str(b?.['thinking']));
            if (b?.['input'] !== undefined) t.text(JSON.stringify(b['input']));
          }
          const u = rec(v['usage']);
          if (u !== undefined) {
            t.usage = anthropicUsage(u);
            t.final = true;
          }
          break;
        }
        case 'message_start': {
          const m = rec(v['message']);
          setModel(t, m?.['model']);
          const u = rec(m?.['usage']);
          if (u !== undefined) {
            reported = { ...u };
            t.usage = anthropicUsage(reported);
          }
          break;
        }
        case 'content_block_start':
          open = n(v['index']);
          break;
        case 'content_block_delta': {
          const d = rec(v['delta']);
          t.text(str(d?.['text']));
          t.text(str(d?.['thinking']));
          t.text(str(d?.['partial_json']));
          break;
        }
        case 'content_block_stop':
          open = undefined;
          break;
        case 'message_delta': {
          for (const [k, value] of Object.entries(rec(v['usage']) ?? {})) if (value !== null) reported[k] = value;
          t.usage = anthropicUsage(reported);
          t.final = true;
          break;
        }
        case 'message_stop':
          t.complete = true;
          break;
      }
      return false;
    },
    end() {
      return (
        (open === undefined ? '' : sse('content_block_stop', { type: 'content_block_stop', index: open })) +
        sse('message_delta', { type: 'message_delta', delta: { stop_reason: 'max_tokens', stop_sequence: null }, usage: { output_tokens: t.output() } }) +
        sse('message_stop', { type: 'message_stop' })
      );
    },
  };
}

/**
 * Gemini generateContent: one response, or a stream of them (SSE with `alt=sse`, else a JSON array
 * written over time), each with the usage so far; the one with a finish reason is the last.
 */
function gemini(request: LlmRequest, t: Tally): Reader {
  let responseId: string | undefined;
  let lastUsage: Rec | undefined;
  return {
    paths: [
      ['responseId'], ['modelVersion'], ['usageMetadata'], ['candidates', '*', 'finishReason'],
      ['candidates', '*', 'content', 'parts', '*', 'text'], ['candidates', '*', 'content', 'parts', '*', 'functionCall'],
    ],
    wants: () => true,
    // Every chunk reports the usage so far: only the last one's is needed (the finished one's, or
    // the latest's when the stream stops short).
    lazy: {
      byName: () => CHECK,
      marks: [{ name: 'finishReason' }, { name: 'usageMetadata', value: '{' }],
      byData: (found) => ((found & 1) !== 0 ? READ : found !== 0 ? LATEST : KEEP),
    },
    read(v) {
      responseId = str(v['responseId']) ?? responseId;
      setModel(t, v['modelVersion']);
      let finished = false;
      for (const c of list(v['candidates'])) {
        const candidate = rec(c);
        for (const part of list(rec(candidate?.['content'])?.['parts'])) {
          const p = rec(part);
          t.text(str(p?.['text']));
          if (p?.['functionCall'] !== undefined) t.text(JSON.stringify(p['functionCall']));
        }
        if (typeof candidate?.['finishReason'] === 'string') finished = true;
      }
      const u = rec(v['usageMetadata']);
      if (u !== undefined) {
        lastUsage = u;
        t.usage = geminiUsage(u);
      }
      if (finished) {
        t.final = true;
        t.complete = true;
      }
      return false;
    },
    end(framing) {
      const chunk: Record<string, unknown> = {
        candidates: [{ content: { parts: [{ text: '' }], role: 'model' }, finishReason: 'MAX_TOKENS', index: 0 }],
      };
      if (lastUsage !== undefined) chunk['usageMetadata'] = lastUsage;
      chunk['modelVersion'] = t.model ?? (request.route.pathModel ?? request.model);
      if (responseId !== undefined) chunk['responseId'] = responseId;
      // Gemini ends its SSE events with CR LF CR LF and separates array elements with ",\r\n".
      return framing === 'sse' ? `data: ${JSON.stringify(chunk)}\r\n\r\n` : `,\r\n${JSON.stringify(chunk)}\n]`;
    },
  };
}

/** Cohere's events that carry text. */
const COHERE_TEXT = new Set(['content-delta', 'tool-plan-delta', 'tool-call-delta']);

/** Cohere v2 chat: a whole response, or a stream whose `message-end` carries the usage. */
function cohere(t: Tally): Reader {
  let open: number | undefined;
  return {
    paths: [
      ['type'], ['index'], ['usage'], ['delta', 'usage'],
      ['delta', 'message', 'content', 'text'], ['delta', 'message', 'tool_plan'], ['delta', 'message', 'tool_calls', 'function', 'arguments'],
      ['message', 'content', '*', 'text'], ['message', 'tool_plan'], ['message', 'tool_calls', '*', 'function', 'arguments'],
    ],
    wants: () => true,
    lazy: { byName: (event) => (COHERE_TEXT.has(event) ? KEEP : event === '' || event === 'message-end' ? READ : SKIP), marks: [], byData: () => READ },
    read(v, event) {
      const type = str(v['type']) ?? event;
      switch (type) {
        case 'content-start':
          open = n(v['index']);
          break;
        case 'content-end':
          open = undefined;
          break;
        case 'content-delta':
        case 'tool-plan-delta':
        case 'tool-call-delta': {
          const m = rec(rec(v['delta'])?.['message']);
          t.text(str(rec(m?.['content'])?.['text']));
          t.text(str(m?.['tool_plan']));
          t.text(str(rec(rec(m?.['tool_calls'])?.['function'])?.['arguments']));
          break;
        }
        case 'message-end': {
          const u = rec(rec(v['delta'])?.['usage']);
          if (u !== undefined) t.usage = cohereUsage(u);
          t.final = true;
          t.complete = true;
          break;
        }
        case '': {
          const m = rec(v['message']);
          for (const part of list(m?.['content'])) t.text(str(rec(part)?.['text']));
          t.text(str(m?.['tool_plan']));
          for (const call of list(m?.['tool_calls'])) t.text(str(rec(rec(call)?.['function'])?.['arguments']));
          const u = rec(v['usage']);
          if (u !== undefined) {
            t.usage = cohereUsage(u);
            t.final = true;
          }
          break;
        }
      }
      return false;
    },
    end() {
      return (open === undefined ? '' : sse('content-end', { type: 'content-end', index: open })) + sse('message-end', { type: 'message-end', delta: { finish_reason: 'MAX_TOKENS' } });
    },
  };
}

/** Embeddings: OpenAI's `usage`, Cohere's `meta.billed_units`; Gemini reports nothing. */
function embeddings(t: Tally): Reader {
  return {
    paths: [['model'], ['usage'], ['meta', 'billed_units']],
    wants: () => true,
    read(v) {
      setModel(t, v['model']);
      const u = rec(v['usage']);
      const billed = rec(rec(v['meta'])?.['billed_units']);
      if (u !== undefined) t.usage = openaiUsage(u);
      else if (billed !== undefined) t.usage = usage(n(billed['input_tokens']), 0, 0, 0, 0);
      else return false;
      t.final = true;
      return false;
    },
    end: () => '',
  };
}

/**
 * Bedrock: a whole Converse response, or an event stream — ConverseStream's events (`metadata`
 * carries the usage) or InvokeModelWithResponseStream's `chunk`s, each the model's own JSON in
 * base64 (the last adds `amazon-bedrock-invocationMetrics`). Valet writes no end of its own into an
 * event stream (each message carries CRCs): a cut stream just stops after a whole message.
 */
function bedrock(t: Tally): Reader {
  return {
    paths: [['usage'], ['output', 'message', 'content', '*', 'text'], ['output', 'message', 'content', '*', 'toolUse', 'input']],
    wants: () => true,
    read(v, event) {
      switch (event) {
        case '': {
          for (const block of list(rec(rec(v['output'])?.['message'])?.['content'])) {
            const b = rec(block);
            t.text(str(b?.['text']));
            const input = rec(b?.['toolUse'])?.['input'];
            if (input !== undefined) t.text(JSON.stringify(input));
          }
          const u = rec(v['usage']);
          if (u !== undefined) {
            t.usage = bedrockUsage(u, CONVERSE_USAGE);
            t.final = true;
          }
          break;
        }
        case 'contentBlockDelta': {
          const d = rec(v['delta']);
          t.text(str(d?.['text']));
          t.text(str(rec(d?.['toolUse'])?.['input']));
          t.text(str(rec(d?.['reasoningContent'])?.['text']));
          break;
        }
        case 'metadata': {
          const u = rec(v['usage']);
          if (u !== undefined) t.usage = bedrockUsage(u, CONVERSE_USAGE);
          t.final = true;
          t.complete = true;
          break;
        }
        case 'chunk':
          invokeChunk(t, v['bytes']);
          break;
      }
      return false;
    },
    end: () => '',
  };
}

/** One InvokeModelWithResponseStream chunk: the model's own streaming JSON, base64-encoded. */
function invokeChunk(t: Tally, bytes: unknown): void {
  if (typeof bytes !== 'string') return;
  let v: Rec | undefined;
  try {
    v = rec(JSON.parse(Buffer.from(bytes, 'base64').toString('utf8')));
  } catch {
    return;
  }
  if (v === undefined) return;
  // Anthropic's events; Titan, Llama, Claude text completions, Mistral and OpenAI-style models' text.
  if (v['type'] === 'message_start') setModel(t, rec(v['message'])?.['model']);
  const d = rec(v['delta']);
  t.text(str(d?.['text']) ?? str(d?.['thinking']) ?? str(d?.['partial_json']));
  t.text(str(v['outputText']) ?? str(v['generation']) ?? str(v['completion']));
  for (const o of list(v['outputs'])) t.text(str(rec(o)?.['text']));
  for (const c of list(v['choices'])) t.text(str(rec(rec(c)?.['delta'])?.['content']) ?? str(rec(c)?.['text']));
  const metrics = rec(v['amazon-bedrock-invocationMetrics']);
  if (metrics !== undefined) {
    t.usage = bedrockUsage(metrics, INVOKE_METRICS);
    t.final = true;
    t.complete = true;
  }
}

/** The reader for a request's API, or undefined when its responses carry nothing to read. */
export function readerFor(request: LlmRequest, eventStream: boolean, t: Tally): Reader | undefined {
  switch (request.route.api) {
    case 'chat':
      return chat(request, t);
    case 'responses':
      return responses(request, t);
    case 'embeddings':
      return embeddings(t);
    case 'messages':
      return anthropic(t);
    case 'generate':
      return gemini(request, t);
    case 'cohere-chat':
      return cohere(t);
    case 'converse':
      return bedrock(t);
    case 'invoke':
      return eventStream ? bedrock(t) : undefined;
    case 'batch':
      return undefined;
  }
}
