/**
 * Metering a response as it streams through: the usage it reports, read without buffering the body
 * and without delaying its bytes (see {@link createMeter}). The bytes are read as SSE (OpenAI,
 * Anthropic, Gemini `alt=sse`, Cohere), AWS event stream (Bedrock) or JSON (whole responses, and
 * Gemini's streamed JSON array), each value pruned to the few paths its API's reader needs
 * (readers.ts). When a response reports no usage, or stops before it does, the output is estimated
 * from the text actually delivered.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { countTokens } from 'gpt-tokenizer';
import { EventStreamDecoder, type EventStreamMessage } from './eventstream.js';
import { JsonScanner, type JsonRecord } from './json-scan.js';
import { bedrockHeaderUsage, readerFor, type Reader, type Tally } from './readers.js';
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
/** The most bytes of one SSE event, array element or event-stream message held back; a longer one is passed on as it comes. */
const MAX_HELD = 1024 * 1024;
const LF = Buffer.from('\n');
const OPEN_BRACKET = 0x5b;

/** Special-token text (`<|endoftext|>`) in an answer is text like any other, not an error. */
const AS_TEXT = { disallowedSpecial: new Set<string>() };

function tokens(text: string): number {
  try {
    return countTokens(text, AS_TEXT);
  } catch {
    return Math.ceil(text.length / 4);
  }
}

/**
 * The tally of one response. Delivered text is kept (bounded) until counted, and counted only when
 * needed: at the end when no usage was reported, or when a cut may be near.
 */
class TextTally implements Tally {
  usage: Usage | undefined = undefined;
  final = false;
  complete = false;
  model: string | undefined = undefined;
  private pending: string[] = [];
  private pendingLength = 0;
  private kept = 0;
  private counted = 0;

  text(text: string | undefined): void {
    if (text === undefined || text === '' || this.final) return;
    if (this.kept + text.length > MAX_TEXT) {
      this.counted += Math.ceil(text.length / 4);
      return;
    }
    this.kept += text.length;
    this.pending.push(text);
    this.pendingLength += text.length;
  }

  /** Tokens of the text delivered so far. */
  delivered(): number {
    if (this.pendingLength > 0) {
      this.counted += tokens(this.pending.join(''));
      this.pending = [];
      this.pendingLength = 0;
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
  // The chunk being written, what goes on of it, and where its current unit began.
  private out: Buffer[] = [];
  private chunk: Buffer = Buffer.alloc(0);
  private seg = 0;
  // SSE: the event being read.
  private readonly splitter: SseSplitter | undefined;
  private readonly events: JsonScanner | undefined;
  private hasData = false;
  private scanning = false;
  private head = '';
  private dataLength = 0;
  private event: JsonRecord | undefined;
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

  /** One chunk in; what goes on now. Never throws: a failure to read stops metering, not the bytes. */
  write(chunk: Buffer): Buffer[] {
    if (this.state !== OPEN) return [];
    this.out = [];
    this.chunk = chunk;
    this.seg = 0;
    if (this.metering) {
      try {
        this.feed(chunk);
      } catch {
        this.stop();
      }
    }
    if (this.wasCut) return this.out;
    const rest = this.seg === 0 ? chunk : chunk.subarray(this.seg);
    if (!this.holding || this.passing) this.emit(rest);
    else if (rest.length > 0) {
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
    if (this.state !== OPEN) return [];
    this.state = ENDED;
    this.out = [];
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
      for (const b of this.held) this.emit(b);
      this.emit(this.chunk.subarray(this.seg, end));
    }
    this.held = [];
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
      this.head = '';
      this.dataLength = 0;
      this.event = undefined;
      this.scanning = this.state === OPEN && reader.wants(this.splitter?.event ?? '');
      if (this.scanning) this.events?.reset();
      return;
    }
    this.dataLength++;
    if (this.head.length < 7) this.head += '\n';
    if (this.scanning) this.events?.write(LF);
  }

  private data(buf: Buffer, start: number, end: number): void {
    this.dataLength += end - start;
    // Enough to recognise `[DONE]`, which is not JSON.
    if (this.head.length < 7) this.head += buf.toString('latin1', start, Math.min(end, start + 7 - this.head.length));
    if (this.scanning) this.events?.write(buf, start, end);
  }

  /** An SSE event ended: reads it; returns whether it is to be withheld. */
  private dispatch(reader: Reader, event: string): boolean {
    if (!this.hasData) return false;
    this.hasData = false;
    if (this.dataLength === 6 && this.head === '[DONE]') {
      this.tally.complete = true;
      return false;
    }
    const record = this.event;
    this.event = undefined;
    return this.scanning && record !== undefined && reader.read(record, event);
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
    for (const b of this.meter.write(chunk)) this.push(b);
    if (open && this.meter.wasCut) {
      this.push(null);
      this.meter.fire();
    }
    callback();
  }

  override _flush(callback: TransformCallback): void {
    for (const b of this.meter.end()) this.push(b);
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
