/**
 * The AWS event stream (`application/vnd.amazon.eventstream`, Bedrock's streaming responses), read
 * incrementally across chunk boundaries. Each message: total length (4 bytes, big-endian), headers
 * length (4), prelude CRC (4), headers, payload, message CRC (4). The CRCs are not checked: the bytes
 * are forwarded as they came whatever they are, and metering only needs the messages' contents.
 */

/** One message: its string headers (`:event-type`, `:message-type`, ...) and its payload. */
export interface EventStreamMessage {
  readonly headers: ReadonlyMap<string, string>;
  readonly payload: Buffer;
}

/** Called per message; `end` is the offset just past it in the chunk being written. */
export type OnMessage = (message: EventStreamMessage, end: number) => void;

/** Bedrock's messages are far smaller; a longer one means the stream is not what it claims. */
const MAX_MESSAGE = 16 * 1024 * 1024;
const PRELUDE = 12;
const MIN_MESSAGE = PRELUDE + 4;

/** Fixed sizes of the non-string header value types (0, 1: booleans with no value; 6, 7: length-prefixed). */
const FIXED: Readonly<Record<number, number>> = { 0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16 };
const STRING = 7;
const BYTES = 6;

/** One stream's decoder. After a malformed prelude it reads nothing more ({@link failed}). */
export class EventStreamDecoder {
  private parts: Buffer[] = [];
  private have = 0;
  /** The current message's total length, once its first 4 bytes are in; 0 before. */
  private need = 0;
  private bad = false;

  constructor(private readonly onMessage: OnMessage) {}

  get failed(): boolean {
    return this.bad;
  }

  write(buf: Buffer): void {
    let i = 0;
    while (i < buf.length && !this.bad) {
      if (this.need === 0) {
        if (this.have + buf.length - i < 4) return this.keep(buf, i, buf.length);
        const head = this.parts.length === 0 ? buf : Buffer.concat([...this.parts, buf.subarray(i, i + 4)]);
        const total = head.readUInt32BE(this.parts.length === 0 ? i : 0);
        if (total < MIN_MESSAGE || total > MAX_MESSAGE) {
          this.bad = true;
          this.parts = [];
          return;
        }
        this.need = total;
      }
      const take = Math.min(this.need - this.have, buf.length - i);
      if (this.have + take < this.need) return this.keep(buf, i, i + take);
      const message = this.parts.length === 0 ? buf.subarray(i, i + take) : Buffer.concat([...this.parts, buf.subarray(i, i + take)]);
      i += take;
      this.parts = [];
      this.have = 0;
      this.need = 0;
      const decoded = decode(message);
      if (decoded === undefined) {
        this.bad = true;
        return;
      }
      this.onMessage(decoded, i);
    }
  }

  /** Copies, so that a message spread over many chunks holds only its own bytes. */
  private keep(buf: Buffer, start: number, end: number): void {
    if (end > start) this.parts.push(Buffer.from(buf.subarray(start, end)));
    this.have += end - start;
  }
}

function decode(message: Buffer): EventStreamMessage | undefined {
  const headersLength = message.readUInt32BE(4);
  const payloadStart = PRELUDE + headersLength;
  if (payloadStart + 4 > message.length) return undefined;
  const headers = new Map<string, string>();
  let p = PRELUDE;
  while (p < payloadStart) {
    const nameLength = message[p] as number;
    const name = message.toString('utf8', p + 1, p + 1 + nameLength);
    p += 1 + nameLength;
    const type = message[p];
    p++;
    if (type === STRING || type === BYTES) {
      if (p + 2 > payloadStart) return undefined;
      const length = message.readUInt16BE(p);
      if (type === STRING) headers.set(name, message.toString('utf8', p + 2, p + 2 + length));
      p += 2 + length;
    } else {
      const size = type === undefined ? undefined : FIXED[type];
      if (size === undefined) return undefined;
      p += size;
    }
  }
  if (p !== payloadStart) return undefined;
  return { headers, payload: message.subarray(payloadStart, message.length - 4) };
}
