/**
 * MCP upstreams (`kind: mcp`): the official MCP TypeScript SDK as client (through Valet) and as
 * server (Streamable HTTP on 127.0.0.1), real sockets. Tools are policy tools, tools/list is
 * filtered per agent, refusals are JSON-RPC errors the client raises, the server's credential
 * arrives and the agent's token never does; hostile messages never reach the server.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { EventStore } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';

const SERVER_KEY = 'mcp-server-api-key-4f2a9c';

interface FakeMcp {
  readonly origin: string;
  /** Every HTTP request the server received: method, authorization, body. */
  readonly seen: { method: string; authorization: string | undefined; body: string; headers: IncomingMessage['headers'] }[];
  /** Tools that ran, with their arguments. */
  readonly ran: { tool: string; args: unknown }[];
  close(): Promise<void>;
}

/** Events kept in the order they were sent (ids `<stream>:<n>`), for resumption. */
function orderedEventStore(): EventStore {
  const events: { id: string; stream: string; message: JSONRPCMessage }[] = [];
  return {
    async storeEvent(stream, message) {
      const id = `${stream}:${events.length}`;
      events.push({ id, stream, message });
      return id;
    },
    async replayEventsAfter(lastEventId, { send }) {
      const at = events.findIndex((e) => e.id === lastEventId);
      const stream = events[at]?.stream ?? '';
      for (const e of events.slice(at + 1)) if (e.stream === stream) await send(e.id, e.message);
      return stream;
    },
  };
}

/** A Streamable HTTP MCP server (stateful sessions) with a few tools; it demands its own API key. */
async function startFakeMcp(): Promise<FakeMcp> {
  const seen: FakeMcp['seen'] = [];
  const ran: FakeMcp['ran'] = [];
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const newServer = (): McpServer => {
    const server = new McpServer({ name: 'fake-tools', version: '1.0.0' }, { capabilities: { logging: {} } });
    const text = (t: string) => ({ content: [{ type: 'text' as const, text: t }] });
    server.registerTool('echo', { description: 'Echoes', inputSchema: { message: z.string() } }, async (args) => (ran.push({ tool: 'echo', args }), text(`echo: ${args.message}`)));
    for (const uri of ['note://public/1', 'note://private/1']) {
      server.registerResource(uri, uri, { mimeType: 'text/plain' }, async (u) => ({ contents: [{ uri: u.href, text: `contents of ${u.href}` }] }));
    }
    server.registerTool('publish', { description: 'Publishes a post', inputSchema: { post: z.string() } }, async (args) => (ran.push({ tool: 'publish', args }), text(`published ${args.post}`)));
    server.registerTool('deploy', { description: 'Deploys a service', inputSchema: { service: z.string() } }, async (args) => (ran.push({ tool: 'deploy', args }), text(`deployed ${args.service}`)));
    server.registerTool('delete_repo', { description: 'Deletes a repository', inputSchema: { repo: z.string() } }, async (args) => (ran.push({ tool: 'delete_repo', args }), text('deleted')));
    server.registerTool('search', { description: 'Searches', inputSchema: { query: z.string() } }, async (args) => (ran.push({ tool: 'search', args }), text(`results for ${args.query}; key ${SERVER_KEY}`)));
    server.registerTool('count', { description: 'Counts with progress', inputSchema: { to: z.number() } }, async (args, extra) => {
      ran.push({ tool: 'count', args });
      for (let i = 1; i <= args.to; i++) {
        await extra.sendNotification({ method: 'notifications/message', params: { level: 'info', data: `at ${i}` } });
      }
      return text(`counted to ${args.to}`);
    });
    return server;
  };
  const http: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const body = Buffer.concat(chunks).toString('utf8');
        seen.push({ method: req.method ?? '', authorization: req.headers.authorization, body, headers: req.headers });
        if (req.headers.authorization !== `Bearer ${SERVER_KEY}`) {
          res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"no key"}');
          return;
        }
        const parsed: unknown = body === '' ? undefined : JSON.parse(body);
        const sid = req.headers['mcp-session-id'];
        let transport = typeof sid === 'string' ? transports.get(sid) : undefined;
        if (transport === undefined) {
          // With an event store, streams can be resumed (Last-Event-ID).
          transport = new StreamableHTTPServerTransport({ sessionIdGenerator: () => randomUUID(), eventStore: orderedEventStore(), onsessioninitialized: (id) => void transports.set(id, transport!) });
          await newServer().connect(transport);
        }
        await transport.handleRequest(req, res, parsed);
      })();
    });
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  return {
    origin: `http://127.0.0.1:${(http.address() as AddressInfo).port}`,
    seen,
    ran,
    close: async () => {
      for (const t of transports.values()) await t.close();
      http.closeAllConnections();
      await new Promise((r) => http.close(r));
    },
  };
}

describe('MCP upstreams', () => {
  let mcp: FakeMcp;
  let gw: TestGateway;

  beforeAll(async () => {
    mcp = await startFakeMcp();
    gw = await startTestGateway({
      upstreams: [
        { name: 'tools', kind: 'mcp', origin: mcp.origin, credential: { scheme: 'bearer', secret: 'TOOLS_KEY' }, audit_args: { echo: ['message'] } },
        // The same server again, with rules that never read arguments: listing can then tell a tool every call to which is denied.
        { name: 'locked', kind: 'mcp', origin: mcp.origin, credential: { scheme: 'bearer', secret: 'TOOLS_KEY' } },
      ],
      rules: [
        { id: 'locked-protocol', upstream: 'locked', effect: 'allow' },
        { id: 'locked-no-deletes', tools: ['locked.delete_repo'], effect: 'deny', reason: 'agents never delete repositories' },
        { id: 'locked-interns', tools: ['locked.count', 'locked.search'], when: '"intern" in agent.roles', effect: 'deny', reason: 'not for interns' },
        { id: 'tools-protocol', upstream: 'tools', effect: 'allow' },
        { id: 'private-notes', upstream: 'tools', paths: ['/resources/read'], when: 'args.uri.startsWith("note://private/")', effect: 'deny', reason: 'private notes stay private' },
        { id: 'no-deletes', tools: ['tools.delete_repo'], effect: 'deny', reason: 'agents never delete repositories' },
        { id: 'posts-need-a-person', tools: ['tools.publish'], effect: 'escalate', reason: 'posts need an editor', approval: { group: 'editors', mode: 'async', timeout: '1h' } },
        { id: 'deploys-need-a-person', tools: ['tools.deploy'], effect: 'escalate', reason: 'deploys need a person', approval: { group: 'release', mode: 'hold', timeout: '30s' } },
        { id: 'search-only-public', tools: ['tools.search'], when: 'args.query.startsWith("public:")', effect: 'allow' },
        { id: 'search-else-denied', tools: ['tools.search'], when: '!args.query.startsWith("public:")', effect: 'deny', reason: 'only public searches' },
        { id: 'interns-echo-only', upstream: 'tools', tools: ['tools.count'], when: '"intern" in agent.roles', effect: 'deny', reason: 'interns may not count' },
      ],
      env: { TOOLS_KEY: SERVER_KEY },
    });
  });
  afterAll(async () => {
    await gw?.close();
    await mcp?.close();
  });

  const connect = async (o: { roles?: string[]; upstream?: string } = {}): Promise<{ client: Client; token: string }> => {
    const token = await gw.token({ agent: 'mcp-agent', tenant: 'acme', roles: o.roles ?? [] });
    const client = new Client({ name: 'test-agent', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.url}/${o.upstream ?? 'tools'}/mcp`), { requestInit: { headers: { authorization: `Bearer ${token}` } } }));
    return { client, token };
  };

  it('initializes through Valet; calls an allowed tool; the server gets its own key and never the agent token', async () => {
    const { client, token } = await connect();
    const r = await client.callTool({ name: 'echo', arguments: { message: 'hi' } });
    expect(r.content).toEqual([{ type: 'text', text: 'echo: hi' }]);
    for (const s of mcp.seen) {
      expect(s.authorization).toBe(`Bearer ${SERVER_KEY}`);
      expect(JSON.stringify(s.headers) + s.body).not.toContain(token);
    }
    const rows = await gw.auditRows();
    const row = rows.find((r) => r.tool === 'tools.echo');
    expect(row).toMatchObject({ upstream: 'tools', decision: 'allow', status: 200, args: JSON.stringify({ message: 'hi' }) });
    expect(JSON.parse(row!.rpc!)).toMatchObject({ method: 'tools/call', id: expect.any(Number), session: expect.any(String) });
    expect(JSON.stringify(rows)).not.toContain(token);
    await client.close();
  });

  it('many clients connect at once (each initialize has id 0, before any session exists)', async () => {
    const clients = await Promise.all(Array.from({ length: 8 }, () => connect()));
    for (const { client } of clients) await client.close();
  });

  it('tools/list shows only what this agent may call', async () => {
    const { client } = await connect({ upstream: 'locked' });
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['count', 'deploy', 'echo', 'publish', 'search']);
    const intern = await connect({ roles: ['intern'], upstream: 'locked' });
    expect((await intern.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['deploy', 'echo', 'publish']);
    // Where a rule reads arguments, a call may be allowed or not by what it is called with: listed, decided per call.
    const open = await connect();
    expect((await open.client.listTools()).tools.map((t) => t.name).sort()).toEqual(['count', 'delete_repo', 'deploy', 'echo', 'publish', 'search']);
    await open.client.close();
    await client.close();
    await intern.client.close();
  });

  it('resources are policy-visible by URI: listed only when readable, read only when allowed', async () => {
    const { client } = await connect();
    expect((await client.listResources()).resources.map((r) => r.uri)).toEqual(['note://public/1']);
    expect((await client.readResource({ uri: 'note://public/1' })).contents).toEqual([{ uri: 'note://public/1', text: 'contents of note://public/1' }]);
    await expect(client.readResource({ uri: 'note://private/1' })).rejects.toMatchObject({ data: { code: 'VALET_ERR_POLICY_DENIED', rule: 'private-notes' } });
    await client.close();
  });

  it('a denied call is a JSON-RPC error the client raises, with Valet\'s code and rule; nothing reaches the server', async () => {
    const { client } = await connect();
    const before = mcp.ran.length;
    const err = await client.callTool({ name: 'delete_repo', arguments: { repo: 'prod' } }).then(
      () => undefined,
      (e: unknown) => e as { code: number; message: string; data?: Record<string, unknown> },
    );
    expect(err?.code).toBe(-32000);
    expect(err?.message).toContain('agents never delete repositories');
    expect(err?.data).toMatchObject({ code: 'VALET_ERR_POLICY_DENIED', rule: 'no-deletes', request_id: expect.any(String) });
    // Argument conditions: the same tool allowed or denied by what it is called with.
    const ok = await client.callTool({ name: 'search', arguments: { query: 'public:valet' } });
    expect(JSON.stringify(ok.content)).toContain('results for public:valet');
    // The server's key in a result is scrubbed like any injected secret.
    expect(JSON.stringify(ok.content)).not.toContain(SERVER_KEY);
    await expect(client.callTool({ name: 'search', arguments: { query: 'secret:payroll' } })).rejects.toMatchObject({ data: { rule: 'search-else-denied' } });
    expect(mcp.ran.slice(before).map((r) => r.tool)).toEqual(['search']);
    await client.close();
  });

  it('an escalated call waits for a person; once approved it runs, exactly once', async () => {
    const { client } = await connect();
    const before = mcp.ran.length;
    const call = client.callTool({ name: 'deploy', arguments: { service: 'billing' } });
    const admin = `Bearer ${await gw.adminToken(['approver'], { subject: 'rel-eng', groups: ['release'] })}`;
    let id: string | undefined;
    await expect
      .poll(async () => {
        const list = await request(`${gw.adminUrl}/api/approvals?status=pending`, { headers: { authorization: admin } });
        const body = (await list.body.json()) as { approvals: { id: string; tool: string | null; args: unknown }[] };
        id = body.approvals.find((a) => a.tool === 'tools.deploy')?.id;
        return body.approvals.find((a) => a.tool === 'tools.deploy')?.args;
      })
      .toEqual({ service: 'billing' });
    expect(mcp.ran.length).toBe(before);
    const ok = await request(`${gw.adminUrl}/api/approvals/${id}/approve`, { method: 'POST', headers: { authorization: admin, 'content-type': 'application/json' }, body: '{}' });
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    expect((await call).content).toEqual([{ type: 'text', text: 'deployed billing' }]);
    expect(mcp.ran.slice(before)).toEqual([{ tool: 'deploy', args: { service: 'billing' } }]);
    // Listed with a note: calls wait for approval.
    expect((await client.listTools()).tools.find((t) => t.name === 'deploy')?.description).toContain("wait for a person's approval");
    await client.close();
  }, 30_000);

  it('an async escalation tells the model, as the call\'s result, that approval is pending; the same call made again once approved runs, once', async () => {
    const { client } = await connect();
    const before = mcp.ran.length;
    const first = await client.callTool({ name: 'publish', arguments: { post: 'launch' } });
    expect(first.isError).toBe(true);
    expect(JSON.stringify(first.content)).toContain('needs approval by editors');
    const id = (first._meta as { 'valet/approval': { id: string } })['valet/approval'].id;
    expect(mcp.ran.length).toBe(before);
    const admin = `Bearer ${await gw.adminToken(['approver'], { subject: 'editor-1', groups: ['editors'] })}`;
    const ok = await request(`${gw.adminUrl}/api/approvals/${id}/approve`, { method: 'POST', headers: { authorization: admin, 'content-type': 'application/json' }, body: '{}' });
    expect(ok.statusCode).toBe(200);
    await ok.body.dump();
    // Different arguments are another call: not covered by this approval.
    expect((await client.callTool({ name: 'publish', arguments: { post: 'other' } })).isError).toBe(true);
    const again = await client.callTool({ name: 'publish', arguments: { post: 'launch' } });
    expect(again.content).toEqual([{ type: 'text', text: 'published launch' }]);
    expect(mcp.ran.slice(before)).toEqual([{ tool: 'publish', args: { post: 'launch' } }]);
    // Used once: the next identical call waits for a new approval.
    expect((await client.callTool({ name: 'publish', arguments: { post: 'launch' } })).isError).toBe(true);
    expect(mcp.ran.length).toBe(before + 1);
    await client.close();
  });

  it('streams notifications and the result through (SSE), scrubbed event by event', async () => {
    const { client } = await connect();
    const logs: unknown[] = [];
    client.fallbackNotificationHandler = async (n) => void logs.push(n.params);
    const r = await client.callTool({ name: 'count', arguments: { to: 3 } });
    expect(r.content).toEqual([{ type: 'text', text: 'counted to 3' }]);
    expect(logs).toHaveLength(3);
    await client.close();
  });

  const post = async (body: unknown, o: { session?: string; raw?: string } = {}): Promise<{ status: number; json: Record<string, unknown> }> => {
    const token = await gw.token({ agent: 'mcp-agent', tenant: 'acme' });
    const res = await request(`${gw.url}/tools/mcp`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(o.session !== undefined && { 'mcp-session-id': o.session }) },
      body: o.raw ?? JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: JSON.parse(text) as Record<string, unknown> };
  };

  it('is an OAuth protected resource (RFC 9728): a 401 points to metadata naming the issuers whose tokens Valet accepts', async () => {
    const res = await request(`${gw.url}/tools/mcp`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }) });
    expect(res.statusCode).toBe(401);
    await res.body.dump();
    const m = /resource_metadata="([^"]+)"/.exec(String(res.headers['www-authenticate']));
    expect(m?.[1]).toBe(`${gw.url}/.well-known/oauth-protected-resource/tools/mcp`);
    const meta = await request(m![1]!);
    expect(meta.statusCode).toBe(200);
    expect(await meta.body.json()).toMatchObject({ resource: `${gw.url}/tools/mcp`, authorization_servers: ['valet-test'], bearer_methods_supported: ['header'] });
    // Only MCP upstreams publish it.
    const none = await request(`${gw.url}/.well-known/oauth-protected-resource/nowhere/mcp`);
    expect(none.statusCode).toBe(404);
    await none.body.dump();
  });

  it('hostile messages get JSON-RPC errors and nothing is forwarded', async () => {
    const before = mcp.seen.length;
    const parse = await post(undefined, { raw: '{"jsonrpc": "2.0", "id": 1, "method": ' });
    expect(parse.json).toMatchObject({ jsonrpc: '2.0', id: null, error: { code: -32700, data: { code: 'VALET_ERR_MCP_PARSE' } } });
    const odd = await post({ jsonrpc: '2.0', id: 7, method: 'Tools/Call', params: { name: 'delete_repo', arguments: { repo: 'prod' } } });
    expect(odd.json).toMatchObject({ id: 7, error: { code: -32601, data: { code: 'VALET_ERR_MCP_METHOD' } } });
    const noVersion = await post({ id: 8, method: 'tools/call', params: { name: 'echo' } });
    expect(noVersion.json).toMatchObject({ id: 8, error: { code: -32600 } });
    const nullId = await post({ jsonrpc: '2.0', id: null, method: 'tools/call', params: { name: 'echo' } });
    expect(nullId.json).toMatchObject({ error: { code: -32600 } });
    const empty = await post([]);
    expect(empty.json).toMatchObject({ error: { code: -32600 } });
    expect(mcp.seen.length).toBe(before);
  });

  /** An MCP session opened by hand (initialize, then initialized): its id and the headers that go with it. */
  const rawSession = async (agent: string): Promise<{ token: string; session: string; headers: Record<string, string> }> => {
    const token = await gw.token({ agent, tenant: 'acme' });
    const base = { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    const init = await request(`${gw.url}/tools/mcp`, {
      method: 'POST',
      headers: base,
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-03-26', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } }),
    });
    await init.body.dump();
    const session = String(init.headers['mcp-session-id']);
    const headers = { ...base, 'mcp-session-id': session, 'mcp-protocol-version': '2025-03-26' };
    await (await request(`${gw.url}/tools/mcp`, { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) })).body.dump();
    return { token, session, headers };
  };

  it('a batch is decided per element: allowed ones run, refused ones get their own errors, each has its own audit row', async () => {
    const { session, headers: withSession } = await rawSession('batch-agent');
    const before = mcp.ran.length;
    const res = await request(`${gw.url}/tools/mcp`, {
      method: 'POST',
      headers: withSession,
      body: JSON.stringify([
        { jsonrpc: '2.0', id: 10, method: 'tools/list' },
        { jsonrpc: '2.0', id: 11, method: 'tools/call', params: { name: 'echo', arguments: { message: 'from a batch' } } },
        { jsonrpc: '2.0', id: 12, method: 'tools/call', params: { name: 'delete_repo', arguments: { repo: 'prod' } } },
        { jsonrpc: '2.0', id: 13, method: 'Tools/Call', params: { name: 'delete_repo', arguments: { repo: 'prod' } } },
        { jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: 'x', progress: 1 } },
      ]),
    });
    expect(res.statusCode).toBe(200);
    const answers = (await res.body.json()) as { id: number; result?: { content?: unknown; tools?: unknown[] }; error?: { code: number; data?: { code: string } } }[];
    const byId = new Map(answers.map((a) => [a.id, a]));
    expect([...byId.keys()].sort()).toEqual([10, 11, 12, 13]);
    expect(byId.get(10)?.result?.tools?.length).toBeGreaterThan(0);
    expect(byId.get(11)?.result?.content).toEqual([{ type: 'text', text: 'echo: from a batch' }]);
    expect(byId.get(12)?.error).toMatchObject({ code: -32000, data: { code: 'VALET_ERR_POLICY_DENIED' } });
    expect(byId.get(13)?.error).toMatchObject({ code: -32601, data: { code: 'VALET_ERR_MCP_METHOD' } });
    expect(mcp.ran.slice(before)).toEqual([{ tool: 'echo', args: { message: 'from a batch' } }]);
    const rows = (await gw.auditRows()).filter((r) => r.agent === 'batch-agent' && r.rpc !== null && JSON.parse(r.rpc).session === session);
    const ids = rows.map((r) => JSON.parse(r.rpc!) as { id?: number; batch?: number }).map((r) => r.batch !== undefined ? `batch:${r.batch}` : r.id);
    expect(ids).toEqual(expect.arrayContaining([10, 11, 12, 'batch:5']));
    expect(rows.find((r) => JSON.parse(r.rpc!).id === 12)).toMatchObject({ decision: 'deny', rule: 'no-deletes', tool: 'tools.delete_repo' });
  });

  it('a stream is resumed through Valet: GET with Last-Event-ID replays what followed, in the same session', async () => {
    const { token, session, headers: inSession } = await rawSession('resume-agent');
    await (await request(`${gw.url}/tools/mcp`, { method: 'POST', headers: inSession, body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }) })).body.dump();
    const call = await request(`${gw.url}/tools/mcp`, { method: 'POST', headers: inSession, body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'tools/call', params: { name: 'count', arguments: { to: 3 } } }) });
    const streamed = await call.body.text();
    const ids = [...streamed.matchAll(/^id: (.+)$/gm)].map((m) => m[1] as string);
    expect(ids.length).toBeGreaterThanOrEqual(4);
    // The client lost the stream after the first event: it asks for the rest.
    const resumed = await request(`${gw.url}/tools/mcp`, { method: 'GET', headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream', 'mcp-session-id': session, 'mcp-protocol-version': '2025-03-26', 'last-event-id': ids[0] as string } });
    expect(resumed.statusCode).toBe(200);
    let replay = '';
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        resumed.body.destroy();
        resolve();
      }, 5_000);
      resumed.body.on('data', (c: Buffer) => {
        replay += c.toString();
        if (replay.includes('counted to 3')) {
          clearTimeout(timer);
          resumed.body.destroy();
          resolve();
        }
      });
      resumed.body.on('error', () => undefined);
    });
    expect(replay).toContain('at 2');
    expect(replay).toContain('counted to 3');
    expect(replay).not.toContain(`id: ${ids[0]}\n`);
  });

  it('an id already in flight in the session is refused: answers would be ambiguous', async () => {
    const held = post({ jsonrpc: '2.0', id: 'dup-1', method: 'tools/call', params: { name: 'deploy', arguments: { service: 'dup' } } }, { session: 'sess-dup' });
    const admin = `Bearer ${await gw.adminToken(['approver'], { subject: 'rel-eng', groups: ['release'] })}`;
    let id: string | undefined;
    await expect
      .poll(async () => {
        const list = await request(`${gw.adminUrl}/api/approvals?status=pending`, { headers: { authorization: admin } });
        id = ((await list.body.json()) as { approvals: { id: string; args: { service?: string } }[] }).approvals.find((a) => a.args.service === 'dup')?.id;
        return id;
      })
      .toBeDefined();
    const dup = await post({ jsonrpc: '2.0', id: 'dup-1', method: 'ping' }, { session: 'sess-dup' });
    // Another session (or none: clients each start at id 0) is not affected.
    const elsewhere = await post({ jsonrpc: '2.0', id: 'dup-1', method: 'ping' });
    expect(elsewhere.json).not.toMatchObject({ error: { message: expect.stringContaining('already in use') } });
    expect(dup.json).toMatchObject({ id: 'dup-1', error: { code: -32600, message: expect.stringContaining('already in use') } });
    const no = await request(`${gw.adminUrl}/api/approvals/${id}/deny`, { method: 'POST', headers: { authorization: admin, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'not today' }) });
    await no.body.dump();
    expect((await held).json).toMatchObject({ id: 'dup-1', error: { code: -32000 } });
    // Free again once the first is answered.
    const again = await post({ jsonrpc: '2.0', id: 'dup-1', method: 'ping' }, { session: 'sess-dup' });
    expect(again.json).not.toMatchObject({ error: { message: expect.stringContaining('already in use') } });
  });

  it('a tools/call for a tool the server never listed by that exact name is refused (case variants included)', async () => {
    const { client } = await connect();
    const before = mcp.ran.length;
    await expect(client.callTool({ name: 'Echo', arguments: { message: 'x' } })).rejects.toMatchObject({ code: -32602, data: { code: 'VALET_ERR_MCP_UNKNOWN_TOOL' } });
    await expect(client.callTool({ name: 'no_such_tool', arguments: {} })).rejects.toMatchObject({ data: { code: 'VALET_ERR_MCP_UNKNOWN_TOOL' } });
    expect(mcp.ran.length).toBe(before);
    await client.close();
  });
});

describe('a stdio MCP server launched by Valet', () => {
  let gw: TestGateway;
  const SECRET = 'stdio-server-token-8e1d77';

  beforeAll(async () => {
    gw = await startTestGateway({
      upstreams: [
        {
          name: 'local',
          kind: 'mcp',
          stdio: { command: process.execPath, args: [new URL('../fixtures/mcp-stdio-server.mjs', import.meta.url).pathname], env: { FIXTURE_SECRET: 'LOCAL_SERVER_TOKEN' } },
        },
      ],
      rules: [
        { id: 'local', upstream: 'local', effect: 'allow' },
        { id: 'no-crash', tools: ['local.crash'], effect: 'deny', reason: 'no crashing' },
      ],
      env: { LOCAL_SERVER_TOKEN: SECRET, VALET_MASTER_KEY_TEST_MARKER: 'must-not-reach-the-child' },
    });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('serves it over Streamable HTTP with the same policy; its environment holds only the configured secret', async () => {
    const token = await gw.token({ agent: 'local-agent', tenant: 'acme' });
    const client = new Client({ name: 'test-agent', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${gw.url}/local/mcp`), { requestInit: { headers: { authorization: `Bearer ${token}` } } }));
    const names = (await client.listTools()).tools.map((t) => t.name);
    expect(names).toContain('echo');
    expect(names).not.toContain('crash');
    const env = await client.callTool({ name: 'env', arguments: { name: 'FIXTURE_SECRET' } });
    // The server's secret arrived (scrubbed on the way back, as an injected secret would be).
    expect(JSON.stringify(env.content)).not.toContain(SECRET);
    // It did arrive: the child answered with the value, which Valet replaced on the way back.
    expect(JSON.stringify(env.content)).toContain('[REDACTED]');
    const keys = await client.callTool({ name: 'env_keys', arguments: {} });
    expect(JSON.stringify(keys.content)).toContain('FIXTURE_SECRET');
    expect(JSON.stringify(keys.content)).not.toContain('VALET_MASTER_KEY_TEST_MARKER');
    expect(JSON.stringify(keys.content)).not.toContain('VALET_TEST_SIGNING_KEY');
    await expect(client.callTool({ name: 'crash', arguments: {} })).rejects.toMatchObject({ data: { code: 'VALET_ERR_POLICY_DENIED', rule: 'no-crash' } });
    expect((await client.callTool({ name: 'echo', arguments: { message: 'via stdio' } })).content).toEqual([{ type: 'text', text: JSON.stringify({ message: 'via stdio' }) }]);
    await client.close();
    expect(gw.logs.join('\n')).not.toContain(SECRET);
  }, 30_000);
});
