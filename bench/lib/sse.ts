/**
 * The OpenAI-style chat completion stream of bench/llm.ts, shared by its fake upstream (which
 * writes it) and its client (which reads it): the clock both stamp events with, the chunks, and a
 * cheap SSE reader.
 *
 * Every chunk carries `ts`, the upstream's clock when it wrote the event: {@link monoMs}, the
 * system's monotonic clock (CLOCK_MONOTONIC on Linux, which `process.hrtime` reads), the same for
 * every process on the machine, so the client subtracts it from its own reading on arrival without
 * any offset. (`performance.timeOrigin + performance.now()` would do to a few µs: each process
 * fixes its time origin once, at start, from the wall clock.)
 */

/** Milliseconds on the machine's monotonic clock, ns resolution. */
export const monoMs = (): number => Number(process.hrtime.bigint()) / 1e6;

export const STREAM_MODEL = 'gpt-4o-mini';
/** The prompt tokens the upstream's usage chunk reports. */
export const PROMPT_TOKENS = 1000;
const ANSWER_MODEL = 'gpt-4o-mini-2024-07-18';
const CREATED = 1_767_225_600;

/** What a request asks the upstream for. */
export interface StreamSpec {
  /** Content events (one token each). */
  events: number;
  /** Milliseconds between two events. */
  intervalMs: number;
}

/** The text of content event `i`: one token. */
export const tokenText = (i: number): string => ` w${i}`;

/**
 * Content event `i` of `n`, written now. With `usage` (the request set
 * `stream_options.include_usage`), OpenAI adds `"usage":null` to every chunk but the last.
 */
export function contentEvent(id: string, i: number, n: number, usage: boolean): string {
  const delta = i === 0 ? `{"role":"assistant","content":"${tokenText(i)}","refusal":null}` : `{"content":"${tokenText(i)}"}`;
  const finish = i === n - 1 ? '"stop"' : 'null';
  return (
    `data: {"id":"${id}","object":"chat.completion.chunk","created":${CREATED},"model":"${ANSWER_MODEL}","service_tier":"default",` +
    `"system_fingerprint":"fp_b376dfbbd5","choices":[{"index":0,"delta":${delta},"logprobs":null,"finish_reason":${finish}}]${usage ? ',"usage":null' : ''},"ts":${monoMs().toFixed(4)}}\n\n`
  );
}

/** The usage-only chunk that ends a stream whose request set `stream_options.include_usage`. */
export function usageEvent(id: string, promptTokens: number, completionTokens: number): string {
  return (
    `data: {"id":"${id}","object":"chat.completion.chunk","created":${CREATED},"model":"${ANSWER_MODEL}","service_tier":"default",` +
    `"system_fingerprint":"fp_b376dfbbd5","choices":[],"usage":{"prompt_tokens":${promptTokens},"completion_tokens":${completionTokens},` +
    `"total_tokens":${promptTokens + completionTokens},"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},` +
    `"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"ts":${monoMs().toFixed(4)}}\n\n`
  );
}

export const DONE_EVENT = 'data: [DONE]\n\n';

/** What the client saw of one stream. */
export interface StreamRead {
  /** Content events, in order, each checked to be the next token. */
  content: number;
  /** Usage-only chunks. */
  usage: number;
  done: boolean;
  /** Anything that was not what the upstream sends (first few). */
  problems: string[];
}

/**
 * Reads one stream as it arrives: splits on the blank line (the upstream writes `\n\n` only),
 * and for each content event calls `onEvent(arrival − ts, index)`, the arrival being the time the
 * chunk that completed the event was handed over (`now`, taken by the caller before anything else).
 */
export class StreamReader {
  readonly read: StreamRead = { content: 0, usage: 0, done: false, problems: [] };
  private rest = '';

  constructor(private readonly onEvent: (delayMs: number, index: number) => void) {}

  write(chunk: Buffer, now: number): void {
    let buf = this.rest === '' ? chunk.toString('latin1') : this.rest + chunk.toString('latin1');
    let start = 0;
    for (let end = buf.indexOf('\n\n'); end !== -1; end = buf.indexOf('\n\n', start)) {
      this.event(buf.slice(start, end), now);
      start = end + 2;
    }
    buf = buf.slice(start);
    this.rest = buf;
  }

  /** The body ended: nothing may be left over. */
  end(): StreamRead {
    if (this.rest !== '') this.problem(`unterminated event: ${this.rest.slice(0, 80)}`);
    if (!this.read.done) this.problem('no [DONE]');
    return this.read;
  }

  private event(text: string, now: number): void {
    if (!text.startsWith('data: ')) return this.problem(`not a data event: ${text.slice(0, 80)}`);
    if (this.read.done) return this.problem('an event after [DONE]');
    if (text === 'data: [DONE]') {
      this.read.done = true;
      return;
    }
    let chunk: { choices?: { delta?: { content?: string } }[]; usage?: unknown; ts?: number };
    try {
      chunk = JSON.parse(text.slice(6)) as typeof chunk;
    } catch {
      return this.problem(`not JSON: ${text.slice(0, 80)}`);
    }
    if (typeof chunk.ts !== 'number') return this.problem('no ts');
    if (chunk.choices?.length === 0 && typeof chunk.usage === 'object' && chunk.usage !== null) {
      this.read.usage++;
      return;
    }
    const content = chunk.choices?.[0]?.delta?.content;
    if (content !== tokenText(this.read.content)) return this.problem(`event ${this.read.content}: content ${JSON.stringify(content)}`);
    this.onEvent(now - chunk.ts, this.read.content++);
  }

  private problem(p: string): void {
    if (this.read.problems.length < 5) this.read.problems.push(p);
  }
}
