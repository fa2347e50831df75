/**
 * Finding the agent token where it does not belong: in the request target or a buffered body, in
 * any reading a server or a log could make of those bytes (raw, percent-decoded with either case of
 * hex digits, `+` as a space, JSON string escapes, and these stacked).
 */

/** What a found token is replaced by in the audit row's and the log line's path. */
export const REDACTED = '[REDACTED]';

const ASCII_ESCAPE = /%([0-7][0-9A-Fa-f])/g;
const JSON_ESCAPE = /\\(?:u([0-9A-Fa-f]{4})|(["\\/bfnrt]))/g;
const SIMPLE_ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/** One more layer of decoding: ASCII percent-escapes and JSON string escapes. */
function decodeOnce(s: string): string {
  let out = s;
  if (out.includes('\\')) {
    out = out.replace(JSON_ESCAPE, (_m, hex: string | undefined, c: string | undefined) =>
      hex !== undefined ? String.fromCharCode(parseInt(hex, 16)) : (SIMPLE_ESCAPES[c as string] as string),
    );
  }
  if (out.includes('%')) out = out.replace(ASCII_ESCAPE, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
  return out;
}

function fullyDecoded(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Every reading of `text` the scan considers, outermost first; decoding stops when nothing changes. */
function readings(text: string): string[] {
  const out = [text];
  let s = text;
  // Each round shortens the text, so this ends; most text has nothing to decode and stops at once.
  for (;;) {
    const next = decodeOnce(s);
    if (next === s) break;
    out.push(next);
    s = next;
  }
  const n = out.length;
  for (let i = 0; i < n; i++) {
    const r = out[i] as string;
    if (r.includes('+')) out.push(r.replace(/\+/g, ' '));
    // A non-ASCII token is percent-encoded as UTF-8, which the ASCII decoding above leaves alone.
    if (r.includes('%')) out.push(fullyDecoded(r));
  }
  return out;
}

/** Whether `token` appears in `text` in any of its readings. */
export function containsToken(text: string, token: string): boolean {
  if (token === '') return false;
  if (text.includes(token)) return true;
  if (!text.includes('%') && !text.includes('\\') && !text.includes('+')) return false;
  return readings(text).some((r) => r.includes(token));
}

/**
 * `text` with every presented token replaced by {@link REDACTED}, in its decoded reading when the
 * token was encoded; entirely {@link REDACTED} if a token would otherwise survive.
 */
export function redactTokens(text: string, tokens: Iterable<string>): string {
  let out = text;
  for (const token of tokens) {
    if (!containsToken(out, token)) continue;
    const found = readings(out).find((r) => r.includes(token)) as string;
    out = found.split(token).join(REDACTED);
    if (containsToken(out, token)) return REDACTED;
  }
  return out;
}
