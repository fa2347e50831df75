import { createHmac } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { requestDigest, type DigestInput } from '../../gateway/approvals/digest.js';
import { createLinkSigner, LINK_KEY_FILE, loadLinkKey } from '../../gateway/approvals/links.js';
import { createNotifier, signWebhook, slackMessage, type ApprovalNotice, type Delivery, type NotificationChannel } from '../../gateway/approvals/notify.js';
import { redactArgs } from '../../gateway/approvals/redact.js';
import { APPROVAL_ID, createApprovalService, newApprovalId, type ApprovalService, type ParkInput } from '../../gateway/approvals/service.js';
import type { ApprovalStore } from '../../gateway/approvals/port.js';
import { openApprovalBackend, type ApprovalBackendSettings } from '../../gateway/approvals/backend.js';
import { instanceId } from '../../gateway/instance.js';
import { PG_BASE_URL, pgSchemas } from '../helpers/postgres.js';
import { postgresUrlFor } from '../../gateway/postgres.js';
import type { ApprovalRecord } from '../../gateway/approvals/types.js';
import { loadConfig } from '../../gateway/config/load.js';
import { ConfigError, type ValetError } from '../../gateway/errors.js';

const silent = pino({ level: 'silent' });
const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'valet-approvals-unit-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('request digest', () => {
  const base: DigestInput = {
    upstream: 'pay',
    method: 'POST',
    path: '/v1/transfers',
    query: 'a=1&b=2',
    headers: [
      ['content-type', 'application/json'],
      ['stripe-account', 'acct_1'],
      ['user-agent', 'sdk/1'],
    ],
    body: Buffer.from('{"amount":5}'),
  };

  it('is stable, and independent of the order of differently named headers', () => {
    expect(requestDigest(base)).toMatch(/^[0-9a-f]{64}$/);
    expect(requestDigest({ ...base })).toBe(requestDigest(base));
    expect(requestDigest({ ...base, headers: [...base.headers].reverse() })).toBe(requestDigest(base));
    expect(requestDigest({ ...base, method: 'post' })).toBe(requestDigest(base));
  });

  it('changes with every part of the call', () => {
    const variants: Partial<DigestInput>[] = [
      { upstream: 'pay2' },
      { method: 'PUT' },
      { path: '/v1/transfers/' },
      { path: '/V1/transfers' },
      { query: 'a=1&b=3' },
      { query: 'b=2&a=1' },
      { body: Buffer.from('{"amount":50}') },
      { body: Buffer.from('{"amount":5} ') },
      { headers: [['content-type', 'application/x-www-form-urlencoded'], ...base.headers.slice(1)] },
      { headers: [...base.headers, ['content-encoding', 'gzip']] },
      { headers: base.headers.filter(([n]) => n !== 'stripe-account') },
      { headers: [...base.headers, ['stripe-account', 'acct_2']] },
    ];
    const seen = new Set([requestDigest(base)]);
    for (const v of variants) {
      const d = requestDigest({ ...base, ...v });
      expect(seen.has(d), JSON.stringify(v)).toBe(false);
      seen.add(d);
    }
  });

  it('fields are length-prefixed: moving bytes between fields changes the digest', () => {
    const a = requestDigest({ ...base, path: '/v1/a', query: 'bc' });
    const b = requestDigest({ ...base, path: '/v1/ab', query: 'c' });
    expect(a).not.toBe(b);
    const h1 = requestDigest({ ...base, headers: [['x-a', 'b: c']] });
    const h2 = requestDigest({ ...base, headers: [['x-a: b', 'c']] });
    expect(h1).not.toBe(h2);
  });

  it('ignores framing, tracing, retry counters, idempotency keys and the client\'s self-description; keeps the order of repeated headers', () => {
    const noisy: DigestInput = {
      ...base,
      headers: [...base.headers, ['traceparent', '00-1-2-01'], ['x-stainless-retry-count', '2'], ['idempotency-key', 'k1'], ['content-length', '12'], ['date', 'now']],
    };
    expect(requestDigest(noisy)).toBe(requestDigest(base));
    // A retry from an upgraded SDK, or the AWS SDK's next attempt, is the same call.
    const retried: DigestInput = {
      ...base,
      headers: [
        ...base.headers.filter(([n]) => n !== 'user-agent'),
        ['user-agent', 'sdk/2 (node 22)'],
        ['amz-sdk-invocation-id', 'b1e1d5c2'],
        ['amz-sdk-request', 'attempt=2; max=3'],
        ['x-amz-user-agent', 'aws-sdk-js/3.1'],
        ['x-goog-api-client', 'gl-node/22'],
        ['x-stripe-client-user-agent', '{"lang":"node"}'],
      ],
    };
    expect(requestDigest(retried)).toBe(requestDigest(base));
    const twice = (a: string, b: string): string => requestDigest({ ...base, headers: [...base.headers, ['x-tag', a], ['x-tag', b]] });
    expect(twice('1', '2')).not.toBe(twice('2', '1'));
  });
});

describe('redaction', () => {
  const token = 'eyJhbGciOiJIUzI1NiJ9.payload.signature-part-xyz';
  it('hides the rule\'s paths (with * for any key or index), path parameters and the agent token', () => {
    const r = redactArgs({
      args: {
        card_id: 'card_123',
        card: { number: '4242', exp: '12/30' },
        items: [{ iban: 'DE00', n: 1 }, { iban: 'FR00', n: 2 }],
        note: `token ${token}`,
        [`k-${token}`]: 'v',
        big: 2n ** 70n,
        small: 5n,
      },
      paths: ['card.number', 'items.*.iban', 'card_id'],
      path: '/v1/cards/card_123/charges',
      pathParams: { card_id: 'card_123' },
      never: [token],
    });
    expect(r.args).toEqual({
      card_id: '[redacted]',
      card: { number: '[redacted]', exp: '12/30' },
      items: [{ iban: '[redacted]', n: 1 }, { iban: '[redacted]', n: 2 }],
      note: '[redacted]',
      '[redacted]': 'v',
      big: (2n ** 70n).toString(),
      small: 5,
    });
    expect(r.path).toBe('/v1/cards/[redacted]/charges');
    expect(JSON.stringify(r)).not.toContain(token);
    expect(r.note).toBeUndefined();
  });

  it('a pattern on an object hides all of it; unknown paths hide nothing', () => {
    const r = redactArgs({ args: { card: { number: '1', cvc: '2' }, x: 1 }, paths: ['card', 'nope.deeper'], path: '/', pathParams: {}, never: [] });
    expect(r.args).toEqual({ card: '[redacted]', x: 1 });
  });

  it('bounds what is kept: long strings, deep nesting, 16 KiB in all', () => {
    let deep: Record<string, unknown> = { leaf: true };
    for (let i = 0; i < 20; i++) deep = { d: deep };
    const long = 'x'.repeat(5_000);
    const r = redactArgs({ args: { long, deep }, paths: [], path: '/', pathParams: {}, never: [] });
    expect((r.args['long'] as string).length).toBeLessThan(1_100);
    expect(JSON.stringify(r.args)).toContain('[…]');
    expect(r.note).toBeDefined();
    const many = Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`k${i}`, 'y'.repeat(200)]));
    const big = redactArgs({ args: many, paths: [], path: '/', pathParams: {}, never: [] });
    expect(Buffer.byteLength(JSON.stringify(big.args))).toBeLessThanOrEqual(16_384);
    expect(big.note).toMatch(/only their names|shortened/);
  });
});

describe('link tokens', () => {
  const key = Buffer.alloc(32, 7);
  it('sign and verify; any change, another key or expiry refuses', () => {
    const s = createLinkSigner(key);
    const t = s.sign('apr_x', 'approve', Date.now() + 60_000);
    expect(t).toMatch(/^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}$/);
    const c = s.verify(t, Date.now());
    expect(c).toMatchObject({ approvalId: 'apr_x', action: 'approve' });
    expect(c.nonce).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(s.sign('apr_x', 'approve', Date.now() + 60_000)).not.toBe(t);

    const expectInvalid = (f: () => unknown, why: RegExp): void => {
      try {
        f();
        expect.unreachable();
      } catch (err) {
        expect((err as ValetError).code).toBe('VALET_ERR_APPROVAL_LINK_INVALID');
        expect((err as ValetError).message).toMatch(why);
      }
    };
    const [v, payload, mac] = t.split('.') as [string, string, string];
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload, 'base64url').toString()), a: 'deny' })).toString('base64url');
    expectInvalid(() => s.verify(`${v}.${forged}.${mac}`, Date.now()), /signature/);
    expectInvalid(() => createLinkSigner(Buffer.alloc(32, 8)).verify(t, Date.now()), /signature/);
    expectInvalid(() => s.verify(t, Date.now() + 61_000), /expired/);
    expectInvalid(() => s.verify('v1.abc.def', Date.now()), /malformed/);
    expect(() => createLinkSigner(Buffer.alloc(16))).toThrow();
  });

  it('the key: from VALET_APPROVAL_LINK_KEY, else generated once in the data directory (0600)', () => {
    const dir = tmp();
    const k1 = loadLinkKey(dir, {});
    expect(k1).toHaveLength(32);
    expect(statSync(join(dir, LINK_KEY_FILE)).mode & 0o777).toBe(0o600);
    expect(loadLinkKey(dir, {}).equals(k1)).toBe(true);
    expect(loadLinkKey(dir, { VALET_APPROVAL_LINK_KEY: 'a'.repeat(64) }).equals(Buffer.alloc(32, 0xaa))).toBe(true);
    expect(() => loadLinkKey(dir, { VALET_APPROVAL_LINK_KEY: 'short' })).toThrow(/32 bytes/);
    expect(readFileSync(join(dir, LINK_KEY_FILE), 'utf8').trim()).toBe(k1.toString('hex'));
  });
});

const pgs = pgSchemas();
afterAll(() => pgs.dropAll());

/** Each backend of the port: the same cases run against both (PostgreSQL in a fresh schema). */
const backends: { name: 'sqlite' | 'postgres'; place(): Promise<ApprovalBackendSettings> }[] = [
  { name: 'sqlite', place: async () => ({ dataDir: tmp() }) },
  { name: 'postgres', place: async () => ({ dataDir: tmp(), postgresUrl: (await pgs.fresh()).url }) },
];

describe.each(backends)('approval service and store ($name)', (b) => {
  let store: ApprovalStore;
  let service: ApprovalService;
  let clock = 1_000_000;
  const notices: ApprovalNotice[] = [];
  const make = async (limits = { perAgent: 2, perTenant: 3 }): Promise<void> => {
    store = await openApprovalBackend(await b.place());
    notices.length = 0;
    service = createApprovalService({
      store,
      limits,
      logger: silent,
      now: () => clock,
      notifier: { notify: (n) => void notices.push(n as ApprovalNotice), inFlight: 0, close: async () => {} },
      links: createLinkSigner(Buffer.alloc(32, 1)),
      linkBase: () => 'http://admin.example',
    });
  };
  afterEach(async () => {
    await service?.close();
    await store?.close();
  });
  const input = (o: Partial<ParkInput> = {}): ParkInput => ({
    requestId: 'req-1',
    mode: 'async',
    agent: 'bot',
    tenant: 'acme',
    user: null,
    upstream: 'pay',
    tool: null,
    method: 'POST',
    path: '/v1/x',
    args: { a: 1 },
    argsNote: null,
    rule: 'r1',
    reason: 'because',
    group: 'finance',
    timeoutMs: 10_000,
    digest: 'd'.repeat(64),
    policyVersion: 'v1',
    ...o,
  });
  const binding = (a: ApprovalRecord, o: Record<string, unknown> = {}) => ({ agent: a.agent, tenant: a.tenant, user: a.user, digest: a.digest, rule: a.rule, group: a.group, ...o });
  const code = async (p: Promise<unknown>): Promise<string> => {
    try {
      await p;
    } catch (err) {
      return (err as ValetError).code;
    }
    return 'none';
  };

  it('parks with an unguessable id, notifies with links, and caps pending per agent and per tenant', async () => {
    await make();
    const a = await service.park(input());
    expect(a.id).toMatch(APPROVAL_ID);
    expect(a).toMatchObject({ status: 'pending', createdAt: clock, expiresAt: clock + 10_000 });
    expect(notices).toHaveLength(1);
    expect(notices[0]?.links?.approve).toMatch(/^http:\/\/admin\.example\/approvals\/link\/v1\./);
    expect(await store.get(a.id)).toEqual(a);
    await service.park(input());
    expect(await code(service.park(input()))).toBe('VALET_ERR_APPROVAL_LIMIT');
    await service.park(input({ agent: 'bot2' }));
    expect(await code(service.park(input({ agent: 'bot3' })))).toBe('VALET_ERR_APPROVAL_LIMIT');
    expect((await service.park(input({ agent: 'bot3', tenant: 'globex' }))).status).toBe('pending');
    expect((await service.park(input({ agent: 'bot3', tenant: null }))).tenant).toBeNull();
    // Expired ones no longer count.
    clock += 10_001;
    expect((await service.park(input())).status).toBe('pending');
    expect(await service.pending()).toBe(1);
    clock = 1_000_000;
  });

  it('one decision wins: approve, deny and expire are conditional', async () => {
    await make();
    const a = await service.park(input());
    expect((await service.decide(a.id, 'approve', 'fiona', 'ok')).status).toBe('approved');
    expect(await code(service.decide(a.id, 'deny', 'otto', 'no'))).toBe('VALET_ERR_APPROVAL_RESOLVED');
    expect(await code(service.decide(a.id, 'approve', 'otto', null))).toBe('VALET_ERR_APPROVAL_RESOLVED');
    expect(await store.get(a.id)).toMatchObject({ status: 'approved', resolver: 'fiona', resolutionReason: 'ok', resolvedAt: clock, expiresAt: clock + 10_000 });
    expect(await code(service.decide('apr_AAAAAAAAAAAAAAAAAAAAAAAA', 'approve', 'x', null))).toBe('VALET_ERR_APPROVAL_NOT_FOUND');
    expect(await code(service.decide('nonsense', 'approve', 'x', null))).toBe('VALET_ERR_APPROVAL_NOT_FOUND');

    const b = await service.park(input({ agent: 'other' }));
    clock += 10_000;
    expect(await code(service.decide(b.id, 'approve', 'fiona', null))).toBe('VALET_ERR_APPROVAL_RESOLVED');
    expect((await store.get(b.id))?.status).toBe('expired');
    clock = 1_000_000;
  });

  it('redeem executes once, only for the same agent, tenant, user, digest, rule and group', async () => {
    await make();
    const a = await service.park(input());
    expect(await code(service.redeem(a.id, binding(a), 'req-2'))).toBe('VALET_ERR_APPROVAL_PENDING');
    await service.decide(a.id, 'approve', 'fiona', null);
    for (const wrong of [{ agent: 'x' }, { tenant: 'globex' }, { tenant: null }, { user: 'alice' }, { digest: 'e'.repeat(64) }, { rule: 'r2' }, { group: 'privacy' }]) {
      expect(await code(service.redeem(a.id, binding(a, wrong), 'req-2')), JSON.stringify(wrong)).toBe('VALET_ERR_APPROVAL_MISMATCH');
    }
    expect(await service.redeem(a.id, binding(a), 'req-2')).toMatchObject({ status: 'consumed', consumedRequestId: 'req-2' });
    expect(await code(service.redeem(a.id, binding(a), 'req-3'))).toBe('VALET_ERR_APPROVAL_USED');
    // A refusal after the take (a rate limit) gives it back, to that request only.
    expect(await store.release(a.id, 'req-3')).toBe(false);
    await service.release((await store.get(a.id)) as ApprovalRecord, 'req-2', 'rate limited');
    expect((await store.get(a.id))?.status).toBe('approved');
    expect((await service.redeem(a.id, binding(a), 'req-4')).consumedRequestId).toBe('req-4');
  });

  it('an approved async approval must be executed within its timeout; denied ones say why', async () => {
    await make();
    const a = await service.park(input());
    clock += 9_000;
    await service.decide(a.id, 'approve', 'fiona', null);
    clock += 9_999;
    expect((await store.get(a.id))?.status).toBe('approved');
    clock += 1;
    expect(await code(service.redeem(a.id, binding(a), 'r'))).toBe('VALET_ERR_APPROVAL_EXPIRED');
    expect((await store.get(a.id))?.status).toBe('expired');
    const d = await service.park(input());
    await service.decide(d.id, 'deny', 'fiona', 'no budget');
    await expect(service.redeem(d.id, binding(d), 'r')).rejects.toThrow(/denied: no budget/);
    expect(await code(service.redeem(d.id, binding(d), 'r'))).toBe('VALET_ERR_APPROVAL_DENIED');
    clock = 1_000_000;
  });

  it('hold: waiters wake on decision, on expiry and on hang-up; close() aborts the rest', async () => {
    await make();
    const signal = (): EventEmitter & { aborted: boolean } => Object.assign(new EventEmitter(), { aborted: false });
    const s1 = signal();
    const h1 = await service.park(input({ mode: 'hold' }));
    const w1 = service.waitForDecision(h1.id, s1);
    expect(service.holding).toBe(1);
    await service.decide(h1.id, 'approve', 'fiona', null);
    expect((await w1).status).toBe('approved');
    expect(await service.take(h1.id, 'req-1')).toBe(true);
    expect(await service.take(h1.id, 'req-1')).toBe(false);

    const s2 = signal();
    const h2 = await service.park(input({ mode: 'hold', agent: 'b2' }));
    const w2 = service.waitForDecision(h2.id, s2);
    s2.aborted = true;
    s2.emit('abort');
    expect(await w2).toMatchObject({ status: 'aborted', resolutionReason: 'the agent disconnected while waiting' });
    expect(s2.listenerCount('abort')).toBe(0);

    const h3 = await service.park(input({ mode: 'hold', agent: 'b3' }));
    const w3 = service.waitForDecision(h3.id, signal());
    await service.close();
    expect(await w3).toMatchObject({ status: 'aborted', resolutionReason: 'the gateway is shutting down' });
    expect(service.holding).toBe(0);
    expect(await code(service.park(input({ agent: 'b4' })))).toBe('VALET_ERR_SHUTTING_DOWN');
  });

  it('hold: a decision made through another client of the store wakes the held request (the port announces it)', async () => {
    await make();
    const held: string[] = [];
    const stop = store.onSettled((id) => held.push(id));
    // A second service on the same store stands in for another instance's admin plane.
    const elsewhere = createApprovalService({ store, limits: { perAgent: 5, perTenant: 5 }, logger: silent, now: () => clock, notifier: { notify: () => {}, inFlight: 0, close: async () => {} } });
    const signal = Object.assign(new EventEmitter(), { aborted: false });
    const approved = await service.park(input({ mode: 'hold' }));
    const w1 = service.waitForDecision(approved.id, signal);
    await elsewhere.decide(approved.id, 'approve', 'fiona', null);
    expect((await w1).status).toBe('approved');
    expect(await service.take(approved.id, 'req-1')).toBe(true);
    const denied = await service.park(input({ mode: 'hold', agent: 'b2' }));
    const w2 = service.waitForDecision(denied.id, signal);
    await elsewhere.decide(denied.id, 'deny', 'fiona', 'no');
    expect(await w2).toMatchObject({ status: 'denied', resolutionReason: 'no' });
    const expired = await service.park(input({ mode: 'hold', agent: 'b3' }));
    const w3 = service.waitForDecision(expired.id, signal);
    clock += 10_000;
    await elsewhere.sweep();
    expect((await w3).status).toBe('expired');
    clock = 1_000_000;
    expect(service.holding).toBe(0);
    expect(held).toEqual([approved.id, denied.id, expired.id]);
    stop();
    const after = await service.park(input({ agent: 'b4' }));
    await elsewhere.decide(after.id, 'deny', 'fiona', 'no');
    expect(held).toHaveLength(3);
  });

  it('hold: the timeout expires a waiting request (real timers)', async () => {
    store = await openApprovalBackend(await b.place());
    service = createApprovalService({ store, limits: { perAgent: 5, perTenant: 5 }, logger: silent, notifier: { notify: () => {}, inFlight: 0, close: async () => {} } });
    const h = await service.park(input({ mode: 'hold', timeoutMs: 50 }));
    const started = Date.now();
    const r = await service.waitForDecision(h.id, Object.assign(new EventEmitter(), { aborted: false }));
    expect(r.status).toBe('expired');
    expect(Date.now() - started).toBeGreaterThanOrEqual(45);
  });

  it('start() aborts held approvals a previous process left pending; async ones stay', async () => {
    const place = await b.place();
    const first = await openApprovalBackend(place);
    const s1 = createApprovalService({ store: first, limits: { perAgent: 5, perTenant: 5 }, logger: silent, notifier: { notify: () => {}, inFlight: 0, close: async () => {} } });
    const held = await s1.park(input({ mode: 'hold' }));
    const queued = await s1.park(input({ mode: 'async' }));
    await first.close();
    store = await openApprovalBackend(place);
    service = createApprovalService({ store, limits: { perAgent: 5, perTenant: 5 }, logger: silent, notifier: { notify: () => {}, inFlight: 0, close: async () => {} } });
    await service.start();
    expect(await store.get(held.id)).toMatchObject({ status: 'aborted', resolutionReason: 'the gateway restarted while the request was held' });
    expect((await store.get(queued.id))?.status).toBe('pending');
  });

  it('a link is used once', async () => {
    await make();
    const a = await service.park(input());
    const token = (notices[0]?.links?.approve ?? '').split('/approvals/link/')[1] as string;
    const claims = service.link(token);
    expect(claims).toMatchObject({ approvalId: a.id, action: 'approve' });
    await service.useLink(claims, 'fiona');
    expect(await code(service.useLink(claims, 'fiona'))).toBe('VALET_ERR_APPROVAL_LINK_INVALID');
  });
});

describe('approvals on PostgreSQL: several instances on one database', () => {
  const open: ApprovalStore[] = [];
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });
  /** Two instances: each its own data directory (so its own instance id), one schema. */
  const fleet = async (): Promise<{ url: string; a: ApprovalStore; b: ApprovalStore; aDir: string; bDir: string }> => {
    const { url } = await pgs.fresh();
    const aDir = tmp();
    const bDir = tmp();
    const a = await openApprovalBackend({ dataDir: aDir, postgresUrl: url });
    const b = await openApprovalBackend({ dataDir: bDir, postgresUrl: url });
    open.push(a, b);
    return { url, a, b, aDir, bDir };
  };
  const now = (): number => Date.now();
  const record = (o: Partial<ApprovalRecord> = {}): ApprovalRecord => ({
    id: newApprovalId(),
    requestId: 'req-1',
    mode: 'async',
    status: 'pending',
    agent: 'bot',
    tenant: 'acme',
    user: null,
    upstream: 'pay',
    tool: null,
    method: 'POST',
    path: '/v1/x',
    args: { a: 1 },
    argsNote: null,
    rule: 'r1',
    reason: 'because',
    group: 'finance',
    timeoutMs: 60_000,
    createdAt: now(),
    expiresAt: now() + 60_000,
    digest: 'd'.repeat(64),
    resolver: null,
    resolutionReason: null,
    resolvedAt: null,
    consumedAt: null,
    consumedRequestId: null,
    policyVersion: 'v1',
    ...o,
  });
  const bindingOf = (r: ApprovalRecord) => ({ agent: r.agent, tenant: r.tenant, user: r.user, digest: r.digest, rule: r.rule, group: r.group });
  const quiet = { notify: () => {}, inFlight: 0, close: async () => {} };

  it('instances starting together on an empty schema migrate it once (advisory lock); a newer schema is refused', async () => {
    const { schema, url } = await pgs.fresh();
    const started = await Promise.all([tmp(), tmp(), tmp(), tmp()].map((dataDir) => openApprovalBackend({ dataDir, postgresUrl: url })));
    open.push(...started);
    expect((await pgs.query(schema, 'SELECT version FROM approvals_schema_version')).rows).toEqual([{ version: 1 }]);
    await pgs.query(schema, 'UPDATE approvals_schema_version SET version = 99');
    await expect(openApprovalBackend({ dataDir: tmp(), postgresUrl: url })).rejects.toThrow(/written by a newer Valet \(schema 99\)/);
  });

  it('the pending limits hold when both instances insert at once', async () => {
    const { a, b } = await fleet();
    const limits = { perAgent: 3, perTenant: 5 };
    const agent = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).insert(record(), limits, now())));
    expect(agent.filter((r) => r.ok)).toHaveLength(3);
    expect(agent.find((r) => !r.ok)).toMatchObject({ ok: false, scope: 'agent', limit: 3 });
    const tenant = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).insert(record({ agent: `bot${i}` }), limits, now())));
    expect(tenant.filter((r) => r.ok)).toHaveLength(2);
    expect(await a.countPending(now())).toBe(5);
  });

  it('a decision, an async approval and a link are each used exactly once when the instances race', async () => {
    const { a, b } = await fleet();
    const limits = { perAgent: 50, perTenant: 50 };
    for (let round = 0; round < 5; round++) {
      const r = record();
      await a.insert(r, limits, now());
      const decided = await Promise.all([a.decide(r.id, 'approved', 'fiona', null, now()), b.decide(r.id, 'denied', 'otto', null, now())]);
      expect(decided.filter(Boolean)).toHaveLength(1);
      const status = (await b.get(r.id))?.status;
      if (status !== 'approved') continue;
      const consumed = await Promise.all([a.consumeAsync(r.id, bindingOf(r), 'req-a', now()), b.consumeAsync(r.id, bindingOf(r), 'req-b', now())]);
      expect(consumed.filter(Boolean)).toHaveLength(1);
      expect((await a.get(r.id))?.status).toBe('consumed');
    }
    const r = record();
    await a.insert(r, limits, now());
    await b.decide(r.id, 'approved', 'fiona', null, now());
    const consumed = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).consumeAsync(r.id, bindingOf(r), `req-${i}`, now())));
    expect(consumed.filter(Boolean)).toHaveLength(1);
    const links = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 ? a : b).useLink('nonce-1', r.id, 'approve', `u${i}`, now())));
    expect(links.filter(Boolean)).toHaveLength(1);
  });

  it('a decision through one instance is announced to the other (NOTIFY), once', async () => {
    const { a, b } = await fleet();
    const heardB: string[] = [];
    const heardA: string[] = [];
    b.onSettled((id) => heardB.push(id));
    a.onSettled((id) => heardA.push(id));
    const r = record({ mode: 'hold' });
    await b.insert(r, { perAgent: 5, perTenant: 5 }, now());
    await a.decide(r.id, 'approved', 'fiona', null, now());
    await waitFor(() => heardB.length === 1 && heardA.length === 1);
    expect(heardB).toEqual([r.id]);
    expect(heardA).toEqual([r.id]);
  });

  it('a restart aborts only the held approvals of the restarting instance', async () => {
    const { url, a, b, aDir } = await fleet();
    const limits = { perAgent: 5, perTenant: 5 };
    const heldOnA = record({ mode: 'hold' });
    const heldOnB = record({ mode: 'hold' });
    const asyncOnA = record();
    await a.insert(heldOnA, limits, now());
    await a.insert(asyncOnA, limits, now());
    await b.insert(heldOnB, limits, now());
    await a.close();
    open.splice(open.indexOf(a), 1);
    const restarted = await openApprovalBackend({ dataDir: aDir, postgresUrl: url });
    open.push(restarted);
    const service = createApprovalService({ store: restarted, limits, logger: silent, notifier: quiet });
    await service.start();
    await service.close();
    expect((await b.get(heldOnA.id))?.status).toBe('aborted');
    expect((await b.get(heldOnB.id))?.status).toBe('pending');
    expect((await b.get(asyncOnA.id))?.status).toBe('pending');
    expect(instanceId(aDir)).toMatch(/^vi_/);
  });

  it('the LISTEN connection comes back after it is cut, and a decision made meanwhile still wakes the held request', async () => {
    const { a, b, bDir } = await fleet();
    const limits = { perAgent: 5, perTenant: 5 };
    const onB = createApprovalService({ store: b, limits, logger: silent, notifier: quiet });
    const h = await onB.park({ ...record({ mode: 'hold' }) });
    const waiting = onB.waitForDecision(h.id, Object.assign(new EventEmitter(), { aborted: false }));
    // Cut instance B's LISTEN connection, and decide before it can be back.
    const admin = new pg.Client({ connectionString: PG_BASE_URL });
    await admin.connect();
    try {
      const cut = await admin.query('SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1', [`valet-approvals-listen:${instanceId(bDir)}`]);
      expect(cut.rows).toEqual([{ ok: true }]);
    } finally {
      await admin.end();
    }
    expect(await a.decide(h.id, 'approved', 'fiona', null, now())).toBe(true);
    expect((await waiting).status).toBe('approved');
    expect(await onB.take(h.id, 'req-1')).toBe(true);
    await onB.close();
  });
});

async function waitFor(pred: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('notifier', () => {
  const approval = { id: 'apr_x', group: 'finance' } as ApprovalRecord;
  const notice: ApprovalNotice = { event: 'approval.requested', approval, links: undefined };
  const channel = (outcomes: Delivery[], o: Partial<NotificationChannel> = {}): NotificationChannel & { calls: number[] } => {
    const calls: number[] = [];
    return {
      name: 'fake',
      groups: undefined,
      retry: { maxAttempts: 4, baseDelayMs: 20, maxDelayMs: 1_000 },
      calls,
      send: async () => {
        calls.push(Date.now());
        return outcomes.shift() ?? { ok: true };
      },
      ...o,
    };
  };
  const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  it('retries retryable failures with growing, jittered delays, up to maxAttempts', async () => {
    const c = channel([{ ok: false, retry: true, detail: 'HTTP 500' }, { ok: false, retry: true, detail: 'ECONNRESET' }]);
    const n = createNotifier([c], { logger: silent, random: () => 0 });
    n.notify(notice);
    expect(n.inFlight).toBe(1);
    await settle(150);
    expect(c.calls).toHaveLength(3);
    const gaps = [(c.calls[1] as number) - (c.calls[0] as number), (c.calls[2] as number) - (c.calls[1] as number)];
    expect(gaps[0]).toBeGreaterThanOrEqual(9); // cap 20 ms, half of it with random() = 0
    expect(gaps[1]).toBeGreaterThanOrEqual(19); // cap 40 ms
    expect(n.inFlight).toBe(0);

    const always = channel(Array.from({ length: 10 }, () => ({ ok: false as const, retry: true, detail: 'HTTP 503' })));
    const n2 = createNotifier([always], { logger: silent, random: () => 0 });
    n2.notify(notice);
    await settle(250);
    expect(always.calls).toHaveLength(4);
    expect(n2.inFlight).toBe(0);
  });

  it('never retries a permanent failure; skips channels of other groups; drops beyond maxInFlight; close() stops retries', async () => {
    const permanent = channel([{ ok: false, retry: false, detail: 'HTTP 404' }]);
    const otherGroup = channel([], { groups: ['privacy'] });
    const n = createNotifier([permanent, otherGroup], { logger: silent });
    n.notify(notice);
    await settle(50);
    expect(permanent.calls).toHaveLength(1);
    expect(otherGroup.calls).toHaveLength(0);

    const slow = channel([], { send: () => new Promise<Delivery>(() => {}) });
    const bounded = createNotifier([slow], { logger: silent, maxInFlight: 2 });
    for (let i = 0; i < 5; i++) bounded.notify(notice);
    expect(bounded.inFlight).toBe(2);

    const flaky = channel(Array.from({ length: 10 }, () => ({ ok: false as const, retry: true, detail: 'HTTP 500' })), { retry: { maxAttempts: 10, baseDelayMs: 30, maxDelayMs: 30 } });
    const closing = createNotifier([flaky], { logger: silent });
    closing.notify(notice);
    await settle(5);
    await closing.close();
    await settle(80);
    expect(flaky.calls).toHaveLength(1);
  });

  it('signs webhooks as t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>")', () => {
    const sig = signWebhook('s3cret', '{"a":1}', 1_700_000_000);
    expect(sig).toBe(`t=1700000000,v1=${createHmac('sha256', 's3cret').update('1700000000.{"a":1}').digest('hex')}`);
  });

  it('Slack text escapes what agents control', () => {
    const a = {
      id: 'apr_x',
      agent: '<!here>',
      tenant: null,
      user: null,
      method: 'POST',
      upstream: 'pay',
      path: '/v1/<x>',
      tool: null,
      rule: 'r',
      reason: 'a & b',
      group: 'g',
      mode: 'async',
      expiresAt: 0,
      args: { x: '<http://evil|click>' },
      argsNote: null,
    } as unknown as ApprovalRecord;
    const m = slackMessage({ event: 'approval.requested', approval: a, links: { approve: 'https://a/approve', deny: 'https://a/deny' } });
    const text = JSON.stringify(m);
    expect(text).not.toMatch(/<!here>|<http:\/\/evil/);
    expect(text).toContain('&lt;!here&gt;');
    expect(text).toContain('a &amp; b');
    expect(text).toContain('<https://a/approve|Approve…>');
  });
});

describe('configuration', () => {
  const GATEWAY = `issuers:
  - name: dev
    issuer: valet-dev
    audience: valet
    algorithms: [HS256]
    secret: { env: K }
upstreams:
  - name: api
    origin: http://127.0.0.1:9
    credential: { scheme: bearer, secret: API_KEY }
`;
  const load = (gateway: string, rules = ''): ReturnType<typeof loadConfig> => {
    const dir = tmp();
    writeFileSync(join(dir, 'a.yaml'), `${GATEWAY}${gateway}`);
    if (rules !== '') writeFileSync(join(dir, 'rules.yaml'), rules);
    return loadConfig(dir);
  };
  const problems = (gateway: string): string[] => {
    try {
      load(gateway);
    } catch (err) {
      return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
    }
    return [];
  };

  it('reads gateway.approvals and rule-level redact', () => {
    const c = load(
      `gateway:
  approvals:
    max_pending_per_agent: 5
    links: { base_url: "https://valet-admin.example.com" }
    channels:
      - { type: webhook, url: "https://hooks.example.com/v", secret_env: HOOK_SECRET, groups: [finance], max_attempts: 3, backoff: 2s }
      - { type: slack, url_env: SLACK_URL }
`,
      `rules:
  - id: big
    upstream: api
    effect: escalate
    approval: { group: finance, redact: [card.number, "items.*.iban"] }
`,
    );
    expect(c.gateway.approvals).toEqual({
      backend: 'sqlite',
      postgres: { url: undefined },
      maxPendingPerAgent: 5,
      maxPendingPerTenant: 200,
      links: { enabled: true, baseUrl: 'https://valet-admin.example.com' },
      channels: [
        { type: 'webhook', url: 'https://hooks.example.com/v', urlEnv: undefined, secretEnv: 'HOOK_SECRET', groups: ['finance'], maxAttempts: 3, backoffMs: 2_000 },
        { type: 'slack', url: undefined, urlEnv: 'SLACK_URL', secretEnv: undefined, groups: undefined, maxAttempts: 5, backoffMs: 1_000 },
      ],
    });
    expect(c.rules[0]?.approval).toEqual({ group: 'finance', mode: 'hold', timeoutMs: 60_000, redact: ['card.number', 'items.*.iban'] });
  });

  it('chooses where approvals and secrets are kept: the configured backend, with VALET_POSTGRES_URL overriding and selecting PostgreSQL', () => {
    const c = load(
      `gateway:
  approvals: { backend: postgres, postgres: { url: "postgres://valet@db.internal:5432/valet" } }
  secrets: { backend: sqlite }
`,
      'rules: []\n',
    );
    expect(c.gateway.approvals).toMatchObject({ backend: 'postgres', postgres: { url: 'postgres://valet@db.internal:5432/valet' } });
    expect(postgresUrlFor('gateway.approvals', c.gateway.approvals?.backend, c.gateway.approvals?.postgres.url, {})).toBe('postgres://valet@db.internal:5432/valet');
    expect(postgresUrlFor('gateway.secrets', c.gateway.secrets?.backend, c.gateway.secrets?.postgres?.url, {})).toBeUndefined();
    const fleet = { VALET_POSTGRES_URL: 'postgresql://valet:pw-9f3a@db.fleet:5432/valet' };
    expect(postgresUrlFor('gateway.approvals', c.gateway.approvals?.backend, c.gateway.approvals?.postgres.url, fleet)).toBe(fleet.VALET_POSTGRES_URL);
    expect(postgresUrlFor('gateway.secrets', c.gateway.secrets?.backend, c.gateway.secrets?.postgres?.url, fleet)).toBe(fleet.VALET_POSTGRES_URL);
    // postgres without a URL, or a URL of another kind: refused at start, without echoing the value.
    expect(() => postgresUrlFor('gateway.secrets', 'postgres', undefined, {})).toThrow(/gateway\.secrets\.postgres\.url: the postgres backend needs a postgres:\/\/ URL/);
    const bad = (() => {
      try {
        postgresUrlFor('gateway.approvals', 'sqlite', undefined, { VALET_POSTGRES_URL: 'mysql://u:pw-7c1e@h/db' });
      } catch (err) {
        return err as ConfigError;
      }
      return undefined;
    })();
    expect(bad).toBeInstanceOf(ConfigError);
    expect(bad?.message).not.toContain('pw-7c1e');
    expect(problems('gateway:\n  approvals: { backend: redis }\n')[0]).toMatch(/gateway\.approvals\.backend/);
    expect(problems('gateway:\n  secrets: { postgres: { url: "http://db" } }\n')[0]).toMatch(/gateway\.secrets\.postgres\.url/);
  });

  it('refuses incomplete or unsafe channels', () => {
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: slack, url: "https://hooks.slack.com/services/x" }]\n')).toEqual([
      expect.stringMatching(/channels\[0\]\.url: a Slack webhook URL is a secret/),
      expect.stringMatching(/channels\[0\]: a Slack channel needs "url_env"/),
    ]);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: webhook, url: "https://h.example" }]\n')).toEqual([expect.stringMatching(/needs "secret_env"/)]);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: webhook, url: "https://h.example", url_env: U, secret_env: S }]\n')).toEqual([expect.stringMatching(/exactly one of "url" and "url_env"/)]);
    expect(problems('gateway:\n  environment: production\n  approvals:\n    channels: [{ type: webhook, url: "http://h.example", secret_env: S }]\n')).toEqual([expect.stringMatching(/https in production/)]);
    expect(problems('gateway:\n  approvals:\n    max_pending_per_agent: 0\n')).toHaveLength(1);
    expect(problems('gateway:\n  approvals:\n    channels: [{ type: email }]\n').length).toBeGreaterThan(0);
  });
});
