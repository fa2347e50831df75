import type { ArgType } from '../config/types.js';
import { ValetError } from '../errors.js';
import { foldKey, keyProblem, parseJsonObject, strictUtf8 } from '../json.js';

import type { ParsedBody } from '../json.js';

export type { ParsedBody };

const NONE: ParsedBody = { value: undefined, error: undefined, ambiguous: false };

export type BodyKind = 'json' | 'form' | 'other' | 'none';

/** Which parser a `Content-Type` calls for. */
export function bodyKind(contentType: string | undefined, hasBody: boolean): BodyKind {
  if (!hasBody) return 'none';
  const type = (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type === 'application/json' || /^application\/[a-z0-9.+-]+\+json$/.test(type)) return 'json';
  if (type === 'application/x-www-form-urlencoded') return 'form';
  return 'other';
}

/** Parses a JSON or form body into an argument map; ambiguity (repeated or colliding keys) is flagged. */
export function parseBody(kind: BodyKind, bytes: Buffer): ParsedBody {
  switch (kind) {
    case 'none':
      return NONE;
    case 'json':
      return parseJsonObject(bytes);
    case 'form': {
      const text = strictUtf8(bytes);
      return text === undefined ? { value: undefined, error: 'the form body is not valid UTF-8 without a byte order mark', ambiguous: true } : parseForm(text);
    }
    case 'other':
      return { value: undefined, error: 'the body is neither JSON nor form-encoded', ambiguous: false };
  }
}

/** One `name=value` pair of form or query encoding, decoded (`+` is a space); undefined if invalid. */
export function decodeFormPair(pair: string): [string, string] | undefined {
  const eq = pair.indexOf('=');
  try {
    return [
      decodeURIComponent((eq === -1 ? pair : pair.slice(0, eq)).replace(/\+/g, ' ')),
      eq === -1 ? '' : decodeURIComponent(pair.slice(eq + 1).replace(/\+/g, ' ')),
    ];
  } catch {
    return undefined;
  }
}

/**
 * `application/x-www-form-urlencoded` with Stripe's bracket notation: `metadata[order]=1` is a
 * nested map, `items[]=a&items[]=b` a list. A key given twice, or two keys of one map that differ
 * only in case or Unicode form (`metadata[Order]` and `metadata[order]`), are ambiguous and refused.
 */
export function parseForm(text: string): ParsedBody {
  const out: Record<string, unknown> = Object.create(null);
  if (text === '') return { value: out, error: undefined, ambiguous: false };
  const folded = new Map<object, Map<string, string>>();
  for (const pair of text.split('&')) {
    if (pair === '') continue;
    const decoded = decodeFormPair(pair);
    if (decoded === undefined) return { value: undefined, error: 'the form body is not valid percent-encoded UTF-8', ambiguous: true };
    const [key, value] = decoded;
    const m = /^([^[\]]+)((?:\[[^[\]]*\])*)$/.exec(key);
    if (!m) return { value: undefined, error: `the form key "${key}" is malformed`, ambiguous: false };
    const path = [m[1] as string, ...[...(m[2] as string).matchAll(/\[([^[\]]*)\]/g)].map((x) => x[1] as string)];
    const error = assign(out, path, value, key, folded);
    if (error) return { value: undefined, error: error.message, ambiguous: error.ambiguous };
  }
  return { value: out, error: undefined, ambiguous: false };
}

function assign(
  target: Record<string, unknown>,
  path: string[],
  value: string,
  key: string,
  folded: Map<object, Map<string, string>>,
): { message: string; ambiguous: boolean } | undefined {
  const malformed = (message: string): { message: string; ambiguous: boolean } => ({ message, ambiguous: false });
  let node: Record<string, unknown> | unknown[] = target;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i] as string;
    const last = i === path.length - 1;
    const next = path[i + 1];
    if (Array.isArray(node)) {
      if (seg !== '') return malformed(`the form key "${key}" mixes list and map forms`);
      if (last) {
        node.push(value);
        return undefined;
      }
      return malformed(`the form key "${key}" nests inside a list`);
    }
    if (seg === '' || seg === '__proto__' || seg === 'constructor' || seg === 'prototype') {
      return malformed(`the form key "${key}" is malformed`);
    }
    if (last) {
      if (seg in node) return { message: `the form body repeats the key "${key}"`, ambiguous: true };
    }
    if (!(seg in node)) {
      // A new key at this level: it must not collide with a sibling under case folding or normalisation.
      let keys = folded.get(node);
      if (keys === undefined) folded.set(node, (keys = new Map()));
      const problem = keyProblem(seg, keys, 'form body');
      if (problem !== undefined) return { message: `${problem} (in "${key}")`, ambiguous: true };
    }
    if (last) {
      node[seg] = value;
      return undefined;
    }
    const existing: unknown = node[seg];
    const wantList = next === '';
    if (existing === undefined) {
      node[seg] = wantList ? [] : Object.create(null);
    } else if (wantList !== Array.isArray(existing) || typeof existing !== 'object') {
      return malformed(`the form key "${key}" conflicts with another key`);
    }
    node = node[seg] as Record<string, unknown> | unknown[];
  }
  return undefined;
}

/**
 * The arguments a policy sees: path parameters, then query, then body. A name given by two sources,
 * or two names that differ only in case or Unicode form (`Amount` in the query, `amount` in the
 * body), are ambiguous (which one would the upstream use?): `ambiguous` is then true.
 */
export function buildArgs(
  pathParams: Readonly<Record<string, string>>,
  query: Readonly<Record<string, readonly string[]>>,
  body: ParsedBody,
  kind: BodyKind,
  declared: Readonly<Record<string, ArgType>>,
): { args: Record<string, unknown>; error: string | undefined; ambiguous: boolean } {
  const args: Record<string, unknown> = Object.create(null);
  const from: Record<string, string> = Object.create(null);
  const folded = new Map<string, string>();
  const put = (name: string, value: unknown, source: string): string | undefined => {
    const f = foldKey(name);
    const seen = folded.get(f);
    if (seen === name) return `the argument "${name}" is given in both the ${from[name]} and the ${source}`;
    if (seen !== undefined) return `the arguments "${seen}" (${from[seen]}) and "${name}" (${source}) differ only in case or Unicode form`;
    folded.set(f, name);
    args[name] = value;
    from[name] = source;
    return undefined;
  };
  for (const [k, v] of Object.entries(pathParams)) put(k, v, 'path');
  for (const [k, vs] of Object.entries(query)) {
    const e = put(k, vs.length === 1 ? vs[0] : [...vs], 'query');
    if (e) return { args, error: e, ambiguous: true };
  }
  if (body.value) {
    for (const [k, v] of Object.entries(body.value)) {
      const e = put(k, v, 'body');
      if (e) return { args, error: e, ambiguous: true };
    }
  }
  for (const [name, type] of Object.entries(declared)) {
    if (!(name in args)) continue;
    // Path, query and form values are text and may be converted; JSON values must already have the type.
    const converted = convert(args[name], type, from[name] === 'body' && kind === 'json');
    if (converted.error) return { args, error: `the argument "${name}" ${converted.error}`, ambiguous: false };
    args[name] = converted.value;
  }
  return { args, error: body.error, ambiguous: body.ambiguous };
}

function convert(value: unknown, type: ArgType, typed: boolean): { value?: unknown; error?: string } {
  if (typeof value !== 'string' || typed) {
    switch (type) {
      case 'string':
        return typeof value === 'string' ? { value } : { error: 'must be a string' };
      case 'bool':
        return typeof value === 'boolean' ? { value } : { error: 'must be a boolean' };
      case 'number':
        return typeof value === 'number' && Number.isFinite(value) ? { value } : { error: 'must be a number' };
      case 'int':
        return typeof value === 'number' && Number.isSafeInteger(value) ? { value: BigInt(value) } : { error: 'must be an integer' };
    }
  }
  switch (type) {
    case 'string':
      return { value };
    case 'bool':
      return value === 'true' ? { value: true } : value === 'false' ? { value: false } : { error: 'must be true or false' };
    case 'number':
      return /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(value) && Number.isFinite(Number(value)) ? { value: Number(value) } : { error: 'must be a number' };
    case 'int':
      return /^-?\d{1,15}$/.test(value) ? { value: BigInt(value) } : { error: 'must be an integer' };
  }
}

/** The refusal of arguments another reader could take differently (400): the gateway's, and policy tests'. */
export function ambiguityError(reason: string | undefined): ValetError {
  return new ValetError('VALET_ERR_BAD_REQUEST', `Ambiguous request: ${reason ?? 'the arguments can be read more than one way'}.`);
}
