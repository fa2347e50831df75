/**
 * LLM usage metering: which calls spend tokens, what they used, and what that cost. A leaf module:
 * the pipeline reads a metered request with it, meters the response as it streams, and hands the
 * amounts to the policy's budgets.
 */

/** The API families Valet meters; an upstream names its family with `llm:` (presets do). */
export type LlmFamily = 'openai' | 'anthropic' | 'gemini' | 'cohere' | 'bedrock';

export const LLM_FAMILIES: readonly LlmFamily[] = ['openai', 'anthropic', 'gemini', 'cohere', 'bedrock'];

/**
 * What a metered route does, which decides how its request and response are read:
 * - `chat`: OpenAI chat completions (and legacy completions), Mistral, Groq, OpenRouter, Azure;
 * - `responses`: OpenAI's Responses API;
 * - `embeddings`: OpenAI embeddings, Gemini embedContent / batchEmbedContents, Cohere embed;
 * - `messages`: Anthropic messages;
 * - `generate`: Gemini generateContent / streamGenerateContent;
 * - `cohere-chat`: Cohere v2 chat;
 * - `converse`, `invoke`: Bedrock Converse(Stream), InvokeModel(WithResponseStream);
 * - `batch`: asynchronous batches (OpenAI, Anthropic, Gemini): charged up front, never settled.
 */
export type LlmApi = 'chat' | 'responses' | 'embeddings' | 'messages' | 'generate' | 'cohere-chat' | 'converse' | 'invoke' | 'batch';

/** A route that spends tokens, as read from an upstream's method and forward path. */
export interface LlmRoute {
  readonly family: LlmFamily;
  readonly api: LlmApi;
  /** The model named by the path (Gemini `models/{m}:generateContent`, Azure deployments, Bedrock `model/{id}/...`). */
  readonly pathModel?: string;
  /** The path itself asks for a stream (Gemini `streamGenerateContent`, Bedrock `*-stream`, `...WithResponseStream`). */
  readonly pathStream?: boolean;
}

/**
 * What an upstream's `llm:` says: a family, or `openai-compatible` — OpenAI's shapes served by
 * another (Mistral, Groq, OpenRouter, a local server), whose request bodies Valet never changes.
 */
export type LlmSetting = LlmFamily | 'openai-compatible';

/**
 * Tokens by kind, each counted once:
 * - `input`: input tokens read at the full price (neither cached nor written to a cache);
 * - `cached`: input tokens read from a prompt cache;
 * - `cacheWrite`: input tokens written to a prompt cache (Anthropic);
 * - `output`: visible output tokens;
 * - `reasoning`: output tokens spent thinking (OpenAI reasoning, Gemini thoughts), billed as output.
 */
export interface Usage {
  readonly input: number;
  readonly cached: number;
  readonly cacheWrite: number;
  readonly output: number;
  readonly reasoning: number;
}

export const NO_USAGE: Usage = Object.freeze({ input: 0, cached: 0, cacheWrite: 0, output: 0, reasoning: 0 });

export function totalTokens(u: Usage): number {
  return u.input + u.cached + u.cacheWrite + u.output + u.reasoning;
}

/** What Valet reads from a metered request before deciding on it. */
export interface LlmRequest {
  readonly route: LlmRoute;
  /** The model asked for ('' when the request names none). */
  readonly model: string;
  readonly stream: boolean;
  /** The most output tokens the request allows (`max_tokens`, `max_output_tokens`, ...), when it says. */
  readonly maxOutput: number | undefined;
  /** Input tokens, estimated with a tokenizer from the request's text (messages, system, tools, input). */
  readonly inputTokens: number;
  /** How many separate calls the request makes (an inline batch, `n` choices): output is reserved per call. */
  readonly calls: number;
  /**
   * A streamed OpenAI-style chat request that did not ask for usage: Valet adds
   * `stream_options.include_usage` and takes the extra usage chunk out of the stream again.
   */
  readonly addUsage: boolean;
  /**
   * The request's input is not in its body (a batch of an uploaded file): neither its input nor its
   * number of calls can be known before it runs.
   */
  readonly opaque: boolean;
}

/** Per million tokens, in the price table's currency. */
export interface Price {
  readonly input: number;
  readonly output: number;
  readonly cached: number;
  readonly cacheWrite: number;
  readonly reasoning: number;
  /** The most output tokens the model produces in one call: the reservation when a request sets none. */
  readonly maxOutput: number;
}

/** How a response's usage was known. */
export type UsageSource =
  /** The upstream reported it (the last report of a stream). */
  | 'reported'
  /** Estimated: the stream was cut or the upstream never reported it (input estimated, output counted from what was delivered). */
  | 'estimated';

/** What metering a response found. */
export interface Metered {
  readonly usage: Usage;
  readonly source: UsageSource;
  /** The model the response says it used, when it says. */
  readonly model: string | undefined;
  /** The response ended as the API ends one (final event / whole body); false for a stream cut short. */
  readonly complete: boolean;
}
