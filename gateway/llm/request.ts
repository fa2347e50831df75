import { countTokens } from './tokens.js';
import type { LlmRequest, LlmRoute } from './types.js';

/**
 * What a metered request asks for, read from its parsed JSON body before it is forwarded: the model,
 * whether it streams, how much output it allows, how many calls it makes and an estimate of its
 * input tokens. The caller reserves `inputTokens + calls × maxOutput` (the model's maximum when
 * `maxOutput` is undefined) and settles with what the response reports.
 */

/**
 * Input tokens counted for each image, audio clip, video or binary document in a request, in place
 * of tokenizing its bytes (base64 says nothing about what the model is charged for it). About what
 * Anthropic charges for an image at its largest size before downscaling (~1.15 megapixels at
 * width × height / 750); OpenAI's high-detail tiles and Gemini's 258 tokens per image come to less.
 * A multi-page document or a long recording can cost more: such requests are under-estimated until
 * the response reports their usage.
 */
export const IMAGE_TOKENS = 1_600;

/**
 * How much of a request's text (UTF-16 code units) is run through the tokenizer. Tokenizing runs on
 * the event loop, at roughly 250 ms per million characters of prose or code (up to ~1.5 s for text
 * without spaces, such as base64): every other request and stream waits meanwhile. So a request is
 * tokenized only this far (≤ ~8 ms); the rest counts at the larger of one token per two UTF-8 bytes
 * (more than ordinary text averages: about four bytes per token for English, three for code) and
 * the density of the part tokenized plus a quarter, which keeps the estimate on the safe side.
 */
export const TOKENIZE_LIMIT = 32_768;

/** OpenAI's chat format: about four tokens of framing per message and three priming the reply. */
const MESSAGE_TOKENS = 4;
const REPLY_TOKENS = 3;

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The first of `keys` an object has (Gemini reads camelCase and snake_case alike); undefined for anything else. */
function get(o: unknown, ...keys: string[]): unknown {
  if (!isObj(o)) return undefined;
  for (const k of keys) if (Object.hasOwn(o, k)) return o[k];
  return undefined;
}

const positiveInt = (v: unknown): number | undefined => (typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : undefined);

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Keys whose whole value the model never reads. */
const NOT_READ = new Set(['metadata', 'labels', 'cache_control', 'safety_settings', 'safetySettings']);

/** Keys whose string values are identifiers or settings rather than text the model reads (ids ending `_id`/`Id` too). */
const NOT_TEXT = new Set([
  'id',
  'model',
  'role',
  'type',
  'object',
  'status',
  'tool_choice',
  'service_tier',
  'reasoning_effort',
  'verbosity',
  'truncation',
  'truncate',
  'encoding_format',
  'input_type',
  'embedding_types',
  'task_type',
  'taskType',
  'format',
  'mime_type',
  'mimeType',
  'media_type',
  'detail',
  'anthropic_version',
  'user',
  'safety_identifier',
  'prompt_cache_key',
  'prompt_cache_retention',
]);
const ID_KEY = /(?:_id|Id)$/;

/**
 * Definitions the model reads keys and all: tool and function declarations and output schemas. They
 * are counted with their property names, which a walk over string values alone would miss.
 */
const SCHEMA_KEYS = new Set(['tools', 'functions', 'toolConfig', 'response_format', 'responseSchema', 'response_schema', 'responseJsonSchema', 'response_json_schema', 'output_format', 'text']);

/** Lists of conversation turns: each turn adds the chat format's framing. */
const MESSAGE_LISTS = new Set(['messages', 'contents', 'chat_history', 'input']);

/** Content parts by `type` that carry an image, audio, video or file rather than text (`image_generation_call`: a generated image sent back). */
const MEDIA_TYPES = new Set(['image', 'image_url', 'input_image', 'input_audio', 'input_file', 'file', 'image_file', 'audio', 'video', 'image_generation_call']);

/** Keys that make an object a media part: Gemini's inline and file data, Bedrock's image/video blocks, OpenAI's audio. */
const MEDIA_KEYS = ['image_url', 'input_audio', 'inline_data', 'inlineData', 'file_data', 'fileData', 'image', 'video'];

/** A document given as text (Anthropic `source.type: text|content`, Bedrock `source.text|content`) is read as text. */
function textDocument(doc: unknown): boolean {
  const source = get(doc, 'source');
  const type = get(source, 'type');
  return type === 'text' || type === 'content' || get(source, 'text') !== undefined || get(source, 'content') !== undefined;
}

function isMediaPart(o: Obj): boolean {
  const type = o['type'];
  if (type === 'document') return !textDocument(o);
  if (typeof type === 'string' && MEDIA_TYPES.has(type)) return true;
  if (isObj(o['document'])) return !textDocument(o['document']);
  return MEDIA_KEYS.some((k) => o[k] !== undefined && o[k] !== null);
}

/**
 * Keys whose strings are images outside a content part: Cohere embed `images` (data URLs) and Titan
 * embeddings `inputImage` (base64). Everywhere else binary data sits in a media part, and a string
 * is tokenized as text whatever it looks like, so that no text the model reads escapes the count.
 */
const IMAGE_STRINGS = new Set(['images', 'inputImage']);

/** Text and allowances found in a request, tokenized at the end in one pass. */
class Tally {
  private readonly texts: string[] = [];
  private chars = 0;
  private overflowBytes = 0;
  /** Tokens counted without the tokenizer: media allowances, message framing, token-id inputs. */
  fixed = 0;

  private overflowChars = 0;

  text(s: string): void {
    if (s === '') return;
    const room = TOKENIZE_LIMIT - this.chars;
    if (s.length <= room) {
      this.texts.push(s);
      this.chars += s.length;
      return;
    }
    if (room > 0) this.texts.push(s.slice(0, room));
    this.chars = TOKENIZE_LIMIT;
    const rest = room > 0 ? s.slice(room) : s;
    this.overflowChars += rest.length;
    this.overflowBytes += Buffer.byteLength(rest);
  }

  tokens(): number {
    const counted = this.texts.length === 0 ? 0 : countTokens(this.texts.join('\n'));
    const density = this.chars === 0 ? 0 : counted / this.chars;
    const rest = Math.max(this.overflowBytes / 2, this.overflowChars * density * 1.25);
    return counted + Math.ceil(rest) + this.fixed;
  }
}

interface Visit {
  readonly value: unknown;
  /** The key the value sits under (an array's elements inherit their array's). */
  readonly key: string;
  /** Inside a definition: keys count as text and nothing is skipped. */
  readonly schema: boolean;
}

/**
 * Estimated input tokens of a request body: every string the model reads, tools with their keys,
 * media by allowance, and the framing of each message. Iterative, so a deeply nested body cannot
 * exhaust the stack.
 */
function estimateInput(body: unknown): number {
  const tally = new Tally();
  const stack: Visit[] = [{ value: body, key: '', schema: false }];
  for (let v = stack.pop(); v !== undefined; v = stack.pop()) {
    const { value, key, schema } = v;
    if (typeof value === 'string') {
      if (schema) tally.text(value);
      else if (NOT_TEXT.has(key) || ID_KEY.test(key)) continue;
      else if (IMAGE_STRINGS.has(key)) tally.fixed += IMAGE_TOKENS;
      else tally.text(value);
    } else if (Array.isArray(value)) {
      // Token ids instead of text (OpenAI embeddings and legacy completions): one token each.
      if ((key === 'input' || key === 'prompt') && value.length > 0 && value.every((x) => typeof x === 'number')) {
        tally.fixed += value.length;
        continue;
      }
      if (!schema && MESSAGE_LISTS.has(key)) {
        const turns = value.filter(isObj).length;
        if (turns > 0) tally.fixed += REPLY_TOKENS + MESSAGE_TOKENS * turns;
      }
      for (const item of value) stack.push({ value: item, key, schema });
    } else if (isObj(value)) {
      if (!schema && value !== body && isMediaPart(value)) {
        tally.fixed += IMAGE_TOKENS;
        continue;
      }
      for (const [k, child] of Object.entries(value)) {
        if (schema) {
          tally.text(k);
          stack.push({ value: child, key: k, schema });
        } else if (!NOT_READ.has(k)) {
          stack.push({ value: child, key: k, schema: SCHEMA_KEYS.has(k) && typeof child === 'object' && child !== null });
        }
      }
    }
  }
  return tally.tokens();
}

/** The most output a single (non-batch) request allows, by API; undefined when it sets none. */
function maxOutputOf(route: LlmRoute, body: unknown): number | undefined {
  switch (route.api) {
    case 'embeddings':
      return 0;
    case 'chat':
      return positiveInt(get(body, 'max_completion_tokens')) ?? positiveInt(get(body, 'max_tokens'));
    case 'responses':
      return positiveInt(get(body, 'max_output_tokens'));
    case 'messages':
      // `max_tokens_to_sample` is the legacy /v1/complete field.
      return positiveInt(get(body, 'max_tokens')) ?? positiveInt(get(body, 'max_tokens_to_sample'));
    case 'generate':
      return positiveInt(get(get(body, 'generationConfig', 'generation_config'), 'maxOutputTokens', 'max_output_tokens'));
    case 'cohere-chat':
      return positiveInt(get(body, 'max_tokens'));
    case 'converse':
      return positiveInt(get(get(body, 'inferenceConfig'), 'maxTokens'));
    case 'invoke':
      // The body is the model vendor's own: Anthropic, Mistral and Cohere `max_tokens`, Llama
      // `max_gen_len`, Titan `textGenerationConfig.maxTokenCount`, Nova `inferenceConfig.max_new_tokens`.
      return (
        positiveInt(get(body, 'max_tokens')) ??
        positiveInt(get(body, 'max_gen_len')) ??
        positiveInt(get(get(body, 'textGenerationConfig'), 'maxTokenCount')) ??
        positiveInt(get(get(body, 'inferenceConfig'), 'max_new_tokens'))
      );
    case 'batch':
      return undefined;
  }
}

/** Separate generations one request asks for: OpenAI `n` (and legacy `best_of`, all billed), Gemini `candidateCount`. */
function choicesOf(route: LlmRoute, body: unknown): number {
  if (route.api === 'chat') return Math.max(positiveInt(get(body, 'n')) ?? 1, positiveInt(get(body, 'best_of')) ?? 1);
  if (route.api === 'generate') return positiveInt(get(get(body, 'generationConfig', 'generation_config'), 'candidateCount', 'candidate_count')) ?? 1;
  return 1;
}

/**
 * The largest of the requests' limits; undefined when any request sets none (that one may run to
 * the model's maximum, which the caller knows and this module does not).
 */
function largest(limits: readonly (number | undefined)[]): number | undefined {
  let max = 0;
  for (const l of limits) {
    if (l === undefined) return undefined;
    max = Math.max(max, l);
  }
  return limits.length === 0 ? undefined : max;
}

const NOTHING = { inputTokens: 0, calls: 1, maxOutput: undefined, opaque: true } as const;

/** An asynchronous batch: inline requests are read like single ones; a batch of an uploaded file is opaque. */
function readBatch(route: LlmRoute, body: unknown): Pick<LlmRequest, 'model' | 'inputTokens' | 'calls' | 'maxOutput' | 'opaque'> {
  if (route.family === 'anthropic') {
    const requests = get(body, 'requests');
    const params = Array.isArray(requests) ? requests.map((r) => get(r, 'params')) : [];
    // One model for the batch only when every request names the same one: a mixed batch is priced
    // as an unknown model rather than at whichever model came first.
    const models = new Set(params.map((p) => str(get(p, 'model')) ?? ''));
    return {
      model: models.size === 1 ? [...models][0] ?? '' : '',
      inputTokens: estimateInput(params),
      calls: Math.max(1, params.length),
      maxOutput: largest(params.map((p) => positiveInt(get(p, 'max_tokens')))),
      opaque: false,
    };
  }
  const model = route.pathModel ?? str(get(body, 'model')) ?? '';
  if (route.family !== 'gemini') return { model, ...NOTHING };
  const config = get(get(body, 'batch'), 'inputConfig', 'input_config');
  const requests = get(get(config, 'requests'), 'requests');
  if (get(config, 'fileName', 'file_name') !== undefined || !Array.isArray(requests)) return { model, ...NOTHING };
  const inner = requests.map((r) => get(r, 'request'));
  const generate: LlmRoute = { family: 'gemini', api: 'generate' };
  return {
    model,
    inputTokens: estimateInput(inner),
    calls: Math.max(1, inner.length),
    maxOutput: largest(inner.map((r) => maxOutputOf(generate, r))),
    opaque: false,
  };
}

/**
 * What a metered request asks for. `body` is the parsed JSON body; anything else (undefined, not
 * an object) reads as a request for no model with no input, and nothing here throws.
 *
 * - `model`: the path's model where the path names one (Gemini, Azure deployments, Bedrock), else
 *   `model` in the body; for an Anthropic batch, the model all its requests share ('' when mixed).
 * - `maxOutput`: the API's own limit field, positive integers only; 0 for embeddings; for an inline
 *   batch the largest per-request limit (undefined when any request sets none).
 * - `calls`: `n` / `best_of` / `candidateCount` choices, or the number of inline batch requests.
 * - `inputTokens`: an o200k_base estimate of the text the model reads (every request of an inline
 *   batch summed), images and other binary parts at {@link IMAGE_TOKENS} each; 0 when `opaque`.
 * - `opaque`: an OpenAI batch, or a Gemini batch of an uploaded file.
 * - `addUsage`: an OpenAI-style streamed chat that did not ask for usage (see {@link withStreamUsage}).
 */
export function readLlmRequest(route: LlmRoute, body: unknown, options: { readonly mayAddUsage?: boolean } = {}): LlmRequest {
  const stream = get(body, 'stream') === true || route.pathStream === true;
  if (route.api === 'batch') return { route, stream, addUsage: false, ...readBatch(route, body) };
  let input: number | undefined;
  return {
    route,
    model: route.pathModel ?? str(get(body, 'model')) ?? '',
    stream,
    maxOutput: maxOutputOf(route, body),
    // Counted only when asked for (a usage budget applies, or a response reported none): most calls never pay for it.
    get inputTokens(): number {
      return (input ??= estimateInput(body));
    },
    calls: choicesOf(route, body),
    addUsage: options.mayAddUsage !== false && route.family === 'openai' && route.api === 'chat' && stream && get(get(body, 'stream_options'), 'include_usage') !== true,
    opaque: false,
  };
}

/**
 * The body with `stream_options.include_usage: true` added (other stream options kept), so that a
 * streamed chat ends with a usage chunk; re-serialised with JSON.stringify. For requests whose
 * `addUsage` is true, which were parsed as a JSON object; other bytes are returned unchanged.
 */
export function withStreamUsage(body: Buffer): Buffer {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return body;
  }
  if (!isObj(parsed)) return body;
  const options = isObj(parsed['stream_options']) ? parsed['stream_options'] : {};
  return Buffer.from(JSON.stringify({ ...parsed, stream_options: { ...options, include_usage: true } }));
}
