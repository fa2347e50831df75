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

/**
 * The logger. Without a destination it writes to stdout asynchronously, so a request never waits
 * on a write system call; `logger.flush()` on shutdown writes what is buffered.
 */
export function createLogger(destination?: DestinationStream, level = process.env['VALET_LOG_LEVEL'] ?? 'info'): Logger {
  return pino(
    { level, base: { service: 'valet' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
}
