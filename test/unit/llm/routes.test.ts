import { describe, expect, it } from 'vitest';
import { METERED_ROUTES, meteredRoute } from '../../../gateway/llm/routes.js';
import { LLM_FAMILIES, type LlmApi, type LlmFamily } from '../../../gateway/llm/types.js';

const post = (family: LlmFamily, path: string): ReturnType<typeof meteredRoute> => meteredRoute(family, 'POST', path);

describe('meteredRoute', () => {
  it('METERED_ROUTES lists every family, and each example is metered as the API it names (also with a trailing slash)', () => {
    expect(Object.keys(METERED_ROUTES).sort()).toEqual([...LLM_FAMILIES].sort());
    for (const family of LLM_FAMILIES) {
      expect(METERED_ROUTES[family].length, family).toBeGreaterThan(0);
      for (const { path, api } of METERED_ROUTES[family]) {
        expect(post(family, path)?.api, `${family} ${path}`).toBe(api);
        expect(post(family, `${path}/`)?.api, `${family} ${path}/`).toBe(api);
        expect(post(family, path)?.family).toBe(family);
      }
    }
  });

  it('METERED_ROUTES covers every API a family meters', () => {
    const apis = (family: LlmFamily): LlmApi[] => [...new Set(METERED_ROUTES[family].map((r) => r.api))].sort();
    expect(apis('openai')).toEqual(['batch', 'chat', 'embeddings', 'responses']);
    expect(apis('anthropic')).toEqual(['batch', 'messages']);
    expect(apis('gemini')).toEqual(['batch', 'embeddings', 'generate']);
    expect(apis('cohere')).toEqual(['cohere-chat', 'embeddings']);
    expect(apis('bedrock')).toEqual(['converse', 'invoke']);
  });

  it('only POST spends', () => {
    for (const method of ['GET', 'DELETE', 'PUT', 'PATCH', 'HEAD', 'OPTIONS']) {
      expect(meteredRoute('openai', method, '/v1/chat/completions'), method).toBeUndefined();
      expect(meteredRoute('anthropic', method, '/v1/messages'), method).toBeUndefined();
      expect(meteredRoute('gemini', method, '/v1beta/models/gemini-2.5-flash:generateContent'), method).toBeUndefined();
    }
    expect(meteredRoute('openai', 'post', '/v1/chat/completions')?.api).toBe('chat');
  });

  describe('openai family', () => {
    it.each([
      ['/v1/chat/completions', 'chat'],
      ['/v1/completions', 'chat'],
      ['/v1/fim/completions', 'chat'],
      ['/v1/agents/completions', 'chat'],
      ['/openai/v1/chat/completions', 'chat'],
      ['/api/v1/chat/completions', 'chat'],
      ['/v1/responses', 'responses'],
      ['/v1/embeddings', 'embeddings'],
      ['/v1/batches', 'batch'],
      ['/openai/batches', 'batch'],
    ] as const)('%s → %s', (path, api) => {
      expect(post('openai', path)).toEqual({ family: 'openai', api });
    });

    it('an Azure deployment path names the model', () => {
      expect(post('openai', '/openai/deployments/my-gpt-4o/chat/completions')).toEqual({ family: 'openai', api: 'chat', pathModel: 'my-gpt-4o' });
      expect(post('openai', '/openai/deployments/emb%2Dsmall/embeddings')).toEqual({ family: 'openai', api: 'embeddings', pathModel: 'emb-small' });
      expect(post('openai', '/openai/deployments/legacy/completions')).toEqual({ family: 'openai', api: 'chat', pathModel: 'legacy' });
    });

    it.each([
      '/v1/models',
      '/v1/responses/resp_123',
      '/v1/responses/resp_123/cancel',
      '/v1/responses/input_tokens',
      '/v1/chat/completions/chatcmpl-123',
      '/v1/batches/batch_123/cancel',
      '/v1/files',
      '/v1/Chat/Completions',
      '/v1/chat/completions.json',
    ])('%s is not metered', (path) => {
      expect(post('openai', path)).toBeUndefined();
    });
  });

  describe('anthropic', () => {
    it.each([
      ['/v1/messages', 'messages'],
      ['/v1/complete', 'messages'],
      ['/v1/messages/batches', 'batch'],
      ['//v1//messages', 'messages'],
      ['/v1%2Fmessages', 'messages'],
      ['/v1/%6Dessages', 'messages'],
    ] as const)('%s → %s', (path, api) => {
      expect(post('anthropic', path)).toEqual({ family: 'anthropic', api });
    });

    it.each(['/v1/messages/count_tokens', '/v1/messages/batches/msgbatch_1', '/v1/messages/batches/msgbatch_1/cancel', '/v1/models', '/v2/messages', '/x/v1/messages', '/constructor', '/v1/__proto__'])(
      '%s is not metered',
      (path) => {
        expect(post('anthropic', path)).toBeUndefined();
      },
    );
  });

  describe('gemini', () => {
    it.each([
      ['/v1beta/models/gemini-2.5-flash:generateContent', { family: 'gemini', api: 'generate', pathModel: 'gemini-2.5-flash' }],
      ['/v1/models/gemini-2.0-flash-001:generateContent', { family: 'gemini', api: 'generate', pathModel: 'gemini-2.0-flash-001' }],
      ['/v1alpha/models/gemini-2.5-pro:streamGenerateContent', { family: 'gemini', api: 'generate', pathModel: 'gemini-2.5-pro', pathStream: true }],
      ['/v1beta/tunedModels/my-model-abc:generateContent', { family: 'gemini', api: 'generate', pathModel: 'my-model-abc' }],
      ['/v1beta/models/gemini-embedding-001:embedContent', { family: 'gemini', api: 'embeddings', pathModel: 'gemini-embedding-001' }],
      ['/v1beta/models/text-embedding-004:batchEmbedContents', { family: 'gemini', api: 'embeddings', pathModel: 'text-embedding-004' }],
      ['/v1beta/models/gemini-2.5-flash:batchGenerateContent', { family: 'gemini', api: 'batch', pathModel: 'gemini-2.5-flash' }],
      ['/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent', { family: 'gemini', api: 'batch', pathModel: 'gemini-embedding-001' }],
      // An encoded colon reaches the same method upstream, so it meets the same meter.
      ['/v1beta/models/gemini-2.5-flash%3AgenerateContent', { family: 'gemini', api: 'generate', pathModel: 'gemini-2.5-flash' }],
      ['/v1beta/models%2Fgemini-2.5-flash:generateContent', { family: 'gemini', api: 'generate', pathModel: 'gemini-2.5-flash' }],
    ])('%s', (path, route) => {
      expect(post('gemini', path)).toEqual(route);
    });

    it.each([
      '/v1beta/models/gemini-2.5-flash:countTokens',
      '/v1beta/models/gemini-2.5-flash',
      '/v1beta/models',
      '/v1beta/models/:generateContent',
      '/v1beta/cachedContents/abc:generateContent',
      '/v1beta/models/gemini-2.5-flash:constructor',
      '/v1beta/models/gemini-2.5-flash:generatecontent',
    ])('%s is not metered', (path) => {
      expect(post('gemini', path)).toBeUndefined();
    });
  });

  describe('cohere', () => {
    it.each([
      ['/v1/chat', 'cohere-chat'],
      ['/v2/chat', 'cohere-chat'],
      ['/v1/generate', 'cohere-chat'],
      ['/v1/embed', 'embeddings'],
      ['/v2/embed', 'embeddings'],
    ] as const)('%s → %s', (path, api) => {
      expect(post('cohere', path)).toEqual({ family: 'cohere', api });
    });

    it.each(['/v1/tokenize', '/v2/rerank', '/v1/models', '/v3/chat'])('%s is not metered', (path) => {
      expect(post('cohere', path)).toBeUndefined();
    });
  });

  describe('bedrock', () => {
    it.each([
      ['/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse', { family: 'bedrock', api: 'converse', pathModel: 'anthropic.claude-3-5-haiku-20241022-v1:0' }],
      ['/model/us.anthropic.claude-sonnet-4-20250514-v1:0/converse-stream', { family: 'bedrock', api: 'converse', pathModel: 'us.anthropic.claude-sonnet-4-20250514-v1:0', pathStream: true }],
      ['/model/meta.llama3-1-8b-instruct-v1%3A0/invoke', { family: 'bedrock', api: 'invoke', pathModel: 'meta.llama3-1-8b-instruct-v1:0' }],
      ['/model/amazon.nova-lite-v1%3A0/invoke-with-response-stream', { family: 'bedrock', api: 'invoke', pathModel: 'amazon.nova-lite-v1:0', pathStream: true }],
      [
        '/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse',
        { family: 'bedrock', api: 'converse', pathModel: 'arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0' },
      ],
      // An ARN whose slash was not encoded still names one model.
      ['/model/arn:aws:bedrock:us-east-1:123:inference-profile/eu.amazon.nova-pro-v1:0/invoke', { family: 'bedrock', api: 'invoke', pathModel: 'arn:aws:bedrock:us-east-1:123:inference-profile/eu.amazon.nova-pro-v1:0' }],
    ])('%s', (path, route) => {
      expect(post('bedrock', path)).toEqual(route);
    });

    it.each(['/model/amazon.nova-lite-v1:0/count-tokens', '/model//converse', '/model/converse', '/foundation-models', '/async-invoke', '/models/x/converse'])('%s is not metered', (path) => {
      expect(post('bedrock', path)).toBeUndefined();
    });
  });

  it('a path is read as its family reads it: an Anthropic path on an OpenAI upstream spends nothing', () => {
    expect(post('openai', '/v1/messages')).toBeUndefined();
    expect(post('anthropic', '/v1/chat/completions')).toBeUndefined();
    expect(post('cohere', '/v1/chat/completions')).toBeUndefined();
  });
});
