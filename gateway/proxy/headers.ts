import type { IncomingHttpHeaders } from 'node:http';
import type { CredentialConfig, UpstreamConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import { agentLink, agentLocation, type AgentOrigin } from './location.js';
import type { Scrubber } from './scrub.js';

/** Headers that describe one hop, never forwarded in either direction (RFC 9110 §7.6.1, RFC 9113 §8.2.2). */
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
  'http2-settings',
];
const HOP_BY_HOP_SET: ReadonlySet<string> = new Set(HOP_BY_HOP);
const NONE: ReadonlySet<string> = new Set();

/** Headers that carry credentials, Valet's or an API's: never forwarded from the agent, never opted in. */
const CREDENTIAL = [
  'authorization',
  'proxy-authorization',
  'cookie',
  // Where well-known APIs take keys; an agent might put its token in any of them.
  'x-api-key',
  'api-key',
  'x-goog-api-key',
  'x-auth-token',
  'x-access-token',
  'private-token',
];

/** Headers Valet sets, frames or consumes itself: never forwarded from the agent, never opted in. */
const VALET_OWNED = ['host', 'content-length', 'expect', 'x-request-id'];
const VALET_OWNED_PREFIX = ['valet-'];

/**
 * Request-steering headers: names that frameworks, proxies and CDNs read to re-route, re-method or
 * re-address a request (the path, method, host, scheme or client address the application believes
 * it received), or that only a proxy in front of the upstream should set. Policy is decided on the
 * method and path Valet sees; with one of these the upstream could execute another, or trust a
 * client address or TLS fact the agent made up. Stripped by default, by exact name here and by
 * family in {@link STEERING_PREFIX}; an upstream may take single names back with
 * `allow_steering_headers`. docs/configuration.md lists them; this list is the source.
 */
export const STEERING: readonly string[] = [
  // Re-routing: the path or URL the application should serve instead (IIS, Symfony, Laravel, nginx setups).
  'x-proxy-url',
  'x-matched-path',
  'x-now-route-matches',
  'x-nextjs-data',
  // Re-methoding: Rack, Express method-override, ASP.NET, Google APIs, OData.
  'x-http-method',
  'x-http-method-override',
  'x-method-override',
  // Re-addressing: the host or scheme the application believes it was reached at.
  'forwarded',
  'x-forwarded',
  'x-host',
  'x-http-host-override',
  'front-end-https',
  'x-url-scheme',
  'x-scheme',
  // Client identity that a proxy in front of the upstream would set (allowlists, rate limits, audit).
  'x-real-ip',
  'true-client-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'x-proxyuser-ip',
  'x-originating-ip',
  'x-remote-ip',
  'x-remote-addr',
  'client-ip',
  // Client certificates a TLS terminator would pass on.
  'x-client-cert',
  // httpoxy: CGI-style upstreams turn `Proxy` into HTTP_PROXY.
  'proxy',
  // Proxy chain and loop control.
  'via',
  'max-forwards',
];

/**
 * Families of steering headers, by prefix: `X-Forwarded-*` (host, proto, prefix, path, uri, ...),
 * `X-Original-*` (url, uri, host, method, ...), `X-Rewrite-*`, Envoy's route and retry controls,
 * Next.js internals (`x-middleware-subrequest` skips middleware, `x-invoke-*`), headers CDNs set at
 * their edge (Cloudflare, Fastly, Akamai, IIS ARR) and TLS terminators' client-certificate headers.
 */
export const STEERING_PREFIX: readonly string[] = [
  'x-forwarded-',
  'x-original-',
  'x-rewrite-',
  'x-envoy-',
  'x-middleware-',
  'x-invoke-',
  'cf-',
  'fastly-',
  'akamai-',
  'x-akamai-',
  'x-arr-',
  'x-ssl-',
  'ssl-client-',
  'proxy-',
];

const CREDENTIAL_SET: ReadonlySet<string> = new Set(CREDENTIAL);
const VALET_OWNED_SET: ReadonlySet<string> = new Set(VALET_OWNED);
const STEERING_SET: ReadonlySet<string> = new Set(STEERING);

/** What a request header name is to Valet: it decides which names config may opt back in. */
export type HeaderClass = 'hop-by-hop' | 'credential' | 'valet' | 'steering' | 'ordinary';

/**
 * Classifies a lower-case request header name, for the upstream's own credential and agent-token
 * headers too. Only `steering` names may be opted back in; `ordinary` ones pass anyway.
 */
export function classifyRequestHeader(name: string, upstream: Pick<UpstreamConfig, 'agentTokenHeader' | 'credential'>): HeaderClass {
  if (HOP_BY_HOP_SET.has(name)) return 'hop-by-hop';
  if (CREDENTIAL_SET.has(name) || injectedNames(upstream).includes(name)) return 'credential';
  if (VALET_OWNED_SET.has(name) || VALET_OWNED_PREFIX.some((p) => name.startsWith(p))) return 'valet';
  if (STEERING_SET.has(name) || STEERING_PREFIX.some((p) => name.startsWith(p))) return 'steering';
  return 'ordinary';
}

/** The upstream's agent-token header and every header its credential injects. */
function injectedNames(upstream: Pick<UpstreamConfig, 'agentTokenHeader' | 'credential'>): string[] {
  const c = upstream.credential;
  return [upstream.agentTokenHeader, ...(c.scheme === 'header' ? [c.header] : c.scheme === 'headers' ? c.headers.map((h) => h.name) : [])];
}

export type HeaderList = [string, string][];

/** Request headers dropped while responses are scrubbed: Valet asks for an uncompressed, whole body. */
export const SCRUB_DROP: readonly string[] = ['accept-encoding', 'range', 'if-range'];

/** Which request header names the agent may send to one upstream, decided once per upstream. */
interface RequestFilter {
  /** Exact names never forwarded. */
  readonly drop: ReadonlySet<string>;
  /** Prefixes never forwarded (Valet's and the steering families), except the names in `allowed`. */
  readonly dropPrefix: readonly string[];
  /** Steering names this upstream opted back in. */
  readonly allowed: ReadonlySet<string>;
  /** With `forward_headers`: the only names forwarded (those the rules above would drop removed). */
  readonly only: ReadonlySet<string> | undefined;
  /** Whether a lower-case name passes `drop`, the prefixes and `only`: remembered, agents send the same few names. */
  readonly passes: Map<string, boolean>;
}

/** How many header names a filter remembers its verdict on; past that it still decides, uncached. */
const VERDICTS_KEPT = 4_096;

const filters = new WeakMap<UpstreamConfig, RequestFilter>();

/** The request-header filter for this upstream, computed once per upstream. */
function filterFor(upstream: UpstreamConfig): RequestFilter {
  let filter = filters.get(upstream);
  if (filter === undefined) {
    // Loading refuses anything else; an upstream built in code is held to the same.
    const allowed = new Set((upstream.allowSteeringHeaders ?? []).filter((n) => classifyRequestHeader(n, upstream) === 'steering'));
    const drop = new Set([...HOP_BY_HOP, ...CREDENTIAL, ...VALET_OWNED, ...injectedNames(upstream)]);
    for (const name of STEERING) if (!allowed.has(name)) drop.add(name);
    if (upstream.scrubResponses !== false) for (const name of SCRUB_DROP) drop.add(name);
    const dropPrefix = [...VALET_OWNED_PREFIX, ...STEERING_PREFIX];
    const listed = upstream.forwardHeaders;
    const only = listed === undefined ? undefined : new Set(listed.filter((n) => !drop.has(n) && (allowed.has(n) || !dropPrefix.some((p) => n.startsWith(p)))));
    filter = { drop, dropPrefix, allowed, only, passes: new Map() };
    filters.set(upstream, filter);
  }
  return filter;
}

/** Names listed in every `Connection` header, lower-cased. */
function connectionListed(values: string | readonly string[]): ReadonlySet<string> {
  // Nearly every message says only this: it names no header but hop-by-hop ones, dropped anyway.
  const only = typeof values === 'string' ? values : values.length === 1 ? (values[0] as string) : undefined;
  if (only !== undefined) {
    const v = only.length <= 10 ? only.toLowerCase() : '';
    if (v === 'keep-alive' || v === 'close') return NONE;
  }
  if (typeof values === 'string') values = [values];
  const out = new Set<string>();
  for (const v of values) for (const name of v.split(',')) if (name.trim()) out.add(name.trim().toLowerCase());
  return out;
}

/**
 * The agent's headers as they may be forwarded: HTTP/2 pseudo-headers, hop-by-hop headers, every
 * header `Connection` names, every copy and case variant of a credential header, request-steering
 * headers (unless the upstream opted the name back in), Valet's own names and any header that
 * carries the agent token removed. With the upstream's `forward_headers`, only the names listed there are kept at all.
 * `content-length` is re-added by the caller.
 *
 * While the upstream's responses are scrubbed, the agent's `accept-encoding`, `range` and
 * `if-range` are dropped too ({@link valetRequestHeaders} asks for `identity`): the scrubber cannot
 * see into a compressed body, and a secret split across two range requests would pass it in halves.
 */
export function forwardableRequestHeaders(rawHeaders: readonly string[], upstream: UpstreamConfig, agentToken: string): HeaderList {
  const filter = filterFor(upstream);
  const names: string[] = [];
  let connection: string[] | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    names.push(name);
    if (name === 'connection') (connection ??= []).push(rawHeaders[i + 1] as string);
  }
  const listed = connection === undefined ? NONE : connectionListed(connection);

  const out: HeaderList = [];
  for (let i = 0; i < names.length; i++) {
    const name = names[i] as string;
    const value = rawHeaders[2 * i + 1] as string;
    // HTTP/2's pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) are its request line, not headers.
    if (name.charCodeAt(0) === COLON || !passes(filter, name) || listed.has(name) || value.includes(agentToken)) continue;
    out.push([name, value]);
  }
  // Values the API needs (a version header) when the agent's SDK sent none: never over the SDK's own.
  for (const [name, value] of upstream.defaultHeaders ?? []) if (!out.some(([n]) => n === name)) out.push([name, value]);
  return out;
}

const COLON = 0x3a;

function passes(f: RequestFilter, name: string): boolean {
  let verdict = f.passes.get(name);
  if (verdict === undefined) {
    verdict = !f.drop.has(name) && (f.only !== undefined ? f.only.has(name) : f.allowed.has(name) || !f.dropPrefix.some((p) => name.startsWith(p)));
    if (f.passes.size < VERDICTS_KEPT) f.passes.set(name, verdict);
  }
  return verdict;
}

/** Content codings Valet can decode, scrub and encode again on the way to the agent. */
export const RECODABLE: readonly string[] = ['gzip', 'br'];

/**
 * The codings among {@link RECODABLE} the agent's `Accept-Encoding` takes (q > 0), in Valet's
 * order of preference. Unparsable parts are ignored; none means identity.
 */
export function acceptedCodings(header: string | string[] | undefined): readonly string[] {
  if (header === undefined) return NO_CODINGS;
  const text = typeof header === 'string' ? header : header.join(',');
  if (text.length > ACCEPT_VALUE_KEPT_CHARS) return parseAccepted(text);
  let codings = acceptedByHeader.get(text);
  if (codings === undefined) {
    // Clients send the same few short values: parsed once each, kept while there are not too many.
    if (acceptedByHeader.size >= ACCEPT_VALUES_KEPT) acceptedByHeader.clear();
    acceptedByHeader.set(text, (codings = parseAccepted(text)));
  }
  return codings;
}

const NO_CODINGS: readonly string[] = Object.freeze([]);
const ACCEPT_VALUES_KEPT = 256;
const ACCEPT_VALUE_KEPT_CHARS = 128;
const acceptedByHeader = new Map<string, readonly string[]>();

function parseAccepted(text: string): readonly string[] {
  const ok = new Set<string>();
  for (const part of text.split(',')) {
    const [coding = '', ...params] = part.trim().toLowerCase().split(';');
    const q = params.map((p) => /^\s*q\s*=\s*([0-9.]+)\s*$/.exec(p)?.[1]).find((v) => v !== undefined);
    if (q !== undefined && !(Number(q) > 0)) continue;
    const name = coding.trim() === 'x-gzip' ? 'gzip' : coding.trim();
    if (RECODABLE.includes(name)) ok.add(name);
  }
  return Object.freeze(RECODABLE.filter((c) => ok.has(c)));
}

/**
 * Headers Valet itself adds to every forwarded request: its request id (the audit row's), and,
 * while the upstream's responses are scrubbed, `accept-encoding` limited to what Valet can decode,
 * scrub and encode again that the agent also takes (`accepted`, see {@link acceptedCodings};
 * `identity` when none).
 */
export function valetRequestHeaders(upstream: UpstreamConfig, requestId: string, accepted: readonly string[] = []): HeaderList {
  const out: HeaderList = [['x-request-id', requestId]];
  if (upstream.scrubResponses !== false) out.push(['accept-encoding', accepted.length > 0 ? accepted.join(', ') : 'identity']);
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
    case 'aws_sigv4':
      // Nothing to add here: the request is signed last, over exactly what is forwarded (credentials/sigv4.ts).
      return done(headers, rawQuery);
  }
}

/** The response header naming Valet's request id (the audit row's), on every response. */
export const REQUEST_ID_HEADER = 'valet-request-id';

/** Where upstreams put their own request id, most common first (OpenAI, Anthropic/Stripe, GitHub, AWS). */
const UPSTREAM_REQUEST_ID_HEADERS = ['x-request-id', 'request-id', 'x-github-request-id', 'x-amzn-requestid', 'x-amz-request-id'];

/** A header's value, or its first when repeated (undici and node:http give repeated ones as an array). */
export function firstValue(v: string | string[] | undefined): string | undefined {
  return typeof v === 'string' || v === undefined ? v : v[0];
}

/** The upstream's own id for a response, as recorded beside Valet's (at most 256 characters). */
export function upstreamRequestId(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): string | null {
  for (const name of UPSTREAM_REQUEST_ID_HEADERS) {
    const first = firstValue(headers[name]);
    if (first !== undefined && first !== '') return first.slice(0, 256);
  }
  return null;
}

/**
 * Upstream response headers as the agent may see them: the upstream's own headers, its request id
 * among them, are never replaced; only `valet-*` names are Valet's and dropped. The URLs in
 * `Location`, `Content-Location` and `Link` are always scrubbed, and those on the upstream's origin
 * rewritten to point back through Valet (see {@link agentLocation}; `origin` is only called then).
 * While the upstream's responses are scrubbed, every other value is scrubbed too. Names in `drop`
 * are left out (the caller sets them itself).
 */
export function forwardableResponseHeaders(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  upstream: UpstreamConfig,
  scrubber: Scrubber,
  origin: AgentOrigin,
  mount = `/${upstream.name}`,
  drop: ReadonlySet<string> = NONE,
): Record<string, string | string[]> {
  const connection = headers['connection'];
  // Usually `keep-alive` or nothing: names only hop-by-hop headers, dropped anyway.
  const listed = connection === undefined ? NONE : connectionListed(connection);
  const scrubAll = upstream.scrubResponses !== false;
  let agentBase: string | undefined | null = null;
  const once: AgentOrigin = () => (agentBase === null ? (agentBase = origin()) : agentBase);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP_SET.has(name) || listed.has(name) || drop.has(name) || name.startsWith('valet-')) continue;
    if (name === 'location' || name === 'content-location') {
      out[name] = agentLocation(Array.isArray(value) ? (value[0] ?? '') : value, upstream, scrubber, once, mount);
      continue;
    }
    if (name === 'link') {
      const link = (v: string): string => agentLink(scrubAll ? scrubber.redact(v) : v, upstream, scrubber, once, mount);
      out[name] = Array.isArray(value) ? value.map(link) : link(value);
      continue;
    }
    const scrubbed = !scrubAll ? value : Array.isArray(value) ? value.map((v) => scrubber.redact(v)) : scrubber.redact(value);
    out[name] = scrubbed;
  }
  return out;
}
