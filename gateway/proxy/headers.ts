import type { IncomingHttpHeaders } from 'node:http';
import type { CredentialConfig, UpstreamConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import { scrubLocation } from './location.js';
import type { Scrubber } from './scrub.js';

/** Headers that describe one hop, never forwarded in either direction (RFC 9110 §7.6.1). */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
];
const HOP_BY_HOP_SET: ReadonlySet<string> = new Set(HOP_BY_HOP);
const NONE: ReadonlySet<string> = new Set();

/**
 * Request headers an agent may never pass through: credentials of any kind, addressing that could
 * steer the upstream, and Valet's own control headers.
 */
const AGENT_NEVER = [
  'host',
  'authorization',
  'cookie',
  'forwarded',
  'x-real-ip',
  'expect',
  'content-length',
  'x-request-id',
  // Where well-known APIs take keys; an agent might put its token in any of them.
  'x-api-key',
  'api-key',
  'x-goog-api-key',
  'x-auth-token',
  'x-access-token',
  'private-token',
];
const AGENT_NEVER_PREFIX = ['x-forwarded-', 'valet-'];

export type HeaderList = [string, string][];

/** Request headers dropped while responses are scrubbed: Valet asks for an uncompressed, whole body. */
const SCRUB_DROP = ['accept-encoding', 'range', 'if-range'];

const dropSets = new WeakMap<UpstreamConfig, ReadonlySet<string>>();

/** The request headers never forwarded to this upstream, computed once per upstream. */
function dropFor(upstream: UpstreamConfig): ReadonlySet<string> {
  let set = dropSets.get(upstream);
  if (set === undefined) {
    const names = new Set([...HOP_BY_HOP, ...AGENT_NEVER, upstream.agentTokenHeader]);
    // Injected headers replace whatever the agent sent under those names.
    if (upstream.credential.scheme === 'header') names.add(upstream.credential.header);
    if (upstream.credential.scheme === 'headers') for (const h of upstream.credential.headers) names.add(h.name);
    if (upstream.scrubResponses !== false) for (const name of SCRUB_DROP) names.add(name);
    set = names;
    dropSets.set(upstream, set);
  }
  return set;
}

/** Names listed in every `Connection` header, lower-cased. */
function connectionListed(values: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (const v of values) for (const name of v.split(',')) if (name.trim()) out.add(name.trim().toLowerCase());
  return out;
}

/**
 * The agent's headers as they may be forwarded: hop-by-hop headers, every header `Connection`
 * names, every copy and case variant of a credential header, steering headers and any header that
 * carries the agent token removed. `content-length` is re-added by the caller.
 *
 * While the upstream's responses are scrubbed, the agent's `accept-encoding`, `range` and
 * `if-range` are dropped too ({@link valetRequestHeaders} asks for `identity`): the scrubber cannot
 * see into a compressed body, and a secret split across two range requests would pass it in halves.
 */
export function forwardableRequestHeaders(rawHeaders: readonly string[], upstream: UpstreamConfig, agentToken: string): HeaderList {
  const fixed = dropFor(upstream);
  let drop: ReadonlySet<string> = fixed;
  const connection: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if ((rawHeaders[i] as string).toLowerCase() === 'connection') connection.push(rawHeaders[i + 1] as string);
  }
  if (connection.length > 0) drop = new Set([...fixed, ...connectionListed(connection)]);

  const out: HeaderList = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    const value = rawHeaders[i + 1] as string;
    if (drop.has(name) || AGENT_NEVER_PREFIX.some((p) => name.startsWith(p)) || value.includes(agentToken)) continue;
    out.push([name, value]);
  }
  return out;
}

/**
 * Headers Valet itself adds to every forwarded request: its request id (the audit row's), and
 * `accept-encoding: identity` while the upstream's responses are scrubbed.
 */
export function valetRequestHeaders(upstream: UpstreamConfig, requestId: string): HeaderList {
  const out: HeaderList = [['x-request-id', requestId]];
  if (upstream.scrubResponses !== false) out.push(['accept-encoding', 'identity']);
  return out;
}

/** Looks a secret up by name (for the request's tenant); undefined when it is not available. */
export type SecretLookup = (name: string) => string | undefined;

export interface Injected {
  readonly headers: HeaderList;
  readonly rawQuery: string;
  /**
   * What response scrubbing looks for: the secret values sent, each once, and for `basic` the
   * base64 token carrying one (so that an echo of it, itself base64-encoded, is caught too).
   */
  readonly secrets: readonly string[];
}

/**
 * What undici (and HTTP) accept in a header value. Secret sources already refuse CR, LF and NUL;
 * this is checked again at the last moment so that a bad value from any source fails closed.
 */
const HEADER_SAFE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Adds the real credential; the header list must already be free of agent credentials. Every
 * secret the credential names must resolve to a non-empty, header-safe value, or nothing is
 * forwarded (503 `VALET_ERR_CREDENTIAL_UNAVAILABLE`).
 */
export function injectCredential(headers: HeaderList, rawQuery: string, credential: CredentialConfig, lookup: SecretLookup): Injected {
  const used = new Map<string, string>();
  const secret = (name: string): string => {
    let value = used.get(name);
    if (value === undefined) {
      value = lookup(name);
      if (value === undefined || value === '' || !HEADER_SAFE.test(value)) throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE');
      used.set(name, value);
    }
    return value;
  };
  const done = (h: HeaderList, q: string, derived: readonly string[] = []): Injected => ({
    headers: h,
    rawQuery: q,
    secrets: [...new Set([...used.values(), ...derived])],
  });
  switch (credential.scheme) {
    case 'bearer':
      return done([...headers, ['authorization', `Bearer ${secret(credential.secret)}`]], rawQuery);
    case 'header':
      return done([...headers, [credential.header, `${credential.prefix}${secret(credential.secret)}`]], rawQuery);
    case 'basic': {
      const value = secret(credential.secret);
      const pair = credential.username === undefined ? `${value}:` : `${credential.username}:${value}`;
      const basic = Buffer.from(pair).toString('base64');
      return done([...headers, ['authorization', `Basic ${basic}`]], rawQuery, [basic]);
    }
    case 'query': {
      const param = `${encodeURIComponent(credential.param)}=${encodeURIComponent(secret(credential.secret))}`;
      return done(headers, rawQuery === '' ? param : `${rawQuery}&${param}`);
    }
    case 'headers': {
      const out = [...headers];
      for (const h of credential.headers) {
        out.push([h.name, h.value.map((part) => (typeof part === 'string' ? part : secret(part.secret))).join('')]);
      }
      return done(out, rawQuery);
    }
  }
}

/**
 * Upstream response headers as the agent may see them. `x-request-id` belongs to Valet (it names
 * the audit row); the upstream's own id is passed on as `x-upstream-request-id`. `Location` is
 * always scrubbed; while the upstream's responses are scrubbed, every other value is too.
 */
export function forwardableResponseHeaders(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  upstream: UpstreamConfig,
  scrubber: Scrubber,
): Record<string, string | string[]> {
  const connection = headers['connection'];
  // Usually `keep-alive` or nothing: names only hop-by-hop headers, dropped anyway.
  const listed = connection === undefined ? NONE : connectionListed([connection].flat());
  const scrubAll = upstream.scrubResponses !== false;
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP_SET.has(name) || listed.has(name)) continue;
    if (name === 'location') {
      out[name] = scrubLocation(Array.isArray(value) ? (value[0] ?? '') : value, upstream, scrubber);
      continue;
    }
    const scrubbed = !scrubAll ? value : Array.isArray(value) ? value.map((v) => scrubber.redact(v)) : scrubber.redact(value);
    out[name === 'x-request-id' ? 'x-upstream-request-id' : name] = scrubbed;
  }
  return out;
}
