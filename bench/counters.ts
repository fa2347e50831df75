/**
 * Counters benchmark: microseconds per rate-limit decision and per history call, in memory (the
 * counters.db path) and in Redis (one Lua script per decision, Redis's clock), on this machine.
 *
 *   npm run bench:counters                                   redis://127.0.0.1:6379
 *   VALET_REDIS_URL=redis://host:6379 npm run bench:counters
 *
 * Sequential: one decision waits for the last (the latency a request pays). Concurrent: 64
 * decisions in flight (what a busy gateway sees; Redis pipelines them on one connection). Keys
 * live under a random prefix and are deleted at the end.
 */
import { randomUUID } from 'node:crypto';
import { createClient } from '@redis/client';
import { memoryCounterStore, memoryHistoryStore, type CounterCharge, type CounterStore } from '../gateway/policy/counters.js';
import { redisCounterStores, type RedisCommands } from '../gateway/policy/counters-redis.js';

const N = 20_000;
const url = process.env['VALET_REDIS_URL'] ?? 'redis://127.0.0.1:6379';
const prefix = `valet-bench:${randomUUID()}:`;
const client = createClient({ url });
await client.connect();

// One decision charges two counters (an agent's and its tenant's), as a typical policy does; the
// limits are high enough that every charge is admitted (the full read-modify-write).
const charges = (i: number): CounterCharge[] => [
  { key: JSON.stringify(['rate_limit', 'per-agent', 'agent', 'acme', `bot-${i % 100}`]), windowMs: 60_000, limit: 1e9, cost: 1 },
  { key: JSON.stringify(['rate_limit', 'per-tenant', 'tenant', 'acme']), windowMs: 3_600_000, limit: 1e9, cost: 1 },
];

async function measure(name: string, op: (i: number) => unknown, inFlight: number): Promise<void> {
  for (let i = 0; i < 1_000; i++) await op(i);
  const start = process.hrtime.bigint();
  let next = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < N) await op(next++);
    }),
  );
  const us = Number(process.hrtime.bigint() - start) / 1000 / N;
  console.log(`${name.padEnd(44)} ${us.toFixed(2).padStart(8)} µs per operation (${inFlight} in flight)`);
}

const memory: CounterStore = memoryCounterStore();
const memoryHistory = memoryHistoryStore();
const redis = redisCounterStores(client as unknown as RedisCommands, { prefix });
const key = (i: number): string => JSON.stringify(['acme', `bot-${i % 100}`, 'tool', 'stripe.create_transfer']);
try {
  await measure('memory: decision (2 counters)', (i) => memory.tryConsume(charges(i), Date.now()), 1);
  await measure('memory: history record + summary', (i) => [memoryHistory.record(key(i), Date.now()), memoryHistory.summary(key(i), Date.now())], 1);
  for (const inFlight of [1, 64]) {
    await measure('redis: decision (2 counters)', (i) => redis.counters.tryConsume(charges(i), Date.now()), inFlight);
    await measure('redis: history record', (i) => redis.history.record(key(i), Date.now()), inFlight);
    await measure('redis: history summary', (i) => redis.history.summary(key(i), Date.now()), inFlight);
  }
} finally {
  for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) if (keys.length > 0) await client.del(keys);
  client.destroy();
}
