/**
 * Redaction of fields and values in response bodies, for response rules: an operator names JSON
 * paths and value patterns, and what the upstream sends back is rewritten before the agent sees it,
 * whether it comes whole, as Server-Sent Events or as newline-delimited JSON.
 *
 * Everything is compiled once, when the configuration is loaded. A response then costs one
 * `JSON.parse`, one walk that descends only where a path or a pattern can still apply and copies
 * only the containers on the way to a replacement, and a `JSON.stringify` only when something was
 * replaced: an untouched body goes on exactly as it came.
 */
import { Transform, type TransformCallback } from 'node:stream';

/** The built-in value patterns. */
export type PatternName = 'card_number' | 'email' | 'iban' | 'us_ssn' | 'phone';

/** What one response rule redacts, as written in the configuration. */
export interface RedactionSpec {
  /** JSON paths: dot-separated keys; `*` any one key or array index; `**` any depth (zero or more levels); a numeric segment is an array index. */
  readonly paths?: readonly string[];
  /** Value patterns applied to every JSON string value (and to raw text that is not JSON). */
  readonly patterns?: readonly (PatternName | { readonly regex: string })[];
}

/** What a redacted value, or each redacted part of a string, becomes. */
export const REDACTED_VALUE = '[REDACTED]';

/** Per-request decision to keep a match (e.g. emails of the caller's own tenant): true keeps it. */
export type KeepMatch = (match: string, pattern: string) => boolean;

/** A compiled {@link RedactionSpec}. */
export interface Redactor {
  /** Redacts a parsed JSON value in place-free fashion (returns a new value; the input is not mutated); `count` = values or matches replaced. */
  value(v: unknown, keep?: KeepMatch): { value: unknown; count: number };
  /** A JSON text: parsed, redacted, re-serialised (compact). undefined when it is not JSON. */
  json(text: string, keep?: KeepMatch): { text: string; count: number } | undefined;
  /** Plain text: patterns only. */
  text(s: string, keep?: KeepMatch): { text: string; count: number };
}

/**
 * A streamed body could not be redacted (an event or line over the size limit). The message never
 * holds body content.
 */
export class RedactionError extends Error {
  override readonly name = 'RedactionError';
}

/**
 * Containers nested deeper than this are replaced whole (counted once) instead of walked: the walk
 * stays bounded, and what it cannot look into does not get through.
 */
const MAX_DEPTH = 256;

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

// ---------------------------------------------------------------------------------------------
// Paths

/** One segment of a compiled path; `end` marks where a path is complete. */
type Segment =
  | { readonly kind: 'key'; readonly key: string; readonly index: number }
  | { readonly kind: 'any' }
  | { readonly kind: 'deep' }
  | { readonly kind: 'end' };

const ANY: Segment = { kind: 'any' };
const DEEP: Segment = { kind: 'deep' };
const END: Segment = { kind: 'end' };
/** A segment that names an array index (canonical decimal, within an array's length limit). */
const ARRAY_INDEX = /^(?:0|[1-9][0-9]{0,9})$/;

/** Where each path stands at one node: positions in {@link PathMatcher}'s segments. */
type States = readonly number[];
/** A path ends at this node: it is replaced whole. */
const MATCHED = Symbol('matched');
const NO_STATES: States = [];

/** A path's segments; a malformed path is refused with a message naming it. */
function parsePath(path: unknown): Segment[] {
  if (typeof path !== 'string' || path === '') throw new TypeError('redact path: must be a non-empty string');
  return path.split('.').map((s): Segment => {
    if (s === '') throw new TypeError(`redact path "${path}": empty segment (a leading, trailing or doubled ".")`);
    if (s === '*') return ANY;
    if (s === '**') return DEEP;
    if (s.includes('*')) throw new TypeError(`redact path "${path}": "*" and "**" must be whole segments`);
    return { kind: 'key', key: s, index: ARRAY_INDEX.test(s) ? Number(s) : -1 };
  });
}

/**
 * All of a spec's paths as one nondeterministic automaton over keys, run alongside the walk: a
 * node's states say which paths can still match below it, so subtrees no path reaches are not
 * looked at for paths. A numeric segment also matches an object key spelled the same (redacting
 * more rather than less).
 */
class PathMatcher {
  private readonly segments: Segment[] = [];
  /** The states at the root, or MATCHED when a path names the root itself (`**`). */
  readonly root: States | typeof MATCHED;

  constructor(readonly sources: readonly string[]) {
    const states: number[] = [];
    for (const path of sources) {
      const start = this.segments.length;
      this.segments.push(...parsePath(path), END);
      this.add(states, start);
    }
    this.root = this.ends(states) ? MATCHED : states;
  }

  /** The states below `states` under `key` (a string for an object key, a number for an array index). */
  step(states: States, key: string | number): States | typeof MATCHED {
    let next: number[] | undefined;
    for (const s of states) {
      const seg = this.segments[s] as Segment;
      let to = -1;
      if (seg.kind === 'deep') to = s;
      else if (seg.kind === 'any') to = s + 1;
      else if (seg.kind === 'key' && (typeof key === 'number' ? seg.index === key : seg.key === key)) to = s + 1;
      if (to !== -1) this.add((next ??= []), to);
    }
    if (next === undefined) return NO_STATES;
    return this.ends(next) ? MATCHED : next;
  }

  /** Adds state `s`, and what `**` reaches by matching zero levels. */
  private add(into: number[], s: number): void {
    if (into.includes(s)) return;
    into.push(s);
    if (this.segments[s] === DEEP) this.add(into, s + 1);
  }

  private ends(states: States): boolean {
    return states.some((s) => this.segments[s] === END);
  }
}

// ---------------------------------------------------------------------------------------------
// Patterns

/** `[start, end)` in a string. */
type Span = readonly [start: number, end: number];

/** A value pattern, compiled. */
interface ValuePattern {
  /** What `keep` is told: the built-in's name, or `regex`. */
  readonly name: string;
  /** Tells patterns apart when rules are combined: the built-in's name, or `regex:` and the source. */
  readonly id: string;
  /** Finds candidates; global, so that one scan finds them all. */
  readonly regex: RegExp;
  /** A character every match contains: strings without it are not scanned at all. */
  readonly needs?: string;
  /** The parts of a candidate a checksum accepts; without it, the whole candidate is a match. */
  readonly check?: (candidate: string) => readonly Span[];
}

/**
 * The card numbers in a run of digit groups: for each group, left to right, the longest run of
 * whole groups from it with 13–19 digits that passes Luhn's check (so the whole run when it is a
 * card; a card followed by a CVV; two cards in a row). One pass and prefix sums keep a long run of
 * numbers linear.
 */
function cardSpans(candidate: string): Span[] {
  const n = candidate.length;
  // Per digit k: where it is; per parity of the last digit, the Luhn sum of digits [0, k).
  const at = new Int32Array(n);
  const sumEven = new Int32Array(n + 1);
  const sumOdd = new Int32Array(n + 1);
  // The index of each group's first digit, then the digit count.
  const groups: number[] = [];
  let k = 0;
  for (let i = 0; i < n; i++) {
    const d = candidate.charCodeAt(i) - 48;
    if (d < 0 || d > 9) continue;
    if (i === 0 || k === 0 || at[k - 1] !== i - 1) groups.push(k);
    const doubled = d > 4 ? 2 * d - 9 : 2 * d;
    at[k] = i;
    sumEven[k + 1] = (sumEven[k] as number) + (k % 2 === 0 ? d : doubled);
    sumOdd[k + 1] = (sumOdd[k] as number) + (k % 2 === 0 ? doubled : d);
    k++;
  }
  groups.push(k);
  // Digits [from, to) pass when the last digit is not doubled, the one before it is, and so on.
  const luhn = (from: number, to: number): boolean => {
    const sums = (to - 1) % 2 === 0 ? sumEven : sumOdd;
    return ((sums[to] as number) - (sums[from] as number)) % 10 === 0;
  };
  const spans: Span[] = [];
  for (let g = 0; g + 1 < groups.length; ) {
    const from = groups[g] as number;
    let last = -1;
    for (let h = g + 1; h < groups.length && (groups[h] as number) - from <= 19; h++) {
      const to = groups[h] as number;
      if (to - from >= 13 && luhn(from, to)) last = h;
    }
    if (last === -1) {
      g++;
      continue;
    }
    spans.push([at[from] as number, (at[(groups[last] as number) - 1] as number) + 1]);
    g = last;
  }
  return spans;
}

/**
 * The IBAN a candidate starts with: the longest prefix ending at a group boundary whose 11–30
 * characters after the check digits pass ISO 13616's mod-97 test (so `DE89 3704 0044 0532 0130 00
 * EUR` finds the IBAN before the currency). The remainder is carried along, one pass.
 */
function ibanSpans(candidate: string): Span[] {
  // The test moves country code and check digits behind the rest; letters count as 10–35.
  const mod = (r: number, c: number): number => (c <= 57 ? (r * 10 + c - 48) % 97 : (r * 100 + c - 55) % 97);
  let r = 0;
  let count = 0;
  let end = -1;
  for (let i = 4; i <= candidate.length; i++) {
    const c = candidate.charCodeAt(i);
    if (i < candidate.length && c !== SPACE) {
      r = mod(r, c);
      count++;
      continue;
    }
    let check = r;
    for (let j = 0; j < 4; j++) check = mod(check, candidate.charCodeAt(j));
    if (count >= 11 && check === 1) end = i;
  }
  return end === -1 ? [] : [[0, end]];
}

// Each regex starts only where a token starts (a lookbehind), so that a long run of characters that
// could begin a match is tried once, not from every position: scans stay linear.
const LOCAL = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-";

const BUILTINS: Readonly<Record<PatternName, ValuePattern>> = {
  card_number: {
    name: 'card_number',
    id: 'card_number',
    // A maximal run of 13 or more digits, single spaces or hyphens between them.
    regex: /(?<![0-9][ -]?)[0-9](?:[ -]?[0-9]){12,}(?![ -]?[0-9])/g,
    check: cardSpans,
  },
  email: {
    name: 'email',
    id: 'email',
    regex: new RegExp(`(?<![.${LOCAL}])[${LOCAL}]+(?:\\.[${LOCAL}]+)*@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}`, 'g'),
    needs: '@',
  },
  iban: {
    name: 'iban',
    id: 'iban',
    regex: /(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])/g,
    check: ibanSpans,
  },
  us_ssn: {
    name: 'us_ssn',
    id: 'us_ssn',
    regex: /(?<![0-9]-?)(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?!-?[0-9])/g,
    needs: '-',
  },
  phone: {
    name: 'phone',
    id: 'phone',
    regex: /(?<![\w+])\+[0-9](?:[ -]?[0-9]){7,14}(?![0-9])/g,
    needs: '+',
  },
};

/** An operator's regex: compiled with `g` and `u`; one that matches the empty string is refused. */
function customPattern(source: unknown): ValuePattern {
  if (typeof source !== 'string') throw new TypeError('redact pattern: regex must be a string');
  let regex: RegExp;
  try {
    regex = new RegExp(source, 'gu');
  } catch (err) {
    // V8's message repeats the source, which may spell out a secret to find: keep only the reason.
    const reason = (err as Error).message.replace(`Invalid regular expression: /${source}/gu: `, '');
    throw new TypeError(`redact pattern: invalid regex (${reason})`);
  }
  if (regex.test('')) throw new TypeError('redact pattern: the regex matches the empty string');
  return { name: 'regex', id: `regex:${source}`, regex };
}

/** A built-in's name or `{ regex }`, compiled. */
function compilePattern(p: unknown): ValuePattern {
  if (typeof p === 'string') {
    if (Object.hasOwn(BUILTINS, p)) return BUILTINS[p as PatternName];
    throw new TypeError(`redact pattern "${p}": unknown; expected one of ${Object.keys(BUILTINS).join(', ')} or { regex }`);
  }
  if (typeof p === 'object' && p !== null && 'regex' in p) return customPattern(p.regex);
  throw new TypeError('redact pattern: expected a pattern name or { regex }');
}

/**
 * The spans of `s` to replace: every pattern's matches that `keep` does not keep, sorted, and
 * overlapping ones merged (a match found by two patterns is replaced once).
 */
function findSpans(s: string, patterns: readonly ValuePattern[], keep: KeepMatch | undefined): Span[] {
  const found: { span: Span; name: string }[] = [];
  for (const p of patterns) {
    if (p.needs === undefined || s.includes(p.needs)) scan(p, s, (span) => found.push({ span, name: p.name }));
  }
  // `keep` runs after the scans: it may itself redact, which would reset a shared regex mid-scan.
  const spans = found.filter((f) => keep === undefined || !keep(s.slice(f.span[0], f.span[1]), f.name)).map((f) => f.span);
  if (spans.length < 2) return spans;
  spans.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const [start, end] of spans) {
    const last = merged.at(-1);
    if (last !== undefined && start < last[1]) last[1] = Math.max(last[1], end);
    else merged.push([start, end]);
  }
  return merged;
}

/** Reports each match of `p` in `s`. */
function scan(p: ValuePattern, s: string, report: (span: Span) => void): void {
  const re = p.regex;
  re.lastIndex = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    // A custom regex may still match empty at some positions (`\b`, lookaheads): nothing to replace.
    if (m[0].length === 0) {
      re.lastIndex = m.index + 1;
      continue;
    }
    if (p.check === undefined) {
      report([m.index, m.index + m[0].length]);
      continue;
    }
    const spans = p.check(m[0]);
    for (const [start, end] of spans) report([m.index + start, m.index + end]);
    // Go on after the last match found, or just after the candidate's start: what follows it may
    // begin a match of its own.
    re.lastIndex = m.index + (spans.at(-1)?.[1] ?? 1);
  }
}

/** `s` with each span (sorted, disjoint) replaced by {@link REDACTED_VALUE}. */
function replaceSpans(s: string, spans: readonly Span[]): string {
  let out = '';
  let pos = 0;
  for (const [start, end] of spans) {
    out += s.slice(pos, start) + REDACTED_VALUE;
    pos = end;
  }
  return out + s.slice(pos);
}

// ---------------------------------------------------------------------------------------------
// Redactors

/** One redaction of a value: the count so far, copying only what changes. */
class Walk {
  count = 0;

  constructor(
    private readonly paths: PathMatcher,
    private readonly patterns: readonly ValuePattern[],
    private readonly keep: KeepMatch | undefined,
  ) {}

  root(v: unknown): unknown {
    const states = this.paths.root;
    return states === MATCHED ? this.replace() : this.node(v, states, 0);
  }

  private node(v: unknown, states: States, depth: number): unknown {
    if (typeof v === 'string') return this.patterns.length === 0 ? v : this.string(v);
    if (typeof v !== 'object' || v === null) return v;
    if (states.length === 0 && this.patterns.length === 0) return v;
    if (depth >= MAX_DEPTH) return this.replace();
    return Array.isArray(v) ? this.array(v, states, depth) : this.object(v as Record<string, unknown>, states, depth);
  }

  private child(v: unknown, key: string | number, states: States, depth: number): unknown {
    const next = states.length === 0 ? states : this.paths.step(states, key);
    return next === MATCHED ? this.replace() : this.node(v, next, depth + 1);
  }

  private array(a: readonly unknown[], states: States, depth: number): unknown {
    let out: unknown[] | undefined;
    for (let i = 0; i < a.length; i++) {
      const item = a[i];
      const r = this.child(item, i, states, depth);
      if (r !== item && out === undefined) out = a.slice(0, i);
      out?.push(r);
    }
    return out ?? a;
  }

  private object(o: Record<string, unknown>, states: States, depth: number): unknown {
    let out: Record<string, unknown> | undefined;
    for (const key of Object.keys(o)) {
      const item = o[key];
      const r = this.child(item, key, states, depth);
      // The spread defines own properties, so a `__proto__` key is then set as data, not as the prototype.
      if (r !== item) (out ??= { ...o })[key] = r;
    }
    return out ?? o;
  }

  private string(s: string): string {
    const spans = findSpans(s, this.patterns, this.keep);
    this.count += spans.length;
    return spans.length === 0 ? s : replaceSpans(s, spans);
  }

  private replace(): string {
    this.count++;
    return REDACTED_VALUE;
  }
}

/** A spec's paths and patterns, compiled; what {@link combineRedactors} takes apart and merges. */
class CompiledRedactor implements Redactor {
  constructor(
    readonly paths: PathMatcher,
    readonly patterns: readonly ValuePattern[],
  ) {}

  value(v: unknown, keep?: KeepMatch): { value: unknown; count: number } {
    const walk = new Walk(this.paths, this.patterns, keep);
    const value = walk.root(v);
    return { value, count: walk.count };
  }

  /** An unchanged text is returned as it came, not re-serialised. */
  json(text: string, keep?: KeepMatch): { text: string; count: number } | undefined {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return undefined;
    }
    const { value, count } = this.value(parsed, keep);
    return { text: count === 0 ? text : JSON.stringify(value), count };
  }

  text(s: string, keep?: KeepMatch): { text: string; count: number } {
    const spans = findSpans(s, this.patterns, keep);
    return { text: spans.length === 0 ? s : replaceSpans(s, spans), count: spans.length };
  }
}

/**
 * Compiles a spec once, at configuration load. A bad path, pattern name or regex throws a
 * TypeError naming the problem (never a body; a regex's source is left out of the message, as it
 * may spell out the very secret it finds).
 */
export function compileRedactor(spec: RedactionSpec): Redactor {
  const paths = spec.paths ?? [];
  const patterns = spec.patterns ?? [];
  if (!Array.isArray(paths)) throw new TypeError('redact paths: expected a list');
  if (!Array.isArray(patterns)) throw new TypeError('redact patterns: expected a list');
  return new CompiledRedactor(new PathMatcher([...new Set(paths)]), unique(patterns.map(compilePattern)));
}

/** Combines several rules' redactors (their paths and patterns all apply). */
export function combineRedactors(rs: readonly Redactor[]): Redactor {
  const parts = rs.map((r) => {
    if (r instanceof CompiledRedactor) return r;
    throw new TypeError('combineRedactors: every redactor must come from compileRedactor');
  });
  if (parts.length === 1) return parts[0] as CompiledRedactor;
  const paths = new PathMatcher([...new Set(parts.flatMap((p) => p.paths.sources))]);
  return new CompiledRedactor(paths, unique(parts.flatMap((p) => p.patterns)));
}

/** Patterns named by several rules are scanned for once. */
function unique(patterns: readonly ValuePattern[]): ValuePattern[] {
  return [...new Map(patterns.map((p) => [p.id, p])).values()];
}

// ---------------------------------------------------------------------------------------------
// Streams

const EMPTY = Buffer.alloc(0);
const LF_EOL = Buffer.from('\n');
const CR_EOL = Buffer.from('\r');
const CRLF_EOL = Buffer.from('\r\n');
const DATA_FIELD = Buffer.from('data');
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/**
 * Splits a byte stream into lines whatever the chunk boundaries, holding only the unfinished
 * line. Lines are cut at line-end bytes, which are ASCII, so no UTF-8 character is ever split.
 * Given `onLf`, a CR also ends a line (SSE), and `onLf` is called when the LF of a CR LF comes at
 * the start of the next chunk, after its line was already passed on; without it, LF alone ends a
 * line (NDJSON).
 */
class LineSplitter {
  private held: Buffer[] = [];
  private heldBytes = 0;
  private afterCr = false;

  constructor(
    private readonly onLine: (text: Buffer, eol: Buffer) => void,
    private readonly onLf?: () => void,
  ) {}

  /** Bytes of the unfinished line. */
  get pending(): number {
    return this.heldBytes;
  }

  write(chunk: Buffer): void {
    const len = chunk.length;
    let i = 0;
    if (this.afterCr && len > 0) {
      this.afterCr = false;
      if (chunk[0] === LF) {
        i = 1;
        this.onLf?.();
      }
    }
    // The next LF / CR at or after i; -1 once there is none left (not searched again).
    let lf = -2;
    let cr = this.onLf === undefined ? -1 : -2;
    while (i < len) {
      if (lf !== -1 && lf < i) lf = chunk.indexOf(LF, i);
      if (cr !== -1 && cr < i) cr = chunk.indexOf(CR, i);
      const t = lf === -1 ? cr : cr === -1 ? lf : Math.min(lf, cr);
      if (t === -1) {
        this.hold(chunk.subarray(i));
        return;
      }
      let next = t + 1;
      let eol = LF_EOL;
      if (chunk[t] === CR) {
        if (next === len) this.afterCr = true;
        else if (chunk[next] === LF) next++;
        eol = next === t + 2 ? CRLF_EOL : CR_EOL;
      }
      this.onLine(this.take(chunk.subarray(i, t)), eol);
      i = next;
    }
  }

  /** The end of the body: its last line, when that has no line end. */
  end(): void {
    if (this.heldBytes > 0) this.onLine(this.take(EMPTY), EMPTY);
  }

  /** A copy, so that the chunk is not kept alive by its tail. */
  private hold(piece: Buffer): void {
    this.held.push(Buffer.from(piece));
    this.heldBytes += piece.length;
  }

  private take(piece: Buffer): Buffer {
    if (this.heldBytes === 0) return piece;
    const line = Buffer.concat([...this.held, piece]);
    this.held = [];
    this.heldBytes = 0;
    return line;
  }
}

/**
 * Runs a step of a stream, then passes on its output. An error fails the stream with nothing more
 * of this step passed on (the stream is destroyed; what earlier steps released has gone out).
 */
function settle(out: Buffer[], callback: TransformCallback, work: () => void): void {
  try {
    work();
  } catch (err) {
    out.length = 0;
    callback(err as Error);
    return;
  }
  const released = out.length === 0 ? undefined : out.length === 1 ? out[0] : Buffer.concat(out);
  out.length = 0;
  callback(null, released);
}

/** What stream redaction is given besides the redactor. */
interface StreamOptions {
  readonly keep?: KeepMatch | undefined;
  readonly onRedacted?: ((n: number) => void) | undefined;
}

/** Stream limits are checked when the stream is made, not per chunk. */
function checkLimit(name: string, limit: number): void {
  if (!Number.isSafeInteger(limit) || limit <= 0) throw new TypeError(`${name}: expected a positive integer`);
}

/** One line of an SSE event: its bytes, its line end as it came, and where a `data` value starts (-1: another field). */
interface SseLine {
  text: Buffer;
  eol: Buffer;
  readonly dataAt: number;
}

/** Where a `data` field's value starts in a line (past `data:` and one space), or -1. */
function dataAt(text: Buffer): number {
  if (text.length < 4 || text.compare(DATA_FIELD, 0, 4, 0, 4) !== 0) return -1;
  if (text.length === 4) return 4;
  if (text[4] !== COLON) return -1;
  return text[5] === SPACE ? 6 : 5;
}

/** The SSE redaction stream: holds one event at a time. */
class SseRedactStream extends Transform {
  private readonly splitter = new LineSplitter(
    (text, eol) => this.line(text, eol),
    () => this.lfAfterCr(),
  );
  private readonly out: Buffer[] = [];
  private lines: SseLine[] = [];
  private eventBytes = 0;
  /** Lines before this one are copies, no longer views of a chunk. */
  private copied = 0;
  private firstLine = true;

  constructor(
    private readonly r: Redactor,
    private readonly o: StreamOptions & { readonly maxEventBytes: number },
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    settle(this.out, callback, () => {
      this.splitter.write(chunk);
      this.checkSize(this.splitter.pending);
      this.retain();
    });
  }

  override _flush(callback: TransformCallback): void {
    settle(this.out, callback, () => {
      this.splitter.end();
      if (this.lines.length > 0) this.dispatch();
    });
  }

  private line(text: Buffer, eol: Buffer): void {
    this.eventBytes += text.length + eol.length;
    this.checkSize(0);
    // The stream's first line may begin with a byte order mark, which clients skip.
    const field = this.firstLine && text.subarray(0, 3).equals(BOM) ? text.subarray(3) : text;
    const at = dataAt(field);
    this.firstLine = false;
    this.lines.push({ text, eol, dataAt: at === -1 ? -1 : at + text.length - field.length });
    if (field.length === 0) this.dispatch();
  }

  /** The LF of a CR LF split across chunks: it belongs to the last line, or follows the event just sent. */
  private lfAfterCr(): void {
    const last = this.lines.at(-1);
    if (last === undefined) {
      this.out.push(LF_EOL);
      return;
    }
    last.eol = CRLF_EOL;
    this.eventBytes++;
  }

  /** Fails before the event grows past the limit: an event is never passed on unredacted. */
  private checkSize(pending: number): void {
    if (this.eventBytes + pending > this.o.maxEventBytes) throw new RedactionError('event too large');
  }

  /** Copies the unfinished event's lines that are views of the current chunk. */
  private retain(): void {
    for (let i = this.copied; i < this.lines.length; i++) {
      const line = this.lines[i] as SseLine;
      line.text = Buffer.from(line.text);
    }
    this.copied = this.lines.length;
  }

  private dispatch(): void {
    const lines = this.lines;
    this.lines = [];
    this.eventBytes = 0;
    this.copied = 0;
    const data = lines.filter((l) => l.dataAt !== -1);
    const first = data[0];
    const value = data.map((l) => l.text.toString('utf8', l.dataAt)).join('\n');
    const redacted = first === undefined || value === '[DONE]' ? undefined : (this.r.json(value, this.o.keep) ?? this.r.text(value, this.o.keep));
    if (first === undefined || redacted === undefined || redacted.count === 0) {
      for (const l of lines) this.out.push(l.text, l.eol);
      return;
    }
    this.o.onRedacted?.(redacted.count);
    // The data goes where its first line was, as one line (JSON) or one per line of text.
    const between = (first.eol.length > 0 ? first.eol : LF_EOL).toString('latin1');
    const dataLines = Buffer.from(redacted.text.split('\n').map((s) => `data: ${s}`).join(between), 'utf8');
    for (const l of lines) {
      if (l.dataAt === -1) this.out.push(l.text, l.eol);
      else if (l === first) this.out.push(dataLines, l.eol);
    }
  }
}

/** The NDJSON redaction stream: holds one line at a time. */
class NdjsonRedactStream extends Transform {
  private readonly splitter = new LineSplitter((text, eol) => this.line(text, eol));
  private readonly out: Buffer[] = [];

  constructor(
    private readonly r: Redactor,
    private readonly o: StreamOptions & { readonly maxLineBytes: number },
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    settle(this.out, callback, () => {
      this.splitter.write(chunk);
      this.checkSize(this.splitter.pending);
    });
  }

  override _flush(callback: TransformCallback): void {
    settle(this.out, callback, () => this.splitter.end());
  }

  private line(raw: Buffer, lf: Buffer): void {
    this.checkSize(raw.length + lf.length);
    const crlf = lf.length > 0 && raw.at(-1) === CR;
    const text = crlf ? raw.subarray(0, -1) : raw;
    const s = text.toString('utf8');
    const redacted = s.trim() === '' ? undefined : (this.r.json(s, this.o.keep) ?? this.r.text(s, this.o.keep));
    if (redacted === undefined || redacted.count === 0) {
      this.out.push(raw, lf);
      return;
    }
    this.o.onRedacted?.(redacted.count);
    this.out.push(Buffer.from(redacted.text, 'utf8'), crlf ? CRLF_EOL : lf);
  }

  /** Fails before the line grows past the limit: a line is never passed on unredacted. */
  private checkSize(bytes: number): void {
    if (bytes > this.o.maxLineBytes) throw new RedactionError('line too large');
  }
}

/** A Transform for a streamed text/event-stream body: splits events on blank lines whatever the chunk boundaries (LF, CRLF, CR line endings), joins multi-line `data:` fields per the SSE spec, redacts the data as JSON when it parses (re-emitted as one `data:` line) and by patterns when it does not (`[DONE]` passes untouched); `event:`, `id:`, `retry:` and comment lines are kept as they were. An event over `maxEventBytes` fails the stream with the error `new RedactionError('event too large')` rather than passing it unredacted. `onRedacted(n)` is called with the count of each event that had replacements. On end, a last event without its terminating blank line is still redacted and emitted. */
export function redactSse(r: Redactor, o: { maxEventBytes: number; keep?: KeepMatch; onRedacted?: (n: number) => void }): Transform {
  checkLimit('redactSse: maxEventBytes', o.maxEventBytes);
  return new SseRedactStream(r, o);
}

/** The same for newline-delimited JSON (application/x-ndjson, application/jsonl): each line redacted as JSON (patterns when not JSON). */
export function redactNdjson(r: Redactor, o: { maxLineBytes: number; keep?: KeepMatch; onRedacted?: (n: number) => void }): Transform {
  checkLimit('redactNdjson: maxLineBytes', o.maxLineBytes);
  return new NdjsonRedactStream(r, o);
}
