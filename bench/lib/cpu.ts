/**
 * Where the machine's CPU went during a measurement (Linux /proc; elsewhere every figure is NaN).
 * The benchmark shares a small machine between the load generator, the proxy and the upstream, so
 * knowing how many cores each used, and how much went to processes that are not part of the
 * benchmark at all, is what makes a figure interpretable.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { performance } from 'node:perf_hooks';

export interface CpuSnapshot {
  /** Busy and total jiffies summed over all CPUs (/proc/stat). */
  busy: number;
  total: number;
  /** utime + stime jiffies per watched pid (/proc/<pid>/stat), all threads included. */
  pids: Map<number, number>;
  at: number;
}

export interface CpuUsage {
  /** Cores used (1.0 = one core fully busy) by each watched process, by name. */
  byProcess: Record<string, number>;
  /** Cores used by everything else: other processes and kernel work not charged to ours. */
  other: number;
  /** Cores available. */
  cores: number;
}

function procStat(): { busy: number; total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = v;
    const busy = user + nice + system + irq + softirq + steal;
    return { busy, total: busy + idle + iowait };
  } catch {
    return { busy: Number.NaN, total: Number.NaN };
  }
}

function pidTicks(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // Fields after the command: state(3) ... utime(14) stime(15), here offset by 3.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return Number.NaN;
  }
}

/**
 * utime + stime jiffies of each thread of `pid`, summed by thread name: `main` for the thread whose
 * id is the pid, else its name (/proc/<pid>/task/<tid>/comm; Valet names its own threads, e.g.
 * `valet-audit`; V8's and libuv's helper threads are all `node`).
 */
export function threadTicks(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      const name = Number(tid) === pid ? 'main' : readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      out.set(name, (out.get(name) ?? 0) + Number(f[11]) + Number(f[12]));
      if (process.env['BENCH_SPLIT'] === '1') {
        out.set(`${name}:user`, (out.get(`${name}:user`) ?? 0) + Number(f[11]));
        out.set(`${name}:sys`, (out.get(`${name}:sys`) ?? 0) + Number(f[12]));
      }
    } catch {
      // the thread ended
    }
  }
  return out;
}

/** CPU µs per request of each thread group between two {@link threadTicks} readings. */
export function threadMicros(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>, requests: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, ticks] of b) out[name] = (((ticks - (a.get(name) ?? 0)) / TICKS_PER_SECOND) * 1e6) / Math.max(1, requests);
  return out;
}

/** Linux's USER_HZ (the unit of /proc's utime and stime), 100 on every mainstream build. */
const TICKS_PER_SECOND = 100;

export function snapshot(pids: readonly number[]): CpuSnapshot {
  const { busy, total } = procStat();
  return { busy, total, pids: new Map(pids.map((p) => [p, pidTicks(p)])), at: performance.now() };
}

export function usageBetween(a: CpuSnapshot, b: CpuSnapshot, names: ReadonlyMap<number, string>): CpuUsage {
  // Every CPU /proc/stat counts: os.availableParallelism() would follow this process's affinity (a pinned orchestrator).
  const cores = cpus().length;
  const wall = (b.total - a.total) / cores; // jiffies of wall time
  const byProcess: Record<string, number> = {};
  let ours = 0;
  for (const [pid, name] of names) {
    const d = (b.pids.get(pid) ?? Number.NaN) - (a.pids.get(pid) ?? Number.NaN);
    byProcess[name] = d / wall;
    if (!Number.isNaN(d)) ours += d;
  }
  return { byProcess, other: Math.max(0, (b.busy - a.busy - ours) / wall), cores };
}

export const formatUsage = (u: CpuUsage): string =>
  `${Object.entries(u.byProcess)
    .map(([k, v]) => `${k} ${Number.isNaN(v) ? 'n/a' : v.toFixed(2)}`)
    .join(', ')}, other ${Number.isNaN(u.other) ? 'n/a' : u.other.toFixed(2)} (cores of ${u.cores})`;
