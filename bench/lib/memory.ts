/**
 * This process's memory after three full garbage collections, so that the figures show what is
 * retained rather than what the next collection would free; undefined unless the process runs
 * with `--expose-gc`.
 */
export function retainedMemory(): NodeJS.MemoryUsage | undefined {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) return undefined;
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage();
}
