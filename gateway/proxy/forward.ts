import type { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';
import { Pool, errors as undiciErrors, type Dispatcher } from 'undici';
import { ValetError } from '../errors.js';
import type { UpstreamConfig } from '../config/types.js';
import type { HeaderList } from './headers.js';

export interface ForwardRequest {
  readonly method: string;
  /** Path and query exactly as sent: `/v1/x?y=1`. */
  readonly path: string;
  readonly headers: HeaderList;
  readonly body: Readable | Buffer | null;
  /** Aborts the upstream request when it emits `abort` (an AbortSignal or an emitter, as undici takes). */
  readonly signal: AbortSignal | EventEmitter;
}

export interface UpstreamResponse {
  readonly statusCode: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Readable;
}

/** Sends requests to the configured upstreams over one keep-alive pool each. */
export interface Forwarder {
  forward(upstream: UpstreamConfig, request: ForwardRequest): Promise<UpstreamResponse>;
  close(): Promise<void>;
}

/** Builds a keep-alive pool per upstream. Redirects are never followed; errors are coded. */
export function createForwarder(upstreams: Iterable<UpstreamConfig>): Forwarder {
  const pools = new Map<string, Pool>();
  for (const u of upstreams) {
    pools.set(
      u.name,
      new Pool(u.origin, {
        connections: u.connections,
        connectTimeout: u.timeouts.connectMs,
        headersTimeout: u.timeouts.headersMs,
        bodyTimeout: u.timeouts.bodyMs,
        keepAliveTimeout: 4_000,
        pipelining: 1,
      }),
    );
  }
  return {
    async forward(upstream, request) {
      const pool = pools.get(upstream.name);
      if (!pool) throw new ValetError('VALET_ERR_UNKNOWN_UPSTREAM');
      const headers: string[] = [];
      for (const [name, value] of request.headers) headers.push(name, value);
      try {
        const res = await pool.request({
          method: request.method as Dispatcher.HttpMethod,
          path: request.path,
          headers,
          body: request.body,
          signal: request.signal,
        });
        return { statusCode: res.statusCode, headers: res.headers, body: res.body };
      } catch (err) {
        throw upstreamError(err);
      }
    },
    async close() {
      await Promise.all([...pools.values()].map((p) => p.close()));
    },
  };
}

/** Maps an undici or socket failure to a coded error: timeouts → 504, the rest → 502. */
export function upstreamError(err: unknown): ValetError {
  if (err instanceof ValetError) return err;
  if (
    err instanceof undiciErrors.ConnectTimeoutError ||
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError
  ) {
    return new ValetError('VALET_ERR_UPSTREAM_TIMEOUT', undefined, { cause: err });
  }
  return new ValetError('VALET_ERR_UPSTREAM_UNREACHABLE', undefined, { cause: err });
}
