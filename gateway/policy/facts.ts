import { ValetError } from '../errors.js';
import type { Decision, Effect } from '../types.js';
import type { EvaluationInput } from './compile.js';
import type { HistorySummary } from './counters.js';

/**
 * What a decision was made on, written for the audit row's sealed `facts` column and read back by
 * `valet policy replay`. The evaluation input is written generically — every own field of it and
 * of what it holds, whatever fields it gains — except `historyVersion` (a shared store's
 * bookkeeping). As JSON, with two escapes so that any value reads back as it was: a bigint is
 * `{"$bigint": "12"}`, and a key of the input's own that starts with `$` gets one more `$`.
 */

export const FACTS_VERSION = 1;

/** Arguments whose JSON is larger than this are not recorded (`argsOmitted`). */
export const MAX_RECORDED_ARGS_BYTES = 64 * 1024;

/** The facts of one request as recorded. */
export interface RecordedFacts {
  /** The evaluation input the enforced decision was made on (`history` also when the decision read it lazily). */
  readonly input: EvaluationInput;
  /** What the rules in force decided (before rate limits, budgets and gateway settings). */
  readonly decision: { readonly effect: Effect; readonly rules: readonly string[] };
  /**
   * Whether the request's arguments were read: false when no rule, limit or tool of the set in
   * force read this upstream's arguments, so its body was not parsed and `args` hold only the
   * path parameters and the query.
   */
  readonly argsRead: boolean;
  /** The arguments were larger than {@link MAX_RECORDED_ARGS_BYTES} and are not recorded (`args` is empty). */
  readonly argsOmitted: boolean;
}

/** Records the facts of a decision for the audit row's sealed `facts` column. */
export interface FactsRecorder {
  /**
   * Takes what a decision was made on, at the moment it is made, and returns what encodes it (the
   * audit record's `factsPlain`, which the audit writer seals) — called once the call is over, so
   * that neither is on the way to the upstream. The input and decision are never changed after the decision.
   */
  capture(requestId: string, input: EvaluationInput, decision: Decision, argsRead: boolean): () => string | null;
}

const EFFECTS: ReadonlySet<string> = new Set(['allow', 'deny', 'escalate']);

/** A key of the input's own as written: one more `$` when it starts with one (see the module comment). */
const escapedKey = (k: string): string => (k.charCodeAt(0) === 36 ? `$${k}` : k);

/** JSON.stringify's replacer: bigints and `$` keys escaped (see the module comment). */
function escape(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return { $bigint: value.toString() };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  let dollar = false;
  for (const k in value) {
    if (k.charCodeAt(0) === 36) {
      dollar = true;
      break;
    }
  }
  if (!dollar) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[escapedKey(k)] = v;
  return out;
}

/**
 * `JSON.stringify(value, escape)`, without calling the replacer on every value when nothing needs
 * escaping: the plain JSON is the same text whenever it holds no bigint (which makes it throw) and
 * no `"$` (a key that would be escaped; a string value starting with `$` only costs the slow path).
 */
function escaped(value: unknown): string | undefined {
  try {
    const plain = JSON.stringify(value);
    if (plain === undefined || !plain.includes('"$')) return plain;
  } catch {
    // a bigint: escaped below
  }
  return JSON.stringify(value, escape);
}

/** JSON.parse's reviver, undoing {@link escape} (bottom-up: an escaped `$bigint` key is unescaped after its object was looked at). */
function unescape(_key: string, value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  const keys = Object.keys(value);
  if (keys.length === 1 && keys[0] === '$bigint') {
    const digits = (value as { $bigint: unknown }).$bigint;
    if (typeof digits === 'string' && /^-?\d+$/.test(digits)) return BigInt(digits);
  }
  if (!keys.some((k) => k.charCodeAt(0) === 36)) return value;
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k.charCodeAt(0) === 36 ? k.slice(1) : k] = (value as Record<string, unknown>)[k];
  return out;
}

/**
 * The facts as JSON: `{v, decision, argsRead, argsOmitted?, input, args}`, the arguments kept apart
 * from the input so their size is known before they are written. `history`: the summary a decision
 * read lazily (a history store in the process), recorded when the input has none.
 */
export function encodeFacts(input: EvaluationInput, decision: Decision, o: { readonly argsRead: boolean; readonly history?: HistorySummary | undefined }): string {
  let args = escaped(input.facts.args) ?? '{}';
  const omitted = args.length > MAX_RECORDED_ARGS_BYTES / 3 && Buffer.byteLength(args) > MAX_RECORDED_ARGS_BYTES;
  if (omitted) args = '{}';
  // Every own field but `historyVersion`; `history` (bigints) written on its own, so the rest can
  // take the fast path; the arguments apart. Written field by field: rest and spread patterns that
  // leave keys out take V8's slow path, and the identity, the same object for every call of a
  // token (the verified-token cache), is encoded once.
  let body = '';
  for (const key of Object.keys(input)) {
    if (key === 'historyVersion' || key === 'history') continue;
    const value = input[key as keyof EvaluationInput];
    const json = key === 'identity' ? identityJson(value as EvaluationInput['identity']) : escaped(key === 'facts' ? { ...input.facts, args: undefined } : value);
    if (json === undefined) continue;
    body += `${body === '' ? '{' : ','}${JSON.stringify(escapedKey(key))}:${json}`;
  }
  body = body === '' ? '{}' : `${body}}`;
  const history = input.history ?? o.history;
  const inputJson = history === undefined ? body : `${body.slice(0, -1)},"history":${historyJson(history)}}`;
  const head = `{"v":${FACTS_VERSION},"decision":{"effect":${JSON.stringify(decision.effect)},"rules":${JSON.stringify(decision.rules)}},"argsRead":${o.argsRead}${omitted ? ',"argsOmitted":true' : ''}`;
  return `${head},"input":${inputJson},"args":${args}}`;
}

const identities = new WeakMap<object, string>();

/** An identity as {@link escaped} writes it, remembered per identity object (identities are never changed once made). */
function identityJson(identity: EvaluationInput['identity']): string {
  let json = identities.get(identity);
  if (json === undefined) {
    json = escaped(identity) as string;
    identities.set(identity, json);
  }
  return json;
}

/** A history summary as {@link escape} writes it; its known shape written directly, anything else through the replacer. */
function historyJson(h: HistorySummary): string {
  const keys = Object.keys(h);
  if (keys.length === 3 && typeof h.calls_last_hour === 'bigint' && typeof h.calls_last_day === 'bigint' && typeof h.first_use === 'boolean') {
    return `{"calls_last_hour":{"$bigint":"${h.calls_last_hour}"},"calls_last_day":{"$bigint":"${h.calls_last_day}"},"first_use":${h.first_use}}`;
  }
  return JSON.stringify(h, escape);
}

/** Reads what {@link encodeFacts} wrote; `VALET_ERR_AUDIT_FACTS_UNREADABLE` when it is not that (never quoting it). */
export function decodeFacts(text: string): RecordedFacts {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text, unescape);
  } catch {
    throw malformed('not JSON');
  }
  const o = parsed as Record<string, unknown> | null;
  if (typeof o !== 'object' || o === null) throw malformed('not an object');
  if (o['v'] !== FACTS_VERSION) throw malformed(`version ${typeof o['v'] === 'number' ? o['v'] : '?'} is not ${FACTS_VERSION}`);
  const d = o['decision'] as Record<string, unknown> | undefined;
  if (typeof d !== 'object' || d === null || typeof d['effect'] !== 'string' || !EFFECTS.has(d['effect']) || !isStrings(d['rules'])) throw malformed('no decision');
  const input = o['input'] as Record<string, unknown> | undefined;
  if (typeof input !== 'object' || input === null) throw malformed('no input');
  const identity = input['identity'] as Record<string, unknown> | undefined;
  const facts = input['facts'] as Record<string, unknown> | undefined;
  if (typeof identity !== 'object' || identity === null || typeof identity['agent'] !== 'string' || !isStrings(identity['roles'])) throw malformed('no identity');
  if (typeof facts !== 'object' || facts === null || typeof facts['upstream'] !== 'string' || typeof facts['method'] !== 'string' || typeof facts['path'] !== 'string') throw malformed('no request');
  if (typeof input['now'] !== 'number' || typeof input['context'] !== 'object' || input['context'] === null) throw malformed('no time or context');
  const args = o['args'];
  if (typeof args !== 'object' || args === null || Array.isArray(args)) throw malformed('no arguments');
  if (typeof o['argsRead'] !== 'boolean') throw malformed('no argsRead');
  return {
    input: { ...input, facts: { ...facts, args } } as unknown as EvaluationInput,
    decision: { effect: d['effect'] as Effect, rules: d['rules'] as string[] },
    argsRead: o['argsRead'],
    argsOmitted: o['argsOmitted'] === true,
  };
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

const malformed = (why: string): ValetError => new ValetError('VALET_ERR_AUDIT_FACTS_UNREADABLE', `The request facts are malformed once opened (${why}).`);
