import { fstatSync } from 'node:fs';
import { isatty } from 'node:tty';
import { pino, type DestinationStream, type Logger } from 'pino';

/**
 * Paths pino blanks before a line is written. Request lines carry no headers at all; these are the
 * second line of defence should a header object or a credential field ever be logged.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie',
  'headers.authorization',
  'headers["x-api-key"]',
  'headers.cookie',
  '*.token',
  '*.secret',
  '*.password',
  'token',
  'secret',
];

/** How long a log line may wait in the buffer of {@link logDestination} before it is written (ms). */
export const LOG_FLUSH_MS = 200;

/** What {@link logDestination} returns: pino's destination, that can also be flushed and closed. */
export interface LogDestination extends DestinationStream {
  /** Writes what is gathered; `cb` once it is written. */
  flush(cb?: (err?: Error) => void): void;
  /** Writes what is gathered before returning (process exit). */
  flushSync(): void;
  /** Writes what is gathered and closes the descriptor ('close' then). */
  end(): void;
  once(event: 'close', listener: () => void): this;
}

/** Gathered lines are handed to the writer once they reach this many characters. */
const GATHER_CHARS = 8192;

/**
 * A destination on a file descriptor (default stdout) that gathers lines and writes them about
 * 8 KiB at a time, or every {@link LOG_FLUSH_MS} ms, whichever comes first. A write per request
 * line costs a system call each, which showed as ~20 µs per request on the request path's profile.
 * `logger.flush()` on shutdown, and process exit, write what is gathered.
 *
 * How a gathered text is written depends on what the descriptor is ({@link writesAtOnce}): a file,
 * or a device that is not a terminal (`/dev/null`), takes it at once, so it is written there and
 * then, as pino writes by default. A pipe, a socket or a terminal may stop taking text when its
 * reader falls behind, which must not stop the event loop: there each text is written in libuv's
 * thread pool. On one CPU that round trip cost ~24 µs per request, 9 % of Valet's CPU, in the
 * benchmark, whose log goes to `/dev/null` (docs/performance.md).
 *
 * The lines are gathered here, in an array joined once per write, and written by pino's own
 * destination (SonicBoom: partial writes, EAGAIN, a closed pipe). Gathering in SonicBoom itself
 * (`minLength`) appends each line to one string and measures that string's byte length on every
 * line, which copies it whole: ~8 KB allocated for a 350-byte request line.
 */
export function logDestination(fd = 1): LogDestination {
  // minLength 1: each text handed over is written at once, and flush(cb) waits until it is.
  const writer = pino.destination({ fd, sync: writesAtOnce(fd), minLength: 1 });
  let lines: string[] = [];
  let chars = 0;
  const hand = (): void => {
    if (lines.length === 0) return;
    const text = lines.length === 1 ? (lines[0] as string) : lines.join('');
    lines = [];
    chars = 0;
    writer.write(text);
  };
  const timer = setInterval(() => {
    try {
      hand();
    } catch {
      // destroyed: the process is stopping
    }
  }, LOG_FLUSH_MS);
  timer.unref();
  // pino flushes its destination at exit; what is still gathered here goes first.
  const atExit = (): void => {
    try {
      hand();
      writer.flushSync();
    } catch {
      // destroyed, or not open yet: nothing more can be written
    }
  };
  process.once('exit', atExit);
  writer.once('close', () => {
    clearInterval(timer);
    process.off('exit', atExit);
  });
  const destination: LogDestination = {
    write(line: string): void {
      lines.push(line);
      chars += line.length;
      if (chars >= GATHER_CHARS) hand();
    },
    flush(cb) {
      hand();
      writer.flush(cb);
    },
    flushSync() {
      hand();
      writer.flushSync();
    },
    end() {
      hand();
      writer.end();
    },
    once(event, listener) {
      writer.once(event, listener);
      return destination;
    },
  };
  return destination;
}

/**
 * Whether writing to `fd` returns at once: a regular file, or a character device that is not a
 * terminal (`/dev/null`). Not a pipe, a socket or a terminal, whose reader may stop taking text.
 */
export function writesAtOnce(fd: number): boolean {
  try {
    const s = fstatSync(fd);
    return s.isFile() || (s.isCharacterDevice() && !isatty(fd));
  } catch {
    return false;
  }
}

/** The logger: on {@link logDestination} (stdout) unless another destination is given. */
export function createLogger(destination?: DestinationStream, level = process.env['VALET_LOG_LEVEL'] ?? 'info'): Logger {
  return pino({ level, base: { service: 'valet' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, destination ?? logDestination());
}

/**
 * The logger for the one line each request writes: `logger` without key redaction. That line's
 * fields are fixed scalars the request path sets (ids, names, status, sizes; never a header or a
 * credential field), so the redaction paths match nothing in it, and walking them cost about 10 µs
 * a line. Everything else logs through `logger`, redacted.
 */
export function requestLineLogger(logger: Logger): Logger {
  return logger.child({}, { redact: { paths: [] } });
}
