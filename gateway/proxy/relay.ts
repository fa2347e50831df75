import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

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
      if (res.writableFinished) return;
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

/** Settles when `res` has finished (resolve), or closed first or `source` failed (reject; `source` is torn down). */
function delivered(res: ServerResponse, source?: Readable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      source?.off('error', done);
      res.off('finish', onFinish);
      res.off('close', onClose);
      if (err === undefined) return resolve();
      if (source !== undefined) {
        source.unpipe(res);
        source.destroy();
      }
      reject(err);
    };
    const onFinish = (): void => done();
    const onClose = (): void => {
      if (!res.writableFinished) done(new Error('the agent closed the connection before the response was complete'));
    };
    source?.once('error', done);
    res.once('finish', onFinish);
    res.once('close', onClose);
  });
}
