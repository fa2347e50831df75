/**
 * Metering a response as it streams through: the usage it reports, read without buffering the body
 * and without delaying its bytes (see {@link createMeter}). The bytes are read as SSE (OpenAI,
 * Anthropic, Gemini `alt=sse`, Cohere), AWS event stream (Bedrock) or JSON (whole responses, and
 * Gemini's streamed JSON array), each value pruned to the few paths its API's reader needs
 * (readers.ts). When a response reports no usage, or stops before it does, the output is estimated
 * from the text actually delivered.
 *
 * An SSE stream that is not to be cut is read lazily (readers.ts, `Lazy`): only the events that may
 * carry usage, the model or the end are parsed as they pass, told apart by their name or a byte
 * search of their data; the others, nearly all, are kept as raw bytes (bounded) and parsed for their
 * text only if the stream ends without its final report.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { countTokens } from './tokens.js';
import { EventStreamDecoder, type EventStreamMessage } from './eventstream.js';
import { JsonScanner, type JsonPath, type JsonRecord } from './json-scan.js';
import { bedrockHeaderUsage, CHECK, LATEST, READ, readerFor, SKIP, type Lazy, type Reader, type Tally } from './readers.js';
import { SseSplitter } from './sse.js';
import { NO_USAGE, type LlmRequest, type Metered, type Usage } from './types.js';

/** How a response is metered beyond reading it. */
export interface MeterOptions {
  /** Output tokens past which a stream is ended cleanly with the API's own end events (undefined: never cut). */
  readonly cutAfter?: number;
}

/** What the meter needs of the upstream's response head. */
export interface MeteredResponseHead {
  readonly status: number;
  readonly contentType: string | undefined;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
}

/** One response's meter. */
export interface ResponseMeter {
  /**
   * The decoded response body passes through this: bytes go on at once and unchanged, except the
   * usage chunk Valet asked for (withheld) and the end after a cut.
   */
  readonly transform: Transform;
  /** For a body read whole (small JSON responses): returns the bytes to send (same buffer unless something was withheld). */
  whole(body: Buffer): Buffer;
  /** Called once when a cut happens (so the caller can abort the upstream request). */
  onCut(listener: () => void): void;
  /** What was metered; call once the body ended, failed or was cut. Safe to call more than once. */
  result(): Metered;
}

/** Delivered text kept for estimating output, in UTF-16 units; past it, 4 characters count as a token. */
const MAX_TEXT = 8 * 1024 * 1024;
/**
 * The raw data of SSE events kept unread by a lazy stream, in bytes (the first allocation, and the
 * most). Past it, the stream's later events are read as they come, as a stream to be cut is.
 */
const FIRST_KEPT = 16 * 1024;
export const MAX_KEPT = 8 * 1024 * 1024;
/** The most bytes of one SSE event, array element or event-stream message held back; a longer one is passed on as it comes. */
const MAX_HELD = 1024 * 1024;
const LF = Buffer.from('\n');
const LF_BYTE = 0x0a;
const OPEN_BRACKET = 0x5b;
const EMPTY = Buffer.alloc(0);
/** `[DONE]`, which ends an OpenAI stream and is not JSON. */
const DONE = Buffer.from('[DONE]');

function tokens(text: string): number {
  try {
    return countTokens(text);
  } catch {
    return Math.ceil(text.length / 4);
  }
}

/** Reads the texts of kept events up to index `to` (exclusive), in order, passing each to `add`. */
type Resolve = (to: number, add: (text: string) => void) => void;

/**
 * The tally of one response. Delivered text is kept (bounded) until counted, and counted only when
 * needed: at the end when no usage was reported, or when a cut may be near. A lazy stream's kept
 * events stand in it for their text, in order, until then.
 */
class TextTally implements Tally {
  usage: Usage | undefined = undefined;
  final = false;
  complete = false;
  model: string | undefined = undefined;
  /** Text is not taken: a kept event read again for its report, whose text is kept already. */
  muted = false;
  /** Reads kept events' text; set by a lazy stream. */
  resolve: Resolve | undefined = undefined;
  /** Text, and runs of kept events (a number: the index past the run's last event). */
  private pending: (string | number)[] = [];
  private pendingLength = 0;
  private kept = 0;
  private counted = 0;

  text(text: string | undefined): void {
    if (text === undefined || text === '' || this.final || this.muted) return;
    if (this.take(text)) {
      this.pending.push(text);
      this.pendingLength += text.length;
    }
  }

  /** Kept event `index` (the next one) stands for its text. */
  keep(index: number): void {
    const last = this.pending.length - 1;
    if (last >= 0 && typeof this.pending[last] === 'number') this.pending[last] = index + 1;
    else this.pending.push(index + 1);
  }

  /** The text will never be counted (the final usage and the end were seen): it is dropped. */
  forget(): void {
    this.pending = [];
    this.pendingLength = 0;
  }

  /** Tokens of the text delivered so far. */
  delivered(): number {
    if (this.pending.length > 0) {
      const pieces = this.pending;
      this.pending = [];
      this.pendingLength = 0;
      const texts: string[] = [];
      const add = (text: string): void => {
        if (text !== '' && this.take(text)) texts.push(text);
      };
      for (const piece of pieces) {
        if (typeof piece === 'string') texts.push(piece);
        else this.resolve?.(piece, add);
      }
      if (texts.length > 0) this.counted += tokens(texts.join(''));
    }
    return this.counted;
  }

  output(): number {
    const u = this.usage;
    return Math.max(u === undefined ? 0 : u.output + u.reasoning, this.delivered());
  }

  /** Whether the output so far passes `limit`; counts text only when it might. */
  exceeds(limit: number): boolean {
    const u = this.usage;
    if (u !== undefined && u.output + u.reasoning > limit) return true;
    // A token is at least one UTF-8 byte, and a UTF-16 unit at most 3 bytes: below this bound no
    // counting is needed, which keeps the tokenizer off the path of most events.
    if (this.counted + 3 * this.pendingLength <= limit) return false;
    return this.delivered() > limit;
  }

  /** Whether `text` is kept to be counted; past {@link MAX_TEXT}, it is counted at 4 characters a token. */
  private take(text: string): boolean {
    if (this.kept + text.length > MAX_TEXT) {
      this.counted += Math.ceil(text.length / 4);
      return false;
    }
    this.kept += text.length;
    return true;
  }
}

/**
 * The raw data of a lazy stream's kept SSE events, in order, copied into one growing buffer
 * (bounded by {@link MAX_KEPT}); event `i` is `buf[ends[i - 1] ?? 0, ends[i])`. The event being
 * read may take the bytes past the last end, and gives them back when it is not kept.
 */
class KeptEvents {
  buf: Buffer = EMPTY;
  size = 0;
  readonly ends: number[] = [];
  readonly names: string[] = [];
  /** Events before this one were read for their text already. */
  resolved = 0;

  /** Copies `src[start, end)` at the end; false when it does not fit. */
  append(src: Buffer, start: number, end: number): boolean {
    const n = end - start;
    if (!this.room(n)) return false;
    src.copy(this.buf, this.size, start, end);
    this.size += n;
    return true;
  }

  appendByte(byte: number): boolean {
    if (!this.room(1)) return false;
    this.buf[this.size++] = byte;
    return true;
  }

  /** The bytes from `start` up to the end are the next kept event; returns its index. */
  push(name: string): number {
    this.ends.push(this.size);
    this.names.push(name);
    return this.ends.length - 1;
  }

  start(index: number): number {
    return index === 0 ? 0 : (this.ends[index - 1] as number);
  }

  release(): void {
    this.buf = EMPTY;
    this.size = 0;
    this.ends.length = 0;
    this.names.length = 0;
    this.resolved = 0;
  }

  private room(n: number): boolean {
    const need = this.size + n;
    if (need <= this.buf.length) return true;
    if (need > MAX_KEPT) return false;
    let capacity = Math.max(FIRST_KEPT, 2 * this.buf.length);
    while (capacity < need) capacity *= 2;
    const next = Buffer.allocUnsafe(Math.min(capacity, MAX_KEPT));
    this.buf.copy(next, 0, 0, this.size);
    this.buf = next;
    return true;
  }
}

const SPACE = 0x20;
const TAB = 0x09;
const CR_BYTE = 0x0d;
const COLON = 0x3a;

/** The bytes of each mark's member name in quotes, shared by every meter. */
const MARK_KEYS = new Map<string, Buffer>();

/**
 * Looks for one JSON member name (`"name"`, as bytes) in SSE data, and when asked, for the first
 * character of its value after it. Searches in a chunk remember their result, so that the events
 * of one chunk search it once between them.
 */
class MarkFinder {
  private readonly key: Buffer;
  private readonly value: number;
  private chunk: Buffer | undefined = undefined;
  private from = 0;
  private at = -1;

  constructor(name: string, value: string | undefined) {
    let key = MARK_KEYS.get(name);
    if (key === undefined) MARK_KEYS.set(name, (key = Buffer.from(JSON.stringify(name))));
    this.key = key;
    this.value = value === undefined ? -1 : value.charCodeAt(0);
  }

  /** Whether the mark is in `buf[start, end)`; `chunk`: buf is an incoming chunk, searched once. */
  in(buf: Buffer, start: number, end: number, chunk: boolean): boolean {
    let from = start;
    for (;;) {
      const at = chunk ? this.next(buf, from) : buf.indexOf(this.key, from);
      if (at === -1 || at + this.key.length > end) return false;
      if (this.value === -1 || this.follows(buf, at + this.key.length, end)) return true;
      from = at + 1;
    }
  }

  release(): void {
    this.chunk = undefined;
  }

  private next(buf: Buffer, from: number): number {
    if (buf !== this.chunk || from < this.from || (this.at !== -1 && this.at < from)) {
      this.chunk = buf;
      this.from = from;
      this.at = buf.indexOf(this.key, from);
    }
    return this.at;
  }

  /** A colon, then the value's first character, JSON whitespace aside; what the data does not show counts as found. */
  private follows(buf: Buffer, i: number, end: number): boolean {
    let colon = false;
    for (; i < end; i++) {
      const c = buf[i];
      if (c === SPACE || c === TAB || c === LF_BYTE || c === CR_BYTE) continue;
      if (!colon && c === COLON) colon = true;
      else return colon && c === this.value;
    }
    return true;
  }
}

/**
 * An SSE event's data read whole: JSON.parse when it is one object, else what the streaming
 * scanner makes of it (the last object of an array, an object followed by more), as for an event
 * read as it comes.
 */
function parseEvent(buf: Buffer, start: number, end: number, paths: readonly JsonPath[]): JsonRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(buf.toString('utf8', start, end));
  } catch {
    value = undefined;
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as JsonRecord;
  let record: JsonRecord | undefined;
  new JsonScanner(paths, (r) => {
    record = r;
  }).write(buf, start, end);
  return record;
}

/** A tally that only collects text: kept events are read again through a reader of their own writing to it. */
class TextSink implements Tally {
  usage: Usage | undefined = undefined;
  final = false;
  complete = false;
  model: string | undefined = undefined;
  add: (text: string) => void = () => {};

  text(text: string | undefined): void {
    if (text !== undefined && text !== '') this.add(text);
  }

  output(): number {
    return 0;
  }
}

type Framing = 'sse' | 'json' | 'eventstream' | 'none';

const OPEN = 0;
const CUT = 1;
const ENDED = 2;

class Meter implements ResponseMeter {
  readonly transform: Transform;
  private readonly tally = new TextTally();
  private readonly reader: Reader | undefined;
  private readonly framing: Framing;
  private readonly ok: boolean;
  private readonly cutAfter: number | undefined;
  private readonly listeners: (() => void)[] = [];
  private state = OPEN;
  private cutFired = false;
  /** False once the body turned out not to be what its API sends: bytes still pass, unread. */
  private metering = true;
  /**
   * Whether the bytes of an incomplete unit (SSE event, JSON array element, event-stream message)
   * are held back until it is complete, so that it can be withheld or a cut made after it.
   */
  private holding: boolean;
  /** JSON: whether the body's first byte (array or not) has been seen. */
  private decided = false;
  private held: Buffer[] = [];
  private heldSize = 0;
  /** The current unit outgrew {@link MAX_HELD}: its bytes are passed on as they come. */
  private passing = false;
  private lastWithheld = false;
  /** Something was withheld or written: a whole body is no longer the same buffer. */
  private altered = false;
  // The chunk being written, what goes on of it (reused from chunk to chunk), and where its current unit began.
  private out: Buffer[] = [];
  private chunk: Buffer = EMPTY;
  private seg = 0;
  // SSE: the event being read.
  private readonly splitter: SseSplitter | undefined;
  private readonly events: JsonScanner | undefined;
  private hasData = false;
  /** The event is read as it comes, through {@link events}. */
  private scanning = false;
  private dataLength = 0;
  /** Leading bytes of the event's data that match `[DONE]`. */
  private doneLength = 0;
  private event: JsonRecord | undefined;
  // SSE read lazily (undefined: every wanted event is read as it comes).
  private lazy: Lazy | undefined;
  private kept: KeptEvents | undefined;
  private marks: MarkFinder[] = [];
  /** What the lazy stream does with the current event (readers.ts: READ, KEEP, LATEST, SKIP, CHECK). */
  private sort = SKIP;
  /** The event's data while it is one piece of one chunk: `piece[pieceStart, pieceEnd)`. */
  private piece: Buffer | undefined = undefined;
  private pieceStart = 0;
  private pieceEnd = 0;
  /** The event's data is in {@link kept} past its last event (it came in pieces). */
  private gathered = false;
  /** Where the current event's data begins in {@link kept}. */
  private evStart = 0;
  /** The latest LATEST kept event read after no event read as it came (-1: none). */
  private latest = -1;
  private sinkReader: Reader | undefined;
  private readonly sink = new TextSink();
  // JSON and event stream.
  private readonly body: JsonScanner | undefined;
  private partialRead = false;
  private readonly decoder: EventStreamDecoder | undefined;

  constructor(
    private readonly request: LlmRequest,
    response: MeteredResponseHead,
    options: MeterOptions,
  ) {
    this.ok = response.status >= 200 && response.status < 300;
    this.cutAfter = this.ok ? options.cutAfter : undefined;
    const type = (response.contentType ?? '').trim().toLowerCase();
    const eventStream = type.startsWith('application/vnd.amazon.eventstream');
    const reader = readerFor(request, eventStream, this.tally);
    this.reader = reader;
    this.framing = reader === undefined ? 'none' : eventStream ? 'eventstream' : type.startsWith('text/event-stream') ? 'sse' : 'json';
    if (request.route.api === 'invoke' && !eventStream) this.tally.usage = bedrockHeaderUsage(response.headers);
    this.holding = this.ok && ((this.framing === 'sse' && (request.addUsage || this.cutAfter !== undefined)) || (this.framing === 'eventstream' && this.cutAfter !== undefined));
    if (reader !== undefined && this.framing === 'sse') {
      this.splitter = new SseSplitter({
        dataLine: () => this.dataLine(reader),
        data: (buf, start, end) => this.data(buf, start, end),
        boundary: (event, end) => {
          if (this.state === OPEN) this.unitEnd(end, this.dispatch(reader, event));
        },
        extend: (end) => this.extend(end),
      });
      this.events = new JsonScanner(reader.paths, (record) => {
        this.event = record;
      });
      // A stream to be cut counts its text as it goes; any other need not.
      if (this.cutAfter === undefined && reader.lazy !== undefined) {
        this.lazy = reader.lazy;
        this.kept = new KeptEvents();
        this.marks = reader.lazy.marks.map((m) => new MarkFinder(m.name, m.value));
        this.tally.resolve = (to, add) => this.resolve(to, add);
      }
    }
    if (reader !== undefined && this.framing === 'json') {
      this.body = new JsonScanner(reader.paths, (record, end) => {
        if (this.state !== OPEN) return;
        reader.read(record, '');
        this.unitEnd(end, false);
      });
    }
    if (reader !== undefined && this.framing === 'eventstream') this.decoder = new EventStreamDecoder((message, end) => this.message(reader, message, end));
    this.transform = new MeterStream(this);
  }

  whole(body: Buffer): Buffer {
    const open = this.state === OPEN;
    const out = [...this.write(body), ...this.end()];
    if (open && this.state === CUT) this.fire();
    return this.altered ? Buffer.concat(out) : body;
  }

  onCut(listener: () => void): void {
    this.listeners.push(listener);
    if (this.cutFired) listener();
  }

  result(): Metered {
    this.readPartial();
    this.readLatest();
    const t = this.tally;
    const u = t.usage;
    const model = t.model;
    // Providers do not bill a failed call, unless the error says what it used.
    if (!this.ok && u === undefined) return { usage: NO_USAGE, source: 'reported', model, complete: t.complete };
    if (this.request.route.api === 'batch') return { usage: NO_USAGE, source: 'estimated', model, complete: t.complete };
    if (u !== undefined && t.complete) return { usage: u, source: 'reported', model, complete: true };
    const delivered = t.delivered();
    if (u !== undefined) {
      const output = delivered > u.output + u.reasoning ? delivered - u.reasoning : u.output;
      return { usage: { ...u, output }, source: 'estimated', model, complete: t.complete };
    }
    return { usage: { ...NO_USAGE, input: this.request.inputTokens, output: delivered }, source: 'estimated', model, complete: t.complete };
  }

  /** The stream was cut: nothing more goes on. */
  get wasCut(): boolean {
    return this.state === CUT;
  }

  /** Runs the cut listeners, once. */
  fire(): void {
    if (this.cutFired) return;
    this.cutFired = true;
    for (const listener of this.listeners) listener();
  }

  /** One chunk in; what goes on now (an array reused by the next call). Never throws: a failure to read stops metering, not the bytes. */
  write(chunk: Buffer): Buffer[] {
    this.out.length = 0;
    if (this.state !== OPEN) return this.out;
    this.chunk = chunk;
    this.seg = 0;
    // A search result is good within one chunk only (a caller may write the same buffer again, changed).
    for (let i = 0; i < this.marks.length; i++) (this.marks[i] as MarkFinder).release();
    if (this.metering) {
      try {
        this.feed(chunk);
      } catch {
        this.stop();
      }
    }
    if (this.wasCut) return this.out;
    if (this.seg === chunk.length) return this.out;
    const rest = this.seg === 0 ? chunk : chunk.subarray(this.seg);
    if (!this.holding || this.passing) this.emit(rest);
    else {
      this.held.push(rest);
      this.heldSize += rest.length;
      if (this.heldSize > MAX_HELD) {
        for (const b of this.held) this.emit(b);
        this.held = [];
        this.heldSize = 0;
        this.passing = true;
      }
    }
    return this.out;
  }

  /** The end of the body: what is still held back, and the last unterminated event read. */
  end(): Buffer[] {
    this.out.length = 0;
    if (this.state !== OPEN) return this.out;
    this.state = ENDED;
    let withhold = false;
    try {
      if (this.metering && this.splitter !== undefined && this.reader !== undefined) withhold = this.dispatch(this.reader, this.splitter.end());
    } catch {
      // Metering only: the bytes still go on.
    }
    if (this.framing === 'none') this.tally.complete = true;
    if (!withhold || this.passing) for (const b of this.held) this.emit(b);
    else this.altered = true;
    this.held = [];
    this.piece = undefined;
    for (const m of this.marks) m.release();
    this.chunk = EMPTY;
    return this.out;
  }

  private feed(chunk: Buffer): void {
    if (this.splitter !== undefined) this.splitter.write(chunk);
    else if (this.body !== undefined) {
      if (!this.decided) this.decide(chunk);
      this.body.write(chunk);
      if (this.wasCut) return;
      if (this.body.failed) this.stop();
      else if (this.body.done) {
        this.tally.complete = true;
        this.unhold();
      }
    } else if (this.decoder !== undefined) {
      this.decoder.write(chunk);
      if (this.decoder.failed) this.stop();
    }
  }

  /** A streamed JSON array is held back element by element when it may be cut; any other body never is. */
  private decide(chunk: Buffer): void {
    for (const c of chunk) {
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) continue;
      this.decided = true;
      this.holding = this.cutAfter !== undefined && c === OPEN_BRACKET;
      return;
    }
  }

  private emit(b: Buffer): void {
    if (b.length > 0) this.out.push(b);
  }

  private stop(): void {
    this.metering = false;
    this.unhold();
  }

  private unhold(): void {
    if (!this.holding) return;
    for (const b of this.held) this.emit(b);
    this.held = [];
    this.heldSize = 0;
    this.holding = false;
    this.passing = false;
  }

  /** A unit ended at `end` in the current chunk: it goes on (or is withheld), then perhaps the cut. */
  private unitEnd(end: number, withhold: boolean): void {
    if (!this.holding) return;
    const drop = withhold && !this.passing;
    if (drop) this.altered = true;
    else {
      if (this.held.length > 0) {
        for (const b of this.held) this.emit(b);
        this.held = [];
      }
      // Most chunks are one whole event: they go on as they came.
      this.emit(this.seg === 0 && end === this.chunk.length ? this.chunk : this.chunk.subarray(this.seg, end));
    }
    if (this.held.length > 0) this.held = [];
    this.heldSize = 0;
    this.passing = false;
    this.lastWithheld = drop;
    this.seg = end;
    if (this.cutAfter !== undefined && !this.tally.final && !this.tally.complete && this.tally.exceeds(this.cutAfter)) this.cut();
  }

  private cut(): void {
    this.state = CUT;
    this.altered = true;
    this.held = [];
    // The event's blank line ended in a CR at the end of the chunk: its LF (if any) never comes, and
    // a reader that splits lines on LF alone would run that CR into the next line.
    if (this.splitter?.crPending === true) this.emit(LF);
    const end = this.reader?.end(this.framing === 'json' ? 'array' : 'sse') ?? '';
    if (end !== '') this.emit(Buffer.from(end));
  }

  private dataLine(reader: Reader): void {
    if (!this.hasData) {
      this.hasData = true;
      this.dataLength = 0;
      this.doneLength = 0;
      this.event = undefined;
      this.scanning = false;
      this.sort = SKIP;
      this.piece = undefined;
      this.gathered = false;
      this.evStart = this.kept?.size ?? 0;
      if (this.state !== OPEN || !reader.wants(this.splitter?.event ?? '')) return;
      if (this.lazy === undefined) {
        this.scanning = true;
        this.events?.reset();
        return;
      }
      const sort = this.lazy.byName(this.splitter?.event ?? '');
      if (sort === READ) {
        // Read as it comes: it may be large (a whole response), and is needed anyway.
        this.scanning = true;
        this.events?.reset();
        return;
      }
      // Text is kept only while it may be counted; an event to check may still have to be read.
      this.sort = sort !== CHECK && !this.needText() ? SKIP : sort;
      return;
    }
    this.dataLength++;
    if (this.scanning) this.events?.write(LF);
    else if (this.sort !== SKIP && (!this.gather() || !(this.kept as KeptEvents).appendByte(LF_BYTE))) this.overflow(LF, 0, 1);
  }

  private data(buf: Buffer, start: number, end: number): void {
    // Enough to recognise `[DONE]`, which is not JSON.
    if (this.doneLength === this.dataLength && this.doneLength < DONE.length) {
      for (let i = start; i < end && this.doneLength < DONE.length && buf[i] === DONE[this.doneLength]; i++) this.doneLength++;
    }
    this.dataLength += end - start;
    if (this.scanning) this.events?.write(buf, start, end);
    else if (this.sort !== SKIP) {
      if (!this.gathered && this.piece === undefined) {
        this.piece = buf;
        this.pieceStart = start;
        this.pieceEnd = end;
      } else if (!this.gather() || !(this.kept as KeptEvents).append(buf, start, end)) this.overflow(buf, start, end);
    }
  }

  /** The event's data comes in more than one piece: it is copied to {@link kept} as it comes. */
  private gather(): boolean {
    if (this.gathered) return true;
    this.gathered = true;
    const piece = this.piece;
    if (piece === undefined) return true;
    this.piece = undefined;
    if ((this.kept as KeptEvents).append(piece, this.pieceStart, this.pieceEnd)) return true;
    this.piece = piece;
    return false;
  }

  /**
   * Kept data reached {@link MAX_KEPT}: from the current event on, the stream is read as it comes
   * (what was kept stays, to be read if needed). The current event's data so far, then
   * `buf[start, end)`, go to the scanner.
   */
  private overflow(buf: Buffer, start: number, end: number): void {
    const kept = this.kept as KeptEvents;
    this.lazy = undefined;
    this.scanning = true;
    this.events?.reset();
    if (this.piece !== undefined) this.events?.write(this.piece, this.pieceStart, this.pieceEnd);
    else if (this.gathered) this.events?.write(kept.buf, this.evStart, kept.size);
    this.piece = undefined;
    this.gathered = false;
    kept.size = this.evStart;
    this.events?.write(buf, start, end);
  }

  /** Whether delivered text may still be counted: no final report yet, nor both a report and the end. */
  private needText(): boolean {
    const t = this.tally;
    return !t.final && !(t.usage !== undefined && t.complete);
  }

  /** An SSE event ended: reads it; returns whether it is to be withheld. */
  private dispatch(reader: Reader, event: string): boolean {
    if (!this.hasData) return false;
    this.hasData = false;
    if (this.dataLength === DONE.length && this.doneLength === DONE.length) {
      this.tally.complete = true;
      this.piece = undefined;
      if (this.kept !== undefined) this.kept.size = this.evStart;
      this.settled(false);
      return false;
    }
    if (this.scanning) {
      const record = this.event;
      this.event = undefined;
      const withhold = record !== undefined && reader.read(record, event);
      this.settled(true);
      return withhold;
    }
    const lazy = this.lazy;
    const kept = this.kept;
    if (lazy === undefined || kept === undefined || this.sort === SKIP) return false;
    // The event's data: one piece of a chunk, or gathered in `kept` past its last event.
    const piece = this.piece;
    this.piece = undefined;
    const buf = piece ?? kept.buf;
    const start = piece === undefined ? this.evStart : this.pieceStart;
    const end = piece === undefined ? kept.size : this.pieceEnd;
    let sort = this.sort;
    if (sort === CHECK) {
      let found = 0;
      if (piece !== undefined) {
        for (let i = 0; i < this.marks.length; i++) if ((this.marks[i] as MarkFinder).in(buf, start, end, true)) found |= 1 << i;
      } else {
        // A fresh view, so that no search runs past the event's data.
        const view = buf.subarray(start, end);
        for (let i = 0; i < this.marks.length; i++) if ((this.marks[i] as MarkFinder).in(view, 0, view.length, false)) found |= 1 << i;
      }
      sort = lazy.byData(found);
    }
    if (sort !== READ && !this.needText()) sort = SKIP;
    if (sort === SKIP) {
      kept.size = this.evStart;
      return false;
    }
    if (sort !== READ && (piece === undefined || kept.append(buf, start, end))) {
      const index = kept.push(event);
      this.tally.keep(index);
      if (sort === LATEST) this.latest = index;
      return false;
    }
    // To be read now (or, with no room left to keep it, read now and the rest of the stream as it comes).
    if (sort !== READ) this.lazy = undefined;
    const record = parseEvent(buf, start, end, reader.paths);
    kept.size = this.evStart;
    const withhold = record !== undefined && reader.read(record, event);
    this.settled(true);
    return withhold;
  }

  /**
   * After an event: once the final usage and the end are known, what was kept is dropped. `read`:
   * the event was read, and a LATEST event kept before it is no longer the latest report.
   */
  private settled(read: boolean): void {
    if (this.kept === undefined) return;
    if (read) this.latest = -1;
    const t = this.tally;
    if (t.usage !== undefined && t.complete) {
      this.kept.release();
      this.tally.forget();
    }
  }

  /** A lazy stream that ended without its final report: the latest report it kept is read (its text is kept already). */
  private readLatest(): void {
    const kept = this.kept;
    const index = this.latest;
    if (kept === undefined || this.reader === undefined || index < 0) return;
    this.latest = -1;
    if (this.tally.final) return;
    this.tally.muted = true;
    try {
      const record = parseEvent(kept.buf, kept.start(index), kept.ends[index] as number, this.reader.paths);
      if (record !== undefined) this.reader.read(record, kept.names[index] as string);
    } catch {
      // Metering only.
    } finally {
      this.tally.muted = false;
    }
  }

  /** The texts of kept events up to `to`, read through a reader of their own (the stream's has moved on). */
  private resolve(to: number, add: (text: string) => void): void {
    const kept = this.kept;
    if (kept === undefined) return;
    this.sinkReader ??= readerFor(this.request, false, this.sink);
    const reader = this.sinkReader;
    if (reader === undefined) return;
    this.sink.add = add;
    for (let i = kept.resolved; i < to && i < kept.ends.length; i++) {
      try {
        const record = parseEvent(kept.buf, kept.start(i), kept.ends[i] as number, reader.paths);
        if (record !== undefined) reader.read(record, kept.names[i] as string);
      } catch {
        // Metering only: this event's text is not counted.
      }
    }
    kept.resolved = Math.max(kept.resolved, to);
  }

  /** The LF of a blank line's CR LF arrived with the next chunk: it goes where its event went. */
  private extend(end: number): void {
    if (this.state !== OPEN || !this.holding) return;
    if (!this.lastWithheld) this.emit(this.chunk.subarray(this.seg, end));
    this.seg = end;
  }

  private message(reader: Reader, message: EventStreamMessage, end: number): void {
    if (this.state !== OPEN) return;
    const type = message.headers.get(':message-type');
    if (type === undefined || type === 'event') {
      let payload: unknown;
      try {
        payload = JSON.parse(message.payload.toString('utf8'));
      } catch {
        payload = undefined;
      }
      if (typeof payload === 'object' && payload !== null && !Array.isArray(payload)) reader.read(payload as JsonRecord, message.headers.get(':event-type') ?? '');
    }
    this.unitEnd(end, false);
  }

  /** A JSON body that stopped short: the text of its unfinished record was delivered too. */
  private readPartial(): void {
    if (this.partialRead || this.body === undefined || this.reader === undefined || !this.metering || this.holding || this.state === CUT || this.body.done) return;
    this.partialRead = true;
    const record = this.body.partial();
    if (record === undefined) return;
    const complete = this.tally.complete;
    try {
      this.reader.read(record, '');
    } catch {
      // Metering only.
    }
    this.tally.complete = complete;
  }
}

/** The body transform of one {@link Meter}; after a cut its readable side ends and later input is ignored. */
class MeterStream extends Transform {
  constructor(private readonly meter: Meter) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const open = !this.meter.wasCut;
    const out = this.meter.write(chunk);
    for (let i = 0; i < out.length; i++) this.push(out[i]);
    if (open && this.meter.wasCut) {
      this.push(null);
      this.meter.fire();
    }
    callback();
  }

  override _flush(callback: TransformCallback): void {
    const out = this.meter.end();
    for (let i = 0; i < out.length; i++) this.push(out[i]);
    callback();
  }
}

/**
 * A meter for one response to a metered request. Its transform (or {@link ResponseMeter.whole}) sees
 * the body after content decoding; bytes pass at once and unchanged, except:
 * - with `request.addUsage`, the usage-only chunk Valet asked for is withheld; to do that, the bytes
 *   of an incomplete SSE event are held until its blank line arrives;
 * - with `options.cutAfter`, the same holding applies (SSE events, Gemini's JSON array elements,
 *   Bedrock event-stream messages) so that the stream is cut between units: once the output passes
 *   the limit, the API's own end events are written (none for Bedrock: its stream just stops), the
 *   readable side ends, the cut listeners run and later input is ignored.
 * Responses that are not 2xx are never held back or cut.
 */
export function createMeter(request: LlmRequest, response: MeteredResponseHead, options: MeterOptions = {}): ResponseMeter {
  return new Meter(request, response, options);
}
