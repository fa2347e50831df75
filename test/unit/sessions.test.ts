/**
 * Session stores for call sequences: in memory (idle expiry), kept in counters.db across a
 * restart (a `blocked_by` must not be forgotten by restarting), and in Redis with Redis's clock.
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@redis/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openCounterDatabase } from '../../gateway/policy/counters-db.js';
import { redisCounterStores, type RedisCommands } from '../../gateway/policy/counters-redis.js';
import { argsDigest, calledMark, memorySessionStore, okMark, sessionKey } from '../../gateway/policy/sessions.js';

const HOUR = 3_600_000;

describe('session marks', () => {
  it('answers set marks with their time and unset ones as null; an idle session is forgotten after its ttl', () => {
    const store = memorySessionStore({ ttlMs: HOUR });
    const s = sessionKey('acme', 'bot', 's1');
    store.mark(s, [calledMark('gh.read_secret')], 1_000);
    expect(store.read(s, [calledMark('gh.read_secret'), okMark('gh.get_pr')], 2_000)).toEqual({ set: { 'called gh.read_secret': 1_000, 'ok gh.get_pr': null }, now: 2_000 });
    // A mark keeps the session alive; idle for longer than the ttl, it is gone.
    store.mark(s, [okMark('gh.get_pr')], 1_000 + HOUR - 1);
    expect(store.read(s, [calledMark('gh.read_secret')], 1_000 + 2 * HOUR - 2).set['called gh.read_secret']).toBe(1_000);
    expect(store.read(s, [calledMark('gh.read_secret')], 1_000 + 2 * HOUR).set['called gh.read_secret']).toBeNull();
  });

  it('keys sessions by tenant and agent, and argument digests by names and exact values', () => {
    expect(sessionKey('acme', 'bot', 's')).not.toBe(sessionKey('globex', 'bot', 's'));
    expect(sessionKey(undefined, 'a","b', 's')).not.toBe(sessionKey(undefined, 'a', 'b","s'));
    const d = argsDigest(['owner', 'number'], { owner: 'acme', number: '7' });
    expect(argsDigest(['owner', 'number'], { number: '7', owner: 'acme', other: 1 })).toBe(d);
    expect(argsDigest(['owner', 'number'], { owner: 'acme', number: 7 })).not.toBe(d);
    expect(argsDigest(['owner', 'number'], { owner: 'acme' })).not.toBe(d);
    expect(argsDigest(['number', 'owner'], { owner: 'acme', number: '7' })).not.toBe(d);
  });

  it('counters.db keeps marks across a restart and drops expired sessions', () => {
    const dir = mkdtempSync(join(tmpdir(), 'valet-sessions-'));
    try {
      let now = 10_000_000;
      const first = openCounterDatabase(dir, () => now, undefined, HOUR);
      first.sessions.mark('live', [calledMark('gh.read_secret')], now);
      first.sessions.mark('old', [calledMark('gh.read_secret')], now - 2 * HOUR);
      first.close();
      now += 1_000;
      const second = openCounterDatabase(dir, () => now, undefined, HOUR);
      const read = (s: string): unknown => (second.sessions.read(s, [calledMark('gh.read_secret')], now) as { set: Record<string, number | null> }).set['called gh.read_secret'];
      expect(read('live')).toBe(10_000_000);
      expect(read('old')).toBeNull();
      second.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('in Redis', () => {
    const prefix = `valet-test:${randomUUID()}:`;
    const redis = createClient({ url: 'redis://127.0.0.1:6379' });
    beforeAll(async () => {
      await redis.connect();
    });
    afterAll(async () => {
      for await (const keys of redis.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) if (keys.length > 0) await redis.del(keys);
      redis.destroy();
    });

    it('marks at Redis\'s clock, reads them with it, and expires an idle session', async () => {
      const { sessions } = redisCounterStores(redis as unknown as RedisCommands, { prefix, sessionTtlMs: 300 });
      const s = sessionKey('acme', 'bot', 'r1');
      const before = Date.now();
      await sessions.mark(s, [calledMark('gh.read_secret'), okMark('gh.get_pr', 'abc')], 0);
      const read = await sessions.read(s, [calledMark('gh.read_secret'), okMark('gh.get_pr', 'abc'), okMark('gh.get_pr')], 0);
      expect(read.now).toBeGreaterThanOrEqual(before - 1_000);
      expect(read.set['called gh.read_secret']).toBeGreaterThanOrEqual(before - 1_000);
      expect(read.set['ok gh.get_pr abc']).toBe(read.set['called gh.read_secret']);
      expect(read.set['ok gh.get_pr']).toBeNull();
      // Another agent's session of the same id holds nothing.
      expect((await sessions.read(sessionKey('acme', 'other', 'r1'), [calledMark('gh.read_secret')], 0)).set['called gh.read_secret']).toBeNull();
      await new Promise((r) => setTimeout(r, 400));
      expect((await sessions.read(s, [calledMark('gh.read_secret')], 0)).set['called gh.read_secret']).toBeNull();
    });
  });
});
