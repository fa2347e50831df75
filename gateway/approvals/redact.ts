/** What replaces a redacted value. */
export const REDACTED = '[redacted]';

const MAX_STRING = 1_000;
const MAX_DEPTH = 8;
const MAX_JSON_BYTES = 16_384;

export interface RedactInput {
  /** Path parameters + query + parsed body, as policy conditions saw them. */
  readonly args: Readonly<Record<string, unknown>>;
  /** Argument paths the rule says to hide: `card.number`, `items.*.iban`, `to`. */
  readonly paths: readonly string[];
  /** The request's decoded canonical path and the tool's path parameters, to hide redacted ones there too. */
  readonly path: string;
  readonly pathParams: Readonly<Record<string, string>>;
  /** Values that must never be stored anywhere (the agent token): any string containing one is redacted. */
  readonly never: readonly string[];
}

export interface Redacted {
  readonly args: Record<string, unknown>;
  readonly path: string;
  /** Set when values were shortened or left out to bound the record's size. */
  readonly note: string | undefined;
}

/**
 * The arguments approvers see and the approval record keeps: the rule's `redact` paths replaced by
 * `[redacted]`, any string containing a forbidden value (the agent token) likewise, long strings
 * shortened, deep nesting cut, and the whole bounded to 16 KiB of JSON.
 */
export function redactArgs(r: RedactInput): Redacted {
  const patterns = r.paths.map((p) => p.split('.'));
  const never = r.never.filter((v) => v.length >= 8);
  let note: string | undefined;

  const clean = (v: unknown, at: string[], depth: number, maxString: number): unknown => {
    if (patterns.some((p) => matches(p, at))) return REDACTED;
    if (typeof v === 'string') {
      if (never.some((n) => v.includes(n))) return REDACTED;
      if (v.length > maxString) {
        note = 'long values were shortened';
        return `${v.slice(0, maxString)}… (${v.length} characters)`;
      }
      return v;
    }
    if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
    if (v === null || typeof v !== 'object') return typeof v === 'number' || typeof v === 'boolean' ? v : v === null ? null : String(v);
    if (depth >= MAX_DEPTH) {
      note = 'deeply nested values were left out';
      return '[…]';
    }
    if (Array.isArray(v)) return v.map((item, i) => clean(item, [...at, String(i)], depth + 1, maxString));
    const out: Record<string, unknown> = {};
    let hidden = 0;
    for (const [k, item] of Object.entries(v as Record<string, unknown>)) {
      const key = never.some((n) => k.includes(n)) ? `${REDACTED}${hidden++ === 0 ? '' : `-${hidden}`}` : k;
      out[key] = clean(item, [...at, k], depth + 1, maxString);
    }
    return out;
  };

  let args = clean(r.args, [], 0, MAX_STRING) as Record<string, unknown>;
  if (Buffer.byteLength(JSON.stringify(args)) > MAX_JSON_BYTES) {
    args = clean(r.args, [], 0, 100) as Record<string, unknown>;
    note = 'long values were shortened';
    if (Buffer.byteLength(JSON.stringify(args)) > MAX_JSON_BYTES) {
      args = Object.fromEntries(Object.keys(args).slice(0, 200).map((k) => [k, '[omitted]']));
      note = 'the arguments were too large to keep; only their names are shown';
    }
  }

  // A redacted path parameter also appears in the path itself.
  let path = r.path;
  const hiddenSegments = new Set(
    Object.entries(r.pathParams)
      .filter(([name]) => patterns.some((p) => matches(p, [name])))
      .map(([, value]) => value),
  );
  for (const n of never) if (path.includes(n)) hiddenSegments.add(n);
  if (hiddenSegments.size > 0) {
    path = path
      .split('/')
      .map((seg) => (hiddenSegments.has(seg) || never.some((n) => seg.includes(n)) ? REDACTED : seg))
      .join('/');
  }
  return { args, path, note };
}

/** A pattern matches a value at exactly its path; everything below that value goes with it. */
function matches(pattern: readonly string[], at: readonly string[]): boolean {
  if (pattern.length !== at.length) return false;
  for (let i = 0; i < pattern.length; i++) if (pattern[i] !== '*' && pattern[i] !== at[i]) return false;
  return true;
}
