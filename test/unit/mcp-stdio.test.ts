import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ListRootsRequestSchema, ToolListChangedNotificationSchema, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../gateway/log.js';
import { BASE_ENV_KEYS, startStdioBridge, type StdioBridge, type StdioBridgeOptions, type StdioServerConfig } from '../../gateway/mcp/stdio.js';

/**
 * The stdio bridge with real children (test/fixtures/mcp-stdio-server.mjs, the SDK's McpServer on
 * stdio) and real sockets, driven by the SDK's own Client over Streamable HTTP. Every log line goes
 * through Valet's pino logger into `logs`, and no line may carry a value of the child's env.
 */

const FIXTURE = fileURLToPath(new URL('../fixtures/mcp-stdio-server.mjs', import.meta.url));
const SECRET = 'fixture-secret-9f2c1e7a';
const MASTER = 'valet-master-key-must-not-reach-the-child';
const INIT = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
};

const logs: Record<string, unknown>[] = [];
const logger = createLogger(
  new Writable({
    write(chunk: Buffer, _enc, cb): void {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  }),
);
const bridges: StdioBridge[] = [];
const clients: Client[] = [];

function fixture(env: Record<string, string> = {}): StdioServerConfig {
  return { command: process.execPath, args: [FIXTURE], env: { FIXTURE_SECRET: SECRET, ...env } };
}

async function bridge(config: StdioServerConfig = fixture(), o: Omit<StdioBridgeOptions, 'logger'> = {}): Promise<StdioBridge> {
  const b = await startStdioBridge('fixture', config, { logger, ...o });
  bridges.push(b);
  return b;
}

function transportFor(b: StdioBridge): StreamableHTTPClientTransport {
  return new StreamableHTTPClientTransport(new URL(b.path, b.origin), { requestInit: { headers: { authorization: `Bearer ${b.token}` } } });
}

async function connect(b: StdioBridge, capabilities: ConstructorParameters<typeof Client>[1] = {}): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const client = new Client({ name: 'test', version: '1.0.0' }, capabilities);
  clients.push(client);
  const transport = transportFor(b);
  await client.connect(transport);
  return { client, transport };
}

/** The JSON a fixture tool answered with. */
async function call(client: Client, name: string, args: Record<string, unknown> = {}): Promise<unknown> {
  const result = (await client.callTool({ name, arguments: args })) as CallToolResult;
  const first = result.content[0];
  if (first?.type !== 'text') throw new Error(`no text from ${name}`);
  try {
    return JSON.parse(first.text) as unknown;
  } catch {
    return first.text;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

/** A POST as an MCP client sends it; in the session `session` when given. */
function post(b: StdioBridge, body: unknown, session?: string): Promise<Response> {
  return fetch(new URL(b.path, b.origin), {
    method: 'POST',
    headers: {
      authorization: `Bearer ${b.token}`,
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
      ...(session !== undefined && { 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' }),
    },
    body: JSON.stringify(body),
  });
}

const rawInit = (b: StdioBridge, body: unknown = INIT): Promise<Response> => post(b, body);

/** The JSON-RPC messages of an SSE response, as they arrive. */
async function* sseMessages(res: Response): AsyncGenerator<Record<string, unknown>> {
  if (res.body === null) return;
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of res.body) {
    buffered += decoder.decode(chunk as Uint8Array, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) !== -1) {
      const data = buffered.slice(0, end).split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
      buffered = buffered.slice(end + 2);
      if (data !== '') yield JSON.parse(data) as Record<string, unknown>;
    }
  }
}

/** The messages of the log lines written since `from`. */
const messages = (from = 0): string[] => logs.slice(from).map((l) => String(l['msg']));

beforeAll(() => {
  process.env['VALET_MASTER_KEY'] = MASTER;
});

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(bridges.splice(0).map((b) => b.close()));
});

afterAll(() => {
  delete process.env['VALET_MASTER_KEY'];
  // The one line every test feeds: no log line carries a value of the child's environment.
  expect(logs.length).toBeGreaterThan(0);
  expect(JSON.stringify(logs)).not.toContain(SECRET);
});

describe('stdio MCP bridge', () => {
  it('relays initialize, tools/list and tools/call, and logs stderr by line with the secret redacted', async () => {
    const b = await bridge();
    expect(b.origin).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const { client } = await connect(b);
    expect(client.getServerVersion()).toMatchObject({ name: 'fixture' });
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toEqual(expect.arrayContaining(['echo', 'env', 'slow', 'crash', 'counter']));
    expect(await call(client, 'echo', { message: 'hello', n: 3 })).toEqual({ message: 'hello', n: 3 });

    await expect.poll(() => logs.find((l) => l['msg'] === 'mcp stdio: server stderr')).toMatchObject({
      level: 30,
      upstream: 'fixture',
      stderr: 'fixture started; token=[REDACTED]',
    });
  });

  it('redacts a secret before cutting a long stderr line, so no part of it is logged', async () => {
    const b = await bridge();
    const { client } = await connect(b);
    const from = logs.length;
    expect(await call(client, 'stderr_line', { prefix: 1995 })).toBe('written');
    const stderrLine = (): unknown => logs.slice(from).find((l) => String(l['stderr']).startsWith('xxx'))?.['stderr'];
    // The secret straddles the 2000-character cut: redacted first, then cut.
    await expect.poll(stderrLine).toBe(`${'x'.repeat(1995)}[REDA…[truncated]`);
  });

  it('refuses requests without the bridge token, on other paths, and non-initialize requests without a session', async () => {
    const b = await bridge();
    const from = logs.length;
    const url = new URL(b.path, b.origin);
    const unauthorized = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(INIT) });
    expect(unauthorized.status).toBe(401);
    expect(await unauthorized.json()).toMatchObject({ jsonrpc: '2.0', error: { message: 'Unauthorized' } });
    const wrong = await fetch(url, { method: 'POST', headers: { authorization: 'Bearer nope', 'content-type': 'application/json' }, body: JSON.stringify(INIT) });
    expect(wrong.status).toBe(401);
    const elsewhere = await fetch(new URL('/other', b.origin), { headers: { authorization: `Bearer ${b.token}` } });
    expect(elsewhere.status).toBe(404);
    const noSession = await rawInit(b, { jsonrpc: '2.0', id: 2, method: 'tools/list' });
    expect(noSession.status).toBe(400);
    const unknown = await fetch(url, { method: 'GET', headers: { authorization: `Bearer ${b.token}`, 'mcp-session-id': 'nope', accept: 'text/event-stream' } });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ error: { code: -32001 } });
    expect(b.sessions()).toEqual([]);
    expect(messages(from)).not.toContain('mcp stdio: server started');
  });

  it('answers a body that is not JSON with a parse error, and stops reading one past 4 MiB; neither starts a child', async () => {
    const b = await bridge();
    const from = logs.length;
    const url = new URL(b.path, b.origin);
    const headers = { authorization: `Bearer ${b.token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    const garbled = await fetch(url, { method: 'POST', headers, body: '{"jsonrpc": "2.0", "id": 1, "method": "initia' });
    expect(garbled.status).toBe(400);
    expect(await garbled.json()).toMatchObject({ jsonrpc: '2.0', error: { code: -32700 } });
    // Past the limit the rest is not read and the connection is cut.
    const huge = await fetch(url, { method: 'POST', headers, body: JSON.stringify({ ...INIT, pad: 'x'.repeat(5 * 1024 * 1024) }) }).catch((err: unknown) => err as Error);
    expect(huge).toBeInstanceOf(Error);
    expect(b.sessions()).toEqual([]);
    expect(messages(from)).not.toContain('mcp stdio: server started');
  });

  it('gives the child only the configured env and PATH, HOME, LANG: never Valet’s own', async () => {
    const b = await bridge(fixture({ FIXTURE_VALUE: 'configured-value' }));
    const { client } = await connect(b);
    expect(await call(client, 'env', { name: 'FIXTURE_VALUE' })).toEqual({ value: 'configured-value' });
    expect(await call(client, 'env', { name: 'VALET_MASTER_KEY' })).toEqual({ value: null });
    const keys = (await call(client, 'env_keys')) as string[];
    const allowed = new Set([...BASE_ENV_KEYS, 'FIXTURE_SECRET', 'FIXTURE_VALUE']);
    expect(keys.filter((k) => !allowed.has(k))).toEqual([]);
    expect(keys).toContain('PATH');
  });

  it('streams progress notifications of a slow tool on its request', async () => {
    const b = await bridge();
    const { client } = await connect(b);
    const progress: number[] = [];
    const result = await client.callTool({ name: 'slow', arguments: { steps: 4 } }, undefined, { onprogress: (p) => progress.push(p.progress) });
    expect(result.content).toEqual([{ type: 'text', text: 'done' }]);
    expect(progress).toEqual([1, 2, 3, 4]);
  });

  it('relays a cancellation; the session goes on', async () => {
    const b = await bridge();
    const { client } = await connect(b);
    const abort = new AbortController();
    const slow = client.callTool({ name: 'slow', arguments: { steps: 10 } }, undefined, { signal: abort.signal, onprogress: () => abort.abort('enough') });
    await expect(slow).rejects.toThrow(/enough/);
    expect(await call(client, 'echo', { message: 'after' })).toEqual({ message: 'after' });
  });

  it('relays server-initiated requests and notifications (roots/list, tools/list_changed)', async () => {
    const b = await bridge();
    const client = new Client({ name: 'test', version: '1.0.0' }, { capabilities: { roots: { listChanged: true } } });
    clients.push(client);
    client.setRequestHandler(ListRootsRequestSchema, () => ({ roots: [{ uri: 'file:///work', name: 'work' }] }));
    let changed = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => void changed++);
    await client.connect(transportFor(b));

    expect(await call(client, 'roots')).toEqual({ roots: [{ uri: 'file:///work', name: 'work' }] });
    expect(await call(client, 'add_tool', { name: 'added' })).toBe('added');
    await expect.poll(() => changed).toBeGreaterThan(0);
    expect((await client.listTools()).tools.map((t) => t.name)).toContain('added');
  });

  it('sends a server request made while a call is pending on that call’s stream, so no GET stream is needed', async () => {
    const b = await bridge();
    const init = await rawInit(b, { ...INIT, params: { ...INIT.params, capabilities: { roots: {} } } });
    const session = init.headers.get('mcp-session-id') ?? '';
    expect((await sseMessages(init).next()).value).toMatchObject({ id: 1, result: { serverInfo: { name: 'fixture' } } });
    expect((await post(b, { jsonrpc: '2.0', method: 'notifications/initialized' }, session)).status).toBe(202);

    const stream = sseMessages(await post(b, { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'roots', arguments: {} } }, session));
    const ask = (await stream.next()).value;
    expect(ask).toMatchObject({ jsonrpc: '2.0', method: 'roots/list' });
    const roots = { roots: [{ uri: 'file:///raw', name: 'raw' }] };
    expect((await post(b, { jsonrpc: '2.0', id: ask?.['id'], result: roots }, session)).status).toBe(202);
    expect((await stream.next()).value).toEqual({ jsonrpc: '2.0', id: 2, result: { content: [{ type: 'text', text: JSON.stringify(roots) }] } });
  });

  it('gives each session its own child', async () => {
    const b = await bridge();
    const first = await connect(b);
    const second = await connect(b);
    const a1 = (await call(first.client, 'counter')) as { count: number; pid: number };
    const a2 = (await call(first.client, 'counter')) as { count: number; pid: number };
    const b1 = (await call(second.client, 'counter')) as { count: number; pid: number };
    expect([a1.count, a2.count, b1.count]).toEqual([1, 2, 1]);
    expect(a1.pid).toBe(a2.pid);
    expect(b1.pid).not.toBe(a1.pid);
    expect(new Set(b.sessions().map((s) => s.pid))).toEqual(new Set([a1.pid, b1.pid]));
    expect(b.sessions().find((s) => s.id === first.transport.sessionId)?.pid).toBe(a1.pid);
  });

  it('answers the pending request of a crashed child with an error, ends its session, and a new initialize works', async () => {
    const b = await bridge();
    const { client, transport } = await connect(b);
    const { pid } = (await call(client, 'counter')) as { pid: number };
    await expect(client.callTool({ name: 'crash', arguments: {} })).rejects.toThrow(/MCP server "fixture" exited/);
    expect(alive(pid)).toBe(false);
    expect(b.sessions()).toEqual([]);
    await expect(client.listTools()).rejects.toThrow(/404|Session not found/);
    expect(logs.find((l) => l['msg'] === 'mcp stdio: server exited; session ended')).toMatchObject({ level: 40, pid, session: transport.sessionId });

    const again = await connect(b);
    expect(await call(again.client, 'counter')).toMatchObject({ count: 1 });
  });

  it('refuses the 17th concurrent session with 503 and a JSON-RPC error; a DELETE frees its slot', { timeout: 60_000 }, async () => {
    const b = await bridge();
    const sessions = await Promise.all(Array.from({ length: 16 }, () => connect(b)));
    expect(b.sessions()).toHaveLength(16);

    const refused = await rawInit(b);
    expect(refused.status).toBe(503);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(await refused.json()).toEqual({ jsonrpc: '2.0', id: 1, error: { code: -32000, message: 'MCP server "fixture" has too many sessions (16); retry later' } });
    const client = new Client({ name: 'test', version: '1.0.0' });
    await expect(client.connect(transportFor(b))).rejects.toThrow(/too many sessions/);

    const first = sessions[0];
    if (first === undefined) throw new Error('no session');
    const pid = b.sessions().find((s) => s.id === first.transport.sessionId)?.pid;
    await first.transport.terminateSession();
    expect(b.sessions()).toHaveLength(15);
    await expect.poll(() => pid !== undefined && alive(pid)).toBe(false);
    const next = await connect(b);
    expect(await call(next.client, 'counter')).toMatchObject({ count: 1 });
  });

  it('ends an idle session and its child', async () => {
    const b = await bridge(fixture(), { idleMs: 1000 });
    const { client, transport } = await connect(b);
    const [session] = b.sessions();
    if (session === undefined) throw new Error('no session');
    const started = Date.now();
    await expect.poll(() => alive(session.pid)).toBe(false);
    expect(Date.now() - started).toBeGreaterThan(500);
    expect(b.sessions()).toEqual([]);
    expect(logs.find((l) => l['msg'] === 'mcp stdio: idle session ended')).toMatchObject({ session: transport.sessionId });
    await expect(client.listTools()).rejects.toThrow(/404|Session not found/);
  });

  it('close() stops every child and the listener', async () => {
    const b = await bridge();
    await Promise.all([connect(b), connect(b), connect(b)]);
    const pids = b.sessions().map((s) => s.pid);
    expect(pids).toHaveLength(3);
    expect(pids.every(alive)).toBe(true);
    await b.close();
    expect(pids.filter(alive)).toEqual([]);
    await expect(fetch(new URL(b.path, b.origin))).rejects.toThrow();
  });

  it('close() kills a child that ignores SIGTERM after the grace period', async () => {
    const b = await bridge(fixture({ FIXTURE_IGNORE_SIGTERM: '1' }), { killGraceMs: 300 });
    await connect(b);
    const [session] = b.sessions();
    if (session === undefined) throw new Error('no session');
    await b.close();
    expect(alive(session.pid)).toBe(false);
    expect(messages()).toContain('mcp stdio: server ignored SIGTERM; killing it');
  });

  it('answers initialize with a clear JSON-RPC error when the command does not exist, logs it, then backs off', async () => {
    const b = await bridge({ command: '/nonexistent/mcp-server', args: [], env: { FIXTURE_SECRET: SECRET } }, { restartBackoffMs: 60_000 });
    const res = await rawInit(b);
    expect(res.status).toBe(502);
    expect(await res.json()).toEqual({
      jsonrpc: '2.0',
      id: 1,
      error: { code: -32000, message: 'MCP server "fixture" could not be started: command not found' },
    });
    expect(logs.find((l) => l['msg'] === 'mcp stdio: server could not be started')).toMatchObject({
      level: 50,
      upstream: 'fixture',
      command: '/nonexistent/mcp-server',
      code: 'ENOENT',
    });

    const client = new Client({ name: 'test', version: '1.0.0' });
    await expect(client.connect(transportFor(b))).rejects.toThrow(/failed to start recently/);
    expect(b.sessions()).toEqual([]);
  });

  it('checks its options once, when started', async () => {
    await expect(startStdioBridge('x', fixture(), { logger, maxSessions: 0 })).rejects.toThrow(TypeError);
    await expect(startStdioBridge('x', { ...fixture(), command: '' }, { logger })).rejects.toThrow(TypeError);
    await expect(startStdioBridge('x', fixture(), { logger, path: 'mcp' })).rejects.toThrow(TypeError);
  });
});
