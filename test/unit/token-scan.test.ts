import { describe, expect, it } from 'vitest';
import { containsToken, REDACTED, redactTokens } from '../../gateway/server/token-scan.js';

const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJl-_x';
const pct = (s: string, lower = false): string =>
  [...s].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).map((e) => (lower ? e : e.toUpperCase())).join('');

describe('finding the agent token in any reading', () => {
  it('finds it raw, percent-encoded (fully, partly, either hex case), double-encoded and JSON-escaped', () => {
    const readings = [
      `/v1/${TOKEN}/x`,
      `a=${pct(TOKEN)}`,
      `a=${pct(TOKEN, true)}`,
      `a=%65${TOKEN.slice(1)}`,
      `a=${TOKEN.slice(0, 10)}%2e${TOKEN.slice(11)}`.replace('%2e', `%${TOKEN.charCodeAt(10).toString(16)}`),
      `a=%2565${TOKEN.slice(1)}`,
      `{"t":"\\u0065${TOKEN.slice(1)}"}`,
      `{"t":"\\u0065${TOKEN.slice(1, 20)}\\u002${TOKEN.slice(21)}"}`.replace('\\u002', `\\u00${TOKEN.charCodeAt(20).toString(16)}`),
    ];
    for (const r of readings) expect(containsToken(r, TOKEN), r).toBe(true);
    expect(containsToken('a=1&b=eyJhbGciOiJIUzI1NiJ9', TOKEN)).toBe(false);
    expect(containsToken('a+b%20c', 'a b c')).toBe(true);
  });

  it('redacts it from a path in whatever form it came, leaving the rest readable', () => {
    expect(redactTokens(`/stripe/v1/${TOKEN}/x`, [TOKEN])).toBe(`/stripe/v1/${REDACTED}/x`);
    expect(redactTokens(`/stripe/v1/${pct(TOKEN, true)}`, [TOKEN])).toBe(`/stripe/v1/${REDACTED}`);
    expect(redactTokens('/stripe/v1/charges', [TOKEN])).toBe('/stripe/v1/charges');
    for (const p of [`/s/${TOKEN}`, `/s/%65${TOKEN.slice(1)}`]) expect(redactTokens(p, [TOKEN])).not.toContain(TOKEN.slice(1));
  });
});
