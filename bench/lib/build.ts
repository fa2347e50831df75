/**
 * The benchmarks measure Valet as `npm start` runs it: the compiled JavaScript in dist/. This
 * builds it and tells whether the build is current.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The newest modification time (ms) of the files under `dir` that end in `ext`. */
function newest(dir: string, ext: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p, ext));
    else if (e.name.endsWith(ext)) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/** The compiled gateway (dist/) exists and is newer than every source file. */
export const builtGatewayIsCurrent = (): boolean =>
  existsSync(join(ROOT, 'dist/gateway/main.js')) && newest(join(ROOT, 'dist/gateway'), '.js') >= newest(join(ROOT, 'gateway'), '.ts');

/** Compiles the gateway as `npm run build` does (dist/gateway), so that the benchmark runs what `npm start` runs. */
export function buildGateway(): void {
  execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { stdio: 'inherit' });
}

