import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/**
 * How many CPUs this process can keep busy at once: the CPUs it may run on (its affinity: `taskset`,
 * `docker --cpuset-cpus`, a Kubernetes static CPU policy), lowered to its CPU quota rounded up
 * where cgroup v2 sets one (`docker --cpus`, a Kubernetes CPU limit: `cpu.max` is
 * `<quota> <period>`). Read once at start-up; a quota changed later is not seen.
 */
export function usableCpus(cpuMax = '/sys/fs/cgroup/cpu.max'): number {
  const affinity = availableParallelism();
  let text: string;
  try {
    text = readFileSync(cpuMax, 'utf8');
  } catch {
    return affinity; // no cgroup v2 quota file: no quota
  }
  const [quota, period] = text.trim().split(/\s+/);
  const q = Number(quota);
  const p = Number(period);
  if (quota === 'max' || !Number.isFinite(q) || !Number.isFinite(p) || q <= 0 || p <= 0) return affinity;
  return Math.max(1, Math.min(affinity, Math.ceil(q / p)));
}
