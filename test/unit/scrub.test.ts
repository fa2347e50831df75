/**
 * The response scrubber: which forms of a secret it finds, that a run of copies becomes one
 * marker, and that streaming gives exactly the whole-buffer result for every way of splitting the
 * input, while holding back at most (longest pattern − 1) bytes and nothing that cannot begin a copy.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { base64Cores, createScrubber, REDACTED, scrubberFor, secretForms, type Scrubber } from '../../gateway/proxy/scrub.js';
import { everyByte, rng, splitAt } from '../helpers/splits.js';

const SECRET = 'sk-live-4eC39HqLyjWDarjtT1zdp7dc';
// A key whose base64 contains '+' and '/' and whose percent-encoding differs from it.
const AWKWARD = 'wJalr/XUtnFE+MI K7MDENG?bPxR~fiCYEXAMPLEKEY';

/** An independent whole-buffer reference: mark every byte of every copy, one marker per marked run. */
function reference(data: Buffer, patterns: readonly Buffer[]): Buffer {
  const marked = new Uint8Array(data.length);
  for (const p of patterns) {
    for (let i = 0; i + p.length <= data.length; i++) {
      if (data.subarray(i, i + p.length).equals(p)) marked.fill(1, i, i + p.length);
    }
  }
  const out: Buffer[] = [];
  for (let i = 0; i < data.length; i++) {
    if (marked[i] === 1) {
      if (i === 0 || marked[i - 1] === 0) out.push(Buffer.from(REDACTED));
    } else {
      out.push(data.subarray(i, i + 1));
    }
  }
  return Buffer.concat(out);
}

/** Runs `chunks` through a session; returns the concatenated output and what each write released. */
function run(scrubber: Scrubber, chunks: readonly Buffer[]): { out: Buffer; released: Buffer[] } {
  const session = scrubber.session();
  const released = chunks.map((c) => session.write(c));
  released.push(session.end());
  return { out: Buffer.concat(released), released };
}

describe('secretForms', () => {
  it('has the secret itself, percent-encoded in upper and lower hex, form-encoded with + for space, JSON-escaped', () => {
    const forms = secretForms(AWKWARD);
    expect(forms).toContain(AWKWARD);
    expect(forms).toContain(encodeURIComponent(AWKWARD));
    expect(forms).toContain(encodeURIComponent(AWKWARD).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()));
    expect(forms).toContain(new URLSearchParams({ k: AWKWARD }).toString().slice(2));
    expect(forms.some((f) => f.includes('+') && f.startsWith('wJalr%2FXUtnFE%2BMI+K7'))).toBe(true);
    expect(secretForms('a"b\\c/defgh')).toEqual(expect.arrayContaining(['a\\"b\\\\c/defgh', 'a\\"b\\\\c\\/defgh']));
  });

  it('has a base64 core for each alignment, found inside any longer base64 string holding the secret', () => {
    for (const secret of [SECRET, AWKWARD, 'é-unicode-ключ-12345']) {
      const cores = base64Cores(Buffer.from(secret));
      expect(cores).toHaveLength(3);
      for (let prefix = 0; prefix < 7; prefix++) {
        for (let suffix = 0; suffix < 4; suffix++) {
          const data = Buffer.concat([randomBytes(prefix), Buffer.from(secret), randomBytes(suffix)]);
          const core = cores[prefix % 3] as string;
          expect(data.toString('base64'), `prefix ${prefix} suffix ${suffix}`).toContain(core);
          expect(data.toString('base64url')).toContain(core.replaceAll('+', '-').replaceAll('/', '_'));
          const forms = secretForms(secret);
          expect(forms).toContain(core);
        }
      }
    }
  });

  it('each core covers all but at most 2 characters at each end of the plain base64', () => {
    const n = Buffer.byteLength(SECRET);
    for (const [offset, core] of base64Cores(Buffer.from(SECRET)).entries()) {
      expect(core.length, `offset ${offset}`).toBeGreaterThanOrEqual(Math.floor((8 * n) / 6) - 2);
    }
  });
});

describe('redact (header values and other strings)', () => {
  const s = createScrubber([SECRET]);
  const b64 = (v: string): string => Buffer.from(v).toString('base64');

  it.each([
    ['raw', `Bearer ${SECRET}`],
    ['in JSON', JSON.stringify({ echoed: { authorization: `Bearer ${SECRET}` } })],
    ['URL-encoded', `https://x.example/cb?k=${encodeURIComponent(`Bearer ${SECRET}`)}`],
    ['base64, alignment 0', `Basic ${b64(SECRET)}`],
    ['base64, alignment 1 (Basic u:secret)', `Basic ${b64(`u:${SECRET}`)}`],
    ['base64, alignment 2', `Basic ${b64(`us:${SECRET}`)}`],
    ['base64 inside a longer base64 string', b64(`{"auth":"Bearer ${SECRET}","n":1}`)],
    ['base64url', Buffer.from(`xx${SECRET}??>`).toString('base64url')],
    ['base64, percent-encoded', encodeURIComponent(b64(`\u00ff\u00fe${SECRET}\u00fb`))],
  ])('%s', (_name, value) => {
    const out = s.redact(value);
    expect(out).toContain(REDACTED);
    expect(out).not.toContain(SECRET);
    for (const p of s.patterns) expect(out).not.toContain(p.toString('latin1'));
  });

  it('percent-encoding in lower-case hex and form encoding (+ for space)', () => {
    const a = createScrubber([AWKWARD]);
    const lower = encodeURIComponent(AWKWARD).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    expect(a.redact(`?x=${lower}&y=1`)).toBe(`?x=${REDACTED}&y=1`);
    expect(a.redact(`?x=${new URLSearchParams({ k: AWKWARD }).toString().slice(2)}&y=1`)).toBe(`?x=${REDACTED}&y=1`);
  });

  it('leaves other values exactly as they were (same string)', () => {
    const v = 'application/json; charset=utf-8';
    expect(s.redact(v)).toBe(v);
    expect(s.redact('')).toBe('');
  });

  it('several copies: one marker each; overlapping or adjacent copies: one marker', () => {
    expect(s.redact(`a ${SECRET} b ${SECRET} c`)).toBe(`a ${REDACTED} b ${REDACTED} c`);
    expect(s.redact(`${SECRET}${SECRET}`)).toBe(REDACTED);
    const periodic = createScrubber(['abcabcab-key']);
    expect(periodic.redact('xxabcabcabcabcab-key-abcabcab-keyyy')).toBe(`xxabcabc${REDACTED}-${REDACTED}yy`);
    const overlap = createScrubber(['aaaaaaaaa1']);
    expect(overlap.redact('aaaaaaaaaaaaaaaa1aaaaaaaaa1')).toBe(`aaaaaaa${REDACTED}`);
  });

  it('several secrets are all redacted', () => {
    const two = createScrubber(['first-secret-value', 'second-secret-value']);
    expect(two.redact('first-secret-value / second-secret-value')).toBe(`${REDACTED} / ${REDACTED}`);
  });

  it('a Latin-1 secret echoed as Latin-1 bytes (how header values travel)', () => {
    const latin = createScrubber(['clé-secrète-0123']);
    expect(latin.redact(Buffer.from('x clé-secrète-0123 y', 'latin1').toString('latin1'))).toBe(`x ${REDACTED} y`);
    expect(latin.redact(Buffer.from('x clé-secrète-0123 y', 'utf8').toString('latin1'))).toBe(`x ${REDACTED} y`);
  });

  it('no secrets: nothing to find', () => {
    const none = createScrubber([]);
    expect(none.patterns).toEqual([]);
    expect(none.redact(SECRET)).toBe(SECRET);
    expect(run(none, [Buffer.from(SECRET)]).out.toString()).toBe(SECRET);
  });
});

describe('streaming gives the whole-buffer result for every split', () => {
  const s = createScrubber([SECRET, AWKWARD]);
  const b64 = (v: string): string => Buffer.from(v).toString('base64');
  const input = Buffer.from(
    [
      `{"echo":"Bearer ${SECRET}",`,
      `"again":"${SECRET}${SECRET}",`,
      `"url":"${encodeURIComponent(AWKWARD)}",`,
      `"b0":"${b64(SECRET)}","b1":"${b64(`:${SECRET}`)}","b2":"${b64(`::${SECRET}`)}",`,
      `"tail":"${SECRET.slice(0, 10)}"}`,
    ].join(''),
  );
  const expected = reference(input, s.patterns);

  it('the reference agrees with redact', () => {
    expect(s.redact(input.toString('latin1'))).toBe(expected.toString('latin1'));
    expect(expected.toString()).not.toContain(SECRET);
  });

  it('every split into two chunks (patterns split across every possible boundary)', () => {
    for (let i = 0; i <= input.length; i++) {
      expect(run(s, splitAt(input, [i])).out.equals(expected), `split at ${i}`).toBe(true);
    }
  });

  it('every split into three chunks around a copy', () => {
    const at = input.indexOf(SECRET);
    for (let i = at - 2; i <= at + SECRET.length + 2; i++) {
      for (let j = i; j <= at + SECRET.length + 2; j++) {
        expect(run(s, splitAt(input, [i, j])).out.equals(expected), `split at ${i}, ${j}`).toBe(true);
      }
    }
  });

  it('1-byte chunks', () => {
    expect(run(s, everyByte(input)).out.equals(expected)).toBe(true);
  });

  it('empty chunks anywhere', () => {
    const chunks = everyByte(input).flatMap((c, i) => (i % 3 === 0 ? [Buffer.alloc(0), c, Buffer.alloc(0)] : [c]));
    expect(run(s, [Buffer.alloc(0), ...chunks, Buffer.alloc(0)]).out.equals(expected)).toBe(true);
    expect(run(s, []).out.length).toBe(0);
  });

  it('fuzz: random text with random forms of two secrets, random chunking', () => {
    const random = rng(20261129);
    const forms = [...secretForms(SECRET), ...secretForms(AWKWARD)];
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=%-_ "{}:\n';
    for (let round = 0; round < 300; round++) {
      let text = '';
      while (text.length < 400) {
        if (random() < 0.15) text += forms[Math.floor(random() * forms.length)] as string;
        else if (random() < 0.1) text += (forms[Math.floor(random() * forms.length)] as string).slice(0, 1 + Math.floor(random() * 8));
        else text += alphabet[Math.floor(random() * alphabet.length)];
      }
      const data = Buffer.from(text);
      const points: number[] = [];
      for (let p = 0; p < data.length; p += 1 + Math.floor(random() * 40)) points.push(p);
      const { out } = run(s, splitAt(data, points));
      const want = reference(data, s.patterns);
      expect(out.equals(want), `round ${round}`).toBe(true);
      for (const p of s.patterns) expect(out.includes(p), `round ${round}: ${p.toString()}`).toBe(false);
    }
  });
});

describe('hold-back is bounded and only what may begin a copy', () => {
  const s = createScrubber([SECRET]);

  it('text that cannot begin a copy is released at once, chunk by chunk', () => {
    const chunks = ['data: {"delta":"Hel', 'lo"}\n\n', 'data: {"delta":" world"}\n\n', 'event: done\ndata: [DONE]\n\n'].map((c) => Buffer.from(c));
    const { released } = run(s, chunks);
    expect(released.slice(0, -1).map((b) => b.toString())).toEqual(chunks.map((c) => c.toString()));
  });

  it('a tail that may begin a copy is held, and released when it turns out not to be one', () => {
    const session = s.session();
    expect(session.write(Buffer.from('token: sk-li')).toString()).toBe('token: ');
    expect(session.write(Buffer.from('ve-4')).toString()).toBe('');
    expect(session.write(Buffer.from('X')).toString()).toBe('sk-live-4X');
    expect(session.end().toString()).toBe('');
  });

  it('never more than the longest pattern − 1 bytes, fed one byte at a time', () => {
    const longest = s.patterns.reduce((a, b) => (b.length > a.length ? b : a));
    expect(longest.length).toBe(s.maxLength);
    const almost = Buffer.concat([Buffer.from('xx'), longest.subarray(0, longest.length - 1), Buffer.from('!')]);
    const session = s.session();
    let fed = 0;
    let out = 0;
    let maxHeld = 0;
    for (const c of everyByte(almost)) {
      fed += 1;
      out += session.write(c).length;
      maxHeld = Math.max(maxHeld, fed - out);
    }
    expect(maxHeld).toBe(s.maxLength - 1);
    expect(fed - out).toBe(0); // the final '!' showed it was not a copy
  });

  it('random text in 16 KiB chunks: held bytes stay within the bound', () => {
    const session = s.session();
    let fed = 0;
    let out = 0;
    for (let i = 0; i < 50; i++) {
      const chunk = Buffer.from(randomBytes(16 * 1024).toString('base64').slice(0, 16 * 1024));
      fed += chunk.length;
      out += session.write(chunk).length;
      expect(fed - out).toBeLessThanOrEqual(s.maxLength - 1);
    }
  });
});

describe('the Transform', () => {
  it('scrubs a stream and ends with what was held', async () => {
    const s = createScrubber([SECRET]);
    const t = s.stream();
    const got: Buffer[] = [];
    t.on('data', (c: Buffer) => got.push(c));
    const ended = new Promise((r) => t.on('end', r));
    for (const piece of ['{"k":"sk-li', 've-4eC39HqLyjWDarjtT1zd', 'p7dc","tail":"sk-li']) t.write(Buffer.from(piece));
    t.end();
    await ended;
    expect(Buffer.concat(got).toString()).toBe(`{"k":"${REDACTED}","tail":"sk-li`);
  });
});

describe('scrubberFor', () => {
  it('returns the same scrubber for the same secrets', () => {
    expect(scrubberFor(['a-secret-value'])).toBe(scrubberFor(['a-secret-value']));
    expect(scrubberFor(['a-secret-value'])).not.toBe(scrubberFor(['another-secret-value']));
  });
});
