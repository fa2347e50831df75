import type { Readable, Transform } from 'node:stream';
import { readAll } from '../read.js';
import {
  brotliCompressSync,
  brotliDecompressSync,
  constants,
  createBrotliCompress,
  createBrotliDecompress,
  createGunzip,
  createGzip,
  createInflate,
  gunzipSync,
  gzipSync,
  inflateSync,
} from 'node:zlib';
import type { UpstreamConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { UpstreamResponse } from './forward.js';
import { forwardableResponseHeaders } from './headers.js';
import type { AgentOrigin } from './location.js';
import type { Scrubber } from './scrub.js';

/**
 * Content codings Valet can undo to scrub a body. Valet asks for `identity`; these cover an
 * upstream that compresses anyway. Anything else (zstd, compress, stacked codings) is refused.
 */
const DECODERS: Readonly<Record<string, () => Transform>> = {
  gzip: createGunzip,
  'x-gzip': createGunzip,
  deflate: createInflate,
  br: createBrotliDecompress,
};

/**
 * Encoders for a scrubbed body sent in the coding the upstream used, when the agent accepts it.
 * Every write is flushed, so a stream (SSE) still reaches the agent event by event; a fast level,
 * since this runs on the request path.
 */
const ENCODERS: Readonly<Record<string, () => Transform>> = {
  gzip: () => createGzip({ level: 4, flush: constants.Z_SYNC_FLUSH }),
  br: () => createBrotliCompress({ flush: constants.BROTLI_OPERATION_FLUSH, params: { [constants.BROTLI_PARAM_QUALITY]: 4 } }),
};

/**
 * The same codings for a small body read whole: a stream per response costs ~0.2 ms (zlib's state
 * and the stream machinery), the synchronous calls ~5–15 µs for a kilobyte.
 */
const DECODE_WHOLE: Readonly<Record<string, (b: Buffer) => Buffer>> = {
  gzip: (b) => gunzipSync(b, { maxOutputLength: MAX_DECODED }),
  'x-gzip': (b) => gunzipSync(b, { maxOutputLength: MAX_DECODED }),
  deflate: (b) => inflateSync(b, { maxOutputLength: MAX_DECODED }),
  br: (b) => brotliDecompressSync(b, { maxOutputLength: MAX_DECODED }),
};
const ENCODE_WHOLE: Readonly<Record<string, (b: Buffer) => Buffer>> = {
  gzip: (b) => gzipSync(b, { level: 4 }),
  br: (b) => brotliCompressSync(b, { params: { [constants.BROTLI_PARAM_QUALITY]: 4 } }),
};
/** The upstream's headers that describe the bytes it sent, not those a scrubbed body is sent as. */
const BODY_FRAMING: ReadonlySet<string> = new Set(['content-length', 'content-encoding']);

/** A small compressed body may not expand beyond this (a decompression bomb is refused, 502). */
const MAX_DECODED = 64 * 1024 * 1024;

/**
 * Scrubbed bodies of at most this many bytes (as received), with a declared length, are read
 * whole, decoded if compressed, scrubbed, encoded again if the agent takes the coding, and sent
 * with their exact `Content-Length` in one write, instead of streaming chunked through a
 * scrubbing transform (which costs a stream per response and a socket write of its own for the
 * terminating chunk). Longer and unsized (SSE) bodies stream.
 */
export const WHOLE_BODY_MAX = 64 * 1024;

/**
 * Reads the body the agent is sent, decoded and scrubbed (LLM usage metering): a transform for a
 * streamed body, a function for one read whole. Either may hold back or change what it passes on.
 */
export interface BodyObserver {
  readonly transform: Transform;
  /** Absent: the body must stream through `transform` (it is never read whole). */
  readonly whole?: (body: Buffer) => Buffer;
}

export type AgentResponse =
  | {
      readonly headers: Record<string, string | string[]>;
      /** The body to relay to the agent: the upstream's, or that body decoded and scrubbed. */
      readonly body: Readable;
      readonly whole?: undefined;
    }
  | {
      readonly headers: Record<string, string | string[]>;
      readonly body?: undefined;
      /** Reads the upstream's body whole; `body` scrubbed (its length set in `headers`), `upstreamBytes` as received. */
      readonly whole: () => Promise<{ body: Buffer; upstreamBytes: number }>;
    };

/**
 * What the agent receives for an upstream response. URLs on the upstream's origin in `Location`,
 * `Content-Location` and `Link` point back through Valet at `origin` (Valet as the agent reached
 * it). With scrubbing on, header values are scrubbed
 * and the body goes through the scrubber: whole when it is small (see {@link WHOLE_BODY_MAX}),
 * sent with the scrubbed body's `Content-Length`; otherwise as it streams (after decompression, if
 * the upstream compressed it), without `Content-Length`. The upstream's `Content-Length` and
 * `Content-Encoding` are dropped because the bytes sent differ from the upstream's. A content
 * coding the scrubber cannot undo is refused (502) before anything is sent, so no unscrubbed byte
 * reaches the agent.
 */
export function agentResponse(
  upstream: UpstreamConfig,
  method: string,
  res: UpstreamResponse,
  scrubber: Scrubber,
  origin: AgentOrigin,
  mount = `/${upstream.name}`,
  accepted: readonly string[] = [],
  observers: readonly BodyObserver[] = [],
): AgentResponse {
  // A scrubbed body's length and coding are the ones Valet sends, set below: the upstream's are left
  // out from the start (deleting them afterwards would make `headers` a slow dictionary object).
  const scrubbing = upstream.scrubResponses !== false;
  const headers = forwardableResponseHeaders(res.headers, upstream, scrubber, origin, mount, scrubbing ? BODY_FRAMING : undefined);
  if (!scrubbing) {
    // Unscrubbed bytes are relayed as they come (compressed, if the upstream compressed them); an observer reads them as they are.
    if (observers.length === 0 || method === 'HEAD') return { headers, body: res.body };
    return { headers, body: chain(res.body, observers.map((o) => o.transform)) };
  }

  const coding = res.headers['content-encoding'];
  const name = typeof coding === 'string' ? coding.trim().toLowerCase() : undefined;
  const decoder = name === undefined || name === 'identity' ? undefined : DECODERS[name];
  if (coding !== undefined && name !== 'identity' && decoder === undefined) {
    // Close the upstream body unread; undici reports that as an abort, which is expected here.
    res.body.on('error', () => undefined);
    res.body.destroy();
    const shown = scrubber.redact([coding].flat().join(', ')).slice(0, 64);
    throw new ValetError('VALET_ERR_UPSTREAM_ENCODING', `The upstream's response is encoded as "${shown}", which Valet cannot scrub; nothing was forwarded.`);
  }
  // No body follows these; a decoder would fail on the empty input.
  if (method === 'HEAD' || res.statusCode === 204 || res.statusCode === 304 || res.statusCode < 200) return { headers, body: res.body };
  const observing = observers.map((o) => o.transform);
  // A compressed body is decoded, scrubbed, and encoded again in the upstream's coding when the
  // agent takes it (Valet asked only for codings the agent takes); otherwise it is sent decoded.
  const recoding = name === 'x-gzip' ? 'gzip' : name;
  const reencode = decoder !== undefined && recoding !== undefined && accepted.includes(recoding) && ENCODERS[recoding] !== undefined;
  if (reencode) {
    headers['content-encoding'] = recoding;
    const vary = [headers['vary'] ?? []].flat().join(', ');
    if (!/(^|,)\s*(accept-encoding|\*)\s*(,|$)/i.test(vary)) headers['vary'] = vary === '' ? 'accept-encoding' : `${vary}, accept-encoding`;
  }
  const declared = res.headers['content-length'];
  if (typeof declared === 'string' && /^\d{1,9}$/.test(declared) && Number(declared) <= WHOLE_BODY_MAX && observers.every((o) => o.whole !== undefined)) {
    return {
      headers,
      whole: async () => {
        const raw = await readAll(res.body);
        let decoded = raw;
        if (name !== undefined && name !== 'identity') {
          try {
            decoded = (DECODE_WHOLE[name] as (b: Buffer) => Buffer)(raw);
          } catch (err) {
            throw new ValetError('VALET_ERR_UPSTREAM_ENCODING', `The upstream's ${name} body could not be decoded (${(err as { code?: string }).code ?? 'corrupt'}); nothing was forwarded.`);
          }
        }
        let scrubbed = scrubber.whole(decoded);
        for (const o of observers) scrubbed = (o.whole as (b: Buffer) => Buffer)(scrubbed);
        const body = reencode ? (ENCODE_WHOLE[recoding] as (b: Buffer) => Buffer)(scrubbed) : scrubbed;
        headers['content-length'] = String(body.length);
        return { body, upstreamBytes: raw.length };
      },
    };
  }
  if (decoder === undefined) return { headers, body: chain(res.body, [scrubber.stream(), ...observing]) };
  return { headers, body: chain(res.body, reencode ? [decoder(), scrubber.stream(), ...observing, (ENCODERS[recoding] as () => Transform)()] : [decoder(), scrubber.stream(), ...observing]) };
}

/**
 * Pipes `source` through `stages` and returns the last. A failure anywhere reaches the last stage
 * (so the relay sees it, with the original error for timeout mapping), and when the last stage is
 * torn down — finished, or destroyed because the agent left — everything before it is torn down
 * too, so the upstream connection is never reused half-read. `stream.pipeline` does this too, but
 * builds an AbortController per call (see proxy/relay.ts).
 */
function chain(source: Readable, stages: readonly Transform[]): Readable {
  let last: Readable = source;
  for (const stage of stages) {
    last.on('error', (err: Error) => stage.destroy(err));
    last.pipe(stage);
    last = stage;
  }
  last.once('close', () => {
    for (const s of [source, ...stages]) if (!s.destroyed) s.destroy();
  });
  return last;
}
