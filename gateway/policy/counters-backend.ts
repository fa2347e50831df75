import type { Logger } from 'pino';
import { DEFAULT_COUNTERS, type CounterSettings } from '../config/types.js';
import { ConfigError } from '../errors.js';
import type { CounterStore, HistoryStore } from './counters.js';
import type { SessionStore } from './sessions.js';
import { openCounterDatabase } from './counters-db.js';
import { connectRedisCounters } from './counters-redis.js';

/** The counters and history a gateway runs with, whichever backend keeps them. */
export interface CounterBackend {
  readonly kind: 'sqlite' | 'redis';
  readonly counters: CounterStore;
  readonly history: HistoryStore;
  readonly sessions: SessionStore;
  /** undefined while the backend can serve; otherwise why not (`/readyz`). */
  problem(): string | undefined;
  close(): void;
}

/**
 * Opens the backend `gateway.counters` names; `VALET_REDIS_URL`, when set, overrides the URL and
 * selects Redis, so one configuration directory runs embedded or as a fleet.
 */
export function openCounterBackend(settings: CounterSettings | undefined, env: NodeJS.ProcessEnv, dataDir: string, logger: Logger, sessionTtlMs?: number): CounterBackend {
  const s = settings ?? DEFAULT_COUNTERS;
  const envUrl = env['VALET_REDIS_URL'];
  const url = envUrl !== undefined && envUrl !== '' ? envUrl : s.redis.url;
  if (s.backend === 'redis' || (envUrl !== undefined && envUrl !== '')) {
    if (url === undefined || !/^rediss?:\/\//.test(url)) {
      throw new ConfigError([
        { file: 'gateway', line: 0, column: 0, path: 'gateway.counters.redis.url', message: 'the redis backend needs a redis:// or rediss:// URL (gateway.counters.redis.url or VALET_REDIS_URL)' },
      ]);
    }
    const redis = connectRedisCounters(url, { prefix: s.redis.prefix, ...(sessionTtlMs !== undefined && { sessionTtlMs }), onError: (message) => logger.error({ message }, 'counters: Redis unavailable') });
    return { kind: 'redis', counters: redis.counters, history: redis.history, sessions: redis.sessions, problem: redis.problem, close: () => void redis.close() };
  }
  // Written behind, FLUSH_MS at a time: a restart must not refill a daily budget.
  const db = openCounterDatabase(dataDir, Date.now, (err) => logger.error({ err }, 'counters.db could not be written; retrying with the next flush'), sessionTtlMs);
  return { kind: 'sqlite', counters: db.counters, history: db.history, sessions: db.sessions, problem: () => undefined, close: () => db.close() };
}
