/**
 * wrk (Debian's `wrk` package) as the max-throughput load generator: native, one thread, pinned to
 * the generator's CPU, so the proxy measured never shares a core with the load it is given. Its
 * Lua `done` hook prints the summary as JSON (latencies in µs) for this process to read.
 */
import { execFile, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RunResult, Workload } from './load.js';

/** Whether `wrk` is on the PATH. */
export function hasWrk(): boolean {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (err) {
    // wrk --version exits 1 after printing its version.
    return (err as { status?: number }).status === 1;
  }
}

const luaString = (s: string): string => {
  let eq = '';
  while (s.includes(`]${eq}]`)) eq += '=';
  return `[${eq}[${s}]${eq}]`;
};

/** Runs wrk against one workload (POST with its headers and body); `cpu` pins it (taskset). */
export function wrkRun(w: Workload, o: { connections: number; seconds: number; dir: string; cpu?: number | undefined }): Promise<RunResult & { p999: number }> {
  const script = join(o.dir, `wrk-${process.hrtime.bigint()}.lua`);
  const headers = Object.entries(w.headers).map(([k, v]) => `wrk.headers[ ${luaString(k)} ] = ${luaString(v)}`);
  writeFileSync(
    script,
    [
      'wrk.method = "POST"',
      `wrk.body = ${luaString(w.body)}`,
      ...headers,
      'done = function(summary, latency, requests)',
      '  local e = summary.errors',
      '  io.write(string.format("WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"timeout\\":%d,\\"status\\":%d,\\"p50\\":%d,\\"p90\\":%d,\\"p99\\":%d,\\"p999\\":%d,\\"max\\":%d,\\"mean\\":%f}\\n",',
      '    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,',
      '    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))',
      'end',
      '',
    ].join('\n'),
  );
  const args = ['-t1', `-c${o.connections}`, `-d${o.seconds}s`, '--timeout', '10s', '-s', script, w.url];
  const [cmd, argv] = o.cpu === undefined ? ['wrk', args] : ['taskset', ['-c', String(o.cpu), 'wrk', ...args]];
  return new Promise((resolve, reject) => {
    execFile(cmd, argv, { encoding: 'utf8', timeout: (o.seconds + 30) * 1000 }, (err, stdout, stderr) => {
      const line = stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
      if (err !== null || line === undefined) return reject(new Error(`wrk failed: ${err?.message ?? ''} ${stderr} ${stdout}`.trim()));
      const r = JSON.parse(line.slice(8)) as Record<string, number>;
      const n = (k: string): number => r[k] as number;
      const durationS = n('duration_us') / 1e6;
      const non2xx = n('status');
      const ok = n('requests') - non2xx;
      const msOf = (us: number): number => us / 1000;
      resolve({
        ok,
        non2xx,
        errors: n('connect') + n('read') + n('write'),
        timeouts: n('timeout'),
        statusCodes: {},
        durationS,
        rps: ok / durationS,
        latency: { count: n('requests'), mean: msOf(n('mean')), p50: msOf(n('p50')), p90: msOf(n('p90')), p99: msOf(n('p99')), p999: msOf(n('p999')), max: msOf(n('max')) },
        p999: msOf(n('p999')),
      });
    });
  });
}
