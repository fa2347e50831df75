import type { LlmSettings, UpstreamConfig } from '../config/types.js';
import type { Spend } from '../types.js';
import { createMeter, type ResponseMeter } from './meter.js';
import { costOf, priceTable, shippedPrices, type PriceTable } from './prices.js';
import { readLlmRequest } from './request.js';
import { meteredRoute } from './routes.js';
import { NO_USAGE, totalTokens, type LlmRequest, type LlmRoute, type Metered, type Price, type Usage, type UsageSource } from './types.js';

/** Where a call's price came from: the table (or an override), or the table's ceiling, for a model it does not know. */
export type Priced = 'table' | 'ceiling';

/** A metered call as read before it is decided: what it asks for, its price, and the most it can spend. */
export interface LlmPlan {
  readonly request: LlmRequest;
  readonly priced: Priced;
  /** The table's name for the model ('' when unknown). */
  readonly priceName: string;
  readonly price: Price;
  /** Output tokens reserved per call: the request's maximum, else the default, else the model's. */
  readonly maxOutput: number;
  /** The most the call can spend, reserved against usage budgets (infinite: cannot be known). */
  readonly reserve: Spend;
}

/** A metered route on an upstream, and whether that upstream is only OpenAI-compatible. */
export interface MeteredRoute {
  readonly route: LlmRoute;
  readonly compatible: boolean;
}

/** What a call spent, for the audit row, the metrics and the budgets. */
export interface LlmSpent {
  readonly model: string;
  /** The price table's name for it ('' when unknown): a bounded set, for metric labels. */
  readonly priceName: string;
  readonly usage: Usage;
  readonly spend: Spend;
  readonly source: UsageSource;
  readonly complete: boolean;
}

/** When the table knows no maximum output for a model and neither the request nor the settings set one. */
const FALLBACK_MAX_OUTPUT = 8_192;

/**
 * LLM metering for the request path, built once from `gateway.llm`: which calls are metered, their
 * price and reservation, a meter for their response, and what they spent.
 */
export class LlmMetering {
  readonly settings: LlmSettings;
  readonly prices: PriceTable;

  constructor(settings: LlmSettings, prices: PriceTable = priceTable(shippedPrices(), settings.prices)) {
    this.settings = settings;
    this.prices = prices;
  }

  /** The metered route a request takes, or undefined (not an LLM upstream, or a call that spends nothing). */
  route(upstream: UpstreamConfig, method: string, forwardPath: string): MeteredRoute | undefined {
    if (upstream.llm === undefined) return undefined;
    const route = meteredRoute(upstream.llm === 'openai-compatible' ? 'openai' : upstream.llm, method, forwardPath);
    return route === undefined ? undefined : { route, compatible: upstream.llm === 'openai-compatible' };
  }

  /** Reads a metered request (its parsed JSON body, or undefined) and prices what it may spend. */
  plan(metered: MeteredRoute | LlmRoute, body: unknown): LlmPlan {
    const { route, compatible } = 'route' in metered ? metered : { route: metered, compatible: false };
    // Another server's OpenAI API may refuse a field it does not know: its body is never changed.
    const request = readLlmRequest(route, body, { mayAddUsage: !compatible });
    const known = request.model === '' ? undefined : this.prices.lookup(request.model);
    // An unknown model is priced at the ceiling; whether it may run at all is gateway.llm.unknown_model's call (the pipeline's).
    const priced: Priced = known !== undefined ? 'table' : 'ceiling';
    const price = known?.price ?? this.prices.ceiling();
    // A model never writes more than its own maximum, whatever the request allows.
    const requested = request.maxOutput ?? this.settings.defaultMaxOutput ?? known?.price.maxOutput ?? FALLBACK_MAX_OUTPUT;
    const maxOutput = route.api === 'embeddings' ? 0 : known === undefined ? requested : Math.min(requested, price.maxOutput);
    const opaqueBatchCost = this.settings.opaqueBatchCost;
    let reserve: Spend | undefined;
    // Worked out only when a usage budget asks (estimating the input runs the tokenizer).
    const reserved = (): Spend => {
      if (request.opaque) return { tokens: Number.POSITIVE_INFINITY, cost: opaqueBatchCost ?? Number.POSITIVE_INFINITY };
      const output = request.calls * maxOutput;
      // An upper bound: input at the dearer of reading and writing a cache, output at the dearer of answering and thinking.
      const cost = (request.inputTokens * Math.max(price.input, price.cacheWrite) + output * Math.max(price.output, price.reasoning)) / 1e6;
      return { tokens: request.inputTokens + output, cost };
    };
    return {
      request,
      priced,
      priceName: known?.name ?? '',
      price,
      maxOutput,
      get reserve(): Spend {
        return (reserve ??= reserved());
      },
    };
  }

  /** A meter for the response of a planned call; with `overrun: cut`, a stream past its reserved output is ended cleanly. */
  meter(plan: LlmPlan, response: { status: number; contentType: string | undefined; headers: Record<string, string | string[] | undefined> }): ResponseMeter {
    const cutAfter = this.settings.overrun === 'cut' && plan.request.stream && plan.maxOutput > 0 ? plan.request.calls * plan.maxOutput : undefined;
    return createMeter(plan.request, response, cutAfter === undefined ? {} : { cutAfter });
  }

  /**
   * What a call spent: its metered usage at its price (the response's model when the table knows
   * it, else the plan's). A batch spends its reservation (its results are never seen); a call that
   * got no response spent nothing.
   */
  spent(plan: LlmPlan, metered: Metered | undefined, status: number | null): LlmSpent {
    const nothing: LlmSpent = { model: plan.request.model, priceName: plan.priceName, usage: NO_USAGE, spend: { tokens: 0, cost: 0 }, source: 'reported', complete: false };
    if (metered === undefined || status === null) return nothing;
    if (plan.request.route.api === 'batch') return status >= 200 && status < 300 ? { ...nothing, spend: plan.reserve, source: 'estimated', complete: true } : nothing;
    const answered = metered.model === undefined || metered.model === '' ? undefined : this.prices.lookup(metered.model);
    const price = answered?.price ?? plan.price;
    return {
      model: metered.model !== undefined && metered.model !== '' ? metered.model : plan.request.model,
      priceName: answered?.name ?? plan.priceName,
      usage: metered.usage,
      spend: { tokens: totalTokens(metered.usage), cost: costOf(metered.usage, price) },
      source: metered.source,
      complete: metered.complete,
    };
  }
}
