import type { Readable } from 'node:stream';

/** What {@link readAll} may read at most, and what it rejects with past that. */
export interface ReadLimit {
  readonly max: number;
  readonly tooLarge: () => Error;
}

/**
 * Reads a stream to its end into one buffer, as `for await` would (the stream's error rejects; a
 * stream torn down before its end rejects as a premature close), but with one listener per event
 * instead of an async iterator and a promise per chunk: bodies read whole on every request
 * (policy's arguments, a small answer to scrub) then cost a fraction of the objects. Past
 * `limit.max` bytes the stream is destroyed (as leaving a `for await` early would) and
 * `limit.tooLarge()` rejects.
 */
export function readAll(stream: Readable, limit?: ReadLimit): Promise<Buffer> {
  const max = limit?.max ?? Number.POSITIVE_INFINITY;
  return new Promise<Buffer>((resolve, reject) => {
    if (stream.destroyed || stream.readableEnded) {
      const failed = stream.errored;
      if (failed !== null) reject(failed);
      else if (stream.readableEnded) resolve(Buffer.alloc(0));
      else reject(prematureClose());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > max) {
        finish();
        stream.destroy();
        reject((limit as ReadLimit).tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      finish();
      resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
    };
    const onError = (err: Error): void => {
      finish();
      reject(err);
    };
    const onClose = (): void => {
      if (done) return;
      finish();
      reject(stream.errored ?? prematureClose());
    };
    const finish = (): void => {
      done = true;
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.off('close', onClose);
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
    stream.once('close', onClose);
  });
}

function prematureClose(): Error {
  return Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}
