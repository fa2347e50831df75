import { connect } from 'node:net';
import { expect } from 'vitest';
import type { AuditRow } from '../../gateway/audit/port.js';
import type { TestGateway } from './gateway.js';

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface ErrorBody {
  error: { code: string; message: string; request_id: string | null; rule?: string; reason?: string };
}

/** A single header value from an undici response header record. */
export function header(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** The request id the gateway put on a response; asserts it is present and a UUID. */
/** Valet's request id (the audit row's), which every response carries in `valet-request-id`. */
export function requestIdOf(headers: Record<string, string | string[] | undefined>): string {
  const id = header(headers, 'valet-request-id');
  expect(id, 'valet-request-id header').toMatch(UUID);
  return id as string;
}

/** Exactly one audit row for this request id (polls until it is written). */
export async function auditRowFor(gw: TestGateway, requestId: string): Promise<AuditRow> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const rows = (await gw.auditRows()).filter((r) => r.request_id === requestId);
    if (rows.length > 0 || Date.now() > deadline) {
      expect(rows, `audit rows for ${requestId}`).toHaveLength(1);
      return rows[0] as AuditRow;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Asserts an error body has the documented shape and nothing that looks like a stack trace. */
export function expectErrorBody(text: string, code: string, requestId: string): ErrorBody {
  expectNoStackTrace(text);
  const body = JSON.parse(text) as ErrorBody;
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(body.error.request_id).toBe(requestId);
  return body;
}

export function expectNoStackTrace(text: string): void {
  expect(text).not.toMatch(/^\s*at\s/m);
  expect(text).not.toMatch(/\bat\s+\S.*\(.*:\d+:\d+\)/);
  expect(text).not.toMatch(/node:internal|\.ts:\d+|\.js:\d+/);
  expect(text).not.toMatch(/\\n\s*at\s/); // a stack serialised inside a JSON string
}

/** A port that was listening a moment ago and is now closed: connecting to it is refused. */
export async function closedPort(): Promise<number> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  // Make sure it really refuses before a test relies on it.
  await new Promise<void>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      reject(new Error(`port ${port} was reused`));
    });
    s.once('error', () => resolve());
  });
  return port;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface PlainResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/**
 * A request through node:http, which sends the path exactly as given (undici and fetch resolve
 * dot segments before sending).
 */
export async function rawPathRequest(
  base: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<PlainResponse> {
  const { request } = await import('node:http');
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}
