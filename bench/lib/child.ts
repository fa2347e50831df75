/**
 * Parent/child plumbing for the benchmark: every server under test runs in its own Node process
 * (forked with `node --import tsx`) and talks to the orchestrator over the IPC channel.
 *
 * Protocol (child → parent): `{ type: 'ready', url, ... }` once listening, `{ type: 'reply', id, data }`
 * answering a request. Parent → child: `{ type: 'request', id, op }` where `op` is `'stats'` or `'stop'`.
 * A child exits by itself when the IPC channel goes away (the parent died or disconnected).
 *
 * The orchestrator's side of a run (work directory, clean-up, signals, watchdog) is
 * {@link BenchRun}; pinning children to CPUs is {@link pin}.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, platform, tmpdir } from 'node:os';
import { join } from 'node:path';
import { constants as perfConstants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

export interface ReadyMessage {
  type: 'ready';
  url: string;
  [k: string]: unknown;
}

export type ChildOp = 'stats' | 'stop';
type ParentMessage = { type: 'request'; id: number; op: ChildOp };
type ChildMessage = ReadyMessage | { type: 'reply'; id: number; data: unknown } | { type: 'error'; message: string };

export interface BenchChild {
  readonly name: string;
  readonly pid: number;
  readonly ready: ReadyMessage;
  /** Asks the child for something (`stats`) or to stop gracefully (`stop`, after which it exits). */
  ask<T = unknown>(op: ChildOp, timeoutMs?: number): Promise<T>;
  /** Graceful stop, then SIGKILL if the child has not exited within `timeoutMs`. Idempotent. */
  stop(timeoutMs?: number): Promise<unknown>;
  /** Immediate SIGKILL (for cleanup on failure). */
  kill(): void;
}

export interface ForkOptions {
  name: string;
  /** Absolute path of the child's TypeScript entry point. */
  script: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Extra Node flags, e.g. `--cpu-prof`. `--import tsx` is always added. */
  execArgv?: string[];
  readyTimeoutMs?: number;
  /**
   * Start it on this CPU alone (taskset), so that it knows from its first instruction what it may
   * use (Valet sizes its audit writer by it, gateway/cpus.ts), not only once pinned later.
   */
  cpu?: number;
  /** A command that runs Node, and its arguments (`valgrind --tool=callgrind …`): Node runs under it, after taskset. */
  wrap?: readonly string[];
}

/** Forks a child and resolves once it reports `ready` (rejects on exit or timeout). */
export function forkChild(o: ForkOptions): Promise<BenchChild> {
  const node = ['--import', 'tsx', ...(o.execArgv ?? [])];
  // taskset (and a wrapper such as valgrind) runs Node in its own place (exec: same pid, same IPC channel).
  const runner = [...(o.cpu === undefined ? [] : ['taskset', '-c', String(o.cpu)]), ...(o.wrap ?? [])];
  const child: ChildProcess = fork(o.script, o.args ?? [], {
    ...(runner.length === 0 ? { execArgv: node } : { execPath: runner[0], execArgv: [...runner.slice(1), process.execPath, ...node] }),
    env: o.env ?? process.env,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let nextId = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  child.on('message', (m: ChildMessage) => {
    if (m.type !== 'reply') return;
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    clearTimeout(p.timer);
    p.resolve(m.data);
  });
  child.once('exit', (code, signal) => {
    exited = true;
    for (const p of pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`${o.name} exited (code ${code}, signal ${signal}) before answering`));
    }
    pending.clear();
  });

  const ask = <T>(op: ChildOp, timeoutMs = 10_000): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      if (exited || !child.connected) {
        reject(new Error(`${o.name} is not running`));
        return;
      }
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${o.name} did not answer "${op}" within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      child.send({ type: 'request', id, op } satisfies ParentMessage);
    });

  const kill = (): void => {
    if (!exited) child.kill('SIGKILL');
  };

  let stopping: Promise<unknown> | undefined;
  const stop = (timeoutMs = 10_000): Promise<unknown> =>
    (stopping ??= (async () => {
      if (exited) return undefined;
      let result: unknown;
      try {
        result = await ask('stop', timeoutMs);
      } catch {
        // fall through to the kill below
      }
      const killTimer = setTimeout(kill, timeoutMs);
      await exitedPromise;
      clearTimeout(killTimer);
      return result;
    })());

  return new Promise<BenchChild>((resolve, reject) => {
    const timer = setTimeout(() => {
      kill();
      reject(new Error(`${o.name} did not become ready within ${o.readyTimeoutMs ?? 20_000} ms`));
    }, o.readyTimeoutMs ?? 20_000);
    const onExit = (code: number | null, signal: string | null): void => {
      clearTimeout(timer);
      reject(new Error(`${o.name} exited during start-up (code ${code}, signal ${signal})`));
    };
    child.once('exit', onExit);
    const onMessage = (m: ChildMessage): void => {
      if (m.type === 'error') {
        clearTimeout(timer);
        child.off('exit', onExit);
        kill();
        reject(new Error(`${o.name} failed to start: ${m.message}`));
      } else if (m.type === 'ready') {
        clearTimeout(timer);
        child.off('exit', onExit);
        child.off('message', onMessage);
        resolve({ name: o.name, pid: child.pid ?? -1, ready: m, ask, stop, kill });
      }
    };
    child.on('message', onMessage);
  });
}

/** The main thread's garbage-collection pauses since the last `stats` (what its event loop stalled for). */
export interface GcPauses {
  /** Scavenges of the young generation. */
  gcMinor: number;
  gcMinorMaxMs: number;
  /** Mark-compacts of the whole heap. */
  gcMajor: number;
  gcMajorMaxMs: number;
  /** Every pause, summed. */
  gcTotalMs: number;
}

const noPauses = (): GcPauses => ({ gcMinor: 0, gcMinorMaxMs: 0, gcMajor: 0, gcMajorMaxMs: 0, gcTotalMs: 0 });

function gcPauses(): { take(): GcPauses } {
  let p = noPauses();
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = (e as { detail?: { kind?: number } }).detail?.kind;
      p.gcTotalMs += e.duration;
      if (kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) {
        p.gcMinor++;
        p.gcMinorMaxMs = Math.max(p.gcMinorMaxMs, e.duration);
      } else if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) {
        p.gcMajor++;
        p.gcMajorMaxMs = Math.max(p.gcMajorMaxMs, e.duration);
      }
    }
  }).observe({ entryTypes: ['gc'] });
  return {
    take() {
      const r = p;
      p = noPauses();
      return r;
    },
  };
}

export interface ServeOptions {
  /**
   * Sample the event-loop delay (default true): `stats` then adds `loopDelayP99Ms` and
   * `loopDelayMaxMs` since the last `stats`, and the garbage-collection pauses ({@link GcPauses}).
   * The sampler is a 1 ms timer: it wakes an idle process a thousand times a second (~3 % of a core
   * on a small VM), so a benchmark of microseconds per event turns it off.
   */
  loopDelay?: boolean;
}

/**
 * The child side: announces readiness, answers `stats`, and on `stop` (or when the parent goes
 * away) runs `onStop`, replies with its result and exits.
 */
export function serveChild(
  handlers: { stats: () => Promise<unknown> | unknown; onStop: () => Promise<unknown> | unknown },
  ready: { url: string; [k: string]: unknown },
  options: ServeOptions = {},
): void {
  const send = (m: ChildMessage): void => {
    if (process.connected) process.send?.(m);
  };
  // Event-loop delay since the last `stats` request: how long ready work waited for this process.
  const eld = options.loopDelay === false ? undefined : monitorEventLoopDelay({ resolution: 1 });
  eld?.enable();
  const gc = options.loopDelay === false ? undefined : gcPauses();
  const loopDelay = (): ({ loopDelayP99Ms: number; loopDelayMaxMs: number } & GcPauses) | undefined => {
    if (eld === undefined || gc === undefined) return undefined;
    const r = { loopDelayP99Ms: eld.percentile(99) / 1e6, loopDelayMaxMs: eld.max / 1e6, ...gc.take() };
    eld.reset();
    return r;
  };
  let stopping = false;
  const stopAndExit = async (id?: number): Promise<void> => {
    if (stopping) return;
    stopping = true;
    let data: unknown;
    try {
      data = await handlers.onStop();
    } catch (err) {
      data = { error: String(err) };
    }
    if (id !== undefined) send({ type: 'reply', id, data });
    // Let the reply leave before exiting; exit code 0 so --cpu-prof writes its profile.
    setTimeout(() => process.exit(0), 50);
  };
  process.on('message', (m: ParentMessage) => {
    if (m.type !== 'request') return;
    if (m.op === 'stats') {
      const loop = loopDelay();
      void Promise.resolve(handlers.stats()).then((s) => send({ type: 'reply', id: m.id, data: { ...(s as object), ...loop } }));
    }
    else void stopAndExit(m.id);
  });
  process.once('disconnect', () => void stopAndExit());
  process.once('SIGTERM', () => void stopAndExit());
  process.once('SIGINT', () => void stopAndExit());
  send({ ...ready, type: 'ready' });
}

/** Reports a start-up failure to the parent and exits. */
export function failChild(err: unknown): never {
  const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
  if (process.connected) process.send?.({ type: 'error', message } satisfies ChildMessage);
  console.error(message);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------
// The orchestrator's run: children, a temporary work directory, signals and a watchdog

export interface RunOptions {
  /** Prefix of the run's work directory under os.tmpdir() (e.g. `valet-bench-mcp-`). */
  tmpPrefix: string;
  /** Seconds after which the watchdog kills every child and exits 1. */
  budgetS: number;
  /** Runs once before the children are stopped (e.g. closing clients). */
  beforeStop?: () => Promise<unknown>;
  /**
   * Runs once after the children stopped, before the work directory is removed (e.g. dropping a
   * database schema); on a hard exit too, then given at most 10 s.
   */
  afterStop?: () => Promise<unknown>;
}

/**
 * One benchmark run in the orchestrator: a work directory, the children it forked, and their end.
 * On Ctrl-C, SIGTERM or the watchdog every child is killed and the work directory removed;
 * {@link BenchRun.finish} runs the benchmark and stops everything gracefully afterwards.
 */
export class BenchRun {
  readonly root: string;
  /** Children forked through {@link BenchRun.fork} (or pushed here), in the order they started. */
  readonly children: BenchChild[] = [];
  private cleaning: Promise<Record<string, unknown>> | undefined;
  private readonly watchdog: NodeJS.Timeout;

  constructor(private readonly o: RunOptions) {
    this.root = mkdtempSync(join(tmpdir(), o.tmpPrefix));
    process.once('SIGINT', () => this.hardExit(130, 'interrupted'));
    process.once('SIGTERM', () => this.hardExit(143, 'terminated'));
    this.watchdog = setTimeout(() => this.hardExit(1, `watchdog: still running after ${Math.round(o.budgetS)} s`), o.budgetS * 1000);
    this.watchdog.unref();
  }

  /** {@link forkChild}, the child then stopped with the run. */
  async fork(o: ForkOptions): Promise<BenchChild> {
    const c = await forkChild(o);
    this.children.push(c);
    return c;
  }

  /**
   * Stops the children gracefully, the last started first (a proxy before its upstream, so it is
   * not left with dead pool connections), and removes the work directory. Runs once: later calls
   * get the same result, each child's answer to `stop` by name.
   */
  cleanup(): Promise<Record<string, unknown>> {
    return (this.cleaning ??= (async () => {
      await this.o.beforeStop?.().catch((err: unknown) => console.error(`bench: clean-up: ${String(err)}`));
      const results: Record<string, unknown> = {};
      for (const c of [...this.children].reverse()) {
        try {
          results[c.name] = await c.stop(10_000);
        } catch {
          c.kill();
        }
      }
      await this.o.afterStop?.().catch((err: unknown) => console.error(`bench: clean-up: ${String(err)}`));
      rmSync(this.root, { recursive: true, force: true });
      return results;
    })());
  }

  /** Kills every child at once, removes the work directory and exits with `code`. */
  hardExit(code: number, why: string): void {
    console.error(`\nbench: ${why}; stopping`);
    for (const c of this.children) c.kill();
    const after = this.o.afterStop === undefined ? Promise.resolve() : Promise.race([this.o.afterStop().catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]);
    void after.finally(() => {
      rmSync(this.root, { recursive: true, force: true });
      process.exit(code);
    });
  }

  /** Runs the benchmark; exits with the code it returns (1 if it throws), everything stopped first. */
  finish(main: () => Promise<number>): void {
    main()
      .then(async (code) => {
        await this.cleanup();
        clearTimeout(this.watchdog);
        process.exit(code);
      })
      .catch(async (err: unknown) => {
        console.error(err);
        await this.cleanup().catch(() => undefined);
        process.exit(1);
      });
  }
}

// ---------------------------------------------------------------------------------------------
// Pinning processes to CPUs (Linux, with taskset)

/** Every CPU of the machine, whatever this process's own affinity (os.availableParallelism() follows it). */
export const MACHINE_CPUS = cpus().length;

/** Whether processes can be pinned here: Linux, `taskset` present, at least `minCpus` CPUs. */
export function canPin(minCpus = 2): boolean {
  if (platform() !== 'linux' || MACHINE_CPUS < minCpus) return false;
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Pins every thread of `pid` (and threads it starts later) to one CPU. */
export function pin(pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}

/** The CPUs `pid` may run on, as taskset lists them ('n/a' when unknown). */
export function affinity(pid: number): string {
  try {
    return execFileSync('taskset', ['-c', '-p', String(pid)], { encoding: 'utf8' }).trim().replace(/^.*: /, '');
  } catch {
    return 'n/a';
  }
}
