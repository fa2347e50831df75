/**
 * Shared helpers for the policy-*.test.ts integration suites: one request through the gateway,
 * with what the fake upstream received because of it.
 */
import type { Readable } from 'node:stream';
import { expect } from 'vitest';
import { request } from 'undici';
import type { AuditRow } from '../../gateway/audit/port.js';
import { startTestGateway, type TestGateway, type TestGatewayOptions } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, header, requestIdOf, type ErrorBody } from '../helpers/http.js';
import type { FakeUpstream, RecordedRequest } from '../helpers/upstream.js';

export const STRIPE_SECRET = 'sk_live_policy_suite_5f1c0a';

/** A Stripe-like upstream whose real key is injected as a Bearer token. */
export const stripeUpstream = (origin: string): Record<string, unknown> => ({
  name: 'stripe',
  origin,
  credential: { scheme: 'bearer', secret: 'STRIPE_KEY' },
});

/** A test gateway in front of `upstream` as the Stripe upstream, with its real key in the environment. */
export function startStripeGateway(upstream: FakeUpstream, o: Omit<TestGatewayOptions, 'upstreams'>): Promise<TestGateway> {
  return startTestGateway({ upstreams: [stripeUpstream(upstream.origin)], ...o, env: { STRIPE_KEY: STRIPE_SECRET, ...o.env } });
}

/** The two Stripe tools most suites speak of. */
export const STRIPE_TOOLS_YAML = `tools:
  - name: stripe.create_transfer
    upstream: stripe
    method: POST
    path: /v1/transfers
    args:
      amount: int
      currency: string
  - name: stripe.get_customer
    upstream: stripe
    method: GET
    path: /v1/customers/{customer_id}
`;

export interface Sent {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  id: string;
  /** Requests the upstream received while this one was in flight (sequential callers only). */
  forwarded: RecordedRequest[];
}

export interface SendOptions {
  token: string;
  method?: string;
  body?: string | Buffer | Readable | undefined;
  contentType?: string | undefined;
  headers?: Record<string, string>;
}

/** Sends one request to `${gw.url}${path}` and reports what the upstream received meanwhile. */
export async function send(gw: TestGateway, upstream: FakeUpstream, path: string, o: SendOptions): Promise<Sent> {
  const before = upstream.requests.length;
  const headers: Record<string, string> = { authorization: `Bearer ${o.token}`, ...o.headers };
  if (o.contentType !== undefined) headers['content-type'] = o.contentType;
  const res = await request(`${gw.url}${path}`, {
    method: (o.method ?? 'GET') as 'GET',
    headers,
    body: o.body ?? null,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, id: requestIdOf(res.headers), forwarded: upstream.requests.slice(before) };
}

export const json = (v: unknown): { body: string; contentType: string } => ({ body: JSON.stringify(v), contentType: 'application/json' });
export const form = (s: string): { body: string; contentType: string } => ({ body: s, contentType: 'application/x-www-form-urlencoded' });

/** Asserts a 2xx that reached the upstream exactly once, with the real credential. */
export function expectForwarded(r: Sent, status = 200): RecordedRequest {
  expect(r.status, r.text).toBe(status);
  expect(r.forwarded, 'forwarded exactly once').toHaveLength(1);
  const got = r.forwarded[0] as RecordedRequest;
  expect(got.headers['authorization']).toBe(`Bearer ${STRIPE_SECRET}`);
  return got;
}

/** Asserts a refusal with the documented error body, and that nothing reached the upstream. */
export function expectRefused(r: Sent, status: number, code: string): ErrorBody['error'] & Record<string, unknown> {
  expect(r.status, r.text).toBe(status);
  expect(r.forwarded, 'nothing forwarded on refusal').toHaveLength(0);
  const body = expectErrorBody(r.text, code, r.id);
  expect(r.text).not.toContain(STRIPE_SECRET);
  return body.error as ErrorBody['error'] & Record<string, unknown>;
}

export const audit = (gw: TestGateway, r: Sent): Promise<AuditRow> => auditRowFor(gw, r.id);

export { header };
