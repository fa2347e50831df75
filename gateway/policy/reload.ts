import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, watch, type FSWatcher } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type { Logger } from 'pino';
import { loadConfig, type LoadOptions } from '../config/load.js';
import type { Config } from '../config/types.js';
import { ValetError } from '../errors.js';
import { compilePolicy, withShadow, type Policy, type PolicyStores } from './compile.js';

export interface PolicyStatus {
  readonly version: string;
  readonly loadedAt: number;
  /** The last reload that was refused, if it has not been followed by a good one. */
  readonly lastError: { readonly at: number; readonly message: string } | undefined;
}

/** Holds the policy in force and swaps it atomically when a new, valid set is compiled. */
export interface PolicyHolder {
  current(): Policy;
  /** The configuration the policy in force was compiled from (for listing rules and running its tests). */
  config(): Config;
  status(): PolicyStatus;
  /** Recompiles from disk; an invalid set is refused and the one in force stays. */
  reload(): { ok: true; version: string } | { ok: false; error: string };
  /** Reloads when files in the directory, or context data files outside it, change (debounced). */
  watch(): void;
  close(): void;
}

/** The parts of the configuration a reload may not change: they need a restart. */
function fixedParts(c: Config): string {
  return JSON.stringify({ gateway: c.gateway, issuers: c.issuers, upstreams: [...c.upstreams.values()] });
}

/**
 * The policy in force, with a candidate set (a directory) evaluated beside it in shadow: its
 * decisions are recorded, never enforced, and it replaces the rules in shadow mode of the set in
 * force. Only the candidate's policy parts count (rules, tools, limits, contexts, agents).
 */
function withCandidate(enforced: Policy, candidate: Policy | undefined): Policy {
  return candidate === undefined ? enforced : withShadow(enforced, candidate);
}

/**
 * A candidate named `git:REF` (or `git:REF:PATH`): the configuration directory (or PATH, relative to
 * the repository's top) as committed at REF, extracted into a private temporary directory. Read
 * again only when REF resolves to another commit.
 */
export class GitCandidate {
  private extracted: { commit: string; root: string; dir: string } | undefined;

  constructor(
    private readonly configDir: string,
    private readonly ref: string,
    /** The directory within the repository (absent: `configDir`'s own place in it). */
    readonly path: string | undefined,
  ) {}

  /** `source` as a candidate of `configDir` when it names one (`git:REF[:PATH]`); undefined for a directory. */
  static of(source: string | undefined, configDir: string): GitCandidate | undefined {
    const git = /^git:([^:]+)(?::(.+))?$/.exec(source ?? '');
    return git === null ? undefined : new GitCandidate(configDir, git[1] as string, git[2]);
  }

  dir(): string {
    const git = (args: string[], input?: Buffer): Buffer => execFileSync('git', args, { stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 256 << 20, ...(input !== undefined && { input }) });
    const top = git(['-C', this.configDir, 'rev-parse', '--show-toplevel']).toString('utf8').trim();
    const commit = git(['-C', top, 'rev-parse', '--verify', '--end-of-options', `${this.ref}^{commit}`]).toString('utf8').trim();
    if (this.extracted?.commit === commit) return this.extracted.dir;
    const rel = this.path ?? relative(top, this.configDir);
    const root = mkdtempSync(join(tmpdir(), 'valet-candidate-'));
    try {
      execFileSync('tar', ['-x', '-C', root], { input: git(['-C', top, 'archive', '--format=tar', commit, '--', rel === '' ? '.' : rel]), stdio: ['pipe', 'ignore', 'pipe'] });
    } catch (err) {
      rmSync(root, { recursive: true, force: true });
      throw err;
    }
    this.close();
    this.extracted = { commit, root, dir: join(root, rel) };
    return this.extracted.dir;
  }

  close(): void {
    if (this.extracted !== undefined) rmSync(this.extracted.root, { recursive: true, force: true });
    this.extracted = undefined;
  }
}

export function createPolicyHolder(
  initial: Config,
  load: LoadOptions,
  stores: PolicyStores,
  logger: Logger,
  /**
   * A candidate policy evaluated in shadow (`valet start --shadow`, `VALET_SHADOW_CONFIG`): a
   * directory, or `git:REF[:PATH]`, the configuration as committed at REF.
   */
  shadowSource?: string,
): PolicyHolder {
  const fromGit = GitCandidate.of(shadowSource, initial.dir);
  const candidateDir = fromGit !== undefined ? undefined : shadowSource;
  const compileCandidate = (): Policy | undefined => {
    const dir = fromGit?.dir() ?? candidateDir;
    return dir === undefined ? undefined : compilePolicy(loadConfig(dir, load), stores);
  };
  let candidate = compileCandidate();
  let policy = withCandidate(compilePolicy(initial, stores), candidate);
  let config = initial;
  let status: PolicyStatus = { version: initial.version, loadedAt: Date.now(), lastError: undefined };
  let watchers: FSWatcher[] | undefined;
  let timer: NodeJS.Timeout | undefined;

  const reload = (): { ok: true; version: string } | { ok: false; error: string } => {
    try {
      const next = loadConfig(initial.dir, load);
      if (fixedParts(next) !== fixedParts(initial)) {
        throw new ValetError('VALET_ERR_CONFIG', 'gateway, issuers or upstreams changed: restart the gateway to apply them');
      }
      const nextCandidate = compileCandidate();
      if (next.version === policy.version && nextCandidate?.version === candidate?.version) {
        status = { ...status, lastError: undefined };
        return { ok: true, version: next.version };
      }
      candidate = nextCandidate;
      policy = withCandidate(compilePolicy(next, stores), candidate);
      config = next;
      status = { version: next.version, loadedAt: Date.now(), lastError: undefined };
      logger.info({ policyVersion: next.version, rules: next.rules.length, ...(candidate !== undefined && { candidateVersion: candidate.version }) }, 'policy reloaded');
      return { ok: true, version: next.version };
    } catch (err) {
      const message = err instanceof ValetError ? err.message : String(err);
      status = { ...status, lastError: { at: Date.now(), message } };
      logger.error({ policyVersion: policy.version, error: message }, 'policy reload refused; the previous policy stays in force');
      return { ok: false, error: message };
    }
  };

  return {
    current: () => policy,
    config: () => config,
    status: () => status,
    reload,
    watch() {
      if (watchers) return;
      const onChange = (): void => {
        clearTimeout(timer);
        timer = setTimeout(reload, 150);
        timer.unref();
      };
      // Context data files may live outside the directory (an absolute `file:`): watch theirs too.
      const outside = new Set<string>();
      for (const c of initial.contexts) {
        if (c.file !== undefined && relative(initial.dir, c.file).startsWith('..')) outside.add(dirname(c.file));
      }
      const dirs = candidateDir === undefined ? [initial.dir] : [initial.dir, candidateDir];
      watchers = [...dirs.map((d) => watch(d, { recursive: true }, onChange)), ...[...outside].map((d) => watch(d, onChange))];
      for (const w of watchers) w.unref();
    },
    close() {
      clearTimeout(timer);
      for (const w of watchers ?? []) w.close();
      fromGit?.close();
    },
  };
}
