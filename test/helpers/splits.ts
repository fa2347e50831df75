/** Ways to cut a byte stream into writes, for tests of parsers that must not care where the cuts fall. */

/** `data` cut at each of `points` (ascending offsets). */
export function splitAt(data: Buffer, points: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(data.subarray(prev, p));
    prev = p;
  }
  out.push(data.subarray(prev));
  return out;
}

/** One write per byte. */
export const everyByte = (data: Buffer): Buffer[] => [...data].map((b) => Buffer.from([b]));

/** A seeded generator (mulberry32), so that a failing random split can be replayed. */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
