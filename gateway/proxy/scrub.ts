import { Transform, type TransformCallback } from 'node:stream';

/** What every copy of a secret is replaced with. A run of overlapping or adjacent copies becomes one. */
export const REDACTED = '[REDACTED]';
const MARKER = Buffer.from(REDACTED);
const EMPTY = Buffer.alloc(0);

/**
 * Base64 fragments shorter than this are not searched for: a few base64 characters occur in
 * ordinary base64 data by chance. Only secrets shorter than ~8 bytes are affected.
 */
const MIN_BASE64_CORE = 8;

/**
 * Finds every copy of a request's secrets, in the forms an upstream might echo them, in header
 * values and in streamed bodies, and replaces each with {@link REDACTED}.
 */
export interface Scrubber {
  /** The byte patterns searched for, distinct and non-empty. */
  readonly patterns: readonly Buffer[];
  /** The longest pattern's length; a stream never holds back more than this − 1 bytes. */
  readonly maxLength: number;
  /** A header value (or any string) with every copy replaced. */
  redact(value: string): string;
  /** A transform that scrubs a body as it streams, holding back only what may begin a copy. */
  stream(): Transform;
  /** A whole body with every copy replaced (the same buffer when there is none). */
  whole(body: Buffer): Buffer;
  /** The same, without a stream: feed chunks, get back what may be released (tests, benchmarks). */
  session(): ScrubSession;
}

/** Incremental scrubbing of one body. */
export interface ScrubSession {
  /** Scrubs the next chunk; returns the bytes that can be released now (possibly none). */
  write(chunk: Buffer): Buffer;
  /** The end of the body: returns everything still held back, scrubbed. */
  end(): Buffer;
}

/**
 * The textual forms of a secret that responses are searched for: as is; JSON-escaped;
 * percent-encoded (RFC 3986 and form encoding, upper- and lower-case hex); and base64 / base64url
 * at each of the three byte alignments it can have inside a longer base64 string (so that
 * `Basic base64(user:secret)` is caught), plus that base64 with `+`, `/` percent-encoded.
 */
export function secretForms(secret: string): string[] {
  const forms = new Set<string>([secret]);
  const json = JSON.stringify(secret).slice(1, -1);
  forms.add(json);
  forms.add(json.replaceAll('/', '\\/'));
  const percent = [encodeURIComponent(secret), new URLSearchParams({ s: secret }).toString().slice(2)];
  for (const p of percent) {
    forms.add(p);
    forms.add(lowerHex(p));
  }
  for (const core of base64Cores(Buffer.from(secret))) {
    if (core.length < MIN_BASE64_CORE) continue;
    forms.add(core);
    forms.add(core.replaceAll('+', '-').replaceAll('/', '_'));
    const escaped = core.replaceAll('+', '%2B').replaceAll('/', '%2F');
    forms.add(escaped);
    forms.add(lowerHex(escaped));
  }
  forms.delete('');
  return [...forms];
}

/**
 * Base64 characters that depend on the secret's bytes alone, for each alignment (0, 1 or 2 bytes
 * before it in its 3-byte group). Characters that mix in neighbouring bytes are left out, so each
 * core appears in the base64 of any data that contains the secret at that alignment.
 */
export function base64Cores(bytes: Buffer): string[] {
  const cores: string[] = [];
  for (let offset = 0; offset < 3; offset++) {
    const encoded = Buffer.concat([Buffer.alloc(offset), bytes]).toString('base64');
    // Character i covers bits [6i, 6i + 6): skip those touching the padding bytes in front, and
    // end before the first character that reaches past the secret's last bit.
    const first = Math.ceil((8 * offset) / 6);
    const end = Math.floor((8 * (offset + bytes.length)) / 6);
    if (end > first) cores.push(encoded.slice(first, end));
  }
  return cores;
}

const lowerHex = (s: string): string => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** Byte patterns for a set of secrets: UTF-8 of every form, and Latin-1 where that differs. */
function patternsFor(secrets: readonly string[]): Buffer[] {
  const seen = new Map<string, Buffer>();
  const add = (b: Buffer): void => {
    if (b.length > 0) seen.set(b.toString('hex'), b);
  };
  for (const secret of secrets) {
    for (const form of secretForms(secret)) add(Buffer.from(form, 'utf8'));
    // Header values travel as Latin-1 bytes; a secret with é was sent (and may come back) as one byte.
    if (/^[\x00-\xff]*$/.test(secret) && /[\x80-\xff]/.test(secret)) add(Buffer.from(secret, 'latin1'));
  }
  return [...seen.values()];
}

/** Builds a scrubber for these secret values. Prefer {@link scrubberFor}, which caches. */
export function createScrubber(secrets: readonly string[]): Scrubber {
  const patterns = patternsFor(secrets);
  const maxLength = patterns.reduce((m, p) => Math.max(m, p.length), 0);
  const minLength = patterns.reduce((m, p) => Math.min(m, p.length), Infinity);
  const whole = (body: Buffer): Buffer => (patterns.length === 0 ? body : new ScrubState(patterns).end(body));
  // The patterns' bytes as Latin-1 strings: in a Latin-1 string (one character per byte) a
  // pattern's bytes occur exactly where its string does, so most header values need no buffer.
  const latin1 = patterns.map((p) => p.toString('latin1'));
  return {
    patterns,
    maxLength,
    redact(value) {
      if (patterns.length === 0 || value.length < minLength) return value;
      // Strings from undici are Latin-1 decoded bytes: work on those exact bytes.
      const encoding = /^[\x00-\xff]*$/.test(value) ? 'latin1' : 'utf8';
      if (encoding === 'latin1' && !latin1.some((p) => value.includes(p))) return value;
      const bytes = Buffer.from(value, encoding);
      const out = whole(bytes);
      return out === bytes ? value : out.toString(encoding);
    },
    stream: () => new ScrubStream(new ScrubState(patterns)),
    whole,
    session: () => new ScrubState(patterns),
  };
}

const CACHE_LIMIT = 1024;
const cache = new Map<string, Scrubber>();

/**
 * The scrubber for these secret values, built once per distinct set (patterns cost a few base64
 * encodings). The cache is dropped whole when it fills: tenants × upstreams is small in practice.
 */
export function scrubberFor(secrets: readonly string[]): Scrubber {
  // NUL cannot occur in a secret (sources refuse it), so it separates values unambiguously.
  const key = secrets.join('\0');
  let scrubber = cache.get(key);
  if (scrubber === undefined) {
    if (cache.size >= CACHE_LIMIT) cache.clear();
    scrubber = createScrubber(secrets);
    cache.set(key, scrubber);
  }
  return scrubber;
}

/**
 * The scrubbing algorithm over a sequence of chunks.
 *
 * Each window is the held-back tail of the previous chunk followed by the new chunk. Every copy
 * of every pattern found in the window marks its bytes; a copy is always complete in some window
 * before its first byte is released, because the tail held back starts at the earliest position
 * whose remaining bytes are a proper prefix of some pattern. Released bytes go out as they are,
 * and each run of marked bytes as one marker (a run that continues into the next window is not
 * marked twice). The output is therefore the same however the input is split, and at most
 * `maxLength − 1` bytes are ever held.
 */
class ScrubState implements ScrubSession {
  private carry: Buffer = EMPTY;
  /** Marked ranges inside `carry`, `[start, end)`, found in an earlier window. */
  private carryMarks: [number, number][] = [];
  /** The last byte released was marked: a mark starting the next window continues that run. */
  private inRun = false;

  constructor(private readonly patterns: readonly Buffer[]) {}

  write(chunk: Buffer): Buffer {
    return this.take(chunk, false);
  }

  end(last: Buffer = EMPTY): Buffer {
    return this.take(last, true);
  }

  /** Scrubs `chunk` and returns what can be released now (`final`: everything). */
  private take(chunk: Buffer, final: boolean): Buffer {
    const carried = this.carry.length;
    const data = carried === 0 ? chunk : chunk.length === 0 ? this.carry : Buffer.concat([this.carry, chunk]);
    const marks = this.carryMarks;
    for (const p of this.patterns) {
      // Copies lying wholly in the carried tail were found in the previous window.
      let i = data.indexOf(p, Math.max(0, carried - p.length + 1));
      while (i !== -1) {
        marks.push([i, i + p.length]);
        i = data.indexOf(p, i + 1);
      }
    }
    const cut = final ? data.length : this.holdFrom(data);
    this.carry = data.subarray(cut);
    this.carryMarks = [];
    if (marks.length === 0) {
      if (cut > 0) this.inRun = false;
      return cut === data.length ? data : data.subarray(0, cut);
    }

    // Overlapping or adjacent copies form one run, replaced by one marker.
    marks.sort((x, y) => x[0] - y[0]);
    const runs: [number, number][] = [];
    for (const [start, end] of marks) {
      const last = runs[runs.length - 1];
      if (last !== undefined && start <= last[1]) last[1] = Math.max(last[1], end);
      else runs.push([start, end]);
    }
    const pieces: Buffer[] = [];
    let pos = 0;
    for (const [start, end] of runs) {
      if (start >= cut) {
        this.carryMarks.push([start - cut, end - cut]);
        continue;
      }
      if (start > pos) {
        pieces.push(data.subarray(pos, start));
        this.inRun = false;
      }
      if (!this.inRun) pieces.push(MARKER);
      this.inRun = true;
      pos = Math.min(end, cut);
      if (end > cut) this.carryMarks.push([0, end - cut]);
    }
    if (pos < cut) {
      pieces.push(data.subarray(pos, cut));
      this.inRun = false;
    }
    return pieces.length === 1 ? (pieces[0] as Buffer) : Buffer.concat(pieces);
  }

  /** The earliest position from which the rest of `data` could still grow into a pattern. */
  private holdFrom(data: Buffer): number {
    let hold = data.length;
    for (const p of this.patterns) {
      for (let start = Math.max(0, data.length - p.length + 1); start < hold; start++) {
        if (data[start] === p[0] && data.compare(p, 0, data.length - start, start) === 0) {
          hold = start;
          break;
        }
      }
    }
    return hold;
  }
}

/** The body transform: one {@link ScrubState} per response. */
class ScrubStream extends Transform {
  constructor(private readonly state: ScrubState) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const out = this.state.write(chunk);
    callback(null, out.length > 0 ? out : undefined);
  }

  override _flush(callback: TransformCallback): void {
    const out = this.state.end();
    callback(null, out.length > 0 ? out : undefined);
  }
}
