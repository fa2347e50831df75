import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { ChatApprovers } from '../config/types.js';
import { signWebhook } from './notify.js';

/** One chat source that may decide approvals: the secret its requests are signed with, and who may decide. */
export interface SignedChat {
  readonly secret: string;
  readonly approvers: ChatApprovers;
}

/** Every configured chat source: interactive Slack channels (in configuration order) and the generic callback. */
export interface ChatReceivers {
  readonly slack: readonly SignedChat[];
  readonly callback: SignedChat | undefined;
}

/** How far a signed request's timestamp may be from now, either way (Slack's recommendation). */
export const SIGNATURE_WINDOW_S = 300;

/** A request's signature and when it was made (unix seconds), once its MAC verified. */
export interface VerifiedSignature {
  readonly signature: string;
  readonly timestamp: number;
}

const header = (headers: IncomingHttpHeaders, name: string): string | undefined => {
  const v = headers[name];
  return typeof v === 'string' ? v : undefined;
};

const equal = (a: string, b: string): boolean => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

const inWindow = (t: number, nowS: number): boolean => Math.abs(nowS - t) <= SIGNATURE_WINDOW_S;

/**
 * Slack's request signing: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<ts>:<raw body>")>`
 * with `X-Slack-Request-Timestamp: <ts>` within the window. Undefined unless both hold.
 */
export function verifySlackSignature(headers: IncomingHttpHeaders, body: Buffer, secret: string, nowS: number): VerifiedSignature | undefined {
  const ts = header(headers, 'x-slack-request-timestamp');
  const signature = header(headers, 'x-slack-signature');
  if (ts === undefined || signature === undefined || !/^\d{1,12}$/.test(ts) || !inWindow(Number(ts), nowS)) return undefined;
  const expected = `v0=${createHmac('sha256', secret).update(`v0:${ts}:`).update(body).digest('hex')}`;
  return equal(expected, signature) ? { signature, timestamp: Number(ts) } : undefined;
}

/** Valet's own scheme (`valet-signature: t=<ts>,v1=<hex>`, as its outgoing webhooks): see `signWebhook`. */
export function verifyValetSignature(headers: IncomingHttpHeaders, body: Buffer, secret: string, nowS: number): VerifiedSignature | undefined {
  const signature = header(headers, 'valet-signature');
  const m = signature === undefined ? null : /^t=(\d{1,12}),v1=[0-9a-f]{64}$/.exec(signature);
  if (signature === undefined || m === null || !inWindow(Number(m[1]), nowS)) return undefined;
  const t = Number(m[1]);
  return equal(signWebhook(secret, body, t), signature) ? { signature, timestamp: t } : undefined;
}

/**
 * Refuses a signed request seen before: a captured request stays valid for the whole window, so
 * each verified signature is remembered until its timestamp leaves the window. In memory: each
 * instance of a fleet remembers its own, so a replay to another instance gets through the
 * signature check, but a decision only moves a pending approval, so it cannot change an outcome.
 */
export interface ReplayGuard {
  /** True the first time a signature is offered (and remembers it); false for a replay. */
  first(v: VerifiedSignature, nowS: number): boolean;
}

/** An empty in-memory replay guard. */
export function createReplayGuard(): ReplayGuard {
  // Only verified signatures are stored, so the map grows with real traffic only.
  const seen = new Map<string, number>();
  return {
    first(v, nowS) {
      for (const [sig, until] of seen) if (until < nowS) seen.delete(sig);
      if (seen.has(v.signature)) return false;
      seen.set(v.signature, v.timestamp + SIGNATURE_WINDOW_S);
      return true;
    },
  };
}
