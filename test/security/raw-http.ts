/**
 * A raw HTTP/1.1 client over a plain TCP socket, for security tests: nothing between the test and
 * the gateway normalises the request line, the headers or the framing.
 */
import { connect } from 'node:net';

export interface RawResponse {
  status: number;
  /** Header names lower-cased, every copy kept. */
  headers: [string, string][];
  body: string;
}

export interface RawResult {
  /** Every complete response read from the socket, in order. */
  responses: RawResponse[];
  /** Everything the socket delivered, as latin1 text. */
  raw: string;
}

export interface RawOptions {
  /** Once this many responses are complete, wait `settleMs` more for extra ones, then stop. */
  expect?: number;
  settleMs?: number;
  /** Give up (and return what arrived) after this long. */
  timeoutMs?: number;
  /** Connect from this local address (another loopback address is another client). */
  localAddress?: string;
}

/** Sends `payload` verbatim to 127.0.0.1:`port` and collects the responses. */
export function sendRaw(port: number, payload: string | Buffer | (string | Buffer)[], o: RawOptions = {}): Promise<RawResult> {
  const expect = o.expect ?? 1;
  const settleMs = o.settleMs ?? 150;
  const timeoutMs = o.timeoutMs ?? 5_000;
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', ...(o.localAddress !== undefined && { localAddress: o.localAddress }) });
    let buf = Buffer.alloc(0);
    let done = false;
    let settle: NodeJS.Timeout | undefined;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(overall);
      if (settle) clearTimeout(settle);
      socket.destroy();
      resolve({ responses: parseResponses(buf), raw: buf.toString('latin1') });
    };
    const overall = setTimeout(finish, timeoutMs);
    socket.on('connect', () => {
      for (const part of [payload].flat()) socket.write(part);
    });
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (parseResponses(buf).length >= expect) {
        if (settle) clearTimeout(settle);
        settle = setTimeout(finish, settleMs);
      }
    });
    socket.on('close', finish);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A reset after the gateway answered and closed is fine; anything earlier is a test failure.
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') finish();
      else if (!done) {
        done = true;
        clearTimeout(overall);
        reject(err);
      }
    });
  });
}

/** Parses as many complete HTTP/1.1 responses as `buf` holds (Content-Length or chunked bodies). */
export function parseResponses(buf: Buffer): RawResponse[] {
  const out: RawResponse[] = [];
  let pos = 0;
  for (;;) {
    const headEnd = buf.indexOf('\r\n\r\n', pos);
    if (headEnd === -1) return out;
    const head = buf.subarray(pos, headEnd).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0] ?? '');
    if (!m) return out;
    const headers: [string, string][] = head.slice(1).map((line) => {
      const i = line.indexOf(':');
      return [line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()];
    });
    const get = (n: string): string | undefined => headers.find(([k]) => k === n)?.[1];
    let bodyStart = headEnd + 4;
    let body: Buffer;
    if (get('transfer-encoding')?.toLowerCase() === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const lineEnd = buf.indexOf('\r\n', bodyStart);
        if (lineEnd === -1) return out;
        const size = parseInt(buf.subarray(bodyStart, lineEnd).toString('latin1'), 16);
        if (Number.isNaN(size)) return out;
        if (size === 0) {
          // "0\r\n" then optional trailers then an empty line.
          const trailerEnd = buf.indexOf('\r\n\r\n', lineEnd);
          if (trailerEnd === -1) return out;
          bodyStart = trailerEnd + 4;
          break;
        }
        if (buf.length < lineEnd + 2 + size + 2) return out;
        parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
        bodyStart = lineEnd + 2 + size + 2;
      }
      body = Buffer.concat(parts);
    } else {
      const len = Number(get('content-length') ?? '0');
      if (buf.length < bodyStart + len) return out;
      body = buf.subarray(bodyStart, bodyStart + len);
      bodyStart += len;
    }
    out.push({ status: Number(m[1]), headers, body: body.toString('utf8') });
    pos = bodyStart;
  }
}

/** The `error.code` of a Valet JSON error body, or undefined when the body is not one. */
export function errorCode(res: RawResponse | undefined): string | undefined {
  if (!res) return undefined;
  try {
    const parsed = JSON.parse(res.body) as { error?: { code?: unknown } };
    return typeof parsed.error?.code === 'string' ? parsed.error.code : undefined;
  } catch {
    return undefined;
  }
}

/** Builds a request: request line, headers (verbatim, in order, duplicates allowed), body. */
export function rawRequest(requestLine: string, headers: [string, string][], body = ''): string {
  return `${requestLine}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${body}`;
}
