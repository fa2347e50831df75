import { Transform, type TransformCallback } from 'node:stream';
import { ValetError } from '../errors.js';
import { RedactionError, redactNdjson, redactSse, type KeepMatch, type Redactor } from './redact.js';
import type { BodyObserver } from './response.js';

/** The most bytes of one SSE event or NDJSON line, of a body redacted whole, or of an answer held for approval. */
export const MAX_REDACTED_BYTES = 16 * 1024 * 1024;

/** Bodies nothing can be redacted in: their bytes are not text. */
const BINARY = /^(image|audio|video|font)\/|^application\/(octet-stream|pdf|zip|gzip|x-tar|vnd\.|protobuf|x-protobuf|grpc|cbor|msgpack)/i;

/**
 * How response rules' redactions reach an answer, by its content type: an event stream is redacted
 * event by event and NDJSON line by line, both still streaming; anything else (JSON, text, no type)
 * is read whole, up to {@link MAX_REDACTED_BYTES}, and redacted as JSON when it parses (whatever its
 * type claims: an upstream cannot dodge field rules by mislabelling JSON) and by patterns otherwise.
 * A binary body cannot be redacted: it is refused (`VALET_ERR_RESPONSE_BLOCKED`), never passed on.
 * `counted` hears how many values were replaced.
 */
export function redactionObserver(redactor: Redactor, keep: KeepMatch | undefined, contentType: string | undefined, counted: (n: number) => void): BodyObserver {
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  const options = { keep, onRedacted: counted };
  if (type === 'text/event-stream') return { transform: redactSse(redactor, { maxEventBytes: MAX_REDACTED_BYTES, ...defined(options) }) };
  if (type === 'application/x-ndjson' || type === 'application/jsonl' || type === 'application/json-seq') {
    return { transform: redactNdjson(redactor, { maxLineBytes: MAX_REDACTED_BYTES, ...defined(options) }) };
  }
  if (BINARY.test(type)) throw blocked(`its content type (${type.slice(0, 64)}) is not text, so it cannot be redacted`);
  const whole = (body: Buffer): Buffer => {
    const text = body.toString('utf8');
    const json = redactor.json(text, keep);
    const done = json ?? redactor.text(text, keep);
    if (done.count > 0) counted(done.count);
    return done.count === 0 ? body : Buffer.from(done.text);
  };
  return { transform: new WholeBody(whole), whole };
}

/** A stream read whole (bounded), then transformed at its end. */
class WholeBody extends Transform {
  private readonly chunks: Buffer[] = [];
  private size = 0;

  constructor(private readonly transformWhole: (body: Buffer) => Buffer) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > MAX_REDACTED_BYTES) return callback(new RedactionError('body too large'));
    this.chunks.push(chunk);
    callback();
  }

  override _flush(callback: TransformCallback): void {
    try {
      callback(null, this.transformWhole(Buffer.concat(this.chunks, this.size)));
    } catch (err) {
      callback(err as Error);
    }
  }
}

/** A response rule's refusal of an answer. */
export function blocked(why: string, rule?: string): ValetError {
  return new ValetError('VALET_ERR_RESPONSE_BLOCKED', `The upstream's answer was withheld${rule === undefined ? '' : ` by response rule ${rule}`}: ${why}.`, rule === undefined ? {} : { extra: { rule, reason: why } });
}

/** A failure while the answer was redacted, as the agent is told it. */
export function redactionFailure(err: unknown): ValetError | undefined {
  if (err instanceof ValetError && err.code === 'VALET_ERR_RESPONSE_BLOCKED') return err;
  if (err instanceof RedactionError) return blocked(`it could not be redacted (${err.message})`);
  return undefined;
}

function defined<T extends object>(o: T): { [K in keyof T]: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]: Exclude<T[K], undefined> };
}
