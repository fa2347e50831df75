import type { LlmApi, LlmFamily, LlmRoute } from './types.js';

/**
 * Which calls spend tokens: a catalogue of each family's metered routes, read from the method and
 * the path as forwarded upstream (Valet's mount prefix removed, no query). Only POST spends; reads,
 * cancellations and free counting endpoints (`count_tokens`, `:countTokens`) are not metered.
 *
 * Segments are compared case-sensitively, as the providers route them, after percent-decoding: a
 * client that writes `%3A` for Gemini's `:` or `%2F` for a slash may reach the same upstream
 * operation, so it meets the same meter (an encoded slash counts as a slash; a Bedrock ARN's is
 * put back when its segments are joined into the model id). Empty segments are dropped, which
 * tolerates a trailing slash and doubled slashes.
 */

/** The path's segments, percent-decoded (a segment whose encoding is malformed is left as written). */
function segments(path: string): string[] {
  return path
    .split('/')
    .flatMap((s) => {
      try {
        return decodeURIComponent(s).split('/');
      } catch {
        return [s];
      }
    })
    .filter((s) => s !== '');
}

const route = (family: LlmFamily, api: LlmApi, extra?: { pathModel?: string; pathStream?: true }): LlmRoute => ({ family, api, ...extra });

/**
 * OpenAI-compatible APIs (OpenAI, Azure OpenAI, Groq `/openai/v1`, Mistral, OpenRouter `/api/v1`):
 * classified by the last segment, whatever prefix the provider mounts its API under.
 */
function openaiRoute(seg: readonly string[]): LlmRoute | undefined {
  const last = seg.at(-1);
  const api: LlmApi | undefined =
    last === 'completions' ? 'chat' : last === 'responses' ? 'responses' : last === 'embeddings' ? 'embeddings' : last === 'batches' ? 'batch' : undefined;
  if (api === undefined) return undefined;
  // Azure names the model by its deployment: /openai/deployments/{deployment}/chat/completions.
  const at = seg.indexOf('deployments');
  const deployment = at >= 0 && seg[at - 1] === 'openai' ? seg[at + 1] : undefined;
  return route('openai', api, deployment !== undefined ? { pathModel: deployment } : undefined);
}

// Maps, not object literals: a path segment such as `constructor` must not find an inherited property.
const ANTHROPIC: ReadonlyMap<string, LlmApi> = new Map<string, LlmApi>([
  ['v1/messages', 'messages'],
  ['v1/messages/batches', 'batch'],
  ['v1/complete', 'messages'],
]);

/** Gemini's `models/{model}:{method}` (also `tunedModels/`), by method; `countTokens` is free. */
const GEMINI: ReadonlyMap<string, { api: LlmApi; stream?: true }> = new Map<string, { api: LlmApi; stream?: true }>([
  ['generateContent', { api: 'generate' }],
  ['streamGenerateContent', { api: 'generate', stream: true }],
  ['embedContent', { api: 'embeddings' }],
  ['batchEmbedContents', { api: 'embeddings' }],
  ['batchGenerateContent', { api: 'batch' }],
  // The asynchronous embedding batch takes the same `batch.input_config` as batchGenerateContent.
  ['asyncBatchEmbedContent', { api: 'batch' }],
]);

function geminiRoute(seg: readonly string[]): LlmRoute | undefined {
  const last = seg.at(-1) ?? '';
  const colon = last.lastIndexOf(':');
  const kind = seg.at(-2);
  if (colon <= 0 || (kind !== 'models' && kind !== 'tunedModels')) return undefined;
  const method = GEMINI.get(last.slice(colon + 1));
  if (method === undefined) return undefined;
  return route('gemini', method.api, { pathModel: last.slice(0, colon), ...(method.stream && { pathStream: true }) });
}

const COHERE: ReadonlyMap<string, LlmApi> = new Map<string, LlmApi>([
  ['v1/chat', 'cohere-chat'],
  ['v2/chat', 'cohere-chat'],
  ['v1/generate', 'cohere-chat'],
  ['v1/embed', 'embeddings'],
  ['v2/embed', 'embeddings'],
]);

/** Bedrock runtime operations after `/model/{modelId}/`. */
const BEDROCK: ReadonlyMap<string, { api: LlmApi; stream?: true }> = new Map<string, { api: LlmApi; stream?: true }>([
  ['converse', { api: 'converse' }],
  ['converse-stream', { api: 'converse', stream: true }],
  ['invoke', { api: 'invoke' }],
  ['invoke-with-response-stream', { api: 'invoke', stream: true }],
]);

function bedrockRoute(seg: readonly string[]): LlmRoute | undefined {
  const op = BEDROCK.get(seg.at(-1) ?? '');
  // An ARN model id has a slash (encoded by the SDKs, or not): everything between `model` and the operation.
  const modelId = seg.slice(1, -1).join('/');
  if (op === undefined || seg[0] !== 'model' || modelId === '') return undefined;
  return route('bedrock', op.api, { pathModel: modelId, ...(op.stream && { pathStream: true }) });
}

/**
 * The metered route a call takes, or undefined when the call spends nothing: another method than
 * POST, an endpoint outside the catalogue, or a free one (Anthropic `count_tokens`, Gemini
 * `countTokens`, Bedrock `count-tokens`). `forwardPath` is the path alone, as sent upstream.
 */
export function meteredRoute(family: LlmFamily, method: string, forwardPath: string): LlmRoute | undefined {
  // Upper-cased: a method some client spells in lower case still reaches the operation.
  if (method.toUpperCase() !== 'POST') return undefined;
  const seg = segments(forwardPath);
  switch (family) {
    case 'openai':
      return openaiRoute(seg);
    case 'anthropic': {
      const api = ANTHROPIC.get(seg.join('/'));
      return api === undefined ? undefined : route('anthropic', api);
    }
    case 'gemini':
      return geminiRoute(seg);
    case 'cohere': {
      const api = COHERE.get(seg.join('/'));
      return api === undefined ? undefined : route('cohere', api);
    }
    case 'bedrock':
      return bedrockRoute(seg);
  }
}

/**
 * One example forward path for every kind of metered route, per family, with the API
 * {@link meteredRoute} gives it (as POST): for tests that go through every metered route.
 */
export const METERED_ROUTES: Readonly<Record<LlmFamily, readonly { readonly path: string; readonly api: LlmApi }[]>> = {
  openai: [
    { path: '/v1/chat/completions', api: 'chat' },
    { path: '/v1/completions', api: 'chat' },
    { path: '/v1/fim/completions', api: 'chat' },
    { path: '/v1/agents/completions', api: 'chat' },
    { path: '/openai/v1/chat/completions', api: 'chat' },
    { path: '/api/v1/chat/completions', api: 'chat' },
    { path: '/openai/deployments/my-gpt-4o/chat/completions', api: 'chat' },
    { path: '/v1/responses', api: 'responses' },
    { path: '/v1/embeddings', api: 'embeddings' },
    { path: '/openai/deployments/my-embedding/embeddings', api: 'embeddings' },
    { path: '/v1/batches', api: 'batch' },
  ],
  anthropic: [
    { path: '/v1/messages', api: 'messages' },
    { path: '/v1/complete', api: 'messages' },
    { path: '/v1/messages/batches', api: 'batch' },
  ],
  gemini: [
    { path: '/v1beta/models/gemini-2.5-flash:generateContent', api: 'generate' },
    { path: '/v1beta/models/gemini-2.5-flash:streamGenerateContent', api: 'generate' },
    { path: '/v1beta/tunedModels/my-tuned-model:generateContent', api: 'generate' },
    { path: '/v1beta/models/gemini-embedding-001:embedContent', api: 'embeddings' },
    { path: '/v1beta/models/gemini-embedding-001:batchEmbedContents', api: 'embeddings' },
    { path: '/v1beta/models/gemini-2.5-flash:batchGenerateContent', api: 'batch' },
    { path: '/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent', api: 'batch' },
  ],
  cohere: [
    { path: '/v2/chat', api: 'cohere-chat' },
    { path: '/v1/chat', api: 'cohere-chat' },
    { path: '/v1/generate', api: 'cohere-chat' },
    { path: '/v2/embed', api: 'embeddings' },
    { path: '/v1/embed', api: 'embeddings' },
  ],
  bedrock: [
    { path: '/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse', api: 'converse' },
    { path: '/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream', api: 'converse' },
    { path: '/model/meta.llama3-1-8b-instruct-v1%3A0/invoke', api: 'invoke' },
    { path: '/model/amazon.nova-lite-v1%3A0/invoke-with-response-stream', api: 'invoke' },
  ],
};
