import { ValetError } from '../errors.js';
import { decodeFormPair } from '../policy/args.js';

/** The request target split into the upstream name and the canonical path below it. */
export interface CanonicalTarget {
  readonly upstream: string;
  /** The path prefix that named the upstream (`/stripe`), or '' when its own listener or host did. */
  readonly mount: string;
  /** Decoded path, dot segments resolved; what policy sees. */
  readonly path: string;
  /** The same path re-encoded one canonical way; what is forwarded. */
  readonly forwardPath: string;
  readonly rawQuery: string;
}

const UPSTREAM_NAME = /^[a-z][a-z0-9_-]{0,62}$/;
// Anything that a later parser (ours, the upstream's, a WAF) could read differently. A raw `;`
// starts path parameters that servers such as Tomcat or Jetty drop before routing.
const FORBIDDEN_RAW = /[\x00-\x20\x7f\\#]/;
const FORBIDDEN_RAW_PATH = /;/;
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;
const FORBIDDEN_DECODED = /[\x00-\x1f\x7f/\\%]/;

function bad(detail: string): ValetError {
  return new ValetError('VALET_ERR_BAD_PATH', `The request path is not canonical: ${detail}.`);
}

/**
 * Canonicalises an origin-form request target once: decodes each segment once, resolves dot
 * segments, and refuses encoded slashes or backslashes, NUL and control characters, double
 * encoding, empty segments and anything that would climb above the upstream's root. The first
 * segment names the upstream, unless `routed` does (a request on the upstream's own listener or
 * host): then the whole path is the upstream's, canonicalised the same way.
 */
export function canonicalTarget(rawUrl: string, routed?: string): CanonicalTarget {
  if (!rawUrl.startsWith('/')) {
    throw new ValetError('VALET_ERR_BAD_REQUEST', 'Only origin-form request targets ("/upstream/path") are accepted.');
  }
  if (rawUrl.startsWith('//')) throw bad('it starts with "//"');
  if (FORBIDDEN_RAW.test(rawUrl)) throw bad('it contains a control character, space, backslash or "#"');
  const q = rawUrl.indexOf('?');
  const rawPath = q === -1 ? rawUrl : rawUrl.slice(0, q);
  const rawQuery = q === -1 ? '' : rawUrl.slice(q + 1);
  if (BAD_ESCAPE.test(rawUrl)) throw bad('it contains an invalid percent-escape');
  if (FORBIDDEN_RAW_PATH.test(rawPath)) throw bad('it contains ";" (path parameters)');

  const segments = rawPath.split('/').slice(1);
  const upstream = routed ?? segments.shift() ?? '';
  if (routed === undefined && !UPSTREAM_NAME.test(upstream)) {
    throw new ValetError('VALET_ERR_UNKNOWN_UPSTREAM', 'The first path segment must name a configured upstream.');
  }
  const rest = segments;

  const out: string[] = [];
  for (const [i, raw] of rest.entries()) {
    const last = i === rest.length - 1;
    if (raw === '') {
      if (last) break; // a trailing slash is kept below
      throw bad('it contains an empty segment');
    }
    let seg = raw;
    if (raw.includes('%')) {
      try {
        seg = decodeURIComponent(raw);
      } catch {
        throw bad('a segment is not valid percent-encoded UTF-8');
      }
    }
    if (FORBIDDEN_DECODED.test(seg)) throw bad('a segment encodes a slash, backslash, percent sign or control character');
    if (seg === '.') continue;
    if (seg === '..') {
      if (out.length === 0) throw bad('it climbs above the upstream root');
      out.pop();
      continue;
    }
    out.push(seg);
  }
  const trailing = rest.length > 0 && rest[rest.length - 1] === '' && out.length > 0 ? '/' : '';
  const path = `/${out.join('/')}${trailing}`;
  const forwardPath = `/${out.map(encodeSegment).join('/')}${trailing}`;
  return { upstream, mount: routed === undefined ? `/${upstream}` : '', path, forwardPath, rawQuery };
}

/** A segment {@link encodeSegment} leaves as it is: unreserved characters, `:` `@` and the sub-delims but `;`. */
const LITERAL_SEGMENT = /^[A-Za-z0-9\-._~!$&'()*+,=:@]*$/;

/**
 * Percent-encodes a decoded segment. Unreserved characters, `:` `@` and the sub-delims other than
 * `;` stay literal; `;` stays encoded so that data never becomes a path-parameter delimiter.
 */
function encodeSegment(seg: string): string {
  if (LITERAL_SEGMENT.test(seg)) return seg;
  return encodeURIComponent(seg).replace(/%(24|26|2B|2C|3D|3A|40)/g, (m) => decodeURIComponent(m));
}

export interface CanonicalQuery {
  /** Parameters that remain, form-decoded; what policy sees. */
  readonly query: Record<string, string[]>;
  /** The raw query without the removed parameters; what is forwarded. */
  readonly rawQuery: string;
  /** Values of the removed parameters, by lower-case name. */
  readonly removed: Record<string, string[]>;
}

/** Parses the query (form-style decoding) and removes the named parameters (case-insensitive). */
export function canonicalQuery(rawQuery: string, remove: ReadonlySet<string>): CanonicalQuery {
  const query: Record<string, string[]> = Object.create(null);
  const removed: Record<string, string[]> = Object.create(null);
  const kept: string[] = [];
  if (rawQuery === '') return { query, rawQuery, removed };
  for (const pair of rawQuery.split('&')) {
    if (pair === '') continue;
    const decoded = decodeFormPair(pair);
    if (decoded === undefined) throw new ValetError('VALET_ERR_BAD_REQUEST', 'The query string is not valid percent-encoded UTF-8.');
    const [name, value] = decoded;
    const lower = name.toLowerCase();
    if (remove.has(lower)) {
      (removed[lower] ??= []).push(value);
      continue;
    }
    kept.push(pair);
    (query[name] ??= []).push(value);
  }
  return { query, rawQuery: kept.join('&'), removed };
}
