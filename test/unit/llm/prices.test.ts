import { describe, expect, it } from 'vitest';
import { DEFAULT_MAX_OUTPUT, costOf, parsePriceEntry, priceTable, shippedPrices, type PriceTable } from '../../../gateway/llm/prices.js';
import { NO_USAGE, type Price } from '../../../gateway/llm/types.js';

const shipped = shippedPrices();
const nameOf = (model: string, table: PriceTable = shipped): string | undefined => table.lookup(model)?.name;

describe('shippedPrices', () => {
  it('is dated, in USD, read once', () => {
    expect(shipped.asOf).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(shipped.currency).toBe('USD');
    expect(shippedPrices()).toBe(shipped);
  });

  it('covers the mainstream models of every provider', () => {
    const models = [
      ...['gpt-5', 'gpt-5-mini', 'gpt-5-nano', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano', 'gpt-4o', 'gpt-4o-mini', 'o1', 'o3', 'o3-mini', 'o4-mini', 'gpt-3.5-turbo'],
      ...['text-embedding-3-small', 'text-embedding-3-large', 'text-embedding-ada-002'],
      ...['claude-opus-4-1', 'claude-opus-4', 'claude-sonnet-4-5', 'claude-sonnet-4', 'claude-3-7-sonnet', 'claude-3-5-sonnet', 'claude-3-5-haiku', 'claude-haiku-4-5', 'claude-3-haiku', 'claude-3-opus'],
      ...['gemini-2.5-pro', 'gemini-2.5-flash', 'gemini-2.5-flash-lite', 'gemini-2.0-flash', 'gemini-2.0-flash-lite', 'gemini-1.5-pro', 'gemini-1.5-flash', 'gemini-embedding-001', 'text-embedding-004'],
      ...['mistral-large', 'mistral-medium', 'mistral-small', 'codestral', 'ministral-8b', 'mistral-embed'],
      ...['llama-3.3-70b-versatile', 'llama-3.1-8b-instant'],
      ...['command-a', 'command-r-plus', 'command-r', 'embed-v4.0', 'embed-english-v3.0'],
    ];
    for (const m of models) expect(nameOf(m), m).toBe(m);
  });

  it('gives published prices with the documented defaults', () => {
    expect(shipped.lookup('gpt-4o')?.price).toEqual({ input: 2.5, cached: 1.25, cacheWrite: 2.5, output: 10, reasoning: 10, maxOutput: 16384 });
    expect(shipped.lookup('claude-sonnet-4-5')?.price).toEqual({ input: 3, cached: 0.3, cacheWrite: 3.75, output: 15, reasoning: 15, maxOutput: 64000 });
    expect(shipped.lookup('text-embedding-3-small')?.price).toMatchObject({ input: 0.02, output: 0, maxOutput: 0 });
  });

  it('prices Anthropic’s cache at 1.25× input to write and 0.1× to read', () => {
    for (const m of ['claude-opus-4-1', 'claude-opus-4', 'claude-sonnet-4-5', 'claude-sonnet-4', 'claude-3-7-sonnet', 'claude-3-5-sonnet', 'claude-3-5-haiku', 'claude-haiku-4-5', 'claude-3-opus']) {
      const p = shipped.lookup(m)?.price;
      expect(p?.cacheWrite, m).toBeCloseTo((p?.input ?? NaN) * 1.25, 6);
      expect(p?.cached, m).toBeCloseTo((p?.input ?? NaN) * 0.1, 6);
    }
  });

  it('gives every generating model a maximum output and every embedding model none', () => {
    for (const m of ['gpt-5', 'o3', 'claude-haiku-4-5', 'gemini-2.5-pro', 'mistral-large', 'command-a', 'llama-3.3-70b-versatile', 'nova-pro']) expect(shipped.lookup(m)?.price.maxOutput, m).toBeGreaterThan(1000);
    for (const m of ['text-embedding-3-large', 'gemini-embedding-001', 'mistral-embed', 'embed-v4.0']) expect(shipped.lookup(m)?.price).toMatchObject({ output: 0, maxOutput: 0 });
  });
});

describe('lookup: model names', () => {
  it.each([
    // exact and case
    ['gpt-4o', 'gpt-4o'],
    ['GPT-4o', 'gpt-4o'],
    // dated and versioned snapshots
    ['gpt-4o-2024-08-06', 'gpt-4o'],
    ['gpt-4o-mini-2024-07-18', 'gpt-4o-mini'],
    ['gpt-4.1-mini-2025-04-14', 'gpt-4.1-mini'],
    ['gpt-5-2025-08-07', 'gpt-5'],
    ['gpt-5-chat-latest', 'gpt-5'],
    ['o3-mini-2025-01-31', 'o3-mini'],
    ['o1-pro-2025-03-19', 'o1-pro'],
    ['gpt-3.5-turbo-0125', 'gpt-3.5-turbo'],
    ['gpt-4-0613', 'gpt-4'],
    ['claude-3-5-sonnet-20241022', 'claude-3-5-sonnet'],
    ['claude-3-5-sonnet-latest', 'claude-3-5-sonnet'],
    ['claude-sonnet-4-20250514', 'claude-sonnet-4'],
    ['claude-sonnet-4-5-20250929', 'claude-sonnet-4-5'],
    ['claude-opus-4-1-20250805', 'claude-opus-4-1'],
    ['claude-haiku-4-5-20251001', 'claude-haiku-4-5'],
    ['claude-3-haiku-20240307', 'claude-3-haiku'],
    ['claude-3-5-sonnet@20240620', 'claude-3-5-sonnet'],
    ['claude-3-5-sonnet-v2@20241022', 'claude-3-5-sonnet'],
    ['gemini-2.0-flash-001', 'gemini-2.0-flash'],
    ['gemini-1.5-pro-latest', 'gemini-1.5-pro'],
    ['gemini-2.5-pro-preview-05-06', 'gemini-2.5-pro'],
    ['gemini-2.5-flash-preview-09-2025', 'gemini-2.5-flash'],
    ['gemini-2.5-flash-lite-preview-06-17', 'gemini-2.5-flash-lite'],
    ['gemini-2.0-flash-exp', 'gemini-2.0-flash'],
    ['gemini-flash-latest', 'gemini-flash'],
    ['models/gemini-2.5-flash', 'gemini-2.5-flash'],
    ['mistral-large-latest', 'mistral-large'],
    ['mistral-large-2411', 'mistral-large'],
    ['ministral-8b-2410', 'ministral-8b'],
    ['codestral-2501', 'codestral'],
    ['command-a-03-2025', 'command-a'],
    ['command-r-plus-08-2024', 'command-r-plus'],
    ['command-r-08-2024', 'command-r'],
    ['command-r7b-12-2024', 'command-r7b'],
    // OpenRouter and Groq vendor prefixes
    ['openai/gpt-4o', 'gpt-4o'],
    ['openai/gpt-4o-mini:free', 'gpt-4o-mini'],
    ['anthropic/claude-3.5-sonnet', 'claude-3-5-sonnet'],
    ['anthropic/claude-sonnet-4.5', 'claude-sonnet-4-5'],
    ['anthropic/claude-opus-4.1', 'claude-opus-4-1'],
    ['google/gemini-2.5-pro', 'gemini-2.5-pro'],
    ['mistralai/mistral-small-2503', 'mistral-small'],
    ['meta-llama/llama-4-scout-17b-16e-instruct', 'llama-4-scout'],
    ['openai/gpt-oss-120b', 'gpt-oss-120b'],
    // Bedrock ids, inference profiles and ARNs
    ['anthropic.claude-3-5-sonnet-20240620-v1:0', 'claude-3-5-sonnet'],
    ['anthropic.claude-3-5-sonnet-20241022-v2:0', 'claude-3-5-sonnet'],
    ['us.anthropic.claude-3-7-sonnet-20250219-v1:0', 'claude-3-7-sonnet'],
    ['eu.anthropic.claude-sonnet-4-20250514-v1:0', 'claude-sonnet-4'],
    ['apac.anthropic.claude-3-haiku-20240307-v1:0', 'claude-3-haiku'],
    ['global.anthropic.claude-sonnet-4-5-20250929-v1:0', 'claude-sonnet-4-5'],
    ['arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-1-20250805-v1:0', 'claude-opus-4-1'],
    ['arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0', 'claude-3-5-haiku'],
    ['amazon.nova-pro-v1:0', 'nova-pro'],
    ['us.amazon.nova-lite-v1:0', 'nova-lite'],
    ['amazon.titan-text-express-v1', 'titan-text-express'],
    ['amazon.titan-embed-text-v2:0', 'titan-embed-text-v2'],
    ['meta.llama3-1-70b-instruct-v1:0', 'llama3-1-70b-instruct'],
    ['us.meta.llama3-3-70b-instruct-v1:0', 'llama3-3-70b-instruct'],
    ['mistral.mistral-large-2407-v1:0', 'mistral-large'],
    ['cohere.command-r-plus-v1:0', 'command-r-plus'],
    ['cohere.embed-english-v3', 'embed-english-v3'],
  ])('%s → %s', (model, name) => {
    expect(nameOf(model)).toBe(name);
  });

  it('takes the longest entry followed by a dash, never a neighbour’s prefix', () => {
    expect(nameOf('gpt-4o-mini-2024-07-18')).not.toBe('gpt-4o');
    expect(nameOf('gpt-4.1-nano')).toBe('gpt-4.1-nano');
    expect(nameOf('o4-mini-deep-research-2025-06-26')).toBe('o4-mini-deep-research');
    expect(nameOf('gpt-5-nano-2025-08-07')).toBe('gpt-5-nano');
    expect(nameOf('gemini-2.5-flash-lite')).toBe('gemini-2.5-flash-lite');
    // `gpt-4.5` starts with `gpt-4` but not `gpt-4-`: not gpt-4's price.
    expect(nameOf('gpt-4.5-preview')).toBeUndefined();
    expect(nameOf('gpt-4ox')).toBeUndefined();
  });

  it('does not know models it has no entry for', () => {
    for (const m of ['', 'my-fine-tune', 'ft:gpt-4o-mini-2024-07-18:acme::abc123', 'x-ai/grok-4', 'tunedModels/my-model', 'claude', 'anthropic.claude-v2:1', 'gpt', 'a'.repeat(10_000)]) {
      expect(shipped.lookup(m), m).toBeUndefined();
    }
  });

  it('answers a name it has seen from memory, and forgets beyond its bound', () => {
    const table = priceTable(shipped, {});
    const first = table.lookup('gpt-4o-2024-08-06');
    expect(table.lookup('gpt-4o-2024-08-06')).toBe(first);
    for (let i = 0; i < 1_500; i++) expect(table.lookup(`unknown-model-${i}`)).toBeUndefined();
    expect(table.lookup('gpt-4o-2024-08-06')).toEqual(first);
  });
});

describe('ceiling', () => {
  it('is the highest price of every kind and the largest max_output', () => {
    const c = shipped.ceiling();
    const all = ['o1-pro', 'gpt-5-pro', 'claude-opus-4-1', 'gpt-4', 'gemini-2.5-flash-image'].map((m) => shipped.lookup(m)?.price as Price);
    for (const kind of ['input', 'output', 'cached', 'cacheWrite', 'reasoning', 'maxOutput'] as const) {
      for (const p of all) expect(c[kind], kind).toBeGreaterThanOrEqual(p[kind]);
    }
    expect(c).toEqual({ input: 150, output: 600, cached: 150, cacheWrite: 150, reasoning: 600, maxOutput: 272000 });
  });

  it('follows overrides', () => {
    const table = priceTable(shipped, { 'house-model': { input: 1000, output: 2, max_output: 1_000_000 } });
    expect(table.ceiling()).toMatchObject({ input: 1000, output: 600, cached: 1000, cacheWrite: 1000, maxOutput: 1_000_000 });
  });
});

describe('priceTable: overrides', () => {
  it('merges an existing model’s fields, defaults following the new values', () => {
    const table = priceTable(shipped, { 'gpt-4o': { input: 2 }, 'gpt-4-turbo': { input: 8 } });
    expect(table.lookup('gpt-4o')?.price).toEqual({ input: 2, cached: 1.25, cacheWrite: 2, output: 10, reasoning: 10, maxOutput: 16384 });
    // gpt-4-turbo's cached price defaulted to its input, so it follows the override.
    expect(table.lookup('gpt-4-turbo-2024-04-09')?.price).toMatchObject({ input: 8, cached: 8, output: 30 });
    // The base table is unchanged.
    expect(shipped.lookup('gpt-4o')?.price.input).toBe(2.5);
    expect(table.asOf).toBe(shipped.asOf);
    expect(table.currency).toBe(shipped.currency);
  });

  it('matches the override’s name as lookups do: case aside, a dated name prices that snapshot apart', () => {
    const table = priceTable(shipped, { 'GPT-4o': { output: 9 }, 'gpt-4o-2024-05-13': { input: 5, output: 15 } });
    expect(table.lookup('gpt-4o')?.price).toMatchObject({ input: 2.5, output: 9 });
    expect(table.lookup('gpt-4o-2024-08-06')?.price).toMatchObject({ input: 2.5, output: 9 });
    expect(table.lookup('gpt-4o-2024-05-13')).toEqual({ name: 'gpt-4o-2024-05-13', price: { input: 5, cached: 1.25, cacheWrite: 5, output: 15, reasoning: 15, maxOutput: 16384 } });
  });

  it('adds a new model given input and output, with the documented defaults', () => {
    const table = priceTable(shipped, { 'acme-large': { input: 1, output: 4 }, 'acme-small': { input: 0.5, output: 1, cached: 0.05, cache_write: 0.6, reasoning: 2, max_output: 1234 } });
    expect(table.lookup('acme-large')?.price).toEqual({ input: 1, cached: 1, cacheWrite: 1, output: 4, reasoning: 4, maxOutput: DEFAULT_MAX_OUTPUT });
    expect(table.lookup('acme-large-2026-01-01')?.name).toBe('acme-large');
    expect(table.lookup('ACME-SMALL')?.price).toEqual({ input: 0.5, cached: 0.05, cacheWrite: 0.6, output: 1, reasoning: 2, maxOutput: 1234 });
    expect(shipped.lookup('acme-large')).toBeUndefined();
  });

  it('refuses a new model without input and output, and invalid fields, naming the model', () => {
    expect(() => priceTable(shipped, { 'acme-large': { input: 1 } })).toThrow(/"acme-large".*needs input and output/);
    expect(() => priceTable(shipped, { 'acme-large': { output: 1 } })).toThrow(/"acme-large".*needs input and output/);
    expect(() => priceTable(shipped, { 'gpt-4o': { input: -1 } })).toThrow(/"gpt-4o": input must be a price per million tokens, at least 0/);
    expect(() => priceTable(shipped, { 'gpt-4o': { price: 1 } as never })).toThrow(/"gpt-4o": unknown field "price"/);
  });

  it('stacks: an overridden table can be overridden again', () => {
    const once = priceTable(shipped, { 'acme-large': { input: 1, output: 4 } });
    const twice = priceTable(once, { 'acme-large': { output: 5 } });
    expect(twice.lookup('acme-large')?.price).toMatchObject({ input: 1, output: 5 });
  });

  it('needs a table this module made', () => {
    const foreign: PriceTable = { asOf: '', currency: 'USD', lookup: () => undefined, ceiling: () => shipped.ceiling() };
    expect(() => priceTable(foreign, {})).toThrow(TypeError);
  });
});

describe('parsePriceEntry', () => {
  it('accepts any subset of the fields', () => {
    expect(parsePriceEntry({})).toEqual({ ok: true, entry: {} });
    expect(parsePriceEntry({ input: 1, output: 2.5, cached: 0, cache_write: 1.25, reasoning: 3, max_output: 8192 })).toEqual({
      ok: true,
      entry: { input: 1, output: 2.5, cached: 0, cache_write: 1.25, reasoning: 3, max_output: 8192 },
    });
  });

  it.each([
    [null, /must be a mapping of input, output, cached, cache_write, reasoning, max_output/],
    [[1, 2], /must be a mapping/],
    ['2.50', /must be a mapping/],
    [{ inputs: 1 }, /unknown field "inputs"; fields: input, output, cached, cache_write, reasoning, max_output/],
    [{ input: '2.50' }, /input must be a price per million tokens, at least 0/],
    [{ output: -0.5 }, /output must be a price per million tokens, at least 0/],
    [{ cached: Number.NaN }, /cached must be/],
    [{ reasoning: Number.POSITIVE_INFINITY }, /reasoning must be/],
    [{ max_output: 1.5 }, /max_output must be a whole number of tokens, at least 0/],
    [{ max_output: -1 }, /max_output must be a whole number/],
  ])('refuses %j', (raw, message) => {
    const r = parsePriceEntry(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(message);
  });
});

describe('costOf', () => {
  const price: Price = { input: 2.5, cached: 1.25, cacheWrite: 3.75, output: 10, reasoning: 12, maxOutput: 16384 };

  it('is Σ tokens × price per million, each kind at its own price', () => {
    expect(costOf({ input: 1_000_000, cached: 0, cacheWrite: 0, output: 0, reasoning: 0 }, price)).toBeCloseTo(2.5, 12);
    expect(costOf({ input: 1_234, cached: 5_000, cacheWrite: 2_000, output: 789, reasoning: 321 }, price)).toBeCloseTo(
      (1_234 * 2.5 + 5_000 * 1.25 + 2_000 * 3.75 + 789 * 10 + 321 * 12) / 1e6,
      12,
    );
    expect(costOf({ input: 1_234, cached: 5_000, cacheWrite: 2_000, output: 789, reasoning: 321 }, price)).toBeCloseTo(0.028577, 12);
    expect(costOf(NO_USAGE, price)).toBe(0);
  });

  it('prices a real response at the shipped table', () => {
    const p = shipped.lookup('claude-sonnet-4-20250514')?.price as Price;
    // 10k fresh input, 50k cache read, 5k cache write, 2k output: 0.03 + 0.015 + 0.01875 + 0.03.
    expect(costOf({ input: 10_000, cached: 50_000, cacheWrite: 5_000, output: 2_000, reasoning: 0 }, p)).toBeCloseTo(0.09375, 12);
    const mini = shipped.lookup('gpt-4o-mini-2024-07-18')?.price as Price;
    expect(costOf({ input: 1_000, cached: 0, cacheWrite: 0, output: 500, reasoning: 0 }, mini)).toBeCloseTo(0.00045, 12);
  });
});
