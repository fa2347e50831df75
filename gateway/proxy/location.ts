import type { UpstreamConfig } from '../config/types.js';
import type { Scrubber } from './scrub.js';

/**
 * Valet's origin as the agent reached it (`http://host[:port]`), or undefined when unknown. Only
 * called while rewriting a response header that names the upstream's origin.
 */
export type AgentOrigin = () => string | undefined;

/** A `Host` value Valet will echo back in a URL: a DNS name or IPv4 address, or a bracketed IPv6 address, with an optional port. */
const HOST = /^(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$/i;

/**
 * Valet's origin as the agent reached it: the request's `Host` when it is a plain host[:port]
 * (Valet's listener speaks plain HTTP), otherwise the address and port the connection arrived on.
 * The agent can only mislead itself with its own `Host`; the check keeps odd values out of URLs.
 */
export function agentOrigin(host: string | undefined, localAddress: string | undefined, localPort: number | undefined): string | undefined {
  if (host !== undefined && host.length <= 255 && HOST.test(host)) {
    const port = /:([0-9]+)$/.exec(host)?.[1];
    if (port === undefined || Number(port) <= 65535) return `http://${host.toLowerCase()}`;
  }
  if (localAddress === undefined || localPort === undefined) return undefined;
  const address = localAddress.startsWith('::ffff:') && localAddress.includes('.') ? localAddress.slice(7) : localAddress;
  return `http://${address.includes(':') ? `[${address}]` : address}:${localPort}`;
}

/** Whether a reference is absolute, scheme-relative or root-relative (WHATWG URL parsing treats `\` as `/`). */
const NOT_PATH_RELATIVE = /^(?:[a-z][a-z0-9+.-]*:|[/\\])/i;
const ROOT_RELATIVE = /^[/\\](?![/\\])/;
/** What URL parsers strip from both ends of a reference. */
const OUTER_SPACE = /^[\x00-\x20]+|[\x00-\x20]+$/g;

/**
 * Returns a URL from an upstream response header (`Location`, `Content-Location`, a `Link`
 * target) as the agent may see it:
 *
 * - scrubbed, whatever host it names: no userinfo, no credential or agent-token query parameter,
 *   no copy of the secrets in any form the scrubber knows (plain, URL-encoded, base64, ...);
 * - pointing back through Valet when it names the upstream's origin (scheme, host and port, host
 *   case and default ports ignored): `http://<agent's Valet host>/<upstream><path>`, so that an SDK
 *   following it (pagination, redirects) goes through policy and audit, not straight to the upstream
 *   with the agent's token;
 * - root-relative references (`/repos/x?page=2`) get `/<upstream>` in front, since the agent
 *   resolves them against Valet's URL. Path-relative ones (`next?page=2`, `?page=2`) resolve
 *   correctly against Valet's URL as they are and are only scrubbed.
 *
 * Upstream origins carry no path (the loader refuses one), so every path on the origin maps to the
 * same path below `/<upstream>`. Other hosts are left where they point.
 */
export function agentLocation(location: string, upstream: UpstreamConfig, scrubber: Scrubber, origin: AgentOrigin, mount = `/${upstream.name}`): string {
  // Hex case is insignificant in percent-escapes (RFC 3986 §2.1): normalise so one spelling matches.
  const value = scrubber.redact(location.replace(OUTER_SPACE, '').replace(/%[0-9a-f]{2}/gi, (m) => m.toUpperCase()));
  const params = credentialParams(upstream);
  if (!NOT_PATH_RELATIVE.test(value)) return withoutParams(value, params);
  let url: URL;
  try {
    url = new URL(value, upstream.origin);
  } catch {
    return value;
  }
  url.username = '';
  url.password = '';
  for (const name of params) url.searchParams.delete(name);
  if (url.origin !== upstream.origin) return url.href;
  const tail = `${mount}${url.pathname}${url.search}${url.hash}`;
  if (ROOT_RELATIVE.test(value)) return tail;
  const base = origin();
  return base === undefined ? url.href : `${base}${tail}`;
}

/**
 * A `Link` header value (RFC 8288) with every target inside `<...>` passed through
 * {@link agentLocation}; parameters (and `<`/`>` inside their quoted strings) are left as they are.
 */
export function agentLink(value: string, upstream: UpstreamConfig, scrubber: Scrubber, origin: AgentOrigin, mount = `/${upstream.name}`): string {
  let out = '';
  let from = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') {
      quoted = true;
    } else if (c === '<') {
      const end = value.indexOf('>', i + 1);
      if (end === -1) break;
      out += `${value.slice(from, i + 1)}${agentLocation(value.slice(i + 1, end), upstream, scrubber, origin, mount)}`;
      from = end;
      i = end;
    }
  }
  return out + value.slice(from);
}

function credentialParams(upstream: UpstreamConfig): string[] {
  const names: string[] = [];
  if (upstream.credential.scheme === 'query') names.push(upstream.credential.param);
  if (upstream.agentTokenQuery !== undefined) names.push(upstream.agentTokenQuery);
  return names;
}

/** A path-relative reference with the named query parameters removed, otherwise as written. */
function withoutParams(value: string, names: readonly string[]): string {
  const q = value.indexOf('?');
  const hash = value.indexOf('#');
  if (q === -1 || (hash !== -1 && hash < q) || names.length === 0) return value;
  const end = hash === -1 ? value.length : hash;
  const search = new URLSearchParams(value.slice(q + 1, end));
  if (!names.some((n) => search.has(n))) return value;
  for (const n of names) search.delete(n);
  const rest = search.toString();
  return `${value.slice(0, q)}${rest === '' ? '' : `?${rest}`}${value.slice(end)}`;
}
