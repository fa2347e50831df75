/**
 * The baseline: the least a Node reverse proxy can do. A node:http server that forwards every
 * request to one upstream through an undici Pool, streaming the body both ways. Hop-by-hop
 * headers and Host are dropped (undici refuses some of them and would otherwise mis-frame);
 * nothing else is inspected. Pool and server settings mirror Valet's (gateway/proxy/forward.ts,
 * gateway/main.ts) so the difference between the two is the work Valet does per request.
 *
 * The answer is relayed with `pipe()`, its errors and a client that goes away handled by hand.
 * `stream/promises` `pipeline()` would do the same, but it builds an AbortController, end-of-stream
 * listeners on both streams and, at its end, an AbortError (a DOMException with its stack) per
 * call: measured here, that halved this proxy's throughput (4,650–5,582 against 9,657–10,643 req/s)
 * and made the baseline look twice as slow as a Node proxy has to be.
 *
 * Run by bench/proxy.ts in its own process; argv[2] is the upstream origin.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type Dispatcher } from 'undici';
import { failChild, serveChild } from '../lib/child.js';

const origin = process.argv[2];
if (!origin) failChild(new Error('usage: bare-proxy.ts <upstream origin>'));

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host', 'expect']);

const pool = new Pool(origin, {
  connections: 64,
  pipelining: 1,
  keepAliveTimeout: 4_000,
  connectTimeout: 10_000,
  headersTimeout: 120_000,
  bodyTimeout: 300_000,
});

const server = createServer({ keepAliveTimeout: 5_000, headersTimeout: 30_000, requestTimeout: 0 }, (req, res) => {
  const headers: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i] as string;
    if (!HOP.has(name.toLowerCase())) headers.push(name, req.rawHeaders[i + 1] as string);
  }
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool
    .request({ method: req.method as Dispatcher.HttpMethod, path: req.url ?? '/', headers, body: hasBody ? req : null })
    .then((up) => {
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && !HOP.has(k)) out[k] = v;
      res.writeHead(up.statusCode, out);
      up.body.on('error', () => res.destroy());
      res.on('close', () => {
        if (!up.body.readableEnded) up.body.destroy();
      });
      up.body.pipe(res);
    })
    .catch(() => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end('{"error":"bad gateway"}');
      } else {
        res.destroy();
      }
    });
});

server.once('error', failChild);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  serveChild(
    {
      stats: () => ({}),
      onStop: async () => {
        await new Promise<void>((r) => {
          server.closeAllConnections();
          server.close(() => r());
        });
        await pool.close();
        return {};
      },
    },
    { url: `http://127.0.0.1:${port}` },
  );
});
