import type { IncomingHttpHeaders } from 'node:http';
import type { CredentialConfig, UpstreamConfig } from '../config/types.js';

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

const dropSets = new WeakMap<UpstreamConfig, ReadonlySet<string>>();

/** The request headers never forwarded to this upstream, computed once per upstream. */
function dropFor(upstream: UpstreamConfig): ReadonlySet<string> {
  let set = dropSets.get(upstream);
  if (set === undefined) {
    const names = new Set([...HOP_BY_HOP, ...AGENT_NEVER, upstream.agentTokenHeader]);
    if (upstream.credential.scheme === 'header') names.add(upstream.credential.header);
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

/** Adds the real credential; the header list must already be free of agent credentials. */
export function injectCredential(
  headers: HeaderList,
  rawQuery: string,
  credential: CredentialConfig,
  secret: string,
): { headers: HeaderList; rawQuery: string } {
  switch (credential.scheme) {
    case 'bearer':
      return { headers: [...headers, ['authorization', `Bearer ${secret}`]], rawQuery };
    case 'header':
      return { headers: [...headers, [credential.header, `${credential.prefix}${secret}`]], rawQuery };
    case 'basic': {
      const pair = credential.username === undefined ? `${secret}:` : `${credential.username}:${secret}`;
      return { headers: [...headers, ['authorization', `Basic ${Buffer.from(pair).toString('base64')}`]], rawQuery };
    }
    case 'query': {
      const param = `${encodeURIComponent(credential.param)}=${encodeURIComponent(secret)}`;
      return { headers, rawQuery: rawQuery === '' ? param : `${rawQuery}&${param}` };
    }
  }
}

/**
 * Upstream response headers as the agent may see them. `x-request-id` belongs to Valet (it names
 * the audit row); the upstream's own id is passed on as `x-upstream-request-id`.
 */
export function forwardableResponseHeaders(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  scrubLocation: (location: string) => string,
): Record<string, string | string[]> {
  const connection = headers['connection'];
  const drop = new Set([...HOP_BY_HOP, ...connectionListed(connection === undefined ? [] : [connection].flat())]);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || drop.has(name)) continue;
    if (name === 'x-request-id') {
      out['x-upstream-request-id'] = value;
      continue;
    }
    out[name] = name === 'location' ? scrubLocation(Array.isArray(value) ? (value[0] ?? '') : value) : value;
  }
  return out;
}
