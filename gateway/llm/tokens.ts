import { createRequire } from 'node:module';

type Tokenizer = typeof import('gpt-tokenizer');

let tokenizer: Tokenizer | undefined;

/** Special-token text (`<|endoftext|>`) in a request or an answer is text like any other: not an error, not a special token. */
const AS_TEXT = { disallowedSpecial: new Set<string>() };

/**
 * Tokens in `text` by the o200k encoding (gpt-tokenizer). The tokenizer is loaded on first use, or
 * by {@link loadTokenizer} at start-up: its tables take ~20 MB of heap (~58 MB of RSS) and ~30 ms
 * to load, which a gateway that meters no LLM call never pays — nor does every garbage collection
 * of its heap.
 */
export function countTokens(text: string): number {
  tokenizer ??= createRequire(import.meta.url)('gpt-tokenizer') as Tokenizer;
  return tokenizer.countTokens(text, AS_TEXT);
}

/** Loads the tokenizer now (at start-up, when an upstream is metered), so that no request waits for it. */
export function loadTokenizer(): void {
  countTokens('');
}
