/**
 * The MCP benchmark's server: the official SDK's `McpServer` behind its Streamable HTTP transport
 * on 127.0.0.1, stateful (one transport and one server per `Mcp-Session-Id`), with one tool,
 * `echo`, that returns its `message` argument. `POST /sse` answers each request as a Server-Sent
 * Events stream (the SDK's default), `POST /json` as one JSON body (`enableJsonResponse`); the
 * path chosen at `initialize` fixes the session's mode. It offers no standalone stream: a `GET`
 * is answered 405, as the protocol allows, so no long-lived connection per session holds a slot of
 * Valet's pool to the server while calls are measured.
 *
 * Every request must carry the server's own key (`Authorization: Bearer <key>`, argv[2]), as a
 * hosted MCP server would demand: direct clients send it themselves, Valet injects it. Requests
 * without it are answered 401 and counted, so the orchestrator can tell that Valet's calls went
 * through injection.
 *
 * Run by bench/mcp.ts in its own process.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import { failChild, serveChild } from '../lib/child.js';

const key = process.argv[2];
if (key === undefined || key === '') failChild(new Error('usage: mcp-server.ts <key>'));
const expected = `Bearer ${key}`;

let requests = 0;
let unauthorized = 0;
let calls = 0;
const transports = new Map<string, StreamableHTTPServerTransport>();

function newServer(): McpServer {
  const server = new McpServer({ name: 'bench-echo', version: '1.0.0' });
  server.registerTool('echo', { description: 'Returns its message', inputSchema: { message: z.string() } }, async ({ message }) => {
    calls++;
    return { content: [{ type: 'text' as const, text: message }] };
  });
  return server;
}

async function handle(req: IncomingMessage, res: ServerResponse, body: string): Promise<void> {
  requests++;
  if (req.headers.authorization !== expected) {
    unauthorized++;
    res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"this server needs its key"}');
    return;
  }
  if (req.method === 'GET') {
    res.writeHead(405, { allow: 'POST, DELETE' }).end();
    return;
  }
  const sid = req.headers['mcp-session-id'];
  let transport = typeof sid === 'string' ? transports.get(sid) : undefined;
  if (transport === undefined) {
    if (typeof sid === 'string') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}');
      return;
    }
    const path = (req.url ?? '').split('?')[0];
    const created: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      enableJsonResponse: path === '/json',
      onsessioninitialized: (id) => void transports.set(id, created),
    });
    created.onclose = () => {
      if (created.sessionId !== undefined) transports.delete(created.sessionId);
    };
    await newServer().connect(created);
    transport = created;
  }
  await transport.handleRequest(req, res, body === '' ? undefined : (JSON.parse(body) as unknown));
}

const http = createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(err));
    });
  });
});

http.once('error', failChild);
http.listen(0, '127.0.0.1', () => {
  const { port } = http.address() as AddressInfo;
  serveChild(
    {
      stats: () => ({ requests, unauthorized, calls, sessions: transports.size }),
      onStop: async () => {
        for (const t of [...transports.values()]) await t.close().catch(() => undefined);
        http.closeAllConnections();
        await new Promise((r) => http.close(r));
        return { requests, unauthorized, calls };
      },
    },
    { url: `http://127.0.0.1:${port}` },
  );
});
