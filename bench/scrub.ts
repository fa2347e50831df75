/**
 * Throughput of the response scrubber (gateway/proxy/scrub.ts): MB/s through a 10 MB body fed in
 * 16 KiB chunks, against copying the same chunks, in-process (no sockets). Prints one table.
 *
 *   npm run bench:scrub                      10 MB, 16 KiB chunks, 7 runs per case (median)
 *   npm run bench:scrub -- --mb 50 --chunk 65536 --runs 11
 *
 * Cases: one secret (a bearer key), two (a two-secret `headers` credential), and one whose '/' and
 * '+' add percent-encoded and base64url forms; bodies of JSON text
 * with no copy of the secret, and the same text with one copy every ~64 KiB; the synchronous
 * session alone and through the Transform stream (as the gateway runs it), next to a PassThrough.
 */
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { PassThrough, type Transform } from 'node:stream';
import { constants, createGunzip, createGzip, gunzipSync, gzipSync } from 'node:zlib';
import { parseArgs } from 'node:util';
import { createScrubber, type Scrubber } from '../gateway/proxy/scrub.js';
import { median } from './lib/stats.js';

const { values: flags } = parseArgs({
  options: {
    mb: { type: 'string', default: '10' },
    chunk: { type: 'string', default: '16384' },
    runs: { type: 'string', default: '7' },
  },
});
const BODY_BYTES = Number(flags.mb) * 1_000_000;
const CHUNK = Number(flags.chunk);
const RUNS = Number(flags.runs);

const SECRET = `sk-proj-${randomBytes(36).toString('base64url')}`;
const SECRET_2 = `dd-${randomBytes(20).toString('hex')}`;
// An AWS-style key: '/' and '+' give it percent-encoded and base64url forms too (more patterns).
const AWKWARD = `${randomBytes(15).toString('base64')}/+${randomBytes(12).toString('base64')}`;

/** An LLM-ish JSON/SSE body: mostly words and punctuation, some base64-looking ids. */
function body(withCopies: boolean): Buffer[] {
  const words = 'the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her'.split(' ');
  let text = '';
  let n = 0;
  while (text.length < BODY_BYTES) {
    const line = `data: {"id":"chatcmpl-${randomBytes(9).toString('base64url')}","delta":"${Array.from({ length: 12 }, () => words[(n++ * 7) % words.length]).join(' ')}"}\n\n`;
    text += line;
    if (withCopies && text.length % 65_536 < line.length) text += `data: {"echo":"Bearer ${SECRET}"}\n\n`;
  }
  const all = Buffer.from(text.slice(0, BODY_BYTES));
  const chunks: Buffer[] = [];
  for (let i = 0; i < all.length; i += CHUNK) chunks.push(Buffer.from(all.subarray(i, i + CHUNK)));
  return chunks;
}

interface Case {
  /** Bytes the throughput is counted in when not the chunks' (a compressed body: its decoded size). */
  bytes?: number;
  name: string;
  body: string;
  chunks: Buffer[];
  /** Runs the body through once; resolves to the number of bytes that came out. */
  run(chunks: Buffer[]): Promise<number> | number;
}

/**
 * Measures every case RUNS times, interleaved (case A, B, C, A, B, C, ...) so that load from other
 * processes spreads over all cases alike. Reports the median wall-clock MB/s and the median MB per
 * CPU-second of this process (user + system): the second is what one core sustains, and moves
 * much less when the machine is shared.
 */
async function measure(cases: Case[]): Promise<{ wall: number; cpu: number }[]> {
  const wall: number[][] = cases.map(() => []);
  const cpu: number[][] = cases.map(() => []);
  for (const c of cases) await c.run(c.chunks); // warm-up
  for (let round = 0; round < RUNS; round++) {
    for (const [i, c] of cases.entries()) {
      const bytes = c.bytes ?? c.chunks.reduce((sum, x) => sum + x.length, 0);
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const out = await c.run(c.chunks);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const used = process.cpuUsage(c0);
      if (out <= 0) throw new Error(`${c.name}: nothing came out`);
      wall[i]?.push(bytes / 1e6 / seconds);
      cpu[i]?.push(bytes / 1e6 / ((used.user + used.system) / 1e6));
    }
  }
  return cases.map((_, i) => ({ wall: median(wall[i] ?? []), cpu: median(cpu[i] ?? []) }));
}

/** Writes the chunks into a fresh stream (respecting back-pressure) and counts what comes out. */
const throughStream = (make: () => Transform) => async (chunks: Buffer[]): Promise<number> => {
  const t = make();
  let out = 0;
  t.on('data', (c: Buffer) => {
    out += c.length;
  });
  const done = new Promise<void>((r) => t.on('end', r));
  for (const c of chunks) if (!t.write(c)) await new Promise((r) => t.once('drain', r));
  t.end();
  await done;
  return out;
};

/**
 * What Valet does with a gzip body for an agent that takes gzip: decode, scrub, encode again
 * (level 4, every write flushed, as gateway/proxy/response.ts does). Counts the bytes sent.
 */
const recode = (scrubber: Scrubber) => async (chunks: Buffer[]): Promise<number> => {
  const gunzip = createGunzip();
  const scrub = scrubber.stream();
  const gzip = createGzip({ level: 4, flush: constants.Z_SYNC_FLUSH });
  gunzip.pipe(scrub).pipe(gzip);
  let out = 0;
  gzip.on('data', (c: Buffer) => {
    out += c.length;
  });
  const done = new Promise<void>((r) => gzip.on('end', r));
  for (const c of chunks) if (!gunzip.write(c)) await new Promise((r) => gunzip.once('drain', r));
  gunzip.end();
  await done;
  return out;
};

/** A body gzipped once, cut into chunks as it would arrive. */
function gzipped(chunks: Buffer[]): Buffer[] {
  const z = gzipSync(Buffer.concat(chunks), { level: 6 });
  const out: Buffer[] = [];
  for (let i = 0; i < z.length; i += CHUNK) out.push(z.subarray(i, i + CHUNK));
  return out;
}

const copy = (chunks: Buffer[]): number => chunks.reduce((s, c) => s + Buffer.from(c).length, 0);

const session = (scrubber: Scrubber) => (chunks: Buffer[]): number => {
  const s = scrubber.session();
  let out = 0;
  for (const c of chunks) out += s.write(c).length;
  return out + s.end().length;
};

const one = createScrubber([SECRET]);
const two = createScrubber([SECRET, SECRET_2]);
const awkward = createScrubber([AWKWARD]);
const plain = body(false);
const echoing = body(true);

const none = 'no copies';
const some = 'a copy every ~64 KiB';
const cases: Case[] = [
  { name: 'copy each chunk (baseline)', body: none, chunks: plain, run: copy },
  { name: 'session, 1 secret', body: none, chunks: plain, run: session(one) },
  { name: 'session, 1 secret', body: some, chunks: echoing, run: session(one) },
  { name: 'session, 2 secrets', body: none, chunks: plain, run: session(two) },
  { name: 'session, 1 secret with / and +', body: none, chunks: plain, run: session(awkward) },
  { name: 'PassThrough stream (baseline)', body: none, chunks: plain, run: throughStream(() => new PassThrough()) },
  { name: 'scrub stream, 1 secret', body: none, chunks: plain, run: throughStream(() => one.stream()) },
  { name: 'scrub stream, 1 secret', body: some, chunks: echoing, run: throughStream(() => one.stream()) },
  { name: 'scrub stream, 2 secrets', body: none, chunks: plain, run: throughStream(() => two.stream()) },
  { name: 'scrub stream, 1 secret with / and +', body: none, chunks: plain, run: throughStream(() => awkward.stream()) },
  { name: 'gzip: decode, scrub stream, encode (MB decoded)', body: none, chunks: gzipped(plain), bytes: BODY_BYTES, run: recode(one) },
  { name: 'gzip: decode, scrub stream, encode (MB decoded)', body: some, chunks: gzipped(echoing), bytes: BODY_BYTES, run: recode(one) },
];
const results = await measure(cases);

/**
 * The fixed cost per response, which is what matters for small API responses: a fresh stream, one
 * 1 KiB chunk, end; plus redacting 12 typical header values. Microseconds per response (median of
 * RUNS batches of 20,000).
 */
async function perResponse(make: () => Transform, headers: (() => void) | undefined): Promise<number> {
  const small = [Buffer.from(plain[0]?.subarray(0, 1024) ?? '')];
  const batch = async (): Promise<number> => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 20_000; i++) {
      headers?.();
      await throughStream(make)(small);
    }
    return Number(process.hrtime.bigint() - t0) / 1e3 / 20_000;
  };
  await batch();
  const times: number[] = [];
  for (let i = 0; i < RUNS; i++) times.push(await batch());
  return median(times);
}
const HEADER_VALUES = [
  'application/json', 'Sun, 29 Nov 2026 09:00:00 GMT', 'req_8f1c2a9e0b7d4c3f', 'no-store', 'nosniff', '1000', '999',
  '2026-11-29T09:01:00Z', 'cf-ray 8e1f2a3b4c5d-AMS', 'h3=":443"; ma=86400', 'max-age=31536000', 'gzip',
];
const redactHeaders = (): void => {
  for (const v of HEADER_VALUES) one.redact(v);
};
const fixed = {
  pass: await perResponse(() => new PassThrough(), undefined),
  scrub: await perResponse(() => one.stream(), redactHeaders),
};
/**
 * The same 1 KiB response gzipped, as Valet handles a small body read whole: decoded, scrubbed
 * and gzipped again with the synchronous calls (gateway/proxy/response.ts). µs, median of RUNS
 * batches of 20,000.
 */
const recodeSmall = async (): Promise<number> => {
  const small = gzipSync(plain[0]?.subarray(0, 1024) ?? Buffer.alloc(0));
  const batch = (): number => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 20_000; i++) {
      redactHeaders();
      gzipSync(one.whole(gunzipSync(small)), { level: 4 });
    }
    return Number(process.hrtime.bigint() - t0) / 1e3 / 20_000;
  };
  batch();
  const times: number[] = [];
  for (let i = 0; i < RUNS; i++) times.push(batch());
  return median(times);
};
const fixedGzip = await recodeSmall();

console.log(
  `scrubber throughput: ${BODY_BYTES / 1e6} MB body in ${CHUNK}-byte chunks, median of ${RUNS} interleaved runs; ` +
    `Node ${process.version}, ${cpus()[0]?.model ?? 'cpu'} x${cpus().length}`,
);
console.log(
  `patterns: 1 secret ${one.patterns.length} (longest ${one.maxLength} B), 2 secrets ${two.patterns.length}, ` +
    `1 secret with / and + ${awkward.patterns.length} (longest ${awkward.maxLength} B)\n`,
);
console.log('| case | body | MB/s (wall) | MB per CPU-second |\n| --- | --- | --: | --: |');
for (const [i, c] of cases.entries()) {
  const r = results[i] as { wall: number; cpu: number };
  console.log(`| ${c.name} | ${c.body} | ${r.wall.toFixed(0)} | ${r.cpu.toFixed(0)} |`);
}
console.log(
  `\nper response (1 KiB body in one chunk, 12 header values): PassThrough ${fixed.pass.toFixed(1)} µs, ` +
    `scrubber ${fixed.scrub.toFixed(1)} µs (+${(fixed.scrub - fixed.pass).toFixed(1)} µs), ` +
    `gzip decoded, scrubbed whole and gzipped again ${fixedGzip.toFixed(1)} µs (+${(fixedGzip - fixed.pass).toFixed(1)} µs)`,
);
