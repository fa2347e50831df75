/**
 * Server-Sent Events split incrementally over bytes, as the WHATWG parser reads them: lines end in
 * CR LF, LF or CR; a blank line ends an event. Nothing is buffered but the event name: field names
 * are matched byte by byte, and `data` values go to the handler piece by piece, straight from the
 * chunk, so an event of any size costs no memory, a `data` line no allocation, and UTF-8 split
 * across chunks needs no care (data bytes are passed on as bytes; line ends and field names are
 * ASCII).
 */

/** Receives one stream's events as they are read. */
export interface SseHandler {
  /** A `data` line begins: the event's first, or a further one (its value joins with a LF). */
  dataLine(): void;
  /** Bytes of the current `data` line's value, `buf[start, end)`. */
  data(buf: Buffer, start: number, end: number): void;
  /** A blank line: the event named `event` ('' for none) ends at `end`, just past the blank line. */
  boundary(event: string, end: number): void;
  /**
   * The LF of the blank line's CR LF came at the start of the next chunk: the event just ended
   * extends to `end` there.
   */
  extend(end: number): void;
}

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

/** Longer event names are none an API uses. */
const MAX_EVENT = 128;
/** The two field names that matter. */
const DATA_NAME = Buffer.from('data');
const EVENT_NAME = Buffer.from('event');

// What the current line is.
const NAME = 0;
const DATA = 1;
const EVENT = 2;
const OTHER = 3;

/** One stream's splitter. */
export class SseSplitter {
  /** The current event's name so far ('' until an `event` line is read). */
  event = '';
  private field = NAME;
  // The field name so far: its length, and whether it may still be `data` or `event`.
  private nameLength = 0;
  private maybeData = true;
  private maybeEvent = true;
  private lineLength = 0;
  private skipSpace = false;
  private cr = false;
  private lastBlank = false;

  constructor(private readonly handler: SseHandler) {}

  /** The last chunk ended in a CR: a LF starting the next one belongs to the same line end. */
  get crPending(): boolean {
    return this.cr;
  }

  write(buf: Buffer): void {
    const len = buf.length;
    let i = 0;
    if (this.cr && len > 0) {
      this.cr = false;
      if (buf[0] === LF) {
        i = 1;
        if (this.lastBlank) this.handler.extend(1);
      }
    }
    // Next LF / CR at or after i; -1 when there is none left in buf (not searched again).
    let lf = -2;
    let cr = -2;
    while (i < len) {
      if (lf !== -1 && lf < i) lf = buf.indexOf(LF, i);
      if (cr !== -1 && cr < i) cr = buf.indexOf(CR, i);
      const t = lf === -1 ? cr : cr === -1 ? lf : Math.min(lf, cr);
      if (t !== i) this.bytes(buf, i, t === -1 ? len : t);
      if (t === -1) return;
      let next = t + 1;
      if (buf[t] === CR) {
        if (next === len) this.cr = true;
        else if (buf[next] === LF) next++;
      }
      const blank = this.endLine();
      this.lastBlank = blank;
      i = next;
      if (blank) {
        const event = this.event;
        this.event = '';
        this.handler.boundary(event, next);
      }
    }
  }

  /** The end of the stream: finishes an unterminated line; returns the unfinished event's name. */
  end(): string {
    if (this.lineLength > 0) this.endLine();
    return this.event;
  }

  private bytes(buf: Buffer, start: number, end: number): void {
    this.lineLength += end - start;
    if (this.field === NAME) {
      const colon = buf.indexOf(COLON, start);
      const stop = colon === -1 || colon >= end ? end : colon;
      for (let i = start, n = this.nameLength; i < stop && (this.maybeData || this.maybeEvent); i++, n++) {
        const c = buf[i];
        if (c !== DATA_NAME[n]) this.maybeData = false;
        if (c !== EVENT_NAME[n]) this.maybeEvent = false;
      }
      this.nameLength += stop - start;
      if (stop === end) return;
      this.startField();
      start = stop + 1;
      this.skipSpace = true;
    }
    if (start < end && this.skipSpace) {
      if (buf[start] === SPACE) start++;
      this.skipSpace = false;
    }
    if (start >= end) return;
    if (this.field === DATA) this.handler.data(buf, start, end);
    else if (this.field === EVENT && this.event.length < MAX_EVENT) this.event += buf.toString('latin1', start, Math.min(end, start + MAX_EVENT));
  }

  /** The field name is complete (a colon, or the end of a line without one). */
  private startField(): void {
    if (this.maybeData && this.nameLength === DATA_NAME.length) {
      this.field = DATA;
      this.handler.dataLine();
    } else if (this.maybeEvent && this.nameLength === EVENT_NAME.length) {
      this.field = EVENT;
      this.event = '';
    } else {
      this.field = OTHER;
    }
  }

  /** Returns whether the line was blank. */
  private endLine(): boolean {
    if (this.lineLength === 0) return true;
    if (this.field === NAME) this.startField();
    this.field = NAME;
    this.nameLength = 0;
    this.maybeData = true;
    this.maybeEvent = true;
    this.lineLength = 0;
    this.skipSpace = false;
    return false;
  }
}
