import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(16 * 256);
let offset = pool.length;
let lastMs = 0;
let seq = 0;

/**
 * A request id: a UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then a 12-bit counter
 * that orders ids minted in the same millisecond, then 62 random bits.
 *
 * Why not `randomUUID()` (version 4): the audit log indexes `request_id`, and random keys land on
 * a random page of that index on every insert — at tens of thousands of rows per second each
 * insert dirties a different page, and every dirty page is written to the WAL and fsynced at
 * commit. Time-ordered ids append at the right edge of the index instead. They still carry 62
 * random bits (not guessable), and reveal only the time the request arrived, which the agent knew.
 */
export function requestId(): string {
  if (offset + 16 > pool.length) {
    randomFillSync(pool);
    offset = 0;
  }
  const b = pool.subarray(offset, offset + 16);
  offset += 16;
  let ms = Date.now();
  if (ms > lastMs) {
    lastMs = ms;
    seq = b[6]! & 0x3f; // start low in the 12-bit space so it rarely overflows
  } else {
    ms = lastMs; // the clock went back or stood still: keep ids increasing
    seq++;
    if (seq > 0xfff) {
      lastMs++;
      ms = lastMs;
      seq = 0;
    }
  }
  b.writeUIntBE(ms, 0, 6);
  b[6] = 0x70 | (seq >> 8);
  b[7] = seq & 0xff;
  b[8] = 0x80 | (b[8]! & 0x3f);
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
