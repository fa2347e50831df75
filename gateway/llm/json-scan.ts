/**
 * A streaming JSON scanner for metering: reads a JSON text chunk by chunk, never holding the text
 * itself, and keeps from each record only the values at a few paths. A record is the top-level
 * object, or each object element of a top-level array (Gemini streams one as a JSON array written
 * over time). What it keeps is a pruned copy of the record: the containers on the way to a kept
 * path as they are (an empty `choices: []` stays an empty array), and each kept value parsed.
 */

/** Member names from a record down to a value; `*` stands for every element of an array. */
export type JsonPath = readonly string[];

/** A pruned record: only the kept paths, with the containers leading to them. */
export type JsonRecord = Record<string, unknown>;

/** Called when a record's closing brace is read; `end` is the offset just past it in the buffer written. */
export type OnRecord = (record: JsonRecord, end: number) => void;

// Bounds: nesting, a member name worth comparing, a kept value that is not a string (usage objects
// are small), a kept string (a whole non-streamed answer), and everything one record keeps.
const MAX_DEPTH = 512;
const MAX_KEY = 256;
const MAX_VALUE = 64 * 1024;
const MAX_STRING = 8 * 1024 * 1024;
const MAX_RECORD = 8 * 1024 * 1024;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const COLON = 0x3a;
const COMMA = 0x2c;

/** Bytes a number or a literal (true, false, null) is made of; anything else ends one. */
const SCALAR = new Uint8Array(256);
for (const c of '0123456789+-.eEtrufalsn') SCALAR[c.charCodeAt(0)] = 1;
const SPACE = new Uint8Array(256);
for (const c of ' \t\n\r') SPACE[c.charCodeAt(0)] = 1;

// What a container expects next.
const KEY_OR_CLOSE = 0;
const KEY = 1;
const COLON_NEXT = 2;
const VALUE = 3;
const VALUE_OR_CLOSE = 4;
const COMMA_OR_CLOSE = 5;

// What the scanner is in the middle of.
const STRUCTURE = 0;
const IN_STRING = 1;
const IN_KEY = 2;
const IN_SCALAR = 3;
const FAILED = 4;

// Where the top-level value is.
const BEFORE = 0;
const INSIDE = 1;
const AFTER = 2;

type Node = JsonRecord | unknown[];

/** One open container. Frames are reused by depth, so nothing is allocated per container. */
class Frame {
  object = true;
  expect = KEY_OR_CLOSE;
  /** The paths (a bit each) that lead through this container. */
  mask = 0;
  /** This container's depth below its record: the index into a path of its members' names. */
  rel = 0;
  node: Node | undefined = undefined;
  key: string | undefined = undefined;
  index = 0;
  record = false;
  /** The top-level array whose object elements are records. */
  records = false;
}

/** Reads one JSON text (or, after {@link JsonScanner.reset}, the next) and reports its records. */
export class JsonScanner {
  private readonly paths: readonly JsonPath[];
  private readonly all: number;
  private readonly onRecord: OnRecord;
  private readonly stack: Frame[] = [];
  private depth = 0;
  private mode = STRUCTURE;
  private top = BEFORE;
  private array = false;
  private escaped = false;
  private recordNode: JsonRecord | undefined = undefined;
  private recordBytes = 0;
  // The member name being read, when its container leads to a kept path.
  private keyWanted = false;
  private keyStart = 0;
  private keyParts: Buffer[] = [];
  private keyLength = 0;
  // The kept value being read.
  private capturing = false;
  private capDepth = 0;
  private capNode: Node | undefined = undefined;
  private capSlot: string | number = 0;
  private capStart = 0;
  private capParts: Buffer[] = [];
  private capSize = 0;
  private capLimit = 0;
  private capString = false;

  /** At most 31 paths: each is a bit of a mask. */
  constructor(paths: readonly JsonPath[], onRecord: OnRecord) {
    if (paths.length > 31) throw new RangeError('JsonScanner: at most 31 paths');
    this.paths = paths;
    this.all = paths.length === 0 ? 0 : 2 ** paths.length - 1;
    this.onRecord = onRecord;
  }

  /** The top-level value has been read to its end. */
  get done(): boolean {
    return this.top === AFTER && this.mode !== FAILED;
  }

  /** The text is not JSON; nothing more is read. */
  get failed(): boolean {
    return this.mode === FAILED;
  }

  /** The top-level value is an array (its object elements are the records). */
  get isArray(): boolean {
    return this.array;
  }

  /** Starts over, for the next JSON text. */
  reset(): void {
    this.depth = 0;
    this.mode = STRUCTURE;
    this.top = BEFORE;
    this.array = false;
    this.escaped = false;
    this.recordNode = undefined;
    this.capturing = false;
    this.capParts = [];
    this.keyParts = [];
  }

  /** Reads `buf[start, end)`; the buffer is not kept, only copies of the kept values' bytes. */
  write(buf: Buffer, start = 0, end = buf.length): void {
    if (this.capturing) this.capStart = start;
    if (this.mode === IN_KEY) this.keyStart = start;
    let i = start;
    while (i < end) {
      switch (this.mode) {
        case IN_STRING:
        case IN_KEY:
          i = this.string(buf, i, end);
          break;
        case IN_SCALAR:
          i = this.scalar(buf, i, end);
          break;
        case STRUCTURE:
          i = this.structure(buf, i, end);
          break;
        default:
          return;
      }
    }
    if (this.mode === FAILED) return;
    if (this.capturing) {
      const n = end - this.capStart;
      if (this.capSize + n <= this.capLimit && n > 0) this.capParts.push(Buffer.from(buf.subarray(this.capStart, end)));
      this.capSize += n;
    }
    if (this.mode === IN_KEY && this.keyWanted) {
      const n = end - this.keyStart;
      if (this.keyLength + n <= MAX_KEY && n > 0) this.keyParts.push(Buffer.from(buf.subarray(this.keyStart, end)));
      this.keyLength += n;
    }
  }

  /**
   * The record being read when the text stopped short: what it kept so far, with a kept string cut
   * off midway decoded as far as it goes (a non-streamed answer truncated mid-text).
   */
  partial(): JsonRecord | undefined {
    if (this.recordNode === undefined) return undefined;
    if (this.capturing && this.capString && this.capSize <= this.capLimit && this.capNode !== undefined) {
      const text = Buffer.concat(this.capParts).toString('utf8');
      // The text may end inside an escape (`\`, `\u00`): drop up to 6 characters until it parses.
      for (let cut = 0; cut <= 6 && cut < text.length; cut++) {
        try {
          assign(this.capNode, this.capSlot, JSON.parse(`${text.slice(0, text.length - cut)}"`));
          break;
        } catch {
          // Try a shorter prefix.
        }
      }
    }
    return this.recordNode;
  }

  private fail(): number {
    this.mode = FAILED;
    this.capturing = false;
    this.capParts = [];
    return Number.MAX_SAFE_INTEGER;
  }

  private string(buf: Buffer, i: number, end: number): number {
    for (; i < end; i++) {
      if (this.escaped) {
        this.escaped = false;
        continue;
      }
      const c = buf[i];
      if (c === BACKSLASH) this.escaped = true;
      else if (c === QUOTE) {
        if (this.mode === IN_KEY) this.keyRead(buf, i);
        else this.valueRead(buf, i + 1);
        this.mode = STRUCTURE;
        return i + 1;
      }
    }
    return end;
  }

  private scalar(buf: Buffer, i: number, end: number): number {
    for (; i < end; i++) {
      if (SCALAR[buf[i]!] === 0) {
        this.mode = STRUCTURE;
        this.valueRead(buf, i);
        return i;
      }
    }
    return end;
  }

  private structure(buf: Buffer, i: number, end: number): number {
    const c = buf[i]!;
    if (SPACE[c] === 1) return i + 1;
    // What follows the value is not read: the value is what was metered.
    if (this.top === AFTER) return end;
    const f = this.depth > 0 ? this.stack[this.depth - 1] : undefined;
    switch (c) {
      case LBRACE:
      case LBRACKET:
        return this.begin(f, buf, i, c) ? i + 1 : this.fail();
      case QUOTE:
        if (f !== undefined && f.object && (f.expect === KEY_OR_CLOSE || f.expect === KEY)) {
          f.expect = COLON_NEXT;
          this.mode = IN_KEY;
          this.keyWanted = f.mask !== 0;
          this.keyStart = i + 1;
          this.keyParts = [];
          this.keyLength = 0;
          return i + 1;
        }
        if (!this.begin(f, buf, i, c)) return this.fail();
        this.mode = IN_STRING;
        return i + 1;
      case RBRACE:
      case RBRACKET: {
        if (f === undefined || f.object !== (c === RBRACE)) return this.fail();
        if (f.expect !== COMMA_OR_CLOSE && f.expect !== (f.object ? KEY_OR_CLOSE : VALUE_OR_CLOSE)) return this.fail();
        this.depth--;
        this.valueRead(buf, i + 1);
        if (f.record) {
          const record = this.recordNode;
          this.recordNode = undefined;
          if (record !== undefined) this.onRecord(record, i + 1);
        }
        return i + 1;
      }
      case COLON:
        if (f === undefined || f.expect !== COLON_NEXT) return this.fail();
        f.expect = VALUE;
        return i + 1;
      case COMMA:
        if (f === undefined || f.expect !== COMMA_OR_CLOSE) return this.fail();
        f.expect = f.object ? KEY : VALUE;
        return i + 1;
      default:
        if (SCALAR[c] === 0 || !this.begin(f, buf, i, c)) return this.fail();
        this.mode = IN_SCALAR;
        return i + 1;
    }
  }

  /** A value begins at `buf[i]` (first byte `c`) inside `f` (undefined at top level). */
  private begin(f: Frame | undefined, buf: Buffer, i: number, c: number): boolean {
    const container = c === LBRACE || c === LBRACKET;
    if (f === undefined) {
      if (this.top !== BEFORE) return false;
      this.top = INSIDE;
      if (c === LBRACE) return this.beginRecord();
      if (c === LBRACKET) {
        this.array = true;
        const a = this.push(false, 0, 0, undefined);
        if (a !== undefined) a.records = true;
        return a !== undefined;
      }
      return true;
    }
    if (f.expect !== VALUE && f.expect !== VALUE_OR_CLOSE) return false;
    f.expect = COMMA_OR_CLOSE;
    const slot = f.object ? f.key : f.index++;
    if (f.records) {
      if (c === LBRACE) return this.beginRecord();
      return !container || this.push(false, 0, 0, undefined) !== undefined;
    }
    let full = 0;
    let prefix = 0;
    if (f.mask !== 0 && slot !== undefined && !this.capturing) {
      const name = f.object ? slot : '*';
      for (let b = 0, m = f.mask; m !== 0; b++, m >>>= 1) {
        const p = this.paths[b] as JsonPath;
        if ((m & 1) === 0 || p[f.rel] !== name) continue;
        if (p.length === f.rel + 1) full |= 1 << b;
        else prefix |= 1 << b;
      }
    }
    if (full !== 0 && f.node !== undefined && slot !== undefined) {
      this.capturing = true;
      this.capDepth = this.depth;
      this.capNode = f.node;
      this.capSlot = slot;
      this.capStart = i;
      this.capParts = [];
      this.capSize = 0;
      this.capString = c === QUOTE;
      this.capLimit = this.capString ? MAX_STRING : MAX_VALUE;
    }
    if (!container) return true;
    if (prefix !== 0 && f.node !== undefined && slot !== undefined) {
      const node: Node = c === LBRACE ? {} : [];
      assign(f.node, slot, node);
      return this.push(c === LBRACE, prefix, f.rel + 1, node) !== undefined;
    }
    return this.push(c === LBRACE, 0, 0, undefined) !== undefined;
  }

  private beginRecord(): boolean {
    const node: JsonRecord = {};
    const f = this.push(true, this.all, 0, node);
    if (f === undefined) return false;
    f.record = true;
    this.recordNode = node;
    this.recordBytes = 0;
    return true;
  }

  private push(object: boolean, mask: number, rel: number, node: Node | undefined): Frame | undefined {
    if (this.depth >= MAX_DEPTH) return undefined;
    let f = this.stack[this.depth];
    if (f === undefined) {
      f = new Frame();
      this.stack.push(f);
    }
    this.depth++;
    f.object = object;
    f.expect = object ? KEY_OR_CLOSE : VALUE_OR_CLOSE;
    f.mask = mask;
    f.rel = rel;
    f.node = node;
    f.key = undefined;
    f.index = 0;
    f.record = false;
    f.records = false;
    return f;
  }

  private keyRead(buf: Buffer, i: number): void {
    const f = this.stack[this.depth - 1] as Frame;
    f.key = undefined;
    if (!this.keyWanted || this.keyLength + (i - this.keyStart) > MAX_KEY) return;
    const raw = this.keyParts.length === 0 ? buf.toString('utf8', this.keyStart, i) : Buffer.concat([...this.keyParts, buf.subarray(this.keyStart, i)]).toString('utf8');
    this.keyParts = [];
    if (!raw.includes('\\')) {
      f.key = raw;
      return;
    }
    try {
      f.key = JSON.parse(`"${raw}"`) as string;
    } catch {
      // An invalid escape: the key matches no path.
    }
  }

  /** A value ended just before `end`: the top-level one, or the one being kept. */
  private valueRead(buf: Buffer, end: number): void {
    if (this.depth === 0) this.top = AFTER;
    if (!this.capturing || this.depth !== this.capDepth) return;
    this.capturing = false;
    const size = this.capSize + (end - this.capStart);
    const parts = this.capParts;
    this.capParts = [];
    if (size > this.capLimit || this.recordBytes + size > MAX_RECORD || this.capNode === undefined) return;
    this.recordBytes += size;
    const text = parts.length === 0 ? buf.toString('utf8', this.capStart, end) : Buffer.concat([...parts, buf.subarray(this.capStart, end)]).toString('utf8');
    try {
      assign(this.capNode, this.capSlot, JSON.parse(text));
    } catch {
      // Not a JSON value after all (a misspelt literal): left out.
    }
  }
}

function assign(node: Node, slot: string | number, value: unknown): void {
  (node as Record<string | number, unknown>)[slot] = value;
}
