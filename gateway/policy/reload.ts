import { watch, type FSWatcher } from 'node:fs';
import { dirname, relative } from 'node:path';
import type { Logger } from 'pino';
import { loadConfig, type LoadOptions } from '../config/load.js';
import type { Config } from '../config/types.js';
import { ValetError } from '../errors.js';
import { compilePolicy, type Policy, type PolicyStores } from './compile.js';

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
  if (candidate === undefined) return enforced;
  return { ...enforced, readsArgs: (upstream) => enforced.readsArgs(upstream) || candidate.readsArgs(upstream), shadow: candidate };
}

export function createPolicyHolder(
  initial: Config,
  load: LoadOptions,
  stores: PolicyStores,
  logger: Logger,
  /** A candidate policy directory evaluated in shadow (`valet start --shadow DIR`, `VALET_SHADOW_CONFIG`). */
  candidateDir?: string,
): PolicyHolder {
  const compileCandidate = (): Policy | undefined => (candidateDir === undefined ? undefined : compilePolicy(loadConfig(candidateDir, load), stores));
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
    },
  };
}
