import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { backendEnv } from './backends.js';

export const CLI = fileURLToPath(new URL('../../gateway/cli/main.ts', import.meta.url));

/** The `#!` line of the `valet` command: `/usr/bin/env -S node <flags>`. */
export const SHEBANG = (readFileSync(CLI, 'utf8').split('\n')[0] as string).slice(2).trim().split(/\s+/);
/** The node flags that line starts the command with, as a test's child process gets them. */
export const SHEBANG_NODE_FLAGS = SHEBANG.slice(SHEBANG.indexOf('node') + 1);

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the `valet` command from source in a child process, with the node flags of its `#!` line. */
export function runCli(args: string[], opts: { env?: Record<string, string>; input?: string; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawnCli(args, opts);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin?.end(opts.input ?? '');
  });
}

/**
 * The data directory a command names (`--data`, `VALET_DATA`, or `data` in the `cwd` a test
 * gave): with shared test backends, the command gets that deployment's PostgreSQL and Redis.
 */
function deploymentEnv(args: string[], opts: { env?: Record<string, string>; cwd?: string }): Record<string, string> {
  const flag = args.indexOf('--data');
  const dir = (flag >= 0 ? args[flag + 1] : undefined) ?? opts.env?.['VALET_DATA'] ?? (opts.cwd !== undefined ? 'data' : undefined);
  if (dir === undefined) return {};
  // A key the test gives itself, as a value or as a file, wins over the deployment's.
  const given = (k: string): boolean => opts.env?.[k] !== undefined || opts.env?.[`${k}_FILE`] !== undefined;
  return Object.fromEntries(Object.entries(backendEnv(resolve(opts.cwd ?? process.cwd(), dir))).filter(([k]) => !given(k)));
}

export function spawnCli(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): ChildProcess {
  return spawn(process.execPath, [...SHEBANG_NODE_FLAGS, '--import', 'tsx', CLI, ...args], {
    cwd: opts.cwd ?? process.cwd(),
    env: { PATH: process.env['PATH'] ?? '', ...deploymentEnv(args, opts), ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

/**
 * The data-plane port a `valet start` child reports in its "valet listening" log line; rejects if
 * it exits first. Its stdout is read for as long as it runs (so it never blocks on a full pipe),
 * and every chunk also goes to `onOutput`.
 */
export function listeningPort(child: ChildProcess, onOutput?: (chunk: string) => void): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let out = '';
    let found = false;
    child.stdout?.on('data', (c: Buffer) => {
      const chunk = c.toString();
      onOutput?.(chunk);
      if (found) return;
      out += chunk;
      const m = /"msg":"valet listening"/.test(out) ? /"port":(\d+)/.exec(out) : null;
      if (m) {
        found = true;
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => reject(new Error(`gateway exited ${code}: ${out}`)));
  });
}
