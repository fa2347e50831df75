import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { ValetError } from '../errors.js';

/** What one request body may cost: bytes, and time (whole, and between two pieces). */
export interface BodyLimits {
  readonly maxBytes: number;
  readonly idleMs: number;
  readonly totalMs: number;
}

const noop = (): void => {};

/** The body guard of a request, for the listeners and timers shared by every guard (no closures per request). */
const GUARD = Symbol('valet.requestBody');
type Guarded = IncomingMessage & { [GUARD]?: RequestBody };

function onData(this: Guarded, chunk: Buffer): void {
  this[GUARD]?.requestData(chunk);
}
function onEnd(this: Guarded): void {
  this[GUARD]?.requestEnded();
}
function onClose(this: Guarded): void {
  this[GUARD]?.requestClosed();
}
function onIdle(body: RequestBody): void {
  body.idleFired();
}
function onOverall(body: RequestBody): void {
  body.overallFired();
}

/**
 * A request body as Valet takes it up: every body, whether policy reads it or it is streamed to the
 * upstream, passes through here and is held to the size limit and the two deadlines. Breaking one
 * destroys this stream with the coded error (413 or 408) and stops reading, so a consumer (policy's
 * read, undici's upload) fails instead of completing short: undici then aborts the upstream request
 * rather than finishing it with a truncated body. The idle clock only runs while a reader wants
 * more, so a body waiting on Valet itself (back-pressure from a slow upstream) is not blamed on the
 * agent; the whole-body deadline always runs.
 */
export class RequestBody extends Readable {
  /** Bytes received so far. */
  bytes = 0;
  /** The limit or deadline the body broke, once it did. */
  failure: ValetError | undefined;
  /** The whole body arrived. */
  complete = false;
  private readonly idle: NodeJS.Timeout;
  private readonly overall: NodeJS.Timeout;
  /** The body ended one way or another: the clocks are stopped for good. */
  private settled = false;
  /** The reader has all it asked for: pauses between pieces are Valet's, not the agent's. */
  private full = false;
  /** Nobody reads any more (the response is decided): the rest is counted and dropped. */
  private onDiscardFailure: (() => void) | undefined;

  constructor(
    private readonly req: IncomingMessage,
    private readonly limits: BodyLimits,
  ) {
    super({ highWaterMark: 65_536 });
    this.idle = setTimeout(onIdle, limits.idleMs, this);
    this.overall = setTimeout(onOverall, limits.totalMs, this);
    // A failure nobody is reading at that moment is found in `failure`; it must not crash the process.
    this.on('error', noop);
    (req as Guarded)[GUARD] = this;
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('close', onClose);
  }

  /**
   * The whole body as one buffer, taken from this stream, when all of it has arrived and nobody has
   * read any (a small body comes in the packet of its headers); otherwise undefined and the stream
   * is untouched. Forwarded as a buffer, a body is written with its headers at once instead of
   * through a stream: no async iterator, end-of-stream listeners or extra event-loop turns per call.
   */
  whole(): Buffer | undefined {
    if (!this.complete || this.failure !== undefined || this.destroyed || this.readableDidRead || this.readableFlowing !== null) return undefined;
    const n = this.readableLength;
    return n === 0 ? Buffer.alloc(0) : ((this.read(n) as Buffer | null) ?? undefined);
  }

  /** Stops keeping the body for anyone and drops the rest, still under the limits; `onFailure` runs if one is broken. */
  discard(onFailure: () => void): void {
    if (this.settled) return;
    this.onDiscardFailure = onFailure;
    this.full = false;
    this.idle.refresh();
    if (!this.destroyed) this.destroy();
    this.req.resume();
  }

  override _read(): void {
    if (this.settled) return;
    this.full = false;
    this.idle.refresh();
    this.req.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    // A reader that gave up (undici after an upstream failure, policy's read past max_body_bytes)
    // leaves the rest of the body to be dropped, still under the limits, so the connection stays usable.
    if (!this.complete && this.failure === undefined) this.req.resume();
    callback(err);
  }

  /** A piece of the body arrived (`data` on the request). */
  requestData(chunk: Buffer): void {
    this.bytes += chunk.length;
    if (this.bytes > this.limits.maxBytes) {
      this.fail(new ValetError('VALET_ERR_BODY_TOO_LARGE', `The request body exceeds ${this.limits.maxBytes} bytes.`));
      return;
    }
    this.idle.refresh();
    if (this.destroyed) return;
    if (!this.push(chunk)) {
      this.full = true;
      this.req.pause();
    }
  }

  /** The whole body arrived (`end` on the request). */
  requestEnded(): void {
    this.complete = true;
    this.stopClocks();
    if (!this.destroyed) this.push(null);
  }

  /** The request closed (`close`), perhaps before its body was complete. */
  requestClosed(): void {
    this.stopClocks();
    if (!this.complete && !this.destroyed) this.destroy(new Error('the agent closed the connection before its body was complete'));
  }

  /** The idle deadline passed; it counts only while a reader waits for more. */
  idleFired(): void {
    if (this.full) return;
    this.fail(new ValetError('VALET_ERR_REQUEST_TIMEOUT', `No part of the request body arrived for ${this.limits.idleMs} ms.`));
  }

  overallFired(): void {
    this.fail(new ValetError('VALET_ERR_REQUEST_TIMEOUT', `The request body did not arrive within ${this.limits.totalMs} ms.`));
  }

  private fail(err: ValetError): void {
    if (this.complete || this.failure !== undefined) return;
    this.failure = err;
    this.stopClocks();
    this.req.off('data', onData);
    if (this.onDiscardFailure !== undefined) {
      this.onDiscardFailure();
      return;
    }
    // Nothing more is kept; what still arrives before the answer closes the connection is dropped.
    this.req.resume();
    if (this.destroyed) return;
    this.destroy(err);
  }

  private stopClocks(): void {
    this.settled = true;
    clearTimeout(this.idle);
    clearTimeout(this.overall);
  }
}
