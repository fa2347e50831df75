/**
 * The fake OpenAI upstream of bench/llm.ts: a node:http server on 127.0.0.1 answering
 * POST /v1/chat/completions (any prefix) with a streamed chat completion as OpenAI sends it:
 * `events` content chunks of one token each, the first at once and then one every `intervalMs`,
 * a usage-only chunk when the request set `stream_options.include_usage`, then `data: [DONE]`.
 * Each chunk carries the time it was written (bench/lib/sse.ts).
 *
 * It counts requests, those without the expected credential, those that asked for usage, and
 * streams the client left before the end.
 *
 * Run by bench/llm.ts in its own process; argv: <expected authorization value> <events> <interval ms>.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { failChild, serveChild } from '../lib/child.js';
import { contentEvent, DONE_EVENT, PROMPT_TOKENS, STREAM_MODEL, usageEvent } from '../lib/sse.js';

const expected = process.argv[2] ?? '';
const n = Math.max(1, Number(process.argv[3] ?? 100));
const interval = Math.max(0, Number(process.argv[4] ?? 2));
const stats = { requests: 0, unauthorized: 0, withUsage: 0, events: 0, aborted: 0, bad: 0 };
let sequence = 0;

const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  const parts: Buffer[] = [];
  req.on('data', (c: Buffer) => parts.push(c));
  req.on('end', () => {
    stats.requests++;
    if (req.headers.authorization !== expected) stats.unauthorized++;
    let body: { model?: unknown; stream?: unknown; stream_options?: { include_usage?: unknown } };
    try {
      body = JSON.parse(Buffer.concat(parts).toString('utf8')) as typeof body;
    } catch {
      body = {};
    }
    if (req.method !== 'POST' || !req.url?.endsWith('/v1/chat/completions') || body.stream !== true || body.model !== STREAM_MODEL) {
      stats.bad++;
      res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{"message":"not the bench request"}}');
      return;
    }
    const usage = body.stream_options?.include_usage === true;
    if (usage) stats.withUsage++;
    const id = `chatcmpl-bench${++sequence}`;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-request-id': id });
    let i = 0;
    let timer: NodeJS.Timeout | undefined;
    res.once('close', () => {
      if (!res.writableFinished) {
        stats.aborted++;
        clearTimeout(timer);
      }
    });
    // Each event is one write (the socket has Nagle off), due at start + i × interval.
    const start = performance.now();
    const next = (): void => {
      if (res.destroyed) return;
      res.write(contentEvent(id, i, n, usage));
      stats.events++;
      if (++i < n) {
        timer = setTimeout(next, Math.max(0, start + i * interval - performance.now()));
        return;
      }
      if (usage) res.write(usageEvent(id, PROMPT_TOKENS, n));
      res.end(DONE_EVENT);
    };
    next();
  });
});

server.once('error', failChild);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  serveChild(
    {
      stats: () => ({ ...stats, cpuUs: cpuUs() }),
      onStop: () =>
        new Promise((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve({ ...stats }));
        }),
    },
    { url: `http://127.0.0.1:${port}` },
    // No 1 ms loop-delay sampler: it would wake this process between events.
    { loopDelay: false },
  );
});

function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}
