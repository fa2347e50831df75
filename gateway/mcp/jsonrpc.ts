import { ValetError } from '../errors.js';

/**
 * MCP messages as policy sees them. An MCP client POSTs JSON-RPC 2.0 messages to one endpoint; the
 * method and its parameters, not the HTTP path, say what the call does. Valet reads each message
 * strictly — an exact method name from the protocol, a well-formed id — and describes it as
 * request facts: the MCP method is the path policy matches (`/tools/call`, `/resources/read`), a
 * `tools/call` is the tool `<upstream>.<name>` with `params.arguments` as its arguments. Anything it
 * cannot read that way is refused with a JSON-RPC error and never forwarded: a server that is
 * lenient about method case or shapes must not see what policy did not.
 */

/** The methods a client may send (MCP 2025-06-18 and 2025-03-26): exact, case-sensitive. */
export const CLIENT_METHODS: ReadonlySet<string> = new Set([
  'initialize',
  'ping',
  'tools/list',
  'tools/call',
  'resources/list',
  'resources/templates/list',
  'resources/read',
  'resources/subscribe',
  'resources/unsubscribe',
  'prompts/list',
  'prompts/get',
  'completion/complete',
  'logging/setLevel',
]);

/** The notifications a client may send. */
export const CLIENT_NOTIFICATIONS: ReadonlySet<string> = new Set([
  'notifications/initialized',
  'notifications/cancelled',
  'notifications/progress',
  'notifications/roots/list_changed',
]);

export type RpcId = string | number;

/** One JSON-RPC message from the agent, checked. */
export type McpMessage =
  | { readonly kind: 'request'; readonly id: RpcId; readonly method: string; readonly params: Readonly<Record<string, unknown>> }
  | { readonly kind: 'notification'; readonly method: string; readonly params: Readonly<Record<string, unknown>> }
  /** The agent's answer to a request of the server (sampling, elicitation, roots). */
  | { readonly kind: 'response'; readonly id: RpcId };

/** What policy decides about: the MCP method as a path, a tool and its arguments. */
export interface McpFacts {
  /** `/<method>`: `/tools/call`, `/resources/read`, `/notifications/initialized`, `/response`. */
  readonly path: string;
  /** `<upstream>.<tool name>` for `tools/call`. */
  readonly tool: string | undefined;
  /** `tools/call`: `params.arguments`; `resources/read`: `{uri}`; `prompts/get`: `{name, arguments}`; else the params. */
  readonly args: Readonly<Record<string, unknown>>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const validId = (v: unknown): v is RpcId => (typeof v === 'string' && v.length <= 256) || (typeof v === 'number' && Number.isSafeInteger(v));

/** The id of a message as far as it can be read, for a refusal of it (null when it has none). */
export function idOf(v: unknown): RpcId | null {
  return isObject(v) && validId(v['id']) ? v['id'] : null;
}

/** Checks one message; a ValetError (rendered as a JSON-RPC error) when it is not one Valet forwards. */
export function readMessage(v: unknown): McpMessage {
  if (!isObject(v) || v['jsonrpc'] !== '2.0') throw new ValetError('VALET_ERR_MCP_INVALID', 'Not a JSON-RPC 2.0 message: an object with "jsonrpc": "2.0" is expected.');
  const method = v['method'];
  const params = v['params'];
  if (params !== undefined && !isObject(params)) throw new ValetError('VALET_ERR_MCP_INVALID', 'MCP "params" must be an object.');
  if (method === undefined) {
    // A response to the server: exactly one of result and error, and an id.
    if (!validId(v['id']) || ('result' in v) === ('error' in v)) throw new ValetError('VALET_ERR_MCP_INVALID', 'A response needs an id and exactly one of "result" and "error".');
    return { kind: 'response', id: v['id'] };
  }
  if (typeof method !== 'string') throw new ValetError('VALET_ERR_MCP_INVALID', '"method" must be a string.');
  if ('id' in v) {
    if (!validId(v['id'])) throw new ValetError('VALET_ERR_MCP_INVALID', 'A request id must be a string or an integer (never null).');
    if (!CLIENT_METHODS.has(method)) throw new ValetError('VALET_ERR_MCP_METHOD', `Method "${method.slice(0, 80)}" is not an MCP method Valet forwards (names are exact and case-sensitive).`);
    return { kind: 'request', id: v['id'], method, params: params ?? {} };
  }
  if (!CLIENT_NOTIFICATIONS.has(method)) throw new ValetError('VALET_ERR_MCP_METHOD', `Notification "${method.slice(0, 80)}" is not an MCP notification Valet forwards.`);
  return { kind: 'notification', method, params: params ?? {} };
}

/** The facts of a message for policy. */
export function mcpFacts(upstream: string, m: McpMessage): McpFacts {
  if (m.kind === 'response') return { path: '/response', tool: undefined, args: {} };
  const path = `/${m.method}`;
  if (m.kind === 'request' && m.method === 'tools/call') {
    const name = m.params['name'];
    const args = m.params['arguments'] ?? {};
    if (typeof name !== 'string' || name === '' || name.length > 128) throw new ValetError('VALET_ERR_MCP_INVALID', 'tools/call needs "params.name", the tool\'s name.');
    if (!isObject(args)) throw new ValetError('VALET_ERR_MCP_INVALID', 'tools/call "params.arguments" must be an object.');
    return { path, tool: `${upstream}.${name}`, args };
  }
  if (m.kind === 'request' && m.method === 'resources/read') {
    if (typeof m.params['uri'] !== 'string') throw new ValetError('VALET_ERR_MCP_INVALID', 'resources/read needs "params.uri".');
    return { path, tool: undefined, args: { uri: m.params['uri'] } };
  }
  if (m.kind === 'request' && m.method === 'prompts/get') {
    if (typeof m.params['name'] !== 'string') throw new ValetError('VALET_ERR_MCP_INVALID', 'prompts/get needs "params.name".');
    return { path, tool: undefined, args: { name: m.params['name'], arguments: m.params['arguments'] ?? {} } };
  }
  return { path, tool: undefined, args: m.params };
}

/** Parses a POST body: one message or a batch (an array, MCP 2025-03-26). */
export function parseBody(body: Buffer): { single: unknown } | { batch: unknown[] } {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    throw new ValetError('VALET_ERR_MCP_PARSE');
  }
  if (Array.isArray(v)) {
    if (v.length === 0) throw new ValetError('VALET_ERR_MCP_INVALID', 'An empty batch.');
    return { batch: v };
  }
  return { single: v };
}
