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

export function createLogger(destination?: DestinationStream, level = process.env['VALET_LOG_LEVEL'] ?? 'info'): Logger {
  return pino({ level, base: { service: 'valet' }, redact: { paths: REDACT_PATHS, censor: '[REDACTED]' } }, destination);
}
