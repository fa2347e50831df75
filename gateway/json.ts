import { visit } from 'jsonc-parser';

/**
 * A parsed JSON object; `error` says why the bytes could not be read as one. `ambiguous` is true
 * when the bytes can be read, but another parser could read them differently (duplicate or
 * colliding keys, numbers that are not exact doubles, lone surrogates, a BOM, invalid UTF-8): such
 * a body must not be forwarded on the strength of the reading policy made of it.
 */
export type ParsedBody = {
  readonly value: Record<string, unknown> | undefined;
  readonly error: string | undefined;
  readonly ambiguous: boolean;
};

const ASCII_KEY = /^[\x20-\x7e]*$/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The bytes as UTF-8 text; undefined if they are not valid UTF-8 or start with a byte order mark. */
export function strictUtf8(bytes: Buffer): string | undefined {
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) return undefined;
  try {
    return UTF8.decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * The form two keys share when some parser may take them for the same key: NFKC, then case folded
 * (upper then lower case catches `ß`/`SS` and the sigmas), then NFKC again. `amount`, `Amount`,
 * `ＡＭＯＵＮＴ` and `ａmount` all fold to `amount`; composed and decomposed `é` fold alike.
 */
export function foldKey(key: string): string {
  if (ASCII_KEY.test(key)) return key.toLowerCase();
  return key.normalize('NFKC').toUpperCase().toLowerCase().normalize('NFKC');
}

/**
 * Why a key cannot be accepted next to the keys already seen at its level (`folded` maps folded
 * form to the key as written), or undefined; records the key.
 */
export function keyProblem(key: string, folded: Map<string, string>, where: string): string | undefined {
  if (key === '__proto__') return `the ${where} uses the key "__proto__"`;
  if (key.includes('\u0000')) return `the ${where} has a key containing NUL`;
  if (LONE_SURROGATE.test(key)) return `the ${where} has a key containing a lone UTF-16 surrogate`;
  const f = foldKey(key);
  const seen = folded.get(f);
  if (seen === key) return `the ${where} repeats the key "${key}"`;
  if (seen !== undefined) return `the ${where} has keys "${seen}" and "${key}" that differ only in case or Unicode form`;
  folded.set(f, key);
  return undefined;
}

interface Decimal {
  readonly negative: boolean;
  /** Significant digits, no leading or trailing zeros; empty for zero. */
  readonly digits: string;
  readonly exponent: number;
}

const NUMBER = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/;

/** The exact decimal a JSON number literal (or a JS number's string form) denotes. */
function decimal(text: string): Decimal | undefined {
  const m = NUMBER.exec(text);
  if (!m) return undefined;
  const frac = m[3] ?? '';
  let digits = `${m[2] as string}${frac}`.replace(/^0+/, '');
  let exponent = Number(m[4] ?? '0') - frac.length;
  const trimmed = digits.replace(/0+$/, '');
  exponent += digits.length - trimmed.length;
  digits = trimmed;
  if (digits === '') return { negative: m[1] === '-', digits, exponent: 0 };
  // So far from 1 that no double is near: the literal cannot be one exactly.
  if (!Number.isSafeInteger(exponent)) return undefined;
  return { negative: m[1] === '-', digits, exponent };
}

/**
 * Whether a JSON number literal reads the same everywhere: it must denote exactly the decimal
 * whose shortest round-trip double representation JavaScript would print for it. `0.1`, `0.10`,
 * `1.0`, `1e2` and `500.5` pass (policy and a decimal-reading upstream see the same decimal);
 * `9007199254740993`, `500.00000000000000001`, `1e400` and `1e-400` do not (the double policy
 * compares is another number), nor does `-0` (some read it as 0, others as negative zero).
 */
export function exactNumber(literal: string, value: number): boolean {
  if (!Number.isFinite(value)) return false;
  const a = decimal(literal);
  const b = decimal(String(value));
  return a !== undefined && b !== undefined && a.negative === b.negative && a.digits === b.digits && a.exponent === b.exponent;
}

/**
 * Strict JSON: valid UTF-8 without a BOM, no comments, no trailing commas, an object at the top;
 * ambiguous bodies refused: keys that repeat or collide under case folding or Unicode
 * normalisation (at every level), `__proto__`, lone surrogates and inexact numbers.
 */
export function parseJsonObject(bytes: Buffer): ParsedBody {
  const text = strictUtf8(bytes);
  if (text === undefined) return { value: undefined, error: 'the JSON body is not valid UTF-8 without a byte order mark', ambiguous: true };
  const stack: Map<string, string>[] = [];
  let problem: string | undefined;
  let syntax = false;
  visit(
    text,
    {
      onObjectBegin: () => void stack.push(new Map()),
      onObjectEnd: () => void stack.pop(),
      onObjectProperty: (name) => {
        const keys = stack[stack.length - 1];
        if (keys !== undefined && problem === undefined) problem = keyProblem(name, keys, 'JSON body');
      },
      onLiteralValue: (value: unknown, offset, length) => {
        if (problem !== undefined) return;
        if (typeof value === 'number' && !exactNumber(text.slice(offset, offset + length), value)) {
          problem = `the JSON body has the number ${text.slice(offset, offset + Math.min(length, 40))} which is not exactly a double`;
        } else if (typeof value === 'string' && LONE_SURROGATE.test(value)) {
          problem = 'the JSON body has a string containing a lone UTF-16 surrogate';
        }
      },
      onError: () => {
        syntax = true;
      },
    },
    { disallowComments: true, allowTrailingComma: false },
  );
  if (syntax) return { value: undefined, error: 'the JSON body is malformed', ambiguous: false };
  if (problem !== undefined) return { value: undefined, error: problem, ambiguous: true };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { value: undefined, error: 'the JSON body is malformed', ambiguous: false };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { value: undefined, error: 'the JSON body is not an object', ambiguous: false };
  }
  return { value: value as Record<string, unknown>, error: undefined, ambiguous: false };
}
