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
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      body.off('error', done);
      res.off('finish', onFinish);
      res.off('close', onClose);
      if (err === undefined) return resolve();
      body.unpipe(res);
      body.destroy();
      reject(err);
    };
    const onFinish = (): void => done();
    const onClose = (): void => {
      if (!res.writableFinished) done(new Error('the agent closed the connection before the response was complete'));
    };
    body.once('error', done);
    res.once('finish', onFinish);
    res.once('close', onClose);
    body.pipe(res);
  });
}
