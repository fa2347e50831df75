import { describe, expect, it } from 'vitest';
import { exactNumber, foldKey, parseJsonObject } from '../../gateway/json.js';
import { buildArgs, parseBody } from '../../gateway/policy/args.js';

const json = (text: string | Buffer) => parseJsonObject(Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8'));
const form = (text: string) => parseBody('form', Buffer.from(text, 'utf8'));

describe('JSON bodies: one reading only', () => {
  it('accepts ordinary bodies, numbers that are exactly what JavaScript prints', () => {
    for (const n of ['0', '1', '-1', '500.5', '0.1', '0.10', '1.0', '1e2', '1E+2', '2.5e-3', '19.99', '9007199254740992', '1e23', '123456789.125']) {
      const r = json(`{"amount":${n},"nested":{"list":[${n}]}}`);
      expect(r, n).toMatchObject({ error: undefined, ambiguous: false });
      expect(r.value?.['amount'], n).toBe(Number(n));
    }
  });

  it('refuses numbers a decimal or big-integer reader would read as another value', () => {
    for (const n of ['9007199254740993', '-9007199254740993', '500.00000000000000001', '1e400', '-1e400', '1e-400', '-0', '-0.0', '0.30000000000000000001', '123456789012345678901234567890']) {
      const r = json(`{"a":{"amount":${n}}}`);
      expect(r.value, n).toBeUndefined();
      expect(r.ambiguous, n).toBe(true);
      expect(r.error, n).toMatch(/not exactly a double/);
    }
  });

  it('exactNumber compares exact decimals, not doubles', () => {
    expect(exactNumber('100', 100)).toBe(true);
    expect(exactNumber('1.000e2', 100)).toBe(true);
    expect(exactNumber('100.0000000000000000001', 100)).toBe(false);
    expect(exactNumber('0', 0)).toBe(true);
    expect(exactNumber('0e999999999999999999999', 0)).toBe(true);
    expect(exactNumber('-0', -0)).toBe(false);
    expect(exactNumber('1e99999999999999999999', Infinity)).toBe(false);
  });

  it('refuses keys that collide under case folding or Unicode normalisation, at any level', () => {
    const cases = [
      '{"amount":1,"Amount":2}',
      '{"amount":1,"AMOUNT":2}',
      '{"amount":1,"\uFF41mount":2}', // fullwidth a (NFKC)
      '{"x":{"caf\u00e9":1,"cafe\u0301":2}}', // composed and decomposed é (NFC)
      '{"x":[{"stra\u00dfe":1,"STRASSE":2}]}', // ß folds to ss
      '{"\u212Aey":1,"key":2}', // Kelvin sign
    ];
    for (const body of cases) {
      const r = json(body);
      expect(r.value, body).toBeUndefined();
      expect(r.ambiguous, body).toBe(true);
      expect(r.error, body).toMatch(/differ only in case or Unicode form/);
    }
    expect(json('{"amount":1,"amount":2}')).toMatchObject({ ambiguous: true, error: 'the JSON body repeats the key "amount"' });
    // The same key in sibling objects is not a collision.
    expect(json('{"a":{"Amount":1},"b":{"amount":2}}').error).toBeUndefined();
  });

  it('refuses lone surrogates, NUL in keys, __proto__, a BOM and invalid UTF-8', () => {
    for (const body of ['{"a":"\\ud800"}', '{"a":"x\\udc00"}', '{"\\ud800":1}', '{"a\\u0000b":1}', '{"__proto__":{"admin":true}}', '{"a":{"__proto__":1}}']) {
      expect(json(body), body).toMatchObject({ value: undefined, ambiguous: true });
    }
    expect(json('{"a":"\\ud83d\\ude00"}').value).toEqual({ a: '\u{1F600}' });
    expect(json(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"a":1}')]))).toMatchObject({ value: undefined, ambiguous: true });
    expect(json(Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3, 0x22, 0x7d]))).toMatchObject({ value: undefined, ambiguous: true });
    // A literal U+FFFD is a character like any other.
    expect(json('{"a":"\uFFFD"}').value).toEqual({ a: '\uFFFD' });
  });

  it('malformed JSON is unreadable, not ambiguous', () => {
    expect(json('{"a":1,}')).toMatchObject({ value: undefined, ambiguous: false, error: 'the JSON body is malformed' });
  });

  it('foldKey folds case, width and composition', () => {
    expect(new Set(['amount', 'Amount', 'AMOUNT', '\uFF41mount', '\uFF21\uFF2D\uFF2F\uFF35\uFF2E\uFF34'].map(foldKey))).toEqual(new Set(['amount']));
    expect(foldKey('caf\u00e9')).toBe(foldKey('CAFE\u0301'));
  });
});

describe('form bodies and arguments: one reading only', () => {
  it('refuses form keys that collide by case or normalisation, at the top and inside brackets', () => {
    for (const body of ['amount=1&Amount=2', 'metadata[Order]=1&metadata[order]=2', 'metadata[a]=1&Metadata[b]=2', 'caf%C3%A9=1&cafe%CC%81=2', 'x[%EF%BD%81]=1&x[a]=2']) {
      const r = form(body);
      expect(r, body).toMatchObject({ value: undefined, ambiguous: true });
      expect(r.error, body).toMatch(/differ only in case or Unicode form/);
    }
    expect(form('amount=1&amount=2')).toMatchObject({ ambiguous: true, error: 'the form body repeats the key "amount"' });
    expect(form('metadata[order]=1&metadata[Other]=2&items[]=a&items[]=b').value).toEqual({ metadata: { order: '1', Other: '2' }, items: ['a', 'b'] });
  });

  it('refuses a form body that is not UTF-8 or starts with a BOM', () => {
    expect(parseBody('form', Buffer.from([0x61, 0x3d, 0xff]))).toMatchObject({ value: undefined, ambiguous: true });
    expect(parseBody('form', Buffer.from('\uFEFFa=1'))).toMatchObject({ value: undefined, ambiguous: true });
  });

  it('query and body names that differ only in case are ambiguous; so are two query names', () => {
    const body = form('amount=100');
    const both = buildArgs({}, { Amount: ['1'] }, body, 'form', {});
    expect(both).toMatchObject({ ambiguous: true });
    expect(both.error).toMatch(/"Amount" \(query\) and "amount" \(body\)/);
    expect(buildArgs({}, { amount: ['1'], AMOUNT: ['2'] }, { value: undefined, error: undefined, ambiguous: false }, 'none', {})).toMatchObject({ ambiguous: true });
    expect(buildArgs({}, { amount: ['1'] }, body, 'form', {})).toMatchObject({ ambiguous: true, error: 'the argument "amount" is given in both the query and the body' });
    expect(buildArgs({}, { currency: ['usd'] }, body, 'form', { amount: 'int' })).toMatchObject({ ambiguous: false, error: undefined });
  });
});
