import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import type { Readable, Writable } from 'node:stream';

/**
 * Says when the agent hung up before its response was complete, in the form undici accepts as a
 * request `signal` (an emitter of `abort`). `AbortController` would do the same, but it costs an
 * EventTarget per request and a DOMException with a captured stack on every abort; profiles of
 * the request path showed that as ~5 % of its CPU.
 */
export class HangUp extends EventEmitter {
  aborted = false;

  constructor(res: ServerResponse) {
    super();
    res.once('close', () => {
      if (received(res)) return;
      this.aborted = true;
      this.emit('abort');
    });
  }
}

/**
 * Streams an upstream body to the agent, keeping back-pressure, and settles when the agent has the
 * whole body (resolve) or either side failed (reject; the upstream body is destroyed so its
 * connection is not reused half-read). `stream.pipeline` does the same but builds and aborts an
 * AbortController per call, which shows up on the request path's profile.
 */
export function relay(body: Readable, res: ServerResponse): Promise<void> {
  const settled = delivered(res, body);
  body.pipe(res);
  return settled;
}

/** Sends a whole body in one write and settles like {@link relay}: the agent has it, or hung up first. */
export function sendWhole(body: Buffer, res: ServerResponse): Promise<void> {
  const settled = delivered(res);
  res.end(body);
  return settled;
}

/**
 * The HTTP/2 stream under a response from Node's compatibility API. Its response emits `finish`
 * only when the stream closes, after the agent's side too, and then even when the agent reset it
 * (RST_STREAM), with `writableFinished` set: the stream tells a response written from one cut off.
 */
function http2Stream(res: ServerResponse): Http2ServerResponse['stream'] | undefined {
  return (res as unknown as Partial<Http2ServerResponse>).stream;
}

/** Whether the whole response was written before `res` closed (the agent did not hang up first). */
function received(res: ServerResponse): boolean {
  const stream = http2Stream(res);
  return stream === undefined ? res.writableFinished : !stream.aborted && stream.writableFinished;
}

/** Settles when `res` has finished (resolve), or closed first or `source` failed (reject; `source` is torn down). */
function delivered(res: ServerResponse, source?: Readable): Promise<void> {
  // HTTP/2: the stream's own `finish` (the response written), not the agent's end of the request.
  const written: Writable = http2Stream(res) ?? res;
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      source?.off('error', done);
      written.off('finish', onFinish);
      res.off('close', onClose);
      if (err === undefined) return resolve();
      if (source !== undefined) {
        source.unpipe(res);
        source.destroy();
      }
      reject(err);
    };
    const cutOff = (): Error => new Error('the agent closed the connection before the response was complete');
    const onFinish = (): void => done(written === res || received(res) ? undefined : cutOff());
    const onClose = (): void => {
      if (!received(res)) done(cutOff());
    };
    source?.once('error', done);
    written.once('finish', onFinish);
    res.once('close', onClose);
  });
}
