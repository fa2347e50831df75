import { request } from 'undici';
import type { ContextConfig } from '../config/types.js';
import { celErrorMessage, compileCel, type CelProgram } from './cel.js';
import type { EvaluationInput } from './compile.js';

/** Resolves the `ctx.*` values a request's conditions may read (ownership maps, lookups). */
export interface ContextSources {
  /** Synchronous (no event-loop turn) when no source applies to the request. */
  resolve(input: Omit<EvaluationInput, 'context'>): Record<string, unknown> | Promise<Record<string, unknown>>;
}

interface Source {
  readonly config: ContextConfig;
  readonly key: CelProgram;
  lookup(key: string): Promise<unknown>;
}

const MAX_CACHE = 10_000;

/**
 * Builds the configured context sources once. A value that cannot be found or fetched is simply
 * absent from `ctx`, so a condition reading it fails and the request is denied.
 */
export function createContextSources(contexts: readonly ContextConfig[]): ContextSources {
  const sources: Source[] = contexts.map((c) => {
    const key = compileCel(c.key, 'any');
    if ('error' in key) throw new TypeError(`context ${c.name}: ${key.error}`);
    return { config: c, key, lookup: c.entries !== undefined ? fileLookup(c.entries) : httpLookup(c) };
  });
  return {
    resolve(input) {
      const ctx: Record<string, unknown> = {};
      if (sources.length === 0) return ctx;
      const wanted = sources.filter(
        (s) =>
          (s.config.upstream === undefined || s.config.upstream === input.facts.upstream) &&
          (s.config.tools === undefined || (input.facts.tool !== undefined && s.config.tools.includes(input.facts.tool))),
      );
      if (wanted.length === 0) return ctx;
      const activation = {
        args: input.facts.args,
        agent: { id: input.identity.agent, tenant: input.identity.tenant ?? '', team: input.identity.team ?? '' },
        user: input.identity.user === undefined ? {} : { id: input.identity.user },
        request: { upstream: input.facts.upstream, method: input.facts.method, path: input.facts.path, tool: input.facts.tool ?? '' },
      };
      return Promise.all(
        wanted.map(async (s) => {
          let key: unknown;
          try {
            key = s.key(activation);
          } catch (err) {
            void celErrorMessage(err);
            return;
          }
          if (typeof key !== 'string' && typeof key !== 'bigint' && typeof key !== 'number') return;
          const value = await s.lookup(String(key));
          if (value !== undefined) ctx[s.config.name] = value;
        }),
      ).then(() => ctx);
    },
  };
}

function fileLookup(entries: ReadonlyMap<string, unknown>): (key: string) => Promise<unknown> {
  return async (key) => entries.get(key);
}

function httpLookup(c: ContextConfig): (key: string) => Promise<unknown> {
  const cache = new Map<string, { value: unknown; expires: number }>();
  return async (key) => {
    const now = Date.now();
    const hit = cache.get(key);
    if (hit && hit.expires > now) return hit.value;
    let value: unknown;
    let cacheable = true;
    try {
      const res = await request((c.url as string).replace('{key}', encodeURIComponent(key)), {
        method: 'GET',
        headersTimeout: c.timeoutMs,
        bodyTimeout: c.timeoutMs,
        maxRedirections: 0,
      } as Parameters<typeof request>[1]);
      if (res.statusCode === 200) value = await res.body.json();
      else {
        await res.body.dump();
        // 404: known to be absent; anything else is an outage, not an answer, so it is not cached.
        cacheable = res.statusCode === 404;
      }
    } catch {
      cacheable = false;
    }
    if (cacheable) {
      if (cache.size >= MAX_CACHE) cache.delete(cache.keys().next().value as string);
      cache.set(key, { value, expires: now + c.cacheTtlMs });
    }
    return value;
  };
}
