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
    this.idle = setTimeout(this.onIdle, limits.idleMs);
    this.overall = setTimeout(this.onOverall, limits.totalMs);
    // A failure nobody is reading at that moment is found in `failure`; it must not crash the process.
    this.on('error', noop);
    req.on('data', this.onData);
    req.once('end', this.onEnd);
    req.once('close', this.onClose);
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

  private readonly onData = (chunk: Buffer): void => {
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
  };

  private readonly onEnd = (): void => {
    this.complete = true;
    this.stopClocks();
    if (!this.destroyed) this.push(null);
  };

  private readonly onClose = (): void => {
    this.stopClocks();
    if (!this.complete && !this.destroyed) this.destroy(new Error('the agent closed the connection before its body was complete'));
  };

  private readonly onIdle = (): void => {
    if (this.full) return;
    this.fail(new ValetError('VALET_ERR_REQUEST_TIMEOUT', `No part of the request body arrived for ${this.limits.idleMs} ms.`));
  };

  private readonly onOverall = (): void => {
    this.fail(new ValetError('VALET_ERR_REQUEST_TIMEOUT', `The request body did not arrive within ${this.limits.totalMs} ms.`));
  };

  private fail(err: ValetError): void {
    if (this.complete || this.failure !== undefined) return;
    this.failure = err;
    this.stopClocks();
    this.req.off('data', this.onData);
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
