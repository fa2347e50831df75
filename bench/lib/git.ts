import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The commit measured, and whether gateway/ differs from it (best effort). */
export function gitState(): string {
  try {
    const git = (...args: string[]): string => execFileSync('git', args, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const head = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'gateway').split('\n').filter(Boolean).length;
    return `commit ${head}${dirty > 0 ? `, gateway/ has ${dirty} uncommitted change(s)` : ', gateway/ clean'}`;
  } catch {
    return 'not a git checkout';
  }
}
