/**
 * Response redaction: JSON paths and value patterns on parsed values and JSON text, and the SSE
 * and NDJSON transforms, which must give the same bytes however the body is split into chunks
 * (down to one byte per write, a CR LF or a UTF-8 character cut in two), and must fail rather than
 * pass on an event they cannot hold.
 */
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it, vi } from 'vitest';
import {
  combineRedactors,
  compileRedactor,
  REDACTED_VALUE,
  RedactionError,
  redactNdjson,
  redactSse,
  type KeepMatch,
  type PatternName,
  type Redactor,
} from '../../gateway/proxy/redact.js';
import { everyByte, rng, splitAt } from '../helpers/splits.js';

const R = REDACTED_VALUE;

/** Runs `chunks` through the transform, one write each; what it emitted, and the error it failed with. */
async function attempt(t: Transform, chunks: readonly Buffer[]): Promise<{ out: Buffer; error: unknown }> {
  const out: Buffer[] = [];
  const error = await pipeline(Readable.from(chunks), t, async (source: AsyncIterable<unknown>) => {
    for await (const chunk of source) {
      expect(Buffer.isBuffer(chunk)).toBe(true);
      out.push(chunk as Buffer);
    }
  }).then(
    () => undefined,
    (err: unknown) => err,
  );
  return { out: Buffer.concat(out), error };
}

/** The same, for a run that must succeed. */
async function run(t: Transform, chunks: readonly Buffer[]): Promise<Buffer> {
  const { out, error } = await attempt(t, chunks);
  if (error !== undefined) throw error;
  return out;
}

function randomSplits(length: number, seed: number): number[] {
  const random = rng(seed);
  const count = 1 + Math.floor(random() * 12);
  return Array.from({ length: count }, () => Math.floor(random() * (length + 1))).sort((a, b) => a - b);
}

/**
 * Every way the transform may see `input`: whole, one byte per write, cut at each offset, and cut
 * at random points; each must give `expected`.
 */
async function expectEverySplit(make: () => Transform, input: Buffer, expected: string): Promise<void> {
  const splits: [string, Buffer[]][] = [
    ['whole', [input]],
    ['one byte per write', everyByte(input)],
  ];
  for (let p = 0; p <= input.length; p++) splits.push([`cut at ${p}`, splitAt(input, [p])]);
  for (let seed = 1; seed <= 150; seed++) splits.push([`random seed ${seed}`, splitAt(input, randomSplits(input.length, seed))]);
  for (const [name, chunks] of splits) expect((await run(make(), chunks)).toString('utf8'), name).toBe(expected);
}

describe('paths', () => {
  const order = {
    data: [
      { id: 'ch_1', card: { number: '4242424242424242', brand: 'visa', exp: { month: 12, year: 2030 } } },
      { id: 'ch_2', card: { number: '5555555555554444', brand: 'mastercard' } },
    ],
    customer: { email: 'ana@example.com', Email: 'kept@example.com', ssn: '123-45-6789' },
    ssn: 'top-level',
    meta: { deep: { er: [{ ssn: 'in an array' }] } },
  };

  it('`*` matches any one key or array index', () => {
    const { value, count } = compileRedactor({ paths: ['data.*.card.number'] }).value(order);
    expect(value).toMatchObject({ data: [{ card: { number: R, brand: 'visa' } }, { card: { number: R, brand: 'mastercard' } }] });
    expect(count).toBe(2);
  });

  it('`**` matches at any depth, including none, through arrays', () => {
    const { value, count } = compileRedactor({ paths: ['**.ssn'] }).value(order);
    expect(value).toMatchObject({ ssn: R, customer: { ssn: R }, meta: { deep: { er: [{ ssn: R }] } } });
    expect(count).toBe(3);
  });

  it('keys match exactly and case-sensitively', () => {
    const { value, count } = compileRedactor({ paths: ['customer.email'] }).value(order);
    expect(value).toMatchObject({ customer: { email: R, Email: 'kept@example.com' } });
    expect(count).toBe(1);
    expect(compileRedactor({ paths: ['customer.EMAIL', 'customer.email.x', 'custome.email'] }).value(order).count).toBe(0);
  });

  it('a numeric segment is an array index', () => {
    const { value, count } = compileRedactor({ paths: ['data.1.card.number', 'data.5.id', 'data.01.id'] }).value(order);
    expect(value).toMatchObject({ data: [{ card: { number: '4242424242424242' } }, { card: { number: R } }] });
    expect(count).toBe(1);
  });

  it('a path naming an object or array replaces the whole subtree; numbers, booleans and null too', () => {
    const v = { customer: { email: 'a@b.co' }, data: [1, 2], n: 42, b: false, z: null, keep: 1 };
    const { value, count } = compileRedactor({ paths: ['customer', 'data', 'n', 'b', 'z'] }).value(v);
    expect(value).toEqual({ customer: R, data: R, n: R, b: R, z: R, keep: 1 });
    expect(count).toBe(5);
    expect(compileRedactor({ paths: ['data.*.card'] }).value(order).value).toMatchObject({ data: [{ id: 'ch_1', card: R }, { id: 'ch_2', card: R }] });
    expect(compileRedactor({ paths: ['a.**'] }).value({ a: { b: 1 }, c: 2 }).value).toEqual({ a: R, c: 2 });
    expect(compileRedactor({ paths: ['**'] }).value({ a: 1 })).toEqual({ value: R, count: 1 });
  });

  it('does not mutate its input, and shares what it did not change', () => {
    const frozen = structuredClone(order);
    deepFreeze(frozen);
    const { value } = compileRedactor({ paths: ['customer.email'] }).value(frozen) as { value: typeof order };
    expect(frozen.customer.email).toBe('ana@example.com');
    expect(value.customer.email).toBe(R);
    expect(value.data).toBe(frozen.data);
    expect(value.meta).toBe(frozen.meta);
    const none = compileRedactor({ paths: ['nothing.here'], patterns: ['iban'] }).value(frozen);
    expect(none).toEqual({ value: frozen, count: 0 });
    expect(none.value).toBe(frozen);
  });

  it('a `__proto__` key stays a plain key of the copy', () => {
    const v = JSON.parse('{"__proto__":{"ssn":"123-45-6789","x":1},"y":2}') as unknown;
    const out = compileRedactor({ paths: ['**.ssn'] }).json(JSON.stringify(v));
    expect(out).toEqual({ text: `{"__proto__":{"ssn":"${R}","x":1},"y":2}`, count: 1 });
  });

  it('JSON nested deeper than 256 levels is replaced whole (once) where a path or pattern could reach, left alone where none can', () => {
    const deep = (levels: number): string => '{"a":'.repeat(levels) + '{"ssn":"1"}' + '}'.repeat(levels);
    const r = compileRedactor({ paths: ['**.ssn'] });
    expect(r.json(`{"x":${deep(200)}}`)?.count).toBe(1);
    const tooDeep = r.json(`{"x":${deep(400)},"y":"kept"}`);
    expect(tooDeep?.count).toBe(1);
    expect(JSON.parse(tooDeep?.text as string)).toEqual({ x: expect.anything(), y: 'kept' });
    expect(tooDeep?.text).not.toContain('"ssn"');
    const elsewhere = compileRedactor({ paths: ['y'] }).json(`{"x":${deep(400)},"y":"gone"}`);
    expect(elsewhere?.count).toBe(1);
    expect(elsewhere?.text).toContain('"ssn":"1"');
    expect(compileRedactor({ patterns: ['email'] }).value(JSON.parse(deep(400))).count).toBe(1);
  });
});

function deepFreeze(v: unknown): void {
  if (typeof v !== 'object' || v === null) return;
  Object.freeze(v);
  for (const child of Object.values(v)) deepFreeze(child);
}

describe('json() and text()', () => {
  const r = compileRedactor({ paths: ['customer.email'], patterns: ['email'] });

  it('re-serialises a redacted JSON text compactly; an untouched one comes back as it was', () => {
    expect(r.json('{ "customer": { "email": "a@b.co" },\n "n": 1.50 }')).toEqual({ text: `{"customer":{"email":"${R}"},"n":1.5}`, count: 1 });
    const untouched = '{ "n": 1.50, "s": "no mail here" }';
    expect(r.json(untouched)).toEqual({ text: untouched, count: 0 });
    expect(r.json('"write to a@b.co"')).toEqual({ text: `"write to ${R}"`, count: 1 });
  });

  it('is undefined for text that is not JSON', () => {
    for (const t of ['', 'a@b.co', '{"a":1', '[DONE]', '{"a":1} x']) expect(r.json(t), t).toBeUndefined();
  });

  it('text() applies patterns only', () => {
    expect(r.text('customer.email: a@b.co')).toEqual({ text: `customer.email: ${R}`, count: 1 });
    expect(compileRedactor({ paths: ['a'] }).text('a@b.co')).toEqual({ text: 'a@b.co', count: 0 });
  });

  it('with paths only, json() runs no regex over the strings', () => {
    const body = JSON.stringify({ customer: { email: 'a@b.co' }, notes: Array.from({ length: 100 }, (_, i) => `note ${i} +14155552671`) });
    const paths = compileRedactor({ paths: ['customer.email', 'notes.*.x', '**.ssn'] });
    const exec = vi.spyOn(RegExp.prototype, 'exec');
    const test = vi.spyOn(RegExp.prototype, 'test');
    try {
      expect(paths.json(body)?.count).toBe(1);
      expect(exec).not.toHaveBeenCalled();
      expect(test).not.toHaveBeenCalled();
    } finally {
      exec.mockRestore();
      test.mockRestore();
    }
  });
});

describe('patterns', () => {
  const only = (name: PatternName): Redactor => compileRedactor({ patterns: [name] });
  const cases: [PatternName, string[], string[]][] = [
    [
      'card_number',
      ['4242424242424242', '4242 4242 4242 4242', '4242-4242-4242-4242', '378282246310005', '4222222222222', '6011 0009 9013 9424', '4000 0566-5566 5556'],
      // Luhn fails; too short; too long; doubled separator; order ids.
      ['4242424242424241', '4242 4242 4242 4241', '424242424242', '42424242424242424242', '4242  4242 4242 4242', '1234-5678-9012-3456', 'ORD-100000000000001'],
    ],
    [
      'email',
      ['ana@example.com', 'ana.maria+tag@mail.example.co.uk', "o'neil_x-y@sub-domain.example.org", 'A.B@EXAMPLE.IO'],
      ['ana@localhost', 'not an @ sign', 'ana@', '@example.com', 'a@b.c'],
    ],
    [
      'iban',
      ['DE89 3704 0044 0532 0130 00', 'DE89370400440532013000', 'GB82 WEST 1234 5698 7654 32', 'GB82WEST12345698765432', 'FR1420041010050500013M02606'],
      // Wrong check digits; one digit changed; lower case; too short.
      ['DE88 3704 0044 0532 0130 00', 'DE89370400440532013001', 'gb82west12345698765432', 'DE89 3704 0044'],
    ],
    [
      'us_ssn',
      ['123-45-6789', '001-01-0001', '899-99-9999'],
      ['000-12-3456', '666-12-3456', '900-12-3456', '999-12-3456', '123-00-4567', '123-45-0000', '123456789', '1123-45-6789', '123-45-67890'],
    ],
    [
      'phone',
      ['+14155552671', '+44 20 7946 0958', '+49-30-1234567', '+12345678', '+123456789012345'],
      ['+1234567', '+1234567890123456', '14155552671', 'x+14155552671', '+ 14155552671'],
    ],
  ];

  for (const [name, positive, negative] of cases) {
    it(`${name}: replaces matches`, () => {
      for (const p of positive) {
        expect(only(name).text(`before ${p} after`), p).toEqual({ text: `before ${R} after`, count: 1 });
        expect(only(name).text(p), p).toEqual({ text: R, count: 1 });
      }
    });

    it(`${name}: keeps non-matches`, () => {
      for (const n of negative) expect(only(name).text(`before ${n} after`), n).toEqual({ text: `before ${n} after`, count: 0 });
    });
  }

  it('replaces only the matched substring of a string value, never an object key', () => {
    const r = compileRedactor({ patterns: ['card_number', 'email'] });
    expect(r.value({ note: 'card 4242 4242 4242 4242 ok', 'ana@example.com': 'x', n: 4242424242424242 })).toEqual({
      value: { note: `card ${R} ok`, 'ana@example.com': 'x', n: 4242424242424242 },
      count: 1,
    });
  });

  it('card numbers: a card followed by a CVV, or two in a row, are found inside a longer run of digits', () => {
    expect(only('card_number').text('4242 4242 4242 4242 123')).toEqual({ text: `${R} 123`, count: 1 });
    expect(only('card_number').text('4242 4242 4242 4242 4000 0566 5566 5556')).toEqual({ text: `${R} ${R}`, count: 2 });
  });

  it('IBAN: the account before a currency code or a second IBAN is found', () => {
    expect(only('iban').text('DE89 3704 0044 0532 0130 00 EUR')).toEqual({ text: `${R} EUR`, count: 1 });
    expect(only('iban').text('DE89 3704 0044 0532 0130 00 GB82 WEST 1234 5698 7654 32')).toEqual({ text: `${R} ${R}`, count: 2 });
    expect(only('iban').text('AB12 GB82 WEST 1234 5698 7654 32')).toEqual({ text: `AB12 ${R}`, count: 1 });
  });

  it('several matches, overlapping ones (from different patterns) replaced once', () => {
    const r = compileRedactor({ patterns: ['email', 'phone', { regex: 'ana@example' }] });
    expect(r.text('ana@example.com, +14155552671 and bob@example.org')).toEqual({ text: `${R}, ${R} and ${R}`, count: 3 });
  });

  it('a custom regex: compiled with `g` and `u`, named `regex` to keep()', () => {
    const r = compileRedactor({ patterns: [{ regex: 'sk_live_[A-Za-z0-9]+' }, { regex: '\\p{Script=Greek}+' }] });
    expect(r.text('key sk_live_abc123 and sk_live_XYZ, αβγ')).toEqual({ text: `key ${R} and ${R}, ${R}`, count: 3 });
    // A regex that matches empty strings somewhere (but not '') replaces only non-empty matches.
    expect(compileRedactor({ patterns: [{ regex: '\\bx*' }] }).text('a xx b')).toEqual({ text: `a ${R} b`, count: 1 });
  });

  it('scans stay fast on long runs that look like the start of a match', () => {
    const r = compileRedactor({ patterns: ['card_number', 'email', 'iban', 'us_ssn', 'phone'] });
    const start = performance.now();
    for (const s of ['1 '.repeat(200_000), 'a'.repeat(400_000) + '@' + 'b'.repeat(400_000), 'AB12 '.repeat(50_000), '+1 '.repeat(100_000), '1-'.repeat(200_000)]) {
      r.text(s);
    }
    expect(performance.now() - start).toBeLessThan(2_000);
  });
});

describe('keep', () => {
  const r = compileRedactor({ paths: ['secret'], patterns: ['email', { regex: 'tok_[0-9]+' }] });

  it('keeps the matches it returns true for, and is told the pattern name', () => {
    const seen: [string, string][] = [];
    const keep: KeepMatch = (match, pattern) => {
      seen.push([match, pattern]);
      return match.endsWith('@tenant.example') || match === 'tok_1';
    };
    expect(r.value({ a: 'me@tenant.example, them@other.example', b: 'tok_1 tok_2', secret: 'me@tenant.example' }, keep)).toEqual({
      value: { a: `me@tenant.example, ${R}`, b: `tok_1 ${R}`, secret: R },
      count: 3,
    });
    expect(seen).toEqual([
      ['me@tenant.example', 'email'],
      ['them@other.example', 'email'],
      ['tok_1', 'regex'],
      ['tok_2', 'regex'],
    ]);
    expect(r.text('me@tenant.example', keep)).toEqual({ text: 'me@tenant.example', count: 0 });
  });
});

describe('bad specs', () => {
  it.each([
    ['empty path', { paths: [''] }, /non-empty/],
    ['leading dot', { paths: ['.a'] }, /"\.a": empty segment/],
    ['doubled dot', { paths: ['a..b'] }, /"a\.\.b": empty segment/],
    ['trailing dot', { paths: ['a.'] }, /empty segment/],
    ['partial wildcard', { paths: ['a.b*'] }, /whole segments/],
    ['triple star', { paths: ['***'] }, /whole segments/],
    ['unknown pattern', { patterns: ['credit_card'] }, /"credit_card": unknown; expected one of card_number, email, iban, us_ssn, phone/],
    ['invalid regex', { patterns: [{ regex: 'sk_live_(' }] }, /invalid regex \(Unterminated group\)/],
    ['regex matching the empty string', { patterns: [{ regex: 'a*' }] }, /matches the empty string/],
    ['regex not a string', { patterns: [{ regex: 1 }] }, /must be a string/],
    ['pattern of the wrong shape', { patterns: [{ name: 'email' }] }, /expected a pattern name or \{ regex \}/],
    ['paths not a list', { paths: 'a.b' }, /expected a list/],
  ])('%s: TypeError', (_name, spec, message) => {
    expect(() => compileRedactor(spec as never)).toThrow(TypeError);
    expect(() => compileRedactor(spec as never)).toThrow(message);
  });

  it("an invalid regex's message leaves out its source, which may spell out a secret", () => {
    expect(() => compileRedactor({ patterns: [{ regex: 'sk_live_Zq81xx[' }] })).toThrow(/^redact pattern: invalid regex \([^)]*\)$/);
    expect(() => compileRedactor({ patterns: [{ regex: 'sk_live_Zq81xx[' }] })).not.toThrow(/Zq81xx/);
  });

  it('stream limits must be positive integers', () => {
    const r = compileRedactor({});
    expect(() => redactSse(r, { maxEventBytes: 0 })).toThrow(TypeError);
    expect(() => redactNdjson(r, { maxLineBytes: Number.NaN })).toThrow(TypeError);
  });
});

describe('combineRedactors', () => {
  it("applies every rule's paths and patterns, once each", () => {
    const a = compileRedactor({ paths: ['customer.email'], patterns: ['email'] });
    const b = compileRedactor({ paths: ['**.ssn', 'customer.email'], patterns: ['email', { regex: 'tok_[0-9]+' }] });
    const both = combineRedactors([a, b]);
    expect(both.value({ customer: { email: 'x', ssn: 'y' }, note: 'a@b.co tok_9' })).toEqual({
      value: { customer: { email: R, ssn: R }, note: `${R} ${R}` },
      count: 4,
    });
    expect(combineRedactors([a])).toBe(a);
    expect(combineRedactors([]).value({ a: 'a@b.co' })).toEqual({ value: { a: 'a@b.co' }, count: 0 });
  });

  it('refuses a redactor it did not compile', () => {
    const foreign: Redactor = { value: (v) => ({ value: v, count: 0 }), json: () => undefined, text: (s) => ({ text: s, count: 0 }) };
    expect(() => combineRedactors([compileRedactor({}), foreign])).toThrow(TypeError);
  });
});

describe('redactSse', () => {
  const r = compileRedactor({ patterns: ['email'] });
  const chunk = (content: string): string =>
    `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}`;
  // Events as [input, expected output], lines joined with LF.
  const events: [string, string][] = [
    [chunk('Write to ana@example.com ✉️ — ok'), chunk(`Write to ${R} ✉️ — ok`)],
    [': keep-alive', ': keep-alive'],
    [chunk(' très bien 😀, nothing to hide'), chunk(' très bien 😀, nothing to hide')],
    // Multi-line data joins with a LF (JSON whitespace here) and goes out as one line.
    ['event: note\nid: 7\ndata: {"text":\ndata:"to bob@example.org"}', `event: note\nid: 7\ndata: {"text":"to ${R}"}`],
    ['retry: 1000', 'retry: 1000'],
    // Data that is not JSON: patterns only, its lines kept.
    ['data: plain zoë wrote to zoe@example.com\ndata: second line', `data: plain zoë wrote to ${R}\ndata: second line`],
    ['data: [DONE]', 'data: [DONE]'],
  ];
  const stream = (eol: string, last = ''): [Buffer, string] => [
    Buffer.from(events.map(([i]) => i.replaceAll('\n', eol) + eol + eol).join('') + last.replaceAll('\n', eol)),
    events.map(([, o]) => o.replaceAll('\n', eol) + eol + eol).join('') + last.replaceAll('\n', eol),
  ];

  for (const [name, eol] of [
    ['LF', '\n'],
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ] as const) {
    it(`${name} line ends: the same output however the stream is split`, async () => {
      const [input, expected] = stream(eol);
      await expectEverySplit(() => redactSse(r, { maxEventBytes: 4096 }), input, expected);
    });
  }

  it('a last event without its blank line is still redacted and emitted', async () => {
    const last = 'id: 9\ndata: {"e":"x@example.com"}';
    const [input] = stream('\n', last);
    const expected = stream('\n')[1] + `id: 9\ndata: {"e":"${R}"}`;
    await expectEverySplit(() => redactSse(r, { maxEventBytes: 4096 }), input, expected);
    const crlf = stream('\r\n', `${last}\n`);
    expect((await run(redactSse(r, { maxEventBytes: 4096 }), [crlf[0]])).toString()).toBe(`${stream('\r\n')[1]}id: 9\r\ndata: {"e":"${R}"}\r\n`);
  });

  it('reports the count of each event that had replacements', async () => {
    const counts: number[] = [];
    const [input] = stream('\n', 'data: {"a":"x@example.com","b":["y@example.com"]}');
    await run(redactSse(r, { maxEventBytes: 4096, onRedacted: (n) => counts.push(n) }), everyByte(input));
    expect(counts).toEqual([1, 1, 1, 2]);
  });

  it('passes keep on', async () => {
    const keep: KeepMatch = (m) => m === 'ana@example.com';
    const [input, expected] = stream('\n');
    const out = await run(redactSse(r, { maxEventBytes: 4096, keep }), [input]);
    expect(out.toString()).toBe(expected.replace(`Write to ${R}`, 'Write to ana@example.com'));
  });

  it('keeps comments, other fields and lines without a colon; `data` alone is an empty data line', async () => {
    const input = ':comment a@b.co\nfoo: a@b.co\ndata\ndata:x@y.io\n\n';
    expect((await run(redactSse(r, { maxEventBytes: 4096 }), [Buffer.from(input)])).toString()).toBe(`:comment a@b.co\nfoo: a@b.co\ndata: \ndata: ${R}\n\n`);
  });

  it('redacts the first event after a byte order mark', async () => {
    const input = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('data: a@b.co\n\n')]);
    await expectEverySplit(() => redactSse(r, { maxEventBytes: 4096 }), input, `data: ${R}\n\n`);
  });

  it('passes an event without replacements on byte for byte', async () => {
    const input = Buffer.from('event: x\r\ndata: {"a" :  1}\n:c\r\rdata: plain\r\n\r\n');
    expect((await run(redactSse(r, { maxEventBytes: 4096 }), everyByte(input))).equals(input)).toBe(true);
  });

  it('an event over maxEventBytes fails the stream without passing it on', async () => {
    const small = 'data: {"ok":true}\n\n';
    const big = `data: {"text":"${'x'.repeat(100)} a@b.co"}\n\n`;
    const max = 64;
    for (const chunks of [[Buffer.from(small + big)], everyByte(Buffer.from(small + big)), [Buffer.from(small), Buffer.from(big.slice(0, 70))]]) {
      const { out, error } = await attempt(redactSse(r, { maxEventBytes: max }), chunks);
      expect(error).toBeInstanceOf(RedactionError);
      expect((error as Error).message).toBe('event too large');
      expect(small.startsWith(out.toString())).toBe(true);
    }
    // Without a line end at all.
    await expect(run(redactSse(r, { maxEventBytes: max }), [Buffer.from('data: ' + 'y'.repeat(100))])).rejects.toThrow('event too large');
    // Exactly at the limit (its blank line included) passes.
    const exact = `data: "${'z'.repeat(max - 10)}"\n\n`;
    expect(Buffer.byteLength(exact)).toBe(max);
    expect((await run(redactSse(r, { maxEventBytes: max }), [Buffer.from(exact)])).toString()).toBe(exact);
  });
});

describe('redactNdjson', () => {
  const r = compileRedactor({ paths: ['user.email'], patterns: ['email', 'phone'] });
  const input = [
    '{"user":{"email":"ana@example.com","name":"Ana Ñandú"}}\n',
    '{"n":1, "note":"nothing"}\r\n',
    '\n',
    '{"to":"ζ bob@example.org"}\r\n',
    'not json: call +14155552671\n',
    '{"last":["x@example.com","y@example.com"]}',
  ].join('');
  const expected = [
    `{"user":{"email":"${R}","name":"Ana Ñandú"}}\n`,
    '{"n":1, "note":"nothing"}\r\n',
    '\n',
    `{"to":"ζ ${R}"}\r\n`,
    `not json: call ${R}\n`,
    `{"last":["${R}","${R}"]}`,
  ].join('');

  it('redacts each line as JSON, or by patterns; the same output however the stream is split', async () => {
    await expectEverySplit(() => redactNdjson(r, { maxLineBytes: 1024 }), Buffer.from(input), expected);
  });

  it('reports the count of each line that had replacements; passes keep on', async () => {
    const counts: number[] = [];
    const keep: KeepMatch = (m) => m === 'bob@example.org';
    const out = await run(redactNdjson(r, { maxLineBytes: 1024, keep, onRedacted: (n) => counts.push(n) }), everyByte(Buffer.from(input)));
    expect(out.toString()).toBe(expected.replace(`ζ ${R}`, 'ζ bob@example.org'));
    expect(counts).toEqual([1, 1, 2]);
  });

  it('a line over maxLineBytes fails the stream without passing it on', async () => {
    const big = Buffer.from(`{"a":"${'x'.repeat(100)}","e":"a@b.co"}\n`);
    const ok = Buffer.from('{"ok":1}\n');
    for (const chunks of [[Buffer.concat([ok, big])], everyByte(Buffer.concat([ok, big])), [ok, big.subarray(0, 80)]]) {
      const { out, error } = await attempt(redactNdjson(r, { maxLineBytes: 64 }), chunks);
      expect(error).toEqual(new RedactionError('line too large'));
      expect(error).toBeInstanceOf(RedactionError);
      expect(ok.toString().startsWith(out.toString())).toBe(true);
    }
  });
});
