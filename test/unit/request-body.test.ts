/**
 * RequestBody.whole(): a body that has all arrived, and that nobody has read, is handed over as one
 * buffer (forwarded without a stream); any other body is left to stream, untouched. readAll(): a
 * stream read whole with `for await`'s outcomes, without its iterator.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { readAll } from '../../gateway/read.js';
import { RequestBody } from '../../gateway/server/body.js';

const LIMITS = { maxBytes: 64, idleMs: 5_000, totalMs: 10_000 };

/** A stand-in for the agent's request: what RequestBody listens to (data, end, close, pause, resume). */
function agentRequest(): PassThrough & IncomingMessage {
  return new PassThrough() as PassThrough & IncomingMessage;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

async function streamed(body: RequestBody): Promise<string> {
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
    const all = streamed(body);
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

describe('readAll', () => {
  it('reads a stream to its end as one buffer', async () => {
    const s = new PassThrough();
    const read = readAll(s);
    s.write('one ');
    s.write('two ');
    s.end('three');
    expect((await read).toString('utf8')).toBe('one two three');
  });

  it("rejects with the stream's error, and as a premature close when torn down without one", async () => {
    const failing = new PassThrough();
    const read = readAll(failing);
    failing.write('part');
    failing.destroy(Object.assign(new Error('upstream body timeout'), { code: 'UND_ERR_BODY_TIMEOUT' }));
    await expect(read).rejects.toMatchObject({ code: 'UND_ERR_BODY_TIMEOUT' });
    const cut = new PassThrough();
    const reading = readAll(cut);
    cut.write('part');
    cut.destroy();
    await expect(reading).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
  });

  it('past its limit destroys the stream and rejects with the error given', async () => {
    const s = new PassThrough();
    const read = readAll(s, { max: 8, tooLarge: () => new Error('too large') });
    s.write('12345');
    s.write('67890');
    await expect(read).rejects.toThrow('too large');
    expect(s.destroyed).toBe(true);
  });

  it('a stream already ended gives an empty buffer; one already failed, its error', async () => {
    const ended = new PassThrough();
    ended.end();
    ended.resume();
    await new Promise((r) => ended.once('end', r));
    expect(await readAll(ended)).toEqual(Buffer.alloc(0));
    const failed = new PassThrough();
    failed.on('error', () => undefined);
    failed.destroy(new Error('gone'));
    await expect(readAll(failed)).rejects.toThrow('gone');
  });
});
