import { countTokens } from 'gpt-tokenizer';
import { describe, expect, it } from 'vitest';
import { IMAGE_TOKENS, TOKENIZE_LIMIT, readLlmRequest, withStreamUsage } from '../../../gateway/llm/request.js';
import { meteredRoute } from '../../../gateway/llm/routes.js';
import type { LlmFamily, LlmRoute } from '../../../gateway/llm/types.js';

/** The route a POST to `path` takes (the test fails if it is not metered). */
function routeOf(family: LlmFamily, path: string): LlmRoute {
  const route = meteredRoute(family, 'POST', path);
  if (route === undefined) throw new Error(`${family} ${path} is not metered`);
  return route;
}

const CHAT = routeOf('openai', '/v1/chat/completions');
const LEGACY = routeOf('openai', '/v1/completions');
const RESPONSES = routeOf('openai', '/v1/responses');
const EMBEDDINGS = routeOf('openai', '/v1/embeddings');
const OPENAI_BATCH = routeOf('openai', '/v1/batches');
const AZURE = routeOf('openai', '/openai/deployments/prod-4o/chat/completions');
const MESSAGES = routeOf('anthropic', '/v1/messages');
const COMPLETE = routeOf('anthropic', '/v1/complete');
const ANTHROPIC_BATCH = routeOf('anthropic', '/v1/messages/batches');
const GENERATE = routeOf('gemini', '/v1beta/models/gemini-2.5-flash:generateContent');
const STREAM_GENERATE = routeOf('gemini', '/v1beta/models/gemini-2.5-flash:streamGenerateContent');
const EMBED_CONTENT = routeOf('gemini', '/v1beta/models/gemini-embedding-001:embedContent');
const BATCH_EMBED = routeOf('gemini', '/v1beta/models/gemini-embedding-001:batchEmbedContents');
const GEMINI_BATCH = routeOf('gemini', '/v1beta/models/gemini-2.5-flash:batchGenerateContent');
const COHERE_CHAT = routeOf('cohere', '/v2/chat');
const COHERE_EMBED = routeOf('cohere', '/v2/embed');
const CONVERSE = routeOf('bedrock', '/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse');
const CONVERSE_STREAM = routeOf('bedrock', '/model/amazon.nova-pro-v1%3A0/converse-stream');
const INVOKE = routeOf('bedrock', '/model/meta.llama3-1-8b-instruct-v1%3A0/invoke');

const tokens = (text: string): number => countTokens(text);
/** A message list's framing in the estimate: three for the reply and four per message. */
const framing = (messages: number): number => 3 + 4 * messages;
const BASE64_IMAGE = Buffer.alloc(600_000, 7).toString('base64');

describe('readLlmRequest', () => {
  describe('model', () => {
    it('is the body’s model for OpenAI, Anthropic and Cohere', () => {
      expect(readLlmRequest(CHAT, { model: 'gpt-4o-mini' }).model).toBe('gpt-4o-mini');
      expect(readLlmRequest(MESSAGES, { model: 'claude-sonnet-4-5' }).model).toBe('claude-sonnet-4-5');
      expect(readLlmRequest(COHERE_CHAT, { model: 'command-a-03-2025' }).model).toBe('command-a-03-2025');
    });

    it('is the path’s model for Gemini, Azure deployments and Bedrock, whatever the body says', () => {
      expect(readLlmRequest(GENERATE, { model: 'other' }).model).toBe('gemini-2.5-flash');
      expect(readLlmRequest(AZURE, {}).model).toBe('prod-4o');
      expect(readLlmRequest(AZURE, { model: 'gpt-4o' }).model).toBe('prod-4o');
      expect(readLlmRequest(CONVERSE, {}).model).toBe('us.anthropic.claude-sonnet-4-20250514-v1:0');
      expect(readLlmRequest(INVOKE, { model: 'x' }).model).toBe('meta.llama3-1-8b-instruct-v1:0');
    });

    it('is empty when the request names none (or names it with something else than a string)', () => {
      expect(readLlmRequest(CHAT, {}).model).toBe('');
      expect(readLlmRequest(CHAT, { model: 42 }).model).toBe('');
    });
  });

  describe('stream', () => {
    it('is `stream: true` in the body, or a streaming path', () => {
      expect(readLlmRequest(CHAT, { stream: true }).stream).toBe(true);
      expect(readLlmRequest(CHAT, { stream: false }).stream).toBe(false);
      expect(readLlmRequest(CHAT, { stream: 'true' }).stream).toBe(false);
      expect(readLlmRequest(MESSAGES, { stream: true }).stream).toBe(true);
      expect(readLlmRequest(GENERATE, {}).stream).toBe(false);
      expect(readLlmRequest(STREAM_GENERATE, {}).stream).toBe(true);
      expect(readLlmRequest(CONVERSE, {}).stream).toBe(false);
      expect(readLlmRequest(CONVERSE_STREAM, {}).stream).toBe(true);
      expect(readLlmRequest(routeOf('bedrock', '/model/x/invoke-with-response-stream'), {}).stream).toBe(true);
    });
  });

  describe('maxOutput', () => {
    it.each([
      ['openai chat max_completion_tokens', CHAT, { max_completion_tokens: 300, max_tokens: 100 }, 300],
      ['openai chat max_tokens', CHAT, { max_tokens: 100 }, 100],
      ['openai legacy completions max_tokens', LEGACY, { max_tokens: 16 }, 16],
      ['responses max_output_tokens', RESPONSES, { max_output_tokens: 2048, max_tokens: 5 }, 2048],
      ['anthropic max_tokens', MESSAGES, { max_tokens: 1024 }, 1024],
      ['anthropic legacy max_tokens_to_sample', COMPLETE, { max_tokens_to_sample: 256 }, 256],
      ['gemini generationConfig.maxOutputTokens', GENERATE, { generationConfig: { maxOutputTokens: 8192 } }, 8192],
      ['gemini generation_config.max_output_tokens', GENERATE, { generation_config: { max_output_tokens: 77 } }, 77],
      ['cohere max_tokens', COHERE_CHAT, { max_tokens: 500 }, 500],
      ['bedrock converse inferenceConfig.maxTokens', CONVERSE, { inferenceConfig: { maxTokens: 4000 } }, 4000],
      ['bedrock invoke Anthropic max_tokens', INVOKE, { anthropic_version: 'bedrock-2023-05-31', max_tokens: 900 }, 900],
      ['bedrock invoke Llama max_gen_len', INVOKE, { prompt: 'hi', max_gen_len: 512 }, 512],
      ['bedrock invoke Titan textGenerationConfig.maxTokenCount', INVOKE, { inputText: 'hi', textGenerationConfig: { maxTokenCount: 3000 } }, 3000],
      ['bedrock invoke Mistral max_tokens', INVOKE, { prompt: '<s>[INST] hi [/INST]', max_tokens: 400 }, 400],
      ['bedrock invoke Nova inferenceConfig.max_new_tokens', INVOKE, { messages: [], inferenceConfig: { max_new_tokens: 1000 } }, 1000],
    ] as const)('%s', (_, route, body, expected) => {
      expect(readLlmRequest(route, body).maxOutput).toBe(expected);
    });

    it('counts only positive integers; a request that sets none has none', () => {
      for (const bad of [0, -5, 1.5, '100', null, true, Number.POSITIVE_INFINITY, 2 ** 60]) {
        expect(readLlmRequest(CHAT, { max_tokens: bad }).maxOutput, String(bad)).toBeUndefined();
        expect(readLlmRequest(MESSAGES, { max_tokens: bad }).maxOutput, String(bad)).toBeUndefined();
      }
      expect(readLlmRequest(CHAT, { max_completion_tokens: 0, max_tokens: 50 }).maxOutput).toBe(50);
      expect(readLlmRequest(GENERATE, {}).maxOutput).toBeUndefined();
      expect(readLlmRequest(CONVERSE, { inferenceConfig: {} }).maxOutput).toBeUndefined();
    });

    it('is 0 for embeddings, which produce no output', () => {
      expect(readLlmRequest(EMBEDDINGS, { model: 'text-embedding-3-small', input: 'x', max_tokens: 50 }).maxOutput).toBe(0);
      expect(readLlmRequest(EMBED_CONTENT, { content: { parts: [{ text: 'x' }] } }).maxOutput).toBe(0);
      expect(readLlmRequest(BATCH_EMBED, { requests: [] }).maxOutput).toBe(0);
      expect(readLlmRequest(COHERE_EMBED, { texts: ['x'] }).maxOutput).toBe(0);
    });
  });

  describe('calls', () => {
    it('is OpenAI’s n (and legacy best_of, which is billed in full), 1 by default', () => {
      expect(readLlmRequest(CHAT, {}).calls).toBe(1);
      expect(readLlmRequest(CHAT, { n: 3 }).calls).toBe(3);
      expect(readLlmRequest(CHAT, { n: 0 }).calls).toBe(1);
      expect(readLlmRequest(CHAT, { n: 'many' }).calls).toBe(1);
      expect(readLlmRequest(LEGACY, { n: 2, best_of: 5 }).calls).toBe(5);
    });

    it('is Gemini’s candidateCount', () => {
      expect(readLlmRequest(GENERATE, { generationConfig: { candidateCount: 4 } }).calls).toBe(4);
      expect(readLlmRequest(GENERATE, { generation_config: { candidate_count: 2 } }).calls).toBe(2);
    });

    it('is 1 for everything else, Gemini’s batchEmbedContents included (embeddings cost input only)', () => {
      expect(readLlmRequest(MESSAGES, { n: 3 }).calls).toBe(1);
      expect(readLlmRequest(BATCH_EMBED, { requests: [{ content: { parts: [{ text: 'a' }] } }, { content: { parts: [{ text: 'b' }] } }] }).calls).toBe(1);
      expect(readLlmRequest(CONVERSE, {}).calls).toBe(1);
    });
  });

  describe('inputTokens', () => {
    it('tokenizes the text with o200k_base, plus each message list’s framing', () => {
      const text = 'What is the capital of France? Answer in one word.';
      expect(readLlmRequest(CHAT, { model: 'gpt-4o', messages: [{ role: 'user', content: text }] }).inputTokens).toBe(tokens(text) + framing(1));
      expect(readLlmRequest(EMBEDDINGS, { model: 'text-embedding-3-small', input: text }).inputTokens).toBe(tokens(text));
      expect(readLlmRequest(LEGACY, { model: 'gpt-3.5-turbo-instruct', prompt: text }).inputTokens).toBe(tokens(text));
    });

    it('reads every family’s text: system, instructions, contents, documents, prompts', () => {
      const parts = ['You are terse.', 'Summarise the report.', 'Q3 revenue rose 4%.'];
      const all = parts.join('\n');
      const near = (n: number): void => {
        expect(n).toBeGreaterThanOrEqual(tokens(all) - 3);
        expect(n).toBeLessThanOrEqual(tokens(all) + 3 + framing(2));
      };
      near(readLlmRequest(MESSAGES, { model: 'claude-sonnet-4-5', max_tokens: 100, system: parts[0], messages: [{ role: 'user', content: [{ type: 'text', text: parts[1] }, { type: 'text', text: parts[2] }] }] }).inputTokens);
      near(readLlmRequest(RESPONSES, { model: 'gpt-5', instructions: parts[0], input: [{ role: 'user', content: [{ type: 'input_text', text: parts[1] }, { type: 'input_text', text: parts[2] }] }] }).inputTokens);
      near(readLlmRequest(GENERATE, { systemInstruction: { parts: [{ text: parts[0] }] }, contents: [{ role: 'user', parts: [{ text: parts[1] }, { text: parts[2] }] }] }).inputTokens);
      near(readLlmRequest(COHERE_CHAT, { model: 'command-a-03-2025', messages: [{ role: 'system', content: parts[0] }, { role: 'user', content: `${parts[1]} ${parts[2]}` }] }).inputTokens);
      near(readLlmRequest(CONVERSE, { system: [{ text: parts[0] }], messages: [{ role: 'user', content: [{ text: parts[1] }, { text: parts[2] }] }] }).inputTokens);
      near(readLlmRequest(INVOKE, { prompt: all, max_gen_len: 10 }).inputTokens);
      near(readLlmRequest(routeOf('cohere', '/v1/chat'), { message: parts[1], preamble: parts[0], documents: [{ id: 'doc-1', snippet: parts[2] }] }).inputTokens);
    });

    it('leaves out identifiers and settings the model does not read', () => {
      const text = 'hello there';
      const plain = readLlmRequest(CHAT, { model: 'gpt-4o', messages: [{ role: 'user', content: text }] }).inputTokens;
      const padded = readLlmRequest(CHAT, {
        model: 'gpt-4o-2024-08-06-with-a-very-long-name',
        messages: [{ role: 'user', content: text }],
        user: 'user-1234567890-abcdefghijklmnop',
        metadata: { ticket: 'a long value that is never sent to the model at all, just stored' },
        service_tier: 'flex',
        reasoning_effort: 'high',
        stream_options: { include_usage: true },
        prompt_cache_key: 'some-cache-key-that-is-long',
        previous_response_id: 'resp_0123456789abcdef',
      }).inputTokens;
      expect(padded).toBe(plain);
    });

    it('counts tool and schema definitions with their property names', () => {
      const base = { model: 'gpt-4o', messages: [{ role: 'user', content: 'weather?' }] };
      const tool = {
        type: 'function',
        function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object', properties: { city_name: { type: 'string' }, unit_system: { type: 'string', enum: ['metric', 'imperial'] } } } },
      };
      const without = readLlmRequest(CHAT, base).inputTokens;
      const withTool = readLlmRequest(CHAT, { ...base, tools: [tool] }).inputTokens;
      expect(withTool - without).toBeGreaterThanOrEqual(tokens('get_weather Current weather city_name unit_system metric imperial'));
      const schema = readLlmRequest(CHAT, { ...base, response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: { properties: { temperature_celsius: { type: 'number' } } } } } }).inputTokens;
      expect(schema - without).toBeGreaterThanOrEqual(tokens('temperature_celsius'));
    });

    it('counts token ids as one token each', () => {
      expect(readLlmRequest(EMBEDDINGS, { input: [1, 2, 3, 4, 5] }).inputTokens).toBe(5);
      expect(readLlmRequest(EMBEDDINGS, { input: [[1, 2], [3]] }).inputTokens).toBe(3);
      expect(readLlmRequest(LEGACY, { prompt: [10, 20, 30] }).inputTokens).toBe(3);
    });

    it('counts each image, audio clip or binary document at IMAGE_TOKENS, never its base64', () => {
      const text = 'Describe this picture.';
      const expected = tokens(text) + IMAGE_TOKENS;
      const dataUrl = `data:image/png;base64,${BASE64_IMAGE}`;
      const cases: [string, LlmRoute, unknown, number][] = [
        ['openai image_url data URL', CHAT, { messages: [{ role: 'user', content: [{ type: 'text', text }, { type: 'image_url', image_url: { url: dataUrl, detail: 'high' } }] }] }, framing(1)],
        ['openai image_url link', CHAT, { messages: [{ role: 'user', content: [{ type: 'text', text }, { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }] }, framing(1)],
        ['openai input_audio', CHAT, { messages: [{ role: 'user', content: [{ type: 'text', text }, { type: 'input_audio', input_audio: { data: BASE64_IMAGE, format: 'wav' } }] }] }, framing(1)],
        ['openai file', CHAT, { messages: [{ role: 'user', content: [{ type: 'text', text }, { type: 'file', file: { filename: 'a.pdf', file_data: `data:application/pdf;base64,${BASE64_IMAGE}` } }] }] }, framing(1)],
        ['responses input_image', RESPONSES, { input: [{ role: 'user', content: [{ type: 'input_text', text }, { type: 'input_image', image_url: dataUrl }] }] }, framing(1)],
        ['responses input_file', RESPONSES, { input: [{ role: 'user', content: [{ type: 'input_text', text }, { type: 'input_file', filename: 'a.pdf', file_data: dataUrl }] }] }, framing(1)],
        ['anthropic image', MESSAGES, { messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: BASE64_IMAGE } }, { type: 'text', text }] }] }, framing(1)],
        ['anthropic pdf document', MESSAGES, { messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: BASE64_IMAGE } }, { type: 'text', text }] }] }, framing(1)],
        ['gemini inline_data', GENERATE, { contents: [{ role: 'user', parts: [{ text }, { inline_data: { mime_type: 'image/png', data: BASE64_IMAGE } }] }] }, framing(1)],
        ['gemini inlineData', GENERATE, { contents: [{ parts: [{ inlineData: { mimeType: 'image/png', data: BASE64_IMAGE } }, { text }] }] }, framing(1)],
        ['gemini fileData', GENERATE, { contents: [{ parts: [{ fileData: { mimeType: 'video/mp4', fileUri: 'https://generativelanguage.googleapis.com/v1beta/files/abc' } }, { text }] }] }, framing(1)],
        ['bedrock converse image bytes', CONVERSE, { messages: [{ role: 'user', content: [{ image: { format: 'png', source: { bytes: BASE64_IMAGE } } }, { text }] }] }, framing(1)],
        ['bedrock converse document bytes', CONVERSE, { messages: [{ role: 'user', content: [{ document: { format: 'pdf', name: 'report', source: { bytes: BASE64_IMAGE } } }, { text }] }] }, framing(1)],
        ['bedrock invoke Nova image', INVOKE, { messages: [{ role: 'user', content: [{ image: { format: 'png', source: { bytes: BASE64_IMAGE } } }, { text }] }] }, framing(1)],
        ['cohere v2 image_url', COHERE_CHAT, { messages: [{ role: 'user', content: [{ type: 'text', text }, { type: 'image_url', image_url: { url: dataUrl } }] }] }, framing(1)],
        ['cohere embed images', COHERE_EMBED, { texts: [text], images: [dataUrl] }, 0],
        ['titan embeddings inputImage', INVOKE, { inputText: text, inputImage: BASE64_IMAGE }, 0],
      ];
      for (const [name, route, body, extra] of cases) expect(readLlmRequest(route, body).inputTokens, name).toBe(expected + extra);
    });

    it('reads a document given as text as text', () => {
      const doc = 'The quarterly report says revenue rose four percent.';
      const anthropic = readLlmRequest(MESSAGES, { messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'text', media_type: 'text/plain', data: doc } }] }] });
      expect(anthropic.inputTokens).toBe(tokens(doc) + framing(1));
      const bedrock = readLlmRequest(CONVERSE, { messages: [{ role: 'user', content: [{ document: { format: 'txt', name: 'r', source: { text: doc } } }] }] });
      expect(bedrock.inputTokens).toBeGreaterThanOrEqual(tokens(doc) + framing(1));
      expect(bedrock.inputTokens).toBeLessThan(tokens(doc) + framing(1) + 10);
    });

    it('tokenizes a text that looks like base64 where the model reads it as text', () => {
      const run = 'QUJD'.repeat(2_000);
      expect(readLlmRequest(CHAT, { messages: [{ role: 'user', content: run }] }).inputTokens).toBe(tokens(run) + framing(1));
      expect(readLlmRequest(CHAT, { messages: [{ role: 'user', content: `data:text/plain;base64,${run}` }] }).inputTokens).toBeGreaterThan(IMAGE_TOKENS);
    });

    it('reads special-token text as plain text rather than failing', () => {
      expect(readLlmRequest(CHAT, { messages: [{ role: 'user', content: 'a <|endoftext|> b <|im_start|>' }] }).inputTokens).toBeGreaterThan(framing(1));
    });

    it(`tokenizes at most ${TOKENIZE_LIMIT} characters and counts the rest as one token per two bytes`, () => {
      const word = 'lorem ipsum dolor sit amet ';
      const head = word.repeat(Math.ceil(TOKENIZE_LIMIT / word.length)).slice(0, TOKENIZE_LIMIT);
      const tail = 'é'.repeat(500_000); // two UTF-8 bytes each
      const started = performance.now();
      const estimate = readLlmRequest(CHAT, { messages: [{ role: 'user', content: head + tail }] }).inputTokens;
      expect(estimate).toBe(tokens(head) + 500_000 + framing(1));
      expect(performance.now() - started).toBeLessThan(5_000);
    });

    it('is 0 for a request with no readable body, and nothing throws', () => {
      for (const body of [undefined, null, 'text', 42, [], [1, 2], {}, { messages: 'not a list' }, { messages: [null, 3, 'x'] }]) {
        const r = readLlmRequest(CHAT, body);
        expect(r.model).toBe('');
        expect(r.calls).toBe(1);
        expect(r.maxOutput).toBeUndefined();
        expect(r.addUsage).toBe(false);
        expect(r.opaque).toBe(false);
        expect(r.inputTokens).toBeLessThanOrEqual(tokens('x') + framing(3));
      }
      expect(readLlmRequest(CHAT, undefined).inputTokens).toBe(0);
      for (const route of [ANTHROPIC_BATCH, GEMINI_BATCH, OPENAI_BATCH, CONVERSE, EMBEDDINGS]) expect(() => readLlmRequest(route, undefined)).not.toThrow();
    });

    it('walks a deeply nested body without exhausting the stack', () => {
      let deep: unknown = 'bottom';
      for (let i = 0; i < 200_000; i++) deep = { content: [deep] };
      expect(readLlmRequest(CHAT, { messages: [deep] }).inputTokens).toBe(tokens('bottom') + framing(1));
      let schema: unknown = {};
      for (let i = 0; i < 200_000; i++) schema = { p: schema };
      expect(() => readLlmRequest(CHAT, { tools: [schema] })).not.toThrow();
    });
  });

  describe('batches', () => {
    const request = (model: string, text: string, max: number): unknown => ({ custom_id: `req-${text}`, params: { model, max_tokens: max, messages: [{ role: 'user', content: text }] } });

    it('an Anthropic batch: input summed over its requests, calls = requests, maxOutput = the largest', () => {
      const texts = ['first question here', 'second question, a bit longer than the first', 'third'];
      const r = readLlmRequest(ANTHROPIC_BATCH, { requests: texts.map((t, i) => request('claude-haiku-4-5', t, 100 * (i + 1))) });
      expect(r).toMatchObject({ model: 'claude-haiku-4-5', calls: 3, maxOutput: 300, opaque: false, stream: false, addUsage: false });
      const sum = texts.reduce((n, t) => n + tokens(t) + framing(1), 0);
      expect(r.inputTokens).toBeGreaterThanOrEqual(sum);
      expect(r.inputTokens).toBeLessThanOrEqual(sum + texts.length);
    });

    it('an Anthropic batch of mixed models names none (priced as an unknown model); a request without max_tokens leaves maxOutput unset', () => {
      expect(readLlmRequest(ANTHROPIC_BATCH, { requests: [request('claude-haiku-4-5', 'a', 10), request('claude-opus-4-1', 'b', 10)] }).model).toBe('');
      expect(readLlmRequest(ANTHROPIC_BATCH, { requests: [request('claude-haiku-4-5', 'a', 10), { custom_id: 'x', params: { model: 'claude-haiku-4-5', messages: [] } }] }).maxOutput).toBeUndefined();
      expect(readLlmRequest(ANTHROPIC_BATCH, { requests: 'nope' })).toMatchObject({ model: '', calls: 1, inputTokens: 0, opaque: false });
    });

    it('a Gemini inline batch: input summed, calls = requests, maxOutput = the largest when every request sets one', () => {
      const inline = (text: string, max?: number): unknown => ({
        request: { contents: [{ parts: [{ text }] }], ...(max !== undefined && { generationConfig: { maxOutputTokens: max } }) },
        metadata: { key: `k-${text}` },
      });
      const body = { batch: { display_name: 'nightly', input_config: { requests: { requests: [inline('alpha beta', 50), inline('gamma', 70)] } } } };
      const r = readLlmRequest(GEMINI_BATCH, body);
      expect(r).toMatchObject({ model: 'gemini-2.5-flash', calls: 2, maxOutput: 70, opaque: false });
      const sum = tokens('alpha beta') + tokens('gamma') + 2 * framing(1);
      expect(r.inputTokens).toBeGreaterThanOrEqual(sum);
      expect(r.inputTokens).toBeLessThanOrEqual(sum + 2);
      const camel = { batch: { inputConfig: { requests: { requests: [inline('alpha beta', 50), inline('gamma')] } } } };
      expect(readLlmRequest(GEMINI_BATCH, camel)).toMatchObject({ calls: 2, maxOutput: undefined, opaque: false });
    });

    it('a batch of an uploaded file is opaque: OpenAI batches, Gemini file batches', () => {
      expect(readLlmRequest(OPENAI_BATCH, { input_file_id: 'file-abc', endpoint: '/v1/chat/completions', completion_window: '24h' })).toEqual({
        route: OPENAI_BATCH,
        model: '',
        stream: false,
        maxOutput: undefined,
        inputTokens: 0,
        calls: 1,
        addUsage: false,
        opaque: true,
      });
      expect(readLlmRequest(GEMINI_BATCH, { batch: { input_config: { file_name: 'files/abc' } } })).toMatchObject({ model: 'gemini-2.5-flash', opaque: true, inputTokens: 0, calls: 1 });
      expect(readLlmRequest(GEMINI_BATCH, { batch: { inputConfig: { fileName: 'files/abc' } } }).opaque).toBe(true);
    });
  });

  describe('addUsage', () => {
    it('is true only for a streamed OpenAI-style chat that did not ask for usage', () => {
      expect(readLlmRequest(CHAT, { stream: true }).addUsage).toBe(true);
      expect(readLlmRequest(AZURE, { stream: true, stream_options: { include_usage: false } }).addUsage).toBe(true);
      expect(readLlmRequest(LEGACY, { stream: true }).addUsage).toBe(true);
      expect(readLlmRequest(CHAT, { stream: true, stream_options: { include_usage: true } }).addUsage).toBe(false);
      expect(readLlmRequest(CHAT, {}).addUsage).toBe(false);
      expect(readLlmRequest(RESPONSES, { stream: true }).addUsage).toBe(false);
      expect(readLlmRequest(MESSAGES, { stream: true }).addUsage).toBe(false);
      expect(readLlmRequest(COHERE_CHAT, { stream: true }).addUsage).toBe(false);
      expect(readLlmRequest(STREAM_GENERATE, {}).addUsage).toBe(false);
    });
  });
});

describe('withStreamUsage', () => {
  it('sets stream_options.include_usage, keeping the other stream options and fields', () => {
    const out = withStreamUsage(Buffer.from(JSON.stringify({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'hi' }] })));
    expect(JSON.parse(out.toString())).toEqual({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'hi' }], stream_options: { include_usage: true } });
    const kept = withStreamUsage(Buffer.from(JSON.stringify({ stream: true, stream_options: { include_obfuscation: false, include_usage: false }, n: 2 })));
    expect(JSON.parse(kept.toString())).toEqual({ stream: true, stream_options: { include_obfuscation: false, include_usage: true }, n: 2 });
  });

  it('returns bytes that are not a JSON object unchanged', () => {
    for (const raw of ['not json', '[1,2]', '"s"', '']) expect(withStreamUsage(Buffer.from(raw)).toString()).toBe(raw);
  });

  it('a body it changed no longer asks for usage to be added', () => {
    const body = { model: 'gpt-4o', stream: true };
    expect(readLlmRequest(CHAT, JSON.parse(withStreamUsage(Buffer.from(JSON.stringify(body))).toString())).addUsage).toBe(false);
  });
});
