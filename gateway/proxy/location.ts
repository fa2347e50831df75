import type { UpstreamConfig } from '../config/types.js';
import type { Scrubber } from './scrub.js';

/**
 * Returns a `Location` value safe to hand to the agent: no userinfo, no credential query
 * parameter, and no copy of the secrets in any form the scrubber knows (plain, URL-encoded,
 * base64, ...). Done whether or not the upstream's responses are otherwise scrubbed.
 */
export function scrubLocation(location: string, upstream: UpstreamConfig, scrubber: Scrubber): string {
  // Hex case is insignificant in percent-escapes (RFC 3986 §2.1): normalise so one spelling matches.
  const value = scrubber.redact(location.replace(/%[0-9a-f]{2}/gi, (m) => m.toUpperCase()));
  const absolute = /^[a-z][a-z0-9+.-]*:/i.test(value) || value.startsWith('//');
  let url: URL;
  try {
    url = new URL(value, upstream.origin);
  } catch {
    return value;
  }
  url.username = '';
  url.password = '';
  const names = [upstream.credential.scheme === 'query' ? upstream.credential.param : undefined, upstream.agentTokenQuery];
  for (const name of names) if (name !== undefined) url.searchParams.delete(name);
  return absolute ? url.href : `${url.pathname}${url.search}${url.hash}`;
}
