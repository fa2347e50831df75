import { StringDecoder } from 'node:string_decoder';
import { Transform, type TransformCallback } from 'node:stream';
import type { RpcId } from './jsonrpc.js';

/** What listing says of a tool: hidden (every call would be denied), listed, or listed with a note (calls need approval). */
export type Listing = 'hidden' | 'listed' | 'escalates';

/** Which list a `tools/list`, `resources/list` or `prompts/list` result carries, and the field that names each entry. */
export interface ListKind {
  readonly field: 'tools' | 'resources' | 'prompts';
  readonly key: 'name' | 'uri';
}

export const TOOLS: ListKind = { field: 'tools', key: 'name' };

/**
 * The tools a server listed, per upstream and session: a `tools/call` for a name never listed is
 * refused, so a server lenient about case or spelling can never run a tool policy did not see by
 * that name. Bounded: the oldest sessions go first.
 */
export class ListedTools {
  private readonly sessions = new Map<string, Set<string>>();

  constructor(private readonly max = 10_000) {}

  record(upstream: string, session: string | undefined, names: Iterable<string>): void {
    const k = `${upstream}\0${session ?? ''}`;
    const set = this.sessions.get(k) ?? new Set<string>();
    for (const n of names) set.add(n);
    this.sessions.delete(k);
    this.sessions.set(k, set);
    if (this.sessions.size > this.max) this.sessions.delete(this.sessions.keys().next().value as string);
  }

  has(upstream: string, session: string | undefined, name: string): boolean {
    return this.sessions.get(`${upstream}\0${session ?? ''}`)?.has(name) === true;
  }
}

/**
 * Rewrites the `tools/list` result of request `id` in one JSON-RPC message (or a batch of them):
 * tools policy would always deny are removed, tools that escalate get a note. Returns the names the
 * server listed (before filtering) and the message, unchanged when it is not that result.
 */
export function filterToolsMessage(text: string, id: RpcId, listing: (name: string) => Listing, kind: ListKind = TOOLS): { text: string; listed: string[] } | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  const listed: string[] = [];
  const one = (m: unknown): unknown => {
    if (typeof m !== 'object' || m === null || (m as { id?: unknown }).id !== id) return m;
    const result = (m as { result?: Record<string, unknown> }).result;
    if (typeof result !== 'object' || result === null || !Array.isArray(result[kind.field])) return m;
    const entries = (result[kind.field] as unknown[]).flatMap((t) => {
      const name = (t as Record<string, unknown> | null)?.[kind.key];
      if (typeof name !== 'string') return [];
      listed.push(name);
      const l = listing(name);
      if (l === 'hidden') return [];
      if (l === 'escalates') {
        const d = (t as { description?: unknown }).description;
        return [{ ...(t as object), description: `${typeof d === 'string' ? `${d} ` : ''}(${kind.field === 'tools' ? 'Calls to this tool wait' : 'Using this waits'} for a person's approval.)` }];
      }
      return [t];
    });
    return { ...(m as object), result: { ...result, [kind.field]: entries } };
  };
  const out = Array.isArray(v) ? v.map(one) : one(v);
  return { text: JSON.stringify(out), listed };
}

/**
 * The same over a Server-Sent Events stream, event by event: each `data:` payload that is the
 * result is rewritten; every other event passes as it came, as soon as it is complete. Events are
 * split on blank lines whatever the TCP writes were.
 */
export function filterToolsSse(id: RpcId, listing: (name: string) => Listing, onListed: (names: string[]) => void, kind: ListKind = TOOLS): Transform {
  let pending = '';
  const decoder = new StringDecoder('utf8');
  const rewrite = (event: string): string => rewriteEvent(event, id, listing, onListed, kind);
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      pending += decoder.write(chunk);
      let out = '';
      for (;;) {
        const m = /\r?\n\r?\n/.exec(pending);
        if (m === null) break;
        out += `${rewrite(pending.slice(0, m.index))}${m[0]}`;
        pending = pending.slice(m.index + m[0].length);
      }
      cb(null, out === '' ? undefined : Buffer.from(out));
    },
    flush(cb: TransformCallback) {
      pending += decoder.end();
      cb(null, pending === '' ? undefined : Buffer.from(rewrite(pending)));
    },
  });
}

/** One SSE event, its `data:` rewritten when it is the tools/list result. */
function rewriteEvent(event: string, id: RpcId, listing: (name: string) => Listing, onListed: (names: string[]) => void, kind: ListKind): string {
  const lines = event.split(/\r?\n/);
  const data = lines.filter((l) => l.startsWith('data:')).map((l) => l.slice(l.startsWith('data: ') ? 6 : 5));
  if (data.length === 0) return event;
  const r = filterToolsMessage(data.join('\n'), id, listing, kind);
  if (r === undefined || r.listed.length === 0) return event;
  onListed(r.listed);
  return [...lines.filter((l) => !l.startsWith('data:')), `data: ${r.text}`].join('\n');
}

/** A whole tools/list answer, JSON or SSE, filtered: the text to send and the names the server listed. */
export function filterToolsBody(text: string, contentType: string | undefined, id: RpcId, listing: (name: string) => Listing, kind: ListKind = TOOLS): { text: string; listed: string[] } {
  if (!(contentType ?? '').toLowerCase().startsWith('text/event-stream')) return filterToolsMessage(text, id, listing, kind) ?? { text, listed: [] };
  const listed: string[] = [];
  const out = text.replace(/(^|\r?\n\r?\n)([\s\S]*?)(?=\r?\n\r?\n|$)/g, (_m, sep: string, event: string) => sep + rewriteEvent(event, id, listing, (n) => listed.push(...n), kind));
  return { text: out, listed };
}

/** The JSON-RPC messages of a response body: one JSON value, or the `data:` of each SSE event. */
export function messagesOf(body: string, contentType: string | undefined): unknown[] {
  const parse = (t: string): unknown[] => {
    try {
      const v: unknown = JSON.parse(t);
      return Array.isArray(v) ? v : [v];
    } catch {
      return [];
    }
  };
  if (!(contentType ?? '').toLowerCase().startsWith('text/event-stream')) return parse(body);
  return body.split(/\r?\n\r?\n/).flatMap((event) => {
    const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(l.startsWith('data: ') ? 6 : 5));
    return data.length === 0 ? [] : parse(data.join('\n'));
  });
}

/** Asks the server for its tools (every page, at most 20), in the agent's session: the names it lists. */
export async function fetchToolNames(send: (body: string) => Promise<{ status: number; contentType: string | undefined; text: string }>): Promise<string[]> {
  const names: string[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < 20; page++) {
    const id = `valet-tools-list-${page}`;
    const r = await send(JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/list', params: cursor === undefined ? {} : { cursor } }));
    if (r.status !== 200) break;
    const result = messagesOf(r.text, r.contentType).find((m) => (m as { id?: unknown } | null)?.id === id) as { result?: { tools?: { name?: unknown }[]; nextCursor?: unknown } } | undefined;
    for (const t of result?.result?.tools ?? []) if (typeof t?.name === 'string') names.push(t.name);
    cursor = typeof result?.result?.nextCursor === 'string' ? result.result.nextCursor : undefined;
    if (cursor === undefined) break;
  }
  return names;
}
