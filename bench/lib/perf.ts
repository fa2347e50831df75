/**
 * On-CPU samples of a proxy process by Linux `perf`, split by thread and, on the main thread, by
 * what the time went to: the kernel (by system call), V8's garbage collector, Node's modules,
 * undici, Valet's own modules. Used by `npm run bench -- --perf`.
 *
 * Why beside `--cpu-prof`: V8's sampler counts a thread descheduled inside a call (another thread
 * took the core) as time in that call, so on a shared core its profile overstates the calls that
 * wake other threads (`postMessage`); and it sees only the main thread. `perf record -e cpu-clock`
 * samples only what runs, on every thread, kernel included. The proxies run with
 * `--perf-basic-prof-only-functions`, so JIT frames are named (Node writes /tmp/perf-<pid>.map,
 * removed once the samples are read).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';

/** Samples per second per thread. */
export const PERF_FREQUENCY = 997;

/** Node flags a process needs for its JIT frames to be named in perf's samples. */
export const PERF_NODE_ARGS = ['--perf-basic-prof-only-functions'];

/** For a benchmark's `--perf`: exits with status 2, saying why, when `perf` cannot record here. */
export function requirePerf(): void {
  const why = perfUnavailable();
  if (why === undefined) return;
  console.error(`--perf: ${why}`);
  process.exit(2);
}

/** Why `perf` cannot record here (not installed, or not permitted), or undefined when it can. */
function perfUnavailable(): string | undefined {
  const r = spawnSync('perf', ['record', '-q', '-e', 'cpu-clock', '-o', '/dev/null', '--', 'true'], { encoding: 'utf8' });
  if (r.error !== undefined) return `perf is not installed (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`;
  if (r.status !== 0) return `perf cannot record here: ${(r.stderr || '').trim().split('\n')[0] ?? `exit ${r.status}`} (kernel.perf_event_paranoid?)`;
  return undefined;
}

/** A recording in progress: every thread of `pid`, call graphs, until {@link PerfRecording.stop}. */
export interface PerfRecording {
  stop(): Promise<void>;
}

export function startPerf(pid: number, file: string): PerfRecording {
  const p: ChildProcess = spawn('perf', ['record', '-q', '-g', '-e', 'cpu-clock', '-F', String(PERF_FREQUENCY), '-p', String(pid), '-o', file], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  return {
    async stop() {
      p.kill('SIGINT');
      await exited;
    },
  };
}

interface Sample {
  readonly tid: number;
  readonly comm: string;
  /** Leaf first: `symbol (dso)`. */
  readonly frames: string[];
}

function readSamples(file: string): Sample[] {
  const r = spawnSync('perf', ['script', '-i', file, '-F', 'comm,tid,ip,sym,dso'], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`perf script: ${(r.stderr || '').trim().split('\n')[0]}`);
  const samples: Sample[] = [];
  let current: Sample | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.trim() === '') {
      current = undefined;
      continue;
    }
    if (!/^\s/.test(line)) {
      // "comm  tid" (comm may hold spaces): the tid is the last field.
      const m = /^(.*?)\s+(\d+)\s*$/.exec(line);
      current = { comm: (m?.[1] ?? '?').trim(), tid: Number(m?.[2] ?? 0), frames: [] };
      samples.push(current);
      continue;
    }
    current?.frames.push(line.trim().replace(/^[0-9a-f]+\s+/, ''));
  }
  return samples;
}

/** What a main-thread sample was spent on. */
function categoryOf(frames: readonly string[]): string {
  const leaf = frames[0] ?? '';
  if (leaf.endsWith('([kernel.kallsyms])')) {
    const kernel = frames.filter((f) => f.endsWith('([kernel.kallsyms])'));
    if (kernel.some((f) => f.includes('page_fault'))) return 'kernel: page faults';
    // The system call is the first user-space frame above the kernel's: libc's wrapper (`__GI___writev`, `read`).
    const caller = frames[kernel.length];
    const name = caller?.includes('libc.so') ? /^(?:__GI_)?_*(?:libc_)?([a-z_0-9]+?)(?:@\S*)? \(/.exec(caller)?.[1] : undefined;
    return `kernel: ${name ?? 'other (interrupts, scheduling)'}`;
  }
  const js = frames.find((f) => f.startsWith('JS:'));
  if (js === undefined) {
    if (/Scaveng|MarkCompact|Sweep|Heap::|GarbageCollect|Evacuat/.test(leaf)) return 'V8: garbage collection';
    if (leaf.startsWith('llhttp')) return 'node: http';
    return 'native, outside JavaScript (V8 runtime, libuv, libc)';
  }
  if (js.includes('wasm')) return 'undici';
  const url = /^JS:\S*\s+(\S+)/.exec(js)?.[1] ?? '';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const pkg = url.slice(nm + 14).split('/')[0] ?? '?';
    return pkg === 'sonic-boom' || pkg === 'quick-format-unescaped' ? 'pino' : pkg;
  }
  const gw = url.indexOf('/gateway/');
  if (gw >= 0) {
    // A directory of gateway/ (server, proxy, audit, ...), or a file at its top (main, log).
    const [first = '?', second] = url.slice(gw + 9).split('/');
    return `valet: ${second === undefined ? first.replace(/\.[jt]s:.*$/, '') : first}`;
  }
  if (url.startsWith('node:')) {
    const mod = url.replace(/^node:(internal\/)?/, '');
    if (/http|_http/.test(mod)) return 'node: http';
    if (mod.startsWith('streams') || mod.startsWith('stream_base')) return 'node: streams';
    if (/timers|task_queues|process\/promises/.test(mod)) return 'node: timers, ticks, promises';
    if (/events|event_target/.test(mod)) return 'node: events';
    if (/worker|messageport/.test(mod)) return 'node: worker (postMessage)';
    return 'node: other';
  }
  return 'other JavaScript';
}

/** µs per request by thread and, on the main thread, by category. */
export interface PerfSummary {
  readonly threads: Record<string, number>;
  readonly main: Record<string, number>;
}

/**
 * Reads a recording of process `pid` during which it answered `requests` requests; removes the
 * recording and the process's perf map. Threads are named by their `comm` (Valet names its own);
 * the main thread is `main`, V8's and libuv's helpers `node (helpers)`.
 */
export function summarisePerf(file: string, pid: number, requests: number): PerfSummary {
  const samples = readSamples(file);
  rmSync(file, { force: true });
  rmSync(`/tmp/perf-${pid}.map`, { force: true });
  const us = 1e6 / PERF_FREQUENCY / Math.max(1, requests);
  const threads: Record<string, number> = {};
  const main: Record<string, number> = {};
  for (const s of samples) {
    const thread = s.tid === pid ? 'main' : s.comm === 'node' ? 'node (helpers)' : s.comm;
    threads[thread] = (threads[thread] ?? 0) + us;
    if (s.tid === pid) {
      const c = categoryOf(s.frames);
      main[c] = (main[c] ?? 0) + us;
    }
  }
  return { threads, main };
}

/** The summaries of several targets side by side, largest first by the last target's figure. */
export function formatPerf(byTarget: Readonly<Record<string, PerfSummary>>): string {
  const names = Object.keys(byTarget);
  const rows = (pick: (s: PerfSummary) => Record<string, number>): string[] => {
    const keys = new Set(names.flatMap((n) => Object.keys(pick(byTarget[n] as PerfSummary))));
    const last = byTarget[names.at(-1) as string] as PerfSummary;
    return [...keys]
      .sort((a, b) => (pick(last)[b] ?? 0) - (pick(last)[a] ?? 0))
      .map((k) => `| ${k} | ${names.map((n) => (pick(byTarget[n] as PerfSummary)[k] ?? 0).toFixed(1)).join(' | ')} |`);
  };
  const total = (s: PerfSummary, pick: (s: PerfSummary) => Record<string, number>): string => Object.values(pick(s)).reduce((a, b) => a + b, 0).toFixed(1);
  const head = `| µs per request | ${names.join(' | ')} |\n| --- | ${names.map(() => '--:').join(' | ')} |`;
  return [
    '### by thread',
    head,
    ...rows((s) => s.threads),
    `| **all threads** | ${names.map((n) => `**${total(byTarget[n] as PerfSummary, (s) => s.threads)}**`).join(' | ')} |`,
    '',
    '### main thread, by what it ran',
    head,
    ...rows((s) => s.main),
    `| **main thread** | ${names.map((n) => `**${total(byTarget[n] as PerfSummary, (s) => s.main)}**`).join(' | ')} |`,
  ].join('\n');
}
