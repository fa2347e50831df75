import type { UpstreamConfig } from '../config/types.js';

const REDACTED = '[REDACTED]';

/**
 * Returns a `Location` value safe to hand to the agent: no userinfo, no credential query
 * parameter, and no copy of the secret in plain, URL-encoded or base64 form.
 */
export function scrubLocation(location: string, upstream: UpstreamConfig, secrets: readonly string[]): string {
  // Hex case is insignificant in percent-escapes (RFC 3986 §2.1): normalise so one spelling matches.
  let value = location.replace(/%[0-9a-f]{2}/gi, (m) => m.toUpperCase());
  for (const secret of secrets) {
    const b64 = Buffer.from(secret).toString('base64');
    const forms = [secret, encodeURIComponent(secret), b64, encodeURIComponent(b64), Buffer.from(secret).toString('base64url')];
    for (const form of new Set(forms)) value = value.split(form).join(REDACTED);
  }
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
