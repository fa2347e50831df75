/**
 * The V8 flags the gateway runs with. `npm start`, the `valet` command (its `#!` line) and the
 * Docker image start node with them; so does `npm run bench`. V8 reads them when it sets up the
 * heap: they cannot be set from inside the process (`v8.setFlagsFromString('--single-threaded-gc')`
 * at run time aborts it), so they are on each command line, and a test holds those to this list.
 *
 * - `--no-memory-reducer`: V8's memory reducer runs full collections once a process goes idle, to
 *   give memory back. Once a request's objects are all gone, those collections also drop the
 *   object shapes the optimised request path was compiled against, and every function of it is
 *   deoptimised at once (V8 logs `dependency-change`, `weak objects`, for ~110 functions). The
 *   first second of traffic after ~30 s idle then ran unoptimised while V8 compiled it all again:
 *   p50 1.7–2.1 ms instead of 0.25, and p99 at 1,000 req/s of 11–15 ms over ten seconds. The heap
 *   keeps its size while idle instead.
 * - `--single-threaded-gc`: V8 marks and scavenges with helper threads beside the main thread. On
 *   one CPU (a container's quota, a pinned process) they do not run beside it but instead of it,
 *   and a major collection stopped the event loop for 20–30 ms every few seconds. Single-threaded,
 *   the same work is done in increments on the main thread. Measured: 1–2 % less throughput on two
 *   CPUs; on one, up to ~5 % in single runs and none in three-round runs (docs/performance.md).
 */
export const NODE_FLAGS = ['--no-memory-reducer', '--single-threaded-gc'] as const;

/** Those of {@link NODE_FLAGS} the process was started without (V8 also reads `_` for `-`). */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map((a) => a.replace(/_/g, '-')));
  return NODE_FLAGS.filter((f) => !given.has(f));
}
