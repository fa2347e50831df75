import { createHash, type Hash } from 'node:crypto';

/** The request exactly as it would be forwarded, before the credential is added. */
export interface DigestInput {
  readonly upstream: string;
  readonly method: string;
  /** The canonical path, encoded as forwarded. */
  readonly path: string;
  /** The canonical query string as forwarded (agent credentials removed), without `?`. */
  readonly query: string;
  /** The headers Valet would forward (lower-case names; agent credentials already stripped). */
  readonly headers: readonly (readonly [string, string])[];
  readonly body: Uint8Array;
}

/**
 * Headers left out of the digest: framing (the body bytes are covered instead), and values a client
 * changes between attempts without changing what the call does: tracing, retry counters and
 * invocation ids, request dates, idempotency keys (Valet executes an approval once whatever the
 * key), and the client's self-description (`User-Agent` and the SDKs' own telemetry headers: an
 * agent that re-sends an approved call from an upgraded SDK or another process still matches).
 */
const VOLATILE = new Set([
  'content-length',
  'transfer-encoding',
  'traceparent',
  'tracestate',
  'baggage',
  'sentry-trace',
  'idempotency-key',
  'date',
  'user-agent',
  'x-amz-user-agent',
  'amz-sdk-invocation-id',
  'amz-sdk-request',
  'x-goog-api-client',
  'x-stripe-client-user-agent',
  'x-client-name',
  'x-client-version',
]);
const VOLATILE_PREFIXES = ['x-stainless-', 'x-amzn-trace-', 'x-b3-', 'x-datadog-'];

export const DIGEST_VERSION = 'valet-approval-digest-v1';

/** Whether a header name takes part in the request digest. */
export function digestsHeader(name: string): boolean {
  return !VOLATILE.has(name) && !VOLATILE_PREFIXES.some((p) => name.startsWith(p));
}

/**
 * SHA-256 (hex) over an unambiguous encoding of the request: a version tag, then upstream, method,
 * path, query, every digested header (sorted by name, copies in the order sent) and the body bytes,
 * each field prefixed with its length. Two requests have the same digest only if an upstream would
 * receive the same call from both.
 */
export function requestDigest(r: DigestInput): string {
  const h = createHash('sha256');
  field(h, DIGEST_VERSION);
  field(h, r.upstream);
  field(h, r.method.toUpperCase());
  field(h, r.path);
  field(h, r.query);
  const headers = r.headers
    .map(([name, value]) => [name.toLowerCase(), value] as const)
    .filter(([name]) => digestsHeader(name))
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  count(h, headers.length);
  for (const [name, value] of headers) {
    field(h, name);
    field(h, value);
  }
  field(h, r.body);
  return h.digest('hex');
}

function count(h: Hash, n: number): void {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(n));
  h.update(b);
}

function field(h: Hash, v: string | Uint8Array): void {
  const bytes = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
  count(h, bytes.length);
  h.update(bytes);
}
