/**
 * RequestBody.whole(): a body that has all arrived, and that nobody has read, is handed over as one
 * buffer (forwarded without a stream); any other body is left to stream, untouched.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { RequestBody } from '../../gateway/server/body.js';

const LIMITS = { maxBytes: 64, idleMs: 5_000, totalMs: 10_000 };

/** A stand-in for the agent's request: what RequestBody listens to (data, end, close, pause, resume). */
function agentRequest(): PassThrough & IncomingMessage {
  return new PassThrough() as PassThrough & IncomingMessage;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

async function readAll(body: RequestBody): Promise<string> {
  let text = '';
  for await (const chunk of body) text += (chunk as Buffer).toString('utf8');
  return text;
}

describe('RequestBody.whole', () => {
  it('gives a body that arrived whole as one buffer, and leaves nothing to stream', async () => {
    const req = agentRequest();
    const body = new RequestBody(req, LIMITS);
    req.write('{"a":');
    req.write('[1,2]');
    req.end('}');
    await turn();
    expect(body.complete).toBe(true);
    expect(body.whole()?.toString('utf8')).toBe('{"a":[1,2]}');
    expect(body.read()).toBeNull();
    body.destroy();
  });

  it('an empty body is an empty buffer', async () => {
    const req = agentRequest();
    const body = new RequestBody(req, LIMITS);
    req.end();
    await turn();
    expect(body.whole()).toEqual(Buffer.alloc(0));
  });

  it('a body still arriving is left untouched, and streams whole afterwards', async () => {
    const req = agentRequest();
    const body = new RequestBody(req, LIMITS);
    req.write('part one, ');
    await turn();
    expect(body.whole()).toBeUndefined();
    const all = readAll(body);
    req.end('part two');
    expect(await all).toBe('part one, part two');
  });

  it('a body someone has started to read is not taken', async () => {
    const req = agentRequest();
    const body = new RequestBody(req, LIMITS);
    const chunks: string[] = [];
    body.on('data', (c: Buffer) => chunks.push(c.toString('utf8')));
    req.end('streamed');
    await turn();
    expect(body.whole()).toBeUndefined();
    expect(chunks.join('')).toBe('streamed');
  });

  it('a body past its size limit is never handed over', async () => {
    const req = agentRequest();
    const body = new RequestBody(req, LIMITS);
    req.end('x'.repeat(LIMITS.maxBytes + 1));
    await turn();
    expect(body.failure?.code).toBe('VALET_ERR_BODY_TOO_LARGE');
    expect(body.whole()).toBeUndefined();
  });
});
