import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { latencyStats, type LatencyStats } from './stats.js';

/**
 * How long `fdatasync` takes on the filesystem under `dir`, after appending 4 KiB each time (ms):
 * the floor under every durable commit — a forwarded call waits for at least one.
 */
export function syncLatency(dir: string, n = 500): LatencyStats {
  const probeDir = mkdtempSync(join(dir, 'valet-sync-probe-'));
  const fd = openSync(join(probeDir, 'probe'), 'w');
  const page = Buffer.alloc(4096, 0x61);
  const times: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      writeSync(fd, page);
      const t0 = performance.now();
      fdatasyncSync(fd);
      times.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(probeDir, { recursive: true, force: true });
  }
  return latencyStats(times);
}

export const formatSync = (s: LatencyStats): string => `fdatasync of a 4 KiB append p50 ${s.p50.toFixed(2)} ms, p99 ${s.p99.toFixed(2)} ms, max ${s.max.toFixed(2)} ms`;
