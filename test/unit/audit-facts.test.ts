/**
 * The audit row's sealed request facts: what a decision was made on, written generically and read
 * back exactly (bigints, `$` keys, fields the input gains later), sealed under a key derived from
 * the master key and bound to the request id (v1: one row; v2: a batch per commit); any other key, row or byte is refused with a coded
 * error that never quotes a fact.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { batchDigest, batchRef, batchRefCounts, FactsOpener, openFacts, parseBatchRef, sealByTenant, sealFactsBatch } from '../../gateway/audit/facts.js';
import { sealFactsV1 as sealFacts } from '../helpers/facts-v1.js';
import { ValetError } from '../../gateway/errors.js';
import type { EvaluationInput } from '../../gateway/policy/compile.js';
import { decodeFacts, encodeFacts, MAX_RECORDED_ARGS_BYTES } from '../../gateway/policy/facts.js';
import { masterKeyFromBytes, open as openSecret, seal as sealSecret } from '../../gateway/secrets/crypto.js';

const key = masterKeyFromBytes(randomBytes(32));
const REQUEST = '01a22705-2452-7039-8c18-df9fad165877';
const SECRET_ARG = 'cus_private_4242';

function input(args: Record<string, unknown>, extra: Record<string, unknown> = {}): EvaluationInput {
  return {
    identity: { agent: 'pay-bot', tenant: 'acme', team: undefined, roles: ['payer'], environment: 'production', user: 'alice', userRoles: [], issuer: 'corp', tokenId: 'jti-1', expiresAt: 1_795_950_978 },
    facts: { upstream: 'stripe', method: 'POST', path: '/v1/transfers', forwardPath: '/v1/transfers', rawQuery: 'a=1', query: { a: ['1'] }, tool: 'stripe.create_transfer', args, argsError: undefined },
    environment: 'production',
    now: 1_795_950_978_123,
    context: { owner: { id: 'pay-bot', since: 3 } },
    history: { calls_last_hour: 12n, calls_last_day: 40n, first_use: false },
    historyVersion: 'redis-version-7',
    ...extra,
  } as EvaluationInput;
}

const DECISION = { effect: 'escalate' as const, rules: ['large-transfers'], reason: 'big' };

/** The coded error `fn` throws. */
function refusal(fn: () => unknown): ValetError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ValetError);
    return err as ValetError;
  }
  throw new Error('expected a refusal');
}

describe('request facts: encoding', () => {
  it('read back exactly: bigints, null-prototype arguments, `$` keys an agent sent, nested values; historyVersion dropped', () => {
    const args = Object.assign(Object.create(null) as Record<string, unknown>, {
      amount: 5000n,
      customer: SECRET_ARG,
      trap: { $bigint: '5' },
      $dollar: { $$two: ['$x', 1.5, null, true] },
    });
    const back = decodeFacts(encodeFacts(input(args), DECISION, { argsRead: true }));
    expect(back.decision).toEqual({ effect: 'escalate', rules: ['large-transfers'] });
    expect(back.argsRead).toBe(true);
    expect(back.argsOmitted).toBe(false);
    expect(back.input.facts.args).toEqual({ amount: 5000n, customer: SECRET_ARG, trap: { $bigint: '5' }, $dollar: { $$two: ['$x', 1.5, null, true] } });
    expect(back.input.history).toEqual({ calls_last_hour: 12n, calls_last_day: 40n, first_use: false });
    expect(back.input).not.toHaveProperty('historyVersion');
    const { historyVersion: _v, ...expected } = input(args);
    expect(back.input).toEqual({ ...expected, identity: { ...expected.identity, team: undefined }, facts: { ...expected.facts, args: back.input.facts.args } });
  });

  it("keeps the session's marks, fields the input gains without being told of them, and a history the decision read lazily", () => {
    const { history: _h, ...withoutHistory } = input({});
    const session = { set: { 'called github.get_pull': 1_795_950_000_000, 'ok github.merge': null }, now: 1_795_950_978_000 };
    const future = { calls: 3n, tools: ['stripe.get_customer', 'stripe.create_transfer'], nested: { $deep: [1n] } };
    const back = decodeFacts(encodeFacts({ ...withoutHistory, session, future } as unknown as EvaluationInput, DECISION, { argsRead: false, history: { calls_last_hour: 1n, calls_last_day: 2n, first_use: true } }));
    expect(back.input.session).toEqual(session);
    expect((back.input as unknown as { future: unknown }).future).toEqual(future);
    expect(back.input.history).toEqual({ calls_last_hour: 1n, calls_last_day: 2n, first_use: true });
    expect(back.argsRead).toBe(false);
    // The input's own history wins over one read beside it.
    expect(decodeFacts(encodeFacts(input({}), DECISION, { argsRead: true, history: { calls_last_hour: 9n, calls_last_day: 9n, first_use: true } })).input.history?.calls_last_hour).toBe(12n);
  });

  it('arguments over 64 KiB are left out and flagged; up to it they are kept', () => {
    const big = decodeFacts(encodeFacts(input({ blob: 'x'.repeat(MAX_RECORDED_ARGS_BYTES) }), DECISION, { argsRead: true }));
    expect(big.argsOmitted).toBe(true);
    expect(big.input.facts.args).toEqual({});
    expect(big.input.facts.tool).toBe('stripe.create_transfer');
    const fits = decodeFacts(encodeFacts(input({ blob: 'x'.repeat(MAX_RECORDED_ARGS_BYTES - 20) }), DECISION, { argsRead: true }));
    expect(fits.argsOmitted).toBe(false);
    expect((fits.input.facts.args['blob'] as string).length).toBe(MAX_RECORDED_ARGS_BYTES - 20);
  });

  it('anything else is refused as malformed, without quoting it', () => {
    for (const text of ['not json', '[]', `{"v":2,"x":"${SECRET_ARG}"}`, `{"v":1,"decision":{"effect":"maybe","rules":[]},"input":{},"args":{}}`]) {
      const e = refusal(() => decodeFacts(text));
      expect(e.code).toBe('VALET_ERR_AUDIT_FACTS_UNREADABLE');
      expect(e.message).not.toContain(SECRET_ARG);
    }
  });
});

describe('request facts: sealing', () => {
  const plain = encodeFacts(input({ customer: SECRET_ARG, amount: 5000n }), DECISION, { argsRead: true });
  const sealed = sealFacts(key, REQUEST, plain);

  it('is text naming the key, opens with the key for the same request, and holds nothing in the clear', () => {
    expect(sealed).toMatch(new RegExp(`^v1\\.${key.id}\\.[A-Za-z0-9_-]+$`));
    expect(sealed).not.toContain(SECRET_ARG);
    expect(Buffer.from(sealed.split('.')[2] as string, 'base64url').toString('latin1')).not.toContain(SECRET_ARG);
    expect(openFacts(key, REQUEST, sealed)).toBe(plain);
    // A fresh nonce each time.
    expect(sealFacts(key, REQUEST, plain)).not.toBe(sealed);
  });

  it('another master key is refused, naming both key ids', () => {
    const other = masterKeyFromBytes(randomBytes(32));
    const e = refusal(() => openFacts(other, REQUEST, sealed));
    expect(e.code).toBe('VALET_ERR_AUDIT_FACTS_UNREADABLE');
    expect(e.message).toBe(`The request facts cannot be opened: sealed under master key ${key.id}, not this one (${other.id}).`);
    // Another key that claims this key's id fails authentication.
    const forged = { ...other, id: key.id };
    expect(refusal(() => openFacts(forged, REQUEST, sealed)).message).toContain('failed authentication');
  });

  it("another row's request id, a changed byte, a truncated or malformed text are refused; no message quotes a fact", () => {
    const body = sealed.split('.')[2] as string;
    const bytes = Buffer.from(body, 'base64url');
    const tampered = (i: number): string => {
      const b = Buffer.from(bytes);
      b[i] = (b[i] as number) ^ 1;
      return `v1.${key.id}.${b.toString('base64url')}`;
    };
    const cases = [
      () => openFacts(key, '01a22705-2452-7039-8c18-df9fad165878', sealed),
      () => openFacts(key, REQUEST, tampered(0)),
      () => openFacts(key, REQUEST, tampered(20)),
      () => openFacts(key, REQUEST, tampered(bytes.length - 1)),
      () => openFacts(key, REQUEST, `v1.${key.id}.${bytes.subarray(0, 20).toString('base64url')}`),
      () => openFacts(key, REQUEST, sealed.replace(/^v1/, 'v2')),
      () => openFacts(key, REQUEST, `${sealed}.x`),
      () => openFacts(key, REQUEST, plain),
    ];
    for (const c of cases) {
      const e = refusal(c);
      expect(e.code).toBe('VALET_ERR_AUDIT_FACTS_UNREADABLE');
      expect(e.message).not.toContain(SECRET_ARG);
      expect(e.message).not.toContain(body.slice(0, 12));
    }
  });

  it("the facts key is the master key's own for this purpose: a secret-store ciphertext key does not open facts, nor the reverse", () => {
    const asSecret = sealSecret(key, plain, { tenant: null, name: 'X', version: 1 });
    const smuggled = `v1.${key.id}.${Buffer.concat([asSecret.nonce, asSecret.ciphertext, asSecret.tag]).toString('base64url')}`;
    expect(refusal(() => openFacts(key, REQUEST, smuggled)).code).toBe('VALET_ERR_AUDIT_FACTS_UNREADABLE');
    const bytes = Buffer.from(sealed.split('.')[2] as string, 'base64url');
    const back = { nonce: bytes.subarray(0, 12), ciphertext: bytes.subarray(12, bytes.length - 16), tag: bytes.subarray(bytes.length - 16) };
    expect(refusal(() => openSecret(key, back, { tenant: null, name: 'X', version: 1 })).code).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
  });
});

describe('request facts: one sealed batch per commit (v2)', () => {
  const OTHER = '01a22705-2452-7039-8c18-df9fad165878';
  const plainA = encodeFacts(input({ customer: SECRET_ARG, amount: 5000n }), DECISION, { argsRead: true });
  const plainB = encodeFacts(input({ customer: 'cus_other', amount: 7n }), { effect: 'allow', rules: ['r'], reason: 'ok' }, { argsRead: false });
  const batch = sealFactsBatch(key, [
    [REQUEST, plainA],
    [OTHER, plainB],
  ]);
  const stored = new Map<number, string>([[7, batch.text]]);
  const opener = (k = key, batches: ReadonlyMap<number, string> = stored): FactsOpener => new FactsOpener(k, (id) => batches.get(id));

  it('each row opens its own line of the batch; the batch names the key, holds nothing in the clear, and is far smaller than its rows sealed one by one', () => {
    expect(batch.text).toMatch(new RegExp(`^v2\\.${key.id}\\.[A-Za-z0-9_-]+$`));
    expect(batch.digest).toBe(batchDigest(batch.text));
    expect(Buffer.from(batch.text.split('.')[2] as string, 'base64url').toString('latin1')).not.toContain(SECRET_ARG);
    const refA = batchRef(7, 0, batch.digest);
    const refB = batchRef(7, 1, batch.digest);
    expect(parseBatchRef(refA)).toEqual({ batchId: 7, line: 0, digest: batch.digest });
    const o = opener();
    expect(o.open(REQUEST, refA)).toBe(plainA);
    expect(o.open(OTHER, refB)).toBe(plainB);
    expect(decodeFacts(o.open(REQUEST, refA)).input.facts.args).toMatchObject({ amount: 5000n, customer: SECRET_ARG });
    // v1 rows (written before) open through the same opener.
    expect(o.open(REQUEST, sealFacts(key, REQUEST, plainA))).toBe(plainA);
    // Nearly alike facts compress: 50 rows take far fewer bytes than 50 v1 texts.
    const many = Array.from({ length: 50 }, (_, i) => [`req-${i}`, plainA] as const);
    const v1Bytes = many.reduce((n, [id, p]) => n + sealFacts(key, id, p).length, 0);
    expect(sealFactsBatch(key, many).text.length).toBeLessThan(v1Bytes / 10);
  });

  it("another row's line, a batch altered or gone, another key, a malformed reference are refused with a coded error that quotes no fact", () => {
    const refA = batchRef(7, 0, batch.digest);
    const body = Buffer.from(batch.text.split('.')[2] as string, 'base64url');
    // An altered batch whose digest an attacker recomputed into the reference: authentication still fails.
    body[30] = (body[30] as number) ^ 1;
    const forged = `v2.${key.id}.${body.toString('base64url')}`;
    const other = masterKeyFromBytes(randomBytes(32));
    const cases: [() => unknown, RegExp][] = [
      [() => opener().open(OTHER, refA), /its line of the sealed batch is another request's/],
      [() => opener().open(REQUEST, batchRef(7, 2, batch.digest)), /its line of the sealed batch does not exist/],
      [() => opener().open(REQUEST, batchRef(8, 0, batch.digest)), /its sealed batch is missing \(deleted\)/],
      [() => opener(key, new Map([[7, forged]])).open(REQUEST, refA), /does not match the row's digest \(altered\)/],
      [() => opener(key, new Map([[7, forged]])).open(REQUEST, batchRef(7, 0, batchDigest(forged))), /failed authentication/],
      [() => opener(other).open(REQUEST, refA), new RegExp(`sealed under master key ${key.id}, not this one \\(${other.id}\\)`)],
      [() => opener().open(REQUEST, `v2.7.0.${batch.digest.slice(1)}`), /malformed/],
      [() => opener().open(REQUEST, 'v2.x'), /malformed/],
    ];
    for (const [c, why] of cases) {
      const e = refusal(c);
      expect(e.code).toBe('VALET_ERR_AUDIT_FACTS_UNREADABLE');
      expect(e.message).toMatch(why);
      expect(e.message).not.toContain(SECRET_ARG);
    }
  });

  it("a tenant's batch closes at 4 MiB of facts and the next row starts another (a backlog drained in one commit); tenants never share one", () => {
    const big = (n: number): string => `{"pad":"${'x'.repeat(2.5 * 1024 * 1024)}","n":${n}}`;
    const rows = [
      ['acme', 'r0', big(0)],
      ['globex', 'r1', '{"n":1}'],
      ['acme', 'r2', big(2)],
      ['acme', 'r3', big(3)],
    ] as const;
    const failed: string[] = [];
    const batches = sealByTenant(key, rows.length, (i) => rows[i], (id) => failed.push(id));
    expect(batches.map((b) => b.at)).toEqual([[0, 2], [1], [3]]);
    expect(failed).toEqual([]);
    const stored = new Map(batches.map((b, i) => [i + 1, b.sealed.text]));
    const o = opener(key, stored);
    batches.forEach((b, i) => b.at.forEach((at, line) => expect(o.open(rows[at]![1], batchRef(i + 1, line, b.sealed.digest))).toBe(rows[at]![2])));
  });

  it('retention counts the rows that refer to each batch', () => {
    const rows = [{ facts: batchRef(3, 0, batch.digest) }, { facts: batchRef(3, 1, batch.digest) }, { facts: batchRef(4, 0, batch.digest) }, { facts: sealFacts(key, REQUEST, plainA) }, { facts: null }];
    expect([...batchRefCounts(rows)]).toEqual([
      [3, 2],
      [4, 1],
    ]);
  });
});
