import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import type { Price, Usage } from './types.js';

/**
 * Model prices: the dated table shipped in `presets/llm/prices.yaml`, with the operator's
 * overrides (`gateway.llm.prices`) over it, and the cost of a usage at a price.
 */

/** One model's prices as the YAML writes them, per million tokens (`max_output` in tokens). */
export interface PriceInput {
  readonly input: number;
  readonly output: number;
  /** Default: `input`. */
  readonly cached?: number;
  /** Default: `input`. */
  readonly cache_write?: number;
  /** Default: `output`. */
  readonly reasoning?: number;
  /** Default: {@link DEFAULT_MAX_OUTPUT}. */
  readonly max_output?: number;
}

/** The output reserved for a model whose entry gives no `max_output`. */
export const DEFAULT_MAX_OUTPUT = 4096;

/** A price table: the prices of the models it knows, by any name a request or response gives them. */
export interface PriceTable {
  readonly asOf: string;
  readonly currency: string;
  /** The price of a model, by the name a request or response gives. undefined: unknown. */
  lookup(model: string): { readonly name: string; readonly price: Price } | undefined;
  /** The highest price of every kind in the table (and the largest max_output): what an unknown model is charged at under `unknown_model: ceiling`. */
  ceiling(): Price;
}

const FIELDS = ['input', 'output', 'cached', 'cache_write', 'reasoning', 'max_output'] as const;
type Field = (typeof FIELDS)[number];

/** A checked price entry, or why it is not one. */
export type PriceEntryResult = { readonly ok: true; readonly entry: Partial<PriceInput> } | { readonly ok: false; readonly error: string };

/**
 * Checks one model's price entry as written (any subset of the fields: an override may give only
 * what it changes). Prices are finite numbers ≥ 0; `max_output` an integer ≥ 0. Whether a model the
 * table lacks gives `input` and `output` is checked by {@link priceTable}, which knows the table.
 */
export function parsePriceEntry(raw: unknown): PriceEntryResult {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { ok: false, error: `must be a mapping of ${FIELDS.join(', ')}` };
  const entry: { -readonly [K in Field]?: number } = {};
  for (const [key, value] of Object.entries(raw)) {
    const field = FIELDS.find((f) => f === key);
    if (field === undefined) return { ok: false, error: `unknown field "${key}"; fields: ${FIELDS.join(', ')}` };
    const valid = field === 'max_output' ? Number.isSafeInteger(value) && (value as number) >= 0 : typeof value === 'number' && Number.isFinite(value) && value >= 0;
    if (!valid) return { ok: false, error: `${field} must be ${field === 'max_output' ? 'a whole number of tokens' : 'a price per million tokens'}, at least 0` };
    entry[field] = value as number;
  }
  return { ok: true, entry };
}

function resolve(p: PriceInput): Price {
  return {
    input: p.input,
    output: p.output,
    cached: p.cached ?? p.input,
    cacheWrite: p.cache_write ?? p.input,
    reasoning: p.reasoning ?? p.output,
    maxOutput: p.max_output ?? DEFAULT_MAX_OUTPUT,
  };
}

/** Names longer than this are matched exactly only: the loose matching below is for real model ids. */
const MAX_NAME = 256;
/** Lookups remembered per table; agents choose model names, so the memo is bounded. */
const MEMO_SIZE = 1_000;

const REGION = /^(?:us|eu|apac|global|us-gov|jp|au|ca)\./;
const VENDOR = /^(?:anthropic|meta|mistral|cohere|amazon|ai21|deepseek|openai|qwen|writer)\./;
const BEDROCK_VERSION = /-v\d+$/;
/** Date and version suffixes, taken off one at a time from the end (`-preview-05-06` then nothing, `-exp-01-21`, `-001`). */
const SUFFIXES = [/-\d{4}-\d{2}-\d{2}$/, /-\d{8}$/, /-latest$/, /-(?:preview|exp)(?:-\d{2}-\d{2,4})?$/, /-\d{2}-\d{4}$/, /-\d{3,4}$/];

/**
 * The forms of a model name to try exactly, in order: as given; lower-cased; without a path prefix
 * (`models/`, OpenRouter's `openai/`, a Bedrock ARN up to its last `/`); without a Vertex `@date`
 * or a `:tag` (Bedrock `:0`, OpenRouter `:free`); without a Bedrock region and vendor (and with
 * OpenRouter's `claude-3.5-sonnet` spelled as Anthropic's `claude-3-5-sonnet`); without a Bedrock
 * `-v1`; without date and version suffixes. The last form is also matched by prefix.
 */
function forms(model: string): string[] {
  let s = model.toLowerCase();
  const out = [model, s];
  if (s.length > MAX_NAME) return out;
  s = s.slice(s.lastIndexOf('/') + 1);
  out.push(s);
  const tag = s.search(/[@:]/);
  if (tag >= 0) s = s.slice(0, tag);
  out.push(s);
  s = s.replace(REGION, '').replace(VENDOR, '');
  // Anthropic's ids have no dots; OpenRouter writes their version numbers with them.
  if (s.startsWith('claude-')) s = s.replaceAll('.', '-');
  out.push(s);
  s = s.replace(BEDROCK_VERSION, '');
  out.push(s);
  for (let again = true; again; ) {
    again = false;
    for (const suffix of SUFFIXES) {
      const stripped = s.replace(suffix, '');
      if (stripped !== s && stripped !== '') {
        s = stripped;
        again = true;
      }
    }
  }
  out.push(s);
  return out;
}

type Found = { readonly name: string; readonly price: Price };

class Table implements PriceTable {
  private readonly prices: ReadonlyMap<string, Price>;
  /** Longest first, so the first prefix that matches is the longest. */
  private readonly byLength: readonly string[];
  private readonly memo = new Map<string, Found | null>();
  private top: Price | undefined;

  /** `raw` keeps the entries as written, so that an override's `input` also moves a `cached` that defaulted to it. */
  constructor(
    readonly asOf: string,
    readonly currency: string,
    readonly raw: ReadonlyMap<string, PriceInput>,
  ) {
    this.prices = new Map([...raw].map(([name, p]) => [name, resolve(p)]));
    this.byLength = [...raw.keys()].sort((a, b) => b.length - a.length);
  }

  lookup(model: string): Found | undefined {
    const hit = this.memo.get(model);
    if (hit !== undefined) return hit ?? undefined;
    const found = this.find(model);
    if (this.memo.size >= MEMO_SIZE) this.memo.delete(this.memo.keys().next().value as string);
    this.memo.set(model, found ?? null);
    return found;
  }

  private find(model: string): Found | undefined {
    const candidates = forms(model);
    for (const name of candidates) {
      const price = this.prices.get(name);
      if (price !== undefined) return { name, price };
    }
    const last = candidates.at(-1) ?? '';
    if (last === '' || last.length > MAX_NAME) return undefined;
    const name = this.byLength.find((n) => last.startsWith(`${n}-`));
    const price = name === undefined ? undefined : this.prices.get(name);
    return name === undefined || price === undefined ? undefined : { name, price };
  }

  ceiling(): Price {
    this.top ??= [...this.prices.values()].reduce<Price>(
      (a, p) => ({
        input: Math.max(a.input, p.input),
        output: Math.max(a.output, p.output),
        cached: Math.max(a.cached, p.cached),
        cacheWrite: Math.max(a.cacheWrite, p.cacheWrite),
        reasoning: Math.max(a.reasoning, p.reasoning),
        maxOutput: Math.max(a.maxOutput, p.maxOutput),
      }),
      { input: 0, output: 0, cached: 0, cacheWrite: 0, reasoning: 0, maxOutput: 0 },
    );
    return this.top;
  }
}

/** `presets/` next to the sources (`gateway/llm/`) or the build (`dist/gateway/llm/`), as gateway/config/presets.ts finds it. */
function pricesFile(): string {
  for (const up of ['../../presets/llm/prices.yaml', '../../../presets/llm/prices.yaml']) {
    const file = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(file)) return file;
  }
  throw new Error('presets/llm/prices.yaml is missing from the installation');
}

let shipped: PriceTable | undefined;

/** The price table shipped with Valet (`presets/llm/prices.yaml`), read once; a malformed file throws. */
export function shippedPrices(): PriceTable {
  if (shipped !== undefined) return shipped;
  const file = pricesFile();
  const doc = parse(readFileSync(file, 'utf8')) as { as_of?: unknown; currency?: unknown; models?: unknown } | null;
  const models = doc?.models;
  if (typeof models !== 'object' || models === null) throw new Error(`${file}: no models`);
  const raw = new Map<string, PriceInput>();
  for (const [name, entry] of Object.entries(models)) {
    const parsed = parsePriceEntry(entry);
    if (!parsed.ok) throw new Error(`${file}: models.${name}: ${parsed.error}`);
    const { input, output } = parsed.entry;
    if (input === undefined || output === undefined) throw new Error(`${file}: models.${name}: needs input and output`);
    raw.set(name.toLowerCase(), { ...parsed.entry, input, output });
  }
  shipped = new Table(String(doc?.as_of ?? ''), String(doc?.currency ?? 'USD'), raw);
  return shipped;
}

/**
 * `base` with `overrides` over it, keyed by model name (case-insensitive). A name `base` knows
 * (by {@link PriceTable.lookup}, so `gpt-4o` and `gpt-4o-2024-08-06` both find gpt-4o's entry)
 * takes that entry's fields with the override's over them, under the name as written: overriding
 * `gpt-4o` changes gpt-4o; overriding `gpt-4o-2024-05-13` prices that snapshot apart from it.
 * A name `base` does not know needs `input` and `output`. Throws on an invalid override, with the
 * model's name in the message.
 */
export function priceTable(base: PriceTable, overrides: Readonly<Record<string, Partial<PriceInput>>>): PriceTable {
  if (!(base instanceof Table)) throw new TypeError('priceTable: the base table must come from shippedPrices() or priceTable()');
  const raw = new Map(base.raw);
  for (const [model, override] of Object.entries(overrides)) {
    const parsed = parsePriceEntry(override);
    if (!parsed.ok) throw new Error(`price of "${model}": ${parsed.error}`);
    const known = base.lookup(model);
    const merged: Partial<PriceInput> = { ...(known === undefined ? undefined : base.raw.get(known.name)), ...parsed.entry };
    const { input, output } = merged;
    if (input === undefined || output === undefined) throw new Error(`price of "${model}": the price table does not know this model, so its price needs input and output`);
    raw.set(model.toLowerCase(), { ...merged, input, output });
  }
  return new Table(base.asOf, base.currency, raw);
}

/** What a usage costs at a price, in the price table's currency: each kind of token at its price per million. */
export function costOf(usage: Usage, price: Price): number {
  return (
    (usage.input * price.input + usage.cached * price.cached + usage.cacheWrite * price.cacheWrite + usage.output * price.output + usage.reasoning * price.reasoning) /
    1_000_000
  );
}
